//! The `chat` client's conversation commands against a real stack (gateways
//! and the history service): scripted `history`, `conversations` and `read`,
//! and the interactive `history:`, unread summary, receipts, typing and
//! messages from the user's other device.

use std::{process::Stdio, time::Duration};

use e2e::{Client, PATIENCE, Stack, run_chat};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    process::Command,
};

/// How long history may take to show a message (it is written
/// asynchronously, from a stream).
const HISTORY_LAG: Duration = Duration::from_secs(30);

/// Runs `chat` and returns its stdout's JSON lines; panics when it fails.
async fn chat_lines(args: &[&str]) -> Vec<Value> {
    let (ok, out, err) = run_chat(args).await;
    assert!(ok, "chat {args:?} failed:\n{out}{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON {l:?}: {e}")))
        .collect()
}

async fn register(node: &str, name: &str, password: &str) -> i64 {
    let lines = chat_lines(&[
        "--addr",
        node,
        "register",
        "--name",
        name,
        "--password",
        password,
    ])
    .await;
    lines[0]["id"].as_i64().expect("id")
}

async fn send(node: &str, from: i64, password: &str, to: i64, msg: &str) {
    let reply = chat_lines(&[
        "--addr",
        node,
        "send",
        "--id",
        &from.to_string(),
        "--password",
        password,
        "--to",
        &to.to_string(),
        "--msg",
        msg,
    ])
    .await;
    assert_eq!(reply[0]["errno"], 0, "{reply:?}");
}

/// `chat history`: the messages, and the closing `{"conv","more"}` line.
async fn history(
    node: &str,
    id: i64,
    password: &str,
    to: i64,
    more: &[&str],
) -> (Vec<Value>, Value) {
    let (id, to) = (id.to_string(), to.to_string());
    let mut args = vec![
        "--addr",
        node,
        "history",
        "--id",
        &id,
        "--password",
        password,
        "--to",
        &to,
    ];
    args.extend_from_slice(more);
    let mut lines = chat_lines(&args).await;
    let last = lines.pop().expect("the closing line");
    assert!(last.get("more").is_some(), "closing line: {last}");
    (lines, last)
}

async fn conversations(node: &str, id: i64, password: &str) -> Vec<Value> {
    chat_lines(&[
        "--addr",
        node,
        "conversations",
        "--id",
        &id.to_string(),
        "--password",
        password,
    ])
    .await
}

/// Asks for the conversation's history until it holds `count` messages.
async fn history_of(node: &str, id: i64, password: &str, to: i64, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + HISTORY_LAG;
    loop {
        let (messages, _) = history(node, id, password, to, &[]).await;
        if messages.len() >= count {
            return messages;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history has {} of {count} messages after {HISTORY_LAG:?}: {messages:?}",
            messages.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn texts(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["msg"].as_str().expect("msg"))
        .collect()
}

fn cseqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["cseq"].as_u64().expect("cseq"))
        .collect()
}

