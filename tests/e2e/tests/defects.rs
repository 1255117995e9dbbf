//! Every defect of the classic server, answered correctly, with the node
//! still serving afterwards.

use std::time::Duration;

use e2e::{Client, Stack, chat};
use serde_json::json;

#[tokio::test]
async fn injection_names_are_just_names() {
    let stack = Stack::builder().gateways(1).start().await;
    let mut c = Client::connect(stack.gateways[0].tcp).await;
    let name = "x', 'y'); DROP TABLE user; --";
    let id = c.register(name, "p'w\"").await;
    let ack = c.login_ok(id, "p'w\"").await;
    assert_eq!(ack["name"], name);
    let other = c.register("robert", "pw").await;
    assert_ne!(other, id, "the table still works");
}

#[tokio::test]
async fn nothing_but_login_and_register_before_login() {
    let stack = Stack::builder().gateways(1).start().await;
    let mut c = Client::connect(stack.gateways[0].tcp).await;
    let reply = c.call(chat(1, 2, "sneaky"), 5).await;
    assert_eq!(
        reply,
        json!({"errmsg": "log in first", "errno": 3, "msgid": 11, "seq": 5})
    );
    c.send(&json!({"msgid": 3, "id": 1})).await;
    assert_eq!(c.recv().await["errno"], 3, "refused even without seq");
}

