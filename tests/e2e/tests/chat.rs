//! Chat across real gateway processes, through Redis, nginx and WebSocket,
//! with the classic protocol's exact bytes.

use std::time::Duration;

use e2e::{Client, Stack, WsClient, chat, group_chat, parse_list};
use serde_json::{Value, json};

#[tokio::test]
async fn users_on_different_nodes_chat_both_ways_as_themselves() {
    let stack = Stack::builder().gateways(2).start().await;
    let (mut alice, a, mut bob, b) = stack.alice_and_bob(0, 1).await;

    alice.send(&chat(a, b, "hi bob, from node 1")).await;
    let got = bob.recv().await;
    assert_eq!(got["msgid"], 6);
    assert_eq!(got["msg"], "hi bob, from node 1");
    assert_eq!(got["id"], a, "the sender id is the server's");
    assert_eq!(
        got["name"], "alice",
        "the sender name is the server's, not the client's claim"
    );
    assert_eq!(got["toid"], b);
    assert_eq!(got["time"], "2026-11-25 10:00:00");

    bob.send(&chat(b, a, "hi alice 🙂 \"quoted\" 'single'"))
        .await;
    let got = alice.recv().await;
    assert_eq!(got["msg"], "hi alice 🙂 \"quoted\" 'single'");
    assert_eq!(got["name"], "bob");
    // A successful chat without seq gets no reply at all (classic behaviour).
    alice.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn chat_through_nginx_and_websocket_with_tcp() {
    let stack = Stack::builder().gateways(2).with_nginx().start().await;
    let nginx = stack.nginx.as_ref().expect("nginx");
    let mut carol = Client::connect(nginx.tcp).await;
    let c = carol.register("carol", "pc").await;
    carol.login_ok(c, "pc").await;

    let mut dave = WsClient::connect(nginx.ws).await;
    dave.send(&json!({"msgid": 4, "name": "dave", "password": "pd", "seq": 1}))
        .await;
    let reg = dave.recv().await;
    assert_eq!(reg["seq"], 1);
    let d = reg["id"].as_i64().expect("id");
    dave.send(&json!({"msgid": 1, "id": d, "password": "pd"}))
        .await;
    assert_eq!(dave.recv().await["errno"], 0);

    carol.send(&chat(c, d, "tcp to websocket")).await;
    let got = dave.recv().await;
    assert_eq!(
        (got["msg"].as_str(), got["id"].as_i64()),
        (Some("tcp to websocket"), Some(c))
    );

    dave.send(&chat(d, c, "websocket to tcp")).await;
    assert_eq!(carol.recv().await["msg"], "websocket to tcp");

    // And a WebSocket client straight on a node, to a TCP client on the other.
    let mut erin = WsClient::connect(stack.gateways[1].http).await;
    erin.send(&json!({"msgid": 4, "name": "erin", "password": "pe"}))
        .await;
    let e = erin.recv().await["id"].as_i64().expect("id");
    erin.send(&json!({"msgid": 1, "id": e, "password": "pe"}))
        .await;
    assert_eq!(erin.recv().await["errno"], 0);
    erin.send(&chat(e, c, "from a ws on node 2")).await;
    assert_eq!(carol.recv().await["msg"], "from a ws on node 2");
}

#[tokio::test]
async fn group_chat_fans_out_across_nodes_to_every_other_member() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut owner = Client::connect(stack.gateways[0].tcp).await;
    let mut far = Client::connect(stack.gateways[1].tcp).await;
    let mut near = Client::connect(stack.gateways[0].tcp).await;
    let mut outsider = Client::connect(stack.gateways[1].tcp).await;
    let o = owner.register("owner", "p").await;
    let f = far.register("far", "p").await;
    let n = near.register("near", "p").await;
    let x = outsider.register("outsider", "p").await;
    for (client, id) in [
        (&mut owner, o),
        (&mut far, f),
        (&mut near, n),
        (&mut outsider, x),
    ] {
        client.login_ok(id, "p").await;
    }

    let created = owner
        .call(
            json!({"msgid": 8, "id": o, "groupname": "crabs", "groupdesc": "🦀"}),
            1,
        )
        .await;
    assert_eq!(created["errno"], 0, "{created}");
    assert_eq!(created["msgid"], 11);
    let g = created["groupid"]
        .as_i64()
        .expect("the creator learns the group id");
    for (client, id) in [(&mut far, f), (&mut near, n)] {
        let joined = client
            .call(json!({"msgid": 9, "id": id, "groupid": g}), 2)
            .await;
        assert_eq!(joined, json!({"errno": 0, "msgid": 11, "seq": 2}));
    }

    owner.send(&group_chat(o, g, "hello crabs")).await;
    for client in [&mut far, &mut near] {
        let got = client.recv().await;
        assert_eq!(
            (got["msgid"].as_i64(), got["groupid"].as_i64()),
            (Some(10), Some(g))
        );
        assert_eq!(
            (
                got["msg"].as_str(),
                got["id"].as_i64(),
                got["name"].as_str()
            ),
            (Some("hello crabs"), Some(o), Some("owner"))
        );
    }
    owner.expect_silence(Duration::from_millis(300)).await;
    outsider.expect_silence(Duration::from_millis(100)).await;

    far.send(&group_chat(f, g, "reply from node 2")).await;
    assert_eq!(owner.recv().await["msg"], "reply from node 2");
    assert_eq!(near.recv().await["msg"], "reply from node 2");

    let refused = outsider.call(group_chat(x, g, "let me in"), 3).await;
    assert_eq!(refused["errno"], 4, "{refused}");
    assert!(
        refused["errmsg"]
            .as_str()
            .expect("errmsg")
            .contains("not a member")
    );
}