#[tokio::test]
async fn scripted_history_conversations_and_read() {
    let stack = Stack::builder().gateways(2).start().await;
    let node1 = stack.gateways[0].tcp.to_string();
    let node2 = stack.gateways[1].tcp.to_string();
    let alice = register(&node1, "alice", "pa").await;
    let bob = register(&node2, "bob", "pb").await;

    // Through both nodes, each send answered before the next.
    let said = [
        (alice, "pa", bob, "hi bob"),
        (alice, "pa", bob, "are you there?"),
        (bob, "pb", alice, "yes: here"),
        (alice, "pa", bob, "good 🙂"),
        (bob, "pb", alice, "bye"),
    ];
    for (i, (from, password, to, msg)) in said.iter().enumerate() {
        let node = if i % 2 == 0 { &node1 } else { &node2 };
        send(node, *from, password, *to, msg).await;
    }
    let expected: Vec<&str> = said.iter().map(|s| s.3).collect();

    let messages = history_of(&node1, alice, "pa", bob, said.len()).await;
    assert_eq!(texts(&messages), expected, "in the order sent");
    let seqs = cseqs(&messages);
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "cseq ascending: {seqs:?}"
    );
    let conv = format!("d:{}:{}", alice.min(bob), alice.max(bob));
    for (m, (from, ..)) in messages.iter().zip(&said) {
        assert_eq!(m["conv"], conv.as_str(), "{m}");
        assert_eq!(m["id"], *from, "{m}");
        assert!(m["mid"].is_string(), "{m}");
        assert!(m["time"].is_string(), "{m}");
    }
    // Bob sees the same conversation.
    let (bobs, end) = history(&node2, bob, "pb", alice, &[]).await;
    assert_eq!(cseqs(&bobs), seqs);
    assert_eq!(end, json!({"conv": conv, "more": false}));

    // Paging back two at a time: every message once, nothing else.
    let (newest, end) = history(&node1, alice, "pa", bob, &["--limit", "2"]).await;
    assert_eq!(cseqs(&newest), seqs[3..]);
    assert_eq!(end["more"], true);
    let before = seqs[3].to_string();
    let (middle, end) = history(
        &node2,
        alice,
        "pa",
        bob,
        &["--limit", "2", "--before", &before],
    )
    .await;
    assert_eq!(cseqs(&middle), seqs[1..3]);
    assert_eq!(end["more"], true);
    let before = seqs[1].to_string();
    let (oldest, end) = history(
        &node1,
        alice,
        "pa",
        bob,
        &["--limit", "2", "--before", &before],
    )
    .await;
    assert_eq!(cseqs(&oldest), seqs[..1]);
    assert_eq!(end["more"], false);
    let after = seqs[2].to_string();
    let (later, _) = history(&node1, alice, "pa", bob, &["--after", &after]).await;
    assert_eq!(cseqs(&later), seqs[3..], "and forward");

    // Bob has three unread messages from alice (his own do not count).
    let list = conversations(&node2, bob, "pb").await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["conv"], conv.as_str());
    assert_eq!(list[0]["peer"], alice);
    assert_eq!(list[0]["unread"], 3, "{list:?}");
    assert_eq!(list[0]["last"]["msg"], "bye");

    let newest_cseq = *seqs.last().expect("messages");
    let read = chat_lines(&[
        "--addr",
        &node1,
        "read",
        "--id",
        &bob.to_string(),
        "--password",
        "pb",
        "--to",
        &alice.to_string(),
        "--upto",
        &newest_cseq.to_string(),
    ])
    .await;
    assert_eq!(read.len(), 1, "{read:?}");
    assert_eq!(read[0]["errno"], 0, "{read:?}");
    assert_eq!(read[0]["read"], newest_cseq);
    assert_eq!(read[0]["unread"], 0);

    let list = conversations(&node1, bob, "pb").await;
    assert_eq!(
        (list[0]["unread"].as_u64(), list[0]["read"].as_u64()),
        (Some(0), Some(newest_cseq)),
        "{list:?}"
    );
    // And alice sees that bob has read everything.
    let list = conversations(&node2, alice, "pa").await;
    assert_eq!(list[0]["peer_read"], newest_cseq, "{list:?}");

    // A refusal: the server's reason and a failed command.
    let (ok, out, err) = run_chat(&[
        "--addr",
        &node1,
        "history",
        "--id",
        &alice.to_string(),
        "--password",
        "pa",
        "--group",
        "999999",
    ])
    .await;
    assert!(!ok, "{out}{err}");
    let refusal: Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_ne!(refusal["errno"], 0, "{refusal}");
    assert!(refusal["errmsg"].is_string(), "{refusal}");
}

