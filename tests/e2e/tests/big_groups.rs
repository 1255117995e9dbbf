//! A user in many large groups still logs in (their groups come from the
//! user service a page at a time: in one reply they would pass the 4 MiB a
//! gRPC message may have), and a full group refuses a join with the reason.
//! Chatting into a full group reaches its online members on both nodes
//! while other users chat as usual and the gateway's memory stays put.
//! The groups are made in bulk with the `mariadb` client, straight into the
//! user service's database: a hundred thousand joins through the API would
//! take minutes.

use e2e::{Client, Stack, parse_list, rss_kib};
use serde_json::{Value, json};

const GROUPS: usize = 120;
/// The user service's default cap (`CLUSTERCHAT_USER_MAX_GROUP_MEMBERS`).
const MEMBERS: usize = 1000;

/// Runs SQL in the database at `url` (`mysql://user:password@host:port/db`).
fn sql(url: &str, statements: &str) {
    let rest = url.strip_prefix("mysql://").expect("a mysql:// URL");
    let (credentials, location) = rest.rsplit_once('@').expect("user:password@");
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let (host_port, database) = location.split_once('/').expect("/database");
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, "3306"));
    let output = std::process::Command::new("mariadb")
        .args([
            "--no-defaults",
            "--protocol=tcp",
            "-h",
            host,
            "-P",
            port,
            "-u",
            user,
            database,
            "-e",
            statements,
        ])
        .env("MYSQL_PWD", password)
        .output()
        .expect("run the mariadb client");
    assert!(
        output.status.success(),
        "mariadb: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_user_in_many_full_groups_logs_in_and_a_full_group_says_so() {
    let stack = Stack::builder().gateways(1).start().await;
    let gateway = stack.gateways[0].tcp;
    let mut subject = Client::connect(gateway).await;
    let subject_id = subject.register("subject", "pw").await;
    let mut joiner = Client::connect(gateway).await;
    let joiner_id = joiner.register("joiner", "pw").await;

    // 999 more users with 32-character names; GROUPS groups, each holding
    // them and the subject: full at MEMBERS.
    sql(
        &stack.user_database_url,
        &format!(
            "INSERT INTO users (name, name_key, password_hash) \
             SELECT CONCAT('member-', LPAD(seq, 25, '0')), CONCAT('member-', LPAD(seq, 25, '0')), 'x' \
             FROM seq_1_to_{others}; \
             INSERT INTO chat_groups (name, name_key, description) \
             SELECT CONCAT('group ', seq), CONCAT('group ', seq), 'big' FROM seq_1_to_{GROUPS}; \
             INSERT INTO group_members (group_id, user_id, role) \
             SELECT g.id, u.id, 'normal' FROM chat_groups g CROSS JOIN users u \
             WHERE u.id <> {joiner_id};",
            others = MEMBERS - 1,
        ),
    );

    let ack = subject.login(subject_id, "pw").await;
    assert_eq!(ack["errno"], 0, "login of a user in {GROUPS} full groups");
    let groups = parse_list(&ack, "groups");
    assert_eq!(groups.len(), GROUPS);
    for group in &groups {
        assert_eq!(
            group["users"].as_array().map(Vec::len),
            Some(MEMBERS),
            "{}",
            group["groupname"]
        );
    }

    // A client that uses the additions gets the same roster in frames of
    // at most 256 KiB: the ack, then roster pages (msgid 15).
    subject.send(&json!({"msgid": 3, "id": subject_id})).await;
    let mut paged = Client::connect(gateway).await;
    let ack = paged
        .call(json!({"msgid": 1, "id": subject_id, "password": "pw"}), 1)
        .await;
    assert_eq!(ack["errno"], 0, "{}", ack["errmsg"]);
    assert_eq!(ack["roster_more"], true);
    let mut paged_groups = parse_list(&ack, "groups");
    let mut pages = 0;
    loop {
        let line = paged.recv_line().await;
        assert!(line.len() < 300 * 1024, "a page of {} bytes", line.len());
        let page: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(page["msgid"], 15, "{}", &line[..line.len().min(200)]);
        pages += 1;
        paged_groups.extend(parse_list(&page, "groups"));
        if page["more"] == false {
            break;
        }
    }
    assert!(pages > 1, "{pages} pages");
    assert_eq!(paged_groups, groups, "the same groups, in order, once");

    joiner.login_ok(joiner_id, "pw").await;
    let full = groups[0]["id"].as_i64().expect("group id");
    let refused = joiner
        .call(json!({"msgid": 9, "id": joiner_id, "groupid": full}), 5)
        .await;
    assert_ne!(refused["errno"], 0, "{refused}");
    assert_eq!(
        refused["errmsg"],
        format!("group {full} is full ({MEMBERS} members)"),
        "{refused}"
    );
}

