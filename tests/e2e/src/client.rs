//! The test clients: a classic client over TCP ([`Client`]), one over
//! WebSocket ([`WsClient`]), a minimal HTTP GET for health and metrics, and
//! helpers that build and read the classic protocol's JSON.

use std::{net::SocketAddr, time::Duration};

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

/// How long a test waits for one expected message before failing.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(15);

/// The sum of the values of a Prometheus text exposition's samples named
/// `name` (a prefix) whose line contains `labels` ("" for all).
pub fn metric_value(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A minimal HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(5), http_get_inner(addr, path))
        .await
        .ok()
        .flatten()
}

async fn http_get_inner(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut response)
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A classic client over TCP: requests end with NUL, replies with a newline.
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let (read, writer) = stream.into_split();
        Self {
            reader: BufReader::new(read),
            writer,
        }
    }

    /// Connects with a receive buffer of about `bytes`: what the server
    /// writes beyond it waits unacknowledged in the server's socket while
    /// this client does not read.
    pub async fn connect_with_receive_buffer(addr: SocketAddr, bytes: u32) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let stream = socket
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let (read, writer) = stream.into_split();
        Self {
            reader: BufReader::new(read),
            writer,
        }
    }

    /// This end's address (what a proxy in between sees as the client).
    pub fn local_addr(&self) -> SocketAddr {
        self.reader.get_ref().local_addr().expect("local addr")
    }

    pub async fn send(&mut self, request: &Value) {
        let mut bytes = request.to_string().into_bytes();
        bytes.push(0);
        self.send_raw(&bytes).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("send");
    }

    /// The next line from the server, exactly as sent (without the newline).
    pub async fn recv_line(&mut self) -> String {
        self.try_recv_line(RECV_TIMEOUT)
            .await
            .expect("a message from the server in time")
    }

    pub async fn try_recv_line(&mut self, timeout: Duration) -> Option<String> {
        let mut line = String::new();
        match tokio::time::timeout(timeout, self.reader.read_line(&mut line)).await {
            Ok(Ok(0)) => None,
            Ok(Ok(_)) => Some(line.trim_end_matches('\n').to_owned()),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    pub async fn recv(&mut self) -> Value {
        let line = self.recv_line().await;
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("server sent invalid JSON {line:?}: {e}"))
    }

    /// Asserts nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(line) = self.try_recv_line(quiet).await {
            panic!("expected nothing, got {line}");
        }
    }

    /// True once the server closed the connection.
    pub async fn is_closed(&mut self, timeout: Duration) -> bool {
        let mut line = String::new();
        matches!(
            tokio::time::timeout(timeout, self.reader.read_line(&mut line)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    pub async fn register(&mut self, name: &str, password: &str) -> i64 {
        self.send(&json!({"msgid": 4, "name": name, "password": password}))
            .await;
        let ack = self.recv().await;
        assert_eq!(ack["errno"], 0, "register {name}: {ack}");
        ack["id"].as_i64().expect("id")
    }

    pub async fn login(&mut self, id: i64, password: &str) -> Value {
        self.send(&json!({"msgid": 1, "id": id, "password": password}))
            .await;
        self.recv().await
    }

    pub async fn login_ok(&mut self, id: i64, password: &str) -> Value {
        let ack = self.login(id, password).await;
        assert_eq!(ack["errno"], 0, "login {id}: {ack}");
        ack
    }

    /// Logs in as a client that acknowledges (`acks`, and `since` when given).
    pub async fn login_acking(&mut self, id: i64, password: &str, since: Option<u64>) -> Value {
        let mut request = json!({"msgid": 1, "id": id, "password": password, "acks": true});
        if let Some(since) = since {
            request["since"] = since.into();
        }
        self.send(&request).await;
        self.recv().await
    }

    /// Logs in, retrying while the account is still held elsewhere (errno
    /// 2) for at most `within`; panics after that.
    pub async fn login_within(&mut self, id: i64, password: &str, within: Duration) -> Value {
        let started = tokio::time::Instant::now();
        loop {
            let ack = self.login(id, password).await;
            if ack["errno"] == 0 {
                return ack;
            }
            assert_eq!(ack["errno"], 2, "{ack}");
            assert!(
                started.elapsed() < within,
                "user {id} still locked out after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Chat frames (msgid 6 or 10) until nothing arrives for `quiet`.
    pub async fn chats_until_quiet(&mut self, quiet: Duration) -> Vec<Value> {
        let mut frames = self.frames_until_quiet(quiet).await;
        frames.retain(|value| matches!(value["msgid"].as_i64(), Some(6 | 10)));
        frames
    }

    /// Every frame received until nothing more comes for `quiet`: replies
    /// and errors as well as chats.
    pub async fn frames_until_quiet(&mut self, quiet: Duration) -> Vec<Value> {
        let mut got = Vec::new();
        while let Some(line) = self.try_recv_line(quiet).await {
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("server sent invalid JSON {line:?}: {e}"));
            got.push(value);
        }
        got
    }

    /// Closes the connection with a reset, as a crashed or vanished client
    /// does: nothing more is read or written.
    pub fn reset(self) {
        let stream = self
            .reader
            .into_inner()
            .reunite(self.writer)
            .expect("halves of one stream");
        let _ = socket_linger_zero(&stream);
    }

    /// Sends a request with a `seq` and returns the reply carrying it.
    pub async fn call(&mut self, mut request: Value, seq: i64) -> Value {
        request["seq"] = seq.into();
        self.send(&request).await;
        loop {
            let reply = self.recv().await;
            if reply["seq"] == seq {
                return reply;
            }
        }
    }
}

fn socket_linger_zero(stream: &TcpStream) -> std::io::Result<()> {
    #[allow(deprecated)]
    stream.set_linger(Some(Duration::ZERO))
}

/// A login ack's (or roster page's) `friends` or `groups`: JSON objects
/// inside strings, parsed.
pub fn parse_list(ack: &Value, field: &str) -> Vec<Value> {
    ack[field]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|s| {
                    serde_json::from_str(s.as_str().expect("entries are JSON text in strings"))
                        .expect("json text")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `msg` of each chat.
pub fn texts(chats: &[Value]) -> Vec<String> {
    chats
        .iter()
        .map(|m| m["msg"].as_str().expect("msg").to_owned())
        .collect()
}

/// The messages a login ack carried (`offlinemsg`), parsed.
pub fn offline_messages(ack: &Value) -> Vec<Value> {
    ack["offlinemsg"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|s| serde_json::from_str(s.as_str().expect("string")).expect("json"))
                .collect()
        })
        .unwrap_or_default()
}

/// `first` then `then`, where `then` may repeat the end of `first`: at-least-once
/// delivery to a classic client whose node died right after writing.
pub fn joined_at_least_once(first: &[String], then: &[String]) -> Vec<String> {
    let overlap = (0..=first.len().min(then.len()))
        .rev()
        .find(|&k| first[first.len() - k..] == then[..k])
        .unwrap_or(0);
    first.iter().chain(&then[overlap..]).cloned().collect()
}

/// A chat object as a classic client sends it.
pub fn chat(from: i64, to: i64, text: &str) -> Value {
    json!({"msgid": 6, "id": from, "name": "whoever", "toid": to, "msg": text, "time": "2026-11-25 10:00:00"})
}

pub fn group_chat(from: i64, group: i64, text: &str) -> Value {
    json!({"msgid": 10, "id": from, "name": "whoever", "groupid": group, "msg": text, "time": "2026-11-25 10:00:00"})
}

/// A client over WebSocket: one JSON message per text frame.
pub struct WsClient {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("ws connect");
        Self { socket }
    }

    pub async fn send(&mut self, request: &Value) {
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::text(
                request.to_string(),
            ))
            .await
            .expect("ws send");
    }

    /// True once the server closed the connection (reading what remains).
    pub async fn is_closed(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_))) => return true,
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(RECV_TIMEOUT, self.socket.next())
                .await
                .expect("a ws message in time")
                .expect("ws open")
                .expect("ws message");
            if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                return serde_json::from_str(text.as_str()).expect("json");
            }
        }
    }
}

/// Frames until one satisfying `want` arrives (the others are collected in
/// `skipped`), acknowledging chats with an `rseq` as it goes; panics with
/// what came instead after [`test_support::PATIENCE`].
pub async fn next_where(
    client: &mut Client,
    skipped: &mut Vec<Value>,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + test_support::PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let line = client
            .try_recv_line(left)
            .await
            .unwrap_or_else(|| panic!("the awaited frame in time; got {skipped:?}"));
        let value: Value = serde_json::from_str(&line).expect("json");
        if let Some(rseq) = value["rseq"].as_u64() {
            client.send(&json!({"msgid": 12, "ack": rseq})).await;
        }
        if want(&value) {
            return value;
        }
        skipped.push(value);
    }
}