struct Interactive {
    _child: tokio::process::Child,
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
            _child: child,
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

/// The next message of `msgid` a client receives (others are skipped).
async fn next_of(client: &mut Client, msgid: i64) -> Value {
    loop {
        let message = client.recv().await;
        if message["msgid"] == msgid {
            return message;
        }
    }
}

#[tokio::test]
async fn interactive_history_unread_receipts_typing_search_and_other_devices() {
    let stack = Stack::builder().gateways(2).start().await;
    let node1 = stack.gateways[0].tcp.to_string();
    let node2 = stack.gateways[1].tcp.to_string();
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let bob_id = bob.register("bob", "pb").await;
    let alice_id = bob.register("alice", "pa").await;
    let ack = bob.login_acking(bob_id, "pb", None).await;
    assert_eq!(ack["errno"], 0, "{ack}");
    assert_eq!(
        bob.call(json!({"msgid": 7, "friendid": alice_id}), 1).await["errno"],
        0
    );
    for (seq, text) in [(2, "first from bob"), (3, "second: from bob")] {
        let reply = bob
            .call(json!({"msgid": 6, "toid": alice_id, "msg": text}), seq)
            .await;
        assert_eq!(reply["errno"], 0, "{reply}");
    }
    history_of(&node1, alice_id, "pa", bob_id, 2).await;
    let mut cli = Interactive::start(&node1).await;
    let login = cli.log_in(alice_id, "pa").await;
    assert!(login.contains("logged in as alice"), "{login}");
    let unread = cli.expect("unread").await;
    assert!(
        unread.contains(&format!("unread: bob ({bob_id}) 2")),
        "{unread}"
    );

    cli.type_line(&format!("history:{bob_id}")).await;
    let page = cli.expect("second: from bob").await;
    assert!(
        page.contains(&format!("history with bob ({bob_id}): 2 messages")),
        "{page}"
    );
    assert!(page.contains("bob: first from bob"), "{page}");
    // Shown, so read: bob's device hears it and the count is 0.
    let receipt = next_of(&mut bob, 18).await;
    assert_eq!(receipt["id"], alice_id, "{receipt}");
    let deadline = tokio::time::Instant::now() + HISTORY_LAG;
    loop {
        let list = conversations(&node2, alice_id, "pa").await;
        if list[0]["unread"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still unread: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    cli.type_line("conversations").await;
    let list = cli.expect("second: from bob").await;
    assert!(list.contains(&format!("bob ({bob_id})")), "{list}");
    assert!(!list.contains("unread]"), "{list}");

    // A message alice sends from another device shows as hers.
    send(&node2, alice_id, "pa", bob_id, "from my phone").await;
    let mine = cli.expect("from my phone").await;
    assert!(
        mine.contains(&format!(
            "you (other device) → bob ({bob_id}): from my phone"
        )),
        "{mine}"
    );

    // Bob types, and reads what alice sent.
    bob.send(&json!({"msgid": 19, "toid": alice_id})).await;
    cli.expect("bob is typing").await;
    let (messages, _) = history(&node2, bob_id, "pb", alice_id, &[]).await;
    let newest = cseqs(&messages).into_iter().max().expect("messages");
    let reply = bob
        .call(
            json!({"msgid": 18, "conv": messages[0]["conv"], "upto": newest}),
            4,
        )
        .await;
    assert_eq!(reply["errno"], 0, "{reply}");
    cli.expect(&format!("bob ({bob_id}) read up to #{newest}"))
        .await;

    // Search: every word, any case, the words in brackets.
    cli.type_line("search:SECOND from").await;
    let found = cli.expect("[second]").await;
    assert!(found.contains("search \"SECOND from\": 1 hit"), "{found}");
    assert!(
        found.contains(&format!("bob ({bob_id})  bob: [second]: [from] bob")),
        "{found}"
    );

    // A conversation she is not in: the server's reason.
    cli.type_line("history:g:999999").await;
    let refused = cli.expect("history: error").await;
    assert!(refused.contains("errno"), "{refused}");
}