#[tokio::test]
async fn chatting_into_a_full_group_is_delivered_and_leaves_others_alone() {
    let stack = Stack::builder().gateways(2).start().await;
    let (g1, g2) = (stack.gateways[0].tcp, stack.gateways[1].tcp);
    let mut sender = Client::connect(g1).await;
    let s = sender.register("loud", "pw").await;
    let mut near = Client::connect(g1).await;
    let n = near.register("near", "pw").await;
    let mut far = Client::connect(g2).await;
    let f = far.register("far", "pw").await;
    let (mut alice, a, mut bob, b) = stack.alice_and_bob(0, 1).await;

    // One group of MEMBERS: the three above and everyone else, offline.
    sql(
        &stack.user_database_url,
        &format!(
            "INSERT INTO users (name, name_key, password_hash) \
             SELECT CONCAT('crowd-', seq), CONCAT('crowd-', seq), 'x' FROM seq_1_to_{others}; \
             INSERT INTO chat_groups (name, name_key, description) VALUES ('crowd', 'crowd', 'all'); \
             INSERT INTO group_members (group_id, user_id, role) \
             SELECT g.id, u.id, 'normal' FROM chat_groups g CROSS JOIN users u \
             WHERE u.id NOT IN ({a}, {b});",
            others = MEMBERS - 3,
        ),
    );
    let group = sender.login_ok(s, "pw").await;
    let group = parse_list(&group, "groups")[0]["id"]
        .as_i64()
        .expect("group id");
    near.login_ok(n, "pw").await;
    far.login_ok(f, "pw").await;
    let pid = stack.gateways[0].pid().expect("pid");
    let before = rss_kib(pid);

    // Five messages to 999 receivers each, while Alice and Bob chat.
    let chats = async {
        let mut worst = std::time::Duration::ZERO;
        for i in 0..10 {
            let started = std::time::Instant::now();
            let text = format!("hi {i}");
            alice.send(&e2e::chat(a, b, &text)).await;
            while bob.recv().await["msg"] != text.as_str() {}
            worst = worst.max(started.elapsed());
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        worst
    };
    let shouts = async {
        for i in 0..5 {
            let reply = sender
                .call(e2e::group_chat(s, group, &format!("all {i}")), 10 + i)
                .await;
            assert_eq!(reply["errno"], 0, "{reply}");
            assert!(reply.get("failed").is_none(), "{reply}");
        }
    };
    let (worst, ()) = tokio::join!(chats, shouts);
    let after = rss_kib(pid);
    eprintln!(
        "five chats to {} receivers: others' slowest chat {worst:?}; gateway RSS {before} -> {after} KiB",
        MEMBERS - 1
    );
    assert!(
        worst < std::time::Duration::from_secs(1),
        "others stalled: {worst:?}"
    );
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "gateway RSS grew by {} KiB",
        after.saturating_sub(before)
    );
    // Online members on both nodes got all five, in order.
    for member in [&mut near, &mut far] {
        let got = member
            .chats_until_quiet(std::time::Duration::from_millis(500))
            .await;
        assert_eq!(
            e2e::texts(&got),
            ["all 0", "all 1", "all 2", "all 3", "all 4"]
        );
    }
}
