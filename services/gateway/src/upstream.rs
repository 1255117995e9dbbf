//! gRPC clients of the user and offline services, and what their failures
//! mean to a chat client.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use clusterchat_proto::{
    offline::v1::offline_service_client::OfflineServiceClient,
    user::v1::user_service_client::UserServiceClient,
};
use tonic::{Code, Status, transport::Channel};
use tracing::Instrument as _;

use crate::protocol::classic::{Failure, errno};

#[derive(Clone)]
pub struct Upstreams {
    pub users: UserServiceClient<Traced>,
    pub offline: OfflineServiceClient<Traced>,
}

/// A channel whose every call runs in a client span and carries its trace
/// context (`traceparent`) in the request metadata.
#[derive(Clone)]
pub struct Traced {
    inner: Channel,
}

impl tower::Service<http::Request<tonic::body::Body>> for Traced {
    type Response = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Response;
    type Error = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %method,
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.method = %method,
        );
        telemetry::propagation::inject_headers(&span, request.headers_mut());
        Box::pin(self.inner.call(request).instrument(span))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid upstream URL {url:?}: {reason}")]
pub struct UpstreamUrlError {
    url: String,
    reason: String,
}

fn channel(url: &str, timeout: Duration) -> Result<Channel, UpstreamUrlError> {
    let endpoint = Channel::from_shared(url.to_owned()).map_err(|e| UpstreamUrlError {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(endpoint
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

impl Upstreams {
    /// Lazy channels: the gateway starts even when a service is down and
    /// reconnects by itself.
    pub fn new(
        user_service: &str,
        offline_service: &str,
        timeout: Duration,
    ) -> Result<Self, UpstreamUrlError> {
        Ok(Self {
            users: UserServiceClient::new(Traced {
                inner: channel(user_service, timeout)?,
            }),
            offline: OfflineServiceClient::new(Traced {
                inner: channel(offline_service, timeout)?,
            }),
        })
    }
}

/// Translates a service's status into what the chat client is told.
pub fn failure_from_status(status: &Status, what: &str) -> Failure {
    let errno = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => errno::BAD_REQUEST,
        Code::NotFound => errno::NOT_FOUND,
        Code::AlreadyExists => errno::ALREADY_EXISTS,
        Code::FailedPrecondition | Code::PermissionDenied => errno::FORBIDDEN,
        Code::ResourceExhausted => errno::TOO_LARGE,
        Code::Unauthenticated => errno::FORBIDDEN,
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Aborted => {
            return Failure::new(
                errno::UNAVAILABLE,
                format!("{what} is temporarily unavailable; nothing was done, try again"),
            );
        }
        _ => {
            tracing::error!(code = ?status.code(), message = status.message(), "{what} failed");
            return Failure::new(errno::INTERNAL, format!("{what} failed"));
        }
    };
    Failure::new(errno, status.message())
}
