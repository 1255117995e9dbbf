//! Group chats written once, to the group's log, and read by each member's
//! cursor (ARCHITECTURE.md, "Groups"): members on other nodes, members who
//! were away, members who joined later, each kind of client.

use std::time::Duration;

use e2e::{Client, Stack, group_chat, texts};
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(800);

async fn new_group(owner: &mut Client, name: &str) -> i64 {
    owner
        .call(json!({"msgid": 8, "groupname": name, "groupdesc": ""}), 90)
        .await["groupid"]
        .as_i64()
        .expect("group id")
}

async fn join(client: &mut Client, id: i64, group: i64) {
    let reply = client
        .call(json!({"msgid": 9, "id": id, "groupid": group}), 91)
        .await;
    assert_eq!(reply["errno"], 0, "{reply}");
}

async fn send_all(client: &mut Client, from: i64, group: i64, texts: &[&str]) {
    for (n, text) in texts.iter().enumerate() {
        let reply = client
            .call(group_chat(from, group, text), 100 + n as i64)
            .await;
        assert_eq!(reply["errno"], 0, "{reply}");
        assert!(reply.get("failed").is_none(), "{reply}");
    }
}

#[tokio::test]
async fn members_on_other_nodes_and_members_away_get_each_group_chat_once_in_order() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let mut carol = Client::connect(stack.gateways[1].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = bob.register("bob", "pb").await;
    let c = carol.register("carol", "pc").await;
    alice.login_ok(a, "pa").await;
    bob.login_ok(b, "pb").await;
    carol.login_ok(c, "pc").await;
    let g = new_group(&mut alice, "team").await;
    join(&mut bob, b, g).await;
    join(&mut carol, c, g).await;

    // Live, across nodes; the sender does not get their own back.
    send_all(&mut alice, a, g, &["one", "two"]).await;
    for client in [&mut bob, &mut carol] {
        let got = client.chats_until_quiet(QUIET).await;
        assert_eq!(texts(&got), ["one", "two"]);
        assert!(got.iter().all(|m| m["groupid"] == g && m["id"] == a));
        assert!(
            got.iter().all(|m| m.get("cseq").is_none()),
            "a classic client gets exactly the classic frame: {got:?}"
        );
    }
    assert!(alice.chats_until_quiet(QUIET).await.is_empty());

    // Carol leaves; what is sent meanwhile waits in the log for her.
    carol.send(&json!({"msgid": 3, "id": c})).await;
    drop(carol);
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_all(&mut alice, a, g, &["three", "four"]).await;
    assert_eq!(
        texts(&bob.chats_until_quiet(QUIET).await),
        ["three", "four"]
    );

    let mut carol = Client::connect(stack.gateways[0].tcp).await;
    carol.login_ok(c, "pc").await;
    assert_eq!(
        texts(&carol.chats_until_quiet(QUIET).await),
        ["three", "four"],
        "what she missed, once, in order, on the other node"
    );
    send_all(&mut bob, b, g, &["five"]).await;
    assert_eq!(texts(&carol.chats_until_quiet(QUIET).await), ["five"]);
    assert_eq!(texts(&alice.chats_until_quiet(QUIET).await), ["five"]);

    // Her TCP acknowledged them: the next login has nothing old.
    carol.send(&json!({"msgid": 3, "id": c})).await;
    drop(carol);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut carol = Client::connect(stack.gateways[1].tcp).await;
    carol.login_ok(c, "pc").await;
    assert!(carol.chats_until_quiet(QUIET).await.is_empty());
}

#[tokio::test]
async fn a_member_who_joins_later_gets_only_what_follows() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut dave = Client::connect(stack.gateways[1].tcp).await;
    let a = alice.register("alice", "pa").await;
    let d = dave.register("dave", "pd").await;
    alice.login_ok(a, "pa").await;
    dave.login_ok(d, "pd").await;
    let g = new_group(&mut alice, "club").await;
    send_all(&mut alice, a, g, &["before dave"]).await;
    join(&mut dave, d, g).await;
    send_all(&mut alice, a, g, &["after dave"]).await;
    assert_eq!(texts(&dave.chats_until_quiet(QUIET).await), ["after dave"]);

    // And at his next login nothing from before he joined either.
    dave.send(&json!({"msgid": 3, "id": d})).await;
    drop(dave);
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_all(&mut alice, a, g, &["while away"]).await;
    let mut dave = Client::connect(stack.gateways[0].tcp).await;
    dave.login_ok(d, "pd").await;
    assert_eq!(texts(&dave.chats_until_quiet(QUIET).await), ["while away"]);
}

