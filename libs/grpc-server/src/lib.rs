//! How every clusterchat gRPC server is served.
//!
//! A service hands over its routes and the names of its gRPC services; this
//! crate adds what each server must have and none should write again:
//! - `grpc.health.v1.Health`, reporting SERVING for each named service while
//!   the server runs and NOT_SERVING once shutdown starts;
//! - server reflection, both `v1` and `v1alpha` (grpcurl 1.8 asks for the
//!   latter), so `grpcurl -plaintext ADDR list` works with no .proto at hand;
//! - a bearer token on every data method ([`auth`]); health and reflection
//!   stay open;
//! - a per-request timeout;
//! - graceful shutdown: in-flight requests finish, new connections are refused;
//! - tracing and metrics per request ([`observe`]), and `/metrics` (Prometheus
//!   text) on a separate HTTP listener when one is given.

pub mod auth;
pub mod observe;

use std::time::Duration;

use env_config::Secret;
use shutdown::Shutdown;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::ServingStatus;

/// The largest gRPC message, request or reply, that a clusterchat server or
/// client encodes or decodes (tonic's decode default, now chosen rather than
/// inherited, and applied to encoding too so that a server fails with a clear
/// status instead of sending what its caller cannot read). The largest
/// legitimate messages are far below it: an offline-service Fetch page
/// (`CLUSTERCHAT_OFFLINE_MAX_PAGE_BYTES`, 1 MiB, plus one message of at most
/// 128 KiB) and a ListUserGroups page (at most 1 MiB by construction). A reply
/// that would not fit is paginated, never raised past this bound.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// A listener bound at start-up, with the address it got (port 0 → a real port).
pub struct Bound {
    pub listener: TcpListener,
    pub addr: std::net::SocketAddr,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub struct BindError {
    pub addr: std::net::SocketAddr,
    #[source]
    pub source: std::io::Error,
}

impl Bound {
    pub async fn bind(addr: std::net::SocketAddr) -> Result<Self, BindError> {
        let error = |source| BindError { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(error)?;
        let addr = listener.local_addr().map_err(error)?;
        Ok(Self { listener, addr })
    }

    /// Binds `addr` if there is one.
    pub async fn bind_optional(
        addr: Option<std::net::SocketAddr>,
    ) -> Result<Option<Self>, BindError> {
        match addr {
            Some(addr) => Self::bind(addr).await.map(Some),
            None => Ok(None),
        }
    }
}

pub struct GrpcServer {
    /// Fully-qualified gRPC service names, e.g. `clusterchat.user.v1.UserService`.
    pub service_names: Vec<&'static str>,
    /// Encoded `FileDescriptorSet`s describing those services.
    pub file_descriptor_sets: Vec<&'static [u8]>,
    pub request_timeout: Duration,
    /// Required as `authorization: Bearer <token>` on every data method
    /// (`CLUSTERCHAT_INTERNAL_TOKEN`).
    pub internal_token: Secret,
}

/// A [`GrpcServer`] with its ports bound, ready to serve.
pub struct BoundServer {
    server: GrpcServer,
    grpc: Bound,
    metrics: Option<Bound>,
}

impl GrpcServer {
    /// Binds the gRPC port and, if given, the `/metrics` port (port 0 picks
    /// a free one; the addresses tell which).
    pub async fn bind(
        self,
        listen: std::net::SocketAddr,
        metrics_listen: Option<std::net::SocketAddr>,
    ) -> Result<BoundServer, BindError> {
        Ok(BoundServer {
            server: self,
            grpc: Bound::bind(listen).await?,
            metrics: Bound::bind_optional(metrics_listen).await?,
        })
    }
}

impl BoundServer {
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.grpc.addr
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr)
    }

    /// Serves `routes` (and `/metrics`) until `shutdown` is requested.
    pub async fn serve(self, routes: Routes, shutdown: Shutdown) -> Result<(), ServeError> {
        if let Some(metrics) = self.metrics {
            tokio::spawn(serve_metrics(metrics.listener, shutdown.clone()));
        }
        let listener = self.grpc.listener;
        let this = self.server;
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in &this.service_names {
            health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }

        let reflection = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            for fds in &this.file_descriptor_sets {
                builder = builder.register_encoded_file_descriptor_set(fds);
            }
            builder
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let routes = routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let names = this.service_names.clone();
        let stopping = async move {
            shutdown.requested().await;
            for name in names {
                health
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
            tracing::info!("grpc server draining");
        };

        // The first layer is the outermost: a request without the token is
        // refused before it is traced or counted per method.
        tonic::transport::Server::builder()
            .timeout(this.request_timeout)
            .layer(auth::RequireBearerLayer::new(this.internal_token))
            .layer(observe::ObserveLayer)
            .add_routes(routes)
            // TCP_NODELAY: a reply written in several pieces must not wait
            // for the client's delayed ACK (Nagle): GetHistory of 50 messages
            // took ~44 ms without it, under 1 ms with it.
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                stopping,
            )
            .await?;
        Ok(())
    }
}

/// `GET /metrics`: this process's Prometheus registry.
pub async fn serve_metrics(listener: TcpListener, shutdown: Shutdown) {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(http::header::CONTENT_TYPE, telemetry::metrics::CONTENT_TYPE)],
                telemetry::metrics::encode(),
            )
        }),
    );
    let serve = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.requested().await });
    if let Err(e) = serve.await {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}
