//! Redis Cluster under the gateways, broken while two users chat across two
//! gateway nodes: the master serving a user's slot killed (-9) and failed
//! over to its replica, and users' slots moved to another master with
//! `redis-cli --cluster reshard`. Every accepted message reaches its
//! receiver once and in order, and the chat goes on over the same
//! connections (the gateways find the new owners and subscribe again by
//! themselves). Every fifth turn a side sends a burst of four chats in one
//! write, which the gateway records together.
//!
//! Each test makes a cluster of its own (three masters, a replica each)
//! whatever the backend of the run, so `just test` runs this binary once,
//! in its Redis Cluster run.

use std::{collections::HashSet, time::Duration};

use e2e::{Client, PATIENCE, PrivateRedis, RedisShape, Stack, chat, user_hash_tag};
use serde_json::{Value, json};
use tokio::{sync::watch, time::Instant};

/// Between two chats of one side: ~40 a second each way.
const PAUSE: Duration = Duration::from_millis(25);
/// Clients that acknowledge must say something this often.
const PING_EVERY: Duration = Duration::from_secs(2);

/// One side of a conversation: a client that acknowledges, sending
/// numbered chats with `seq` (answered: errno 0 is accepted, an error
/// refused) and keeping what arrives in between.
struct Talker {
    client: Client,
    me: i64,
    peer: i64,
    label: &'static str,
    peer_label: &'static str,
    seq: i64,
    last_ping: Instant,
    /// What the gateway accepted, in the order sent.
    accepted: Vec<String>,
    /// What it refused, with the reply.
    refused: Vec<(String, Value)>,
    /// The chats received, in order, a repeated `rseq` dropped as the
    /// protocol tells clients to.
    received: Vec<String>,
    seen_rseq: HashSet<u64>,
    repeats: usize,
    unacked: usize,
}

impl Talker {
    fn new(
        client: Client,
        me: i64,
        peer: i64,
        label: &'static str,
        peer_label: &'static str,
    ) -> Self {
        Self {
            client,
            me,
            peer,
            label,
            peer_label,
            seq: 0,
            last_ping: Instant::now(),
            accepted: Vec::new(),
            refused: Vec::new(),
            received: Vec::new(),
            seen_rseq: HashSet::new(),
            repeats: 0,
            unacked: 0,
        }
    }