#[tokio::test]
async fn spoofed_ids_are_refused_and_receivers_see_the_real_sender() {
    let stack = Stack::builder().gateways(1).start().await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut bob = Client::connect(stack.gateways[0].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = bob.register("bob", "pb").await;
    let m = alice.register("mallory", "pm").await;
    alice.login_ok(a, "pa").await;
    bob.login_ok(b, "pb").await;

    let mut mallory = Client::connect(stack.gateways[0].tcp).await;
    mallory.login_ok(m, "pm").await;
    let reply = mallory.call(chat(a, b, "I am alice"), 1).await;
    assert_eq!(reply["errno"], 4, "{reply}");
    let logout_alice = mallory.call(json!({"msgid": 3, "id": a}), 2).await;
    assert_eq!(logout_alice["errno"], 4, "cannot log anyone else out");
    bob.expect_silence(Duration::from_millis(300)).await;

    // Without an id, or with a wrong name, the message goes out as mallory.
    mallory
        .send(&json!({"msgid": 6, "name": "alice", "toid": b, "msg": "hello"}))
        .await;
    let got = bob.recv().await;
    assert_eq!(
        (got["id"].as_i64(), got["name"].as_str()),
        (Some(m), Some("mallory"))
    );

    // alice is still logged in and reachable.
    bob.send(&chat(b, a, "still there?")).await;
    assert_eq!(alice.recv().await["msg"], "still there?");
}

#[tokio::test]
async fn login_with_id_minus_one_or_garbage_ids_fails_cleanly() {
    let stack = Stack::builder().gateways(1).start().await;
    let mut c = Client::connect(stack.gateways[0].tcp).await;
    c.send_raw(b"{\"msgid\":1,\"id\":-1,\"password\":\"\"}\0")
        .await;
    assert_eq!(
        c.recv_line().await,
        r#"{"errmsg":"id or password is invalid!","errno":1,"msgid":2}"#
    );
    c.send_raw(b"{\"msgid\":1,\"id\":\"1 OR 1=1\",\"password\":\"\"}\0")
        .await;
    let reply = c.recv().await;
    assert_eq!(
        (reply["msgid"].as_i64(), reply["errno"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(reply["errmsg"], "id must be an integer");
    c.send_raw(b"{\"msgid\":1,\"id\":99999999999999999999,\"password\":\"\"}\0")
        .await;
    assert_eq!(c.recv().await["errno"], 1);
    let id = c.register("ok", "pw").await;
    c.login_ok(id, "pw").await;
}

#[tokio::test]
async fn malformed_split_merged_and_oversized_frames_are_handled() {
    let stack = Stack::builder()
        .gateways(1)
        .gateway_env("CLUSTERCHAT_GATEWAY_MAX_FRAME_BYTES", "1024")
        .start()
        .await;
    let mut c = Client::connect(stack.gateways[0].tcp).await;

    c.send_raw(b"this is not json\n").await;
    let reply = c.recv().await;
    assert_eq!(
        (reply["msgid"].as_i64(), reply["errno"].as_i64()),
        (Some(11), Some(1))
    );

    c.send_raw(b"{\"msgid\":1,\"id\":}\0").await;
    let reply = c.recv().await;
    assert!(
        reply["errmsg"]
            .as_str()
            .expect("errmsg")
            .starts_with("malformed JSON"),
        "{reply}"
    );

    // One request split across many writes.
    let request = b"{\"msgid\":4,\"name\":\"splitter\",\"password\":\"pw\"}\0";
    for chunk in request.chunks(3) {
        c.send_raw(chunk).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let id = c.recv().await["id"]
        .as_i64()
        .expect("registered from split writes");

    // Two requests in one write, no separator at all.
    c.send_raw(b"{\"msgid\":4,\"name\":\"one\",\"password\":\"pw\",\"seq\":1}{\"msgid\":4,\"name\":\"two\",\"password\":\"pw\",\"seq\":2}").await;
    assert_eq!(c.recv().await["seq"], 1);
    assert_eq!(c.recv().await["seq"], 2);

    // Oversized: refused with a reason, the rest of the stream still works.
    let big = format!(
        "{{\"msgid\":4,\"name\":\"{}\",\"password\":\"pw\"}}\0",
        "n".repeat(5000)
    );
    c.send_raw(big.as_bytes()).await;
    let reply = c.recv().await;
    assert_eq!(
        (reply["msgid"].as_i64(), reply["errno"].as_i64()),
        (Some(11), Some(6)),
        "{reply}"
    );
    c.login_ok(id, "pw").await;

    // Wrong types in a chat.
    let reply = c
        .call(json!({"msgid": 6, "toid": "two", "msg": "x"}), 9)
        .await;
    assert_eq!(reply["errmsg"], "toid must be an integer");
    let reply = c
        .call(json!({"msgid": 6, "toid": 424242, "msg": "x"}), 10)
        .await;
    assert_eq!(
        (reply["errno"].as_i64(), reply["errmsg"].as_str()),
        (Some(5), Some("user 424242 does not exist"))
    );
    let reply = c.call(json!({"msgid": 42}), 11).await;
    assert_eq!(reply["errmsg"], "unknown msgid 42");
    let reply = c
        .call(json!({"msgid": 10, "groupid": 777, "msg": "x"}), 12)
        .await;
    assert_eq!(reply["errno"], 5, "{reply}");

    // The node is still serving others.
    let mut other = Client::connect(stack.gateways[0].tcp).await;
    other.register("still-serving", "pw").await;
}

#[tokio::test]
async fn the_connection_limit_answers_clearly_and_the_rate_limit_paces() {
    let stack = Stack::builder()
        .gateways(1)
        .gateway_env("CLUSTERCHAT_GATEWAY_MAX_CONNECTIONS", "2")
        .gateway_env("CLUSTERCHAT_GATEWAY_RATE_PER_SEC", "1")
        .gateway_env("CLUSTERCHAT_GATEWAY_RATE_BURST", "3")
        .start()
        .await;
    let mut first = Client::connect(stack.gateways[0].tcp).await;
    let _second = Client::connect(stack.gateways[0].tcp).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = Client::connect(stack.gateways[0].tcp).await;
    let refused = third.recv().await;
    assert_eq!(refused["errno"], 12, "{refused}");
    assert!(refused["errmsg"].as_str().expect("errmsg").contains("full"));
    assert!(third.is_closed(Duration::from_secs(5)).await);

    // Over the rate (burst 3, then 1/s), requests wait their turn: every
    // one is answered, none refused, the fifth about 2 s after the first.
    let started = tokio::time::Instant::now();
    for seq in 1..=5 {
        first.send(&json!({"msgid": 42, "seq": seq})).await;
    }
    for seq in 1..=5 {
        let reply = first.recv().await;
        assert_eq!(reply["seq"], seq, "in order: {reply}");
        assert_eq!(reply["errno"], 1, "processed, not refused: {reply}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "paced: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn one_session_per_user_and_logout_frees_it() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut first = Client::connect(stack.gateways[0].tcp).await;
    let id = first.register("solo", "pw").await;
    first.login_ok(id, "pw").await;
    let mut elsewhere = Client::connect(stack.gateways[1].tcp).await;
    assert_eq!(elsewhere.login(id, "pw").await["errno"], 2);

    let bye = first.call(json!({"msgid": 3, "id": id}), 1).await;
    assert_eq!(bye["errno"], 0);
    elsewhere.login_ok(id, "pw").await;
    // The first connection is still usable: log in again is refused now
    // (the user is online elsewhere), but the socket works.
    assert_eq!(first.login(id, "pw").await["errno"], 2);

    drop(elsewhere);
    e2e::assert_eventually!(
        first.login(id, "pw").await["errno"] == 0,
        e2e::PATIENCE,
        "a disconnect did not free the user"
    );
}
