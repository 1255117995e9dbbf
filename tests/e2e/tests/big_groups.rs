//! A user in many large groups still logs in (their groups come from the
//! user service a page at a time: in one reply they would pass the 4 MiB a
//! gRPC message may have), and a full group refuses a join with the reason.
//! The groups are made in bulk with the `mariadb` client, straight into the
//! user service's database: a hundred thousand joins through the API would
//! take minutes.

use e2e::{Client, Stack};
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

fn parse_list(ack: &Value, field: &str) -> Vec<Value> {
    ack[field]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|s| serde_json::from_str(s.as_str().expect("JSON text")).expect("json"))
                .collect()
        })
        .unwrap_or_default()
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
