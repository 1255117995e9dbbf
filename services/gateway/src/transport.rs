//! The two ways in: classic TCP (JSON values in a byte stream, replies each
//! followed by `\n`) and WebSocket (one JSON message per text frame), plus
//! `/healthz` on the HTTP port.
//!
//! Both hold a permit of the node's connection limit for as long as the
//! connection lives; a client over the limit is told so and closed.
//!
//! Classic TCP clients parse each `read()` as one JSON value, so until a
//! connection uses the additions every frame is its own write. TCP sockets
//! get keepalive probes, so a peer that vanished without closing is noticed.

use std::{collections::VecDeque, io, sync::Arc};

use axum::{
    Router,
    extract::{
        State, WebSocketUpgrade,
        ws::{Message, WebSocket},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use futures::{SinkExt as _, StreamExt as _, stream::SplitSink, stream::SplitStream};
use tokio::{
    io::AsyncWriteExt as _,
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::Semaphore,
};

use crate::{
    metrics::{label, metrics},
    node::Node,
    protocol::{
        classic::{self, Failure, errno},
        framing::{Frame, FrameError, JsonSplitter},
    },
    session::{self, FrameSource, Transport},
    writer::FrameSink,
};

struct TcpSource {
    read: OwnedReadHalf,
    splitter: JsonSplitter,
    ready: VecDeque<Frame>,
}

impl FrameSource for TcpSource {
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Some(frame);
            }
            // Wait for readiness first and read into a buffer that lives
            // only for the read: an idle connection holds no read buffer.
            if self.read.readable().await.is_err() {
                return None;
            }
            let mut buf = [0u8; 8192];
            match self.read.try_read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => {
                    let mut frames = Vec::new();
                    self.splitter.push(&buf[..n], &mut frames);
                    self.ready.extend(frames);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
    }
}

/// For a client that parses a stream (it used the additions), frames are
/// gathered in a buffer that exists only while there is something to write:
/// written and released at every flush (the writer flushes whenever its
/// queues are empty), so an idle connection holds no write buffer. For a
/// classic client, each frame is one write.
struct TcpSink {
    write: OwnedWriteHalf,
    pending: Vec<u8>,
    batching: bool,
}

/// Past this, frames are written without waiting for the flush.
const WRITE_BATCH: usize = 64 * 1024;

impl FrameSink for TcpSink {
    async fn send(&mut self, mut frame: Vec<u8>) -> io::Result<()> {
        if !self.batching {
            frame.push(b'\n');
            return self.write.write_all(&frame).await;
        }
        self.pending.extend_from_slice(&frame);
        self.pending.push(b'\n');
        if self.pending.len() >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    fn allow_batching(&mut self) {
        self.batching = true;
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.write.write_all(&self.pending).await?;
            self.pending = Vec::new();
        }
        Ok(())
    }
}

/// Accepts classic TCP clients until shutdown.
pub async fn serve_tcp(node: Arc<Node>, listener: TcpListener, permits: Arc<Semaphore>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = node.shutdown.requested() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse_tcp(stream, node.config.limits.max_connections));
            continue;
        };
        let _ = stream.set_nodelay(true);
        set_keepalive(&stream, node.config.tcp_keepalive);
        let node2 = node.clone();
        node.tasks.spawn(async move {
            let (read, write) = stream.into_split();
            let source = TcpSource {
                read,
                splitter: JsonSplitter::new(node2.config.limits.max_frame_bytes),
                ready: VecDeque::new(),
            };
            let sink = TcpSink {
                write,
                pending: Vec::new(),
                batching: false,
            };
            tracing::debug!(%peer, "tcp connection");
            let open = metrics()
                .connections
                .get_or_create(&label("transport", "tcp"))
                .clone();
            open.inc();
            session::run(node2, source, sink, Transport::Tcp).await;
            open.dec();
            drop(permit);
        });
    }
}

