//! The `chat` client against a real stack: its scripted mode, and its
//! interactive mode driven line by line like a person would.

use std::{process::Stdio, time::Duration};

use e2e::{Client, PATIENCE, Stack, run_chat};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    process::Command,
};

#[tokio::test]
async fn scripted_register_send_and_listen() {
    let stack = Stack::builder().gateways(2).start().await;
    let node1 = stack.gateways[0].tcp.to_string();
    let node2 = stack.gateways[1].tcp.to_string();

    let (ok, out, err) = run_chat(&[
        "--addr",
        &node1,
        "register",
        "--name",
        "alice",
        "--password",
        "pa",
    ])
    .await;
    assert!(ok, "{err}");
    let alice: i64 = serde_json::from_str::<Value>(&out).expect("json")["id"]
        .as_i64()
        .expect("id");
    let (_, out, _) = run_chat(&[
        "--addr",
        &node2,
        "register",
        "--name",
        "bob",
        "--password",
        "pb",
    ])
    .await;
    let bob: i64 = serde_json::from_str::<Value>(&out).expect("json")["id"]
        .as_i64()
        .expect("id");

    let (ok, _, err) = run_chat(&[
        "--addr",
        &node1,
        "register",
        "--name",
        "alice",
        "--password",
        "x",
    ])
    .await;
    assert!(!ok, "a taken name fails the command");
    assert!(err.contains("already taken"), "{err}");

    let mut listener = Command::new(e2e::bin("chat"))
        .args([
            "--addr",
            &node2,
            "listen",
            "--id",
            &bob.to_string(),
            "--password",
            "pb",
            "--count",
            "1",
            "--idle-timeout",
            "30",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("listen");
    let mut status = BufReader::new(listener.stderr.take().expect("stderr")).lines();
    let ready = tokio::time::timeout(PATIENCE, status.next_line())
        .await
        .expect("listen starts")
        .expect("read");
    assert_eq!(
        ready.as_deref(),
        Some(format!("listening as user {bob}").as_str())
    );

    let (ok, out, err) = run_chat(&[
        "--addr",
        &node1,
        "send",
        "--id",
        &alice.to_string(),
        "--password",
        "pa",
        "--to",
        &bob.to_string(),
        "--msg",
        "hello: with a colon 🙂",
    ])
    .await;
    assert!(ok, "{out}{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json")["errno"],
        0
    );

    let heard = tokio::time::timeout(Duration::from_secs(30), listener.wait_with_output())
        .await
        .expect("listen ends")
        .expect("output");
    let line: Value = serde_json::from_str(
        String::from_utf8_lossy(&heard.stdout)
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("json");
    assert_eq!(
        (
            line["msg"].as_str(),
            line["id"].as_i64(),
            line["name"].as_str()
        ),
        (Some("hello: with a colon 🙂"), Some(alice), Some("alice"))
    );
    assert!(
        line["rseq"].as_u64().is_some(),
        "the client acknowledges: {line}"
    );

    // What a listener showed (and acknowledged before exiting) is not
    // handed to the next one.
    let (ok, out, err) = run_chat(&[
        "--addr",
        &node1,
        "listen",
        "--id",
        &bob.to_string(),
        "--password",
        "pb",
        "--idle-timeout",
        "1",
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "", "nothing shown twice");

    let (ok, out, _) = run_chat(&[
        "--addr",
        &node1,
        "send",
        "--id",
        &alice.to_string(),
        "--password",
        "pa",
        "--to",
        "999999",
        "--msg",
        "x",
    ])
    .await;
    assert!(!ok, "a refused send fails the command");
    assert!(out.contains("does not exist"), "{out}");
}

struct Interactive {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Interactive {
    async fn start(addr: &str) -> Self {
        let mut child = Command::new(e2e::bin("chat"))
            .args(["--addr", addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chat");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self {
            child,
            stdin,
            stdout,
        }
    }

    async fn type_line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("type");
        self.stdin.flush().await.expect("flush");
    }

    /// Goes through the menu as a person would; returns what login printed.
    async fn log_in(&mut self, id: i64, password: &str) -> String {
        self.expect("1. login").await;
        self.type_line("1").await;
        self.expect("user id").await;
        self.type_line(&id.to_string()).await;
        self.expect("password").await;
        self.type_line(password).await;
        self.expect("type help").await
    }

    /// Reads output until a line contains `needle`; returns everything read.
    async fn expect(&mut self, needle: &str) -> String {
        let mut seen = String::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let line = tokio::time::timeout_at(deadline, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("never printed {needle:?}; printed:\n{seen}"))
                .expect("read")
                .unwrap_or_else(|| panic!("exited before printing {needle:?}; printed:\n{seen}"));
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn interactive_session_like_a_person() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let bob_id = bob.register("bob", "pb").await;
    let alice_id = bob.register("alice", "pa").await;
    bob.login_ok(bob_id, "pb").await;
    assert_eq!(
        bob.call(serde_json::json!({"msgid": 7, "friendid": alice_id}), 1)
            .await["errno"],
        0
    );

    let mut cli = Interactive::start(&stack.gateways[0].tcp.to_string()).await;
    let login = cli.log_in(alice_id, "pa").await;
    assert!(login.contains("logged in as alice"), "{login}");
    assert!(
        login.contains("bob (online)"),
        "friends with their state: {login}"
    );

    cli.type_line(&format!("chat:{bob_id}:hi bob: from the terminal"))
        .await;
    cli.expect("message to bob").await;
    assert_eq!(bob.recv().await["msg"], "hi bob: from the terminal");

    cli.type_line("creategroup:terminal people:we type").await;
    let created = cli.expect("group id").await;
    assert!(created.contains("ok, group id"), "{created}");
    let group: i64 = created
        .rsplit("group id ")
        .next()
        .and_then(|rest| rest.trim().parse().ok())
        .expect("the new group's id");
    cli.type_line(&format!("members:{group}")).await;
    let members = cli.expect("creator").await;
    assert!(members.contains("alice ("), "{members}");
    cli.type_line(&format!("renamegroup:{group}:typists")).await;
    let renamed = cli.expect("rename group").await;
    assert!(renamed.contains("ok"), "{renamed}");
    cli.type_line(&format!("members:{group}")).await;
    assert!(cli.expect("typists").await.contains("typists"));

    cli.type_line("chat:999999:nobody").await;
    let refused = cli.expect("error").await;
    assert!(refused.contains("does not exist"), "{refused}");

    bob.send(&serde_json::json!({"msgid": 6, "toid": alice_id, "msg": "hello alice"}))
        .await;
    let incoming = cli.expect("hello alice").await;
    assert!(
        incoming.contains(&format!("[{bob_id}]bob said: hello alice")),
        "{incoming}"
    );

    cli.type_line(&format!("removefriend:{bob_id}")).await;
    let removed = cli.expect("remove friend").await;
    assert!(removed.contains(": ok"), "{removed}");

    cli.type_line("loginout").await;
    cli.expect("logged out").await;
    cli.type_line("3").await;
    let status = tokio::time::timeout(Duration::from_secs(10), cli.child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success());
}

#[tokio::test]
async fn interactive_client_reconnects_when_its_node_goes_away() {
    let mut stack = Stack::builder()
        .gateways(2)
        .with_nginx()
        .gateway_env("CLUSTERCHAT_GATEWAY_PRESENCE_TTL_MS", "3000")
        .start()
        .await;
    let nginx = stack.nginx.as_ref().expect("nginx").tcp.to_string();
    let mut bob = Client::connect(stack.gateways[0].tcp).await;
    let bob_id = bob.register("bob", "pb").await;
    let alice_id = bob.register("alice", "pa").await;

    let mut cli = Interactive::start(&nginx).await;
    cli.log_in(alice_id, "pa").await;

    // Which node holds alice? Kill it.
    let mut holder = None;
    for (i, gateway) in stack.gateways.iter().enumerate() {
        let (_, body) = e2e::http_get(gateway.admin, "/healthz")
            .await
            .expect("healthz");
        if body.contains("\"sessions\":1") {
            holder = Some(i);
        }
    }
    let holder = holder.expect("one node holds alice");
    stack.kill_gateway(holder).await;

    cli.expect("connection lost").await;
    let back = cli.expect("logged in again as alice").await;
    assert!(back.contains("connected to"), "{back}");

    // And she can chat from her new node.
    let survivor = stack.gateways[1 - holder].tcp;
    let mut bob = Client::connect(survivor).await;
    bob.login_ok(bob_id, "pb").await;
    cli.type_line(&format!("chat:{bob_id}:I am back")).await;
    cli.expect("message to user").await;
    assert_eq!(bob.recv().await["msg"], "I am back");
}

/// The terminal shows a friend coming and going (msgid 22), changes the
/// password (its other session is told and ends), and is itself told when
/// it is logged out from elsewhere (msgid 23).
#[tokio::test]
async fn interactive_presence_a_new_password_and_logging_out_everywhere() {
    let stack = Stack::builder().gateways(2).start().await;
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let bob_id = bob.register("bob", "pb").await;
    let alice_id = bob.register("alice", "pa").await;
    bob.login_acking(bob_id, "pb", None).await;
    assert_eq!(
        bob.call(serde_json::json!({"msgid": 7, "friendid": alice_id}), 1)
            .await["errno"],
        0
    );
    bob.send(&serde_json::json!({"msgid": 3})).await;

    let mut cli = Interactive::start(&stack.gateways[0].tcp.to_string()).await;
    cli.log_in(alice_id, "pa").await;
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    assert_eq!(bob.login_acking(bob_id, "pb", None).await["errno"], 0);
    let online = cli.expect("is online").await;
    assert!(
        online.contains(&format!("bob ({bob_id}) is online")),
        "{online}"
    );
    bob.send(&serde_json::json!({"msgid": 3})).await;
    cli.expect(&format!("bob ({bob_id}) is offline")).await;

    // A second session of alice (a device, on the other node) ends when
    // the terminal changes the password.
    let mut phone = Client::connect(stack.gateways[1].tcp).await;
    assert_eq!(phone.login_acking(alice_id, "pa", None).await["errno"], 0);
    cli.type_line("password:pa:new-pa").await;
    cli.expect("password changed").await;
    let mut told = false;
    for _ in 0..20 {
        match phone.try_recv_line(PATIENCE).await {
            Some(line) if line.contains("\"msgid\":23") => {
                told = true;
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(told, "the other session was told");

    // Logged out everywhere from a device: the terminal says so and is
    // back at the menu.
    let mut tablet = Client::connect(stack.gateways[1].tcp).await;
    assert_eq!(
        tablet.login_acking(alice_id, "new-pa", None).await["errno"],
        0
    );
    assert_eq!(
        tablet.call(serde_json::json!({"msgid": 23}), 1).await["errno"],
        0
    );
    let ended = cli.expect("1. login").await;
    assert!(ended.contains("logged out everywhere"), "{ended}");
}
