//! Group memberships, from the user service (`ListMemberships`), kept for a
//! short while per user. Only requests ask for them; the ingest never does.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clusterchat_proto::user::v1::{self as pb, user_service_client::UserServiceClient};
use env_config::Secret;
use tonic::{
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use crate::{domain::UserId, error::HistoryError};

/// Users whose memberships are kept at most; the cache starts over past it.
const MAX_CACHED_USERS: usize = 100_000;

/// A user's groups: group id → join time in microseconds since the epoch.
pub type Groups = Arc<HashMap<i64, i64>>;

#[derive(Clone)]
pub struct Memberships {
    client: UserServiceClient<InterceptedService<Channel, Outgoing>>,
    ttl: Duration,
    cache: Arc<Mutex<HashMap<UserId, (Instant, Groups)>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid user service URL {url:?}: {reason}")]
pub struct UserServiceUrlError {
    url: String,
    reason: String,
}

impl Memberships {
    /// A lazy channel: the service starts while the user service is down.
    pub fn new(
        url: &str,
        token: &Secret,
        timeout: Duration,
        ttl: Duration,
    ) -> Result<Self, UserServiceUrlError> {
        let invalid = |reason: String| UserServiceUrlError {
            url: url.to_owned(),
            reason,
        };
        let mut authorization = format!("Bearer {}", token.expose())
            .parse::<tonic::metadata::MetadataValue<_>>()
            .map_err(|_| {
                invalid("CLUSTERCHAT_INTERNAL_TOKEN is not a valid header value".into())
            })?;
        authorization.set_sensitive(true);
        let channel = Channel::from_shared(url.to_owned())
            .map_err(|e| invalid(e.to_string()))?
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            client: UserServiceClient::with_interceptor(channel, Outgoing { authorization })
                .max_decoding_message_size(grpc_server::MAX_MESSAGE_BYTES),
            ttl,
            cache: Arc::default(),
        })
    }

    /// The groups `user` is in, with their join times.
    pub async fn of(&self, user: UserId) -> Result<Groups, HistoryError> {
        if let Some(groups) = self.cached(user) {
            return Ok(groups);
        }
        self.fetch(user).await
    }

    /// [`Self::of`], read again from the user service when the cached list
    /// lacks `group`: a group created or joined a moment ago is not yet in
    /// a list kept from before.
    pub async fn of_with(&self, user: UserId, group: i64) -> Result<Groups, HistoryError> {
        match self.cached(user) {
            Some(groups) if groups.contains_key(&group) => Ok(groups),
            _ => self.fetch(user).await,
        }
    }

    async fn fetch(&self, user: UserId) -> Result<Groups, HistoryError> {
        let reply = self
            .client
            .clone()
            .list_memberships(pb::ListMembershipsRequest {
                user_id: user.get(),
            })
            .await
            .map_err(HistoryError::MembershipUnknown)?;
        let groups: Groups = Arc::new(
            reply
                .into_inner()
                .memberships
                .into_iter()
                .map(|m| (m.group_id, m.joined_at_unix_ms.saturating_mul(1000)))
                .collect(),
        );
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_USERS {
            cache.clear();
        }
        cache.insert(user, (Instant::now(), groups.clone()));
        Ok(groups)
    }

    fn cached(&self, user: UserId) -> Option<Groups> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (at, groups) = cache.get(&user)?;
        (at.elapsed() < self.ttl).then(|| groups.clone())
    }
}

/// Adds the internal token and the caller's trace context to each call.
#[derive(Clone)]
pub struct Outgoing {
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Interceptor for Outgoing {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        metadata.insert("authorization", self.authorization.clone());
        let traceparent = telemetry::propagation::traceparent(&tracing::Span::current());
        if !traceparent.is_empty()
            && let Ok(value) = traceparent.parse()
        {
            metadata.insert("traceparent", value);
        }
        Ok(request)
    }
}
