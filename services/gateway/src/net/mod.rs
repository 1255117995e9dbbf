//! The two ways in: classic TCP (JSON values in a byte stream, replies each
//! followed by `\n`) and WebSocket (one JSON message per text frame), and
//! the admin port (`/healthz`, `/metrics`).
//!
//! Both hold a permit of the node's connection limit from accept for as
//! long as the connection lives; a client over the limit is told so and
//! closed. From a trusted proxy, a PROXY protocol header names the client.
//!
//! Budgets: a TCP request that has started must be whole within the frame
//! deadline, and all TCP connections together hold at most the partial
//! budget in unfinished requests. A WebSocket handshake (headers included)
//! must be done within the handshake timeout.
//!
//! Classic TCP clients parse each `read()` as one JSON value, so until a
//! connection uses the additions every frame is its own write. TCP sockets
//! get keepalive probes, so a peer that vanished without closing is noticed.

pub mod proxy_header;
pub mod web;

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Extension, Router,
    extract::{
        State, WebSocketUpgrade,
        ws::{Message, WebSocket},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use futures::{SinkExt as _, StreamExt as _, stream::SplitSink, stream::SplitStream};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::AsyncWriteExt as _,
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tower::ServiceExt as _;

use crate::{
    delivery::writer::FrameSink,
    metrics::{label, metrics},
    net::proxy_header::Outcome,
    node::{
        Node,
        admission::{AnonymousSlot, ClientAddress},
    },
    protocol::{
        classic::{self, Failure, errno},
        framing::{Frame, JsonSplitter},
        ws,
    },
    session::{self, FrameSource, Transport},
};

struct TcpSource {
    node: Arc<Node>,
    read: OwnedReadHalf,
    splitter: JsonSplitter,
    ready: VecDeque<Frame>,
    /// Charged to the node's partial budget for the splitter's buffer.
    charged: usize,
    /// When the unfinished request began to arrive.
    partial_since: Option<Instant>,
    /// Why the source ended, when the client should be told.
    ended: Option<Failure>,
}

impl TcpSource {
    fn new(node: Arc<Node>, read: OwnedReadHalf) -> Self {
        let max = node.config.limits.max_frame_bytes;
        Self {
            node,
            read,
            splitter: JsonSplitter::new(max),
            ready: VecDeque::new(),
            charged: 0,
            partial_since: None,
            ended: None,
        }
    }

    fn end(&mut self, failure: Failure) -> Option<Frame> {
        self.ended = Some(failure);
        None
    }
}

impl Drop for TcpSource {
    fn drop(&mut self) {
        self.node.admission.partial.recharge(&mut self.charged, 0);
    }
}

impl FrameSource for TcpSource {
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Some(frame);
            }
            // Wait for readiness first and read into a buffer that lives
            // only for the read: an idle connection holds no read buffer.
            if self.splitter.has_partial() {
                let deadline = self.node.config.frame_deadline;
                let since = *self.partial_since.get_or_insert_with(Instant::now);
                match tokio::time::timeout_at(since + deadline, self.read.readable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return None,
                    Err(_) => {
                        metrics()
                            .refused
                            .get_or_create(&label("why", "frame_deadline"))
                            .inc();
                        return self.end(Failure::bad_request(format!(
                            "a request was still unfinished {} ms after it began; closing",
                            deadline.as_millis()
                        )));
                    }
                }
            } else {
                self.partial_since = None;
                if self.read.readable().await.is_err() {
                    return None;
                }
            }
            let mut buf = [0u8; 8192];
            match self.read.try_read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => {
                    let mut frames = Vec::new();
                    self.splitter.push(&buf[..n], &mut frames);
                    if !frames.is_empty() {
                        // A request ended: the deadline is the next one's,
                        // counted from now (it began within this read).
                        self.partial_since = None;
                    }
                    self.ready.extend(frames);
                    let held = self.splitter.buffered();
                    if !self
                        .node
                        .admission
                        .partial
                        .recharge(&mut self.charged, held)
                    {
                        metrics()
                            .refused
                            .get_or_create(&label("why", "partial_budget"))
                            .inc();
                        let max = self.node.config.limits.partial_budget_bytes;
                        return self.end(Failure::new(
                            errno::OVERLOADED,
                            format!(
                                "this node holds its limit of unfinished requests ({max} bytes); closing, try again later"
                            ),
                        ));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
    }

    fn ended_because(&mut self) -> Option<Failure> {
        self.ended.take()
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

/// What [`accept`] got.
enum Accepted {
    /// A connection within the node's limit, set up (no delay, keepalive).
    Admitted(TcpStream, SocketAddr, OwnedSemaphorePermit),
    /// One over the limit: tell it so and close it.
    Full(TcpStream),
}

/// The next connection on `listener`, with a permit of the node's
/// connection limit if one is free; `None` once shutdown is requested.
async fn accept(node: &Node, listener: &TcpListener, permits: &Arc<Semaphore>) -> Option<Accepted> {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = node.shutdown.requested() => return None,
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
            return Some(Accepted::Full(stream));
        };
        let _ = stream.set_nodelay(true);
        set_keepalive(&stream, node.config.tcp_keepalive);
        return Some(Accepted::Admitted(stream, peer, permit));
    }
}

fn node_full(node: &Node) -> String {
    let max = node.config.limits.max_connections;
    format!("this node is full ({max} connections); try again later")
}

/// Accepts classic TCP clients until shutdown.
pub async fn serve_tcp(node: Arc<Node>, listener: TcpListener, permits: Arc<Semaphore>) {
    while let Some(accepted) = accept(&node, &listener, &permits).await {
        let (mut stream, peer, permit) = match accepted {
            Accepted::Admitted(stream, peer, permit) => (stream, peer, permit),
            Accepted::Full(stream) => {
                let failure = Failure::new(errno::OVERLOADED, node_full(&node));
                tokio::spawn(refuse_tcp(stream, failure));
                continue;
            }
        };
        let node2 = node.clone();
        node.tasks.spawn(async move {
            // Before login anyway: the first bytes may wait as long as a login may.
            let wait = node2.config.login_deadline;
            let client = match client_address(&node2, &mut stream, peer, wait).await {
                Ok(client) => client,
                Err(refusal) => {
                    let failure = match refusal {
                        Refusal::Gone => return,
                        Refusal::Silent => {
                            metrics()
                                .refused
                                .get_or_create(&label("why", "login_deadline"))
                                .inc();
                            Failure::new(
                                errno::NOT_LOGGED_IN,
                                format!("no login within {} s; closing", wait.as_secs_f64()),
                            )
                        }
                        Refusal::Invalid(failure) => failure,
                    };
                    return refuse_tcp(stream, failure).await;
                }
            };
            let (read, write) = stream.into_split();
            let source = TcpSource::new(node2.clone(), read);
            let sink = TcpSink {
                write,
                pending: Vec::new(),
                batching: false,
            };
            tracing::debug!(%client, %peer, "tcp connection");
            let open = metrics()
                .connections
                .get_or_create(&label("transport", "tcp"))
                .clone();
            open.inc();
            session::run(node2, source, sink, Transport::Tcp, client).await;
            open.dec();
            drop(permit);
        });
    }
}

/// Why a connection ends before its first request.
enum Refusal {
    /// Closed or failed.
    Gone,
    /// Sent nothing within the wait.
    Silent,
    /// A PROXY header that does not parse: say why.
    Invalid(Failure),
}

/// The client behind `peer`: `peer` itself, or from a trusted proxy the
/// client its PROXY header names (waiting at most `wait` for its first bytes).
async fn client_address(
    node: &Node,
    stream: &mut TcpStream,
    peer: SocketAddr,
    wait: Duration,
) -> Result<SocketAddr, Refusal> {
    if !node.config.trusted_proxies.contains(peer.ip()) {
        return Ok(peer);
    }
    let rest_within = node.config.handshake_timeout;
    match tokio::time::timeout(wait, proxy_header::read_header(stream, rest_within)).await {
        Ok(Ok(Ok(Outcome::Header(client)))) => Ok(client.unwrap_or(peer)),
        Ok(Ok(Ok(Outcome::None))) => Ok(peer),
        Ok(Ok(Ok(Outcome::Closed))) | Ok(Err(_)) => Err(Refusal::Gone),
        Ok(Ok(Err(invalid))) => {
            tracing::warn!(%peer, error = %invalid, "refused a connection");
            Err(Refusal::Invalid(Failure::bad_request(invalid.to_string())))
        }
        Err(_) => Err(Refusal::Silent),
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

/// Tells a classic client why it is refused, and closes.
async fn refuse_tcp(mut stream: TcpStream, failure: Failure) {
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
            Ok(Message::Text(text)) => Some(ws::text_frame(text.as_str(), self.max)),
            Ok(Message::Binary(_)) => Some(ws::binary_frame()),
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
    /// The web client's files, served at `/`.
    web: Option<Arc<web::WebFiles>>,
}

/// What the accept loop knows of an HTTP connection, for its handler.
#[derive(Clone)]
struct Connection {
    client: SocketAddr,
    /// The connection's permit, taken by the WebSocket it becomes.
    permit: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

/// The public HTTP port: `/ws` (WebSocket chat) and the web client's files.
fn public_router(node: Arc<Node>, web: Option<Arc<web::WebFiles>>) -> Router {
    Router::new()
        .route("/ws", get(websocket))
        .fallback(get(web_file))
        .with_state(HttpState { node, web })
}

async fn web_file(State(state): State<HttpState>, uri: axum::http::Uri) -> Response {
    match &state.web {
        Some(files) => files.respond(&uri),
        None if uri.path() == "/" => web::not_built(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

/// The admin port: `/healthz` and `/metrics`, for operators and probes.
pub fn admin_router(node: Arc<Node>) -> Router {
    Router::new()
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
        .with_state(HttpState { node, web: None })
}

/// Accepts WebSocket clients until shutdown. Each connection takes a permit
/// at accept, may spend at most the handshake timeout on its PROXY header,
/// its request headers and the upgrade, and serves one request.
pub async fn serve_http(
    node: Arc<Node>,
    listener: TcpListener,
    permits: Arc<Semaphore>,
    web: Option<Arc<web::WebFiles>>,
) {
    let router = public_router(node.clone(), web);
    while let Some(accepted) = accept(&node, &listener, &permits).await {
        let (mut stream, peer, permit) = match accepted {
            Accepted::Admitted(stream, peer, permit) => (stream, peer, permit),
            Accepted::Full(stream) => {
                let why = node_full(&node);
                tokio::spawn(async move {
                    refuse_http_with(stream, "503 Service Unavailable", &why).await;
                });
                continue;
            }
        };
        let node = node.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let budget = node.config.handshake_timeout;
            let deadline = Instant::now() + budget;
            let client = match client_address(&node, &mut stream, peer, budget).await {
                Ok(client) => client,
                Err(Refusal::Invalid(failure)) => {
                    metrics()
                        .refused
                        .get_or_create(&label("why", "invalid_proxy_header"))
                        .inc();
                    return refuse_http_with(stream, "400 Bad Request", &failure.errmsg).await;
                }
                Err(Refusal::Gone | Refusal::Silent) => {
                    metrics()
                        .refused
                        .get_or_create(&label("why", "handshake_timeout"))
                        .inc();
                    return;
                }
            };
            // A handshake counts among its address's connections that have
            // not logged in (the session counts itself once it runs).
            let Some(_anonymous) = AnonymousSlot::take(&node.admission, client.ip()) else {
                metrics()
                    .refused
                    .get_or_create(&label("why", "anonymous_per_address"))
                    .inc();
                let why = format!(
                    "{} has {} connections here that have not logged in",
                    ClientAddress::of(client.ip()),
                    node.config.limits.anonymous_per_address
                );
                return refuse_http_with(stream, "503 Service Unavailable", &why).await;
            };
            let connection = Connection {
                client,
                permit: Arc::new(Mutex::new(Some(permit))),
            };
            let service = hyper::service::service_fn(move |mut request| {
                request.extensions_mut().insert(connection.clone());
                router.clone().oneshot(request)
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(budget)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            match tokio::time::timeout_at(deadline, served).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%client, error = %e, "http connection failed"),
                Err(_) => {
                    metrics()
                        .refused
                        .get_or_create(&label("why", "handshake_timeout"))
                        .inc();
                    tracing::debug!(%client, "websocket handshake timed out");
                }
            }
        });
    }
}

/// Answers `status` with `why` as the body and closes.
async fn refuse_http_with(mut stream: TcpStream, status: &str, why: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{why}\n",
        why.len() + 1
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn websocket(
    State(state): State<HttpState>,
    Extension(connection): Extension<Connection>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let permit = connection
        .permit
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(permit) = permit else {
        return (StatusCode::BAD_REQUEST, "one WebSocket per connection\n").into_response();
    };
    let client = connection.client;
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
                        client,
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
        "redis": node.redis.is_subscribed(),
        "draining": node.shutdown.is_requested(),
    })
    .to_string();
    let status = if node.redis.is_subscribed() && !node.shutdown.is_requested() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [("content-type", "application/json")], body).into_response()
}
