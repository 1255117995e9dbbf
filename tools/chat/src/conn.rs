//! A connection to a gateway (or nginx in front of them) over classic TCP or
//! WebSocket: JSON values out, JSON values in, and `None` when it closes.
//!
//! The client uses the delivery additions: it logs in with `acks` (and
//! `since`, when it resumes), drops a chat it has already shown (by `rseq`,
//! or by `mid` for one without a sequence), acknowledges what it has shown
//! (at most every 100 ms; a group chat by its group and `cseq`), and pings
//! every 4 s so the server knows it is alive.
//! Either transport can run over TLS (`tls.rs`).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use futures::{SinkExt as _, StreamExt as _};
use rustls::ClientConfig;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::mpsc,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest as _},
};

use crate::tls;

#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `host:port` of a classic TCP listener; over TLS with a configuration.
    Tcp {
        addr: String,
        tls: Option<Arc<ClientConfig>>,
    },
    /// `ws://host:port/ws`, or `wss://...` with a TLS configuration.
    Ws {
        url: String,
        tls: Option<Arc<ClientConfig>>,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp { addr, tls: None } => write!(f, "tcp://{addr}"),
            Endpoint::Tcp { addr, tls: Some(_) } => write!(f, "tcp+tls://{addr}"),
            Endpoint::Ws { url, .. } => f.write_str(url),
        }
    }
}

/// What this client has shown, across reconnects: the basis of `since`,
/// of acknowledgements and of dropping duplicates.
#[derive(Default)]
pub struct Deliveries {
    /// The highest receiver sequence shown.
    shown: AtomicU64,
    /// Ids of recently shown chats that carried no sequence.
    recent: Mutex<(HashSet<String>, VecDeque<String>)>,
    /// Per group ("g:GID"), the highest `cseq` of its log's entries shown
    /// (group chats are acknowledged per group).
    groups: Mutex<HashMap<String, u64>>,
}

impl Deliveries {
    /// True the first time a chat is seen (show it); false for a repeat.
    pub fn first_time(&self, message: &Value) -> bool {
        if let Some(rseq) = message["rseq"].as_u64() {
            return self.shown.fetch_max(rseq, Ordering::AcqRel) < rseq;
        }
        let Some(mid) = message["mid"].as_str() else {
            return true;
        };
        if let (Some(conv), Some(cseq)) = (message["conv"].as_str(), message["cseq"].as_u64())
            && conv.starts_with("g:")
        {
            let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            let shown = groups.entry(conv.to_owned()).or_default();
            *shown = (*shown).max(cseq);
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *recent;
        if !set.insert(mid.to_owned()) {
            return false;
        }
        order.push_back(mid.to_owned());
        if order.len() > 10_000
            && let Some(old) = order.pop_front()
        {
            set.remove(&old);
        }
        true
    }

    pub fn shown(&self) -> u64 {
        self.shown.load(Ordering::Acquire)
    }

    /// Group acknowledgements for what was shown since `acked` (which it
    /// brings up to date).
    pub fn group_acks(&self, acked: &mut HashMap<String, u64>) -> Vec<Value> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let mut acks = Vec::new();
        for (conv, &cseq) in groups.iter() {
            let done = acked.entry(conv.clone()).or_default();
            if cseq > *done {
                *done = cseq;
                acks.push(json!({"msgid": 12, "ack": cseq, "conv": conv}));
            }
        }
        acks
    }

    /// The login request: with `acks`, and `since` once something was shown.
    pub fn login_request(&self, id: i64, password: &str) -> Value {
        let mut request = json!({"msgid": 1, "id": id, "password": password, "acks": true});
        if self.shown() > 0 {
            request["since"] = self.shown().into();
        }
        request
    }
}

pub struct Connection {
    outgoing: mpsc::UnboundedSender<String>,
    pub incoming: mpsc::UnboundedReceiver<Value>,
    pub deliveries: Arc<Deliveries>,
}

impl Connection {
    pub async fn open(endpoint: &Endpoint) -> anyhow::Result<Self> {
        Self::resume(endpoint, Arc::default()).await
    }

