//! A connection to a gateway (or nginx in front of them) over classic TCP or
//! WebSocket: JSON values out, JSON values in, and `None` when it closes.

use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::mpsc,
};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `host:port` of a classic TCP listener.
    Tcp(String),
    /// `ws://host:port/ws`.
    Ws(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
            Endpoint::Ws(url) => f.write_str(url),
        }
    }
}

pub struct Connection {
    outgoing: mpsc::UnboundedSender<String>,
    pub incoming: mpsc::UnboundedReceiver<Value>,
}

impl Connection {
    pub async fn open(endpoint: &Endpoint) -> anyhow::Result<Self> {
        let (outgoing, mut to_send) = mpsc::unbounded_channel::<String>();
        let (received, incoming) = mpsc::unbounded_channel();
        match endpoint {
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (mut read, mut write) = stream.into_split();
                tokio::spawn(async move {
                    while let Some(text) = to_send.recv().await {
                        let mut bytes = text.into_bytes();
                        bytes.push(0);
                        if write.write_all(&bytes).await.is_err() {
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
            Endpoint::Ws(url) => {
                let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
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
        }
        Ok(Self { outgoing, incoming })
    }

    pub fn send(&self, request: &Value) -> anyhow::Result<()> {
        self.outgoing
            .send(request.to_string())
            .map_err(|_| anyhow::anyhow!("the connection is closed"))
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