#[tokio::test]
async fn a_device_gets_group_chats_until_it_acknowledges_them() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut erin = Client::connect(stack.gateways[1].tcp).await;
    let a = alice.register("alice", "pa").await;
    let e = erin.register("erin", "pe").await;
    alice.login_ok(a, "pa").await;
    assert_eq!(erin.login_acking(e, "pe", None).await["errno"], 0);
    let g = new_group(&mut alice, "devices").await;
    join(&mut erin, e, g).await;
    send_all(&mut alice, a, g, &["g1", "g2", "g3"]).await;
    let got = erin.chats_until_quiet(QUIET).await;
    assert_eq!(texts(&got), ["g1", "g2", "g3"]);
    let conv = format!("g:{g}");
    for m in &got {
        assert_eq!(m["conv"], conv.as_str(), "{m}");
        assert!(m["mid"].is_string() && m["cseq"].is_u64(), "{m}");
        assert!(m.get("rseq").is_none(), "not an inbox entry: {m}");
    }
    let cseq = |m: &Value| m["cseq"].as_u64().expect("cseq");
    // Acknowledges the first two only, then leaves.
    erin.send(&json!({"msgid": 12, "ack": cseq(&got[1]), "conv": conv}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    erin.send(&json!({"msgid": 3, "id": e})).await;
    drop(erin);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut erin = Client::connect(stack.gateways[0].tcp).await;
    assert_eq!(erin.login_acking(e, "pe", None).await["errno"], 0);
    let again = erin.chats_until_quiet(QUIET).await;
    assert_eq!(texts(&again), ["g3"], "the unacknowledged one, again");
    assert_eq!(cseq(&again[0]), cseq(&got[2]), "with the same number");

    // An ack for a conversation that is not a group is refused, clearly.
    let reply = erin
        .call(json!({"msgid": 12, "ack": 1, "conv": "d:1:2"}), 7)
        .await;
    assert_ne!(reply["errno"], 0, "{reply}");
}

#[tokio::test]
async fn a_member_behind_what_the_log_keeps_gets_the_rest_from_history() {
    let mut stack = Stack::builder()
        .gateways(1)
        .with_private_redis()
        .start()
        .await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut bob = Client::connect(stack.gateways[0].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = bob.register("bob", "pb").await;
    alice.login_ok(a, "pa").await;
    bob.login_ok(b, "pb").await;
    let g = new_group(&mut alice, "long").await;
    join(&mut bob, b, g).await;
    send_all(&mut alice, a, g, &["first"]).await;
    assert_eq!(texts(&bob.chats_until_quiet(QUIET).await), ["first"]);
    bob.send(&json!({"msgid": 3, "id": b})).await;
    drop(bob);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let away = ["a1", "a2", "a3", "a4", "a5"];
    send_all(&mut alice, a, g, &away).await;
    // History has every one of them ...
    let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
    loop {
        let page = alice
            .call(json!({"msgid": 16, "groupid": g, "limit": 10}), 200)
            .await;
        if page["messages"].as_array().is_some_and(|m| m.len() == 6) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "history: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and the log only the last two (as if 10,000 had come since).
    let trimmed = stack
        .redis_command(&[
            "EVAL",
            "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
             n = n + redis.call('XTRIM', k, 'MAXLEN', '2') end return n",
            "0",
            &format!("*:l:g:{g}"),
        ])
        .await;
    assert_eq!(trimmed, ":4", "the log lost its four oldest");

    let mut bob = Client::connect(stack.gateways[0].tcp).await;
    bob.login_ok(b, "pb").await;
    assert_eq!(
        texts(&bob.chats_until_quiet(QUIET).await),
        away,
        "what the log no longer had came from history, then the log's, in order"
    );
}
