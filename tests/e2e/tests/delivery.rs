//! Accepted means delivered: every scenario of the delivery guarantee, each
//! with real processes and faults injected while messages are being sent.
//! Every test asserts the exact messages received: none missing, none
//! twice (for classic clients, a repeat is allowed only where the guarantee
//! names it: frames written just before their node died), and in order.

use std::time::Duration;

use e2e::{
    Client, PATIENCE, Stack, WsClient, assert_eventually, chat, group_chat, http_get,
    joined_at_least_once, offline_messages, texts,
};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Sends `request` until it is accepted (errno 0), as a client retries
/// while Redis comes back; panics after PATIENCE.
async fn call_until_accepted(client: &mut Client, request: Value, seq: i64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = client.call(request.clone(), seq).await;
        if reply["errno"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "never accepted: {reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} {i}")).collect()
}

/// Sends `texts` from `from` to `to`, each answered, `pause` apart, in a task;
/// the receiver fires just before the `at`-th goes, so a test injects its
/// fault while messages are being sent. The task returns the replies.
fn send_around_a_fault(
    mut client: Client,
    from: i64,
    to: i64,
    texts: Vec<String>,
    at: usize,
    pause: Duration,
) -> (
    tokio::task::JoinHandle<Vec<Value>>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let (reached, fault_now) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut reached = Some(reached);
        let mut replies = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            if i == at
                && let Some(tx) = reached.take()
            {
                let _ = tx.send(());
            }
            replies.push(client.call(chat(from, to, text), i as i64).await);
            tokio::time::sleep(pause).await;
        }
        replies
    });
    (task, fault_now)
}

/// The texts of the next `n` frames (each may take up to PATIENCE).
async fn texts_of_next(client: &mut Client, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let Some(line) = client.try_recv_line(PATIENCE).await else {
            panic!("got {} of {n}: {got:?}", got.len());
        };
        let m: Value = serde_json::from_str(&line).expect("json");
        got.push(m["msg"].as_str().expect("msg").to_owned());
    }
    got
}

/// What a login ack carried plus the chats that follow it.
async fn everything_at_login(client: &mut Client, ack: &Value) -> Vec<Value> {
    let mut got = offline_messages(ack);
    got.extend(client.chats_until_quiet(Duration::from_secs(2)).await);
    got
}

#[tokio::test]
async fn a_node_restart_between_offline_messages_loses_none_of_them() {
    let mut stack = Stack::builder().gateways(1).start().await;
    let mut first = Client::connect(stack.gateways[0].tcp).await;
    let a = first.register("alice", "pa").await;
    let b = first.register("bob", "pb").await;
    drop(first);
    let mut sent = Vec::new();
    for round in 0..3 {
        let mut alice = Client::connect(stack.gateways[0].tcp).await;
        alice.login_ok(a, "pa").await;
        let text = format!("sent before restart {round}");
        let reply = alice.call(chat(a, b, &text), 1).await;
        assert_eq!(reply["errno"], 0, "{reply}");
        sent.push(text);
        drop(alice);
        // SIGTERM and start again: message ids must not repeat across lives.
        assert!(stack.terminate_gateway(0).await.success());
        stack.start_gateway(0).await;
    }
    let mut bob = Client::connect(stack.gateways[0].tcp).await;
    let ack = bob.login_ok(b, "pb").await;
    let got = everything_at_login(&mut bob, &ack).await;
    assert_eq!(texts(&got), sent);
}