    /// Opens a connection that continues what `deliveries` has shown.
    pub async fn resume(endpoint: &Endpoint, deliveries: Arc<Deliveries>) -> anyhow::Result<Self> {
        let (outgoing, to_send) = mpsc::unbounded_channel::<String>();
        let (received, incoming) = mpsc::unbounded_channel();
        match endpoint {
            Endpoint::Tcp { addr, tls } => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                match tls {
                    None => {
                        let (read, write) = stream.into_split();
                        spawn_classic(read, write, to_send, received);
                    }
                    Some(config) => {
                        let stream =
                            tls::handshake(config.clone(), tls::host_of(addr), stream).await?;
                        let (read, write) = tokio::io::split(stream);
                        spawn_classic(read, write, to_send, received);
                    }
                }
            }
            Endpoint::Ws { url, tls: None } => {
                let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
                spawn_ws(socket, to_send, received);
            }
            Endpoint::Ws {
                url,
                tls: Some(config),
            } => {
                let request = url.as_str().into_client_request()?;
                let uri = request.uri();
                let host = uri
                    .host()
                    .context("the URL has no host")?
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let port = uri.port_u16().unwrap_or(443);
                let stream = TcpStream::connect((host.as_str(), port)).await?;
                stream.set_nodelay(true)?;
                let stream = tls::handshake(config.clone(), &host, stream).await?;
                let (socket, _) = tokio_tungstenite::client_async(request, stream).await?;
                spawn_ws(socket, to_send, received);
            }
        }
        // Heartbeat and acknowledgements; ends when the connection does.
        let beat = outgoing.clone();
        let shown = deliveries.clone();
        tokio::spawn(async move {
            let mut acked = 0;
            let mut groups_acked = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for n in 0u64.. {
                tick.tick().await;
                for ack in shown.group_acks(&mut groups_acked) {
                    if beat.send(ack.to_string()).is_err() {
                        return;
                    }
                }
                let now = shown.shown();
                if now > acked {
                    acked = now;
                    if beat
                        .send(json!({"msgid": 12, "ack": now}).to_string())
                        .is_err()
                    {
                        return;
                    }
                }
                if n % 40 == 39 && beat.send(json!({"msgid": 13}).to_string()).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            outgoing,
            incoming,
            deliveries,
        })
    }

    pub fn send(&self, request: &Value) -> anyhow::Result<()> {
        self.outgoing
            .send(request.to_string())
            .map_err(|_| anyhow::anyhow!("the connection is closed"))
    }

    /// Acknowledges everything shown and waits until the server has taken
    /// it (a ping after the ack is answered only once the ack was handled),
    /// so that a client about to exit is not handed the same chats again.
    pub async fn acknowledge_all(&mut self, seq: i64) -> anyhow::Result<()> {
        let shown = self.deliveries.shown();
        if shown > 0 {
            self.send(&json!({"msgid": 12, "ack": shown}))?;
        }
        for ack in self.deliveries.group_acks(&mut HashMap::new()) {
            self.send(&ack)?;
        }
        self.call(json!({"msgid": 13}), seq, |_| {}).await?;
        Ok(())
    }

    /// Sends `request` with `seq` and waits for the reply carrying it; other
    /// messages that arrive meanwhile are handed to `other`.
    pub async fn call(
        &mut self,
        mut request: Value,
        seq: i64,
        mut other: impl FnMut(Value),
    ) -> anyhow::Result<Value> {
        request["seq"] = seq.into();
        self.send(&request)?;
        while let Some(message) = self.incoming.recv().await {
            if message["seq"] == seq {
                return Ok(message);
            }
            other(message);
        }
        anyhow::bail!("the server closed the connection")
    }
}

/// Classic framing over any byte stream: requests end with NUL, replies
/// with a newline.
fn spawn_classic(
    mut read: impl AsyncRead + Unpin + Send + 'static,
    mut write: impl AsyncWrite + Unpin + Send + 'static,
    mut to_send: mpsc::UnboundedReceiver<String>,
    received: mpsc::UnboundedSender<Value>,
) {
    tokio::spawn(async move {
        while let Some(text) = to_send.recv().await {
            let mut bytes = text.into_bytes();
            bytes.push(0);
            // TLS may hold a record back until flushed.
            if write.write_all(&bytes).await.is_err() || write.flush().await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(value) = serde_json::from_slice(&line[..line.len() - 1])
                    && received.send(value).is_err()
                {
                    return;
                }
            }
        }
    });
}

/// One JSON value per WebSocket text message.
fn spawn_ws<S>(
    socket: WebSocketStream<S>,
    mut to_send: mpsc::UnboundedReceiver<String>,
    received: mpsc::UnboundedSender<Value>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = socket.split();
    tokio::spawn(async move {
        while let Some(text) = to_send.recv().await {
            if sink.send(Message::text(text)).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Text(text) = message
                && let Ok(value) = serde_json::from_str(text.as_str())
                && received.send(value).is_err()
            {
                return;
            }
        }
    });
}
