//! One gateway node: the state every session shares, and how a chat message
//! finds its receiver.
//!
//! A message for user U goes, in this order, to:
//! 1. U's session on this node, if U is here (a `try_send` into its queue);
//! 2. else Redis: PUBLISH on U's channel; the node holding U delivers it;
//! 3. else (nobody subscribed, Redis down, or U's queue is full) the offline
//!    service, which hands it over at U's next login.
//!
//! **Architecture Invariant:** no database or gRPC call on the path of a chat
//! between online users. Whether a user or group exists and who is in a
//! group come from caches filled on first use and at login, and kept fresh
//! by invalidations over Redis.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use clusterchat_proto::{offline::v1 as offline_pb, user::v1 as user_pb};
use shutdown::Shutdown;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::{
    cluster::{BusEvent, Cluster},
    config::Config,
    metrics::{label, metrics},
    protocol::classic::{Failure, errno},
    registry::{Delivery, Handoff, Registry},
    upstream::{Upstreams, failure_from_status},
};

pub struct Node {
    pub config: Config,
    pub registry: Registry,
    pub cluster: Cluster,
    pub upstreams: Upstreams,
    pub shutdown: Shutdown,
    /// Every session and background hand-over, so shutdown can wait for them.
    pub tasks: TaskTracker,
    groups: GroupCache,
    known_users: Mutex<HashSet<i64>>,
    next_id: AtomicU64,
}

/// Where a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Local,
    Remote,
    Offline,
}

impl Node {
    pub fn new(config: Config, cluster: Cluster, upstreams: Upstreams, shutdown: Shutdown) -> Self {
        let groups = GroupCache::new(config.group_cache_ttl);
        Self {
            config,
            registry: Registry::default(),
            cluster,
            upstreams,
            shutdown,
            tasks: TaskTracker::new(),
            groups,
            known_users: Mutex::default(),
            next_id: AtomicU64::new(1),
        }
    }

