//! HTTP: the public port (WebSocket chat at `/ws`, one JSON message per
//! text frame; the web client's files at `/`) and the admin port
//! (`/healthz`, `/metrics`). A WebSocket handshake (headers included) must
//! be done within the handshake timeout.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
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
use futures::{
    FutureExt as _, SinkExt as _, StreamExt as _, stream::SplitSink, stream::SplitStream,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tower::ServiceExt as _;

use crate::{
    delivery::writer::FrameSink,
    metrics::{label, metrics},
    node::{
        Node,
        admission::{AnonymousSlot, ClientAddress},
    },
    protocol::{framing::Frame, ws},
    session::{self, FrameSource, Transport},
};

use super::{Accepted, Refusal, accept, client_address, node_full, web};

struct WsSource {
    stream: SplitStream<WebSocket>,
    max: usize,
    /// The stream ended while `try_next_frame` looked ahead.
    ended: bool,
}

impl WsSource {
    fn frame(&mut self, message: Option<Result<Message, axum::Error>>) -> Option<Frame> {
        match message {
            Some(Ok(Message::Text(text))) => Some(ws::text_frame(text.as_str(), self.max)),
            Some(Ok(Message::Binary(_))) => Some(ws::binary_frame()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Some(Frame::Heartbeat),
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                self.ended = true;
                None
            }
        }
    }
}

impl FrameSource for WsSource {
    async fn next_frame(&mut self) -> Option<Frame> {
        if self.ended {
            return None;
        }
        let message = self.stream.next().await;
        self.frame(message)
    }

    fn try_next_frame(&mut self) -> Option<Frame> {
        if self.ended {
            return None;
        }
        let message = self.stream.next().now_or_never()?;
        self.frame(message)
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
        .route("/metrics", get(metrics_text))
        .with_state(HttpState { node, web: None })
}

/// The metrics, with `gateway_healthy` as `/healthz` would answer now.
async fn metrics_text(State(state): State<HttpState>) -> Response {
    let healthy = is_healthy(&state.node);
    crate::metrics::metrics().healthy.set(i64::from(healthy));
    (
        [("content-type", telemetry::metrics::CONTENT_TYPE)],
        telemetry::metrics::encode(),
    )
        .into_response()
}

/// Green: subscribed to Redis and not draining.
fn is_healthy(node: &Node) -> bool {
    node.redis.is_subscribed() && !node.shutdown.is_requested()
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
                        WsSource {
                            stream,
                            max,
                            ended: false,
                        },
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
    let status = if is_healthy(node) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [("content-type", "application/json")], body).into_response()
}
