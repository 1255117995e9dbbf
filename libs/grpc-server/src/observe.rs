//! A tower layer for every gRPC server: each request runs in a server span
//! that continues the caller's trace (W3C `traceparent` in the metadata),
//! and is counted and timed per method and status code.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use telemetry::metrics::{Counter, Family, Histogram, latency_histogram, register};
use tracing::Instrument as _;

type Labels = Vec<(&'static str, String)>;

struct GrpcMetrics {
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram>,
}

fn metrics() -> &'static GrpcMetrics {
    static METRICS: OnceLock<GrpcMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = GrpcMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        };
        register(
            "grpc_server_requests",
            "gRPC requests handled, by method and status code",
            m.requests.clone(),
        );
        register(
            "grpc_server_request_duration_seconds",
            "gRPC request latency, by method",
            m.duration.clone(),
        );
        m
    })
}

#[derive(Clone, Default)]
pub struct ObserveLayer;

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        metrics();
        Observe { inner }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path: Arc<str> = request.uri().path().trim_start_matches('/').into();
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %path,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        telemetry::propagation::set_parent_from_headers(&span, request.headers());
        let started = Instant::now();
        let response = self.inner.call(request);
        let in_span = span.clone();
        Box::pin(
            async move {
                let result = response.await;
                // A failed unary call is a trailers-only response: its status
                // is in the headers. No grpc-status header means OK.
                let code = match &result {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("0")
                        .to_owned(),
                    Err(_) => "transport".to_owned(),
                };
                in_span.record("rpc.grpc.status_code", code.as_str());
                let m = metrics();
                m.requests
                    .get_or_create(&vec![("method", path.to_string()), ("code", code)])
                    .inc();
                m.duration
                    .get_or_create(&vec![("method", path.to_string())])
                    .observe(started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}
