//! Conversations end to end: history kept by the history service from the
//! gateways' streams, paged both ways; unread counts and read receipts
//! across nodes; several devices of one user; a history service that is
//! down or frozen; group history from the time a member joined. Real
//! processes (two gateway nodes, the three services, MariaDB, Redis).

use std::{collections::BTreeSet, time::Duration};

use e2e::{Client, PATIENCE, Stack, chat, group_chat, next_where, texts};
use serde_json::{Value, json};
use tokio::time::Instant;

/// A device login (acks) on `node`.
async fn device(stack: &Stack, node: usize, id: i64, password: &str) -> Client {
    let mut client = Client::connect(stack.gateways[node].tcp).await;
    let ack = client.login_acking(id, password, None).await;
    assert_eq!(ack["errno"], 0, "login {id}: {ack}");
    client
}

async fn registered(stack: &Stack, name: &str) -> i64 {
    let mut client = Client::connect(stack.gateways[0].tcp).await;
    client.register(name, "pw").await
}

async fn history_page(client: &mut Client, seq: i64, request: Value) -> Value {
    let mut request = request;
    request["msgid"] = 16.into();
    let reply = client.call(request, seq).await;
    assert_eq!(reply["errno"], 0, "history: {reply}");
    reply
}

/// The whole conversation once history holds `expected` messages of it,
/// oldest first, read newest page first (`before`) back to the start.
async fn whole_history_backwards(
    client: &mut Client,
    target: Value,
    expected: usize,
    limit: u64,
) -> Vec<Value> {
    let mut seq = 1000;
    let deadline = Instant::now() + PATIENCE * 3;
    loop {
        let mut all: Vec<Value> = Vec::new();
        let mut before = 0u64;
        loop {
            seq += 1;
            let mut request = target.clone();
            request["limit"] = limit.into();
            if before > 0 {
                request["before"] = before.into();
            }
            let page = history_page(client, seq, request).await;
            let messages = page["messages"].as_array().expect("messages").clone();
            let more = page["more"].as_bool().expect("more");
            if let Some(first) = messages.first() {
                before = first["cseq"].as_u64().expect("cseq");
            }
            let mut chunk = messages;
            chunk.extend(all);
            all = chunk;
            if !more {
                break;
            }
        }
        if all.len() >= expected || Instant::now() >= deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn cseqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["cseq"].as_u64().expect("cseq"))
        .collect()
}

fn assert_consecutive(cseqs: &[u64]) {
    for pair in cseqs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a gap or a repeat in {cseqs:?}");
    }
}

