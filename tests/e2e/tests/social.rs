//! Managing friends and groups over the protocol: removing a friend (msgid
//! 25), leaving a group (26) on every node the member is on, a group's
//! members with roles and presence (27), renaming a group (28, its creator
//! alone). Each refusal says why.

use std::time::Duration;

use e2e::{Client, Stack, group_chat};
use serde_json::{Value, json};

async fn device(stack: &Stack, node: usize, id: i64, password: &str) -> Client {
    let mut client = Client::connect(stack.gateways[node].tcp).await;
    let ack = client.login_acking(id, password, None).await;
    assert_eq!(ack["errno"], 0, "{ack}");
    client
}

fn friend_ids(roster: &Value) -> Vec<i64> {
    roster["friends"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f["id"].as_i64()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn removing_a_friend_ends_the_friendship_both_ways() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut setup = Client::connect(stack.gateways[0].tcp).await;
    let a = setup.register("alice", "pa").await;
    let b = setup.register("bob", "pb").await;
    let mut alice = device(&stack, 0, a, "pa").await;
    let mut bob = device(&stack, 1, b, "pb").await;
    assert_eq!(
        alice.call(json!({"msgid": 7, "friendid": b}), 1).await["errno"],
        0
    );
    assert_eq!(friend_ids(&bob.call(json!({"msgid": 21}), 1).await), [a]);

    let removed = alice.call(json!({"msgid": 25, "friendid": b}), 2).await;
    assert_eq!(removed["errno"], 0, "{removed}");
    assert!(friend_ids(&alice.call(json!({"msgid": 21}), 3).await).is_empty());
    assert!(friend_ids(&bob.call(json!({"msgid": 21}), 2).await).is_empty());
    let again = alice.call(json!({"msgid": 25, "friendid": b}), 4).await;
    assert_eq!(again["errno"], 5, "{again}");
    assert!(
        again["errmsg"]
            .as_str()
            .unwrap_or("")
            .contains("is not your friend"),
        "{again}"
    );
}

#[tokio::test]
async fn members_with_roles_a_rename_by_the_creator_and_leaving_on_every_node() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut setup = Client::connect(stack.gateways[0].tcp).await;
    let a = setup.register("alice", "pa").await;
    let d = setup.register("dave", "pd").await;
    let mut dave = device(&stack, 1, d, "pd").await;
    let g = dave
        .call(
            json!({"msgid": 8, "groupname": "team", "groupdesc": "we"}),
            1,
        )
        .await["groupid"]
        .as_i64()
        .expect("groupid");
    let mut alice = device(&stack, 0, a, "pa").await;
    assert_eq!(
        alice.call(json!({"msgid": 9, "groupid": g}), 1).await["errno"],
        0
    );
    // Her second device, on dave's node.
    let mut phone = device(&stack, 1, a, "pa").await;

    let members = alice.call(json!({"msgid": 27, "groupid": g}), 2).await;
    assert_eq!(members["errno"], 0, "{members}");
    assert_eq!(members["groupname"], "team");
    let mut listed: Vec<(i64, String, bool)> = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["id"].as_i64().expect("id"),
                m["role"].as_str().expect("role").to_owned(),
                m["online"] == true,
            )
        })
        .collect();
    listed.sort();
    let mut expected = vec![
        (a, "member".to_owned(), true),
        (d, "creator".to_owned(), true),
    ];
    expected.sort();
    assert_eq!(listed, expected);

    // Only the creator renames; the description stays when not given.
    let refused = alice
        .call(json!({"msgid": 28, "groupid": g, "groupname": "mine"}), 3)
        .await;
    assert_eq!(refused["errno"], 4, "{refused}");
    assert!(
        refused["errmsg"]
            .as_str()
            .unwrap_or("")
            .contains("only the creator"),
        "{refused}"
    );
    let renamed = dave
        .call(
            json!({"msgid": 28, "groupid": g, "groupname": "the team"}),
            2,
        )
        .await;
    assert_eq!(renamed["errno"], 0, "{renamed}");
    let members = alice.call(json!({"msgid": 27, "groupid": g}), 4).await;
    assert_eq!(members["groupname"], "the team", "{members}");
    assert_eq!(members["groupdesc"], "we", "{members}");

    // The creator stays; alice leaves, on both her devices.
    let stays = dave.call(json!({"msgid": 26, "groupid": g}), 3).await;
    assert_eq!(stays["errno"], 4, "{stays}");
    assert!(
        stays["errmsg"].as_str().unwrap_or("").contains("creator"),
        "{stays}"
    );
    let left = alice.call(json!({"msgid": 26, "groupid": g}), 5).await;
    assert_eq!(left["errno"], 0, "{left}");
    // The other node hears it over the control channel, which on a cluster
    // is another shard than the group's log: within moments, not in order
    // with the group's next chat. So: the chats that follow stop reaching
    // her, on both nodes, within a few seconds.
    let mut stopped = false;
    for round in 0..10 {
        let text = format!("after alice left {round}");
        let sent = dave.call(group_chat(d, g, &text), 10 + round).await;
        assert_eq!(sent["errno"], 0, "{sent}");
        let mut reached = false;
        for client in [&mut alice, &mut phone] {
            let frames = client.frames_until_quiet(Duration::from_millis(500)).await;
            reached |= frames.iter().any(|f| f["msg"] == text.as_str());
        }
        if !reached {
            stopped = true;
            break;
        }
    }
    assert!(stopped, "her sessions still get the group's chats");
    let members = alice.call(json!({"msgid": 27, "groupid": g}), 6).await;
    assert_eq!(members["errno"], 4, "{members}");
    let refused = alice.call(group_chat(a, g, "still here?"), 7).await;
    assert_ne!(refused["errno"], 0, "a chat to a group she left: {refused}");
}

