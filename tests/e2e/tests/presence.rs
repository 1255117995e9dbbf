//! Live presence (msgid 22): a friend's or fellow group member's first login
//! and last logout are pushed to the clients that show them, across nodes,
//! in order with the chats; a node that dies is told by its users' presence
//! running out. Only sessions that asked at login (`"presence":true`) get
//! the frame; classic clients never do.

use std::time::Duration;

use e2e::{Client, Stack, chat, next_where};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Logs in as a device that wants presence pushed (`"presence":true`).
async fn login_watching(client: &mut Client, id: i64, password: &str) {
    client
        .send(&json!({"msgid": 1, "id": id, "password": password, "acks": true, "presence": true}))
        .await;
    let ack = client.recv().await;
    assert_eq!(ack["errno"], 0, "{ack}");
}

fn is_presence(v: &Value) -> bool {
    v["msgid"] == 22
}

fn presence(id: i64, online: bool) -> Value {
    json!({"msgid": 22, "id": id, "online": online})
}

#[tokio::test]
async fn a_friends_login_and_logout_are_pushed_before_their_chats_only_to_clients_that_ask() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let mut carol = Client::connect(stack.gateways[1].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = bob.register("bob", "pb").await;
    let c = carol.register("carol", "pc").await;
    let mut erin = Client::connect(stack.gateways[1].tcp).await;
    let e = erin.register("erin", "pe").await;
    login_watching(&mut bob, b, "pb").await;
    // carol is a classic client (no additions), erin a device that did not
    // ask for presence: neither gets msgid 22.
    carol.login_ok(c, "pc").await;
    assert_eq!(erin.login_acking(e, "pe", None).await["errno"], 0);
    let mut skipped = Vec::new();

    // alice logs in, then befriends bob and carol: bob hears she is online
    // (a new watcher is told at once).
    login_watching(&mut alice, a, "pa").await;
    for (seq, friend) in [(1, b), (2, c), (3, e)] {
        let added = alice
            .call(json!({"msgid": 7, "id": a, "friendid": friend}), seq)
            .await;
        assert_eq!(added["errno"], 0, "{added}");
    }
    let online = next_where(&mut bob, &mut skipped, is_presence).await;
    assert_eq!(online, presence(a, true));

    // Logging out: bob sees her go.
    alice.send(&json!({"msgid": 3, "id": a})).await;
    let offline = next_where(&mut bob, &mut skipped, is_presence).await;
    assert_eq!(offline, presence(a, false));

    // Back on another connection: "online" comes before her first chat.
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    login_watching(&mut alice, a, "pa").await;
    alice.send(&chat(a, b, "back")).await;
    let first = next_where(&mut bob, &mut skipped, |v| {
        is_presence(v) || v["msgid"] == 6
    })
    .await;
    assert_eq!(first, presence(a, true), "presence first, then the chat");
    let chat = next_where(&mut bob, &mut skipped, |v| v["msgid"] == 6).await;
    assert_eq!(chat["msg"], "back");

    // A second device of alice is not news; its logout is not either, the
    // first device still holds her.
    let mut phone = Client::connect(stack.gateways[1].tcp).await;
    login_watching(&mut phone, a, "pa").await;
    phone.send(&json!({"msgid": 3, "id": a})).await;
    let quiet = bob.frames_until_quiet(Duration::from_secs(1)).await;
    assert!(!quiet.iter().any(is_presence), "{quiet:?}");

    // The classic friend got chats' worth of nothing: no msgid 22 at all.
    let classic = carol.frames_until_quiet(Duration::from_millis(500)).await;
    assert!(!classic.iter().any(is_presence), "{classic:?}");
    let unasked = erin.frames_until_quiet(Duration::from_millis(500)).await;
    assert!(!unasked.iter().any(is_presence), "{unasked:?}");
    assert!(skipped.iter().all(|v| !is_presence(v)), "{skipped:?}");
}

#[tokio::test]
async fn group_members_see_each_other_come_and_go() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut dave = Client::connect(stack.gateways[1].tcp).await;
    let a = alice.register("alice", "pa").await;
    let d = dave.register("dave", "pd").await;
    login_watching(&mut dave, d, "pd").await;
    let group = dave
        .call(
            json!({"msgid": 8, "id": d, "groupname": "g", "groupdesc": ""}),
            1,
        )
        .await["groupid"]
        .as_i64()
        .expect("groupid");
    login_watching(&mut alice, a, "pa").await;
    let joined = alice
        .call(json!({"msgid": 9, "id": a, "groupid": group}), 2)
        .await;
    assert_eq!(joined["errno"], 0, "{joined}");
    let mut skipped = Vec::new();
    // Joining tells the members who is new (and online).
    assert_eq!(
        next_where(&mut dave, &mut skipped, is_presence).await,
        presence(a, true)
    );
    // Not friends, one group: dave sees alice leave and come back.
    drop(alice);
    assert_eq!(
        next_where(&mut dave, &mut skipped, is_presence).await,
        presence(a, false)
    );
    let mut alice = Client::connect(stack.gateways[1].tcp).await;
    login_watching(&mut alice, a, "pa").await;
    assert_eq!(
        next_where(&mut dave, &mut skipped, is_presence).await,
        presence(a, true)
    );
    // And alice, logged in, is told about dave leaving.
    dave.send(&json!({"msgid": 3, "id": d})).await;
    assert_eq!(
        next_where(&mut alice, &mut skipped, is_presence).await,
        presence(d, false)
    );
}

#[tokio::test]
async fn a_user_whose_node_is_killed_is_shown_offline_once_their_presence_runs_out() {
    // A short presence TTL, so the test waits seconds, not ten.
    let mut stack = Stack::builder()
        .gateways(2)
        .gateway_env("CLUSTERCHAT_GATEWAY_PRESENCE_TTL_MS", "2000")
        .start()
        .await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = bob.register("bob", "pb").await;
    login_watching(&mut bob, b, "pb").await;
    login_watching(&mut alice, a, "pa").await;
    let added = alice
        .call(json!({"msgid": 7, "id": a, "friendid": b}), 1)
        .await;
    assert_eq!(added["errno"], 0, "{added}");
    let mut skipped = Vec::new();
    assert_eq!(
        next_where(&mut bob, &mut skipped, is_presence).await,
        presence(a, true)
    );

    // alice's node dies without a word; her presence key expires and one
    // node tells bob, once.
    let killed = Instant::now();
    stack.kill_gateway(0).await;
    assert_eq!(
        next_where(&mut bob, &mut skipped, is_presence).await,
        presence(a, false)
    );
    let took = killed.elapsed();
    let after = bob.frames_until_quiet(Duration::from_secs(2)).await;
    assert!(
        !after.iter().any(is_presence),
        "told more than once: {after:?}"
    );
    eprintln!("offline {took:?} after the kill (presence TTL 2 s)");
}