    /// A number unique within this node's life (connections, message ids).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn remember_users(&self, users: impl IntoIterator<Item = i64>) {
        let mut known = self.known_users.lock().unwrap_or_else(|p| p.into_inner());
        known.extend(users);
    }

    /// Whether the user exists: from the cache, else one look-up (users are
    /// never deleted, so a positive answer is kept for good).
    pub async fn user_exists(&self, user: i64) -> Result<bool, Failure> {
        if user <= 0 {
            return Ok(false);
        }
        if self.registry.contains(user)
            || self
                .known_users
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&user)
        {
            return Ok(true);
        }
        let reply = self
            .upstreams
            .users
            .clone()
            .get_users(user_pb::GetUsersRequest { ids: vec![user] })
            .await
            .map_err(|s| failure_from_status(&s, "the user service"))?;
        let exists = reply.into_inner().users.iter().any(|u| u.id == user);
        if exists {
            self.remember_users([user]);
        }
        Ok(exists)
    }

    /// The members of a group, cached.
    pub async fn group_members(&self, group: i64) -> Result<Arc<[i64]>, Failure> {
        if let Some(members) = self.groups.get(group) {
            return Ok(members);
        }
        if group <= 0 {
            return Err(Failure::new(
                errno::NOT_FOUND,
                format!("group {group} does not exist"),
            ));
        }
        let reply = self
            .upstreams
            .users
            .clone()
            .list_group_members(user_pb::ListGroupMembersRequest { group_id: group })
            .await
            .map_err(|s| failure_from_status(&s, "the user service"))?;
        let members: Arc<[i64]> = reply.into_inner().member_ids.into();
        self.remember_users(members.iter().copied());
        self.groups.put(group, members.clone());
        Ok(members)
    }

    pub fn cache_group(&self, group: i64, members: Vec<i64>) {
        self.groups.put(group, members.into());
    }

    /// Forgets a group's members here and on every other node.
    pub async fn invalidate_group(&self, group: i64) {
        self.groups.forget(group);
        if let Err(e) = self
            .cluster
            .publish_control(format!("g:{group}").as_bytes())
            .await
        {
            tracing::warn!(error = %e, group, "cannot broadcast a group change; other nodes refresh within the cache TTL");
        }
    }

    /// Sends one message to each of `receivers`, local first, the rest in
    /// one Redis pipeline, and what nobody took to the offline service.
    /// Fails only when a message could be neither delivered nor stored.
    pub async fn deliver(
        &self,
        receivers: &[i64],
        sender_id: i64,
        frame: &[u8],
    ) -> Result<Vec<Route>, Failure> {
        let started = std::time::Instant::now();
        let mut routes = vec![Route::Local; receivers.len()];
        let mut elsewhere = Vec::new();
        for (i, &to) in receivers.iter().enumerate() {
            match self.registry.hand_off(to, sender_id, frame) {
                Handoff::Queued => metrics()
                    .delivery_latency
                    .get_or_create(&label("path", "local"))
                    .observe(started.elapsed().as_secs_f64()),
                // Here, but its queue is full: a slow client must not grow
                // our memory; it gets this at its next login.
                Handoff::Busy => routes[i] = Route::Offline,
                Handoff::Absent => elsewhere.push(i),
            }
        }
        if !elsewhere.is_empty() {
            let span = tracing::info_span!(
                "redis.publish",
                otel.kind = "producer",
                db.system = "redis",
                messaging.batch.message_count = elsewhere.len(),
            );
            let envelope = envelope(
                sender_id,
                frame,
                &telemetry::propagation::traceparent(&span),
            );
            let batch: Vec<(i64, &[u8])> = elsewhere
                .iter()
                .map(|&i| (receivers[i], envelope.as_slice()))
                .collect();
            match self.cluster.publish(&batch).instrument(span).await {
                Ok(received) => {
                    for (&i, got) in elsewhere.iter().zip(received) {
                        routes[i] = if got { Route::Remote } else { Route::Offline };
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "publish failed; storing offline");
                    for &i in &elsewhere {
                        routes[i] = Route::Offline;
                    }
                }
            }
        }
        for (i, route) in routes.iter().enumerate() {
            let name = match route {
                Route::Local => "local",
                Route::Remote => "remote",
                Route::Offline => "offline",
            };
            metrics()
                .deliveries
                .get_or_create(&label("route", name))
                .inc();
            if *route == Route::Offline {
                self.store_offline(receivers[i], sender_id, frame).await?;
            }
        }
        Ok(routes)
    }

    /// Stores a message with the offline service, retrying briefly with the
    /// same idempotency key so a retry cannot duplicate it.
    pub async fn store_offline(
        &self,
        receiver: i64,
        sender_id: i64,
        frame: &[u8],
    ) -> Result<(), Failure> {
        let request = offline_pb::StoreRequest {
            receiver_id: receiver,
            sender_id,
            client_msg_id: format!("{}-{}", self.config.node_id, self.next_id()),
            payload: String::from_utf8_lossy(frame).into_owned(),
        };
        let mut attempt = 0;
        loop {
            match self.upstreams.offline.clone().store(request.clone()).await {
                Ok(_) => return Ok(()),
                Err(status) => {
                    let failure = failure_from_status(&status, "the offline service");
                    attempt += 1;
                    if failure.errno != errno::UNAVAILABLE || attempt >= 3 {
                        tracing::warn!(receiver, code = ?status.code(), "offline store failed");
                        return Err(Failure::new(
                            failure.errno,
                            format!(
                                "user {receiver} is offline and the message could not be stored: {}",
                                failure.errmsg
                            ),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
            }
        }
    }

    /// What the subscriber received: deliver to the local session or, if the
    /// user has gone meanwhile, store it offline.
    pub fn on_bus_event(self: &Arc<Self>, event: BusEvent) {
        match event {
            BusEvent::ForUser { user, payload } => {
                let Some(message) = open_envelope(&payload) else {
                    tracing::warn!(user, "dropping a malformed bus message");
                    return;
                };
                let span =
                    tracing::info_span!("chat.deliver", otel.kind = "consumer", receiver = user);
                telemetry::propagation::set_parent_from_traceparent(&span, message.traceparent);
                let _entered = span.enter();
                match self
                    .registry
                    .hand_off(user, message.sender_id, message.frame)
                {
                    Handoff::Queued => {
                        let waited = now_micros().saturating_sub(message.sent_micros);
                        metrics()
                            .delivery_latency
                            .get_or_create(&label("path", "remote"))
                            .observe(waited as f64 / 1e6);
                    }
                    Handoff::Busy | Handoff::Absent => {
                        let delivery = Delivery {
                            sender_id: message.sender_id,
                            frame: message.frame.to_vec(),
                        };
                        metrics()
                            .deliveries
                            .get_or_create(&label("route", "offline"))
                            .inc();
                        let node = self.clone();
                        self.tasks.spawn(
                            async move {
                                node.store_offline_until_done(user, delivery).await;
                            }
                            .instrument(span.clone()),
                        );
                    }
                }
            }
            BusEvent::Control(payload) => {
                if let Some(group) = std::str::from_utf8(&payload)
                    .ok()
                    .and_then(|s| s.strip_prefix("g:"))
                    .and_then(|g| g.parse().ok())
                {
                    self.groups.forget(group);
                }
            }
            BusEvent::Resubscribed => {}
        }
    }

    /// For messages this node accepted responsibility for (nobody else will
    /// retry them): keep trying until stored or the node stops.
    pub async fn store_offline_until_done(&self, receiver: i64, delivery: Delivery) {
        let mut delay = Duration::from_millis(500);
        loop {
            match self
                .store_offline(receiver, delivery.sender_id, &delivery.frame)
                .await
            {
                Ok(()) => return,
                Err(f) if f.errno == errno::UNAVAILABLE && !self.shutdown.is_requested() => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(f) => {
                    tracing::error!(
                        receiver,
                        errmsg = f.errmsg,
                        "a message could not be stored offline"
                    );
                    return;
                }
            }
        }
    }

    /// Keeps this node's presence claims alive; ends sessions whose user was
    /// taken over meanwhile (possible only after Redis lost its data).
    pub async fn keep_presence(self: Arc<Self>) {
        let period = self.config.presence_ttl / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.shutdown.requested() => return,
            }
            let sessions = self.registry.snapshot();
            if sessions.is_empty() {
                continue;
            }
            let claims: Vec<(i64, String)> = sessions
                .iter()
                .map(|(user, conn, _)| (*user, self.owner(*conn)))
                .collect();
            match self
                .cluster
                .refresh_presence(&claims, self.config.presence_ttl)
                .await
            {
                Ok(held) => {
                    for ((user, _, kick), still_ours) in sessions.into_iter().zip(held) {
                        if !still_ours {
                            tracing::warn!(user, "presence taken by another session; ending ours");
                            kick.cancel();
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot refresh presence"),
            }
        }
    }

    /// The presence value of one of this node's connections.
    pub fn owner(&self, connection: u64) -> String {
        format!("{}/{connection}", self.config.node_id)
    }

    /// Forwards what the subscriber receives, until shutdown.
    pub async fn dispatch_bus(self: Arc<Self>, mut events: mpsc::Receiver<BusEvent>) {
        while let Some(event) = events.recv().await {
            self.on_bus_event(event);
        }
    }
}

/// Bus payload: a header line `sender_id sent_at_micros traceparent`, then
/// the frame. The sender id lets the receiving node store the message
/// offline; the time measures publish-to-delivery latency; the traceparent
/// makes the delivering node's span part of the sender's trace.
fn envelope(sender_id: i64, frame: &[u8], traceparent: &str) -> Vec<u8> {
    let mut out = format!("{sender_id} {} {traceparent}\n", now_micros()).into_bytes();
    out.extend_from_slice(frame);
    out
}

struct BusMessage<'a> {
    sender_id: i64,
    sent_micros: u64,
    traceparent: &'a str,
    frame: &'a [u8],
}

fn open_envelope(payload: &[u8]) -> Option<BusMessage<'_>> {
    let newline = payload.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&payload[..newline]).ok()?;
    let mut fields = header.split(' ');
    Some(BusMessage {
        sender_id: fields.next()?.parse().ok()?,
        sent_micros: fields.next()?.parse().ok()?,
        traceparent: fields.next().unwrap_or(""),
        frame: &payload[newline + 1..],
    })
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// When a group's member list was fetched, and the list.
type CachedMembers = (Instant, Arc<[i64]>);

struct GroupCache {
    ttl: Duration,
    entries: Mutex<HashMap<i64, CachedMembers>>,
}

impl GroupCache {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    fn get(&self, group: i64) -> Option<Arc<[i64]>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&group)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, members)| members.clone())
    }

    fn put(&self, group: i64, members: Arc<[i64]>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(group, (Instant::now(), members));
    }

    fn forget(&self, group: i64) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips() {
        let e = envelope(42, b"{\"msg\":\"a\nb\"}", "00-abc-def-01");
        let m = open_envelope(&e).expect("valid");
        assert_eq!(
            (m.sender_id, m.traceparent, m.frame),
            (42, "00-abc-def-01", &b"{\"msg\":\"a\nb\"}"[..])
        );
        assert!(m.sent_micros > 0);
        let untraced = envelope(7, b"{}", "");
        assert_eq!(open_envelope(&untraced).expect("valid").traceparent, "");
        assert!(open_envelope(b"no header").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn group_cache_expires() {
        let cache = GroupCache::new(Duration::from_secs(30));
        cache.put(1, vec![1, 2].into());
        assert!(cache.get(1).is_some());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(cache.get(1).is_none());
    }
}