#[tokio::test]
async fn history_pages_both_ways_through_thousands_of_messages_without_a_gap_or_repeat() {
    let stack = Stack::builder()
        .gateways(2)
        .gateway_env("CLUSTERCHAT_GATEWAY_RATE_PER_SEC", "5000")
        .gateway_env("CLUSTERCHAT_GATEWAY_RATE_BURST", "5000")
        .start()
        .await;
    let a = registered(&stack, "alice").await;
    let b = registered(&stack, "bob").await;
    let mut alice = device(&stack, 0, a, "pw").await;
    let mut bob = device(&stack, 1, b, "pw").await;
    const N: usize = 2500;
    // Both sides talk; every send is answered with its conversation number.
    let mut sent: Vec<(u64, String)> = Vec::new();
    for round in 0..N / 50 {
        for (who, client, from, to) in [("a", &mut alice, a, b), ("b", &mut bob, b, a)] {
            for i in 0..25 {
                let text = format!("{who} {round} {i}");
                let seq = (round * 100 + i + 1) as i64;
                client
                    .send(&{
                        let mut c = chat(from, to, &text);
                        c["seq"] = seq.into();
                        c
                    })
                    .await;
                sent.push((0, text));
            }
            let mut answered = 0;
            let mut skipped = Vec::new();
            let start = sent.len() - 25;
            while answered < 25 {
                let reply = next_where(client, &mut skipped, |v| v["msgid"] == 11).await;
                assert_eq!(reply["errno"], 0, "{reply}");
                assert_eq!(reply["conv"], format!("d:{}:{}", a.min(b), a.max(b)));
                let index =
                    start + (reply["seq"].as_i64().expect("seq") as usize - round * 100 - 1);
                sent[index].0 = reply["cseq"].as_u64().expect("the reply carries cseq");
                answered += 1;
            }
        }
    }
    sent.sort();
    let expected_cseqs: Vec<u64> = sent.iter().map(|s| s.0).collect();
    assert_consecutive(&expected_cseqs);

    let back = whole_history_backwards(&mut alice, json!({"toid": b}), N, 200).await;
    assert_eq!(back.len(), N, "history holds every message once");
    assert_eq!(
        cseqs(&back),
        expected_cseqs,
        "paging back: in order, no gap, no repeat"
    );
    assert_eq!(
        texts(&back),
        sent.iter().map(|s| s.1.clone()).collect::<Vec<_>>()
    );
    assert!(
        back.iter()
            .all(|m| m["conv"] == back[0]["conv"] && m["mid"].is_string())
    );

    // Forward from the start, as bob (by conversation id), 150 at a time.
    let conv = back[0]["conv"].as_str().expect("conv").to_owned();
    let mut forward: Vec<Value> = Vec::new();
    let mut after = expected_cseqs[0] - 1;
    let mut seq = 50_000;
    loop {
        seq += 1;
        let page = history_page(
            &mut bob,
            seq,
            json!({"conv": conv, "after": after, "limit": 150}),
        )
        .await;
        let messages = page["messages"].as_array().expect("messages");
        forward.extend(messages.iter().cloned());
        if let Some(last) = messages.last() {
            after = last["cseq"].as_u64().expect("cseq");
        }
        if page["more"] != true {
            break;
        }
    }
    assert_eq!(cseqs(&forward), expected_cseqs, "paging forward agrees");
}