#[tokio::test]
async fn a_frozen_node_delivers_nothing_stale_and_its_users_messages_reach_their_next_login() {
    let stack = Stack::builder()
        .gateways(2)
        .gateway_env("CLUSTERCHAT_GATEWAY_PRESENCE_TTL_MS", "2000")
        .start()
        .await;
    let (mut alice, a, mut bob_frozen, b) = stack.alice_and_bob(0, 1).await;

    // What a partition or a VM pause looks like to Redis: sockets stay open.
    stack.signal_gateway(1, "STOP");
    let frozen_at = Instant::now();
    let sent = numbered("while frozen", 30);
    for (i, text) in sent.iter().enumerate() {
        let reply = alice.call(chat(a, b, text), i as i64).await;
        assert_eq!(reply["errno"], 0, "accepted: {reply}");
    }
    let mut bob = Client::connect(stack.gateways[0].tcp).await;
    let ack = bob.login_within(b, "pb", Duration::from_secs(15)).await;
    assert!(frozen_at.elapsed() < Duration::from_secs(15));
    let got = everything_at_login(&mut bob, &ack).await;
    assert_eq!(texts(&got), sent, "all of them at the next login elsewhere");

    stack.signal_gateway(1, "CONT");
    // The thawed node ends its stale session without writing what it had.
    let mut stale = Vec::new();
    while let Some(line) = bob_frozen.try_recv_line(Duration::from_secs(10)).await {
        stale.push(line);
    }
    assert!(stale.is_empty(), "the thawed node wrote {stale:?}");
    assert!(bob_frozen.is_closed(Duration::from_secs(1)).await);

    let reply = alice.call(chat(a, b, "after the thaw"), 99).await;
    assert_eq!(reply["errno"], 0);
    assert_eq!(bob.recv().await["msg"], "after the thaw");
    bob.expect_silence(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn kill_9_while_messages_are_sent_before_during_and_after_it_loses_nothing() {
    let mut stack = Stack::builder()
        .gateways(2)
        .gateway_env("CLUSTERCHAT_GATEWAY_PRESENCE_TTL_MS", "2000")
        .start()
        .await;
    let (alice, a, mut bob, b) = stack.alice_and_bob(0, 1).await;
    let sent = numbered("around the crash", 60);

    let (sender, kill_now) =
        send_around_a_fault(alice, a, b, sent.clone(), 20, Duration::from_millis(15));
    let reader = tokio::spawn(async move { bob.chats_until_quiet(Duration::from_secs(3)).await });
    kill_now.await.expect("sender running");
    stack.kill_gateway(1).await;
    for reply in sender.await.expect("sender") {
        assert_eq!(reply["errno"], 0, "accepted: {reply}");
    }
    let live = texts(&reader.await.expect("reader"));

    let mut bob = Client::connect(stack.gateways[0].tcp).await;
    let ack = bob.login_within(b, "pb", Duration::from_secs(15)).await;
    let after = texts(&everything_at_login(&mut bob, &ack).await);
    assert!(
        live.len() >= 15,
        "some arrived live before the kill: {live:?}"
    );
    assert_eq!(joined_at_least_once(&live, &after), sent);
}

#[tokio::test]
async fn redis_killed_while_the_receiver_stays_online_he_gets_everything_live_in_order() {
    let mut stack = Stack::builder()
        .gateways(2)
        .with_private_redis()
        .start()
        .await;
    let (mut alice, a, mut bob, b) = stack.alice_and_bob(0, 1).await;
    alice.send(&chat(a, b, "warm-up")).await;
    assert_eq!(bob.recv().await["msg"], "warm-up");

    stack.kill_redis().await;
    let mut accepted = Vec::new();
    for (i, text) in numbered("during the outage", 20).into_iter().enumerate() {
        let reply = alice.call(chat(a, b, &text), i as i64).await;
        if reply["errno"] == 0 {
            accepted.push(text);
        } else {
            assert_eq!(reply["errno"], 8, "refused clearly or accepted: {reply}");
        }
    }
    assert_eq!(
        accepted.len(),
        20,
        "stored with the offline service meanwhile"
    );
    stack.start_redis().await;
    for (i, text) in numbered("after the outage", 5).into_iter().enumerate() {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let reply = alice.call(chat(a, b, &text), 100 + i as i64).await;
            if reply["errno"] == 0 {
                accepted.push(text);
                break;
            }
            assert!(Instant::now() < deadline, "never accepted again: {reply}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Same connection, no new login: everything, in the order it was sent.
    assert_eq!(texts_of_next(&mut bob, accepted.len()).await, accepted);
    bob.expect_silence(Duration::from_secs(1)).await;
}

/// Bursts (many chats in one write, recorded together) around a Redis
/// outage: one written just before Redis dies, one during the outage, one
/// as it comes back. A burst whose shared attempt fails goes one by one
/// (the offline store meanwhile); the receiver, online throughout, gets
/// every accepted chat once, in the order sent.
#[tokio::test]
async fn bursts_sent_as_redis_dies_and_comes_back_arrive_once_in_order() {
    let mut stack = Stack::builder()
        .gateways(2)
        .with_private_redis()
        .start()
        .await;
    let (mut alice, a, mut bob, b) = stack.alice_and_bob(0, 1).await;
    alice.send(&chat(a, b, "warm-up")).await;
    assert_eq!(bob.recv().await["msg"], "warm-up");

    let burst = |prefix: &str, first_seq: i64| {
        let texts = numbered(prefix, 30);
        let mut bytes = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let mut request = chat(a, b, text);
            request["seq"] = (first_seq + i as i64).into();
            bytes.extend(request.to_string().into_bytes());
            bytes.push(0);
        }
        (texts, bytes)
    };
    let mut accepted = Vec::new();
    let answered = |replies: Vec<Value>, texts: Vec<String>, accepted: &mut Vec<String>| {
        for (reply, text) in replies.iter().zip(texts) {
            if reply["errno"] == 0 {
                accepted.push(text);
            } else {
                assert_eq!(reply["errno"], 8, "refused clearly or accepted: {reply}");
            }
        }
    };
    async fn replies(client: &mut Client, n: usize) -> Vec<Value> {
        let mut replies = Vec::new();
        while replies.len() < n {
            replies.push(client.recv().await);
        }
        replies
    }

    // Written, then Redis killed while it is being recorded.
    let (texts, bytes) = burst("as redis dies", 0);
    alice.send_raw(&bytes).await;
    stack.kill_redis().await;
    let got = replies(&mut alice, 30).await;
    answered(got, texts, &mut accepted);
    // During the outage.
    let (texts, bytes) = burst("during the outage", 100);
    alice.send_raw(&bytes).await;
    let got = replies(&mut alice, 30).await;
    answered(got, texts, &mut accepted);
    // Written as Redis starts again.
    let (texts, bytes) = burst("as redis comes back", 200);
    tokio::join!(stack.start_redis(), alice.send_raw(&bytes));
    let got = replies(&mut alice, 30).await;
    answered(got, texts, &mut accepted);
    assert!(
        accepted.len() >= 60,
        "the offline service takes what Redis cannot: {} of 90 accepted",
        accepted.len()
    );

    // Same connection, no new login: every accepted chat, in order.
    assert_eq!(texts_of_next(&mut bob, accepted.len()).await, accepted);
    bob.expect_silence(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn redis_killed_while_a_device_stays_online_it_gets_every_chat_once_in_the_order_sent() {
    let mut stack = Stack::builder()
        .gateways(2)
        .with_private_redis()
        .start()
        .await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = bob.register("bob", "pb").await;
    alice.login_ok(a, "pa").await;
    assert_eq!(bob.login_acking(b, "pb", None).await["errno"], 0);
    alice.send(&chat(a, b, "warm-up")).await;
    let warm = bob.recv().await;
    assert_eq!(warm["msg"], "warm-up");
    bob.send(&json!({"msgid": 12, "ack": warm["rseq"]})).await;

    stack.kill_redis().await;
    let mut accepted = Vec::new();
    for (i, text) in numbered("during the outage", 10).into_iter().enumerate() {
        let reply = alice.call(chat(a, b, &text), i as i64).await;
        assert_eq!(
            reply["errno"], 0,
            "stored with the offline service: {reply}"
        );
        accepted.push(text);
        // A device pings, or is closed after 10 s of silence.
        bob.send(&json!({"msgid": 13})).await;
    }
    bob.send(&json!({"msgid": 13})).await;
    stack.start_redis().await;
    // Sent as soon as Redis takes chats again: the race this is about is
    // between these and the ones stored during the outage.
    for (i, text) in numbered("after the outage", 10).into_iter().enumerate() {
        call_until_accepted(&mut alice, chat(a, b, &text), 100 + i as i64).await;
        accepted.push(text);
    }
    // The same connection: every chat once, in the order Alice sent them,
    // with increasing rseq, each acknowledged.
    let mut got = Vec::new();
    let mut last_rseq = warm["rseq"].as_u64().expect("rseq");
    let deadline = Instant::now() + PATIENCE;
    while got.len() < accepted.len() && Instant::now() < deadline {
        let Some(line) = bob.try_recv_line(Duration::from_secs(1)).await else {
            bob.send(&json!({"msgid": 13})).await;
            continue;
        };
        let m: Value = serde_json::from_str(&line).expect("json");
        if m["msgid"] != 6 {
            continue;
        }
        let rseq = m["rseq"].as_u64().expect("rseq on every chat");
        assert!(rseq > last_rseq, "increasing rseq: {m}");
        last_rseq = rseq;
        bob.send(&json!({"msgid": 12, "ack": rseq})).await;
        got.push(m["msg"].as_str().expect("msg").to_owned());
    }
    assert_eq!(got, accepted, "every chat once, in the order sent");
}

#[tokio::test]
async fn a_device_whose_inbox_is_full_still_logs_in_and_gets_what_waits_offline_too() {
    let mut stack = Stack::builder()
        .gateways(2)
        .with_private_redis()
        .gateway_env("CLUSTERCHAT_GATEWAY_MAX_INBOX", "5")
        .start()
        .await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut carol = Client::connect(stack.gateways[1].tcp).await;
    let mut bob = Client::connect(stack.gateways[0].tcp).await;
    let a = alice.register("alice", "pa").await;
    let c = carol.register("carol", "pc").await;
    let b = bob.register("bob", "pb").await;
    alice.login_ok(a, "pa").await;
    carol.login_ok(c, "pc").await;
    // Bob's device shows what it gets but never acknowledges: his inbox
    // fills up.
    assert_eq!(bob.login_acking(b, "pb", None).await["errno"], 0);
    let mut from_alice = Vec::new();
    loop {
        let text = format!("from alice {}", from_alice.len());
        let reply = alice.call(chat(a, b, &text), 10).await;
        match reply["errno"].as_i64() {
            Some(0) => from_alice.push(text),
            _ => {
                assert_eq!(reply["errno"], 13, "refused: inbox full: {reply}");
                break;
            }
        }
    }
    assert_eq!(from_alice.len(), 5, "the inbox holds 5");
    bob.send(&json!({"msgid": 13})).await;

    // Carol's chat while Redis is down: stored with the offline service,
    // with no inbox sequence, and it does not fit his inbox afterwards.
    stack.kill_redis().await;
    assert_eq!(
        carol.call(chat(c, b, "from carol"), 1).await["errno"],
        0,
        "stored offline"
    );
    bob.send(&json!({"msgid": 13})).await;
    stack.start_redis().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    bob.reset();

    // Bob's device logs in again (it could not: errno 8, for the message
    // that did not fit), acknowledges, and gets all six, Alice's in order.
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let ack = loop {
        let ack = bob.login_acking(b, "pb", None).await;
        if ack["errno"] != 2 {
            break ack;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ack["errno"], 0, "{ack}");
    let mut got = texts(&offline_messages(&ack));
    let mut last_rseq = 0;
    let deadline = Instant::now() + PATIENCE;
    while got.len() < 6 && Instant::now() < deadline {
        let Some(line) = bob.try_recv_line(Duration::from_secs(1)).await else {
            bob.send(&json!({"msgid": 13})).await;
            continue;
        };
        let m: Value = serde_json::from_str(&line).expect("json");
        if m["msgid"] != 6 {
            continue;
        }
        let rseq = m["rseq"].as_u64().expect("rseq");
        assert!(rseq > last_rseq, "increasing: {m}");
        last_rseq = rseq;
        bob.send(&json!({"msgid": 12, "ack": rseq})).await;
        got.push(m["msg"].as_str().expect("msg").to_owned());
    }
    let mut want = from_alice.clone();
    want.push("from carol".to_owned());
    assert_eq!(
        got.iter()
            .filter(|t| t.starts_with("from alice"))
            .cloned()
            .collect::<Vec<_>>(),
        from_alice,
        "Alice's in order"
    );
    got.sort();
    want.sort();
    assert_eq!(got, want, "each once");
}

#[tokio::test]
async fn a_cut_subscriber_connection_loses_nothing_and_repeats_nothing() {
    let mut stack = Stack::builder()
        .gateways(2)
        .with_private_redis()
        .start()
        .await;
    let (alice, a, mut bob, b) = stack.alice_and_bob(0, 1).await;
    let sent = numbered("while the subscriber is cut", 100);
    let (sender, cut_now) =
        send_around_a_fault(alice, a, b, sent.clone(), 30, Duration::from_millis(5));
    cut_now.await.expect("sender running");
    let killed = stack
        .redis_command(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .await;
    assert!(killed.starts_with(':'), "{killed}");
    for reply in sender.await.expect("sender") {
        assert_eq!(reply["errno"], 0, "accepted: {reply}");
    }
    assert_eq!(
        texts_of_next(&mut bob, sent.len()).await,
        sent,
        "live, in order, once"
    );
    bob.expect_silence(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_silently_dead_redis_subscriber_turns_healthz_red_and_recovers() {
    let mut stack = Stack::builder()
        .gateways(1)
        .with_private_redis()
        .start()
        .await;
    let http = stack.gateways[0].admin;
    // A frozen Redis keeps its sockets open: only a PING notices.
    stack.signal_redis("STOP");
    assert_eventually!(
        http_get(http, "/healthz")
            .await
            .is_some_and(|(status, _)| status == 503),
        Duration::from_secs(15),
        "healthz stays green with a subscriber that does not answer"
    );
    stack.signal_redis("CONT");
    assert_eventually!(
        http_get(http, "/healthz")
            .await
            .is_some_and(|(status, _)| status == 200),
        PATIENCE,
        "healthz does not recover"
    );
}

#[tokio::test]
async fn a_client_that_acknowledges_resumes_exactly_once_after_its_connection_fails() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = bob.register("bob", "pb").await;
    alice.login_ok(a, "pa").await;
    let ack = bob.login_acking(b, "pb", None).await;
    assert_eq!(ack["errno"], 0, "{ack}");

    let sent = numbered("resumable", 200);
    for (i, text) in sent.iter().enumerate() {
        alice
            .send(&json!({"msgid": 6, "toid": b, "msg": text, "seq": i}))
            .await;
    }
    // Bob reads 50, acknowledges 30, and his connection dies mid-burst
    // (whatever the writer had buffered or in flight is gone with it).
    let mut shown = Vec::new();
    let mut last_rseq = 0;
    while shown.len() < 50 {
        let m = bob.recv().await;
        let rseq = m["rseq"].as_u64().expect("rseq on every chat");
        assert!(m["mid"].as_str().is_some_and(|mid| !mid.is_empty()));
        assert!(rseq > last_rseq, "increasing: {m}");
        last_rseq = rseq;
        shown.push(m["msg"].as_str().expect("msg").to_owned());
        if shown.len() == 30 {
            bob.send(&json!({"msgid": 12, "ack": rseq})).await;
        }
    }
    bob.reset();
    for i in 0..sent.len() {
        assert_eq!(alice.recv().await["errno"], 0, "message {i} accepted");
    }

    // Resume on the other node after what was shown.
    let mut bob = Client::connect(stack.gateways[0].tcp).await;
    let ack = loop {
        let ack = bob.login_acking(b, "pb", Some(last_rseq)).await;
        if ack["errno"] == 0 {
            break ack;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rest = everything_at_login(&mut bob, &ack).await;
    let mut prev = last_rseq;
    for m in &rest {
        let rseq = m["rseq"].as_u64().expect("rseq");
        assert!(rseq > prev, "no repeat, in order: {m}");
        prev = rseq;
    }
    shown.extend(texts(&rest));
    assert_eq!(shown, sent, "exactly once, in order");
}

#[tokio::test]
async fn a_writer_stuck_on_a_client_that_stopped_reading_loses_nothing_on_sigterm() {
    let mut stack = Stack::builder()
        .gateways(2)
        .gateway_env("CLUSTERCHAT_GATEWAY_RATE_BURST", "1000")
        .gateway_env("CLUSTERCHAT_GATEWAY_DRAIN_TIMEOUT_MS", "4000")
        .start()
        .await;
    let (mut alice, a, mut bob, b) = stack.alice_and_bob(0, 1).await;
    // ~6 MB for a client that does not read: the writer blocks in a write.
    let padding = "x".repeat(20_000);
    let sent: Vec<String> = (0..300).map(|i| format!("{i} {padding}")).collect();
    for (i, text) in sent.iter().enumerate() {
        let reply = alice.call(chat(a, b, text), i as i64).await;
        assert_eq!(reply["errno"], 0, "{reply}");
    }
    let stopping = Instant::now();
    assert!(stack.terminate_gateway(1).await.success());
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "drained in time"
    );

    // Bob reads what reached his socket, then logs in elsewhere. The last
    // frame may be cut off where the node stopped writing: not delivered.
    let mut first = Vec::new();
    let mut cut_off = false;
    while let Some(line) = bob.try_recv_line(Duration::from_secs(2)).await {
        assert!(!cut_off, "only the last frame may be incomplete");
        match serde_json::from_str::<Value>(&line) {
            Ok(m) => first.push(m["msg"].as_str().expect("msg").to_owned()),
            Err(_) => cut_off = true,
        }
    }
    assert!(first.len() < sent.len(), "the writer must have been stuck");
    let mut bob = Client::connect(stack.gateways[0].tcp).await;
    let ack = bob.login_within(b, "pb", Duration::from_secs(15)).await;
    let then = texts(&everything_at_login(&mut bob, &ack).await);
    assert_eq!(joined_at_least_once(&first, &then), sent);
}

#[tokio::test]
async fn a_login_that_fails_after_claiming_the_user_loses_nothing() {
    let stack = Stack::builder().gateways(1).start().await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = alice.register("bob", "pb").await;
    alice.login_ok(a, "pa").await;
    let mut sent = Vec::new();
    for round in 0..8 {
        // Messages wait for bob, and more arrive while his login fails: he
        // vanishes right after asking (at different moments of the login),
        // so its ack is not written, or is written and never acknowledged.
        let text = format!("before failed login {round}");
        assert_eq!(alice.call(chat(a, b, &text), round).await["errno"], 0);
        sent.push(text);
        let mut bob = Client::connect(stack.gateways[0].tcp).await;
        bob.send(&json!({"msgid": 1, "id": b, "password": "pb", "acks": true}))
            .await;
        tokio::time::sleep(Duration::from_millis(20 * round as u64)).await;
        bob.reset();
        let text = format!("during failed login {round}");
        assert_eq!(alice.call(chat(a, b, &text), 100 + round).await["errno"], 0);
        sent.push(text);
    }
    let mut bob = Client::connect(stack.gateways[0].tcp).await;
    let ack = bob.login_within(b, "pb", Duration::from_secs(15)).await;
    let got = texts(&everything_at_login(&mut bob, &ack).await);
    assert_eq!(got, sent, "all of them, once, in order");
}

#[tokio::test]
async fn a_member_with_a_full_inbox_still_gets_the_group_and_a_retry_duplicates_nobody() {
    let stack = Stack::builder()
        .gateways(2)
        .gateway_env("CLUSTERCHAT_GATEWAY_MAX_INBOX", "10")
        .start()
        .await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let mut carol = Client::connect(stack.gateways[1].tcp).await;
    let mut dave = Client::connect(stack.gateways[0].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = bob.register("bob", "pb").await;
    let c = carol.register("carol", "pc").await;
    let d = dave.register("dave", "pd").await;
    alice.login_ok(a, "pa").await;
    // Bob acknowledges nothing: his inbox keeps everything sent to him.
    assert_eq!(bob.login_acking(b, "pb", None).await["errno"], 0);
    carol.login_ok(c, "pc").await;
    dave.login_ok(d, "pd").await;
    let g = alice
        .call(json!({"msgid": 8, "groupname": "team", "groupdesc": ""}), 1)
        .await["groupid"]
        .as_i64()
        .expect("group id");
    for (client, id) in [(&mut bob, b), (&mut carol, c), (&mut dave, d)] {
        let reply = client
            .call(json!({"msgid": 9, "id": id, "groupid": g}), 2)
            .await;
        assert_eq!(reply["errno"], 0, "{reply}");
    }

    // Ten direct messages bob reads and never acknowledges fill his inbox.
    for n in 0..10 {
        let reply = alice.call(chat(a, b, &format!("direct {n}")), 3 + n).await;
        assert_eq!(reply["errno"], 0, "{reply}");
        assert_eq!(bob.recv().await["msg"], format!("direct {n}"));
    }
    let full = alice.call(chat(a, b, "direct 10"), 13).await;
    assert_eq!(full["errno"], 13, "his inbox is full: {full}");

    // Group chats are written once, to the group's log, not to inboxes:
    // bob's full inbox refuses none of them.
    let send = |n: usize| {
        let mut m = group_chat(a, g, &format!("group {n}"));
        m["cmid"] = format!("g{n}").into();
        m
    };
    let mut numbers = Vec::new();
    for n in 0..5 {
        let reply = alice.call(send(n), 20 + n as i64).await;
        assert_eq!(reply["errno"], 0, "{reply}");
        assert!(reply.get("failed").is_none(), "{reply}");
        numbers.push(reply["cseq"].clone());
    }
    // A retry of one everybody has: the same number, written nobody twice.
    let retry = alice.call(send(3), 30).await;
    assert_eq!(retry["errno"], 0, "{retry}");
    assert_eq!(retry["cseq"], numbers[3], "{retry}");

    let expected: Vec<String> = (0..5).map(|n| format!("group {n}")).collect();
    for (who, client) in [
        ("bob", &mut bob),
        ("carol", &mut carol),
        ("dave", &mut dave),
    ] {
        let got = texts(&client.chats_until_quiet(Duration::from_secs(2)).await);
        assert_eq!(got, expected, "{who}: each once, in order");
    }
}

#[tokio::test]
async fn a_backlog_page_racing_a_logout_goes_to_nobody_else() {
    let stack = Stack::builder()
        .gateways(1)
        .gateway_env("CLUSTERCHAT_GATEWAY_OFFLINE_BATCH", "20")
        .gateway_env("CLUSTERCHAT_GATEWAY_RATE_BURST", "1000")
        .start()
        .await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = alice.register("bob", "pb").await;
    let c = alice.register("carol", "pc").await;
    alice.login_ok(a, "pa").await;
    let sent = numbered("for bob", 300);
    for (i, text) in sent.iter().enumerate() {
        assert_eq!(alice.call(chat(a, b, text), i as i64).await["errno"], 0);
    }

    // Bob logs in and out at once; carol logs in on the same connection.
    let mut shared = Client::connect(stack.gateways[0].tcp).await;
    shared
        .send(&json!({"msgid": 1, "id": b, "password": "pb"}))
        .await;
    shared.send(&json!({"msgid": 3, "id": b})).await;
    shared
        .send(&json!({"msgid": 1, "id": c, "password": "pc"}))
        .await;
    let mut for_bob = Vec::new();
    let mut carol_logged_in = false;
    while let Some(line) = shared.try_recv_line(Duration::from_secs(2)).await {
        let m: Value = serde_json::from_str(&line).expect("json");
        match m["msgid"].as_i64() {
            Some(2) if m["id"] == b => for_bob.extend(texts(&offline_messages(&m))),
            Some(2) => {
                assert_eq!(m["id"], c, "{m}");
                carol_logged_in = true;
            }
            Some(6) => {
                assert!(!carol_logged_in, "bob's message written to carol: {m}");
                for_bob.push(m["msg"].as_str().expect("msg").to_owned());
            }
            _ => panic!("unexpected {m}"),
        }
    }
    assert!(carol_logged_in);

    let mut bob = Client::connect(stack.gateways[0].tcp).await;
    let ack = bob.login_ok(b, "pb").await;
    let rest = texts(&everything_at_login(&mut bob, &ack).await);
    assert_eq!(joined_at_least_once(&for_bob, &rest), sent);
}

#[tokio::test]
async fn a_classic_client_gone_with_deliveries_its_tcp_never_took_gets_them_at_its_next_login() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let a = alice.register("alice", "pa").await;
    alice.login_ok(a, "pa").await;
    // Bob's classic client has a small receive buffer and stops reading
    // after its login: most of what is written to him waits in the
    // gateway's socket, unacknowledged by his TCP.
    let mut bob = Client::connect_with_receive_buffer(stack.gateways[1].tcp, 2048).await;
    let b = bob.register("bob", "pb").await;
    bob.login_ok(b, "pb").await;

    let padding = "x".repeat(1000);
    let sent: Vec<String> = (0..60).map(|i| format!("{i:02} {padding}")).collect();
    for (i, text) in sent.iter().enumerate() {
        assert_eq!(alice.call(chat(a, b, text), i as i64).await["errno"], 0);
    }
    // Let the gateway write them (the writes succeed: they fit its send
    // buffer), then Bob's client vanishes with a reset.
    tokio::time::sleep(Duration::from_secs(1)).await;
    bob.reset();

    // He can log in again at once (the reset ended the session), and gets
    // every chat his TCP never acknowledged, in order. What it did
    // acknowledge (at most his small receive buffer, a few chats) counted
    // as delivered: a classic client does not say what it read.
    let mut bob_again = Client::connect(stack.gateways[0].tcp).await;
    let ack = bob_again.login_within(b, "pb", PATIENCE).await;
    let got = texts(&everything_at_login(&mut bob_again, &ack).await);
    assert!(
        got.len() >= 50,
        "{} of 60 came back: frames his TCP never took were counted as delivered",
        got.len()
    );
    assert_eq!(
        got,
        sent[sent.len() - got.len()..],
        "the tail, in order, each once"
    );
}

#[tokio::test]
async fn silently_dead_clients_are_noticed_and_their_users_can_log_in_again_within_15_s() {
    // Default idle timeout: this is the promise made to users.
    let stack = Stack::builder().gateways(2).start().await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let a = alice.register("alice", "pa").await;
    alice.login_ok(a, "pa").await;

    // Bob acknowledges over TCP, then stops answering without closing.
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let b = bob.register("bob", "pb").await;
    assert_eq!(bob.login_acking(b, "pb", None).await["errno"], 0);
    // Carol on a WebSocket that stops answering pings.
    let mut carol = WsClient::connect(stack.gateways[1].http).await;
    carol
        .send(&json!({"msgid": 4, "name": "carol", "password": "pc"}))
        .await;
    let c = carol.recv().await["id"].as_i64().expect("id");
    carol
        .send(&json!({"msgid": 1, "id": c, "password": "pc"}))
        .await;
    assert_eq!(carol.recv().await["errno"], 0);
    let silent_since = Instant::now();

    let sent = numbered("into the silence", 5);
    for (i, text) in sent.iter().enumerate() {
        assert_eq!(alice.call(chat(a, b, text), i as i64).await["errno"], 0);
        assert_eq!(
            alice.call(chat(a, c, text), 100 + i as i64).await["errno"],
            0
        );
    }

    let mut bob_again = Client::connect(stack.gateways[0].tcp).await;
    let ack = loop {
        let ack = bob_again.login_acking(b, "pb", None).await;
        if ack["errno"] == 0 {
            break ack;
        }
        assert!(silent_since.elapsed() < Duration::from_secs(15), "{ack}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got = texts(&everything_at_login(&mut bob_again, &ack).await);
    assert_eq!(got, sent, "nothing written into the dead pipe was lost");

    let mut carol_again = Client::connect(stack.gateways[0].tcp).await;
    let ack = carol_again
        .login_within(
            c,
            "pc",
            Duration::from_secs(15).saturating_sub(silent_since.elapsed()),
        )
        .await;
    let got = texts(&everything_at_login(&mut carol_again, &ack).await);
    // Carol's WebSocket session was classic (no acks): what reached her
    // socket before it was closed counted as delivered.
    assert!(got.iter().all(|t| sent.contains(t)), "{got:?}");
    assert!(carol.is_closed(Duration::from_secs(1)).await);
    drop(bob);
}

#[tokio::test]
async fn a_burst_of_500_chats_is_paced_not_refused_over_tcp_and_websocket() {
    let stack = Stack::builder().gateways(2).start().await;
    let (mut alice, a, mut bob, b) = stack.alice_and_bob(0, 1).await;

    // 500 chats in one write: more than the burst of 400.
    let sent = numbered("tcp burst", 500);
    let mut bytes = Vec::new();
    for text in &sent {
        bytes.extend(chat(a, b, text).to_string().into_bytes());
        bytes.push(0);
    }
    alice.send_raw(&bytes).await;
    let got = texts(&bob.chats_until_quiet(Duration::from_secs(3)).await);
    assert_eq!(got, sent, "complete and in order");
    alice.expect_silence(Duration::from_millis(200)).await;

    let mut carol = WsClient::connect(stack.gateways[0].http).await;
    carol
        .send(&json!({"msgid": 4, "name": "carol", "password": "pc"}))
        .await;
    let c = carol.recv().await["id"].as_i64().expect("id");
    carol
        .send(&json!({"msgid": 1, "id": c, "password": "pc"}))
        .await;
    assert_eq!(carol.recv().await["errno"], 0);
    let sent = numbered("ws burst", 500);
    for (i, text) in sent.iter().enumerate() {
        carol
            .send(&json!({"msgid": 6, "toid": b, "msg": text, "seq": i}))
            .await;
    }
    for i in 0..sent.len() {
        let reply = carol.recv().await;
        assert_eq!(
            (reply["seq"].as_u64(), &reply["errno"]),
            (Some(i as u64), &json!(0))
        );
    }
    let got = texts(&bob.chats_until_quiet(Duration::from_secs(3)).await);
    assert_eq!(got, sent, "complete and in order");
}

/// Chat texts from `client` until `want` all came (in the order given) or
/// PATIENCE passed; a client that acknowledges acknowledges each, and its
/// `rseq`s must grow. Returns every chat text received, in order.
async fn receive_until(client: &mut Client, want: &[String], last_rseq: &mut u64) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while !want.iter().all(|w| got.contains(w)) && Instant::now() < deadline {
        let Some(line) = client.try_recv_line(Duration::from_secs(1)).await else {
            client.send(&json!({"msgid": 13})).await;
            continue;
        };
        let m: Value = serde_json::from_str(&line).expect("json");
        let chats = match m["msgid"].as_i64() {
            Some(6) => vec![m],
            Some(2) => offline_messages(&m),
            _ => continue,
        };
        for chat in chats {
            if let Some(rseq) = chat["rseq"].as_u64() {
                assert!(rseq > *last_rseq, "increasing rseq: {chat}");
                *last_rseq = rseq;
                client.send(&json!({"msgid": 12, "ack": rseq})).await;
            }
            got.push(chat["msg"].as_str().expect("msg").to_owned());
        }
    }
    got
}

/// The texts of a conversation in history once it holds every one of
/// `want` (or PATIENCE passed), oldest first.
async fn history_texts(client: &mut Client, with: i64, want: &[String]) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    let mut seq = 5000;
    loop {
        seq += 1;
        let page = client
            .call(json!({"msgid": 16, "toid": with, "limit": 100}), seq)
            .await;
        assert_eq!(page["errno"], 0, "history: {page}");
        let got: Vec<String> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["msg"].as_str().expect("msg").to_owned())
            .collect();
        if want.iter().all(|w| got.contains(w)) || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn redis_restarted_from_older_data_loses_no_chat_sent_after_it() {
    // Redis comes back without its newest writes (a power loss, a backup put
    // back): its counters are behind numbers receivers and history already
    // have. Bob (classic) stays connected, Carol (a device) comes back with
    // `since`; both, and history, must get every chat sent after.
    let mut stack = Stack::builder()
        .gateways(2)
        .with_private_redis()
        .start()
        .await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let mut carol = Client::connect(stack.gateways[1].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = bob.register("bob", "pb").await;
    let c = carol.register("carol", "pc").await;
    alice.login_ok(a, "pa").await;
    bob.login_ok(b, "pb").await;
    assert_eq!(carol.login_acking(c, "pc", None).await["errno"], 0);
    let (mut bob_rseq, mut carol_rseq) = (0, 0);
    let mut seq = 0;
    let mut send = async |alice: &mut Client, texts: &[String]| {
        for text in texts {
            for to in [b, c] {
                seq += 1;
                call_until_accepted(alice, chat(a, to, text), seq).await;
            }
        }
    };

    let before = numbered("before the snapshot", 3);
    send(&mut alice, &before).await;
    assert_eq!(
        receive_until(&mut bob, &before, &mut bob_rseq).await,
        before
    );
    assert_eq!(
        receive_until(&mut carol, &before, &mut carol_rseq).await,
        before
    );
    stack.snapshot_redis().await;
    let lost_with_redis = numbered("after the snapshot", 3);
    send(&mut alice, &lost_with_redis).await;
    assert_eq!(
        receive_until(&mut bob, &lost_with_redis, &mut bob_rseq).await,
        lost_with_redis
    );
    assert_eq!(
        receive_until(&mut carol, &lost_with_redis, &mut carol_rseq).await,
        lost_with_redis
    );
    let so_far: Vec<String> = before.iter().chain(&lost_with_redis).cloned().collect();
    assert_eq!(history_texts(&mut alice, b, &so_far).await, so_far);
    assert_eq!(history_texts(&mut alice, c, &so_far).await, so_far);

    carol.reset();
    stack.restore_redis_snapshot().await;
    let after = numbered("after the restore", 3);
    send(&mut alice, &after).await;

    let got = receive_until(&mut bob, &after, &mut bob_rseq).await;
    assert_eq!(
        got.iter()
            .filter(|t| after.contains(t))
            .cloned()
            .collect::<Vec<_>>(),
        after,
        "Bob, still connected, gets every chat sent after the restore, in order: {got:?}"
    );
    let mut carol = Client::connect(stack.gateways[0].tcp).await;
    let ack = carol.login_acking(c, "pc", Some(carol_rseq)).await;
    assert_eq!(ack["errno"], 0, "{ack}");
    let mut got: Vec<String> = offline_messages(&ack)
        .iter()
        .map(|m| {
            let rseq = m["rseq"].as_u64().expect("rseq");
            assert!(rseq > carol_rseq, "above the since she gave: {m}");
            carol_rseq = rseq;
            m["msg"].as_str().expect("msg").to_owned()
        })
        .collect();
    if !after.iter().all(|t| got.contains(t)) {
        got.extend(receive_until(&mut carol, &after, &mut carol_rseq).await);
    }
    assert_eq!(
        got, after,
        "Carol, back with since, gets exactly what was sent after"
    );

    let all: Vec<String> = so_far.iter().chain(&after).cloned().collect();
    assert_eq!(history_texts(&mut alice, b, &all).await, all);
    assert_eq!(history_texts(&mut alice, c, &all).await, all);
}

#[tokio::test]
async fn a_sender_who_moved_nodes_after_an_outage_keeps_their_order() {
    // A node cut off from Redis stored Alice's chat to Bob with the offline
    // service (no inbox sequence), then died; the other node had read the
    // list of receivers owed such chats before that. Alice logs in there and
    // sends on: her earlier chat must reach Bob first.
    let stack = Stack::builder()
        .gateways(2)
        .with_private_redis()
        .start()
        .await;
    let mut alice = Client::connect(stack.gateways[1].tcp).await;
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let mut carol = Client::connect(stack.gateways[1].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = bob.register("bob", "pb").await;
    let c = carol.register("carol", "pc").await;
    assert_eq!(bob.login_acking(b, "pb", None).await["errno"], 0);
    let mut last_rseq = 0;
    // The node reads whom chats stored during an outage are owed to before
    // its first chat: that list is read now, without Bob.
    carol.login_ok(c, "pc").await;
    assert_eq!(carol.call(chat(c, b, "warm-up"), 1).await["errno"], 0);
    let warm = ["warm-up".to_owned()];
    assert_eq!(receive_until(&mut bob, &warm, &mut last_rseq).await, warm);

    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{}", stack.offline_addr))
            .expect("endpoint");
    let mut offline =
        clusterchat_proto::offline::v1::offline_service_client::OfflineServiceClient::new(
            endpoint.connect().await.expect("offline service"),
        );
    let mut request = tonic::Request::new(clusterchat_proto::offline::v1::StoreRequest {
        receiver_id: b,
        sender_id: a,
        client_msg_id: "from-the-node-that-died".into(),
        payload: chat(a, b, "stored during the outage").to_string(),
        inbox_seq: 0,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", stack.internal_token)
            .parse()
            .expect("header"),
    );
    offline.store(request).await.expect("stored");

    alice.login_ok(a, "pa").await;
    let after = numbered("after the move", 3);
    for (i, text) in after.iter().enumerate() {
        let reply = alice.call(chat(a, b, text), i as i64 + 1).await;
        assert_eq!(reply["errno"], 0, "{reply}");
    }
    let mut want = vec!["stored during the outage".to_owned()];
    want.extend(after);
    let got = receive_until(&mut bob, &want, &mut last_rseq).await;
    assert_eq!(got, want, "in the order Alice sent them, once each");
}