/// Keepalive probes after `idle`, then 3 probes `idle / 3` apart: a peer
/// gone without closing is noticed after about twice `idle`.
fn set_keepalive(stream: &TcpStream, idle: std::time::Duration) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(idle / 3)
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set tcp keepalive");
    }
}

async fn refuse_tcp(mut stream: TcpStream, max: usize) {
    let failure = Failure::new(
        errno::OVERLOADED,
        format!("this node is full ({max} connections); try again later"),
    );
    let mut frame = classic::reply_error(&failure, None);
    frame.push(b'\n');
    let _ = stream.write_all(&frame).await;
    let _ = stream.shutdown().await;
}

struct WsSource {
    stream: SplitStream<WebSocket>,
    max: usize,
}

impl FrameSource for WsSource {
    async fn next_frame(&mut self) -> Option<Frame> {
        match self.stream.next().await? {
            Ok(Message::Text(text)) if text.len() > self.max => {
                Some(Frame::Invalid(FrameError::TooLarge { max: self.max }))
            }
            Ok(Message::Text(text)) => Some(Frame::Value(text.as_bytes().to_vec())),
            Ok(Message::Binary(_)) => Some(Frame::Invalid(FrameError::NotAnObject)),
            Ok(Message::Close(_)) | Err(_) => None,
            Ok(Message::Ping(_) | Message::Pong(_)) => Some(Frame::Heartbeat),
        }
    }
}

struct WsSink(SplitSink<WebSocket, Message>);

impl FrameSink for WsSink {
    async fn send(&mut self, frame: Vec<u8>) -> io::Result<()> {
        let text = String::from_utf8(frame)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        self.0
            .feed(Message::Text(text.into()))
            .await
            .map_err(io::Error::other)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.0.flush().await.map_err(io::Error::other)
    }

    async fn heartbeat(&mut self) -> io::Result<()> {
        self.0
            .send(Message::Ping(Vec::new().into()))
            .await
            .map_err(io::Error::other)
    }
}

#[derive(Clone)]
struct HttpState {
    node: Arc<Node>,
    permits: Arc<Semaphore>,
}

/// The HTTP port: `/ws` (WebSocket chat) and `/healthz`.
pub fn http_router(node: Arc<Node>, permits: Arc<Semaphore>) -> Router {
    Router::new()
        .route("/ws", get(websocket))
        .route("/healthz", get(healthz))
        .route(
            "/metrics",
            get(|| async {
                (
                    [("content-type", telemetry::metrics::CONTENT_TYPE)],
                    telemetry::metrics::encode(),
                )
            }),
        )
        .with_state(HttpState { node, permits })
}

async fn websocket(State(state): State<HttpState>, upgrade: WebSocketUpgrade) -> Response {
    let Ok(permit) = state.permits.clone().try_acquire_owned() else {
        let max = state.node.config.limits.max_connections;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this node is full ({max} connections); try again later"),
        )
            .into_response();
    };
    let max = state.node.config.limits.max_frame_bytes;
    // Frames up to twice the request limit are read and answered with a
    // clear error; beyond that the WebSocket layer closes the connection.
    upgrade
        .max_message_size(max.saturating_mul(2))
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            let node = state.node.clone();
            let tasks = node.tasks.clone();
            tasks
                .spawn(async move {
                    let open = metrics()
                        .connections
                        .get_or_create(&label("transport", "ws"))
                        .clone();
                    open.inc();
                    session::run(
                        node,
                        WsSource { stream, max },
                        WsSink(sink),
                        Transport::WebSocket,
                    )
                    .await;
                    open.dec();
                    drop(permit);
                })
                .await
                .ok();
        })
}

async fn healthz(State(state): State<HttpState>) -> Response {
    let node = &state.node;
    let body = serde_json::json!({
        "node": node.config.node_id,
        "sessions": node.registry.len(),
        "redis": node.cluster.is_subscribed(),
        "draining": node.shutdown.is_requested(),
    })
    .to_string();
    let status = if node.cluster.is_subscribed() && !node.shutdown.is_requested() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [("content-type", "application/json")], body).into_response()
}
