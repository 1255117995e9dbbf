//! One client connection to a gateway: classic TCP (requests end with NUL,
//! frames are read as a stream of JSON values, whatever separates them) or
//! a WebSocket on `/ws` (one JSON value per text message). Every read is
//! cancel-safe, so callers may race it against timers and commands.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

/// How long a connect may take before the gateway counts as unreachable
/// (a partitioned host never answers a SYN).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub enum Conn {
    Tcp { stream: TcpStream, buf: Vec<u8> },
    Ws(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
}

impl Conn {
    pub async fn tcp(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connect {addr}: timed out"))?
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self::Tcp {
            stream,
            buf: Vec::new(),
        })
    }

    /// A WebSocket to `ws://ADDR/ws` (the gateway's HTTP port).
    pub async fn ws(addr: SocketAddr) -> anyhow::Result<Self> {
        let url = format!("ws://{addr}/ws");
        let (ws, _) = tokio::time::timeout(
            CONNECT_TIMEOUT * 3,
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        .with_context(|| format!("connect {url}: timed out"))?
        .with_context(|| format!("connect {url}"))?;
        Ok(Self::Ws(Box::new(ws)))
    }

    pub async fn send(&mut self, request: &Value) -> anyhow::Result<()> {
        match self {
            Self::Tcp { stream, .. } => {
                let mut bytes = request.to_string().into_bytes();
                bytes.push(0);
                stream.write_all(&bytes).await?;
            }
            Self::Ws(ws) => ws.send(Message::text(request.to_string())).await?,
        }
        Ok(())
    }

    /// The next JSON value from the server; an error once the connection
    /// is closed or broken. Cancel-safe.
    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        match self {
            Self::Tcp { stream, buf } => loop {
                if let Some(value) = take_value(buf)? {
                    return Ok(value);
                }
                let mut chunk = [0u8; 16 * 1024];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("closed by the server");
                }
                buf.extend_from_slice(&chunk[..n]);
            },
            Self::Ws(ws) => loop {
                match ws.next().await {
                    None => bail!("closed by the server"),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
                    Some(Ok(Message::Close(_))) => bail!("closed by the server"),
                    // Pings are answered by tungstenite on the next read or write.
                    Some(Ok(_)) => {}
                }
            },
        }
    }

    /// [`Conn::recv`] for at most `wait`: `Ok(None)` when nothing came.
    pub async fn recv_within(&mut self, wait: Duration) -> anyhow::Result<Option<Value>> {
        match tokio::time::timeout(wait, self.recv()).await {
            Ok(result) => result.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Drops the connection with a reset instead of a FIN (SO_LINGER 0):
    /// a host that vanished. While its link is down the RST cannot leave,
    /// so the gateway learns nothing.
    pub fn abandon(self) {
        if let Self::Tcp { stream, .. } = &self {
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
        }
        drop(self);
    }
}

/// Takes the first complete JSON value off `buf`, skipping the NULs,
/// newlines and spaces between values.
fn take_value(buf: &mut Vec<u8>) -> anyhow::Result<Option<Value>> {
    let start = buf
        .iter()
        .position(|b| !matches!(b, 0 | b'\n' | b'\r' | b' ' | b'\t'))
        .unwrap_or(buf.len());
    buf.drain(..start);
    if buf.is_empty() {
        return Ok(None);
    }
    let mut values = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    match values.next() {
        Some(Ok(value)) => {
            let used = values.byte_offset();
            buf.drain(..used);
            Ok(Some(value))
        }
        Some(Err(e)) if e.is_eof() => Ok(None),
        Some(Err(e)) => bail!("the server sent bad JSON: {e}"),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_taken_whatever_separates_them() {
        let mut buf = b"{\"a\":1}\n{\"b\":2}{\"c\"".to_vec();
        assert_eq!(
            take_value(&mut buf).ok().flatten(),
            Some(serde_json::json!({"a":1}))
        );
        assert_eq!(
            take_value(&mut buf).ok().flatten(),
            Some(serde_json::json!({"b":2}))
        );
        assert_eq!(take_value(&mut buf).ok().flatten(), None);
        buf.extend_from_slice(b":3}\0");
        assert_eq!(
            take_value(&mut buf).ok().flatten(),
            Some(serde_json::json!({"c":3}))
        );
        assert_eq!(take_value(&mut buf).ok().flatten(), None);
    }
}