#[tokio::test]
async fn a_chat_refused_altogether_then_retried_with_its_cmid_is_in_history_once() {
    // Issue 20, hole 2: the web client's "retry" resends a refused chat
    // with the same cmid. Bob's inbox holds two messages at most and he
    // acknowledges nothing until told: the third chat is refused
    // altogether (numbered, then retracted), and retried once he has room.
    let stack = Stack::builder()
        .gateways(2)
        .gateway_env("CLUSTERCHAT_GATEWAY_MAX_INBOX", "2")
        .start()
        .await;
    let a = registered(&stack, "alice").await;
    let b = registered(&stack, "bob").await;
    let mut alice = device(&stack, 0, a, "pw").await;
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    assert_eq!(bob.login_acking(b, "pw", None).await["errno"], 0);
    let mut bob_rseq = 0;
    for (n, text) in ["one", "two"].into_iter().enumerate() {
        let reply = alice.call(chat(a, b, text), 1 + n as i64).await;
        assert_eq!(reply["errno"], 0, "{reply}");
        let got = bob.recv().await;
        assert_eq!(got["msg"], text);
        bob_rseq = got["rseq"].as_u64().expect("rseq");
    }
    let retried = || {
        let mut m = chat(a, b, "refused, then retried");
        m["cmid"] = "the-retried-one".into();
        m
    };
    let refused = alice.call(retried(), 10).await;
    assert_eq!(refused["errno"], 13, "bob's inbox is full: {refused}");

    // Bob acknowledges: room again. The retry (same cmid) goes through.
    bob.send(&json!({"msgid": 12, "ack": bob_rseq})).await;
    let deadline = Instant::now() + PATIENCE;
    let accepted = loop {
        let reply = alice.call(retried(), 11).await;
        if reply["errno"] == 0 {
            break reply;
        }
        assert_eq!(reply["errno"], 13, "{reply}");
        assert!(Instant::now() < deadline, "bob's inbox never emptied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let got = bob.recv().await;
    assert_eq!(got["msg"], "refused, then retried");
    assert_eq!(
        got["cseq"], accepted["cseq"],
        "bob sees the number alice was told"
    );

    // History has it once, under the number the retry was given. The
    // ingest runs behind the chat (it lets a trickle gather for up to
    // 100 ms): three messages may show while the retraction of the refused
    // attempt's number and the retry's own entry are still on their way,
    // so wait until it has caught up (or the deadline), then assert.
    let deadline = Instant::now() + PATIENCE;
    let back = loop {
        let back = whole_history_backwards(&mut alice, json!({"toid": b}), 3, 50).await;
        if back.get(2).map(|m| &m["cseq"]) == Some(&accepted["cseq"]) || Instant::now() >= deadline
        {
            break back;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(texts(&back), ["one", "two", "refused, then retried"]);
    assert_eq!(back[2]["cseq"], accepted["cseq"], "{back:?}");
    assert_eq!(back[2]["mid"], accepted["mid"], "{back:?}");
    let numbers = cseqs(&back);
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    // Still so once nothing more can arrive late.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = whole_history_backwards(&mut bob, json!({"toid": a}), 3, 50).await;
    assert_eq!(cseqs(&again), numbers);
}

#[tokio::test]
async fn unread_counts_and_read_receipts_cross_nodes() {
    let stack = Stack::builder().gateways(2).start().await;
    let a = registered(&stack, "alice").await;
    let b = registered(&stack, "bob").await;
    let mut alice = device(&stack, 0, a, "pw").await;
    let mut bob = device(&stack, 1, b, "pw").await;
    let mut cseq = Vec::new();
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        let reply = alice.call(chat(a, b, text), i as i64 + 1).await;
        assert_eq!(reply["errno"], 0, "{reply}");
        cseq.push(reply["cseq"].as_u64().expect("cseq"));
    }
    let mut skipped = Vec::new();
    for text in ["one", "two", "three"] {
        let got = next_where(&mut bob, &mut skipped, |v| v["msgid"] == 6).await;
        assert_eq!(got["msg"], text);
        assert!(got["conv"].is_string() && got["cseq"].is_u64(), "{got}");
    }

    // Bob's list, once history has them: three unread from alice.
    let conv = format!("d:{}:{}", a.min(b), a.max(b));
    let mut seq = 10;
    let deadline = Instant::now() + PATIENCE;
    let entry = loop {
        seq += 1;
        let list = bob.call(json!({"msgid": 17}), seq).await;
        assert_eq!(list["errno"], 0, "{list}");
        let found = list["conversations"]
            .as_array()
            .expect("conversations")
            .iter()
            .find(|c| c["conv"] == conv.as_str())
            .cloned();
        // The unread count comes from Redis's newest number, the last
        // message from history: both once history has ingested all three.
        if let Some(entry) = found.filter(|c| c["unread"] == 3 && c["last"]["msg"] == "three") {
            break entry;
        }
        assert!(
            Instant::now() < deadline,
            "no unread count of 3 with the third as the last: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entry["peer"], a);
    assert_eq!(entry["last"]["msg"], "three");
    assert_eq!(entry["read"], 0);

    // Bob reads up to the second: alice (on the other node) is told.
    let read = bob
        .call(json!({"msgid": 18, "conv": conv, "upto": cseq[1]}), 100)
        .await;
    assert_eq!(read["errno"], 0, "{read}");
    assert_eq!(read["read"], cseq[1]);
    assert_eq!(read["unread"], 1);
    let receipt = next_where(&mut alice, &mut skipped, |v| v["msgid"] == 18).await;
    assert_eq!(
        receipt,
        json!({"msgid": 18, "conv": conv, "id": b, "upto": cseq[1]})
    );

    // Read marks only go up.
    let lower = bob
        .call(json!({"msgid": 18, "toid": a, "upto": cseq[0]}), 101)
        .await;
    assert_eq!(lower["read"], cseq[1], "{lower}");

    // Alice sees how far bob has read; bob's count is down to one.
    let list = alice.call(json!({"msgid": 17}), 102).await;
    let mine = &list["conversations"][0];
    assert_eq!(mine["conv"], conv.as_str(), "{list}");
    assert_eq!(mine["peer_read"], cseq[1]);
    assert_eq!(mine["unread"], 0, "her own messages are not unread to her");
    let list = bob.call(json!({"msgid": 17}), 103).await;
    assert_eq!(list["conversations"][0]["unread"], 1, "{list}");

    // Typing reaches the other party, not the typist.
    alice.send(&json!({"msgid": 19, "toid": b})).await;
    let typing = next_where(&mut bob, &mut skipped, |v| v["msgid"] == 19).await;
    assert_eq!(typing["id"], a);
    assert_eq!(typing["conv"], conv.as_str());
    assert_eq!(typing["name"], "alice");

    // Delivery receipts (msgid 20) go to the other party, never stored.
    bob.send(&json!({"msgid": 20, "conv": conv, "upto": cseq[2]}))
        .await;
    let delivered = next_where(&mut alice, &mut skipped, |v| v["msgid"] == 20).await;
    assert_eq!(
        delivered,
        json!({"msgid": 20, "conv": conv, "id": b, "upto": cseq[2]})
    );

    // Someone else's conversation is refused, and says why.
    let other = bob
        .call(
            json!({"msgid": 16, "conv": format!("d:{a}:{}", a.max(b) + 1000)}),
            104,
        )
        .await;
    assert_eq!(other["errno"], 4, "{other}");
    assert!(other["errmsg"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn two_devices_on_different_nodes_get_everything_and_stay_in_sync() {
    let stack = Stack::builder().gateways(2).start().await;
    let a = registered(&stack, "alice").await;
    let b = registered(&stack, "bob").await;
    let mut alice = device(&stack, 0, a, "pw").await;
    let mut bob_web = device(&stack, 0, b, "pw").await;
    let mut bob_term = device(&stack, 1, b, "pw").await;
    let mut skipped = Vec::new();

    // A classic login is refused while the devices are on, as it always was.
    let mut classic = Client::connect(stack.gateways[1].tcp).await;
    assert_eq!(classic.login(b, "pw").await["errno"], 2);

    // Alice's message reaches both devices.
    alice.call(chat(a, b, "hello both"), 1).await;
    for device in [&mut bob_web, &mut bob_term] {
        let got = next_where(device, &mut skipped, |v| v["msgid"] == 6).await;
        assert_eq!(got["msg"], "hello both");
    }
    // A message bob sends from the terminal shows on the web page (and alice).
    let sent = bob_term.call(chat(b, a, "from my terminal"), 2).await;
    assert_eq!(sent["errno"], 0, "{sent}");
    let carbon = next_where(&mut bob_web, &mut skipped, |v| v["msgid"] == 6).await;
    assert_eq!(carbon["msg"], "from my terminal");
    assert_eq!(carbon["id"], b, "his own message");
    assert_eq!(carbon["cseq"], sent["cseq"]);
    assert!(carbon.get("rseq").is_none(), "not in his inbox: {carbon}");
    let got = next_where(&mut alice, &mut skipped, |v| v["msgid"] == 6).await;
    assert_eq!(got["msg"], "from my terminal");

    // Read state follows to the other device.
    let conv = sent["conv"].as_str().expect("conv").to_owned();
    let read = bob_web
        .call(json!({"msgid": 18, "conv": conv, "upto": sent["cseq"]}), 3)
        .await;
    assert_eq!(read["errno"], 0, "{read}");
    let receipt = next_where(&mut bob_term, &mut skipped, |v| v["msgid"] == 18).await;
    assert_eq!(receipt["id"], b);
    assert_eq!(receipt["upto"], sent["cseq"]);

    // The terminal goes away; the web page gets (and acknowledges) what
    // alice sends meanwhile; the terminal comes back on the other node and
    // fills the gap from history.
    let last_seen = sent["cseq"].as_u64().expect("cseq");
    drop(bob_term);
    let mut expected = Vec::new();
    for i in 0..5 {
        let text = format!("while away {i}");
        let reply = alice.call(chat(a, b, &text), 10 + i).await;
        assert_eq!(reply["errno"], 0, "{reply}");
        expected.push(text);
    }
    for text in &expected {
        let got = next_where(&mut bob_web, &mut skipped, |v| v["msgid"] == 6).await;
        assert_eq!(&got["msg"], text.as_str());
    }
    let mut bob_term = device(&stack, 0, b, "pw").await;
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + PATIENCE;
    let mut seq = 100;
    while seen.len() < expected.len() {
        seq += 1;
        let page = history_page(
            &mut bob_term,
            seq,
            json!({"conv": conv, "after": last_seen}),
        )
        .await;
        let messages = page["messages"].as_array().expect("messages");
        let got = texts(messages);
        assert!(
            got.iter().all(|t| expected.contains(t)),
            "nothing else after his last message: {got:?}"
        );
        assert_consecutive(&cseqs(messages));
        seen = got.into_iter().collect();
        assert!(
            Instant::now() < deadline,
            "history never caught up: {seen:?}"
        );
        if seen.len() < expected.len() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // And both devices go on receiving live.
    alice.call(chat(a, b, "welcome back"), 50).await;
    for device in [&mut bob_web, &mut bob_term] {
        let got = next_where(device, &mut skipped, |v| {
            v["msgid"] == 6 && v["msg"] == "welcome back"
        })
        .await;
        assert_eq!(got["id"], a);
    }
}

#[tokio::test]
async fn a_history_service_down_or_frozen_loses_and_delays_no_chat_and_catches_up() {
    let mut stack = Stack::builder().gateways(2).start().await;
    let a = registered(&stack, "alice").await;
    let b = registered(&stack, "bob").await;
    let mut alice = device(&stack, 0, a, "pw").await;
    let mut bob = device(&stack, 1, b, "pw").await;
    let mut skipped = Vec::new();
    let mut all = Vec::new();
    let mut seq = 0;
    // Sends `n` chats while the fault lasts; each is answered and arrives.
    let mut exchange = async |alice: &mut Client, bob: &mut Client, label: &str, n: usize| {
        for i in 0..n {
            let text = format!("{label} {i}");
            seq += 1;
            let reply = alice.call(chat(a, b, &text), seq).await;
            assert_eq!(reply["errno"], 0, "chat during '{label}': {reply}");
            let got = next_where(bob, &mut skipped, |v| v["msgid"] == 6).await;
            assert_eq!(got["msg"], text.as_str(), "live, in order");
            all.push(text);
        }
    };
    exchange(&mut alice, &mut bob, "before", 20).await;

    // Down: chat goes on; asking for history says why it cannot.
    stack.kill_history().await;
    exchange(&mut alice, &mut bob, "down", 100).await;
    let refused = alice.call(json!({"msgid": 16, "toid": b}), 10_000).await;
    assert_eq!(refused["errno"], 8, "{refused}");
    assert!(
        refused["errmsg"]
            .as_str()
            .is_some_and(|m| m.contains("history")),
        "{refused}"
    );
    stack.start_history().await;

    // Frozen (SIGSTOP): the same.
    stack.signal_history("STOP");
    exchange(&mut alice, &mut bob, "frozen", 100).await;
    stack.signal_history("CONT");

    let history = whole_history_backwards(&mut bob, json!({"toid": a}), all.len(), 200).await;
    assert_eq!(
        texts(&history),
        all,
        "history caught up: nothing missing, nothing twice"
    );
    assert_consecutive(&cseqs(&history));
}

#[tokio::test]
async fn group_history_starts_when_a_member_joined() {
    let stack = Stack::builder().gateways(2).start().await;
    let a = registered(&stack, "alice").await;
    let b = registered(&stack, "bob").await;
    let c = registered(&stack, "carol").await;
    let d = registered(&stack, "dave").await;
    let mut alice = device(&stack, 0, a, "pw").await;
    let mut bob = device(&stack, 1, b, "pw").await;
    let mut carol = device(&stack, 1, c, "pw").await;
    let mut dave = device(&stack, 0, d, "pw").await;
    let created = alice
        .call(
            json!({"msgid": 8, "id": a, "groupname": "crew", "groupdesc": "x"}),
            1,
        )
        .await;
    let g = created["groupid"].as_i64().expect("groupid");
    assert_eq!(
        bob.call(json!({"msgid": 9, "id": b, "groupid": g}), 1)
            .await["errno"],
        0
    );
    for i in 0..3 {
        let reply = alice
            .call(group_chat(a, g, &format!("early {i}")), 10 + i)
            .await;
        assert_eq!(reply["errno"], 0, "{reply}");
    }
    // Carol's groups are looked up (and kept for a while) before she joins.
    let before = carol.call(json!({"msgid": 17}), 3).await;
    assert_eq!(before["conversations"], json!([]), "{before}");
    // Join times are kept in milliseconds: keep the join apart from the
    // messages around it by more than that.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        carol
            .call(json!({"msgid": 9, "id": c, "groupid": g}), 2)
            .await["errno"],
        0
    );
    let at_once = carol.call(json!({"msgid": 16, "groupid": g}), 4).await;
    assert_eq!(
        at_once["errno"], 0,
        "a member at once, not after a cache expires: {at_once}"
    );
    assert_eq!(
        at_once["messages"],
        json!([]),
        "nothing from before she joined"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..2 {
        let reply = alice
            .call(group_chat(a, g, &format!("late {i}")), 20 + i)
            .await;
        assert_eq!(reply["errno"], 0, "{reply}");
    }
    let bobs = whole_history_backwards(&mut bob, json!({"groupid": g}), 5, 50).await;
    assert_eq!(
        texts(&bobs),
        ["early 0", "early 1", "early 2", "late 0", "late 1"]
    );
    assert_consecutive(&cseqs(&bobs));
    let carols = whole_history_backwards(&mut carol, json!({"groupid": g}), 2, 50).await;
    assert_eq!(
        texts(&carols),
        ["late 0", "late 1"],
        "only from when she joined"
    );
    let list = carol.call(json!({"msgid": 17}), 30).await;
    let entry = &list["conversations"][0];
    assert_eq!(entry["groupid"], g, "{list}");
    assert_eq!(entry["unread"], 2, "what she can see: {list}");
    let outsider = dave.call(json!({"msgid": 16, "groupid": g}), 31).await;
    assert_eq!(outsider["errno"], 4, "not a member: {outsider}");
}

#[tokio::test]
async fn the_roster_lists_friends_and_groups_with_presence() {
    let stack = Stack::builder().gateways(2).start().await;
    let a = registered(&stack, "alice").await;
    let b = registered(&stack, "bob").await;
    let c = registered(&stack, "carol").await;
    let mut alice = device(&stack, 0, a, "pw").await;
    let _bob = device(&stack, 1, b, "pw").await;
    for (seq, friend) in [(1, b), (2, c)] {
        let added = alice
            .call(json!({"msgid": 7, "id": a, "friendid": friend}), seq)
            .await;
        assert_eq!(added["errno"], 0, "{added}");
    }
    let created = alice
        .call(
            json!({"msgid": 8, "id": a, "groupname": "crew", "groupdesc": "the crew"}),
            3,
        )
        .await;
    let g = created["groupid"].as_i64().expect("groupid");
    let roster = alice.call(json!({"msgid": 21}), 4).await;
    assert_eq!(roster["errno"], 0, "{roster}");
    let mut friends = roster["friends"].as_array().expect("friends").clone();
    friends.sort_by_key(|f| f["id"].as_i64());
    assert_eq!(
        friends,
        [
            json!({"id": b, "name": "bob", "online": true}),
            json!({"id": c, "name": "carol", "online": false}),
        ]
    );
    assert_eq!(
        roster["groups"],
        json!([{"id": g, "name": "crew", "description": "the crew",
                "members": [{"id": a, "name": "alice", "online": true, "creator": true}]}])
    );
}

#[tokio::test]
async fn the_http_port_serves_the_web_client_next_to_the_websocket() {
    let dir = std::env::temp_dir().join(format!("e2e-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("index.html"),
        "<!doctype html><title>clusterchat</title>",
    )
    .expect("write");
    std::fs::write(dir.join("app.js"), "console.log(1)").expect("write");
    let stack = Stack::builder()
        .gateways(2)
        .with_nginx()
        .gateway_env("CLUSTERCHAT_GATEWAY_WEB_DIR", dir.to_str().expect("utf-8"))
        .start()
        .await;
    let front = stack.nginx.as_ref().expect("nginx").ws;
    let (status, body) = e2e::http_get(front, "/").await.expect("answers");
    assert_eq!(status, 200);
    assert!(body.contains("<title>clusterchat</title>"), "{body}");
    let (status, body) = e2e::http_get(front, "/app.js").await.expect("answers");
    assert_eq!((status, body.as_str()), (200, "console.log(1)"));
    let (status, _) = e2e::http_get(front, "/../Cargo.toml")
        .await
        .expect("answers");
    assert_eq!(status, 404);
    // The same origin still speaks WebSocket.
    let mut ws = e2e::WsClient::connect(front).await;
    ws.send(&json!({"msgid": 13, "seq": 1})).await;
    assert_eq!(ws.recv().await, json!({"msgid": 14, "seq": 1}));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// The texts of a search reply's hits, sorted.
fn hit_texts(reply: &Value) -> Vec<String> {
    let mut texts = texts(reply["hits"].as_array().map_or(&[][..], Vec::as_slice));
    texts.sort_unstable();
    texts
}

#[tokio::test]
async fn search_finds_chinese_across_nodes_from_a_members_join_and_never_anothers_chats() {
    let stack = Stack::builder().gateways(2).start().await;
    let a = registered(&stack, "alice").await;
    let b = registered(&stack, "bob").await;
    let c = registered(&stack, "carol").await;
    let mut alice = device(&stack, 0, a, "pw").await;
    let mut bob = device(&stack, 1, b, "pw").await;
    let g = alice
        .call(json!({"msgid": 8, "groupname": "trip", "groupdesc": ""}), 1)
        .await["groupid"]
        .as_i64()
        .expect("groupid");
    let sent = alice
        .call(group_chat(a, g, "北京 before bob joined"), 2)
        .await;
    assert_eq!(sent["errno"], 0, "{sent}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        bob.call(json!({"msgid": 9, "groupid": g}), 1).await["errno"],
        0
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    for (seq, (from, to, text)) in [
        (3, (a, b, "明天去北京开会")),
        (4, (a, c, "北京 is for carol only")),
        (5, (a, 0, "北京 after bob joined")),
    ] {
        let request = if to == 0 {
            group_chat(from, g, text)
        } else {
            chat(from, to, text)
        };
        assert_eq!(alice.call(request, seq).await["errno"], 0, "{text}");
    }
    assert_eq!(bob.call(chat(b, a, "好的，北京见"), 2).await["errno"], 0);

    // History is stored a moment after the chats are accepted.
    let want = ["北京 after bob joined", "好的，北京见", "明天去北京开会"];
    let deadline = Instant::now() + PATIENCE;
    let found = loop {
        let found = bob.call(json!({"msgid": 31, "q": "北京"}), 10).await;
        assert_eq!(found["errno"], 0, "{found}");
        if hit_texts(&found) == want || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(hit_texts(&found), want, "{found}");
    assert_eq!(found["more"], false);
    let hit = found["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .find(|h| h["msg"] == "明天去北京开会")
        .expect("the chat");
    assert_eq!(hit["marks"], json!([[3, 5]]), "{hit}");
    assert_eq!(hit["id"], a, "{hit}");
    assert!(hit["mid"].is_string() && hit["cseq"].is_u64(), "{hit}");
    assert_eq!(hit["conv"], format!("d:{}:{}", a.min(b), a.max(b)));

    // In one conversation; a page of one says more follow.
    let in_group = bob
        .call(json!({"msgid": 31, "q": "北京", "groupid": g}), 11)
        .await;
    assert_eq!(
        hit_texts(&in_group),
        ["北京 after bob joined"],
        "{in_group}"
    );
    let first = bob
        .call(json!({"msgid": 31, "q": "北京", "limit": 1}), 12)
        .await;
    assert_eq!(
        (first["hits"].as_array().map(Vec::len), &first["more"]),
        (Some(1), &json!(true))
    );

    // Not his conversation, and a request without words: refused, saying why.
    let theirs = format!("d:{}:{}", a.min(c), a.max(c));
    let refused = bob
        .call(json!({"msgid": 31, "q": "北京", "conv": theirs}), 13)
        .await;
    assert_eq!(refused["errno"], 4, "{refused}");
    let empty = bob.call(json!({"msgid": 31, "q": " "}), 14).await;
    assert_eq!(empty["errno"], 1, "{empty}");
    assert!(
        empty["errmsg"]
            .as_str()
            .unwrap_or("")
            .contains("q is empty"),
        "{empty}"
    );
}