    /// The next frame within `wait` (None after it), pinging on the way.
    async fn next_frame(&mut self, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            if self.last_ping.elapsed() >= PING_EVERY {
                self.client.send(&json!({"msgid": 13})).await;
                self.last_ping = Instant::now();
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let slice = (deadline - now).min(PING_EVERY / 2);
            if let Some(line) = self.client.try_recv_line(slice).await {
                return Some(
                    serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("{}: invalid JSON {line:?}: {e}", self.label)),
                );
            }
        }
    }

    /// A chat arrived: kept (unless its rseq was seen), acknowledged now and then.
    async fn take_chat(&mut self, frame: &Value) {
        let rseq = frame["rseq"]
            .as_u64()
            .unwrap_or_else(|| panic!("rseq: {frame}"));
        if !self.seen_rseq.insert(rseq) {
            self.repeats += 1;
            return;
        }
        self.received
            .push(frame["msg"].as_str().expect("msg").to_owned());
        self.unacked += 1;
        if self.unacked >= 20 {
            self.client.send(&json!({"msgid": 12, "ack": rseq})).await;
            self.unacked = 0;
        }
    }

    /// Handles a frame that is not the answer awaited.
    async fn take(&mut self, frame: Value) {
        match frame["msgid"].as_i64() {
            Some(6) => self.take_chat(&frame).await,
            Some(14) => {}
            _ => panic!("{}: unexpected {frame}", self.label),
        }
    }

    /// Sends one chat and waits for its answer, taking what arrives
    /// meanwhile: whether it was accepted.
    async fn say(&mut self, text: String) -> bool {
        self.seq += 1;
        let seq = self.seq;
        let mut request = chat(self.me, self.peer, &text);
        request["seq"] = seq.into();
        self.client.send(&request).await;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let Some(frame) = self.next_frame(wait).await else {
                panic!("{}: no answer to {text:?} within {PATIENCE:?}", self.label);
            };
            if frame["msgid"] == 11 && frame["seq"] == seq {
                if frame["errno"] == 0 {
                    self.accepted.push(text);
                    return true;
                }
                self.refused.push((text, frame));
                return false;
            }
            self.take(frame).await;
        }
    }

    /// Sends `texts` in one write (a burst, recorded together by the
    /// gateway) and waits for each answer, in order, taking what arrives
    /// meanwhile.
    async fn say_burst(&mut self, texts: Vec<String>) {
        let first = self.seq + 1;
        let mut bytes = Vec::new();
        for text in &texts {
            self.seq += 1;
            let mut request = chat(self.me, self.peer, text);
            request["seq"] = self.seq.into();
            bytes.extend(request.to_string().into_bytes());
            bytes.push(0);
        }
        self.client.send_raw(&bytes).await;
        let deadline = Instant::now() + PATIENCE;
        let mut texts = texts.into_iter();
        let mut awaited = first;
        while awaited <= self.seq {
            let wait = deadline.saturating_duration_since(Instant::now());
            let Some(frame) = self.next_frame(wait).await else {
                panic!(
                    "{}: no answer to seq {awaited} within {PATIENCE:?}",
                    self.label
                );
            };
            if frame["msgid"] != 11 {
                self.take(frame).await;
                continue;
            }
            assert_eq!(frame["seq"], awaited, "{}: answers in order", self.label);
            let text = texts.next().expect("a text per seq");
            if frame["errno"] == 0 {
                self.accepted.push(text);
            } else {
                self.refused.push((text, frame));
            }
            awaited += 1;
        }
    }

    /// Takes what arrives for `period`.
    async fn listen(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        while let Some(frame) = self
            .next_frame(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            self.take(frame).await;
        }
    }

    /// Takes what arrives until `text` has, at most for `within`.
    async fn listen_for(&mut self, text: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.received.iter().any(|t| t == text) {
            let wait = deadline.saturating_duration_since(Instant::now());
            let Some(frame) = self.next_frame(wait).await else {
                return false;
            };
            self.take(frame).await;
        }
        true
    }

    fn has_peers_last_word(&self) -> bool {
        let last = format!("{} last word", self.peer_label);
        self.received.iter().any(|t| t.starts_with(&last))
    }
}

