//! gRPC clients of the user and offline services, and what their failures
//! mean to a chat client.

use std::time::Duration;

use clusterchat_proto::{
    offline::v1::offline_service_client::OfflineServiceClient,
    user::v1::user_service_client::UserServiceClient,
};
use tonic::{Code, Status, transport::Channel};

use crate::protocol::classic::{Failure, errno};

#[derive(Clone)]
pub struct Upstreams {
    pub users: UserServiceClient<Channel>,
    pub offline: OfflineServiceClient<Channel>,
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
            users: UserServiceClient::new(channel(user_service, timeout)?),
            offline: OfflineServiceClient::new(channel(offline_service, timeout)?),
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
