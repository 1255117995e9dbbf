//! gRPC clients of the user, offline and history services, and what their failures
//! mean to a chat client.
//!
//! Every call carries the cluster's internal token (`authorization: Bearer
//! ...`, from `CLUSTERCHAT_INTERNAL_TOKEN`), which the services require on
//! every data method.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use clusterchat_proto::{
    history::v1::history_service_client::HistoryServiceClient,
    offline::v1::offline_service_client::OfflineServiceClient,
    user::v1::{self as user_pb, user_service_client::UserServiceClient},
};
use env_config::Secret;
use tonic::{Code, Status, transport::Channel};
use tracing::Instrument as _;

use crate::protocol::classic::{Failure, errno};

#[derive(Clone)]
pub struct Upstreams {
    pub users: UserServiceClient<Traced>,
    pub offline: OfflineServiceClient<Traced>,
    pub history: HistoryServiceClient<Traced>,
}

/// The largest message either way, as on the servers
/// (`grpc_server::MAX_MESSAGE_BYTES`): replies that could grow past it
/// (a user's groups) are paged instead.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A channel whose every call runs in a client span and carries its trace
/// context (`traceparent`) and the internal token in the request metadata.
#[derive(Clone)]
pub struct Traced {
    inner: Channel,
    /// `Bearer <token>`, marked sensitive.
    authorization: http::HeaderValue,
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
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, self.authorization.clone());
        Box::pin(self.inner.call(request).instrument(span))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid upstream URL {url:?}: {reason}")]
pub struct UpstreamUrlError {
    url: String,
    reason: String,
}

fn traced(url: &str, timeout: Duration, token: &Secret) -> Result<Traced, UpstreamUrlError> {
    let mut authorization = http::HeaderValue::try_from(format!("Bearer {}", token.expose()))
        .map_err(|_| UpstreamUrlError {
            url: url.to_owned(),
            reason: "CLUSTERCHAT_INTERNAL_TOKEN is not a valid header value".into(),
        })?;
    authorization.set_sensitive(true);
    Ok(Traced {
        inner: channel(url, timeout)?,
        authorization,
    })
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
        history_service: &str,
        internal_token: &Secret,
        timeout: Duration,
    ) -> Result<Self, UpstreamUrlError> {
        Ok(Self {
            users: UserServiceClient::new(traced(user_service, timeout, internal_token)?)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            offline: OfflineServiceClient::new(traced(offline_service, timeout, internal_token)?)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            history: HistoryServiceClient::new(traced(history_service, timeout, internal_token)?)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        })
    }
}

/// More pages than this means the service is not advancing; stop.
const MAX_GROUP_PAGES: usize = 10_000;

/// Every group of `user_id` with its members, a page at a time: all of them
/// in one reply can be larger than a gRPC message may be.
pub async fn all_user_groups(
    users: &mut UserServiceClient<Traced>,
    user_id: i64,
) -> Result<Vec<user_pb::Group>, Status> {
    let mut groups = Vec::new();
    let mut page_token = String::new();
    for _ in 0..MAX_GROUP_PAGES {
        let page = users
            .list_user_groups(user_pb::ListUserGroupsRequest {
                user_id,
                page_size: 0,
                page_token,
            })
            .await?
            .into_inner();
        groups.extend(page.groups);
        if page.next_page_token.is_empty() {
            return Ok(groups);
        }
        page_token = page.next_page_token;
    }
    Err(Status::internal(format!(
        "ListUserGroups gave more than {MAX_GROUP_PAGES} pages"
    )))
}

/// The services' refusal of this gateway's credential ("missing bearer
/// token" / "wrong bearer token"): a deployment error, not the user's.
pub fn is_credential_refusal(status: &Status) -> bool {
    status.code() == Code::Unauthenticated
        && (status.message().starts_with("missing bearer token")
            || status.message().starts_with("wrong bearer token"))
}

/// Translates a service's status into what the chat client is told.
///
/// A refusal for a bound (`RESOURCE_EXHAUSTED`: a full group, too many
/// groups, a message too large) reaches the client with the service's
/// message as `errmsg`; one that says "busy: ..." (too many logins hashing at
/// once) is `errno` OVERLOADED, so the client knows to retry.
pub fn failure_from_status(status: &Status, what: &str) -> Failure {
    if is_credential_refusal(status) {
        tracing::error!(
            message = status.message(),
            "{what} refused this gateway's CLUSTERCHAT_INTERNAL_TOKEN"
        );
        return Failure::new(errno::INTERNAL, format!("{what} failed"));
    }
    let errno = match status.code() {
        Code::ResourceExhausted if status.message().starts_with("busy:") => errno::OVERLOADED,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_reach_the_client_with_their_reason() {
        let full = failure_from_status(
            &Status::resource_exhausted("group 7 is full (1000 members)"),
            "the user service",
        );
        assert_eq!(
            (full.errno, full.errmsg.as_str()),
            (errno::TOO_LARGE, "group 7 is full (1000 members)")
        );
        let busy = failure_from_status(
            &Status::resource_exhausted("busy: too many logins at once, retry shortly"),
            "the user service",
        );
        assert_eq!(
            (busy.errno, busy.errmsg.as_str()),
            (
                errno::OVERLOADED,
                "busy: too many logins at once, retry shortly"
            )
        );
    }

    #[test]
    fn a_refused_credential_is_the_gateways_fault_not_the_users() {
        let refused = failure_from_status(
            &Status::unauthenticated("wrong bearer token: ..."),
            "the user service",
        );
        assert_eq!(refused.errno, errno::INTERNAL);
        assert!(!refused.errmsg.contains("token"), "{}", refused.errmsg);
        let bad_password = failure_from_status(
            &Status::unauthenticated("id or password is invalid"),
            "the user service",
        );
        assert_eq!(bad_password.errno, errno::FORBIDDEN);
    }
}