/// Chats until `stop`; then says a last word (accepted eventually) and
/// listens until the peer's last word is in, and a second more for repeats.
async fn talk(mut talker: Talker, mut stop: watch::Receiver<bool>) -> Talker {
    let mut n = 0;
    while !*stop.borrow_and_update() {
        if n % 5 == 4 {
            // Now and then a burst: its chats are recorded together, and
            // one by one from the first that was not.
            let texts = (0..4).map(|k| format!("{} {n}.{k}", talker.label));
            talker.say_burst(texts.collect()).await;
        } else {
            talker.say(format!("{} {n}", talker.label)).await;
        }
        n += 1;
        talker.listen(PAUSE).await;
    }
    let deadline = Instant::now() + PATIENCE;
    for attempt in 0.. {
        if talker
            .say(format!("{} last word {attempt}", talker.label))
            .await
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: still refused after {PATIENCE:?}: {:?}",
            talker.label,
            talker.refused.last()
        );
        talker.listen(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + PATIENCE;
    while !talker.has_peers_last_word() {
        assert!(
            Instant::now() < deadline,
            "{}: the peer's last word did not arrive within {PATIENCE:?}",
            talker.label
        );
        talker.listen(Duration::from_millis(200)).await;
    }
    talker.listen(Duration::from_secs(1)).await;
    talker
}

/// Alice on gateway 0 and bob on gateway 1, both acknowledging.
async fn acking_pair(stack: &Stack) -> (Talker, i64, Talker, i64) {
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = bob.register("bob", "pb").await;
    let ack = alice.login_acking(a, "pa", None).await;
    assert_eq!(ack["errno"], 0, "{ack}");
    let ack = bob.login_acking(b, "pb", None).await;
    assert_eq!(ack["errno"], 0, "{ack}");
    (
        Talker::new(alice, a, b, "alice", "bob"),
        a,
        Talker::new(bob, b, a, "bob", "alice"),
        b,
    )
}

/// A conversation in two tasks; `fault` runs meanwhile, then both stop.
async fn converse_around<F: std::future::Future<Output = ()>>(
    alice: Talker,
    bob: Talker,
    fault: F,
) -> (Talker, Talker) {
    let (stop, stopped) = watch::channel(false);
    let alice = tokio::spawn(talk(alice, stopped.clone()));
    let bob = tokio::spawn(talk(bob, stopped));
    fault.await;
    stop.send(true).expect("talkers running");
    let joined = tokio::time::timeout(Duration::from_secs(60), async {
        (
            alice.await.expect("alice's task"),
            bob.await.expect("bob's task"),
        )
    })
    .await;
    joined.expect("the conversation ends in time")
}

/// Everything `from` had accepted reached `to` once and in order; a
/// failure says what is missing, what came that was not accepted (a
/// refused chat delivered anyway), and where the order first differs.
fn assert_delivered(from: &Talker, to: &Talker) {
    assert!(
        from.accepted.len() > 20,
        "{} got only {} chats accepted",
        from.label,
        from.accepted.len()
    );
    if to.received == from.accepted {
        return;
    }
    let missing: Vec<&String> = from
        .accepted
        .iter()
        .filter(|t| !to.received.contains(t))
        .collect();
    let unexpected: Vec<&String> = to
        .received
        .iter()
        .filter(|t| !from.accepted.contains(t))
        .collect();
    let at = to
        .received
        .iter()
        .zip(&from.accepted)
        .position(|(got, sent)| got != sent)
        .unwrap_or(to.received.len().min(from.accepted.len()));
    let around = |list: &[String]| list[at.saturating_sub(2)..(at + 8).min(list.len())].to_vec();
    panic!(
        "{} → {}: {} accepted, {} received (each accepted chat once, in order expected); \
         missing {missing:?}; received but not accepted {unexpected:?}; first difference at \
         {at}: received {:?}, accepted {:?}; {} refused (e.g. {:?}); {} repeats dropped by rseq",
        from.label,
        to.label,
        from.accepted.len(),
        to.received.len(),
        around(&to.received),
        around(&from.accepted),
        from.refused.len(),
        from.refused.first(),
        to.repeats
    );
}

/// The warnings and errors the stack's processes logged, each once with a
/// count, for a failing test's output.
fn warnings(stack: &Stack) -> String {
    let mut counted: Vec<(usize, String)> = Vec::new();
    for line in stack.all_logs().lines() {
        let line = strip_ansi(line);
        let Some(at) = line.find(" WARN ").or_else(|| line.find(" ERROR ")) else {
            continue;
        };
        // Without the timestamp, so repeats count as one.
        let message = line[at..].chars().take(240).collect::<String>();
        match counted.iter_mut().find(|(_, m)| *m == message) {
            Some((n, _)) => *n += 1,
            None => counted.push((1, message)),
        }
    }
    counted
        .iter()
        .map(|(n, m)| format!("{n:>5} ×{m}\n"))
        .collect()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut escape = false;
    for c in line.chars() {
        match (escape, c) {
            (false, '\u{1b}') => escape = true,
            (true, c) if c.is_ascii_alphabetic() => escape = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// After the fault: each says one more thing, which the other gets live
/// over the same connection within 5 s.
async fn chat_goes_on(alice: &mut Talker, bob: &mut Talker) {
    says_and_is_heard_live(alice, bob).await;
    says_and_is_heard_live(bob, alice).await;
}

async fn says_and_is_heard_live(from: &mut Talker, to: &mut Talker) {
    let text = format!("{} after it all", from.label);
    assert!(from.say(text.clone()).await, "{:?}", from.refused.last());
    assert!(
        to.listen_for(&text, Duration::from_secs(5)).await,
        "{} did not get {text:?} live",
        to.label
    );
}

/// After a fault (described by `fault`): what each accepted reached the
/// other once and in order, and a new chat each way arrives live.
async fn nothing_lost_and_chat_goes_on(
    stack: &Stack,
    fault: &str,
    mut alice: Talker,
    mut bob: Talker,
) {
    eprintln!(
        "{fault}; alice: {} accepted, {} refused; bob: {} accepted, {} refused",
        alice.accepted.len(),
        alice.refused.len(),
        bob.accepted.len(),
        bob.refused.len()
    );
    eprintln!(
        "logged by the stack ({}):\n{}",
        stack.logs(),
        warnings(stack)
    );
    assert_delivered(&alice, &bob);
    assert_delivered(&bob, &alice);
    chat_goes_on(&mut alice, &mut bob).await;
}

#[tokio::test]
async fn masters_killed_while_two_users_chat_fail_over_losing_nothing_and_the_chat_goes_on() {
    let mut stack = Stack::builder()
        .gateways(2)
        .with_private_redis_cluster()
        .start()
        .await;
    let (mut alice, a, mut bob, b) = acking_pair(&stack).await;
    let cluster: &mut PrivateRedis = stack.private_redis();
    let bobs_master = cluster.owner_of_user(b).await;
    let alices_master = cluster.owner_of_user(a).await;
    let mut failovers = Vec::new();
    (alice, bob) = converse_around(alice, bob, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The receiver's master first, then the sender's when it is another.
        let mut victims = vec![bobs_master.port];
        if alices_master.port != bobs_master.port {
            victims.push(alices_master.port);
        }
        for port in victims {
            let killed = Instant::now();
            cluster.kill_node(port).await;
            cluster.wait_until_serving().await;
            failovers.push((port, killed.elapsed()));
            // The chat carries on on the promoted replica for a while.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
    .await;
    let cluster = stack.private_redis();
    assert_ne!(cluster.owner_of_user(b).await.port, bobs_master.port);
    assert_ne!(cluster.owner_of_user(a).await.port, alices_master.port);
    nothing_lost_and_chat_goes_on(&stack, &format!("failovers {failovers:?}"), alice, bob).await;
}

#[tokio::test]
async fn slots_moved_while_two_users_chat_lose_nothing_and_the_chat_goes_on() {
    let mut stack = Stack::builder()
        .gateways(2)
        .with_private_redis_cluster()
        .start()
        .await;
    let (mut alice, a, mut bob, b) = acking_pair(&stack).await;
    let cluster: &mut PrivateRedis = stack.private_redis();
    let mut moves = Vec::new();
    (alice, bob) = converse_around(alice, bob, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The receiver's slot first, then the sender's, each to another
        // master: the owner's lowest slots up to and including the user's.
        for user in [b, a] {
            let slot = cluster.keyslot(&user_hash_tag(user)).await;
            let owner = cluster.owner_of_user(user).await;
            let masters = cluster.masters().await;
            let to = masters
                .iter()
                .find(|m| m.id != owner.id)
                .expect("another master");
            let count = owner.slots_up_to(slot);
            let started = Instant::now();
            cluster.reshard(&owner, to, count).await;
            moves.push((slot, owner.port, to.port, count, started.elapsed()));
            assert_eq!(
                cluster.owner_of_user(user).await.id,
                to.id,
                "slot {slot} moved"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    nothing_lost_and_chat_goes_on(
        &stack,
        &format!("moves (slot, from, to, slots, took) {moves:?}"),
        alice,
        bob,
    )
    .await;
}

/// Gateway 1 is given `redis+cluster://` seeds, gateway 2 a list of
/// `redis://` URLs; each starts with a node nobody listens on.
fn seeds_with_a_dead_one_first(i: usize, redis: &PrivateRedis) -> String {
    let good = redis.seed_ports()[0];
    match i {
        0 => format!("redis+cluster://127.0.0.1:1,127.0.0.1:{good}"),
        _ => format!("redis://127.0.0.1:1,redis://127.0.0.1:{good}"),
    }
}

#[tokio::test]
async fn an_unreachable_seed_node_is_passed_over() {
    let stack = Stack::builder()
        .gateways(2)
        .with_private_redis_shaped(RedisShape::Cluster {
            masters: 3,
            replicas: 0,
        })
        .gateway_redis_url(seeds_with_a_dead_one_first)
        .start()
        .await;
    let (mut alice, a, mut bob, b) = stack.alice_and_bob(0, 1).await;
    let reply = alice.call(chat(a, b, "to bob"), 1).await;
    assert_eq!(reply["errno"], 0, "{reply}");
    assert_eq!(bob.recv().await["msg"], "to bob");
    let reply = bob.call(chat(b, a, "to alice"), 1).await;
    assert_eq!(reply["errno"], 0, "{reply}");
    assert_eq!(alice.recv().await["msg"], "to alice");
}