#[tokio::test]
async fn offline_messages_arrive_in_order_at_login_and_only_once() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = alice.register("bob", "pb").await;
    alice.login_ok(a, "pa").await;
    let texts = [
        "first",
        "second 'with quotes' \"and more\"",
        "third: ünïcödé 🙂",
        "fourth \\ backslash",
    ];
    for text in texts {
        let sent = alice.call(chat(a, b, text), 1).await;
        assert_eq!(sent["errno"], 0, "{sent}");
    }

    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let ack = bob.login_ok(b, "pb").await;
    let offline = parse_list(&ack, "offlinemsg");
    let got: Vec<&str> = offline
        .iter()
        .map(|m| m["msg"].as_str().expect("msg"))
        .collect();
    assert_eq!(got, texts);
    assert!(
        offline
            .iter()
            .all(|m| m["id"] == a && m["name"] == "alice" && m["msgid"] == 6)
    );

    // Handed over once: a later login finds nothing pending.
    bob.send(&json!({"msgid": 3, "id": b})).await;
    let mut bob_again = Client::connect(stack.gateways[0].tcp).await;
    let ack = assert_login_eventually(&mut bob_again, b, "pb").await;
    assert!(ack.get("offlinemsg").is_none(), "{ack}");
}

async fn assert_login_eventually(client: &mut Client, id: i64, password: &str) -> Value {
    let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
    loop {
        let ack = client.login(id, password).await;
        if ack["errno"] == 0 {
            return ack;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "login never succeeded: {ack}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn login_ack_lists_friends_and_groups_with_cluster_wide_presence() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = bob.register("bob", "pb").await;
    let c = bob.register("carol", "pc").await;
    bob.login_ok(b, "pb").await;
    assert_eq!(
        bob.call(json!({"msgid": 7, "id": b, "friendid": a}), 1)
            .await["errno"],
        0
    );
    assert_eq!(
        bob.call(json!({"msgid": 7, "id": b, "friendid": c}), 2)
            .await["errno"],
        0
    );
    let g = bob
        .call(
            json!({"msgid": 8, "id": b, "groupname": "g", "groupdesc": "d"}),
            3,
        )
        .await["groupid"]
        .as_i64()
        .expect("groupid");

    let ack = alice.login_ok(a, "pa").await;
    // Friendship is mutual: bob added alice, alice sees bob.
    let friends = parse_list(&ack, "friends");
    assert_eq!(
        friends,
        vec![json!({"id": b, "name": "bob", "state": "online"})]
    );
    assert!(ack.get("groups").is_none());

    assert_eq!(
        alice
            .call(json!({"msgid": 9, "id": a, "groupid": g}), 4)
            .await["errno"],
        0
    );
    alice.send(&json!({"msgid": 3, "id": a})).await;
    let ack = alice.login_ok(a, "pa").await;
    let groups = parse_list(&ack, "groups");
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (
            groups[0]["id"].as_i64(),
            groups[0]["groupname"].as_str(),
            groups[0]["groupdesc"].as_str()
        ),
        (Some(g), Some("g"), Some("d"))
    );
    let users: Vec<Value> = groups[0]["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| serde_json::from_str(u.as_str().expect("string")).expect("json"))
        .collect();
    assert_eq!(
        users,
        vec![
            json!({"id": b, "name": "bob", "role": "creator", "state": "online"}),
            json!({"id": a, "name": "alice", "role": "normal", "state": "online"}),
        ]
    );
}

#[tokio::test]
async fn classic_acks_are_byte_exact() {
    let stack = Stack::builder().gateways(1).start().await;
    let mut client = Client::connect(stack.gateways[0].tcp).await;
    client
        .send_raw(b"{\"msgid\":4,\"name\":\"zed\",\"password\":\"pw\"}\0")
        .await;
    let line = client.recv_line().await;
    let id: i64 = serde_json::from_str::<Value>(&line).expect("json")["id"]
        .as_i64()
        .expect("id");
    assert_eq!(line, format!("{{\"errno\":0,\"id\":{id},\"msgid\":5}}"));

    client
        .send_raw(b"{\"msgid\":4,\"name\":\"zed\",\"password\":\"pw\"}\0")
        .await;
    assert_eq!(client.recv_line().await, r#"{"errno":1,"msgid":5}"#);

    client
        .send_raw(format!("{{\"msgid\":1,\"id\":{id},\"password\":\"wrong\"}}\0").as_bytes())
        .await;
    assert_eq!(
        client.recv_line().await,
        r#"{"errmsg":"id or password is invalid!","errno":1,"msgid":2}"#
    );

    client
        .send_raw(format!("{{\"msgid\":1,\"id\":{id},\"password\":\"pw\"}}\0").as_bytes())
        .await;
    assert_eq!(
        client.recv_line().await,
        format!("{{\"errno\":0,\"id\":{id},\"msgid\":2,\"name\":\"zed\"}}")
    );

    let mut second = Client::connect(stack.gateways[0].tcp).await;
    second
        .send_raw(format!("{{\"msgid\":1,\"id\":{id},\"password\":\"pw\"}}\0").as_bytes())
        .await;
    assert_eq!(
        second.recv_line().await,
        r#"{"errmsg":"this account is using, input another!","errno":2,"msgid":2}"#
    );
}

/// A client that writes many chats at once (a bridge, an outbox flushed
/// after a reconnect) has them recorded together: they share script calls,
/// and each is still answered, in order, and reaches its receiver once, in
/// order, numbered one after the other. Frames between them that are not
/// chats to the same receiver are served in their place.
#[tokio::test]
async fn a_burst_of_chats_is_recorded_together_in_order() {
    let stack = Stack::builder().gateways(2).start().await;
    let (mut alice, a, mut bob, b) = stack.alice_and_bob(0, 1).await;
    let mut carol = Client::connect(stack.gateways[1].tcp).await;
    let c = carol.register("carol", "pc").await;
    carol.login_ok(c, "pc").await;
    let scrape = |addr| async move {
        let (status, body) = e2e::http_get(addr, "/metrics").await.expect("scrape");
        assert_eq!(status, 200);
        body
    };
    let calls =
        |text: &str| e2e::metric_value(text, "clusterchat_gateway_redis_script_calls_total", "");
    let before = calls(&scrape(stack.gateways[0].admin).await);

    // 40 chats to bob in one write, with a chat to carol and a ping among
    // them (after the 20th and the 30th).
    let mut burst = Vec::new();
    let mut frame = |request: Value, seq: i64| {
        let mut request = request;
        request["seq"] = seq.into();
        burst.extend(request.to_string().into_bytes());
        burst.push(0);
    };
    for i in 0..40 {
        frame(chat(a, b, &format!("burst {i}")), i);
        if i == 19 {
            frame(chat(a, c, "to carol, in between"), 100);
        }
        if i == 29 {
            frame(json!({"msgid": 13}), 101);
        }
    }
    alice.send_raw(&burst).await;

    let mut replies = Vec::new();
    while replies.len() < 42 {
        replies.push(alice.recv().await);
    }
    let order: Vec<i64> = replies
        .iter()
        .map(|r| r["seq"].as_i64().expect("a reply with seq"))
        .collect();
    let mut expected: Vec<i64> = (0..20).collect();
    expected.push(100);
    expected.extend(20..30);
    expected.push(101);
    expected.extend(30..40);
    assert_eq!(order, expected, "every request answered, in order");
    for reply in replies.iter().filter(|r| r["seq"] != 101) {
        assert_eq!(reply["errno"], 0, "{reply}");
    }
    assert_eq!(replies[31]["msgid"], 14, "the ping's pong, in its place");
    let cseqs: Vec<i64> = replies
        .iter()
        .filter(|r| r["seq"].as_i64() < Some(100))
        .map(|r| r["cseq"].as_i64().expect("numbered"))
        .collect();
    assert!(
        cseqs.windows(2).all(|w| w[1] == w[0] + 1),
        "numbered one after the other in the conversation: {cseqs:?}"
    );

    let got = bob.chats_until_quiet(Duration::from_millis(500)).await;
    let texts: Vec<&str> = got.iter().filter_map(|g| g["msg"].as_str()).collect();
    let sent: Vec<String> = (0..40).map(|i| format!("burst {i}")).collect();
    assert_eq!(texts, sent, "once each, in order");
    assert_eq!(carol.recv().await["msg"], "to carol, in between");

    // Recorded together: far fewer script calls than chats (one per burst
    // on a single Redis; a cluster numbers, then appends, per shard).
    let made = calls(&scrape(stack.gateways[0].admin).await) - before;
    assert!(made >= 1.0, "the chats went through the appender");
    assert!(
        made <= 16.0,
        "41 chats took {made} script calls: a burst is not recorded together"
    );
}
