//! Internal services are not open to anyone who can reach their port: every
//! data method needs `authorization: Bearer <token>` in the request metadata,
//! where the token is the cluster's shared secret (`CLUSTERCHAT_INTERNAL_TOKEN`).
//!
//! Health (`grpc.health.v1.Health`) and server reflection (`v1` and
//! `v1alpha`) stay open: they reveal nothing a caller could abuse, and load
//! balancers, `deploy/dev/stack.sh` and an operator's `grpcurl list` rely on
//! them working without a credential.
//!
//! A refusal is `UNAUTHENTICATED` with a message that says what was wrong,
//! answered here without reaching the service (and without creating a
//! per-method metric series for whatever path an anonymous caller invents:
//! refusals are counted in `grpc_server_unauthenticated` by reason only).

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use env_config::Secret;
use telemetry::metrics::{Counter, Family, register};
use tonic::Status;

/// Paths served without a credential (prefixes of `/package.Service/Method`).
const OPEN_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

pub const MISSING: &str = "missing bearer token: internal services need the metadata \
                           `authorization: Bearer <CLUSTERCHAT_INTERNAL_TOKEN>`";
pub const WRONG: &str = "wrong bearer token: it is not this cluster's CLUSTERCHAT_INTERNAL_TOKEN";

fn refusals() -> &'static Family<Vec<(&'static str, &'static str)>, Counter> {
    static REFUSALS: OnceLock<Family<Vec<(&'static str, &'static str)>, Counter>> = OnceLock::new();
    REFUSALS.get_or_init(|| {
        let family = Family::default();
        register(
            "grpc_server_unauthenticated",
            "gRPC requests refused for a missing or wrong bearer token, by reason",
            family.clone(),
        );
        family
    })
}

/// Refuses every request to a data method that lacks the right bearer token.
#[derive(Clone)]
pub struct RequireBearerLayer {
    token: Arc<Secret>,
}

impl RequireBearerLayer {
    pub fn new(token: Secret) -> Self {
        Self {
            token: Arc::new(token),
        }
    }
}

impl<S> tower::Layer<S> for RequireBearerLayer {
    type Service = RequireBearer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        refusals();
        RequireBearer {
            inner,
            token: self.token.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequireBearer<S> {
    inner: S,
    token: Arc<Secret>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RequireBearer<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match check(&request, self.token.expose()) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(refusal) => {
                refusals()
                    .get_or_create(&vec![("reason", refusal.reason())])
                    .inc();
                tracing::debug!(
                    path = request.uri().path(),
                    reason = refusal.reason(),
                    "grpc request refused"
                );
                // gRPC errors travel as HTTP 200 with grpc-status/grpc-message
                // headers (a trailers-only response), which `into_http` builds.
                let response = Status::unauthenticated(refusal.message()).into_http::<RB>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Missing,
    Wrong,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Wrong => "wrong",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::Missing => MISSING,
            Refusal::Wrong => WRONG,
        }
    }
}

fn check<B>(request: &http::Request<B>, token: &str) -> Result<(), Refusal> {
    let path = request.uri().path();
    if OPEN_PREFIXES.iter().any(|open| path.starts_with(open)) {
        return Ok(());
    }
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|value| bearer(value.as_bytes()))
        .ok_or(Refusal::Missing)?;
    if constant_time_eq(presented, token.as_bytes()) {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}

/// The token of `Bearer <token>` (the scheme is case-insensitive, RFC 7235).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = value[SCHEME.len()..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares without an early exit, so the time taken does not tell a caller
/// how many leading bytes of a guess were right. (The length may show; the
/// token's length is no secret worth keeping: it is fixed by the generator.)
#[inline(never)]
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(presented.len() != expected.len());
    for (i, &byte) in presented.iter().enumerate() {
        let other = expected
            .get(i % expected.len().max(1))
            .copied()
            .unwrap_or(0);
        difference |= byte ^ other;
    }
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, authorization: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(format!("http://h{path}"));
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        builder.body(()).expect("request")
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    const DATA: &str = "/clusterchat.user.v1.UserService/Login";

    #[test]
    fn data_methods_need_the_right_token() {
        assert_eq!(check(&request(DATA, None), TOKEN), Err(Refusal::Missing));
        assert_eq!(
            check(&request(DATA, Some("Basic abc")), TOKEN),
            Err(Refusal::Missing)
        );
        assert_eq!(
            check(&request(DATA, Some("Bearer ")), TOKEN),
            Err(Refusal::Missing)
        );
        assert_eq!(
            check(&request(DATA, Some("Bearer nope")), TOKEN),
            Err(Refusal::Wrong)
        );
        let prefix = &TOKEN[..TOKEN.len() - 1];
        assert_eq!(
            check(&request(DATA, Some(&format!("Bearer {prefix}"))), TOKEN),
            Err(Refusal::Wrong)
        );
        assert_eq!(
            check(&request(DATA, Some(&format!("Bearer {TOKEN}x"))), TOKEN),
            Err(Refusal::Wrong)
        );
        assert_eq!(
            check(&request(DATA, Some(&format!("Bearer {TOKEN}"))), TOKEN),
            Ok(())
        );
        assert_eq!(
            check(&request(DATA, Some(&format!("bearer {TOKEN}"))), TOKEN),
            Ok(())
        );
    }

    #[test]
    fn health_and_reflection_are_open() {
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(check(&request(path, None), TOKEN), Ok(()), "{path}");
        }
        // Only those services: a look-alike package is not open.
        assert_eq!(
            check(&request("/grpc.health.v1.HealthX/Check", None), TOKEN),
            Err(Refusal::Missing)
        );
    }

    #[test]
    fn refusal_is_a_grpc_status_in_http_200() {
        let response = Status::unauthenticated(MISSING).into_http::<tonic::body::Body>();
        assert_eq!(response.status(), http::StatusCode::OK);
        let status = Status::from_header_map(response.headers()).expect("grpc-status");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().starts_with("missing bearer token"));
    }
}