#[tokio::test]
async fn a_blocked_user_is_refused_with_a_reason_on_every_node_until_unblocked() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut setup = Client::connect(stack.gateways[0].tcp).await;
    let a = setup.register("alice", "pa").await;
    let m = setup.register("mallory", "pm").await;
    let mut alice = device(&stack, 0, a, "pa").await;
    // Mallory writes from both nodes.
    let mut mallory = device(&stack, 0, m, "pm").await;
    let mut mallory2 = device(&stack, 1, m, "pm").await;
    let first = mallory.call(e2e::chat(m, a, "hello alice"), 1).await;
    assert_eq!(first["errno"], 0, "{first}");

    let blocked = alice.call(json!({"msgid": 29, "userid": m}), 1).await;
    assert_eq!(blocked["errno"], 0, "{blocked}");
    let roster = alice.call(json!({"msgid": 21}), 2).await;
    assert_eq!(roster["blocked"], json!([m]), "{roster}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (seq, client) in [(2, &mut mallory), (3, &mut mallory2)] {
        let refused = client.call(e2e::chat(m, a, "let me in"), seq).await;
        assert_eq!(refused["errno"], 4, "{refused}");
        assert_eq!(
            refused["errmsg"],
            format!("user {a} does not accept your messages"),
            "{refused}"
        );
    }
    // Typing is not passed on either; nothing of mallory's arrives.
    mallory.send(&json!({"msgid": 19, "toid": a})).await;
    let frames = alice.frames_until_quiet(Duration::from_millis(800)).await;
    assert!(
        !frames.iter().any(|f| f["id"] == m
            && (f["msgid"] == 6 || f["msgid"] == 19)
            && f["msg"] != "hello alice"),
        "{frames:?}"
    );
    // Alice can still write to mallory; self-blocks and unknown users are
    // refused with a reason.
    assert_eq!(alice.call(e2e::chat(a, m, "stop"), 3).await["errno"], 0);
    let own = alice.call(json!({"msgid": 29, "userid": a}), 4).await;
    assert_eq!(own["errno"], 1, "{own}");
    let unknown = alice.call(json!({"msgid": 29, "userid": 999_999}), 5).await;
    assert_eq!(unknown["errno"], 5, "{unknown}");

    let unblocked = alice.call(json!({"msgid": 30, "userid": m}), 6).await;
    assert_eq!(unblocked["errno"], 0, "{unblocked}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mallory2.call(e2e::chat(m, a, "sorry"), 4).await["errno"], 0);
}
