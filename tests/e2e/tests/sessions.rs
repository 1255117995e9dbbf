//! Staying signed in: a login with `"remember":true` gets a session token,
//! which logs in on any node instead of the password until it is ended
//! (logout), all of them are (log out everywhere, msgid 23) or the password
//! changes (msgid 24, which ends the user's other sessions). Sessions ended
//! from elsewhere are told (msgid 23) and closed, on every node.

use std::time::Duration;

use e2e::{Client, Stack};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(10);

async fn login_with(client: &mut Client, request: Value) -> Value {
    client.send(&request).await;
    client.recv().await
}

fn with_password(id: i64, password: &str) -> Value {
    json!({"msgid": 1, "id": id, "password": password, "acks": true, "remember": true, "device": "test laptop"})
}

fn with_token(id: i64, token: &str) -> Value {
    json!({"msgid": 1, "id": id, "token": token, "acks": true})
}

/// Frames until msgid 23 comes, then the connection must close.
async fn told_signed_out_and_closed(client: &mut Client) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let line = client
            .try_recv_line(left)
            .await
            .expect("msgid 23 before the connection closed");
        let frame: Value = serde_json::from_str(&line).expect("json");
        if frame["msgid"] == 23 {
            assert!(client.is_closed(PATIENCE).await, "still open after {frame}");
            return frame;
        }
    }
}

#[tokio::test]
async fn a_token_signs_in_on_any_node_until_logout_ends_it() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut laptop = Client::connect(stack.gateways[0].tcp).await;
    let a = laptop.register("alice", "pa").await;
    let ack = login_with(&mut laptop, with_password(a, "pa")).await;
    assert_eq!(ack["errno"], 0, "{ack}");
    let token = ack["token"]
        .as_str()
        .expect("a token in the ack")
        .to_owned();
    assert!(token.starts_with("ccs_"), "{token}");

    // Another tab, the other node: the token instead of the password.
    let mut tab = Client::connect(stack.gateways[1].tcp).await;
    let ack = login_with(&mut tab, with_token(a, &token)).await;
    assert_eq!(ack["errno"], 0, "{ack}");
    assert_eq!(ack["name"], "alice");
    assert!(
        ack.get("token").is_some(),
        "the ack says which token it holds"
    );

    // Not someone else's id, and not garbage.
    let mut other = Client::connect(stack.gateways[1].tcp).await;
    let refused = login_with(&mut other, with_token(a + 1, &token)).await;
    assert_eq!(refused["errno"], 1, "{refused}");
    let refused = login_with(&mut other, with_token(a, "ccs_nonsense")).await;
    assert_eq!(refused["errno"], 1, "{refused}");
    assert!(
        refused["errmsg"].as_str().unwrap_or("").contains("session"),
        "{refused}"
    );

    // Logging out ends the token: it signs nobody in any more.
    tab.send(&json!({"msgid": 3, "id": a})).await;
    let mut later = Client::connect(stack.gateways[0].tcp).await;
    let mut refused = Value::Null;
    for _ in 0..50 {
        refused = login_with(&mut later, with_token(a, &token)).await;
        if refused["errno"] != 0 {
            break;
        }
        later.send(&json!({"msgid": 3, "id": a})).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refused["errno"], 1, "{refused}");
    assert!(
        refused["errmsg"]
            .as_str()
            .unwrap_or("")
            .contains("the session has ended or expired"),
        "{refused}"
    );
    // The laptop is still signed in (it logged in with its password).
    let pong = laptop.call(json!({"msgid": 13}), 7).await;
    assert_eq!(pong["msgid"], 14, "{pong}");
}

#[tokio::test]
async fn logging_out_everywhere_ends_every_session_on_every_node_and_every_token() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut laptop = Client::connect(stack.gateways[0].tcp).await;
    let a = laptop.register("alice", "pa").await;
    let token = login_with(&mut laptop, with_password(a, "pa")).await["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let mut phone = Client::connect(stack.gateways[1].tcp).await;
    let ack = login_with(
        &mut phone,
        json!({"msgid": 1, "id": a, "password": "pa", "acks": true}),
    )
    .await;
    assert_eq!(ack["errno"], 0, "{ack}");

    let reply = laptop.call(json!({"msgid": 23}), 5).await;
    assert_eq!(reply["errno"], 0, "{reply}");
    assert_eq!(reply["tokens_ended"], 1, "{reply}");
    for client in [&mut phone, &mut laptop] {
        let told = told_signed_out_and_closed(client).await;
        assert!(
            told["reason"].as_str().unwrap_or("").contains("logged out"),
            "{told}"
        );
    }
    let mut again = Client::connect(stack.gateways[1].tcp).await;
    let refused = login_with(&mut again, with_token(a, &token)).await;
    assert_eq!(refused["errno"], 1, "{refused}");
    // The password still works.
    let ack = login_with(&mut again, with_password(a, "pa")).await;
    assert_eq!(ack["errno"], 0, "{ack}");
}

#[tokio::test]
async fn a_new_password_ends_the_other_sessions_and_keeps_this_one() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut laptop = Client::connect(stack.gateways[0].tcp).await;
    let a = laptop.register("alice", "old-pw").await;
    let laptop_token = login_with(&mut laptop, with_password(a, "old-pw")).await["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let mut phone = Client::connect(stack.gateways[1].tcp).await;
    let phone_token = login_with(&mut phone, with_password(a, "old-pw")).await["token"]
        .as_str()
        .expect("token")
        .to_owned();

    let wrong = laptop
        .call(
            json!({"msgid": 24, "password": "not-it", "new_password": "new-pw"}),
            3,
        )
        .await;
    assert_ne!(wrong["errno"], 0, "the current password is needed: {wrong}");
    let empty = laptop
        .call(
            json!({"msgid": 24, "password": "old-pw", "new_password": ""}),
            4,
        )
        .await;
    assert_eq!(empty["errno"], 1, "{empty}");
    assert!(
        empty["errmsg"]
            .as_str()
            .unwrap_or("")
            .contains("new password"),
        "{empty}"
    );

    let changed = laptop
        .call(
            json!({"msgid": 24, "password": "old-pw", "new_password": "new-pw"}),
            5,
        )
        .await;
    assert_eq!(changed["errno"], 0, "{changed}");
    assert_eq!(changed["tokens_ended"], 1, "{changed}");
    told_signed_out_and_closed(&mut phone).await;
    // The laptop goes on.
    let pong = laptop.call(json!({"msgid": 13}), 6).await;
    assert_eq!(pong["msgid"], 14, "{pong}");

    let mut check = Client::connect(stack.gateways[1].tcp).await;
    assert_eq!(
        login_with(&mut check, with_token(a, &phone_token)).await["errno"],
        1
    );
    assert_eq!(
        login_with(
            &mut check,
            json!({"msgid": 1, "id": a, "password": "old-pw"})
        )
        .await["errno"],
        1
    );
    let ack = login_with(&mut check, with_token(a, &laptop_token)).await;
    assert_eq!(ack["errno"], 0, "the laptop's token is still good: {ack}");
    check.send(&json!({"msgid": 3, "id": a})).await;
    let mut classic = Client::connect(stack.gateways[0].tcp).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ack = classic.login(a, "new-pw").await;
    // The laptop still holds the user as a device: a classic login is
    // refused with the classic errno 2; the password itself is right.
    assert!(ack["errno"] == 0 || ack["errno"] == 2, "{ack}");
}
