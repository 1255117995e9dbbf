//! One gateway node: the state every session shares, and how a chat message
//! finds its receiver.
//!
//! A message for user U is first **recorded** in U's inbox in Redis (see
//! `cluster.rs`): only then is the sender told it was accepted. The same
//! script publishes it on U's channel; the node holding U hands it to U's
//! session, whose writer writes it and later trims the inbox. What nobody
//! holds (0 subscribers) is moved from the inbox to the offline service
//! (MySQL) by [`Node::move_to_offline_store`]; when Redis itself is down the
//! message goes straight to the offline service. A receiver's session reads
//! the offline store and its inbox at login, after a gap in the sequence, a
//! full queue, or a subscriber reconnect (`writer.rs`).
//!
//! **Architecture Invariant:** no database or gRPC call on the path of a chat
//! between online users. Whether a user or group exists and who is in a
//! group come from caches filled on first use and at login, and kept fresh
//! by invalidations over Redis.

pub mod admission;
pub mod registry;

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use clusterchat_proto::{offline::v1 as offline_pb, user::v1 as user_pb};
use shutdown::Shutdown;
use tokio::{
    sync::{Notify, Semaphore, mpsc},
    time::Instant,
};
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::{
    config::Config,
    metrics::{label, metrics},
    node::registry::{Delivery, Handoff, Registry},
    protocol::{
        classic::{Failure, errno},
        conversation::{self, Conversation},
    },
    redis::{
        AppendTo, Appended, BusEvent, Claim, InboxEntry, OFFLINE_NUDGE, Redis, RedisError,
        entry_tail,
    },
    upstream::{Upstreams, failure_from_status},
};

pub struct Node {
    pub config: Config,
    pub registry: Registry,
    pub redis: Redis,
    pub upstreams: Upstreams,
    pub shutdown: Shutdown,
    /// Every session and background hand-over, so shutdown can wait for them.
    pub tasks: TaskTracker,
    groups: GroupCache,
    known_users: Mutex<HashSet<i64>>,
    next_id: AtomicU64,
    /// Per user, the highest inbox sequence delivered and not yet trimmed.
    trims: Mutex<HashMap<i64, u64>>,
    trims_waiting: Notify,
    /// Users whose inbox is being moved to the offline store; true when
    /// another move was asked for meanwhile.
    moving: Mutex<HashMap<i64, bool>>,
    move_permits: Semaphore,
    /// Connections with nobody logged in, and unfinished requests.
    pub admission: Arc<admission::Admission>,
    /// Remote receivers of messages stored offline because Redis was
    /// unreachable: their nodes are told once Redis answers again.
    nudges: Mutex<HashSet<i64>>,
    /// When this node's presence claims were last confirmed (micros after
    /// `epoch`), measured from the moment the refresh was sent.
    /// Per hash slot (of the users' tags), when this node's claims there
    /// were last confirmed (µs since `epoch`): a shard that fails over
    /// holds up only its own users' leases.
    presence_confirmed: Box<[AtomicU64]>,
    /// When a wait for a Redis Cluster failover last ran out (µs since the
    /// Unix epoch).
    failover_gave_up: AtomicU64,
    epoch: Instant,
}

/// How long delivered inbox entries wait to be trimmed, so trims are batched.
pub const TRIM_EVERY: Duration = Duration::from_millis(20);

/// A chat on its way: the frame receivers see and the message's identity.
pub struct Outgoing<'a> {
    pub sender_id: i64,
    pub frame: &'a [u8],
    /// Unique per message, made once and reused by every retry of it.
    pub mid: String,
    /// The client gave a message id: remember `mid` per receiver, so that a
    /// retried send is recorded once.
    pub dedup: bool,
    pub conversation: Conversation,
}

/// What [`Node::deliver`] did.
pub struct Delivered {
    /// One result per receiver, in order: a failure means that receiver
    /// will not get this message.
    pub results: Vec<Result<(), Failure>>,
    /// The chat's sequence number in its conversation (`None`: Redis could
    /// not number it; it is delivered but missing from history).
    pub cseq: Option<u64>,
}

/// A fresh random 128-bit message id.
pub fn new_message_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Node {
    pub fn new(config: Config, redis: Redis, upstreams: Upstreams, shutdown: Shutdown) -> Self {
        let groups = GroupCache::new(config.group_cache_ttl);
        let admission = Arc::new(admission::Admission::new(
            config.limits.partial_budget_bytes,
            config.limits.anonymous_per_address,
        ));
        Self {
            config,
            registry: Registry::default(),
            redis,
            upstreams,
            shutdown,
            tasks: TaskTracker::new(),
            groups,
            known_users: Mutex::default(),
            next_id: AtomicU64::new(1),
            trims: Mutex::default(),
            trims_waiting: Notify::new(),
            moving: Mutex::default(),
            nudges: Mutex::default(),
            move_permits: Semaphore::new(32),
            admission,
            presence_confirmed: (0..16_384).map(|_| AtomicU64::new(0)).collect(),
            failover_gave_up: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// A number unique within this node's life (connections).
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
            .redis
            .publish_control(format!("g:{group}").as_bytes())
            .await
        {
            tracing::warn!(error = %e, group, "cannot broadcast a group change; other nodes refresh within the cache TTL");
        }
    }

    /// Records one message for each receiver (one script each, one pipeline
    /// for all), hands it to receivers on this node, and moves it to the
    /// offline store for receivers nobody holds. When Redis is down, stores
    /// it with the offline service instead. One result per receiver, in
    /// order: a failure means that receiver will not get this message.
    pub async fn deliver(self: &Arc<Self>, receivers: &[i64], message: &Outgoing<'_>) -> Delivered {
        let started = std::time::Instant::now();
        let span = tracing::info_span!(
            "redis.append",
            otel.kind = "producer",
            db.system = "redis",
            messaging.batch.message_count = receivers.len(),
        );
        let micros = now_micros();
        let traceparent = telemetry::propagation::traceparent(&span);
        let numbered = self
            .number(message, micros, &traceparent)
            .instrument(span.clone())
            .await;
        let frame = numbered
            .as_ref()
            .map_or(message.frame, |(_, frame)| frame.as_slice());
        let message = &Outgoing {
            sender_id: message.sender_id,
            frame,
            mid: message.mid.clone(),
            dedup: message.dedup,
            conversation: message.conversation,
        };
        let results = self
            .record(receivers, message, micros, &traceparent, &span, started)
            .await;
        let cseq = numbered.as_ref().map(|(cseq, _)| *cseq);
        if let Some(cseq) = cseq
            && results.iter().all(Result::is_err)
        {
            // Nobody got it: history must not show it either.
            self.redis
                .retract(&message.conversation.to_string(), &message.mid, cseq)
                .await;
        }
        Delivered { results, cseq }
    }

    /// Numbers the chat in its conversation and records it for the history
    /// service (the frame gets `conv` and `cseq`). On a cluster a failing
    /// shard is waited for as an append is; `None` when it cannot be done
    /// (Redis down: the chat still goes out, without a number).
    async fn number(
        &self,
        message: &Outgoing<'_>,
        micros: u64,
        traceparent: &str,
    ) -> Option<(u64, Vec<u8>)> {
        let head = conversation::numbered_head(message.frame, &message.conversation)?;
        let conv = message.conversation.to_string();
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            let job = crate::redis::number::NumberJob {
                conversation: conv.clone(),
                mid: message.mid.clone(),
                ttl: if message.dedup {
                    self.config.dedup_ttl.as_secs().max(1)
                } else {
                    0
                },
                sender: message.sender_id,
                micros,
                traceparent: traceparent.to_owned(),
                head: head.clone(),
                reply: tokio::sync::oneshot::channel().0,
            };
            match self.redis.number(job).await {
                Ok(cseq) => return Some((cseq, conversation::complete(&head, cseq))),
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    let waited_out = since.elapsed() >= self.config.redis_failover_wait;
                    if waited_out {
                        self.failover_gave_up.store(now_micros(), Ordering::Relaxed);
                    }
                    if !self.redis.number_failover_possible(&conv)
                        || !self.may_wait_for_failover()
                        || waited_out
                    {
                        tracing::warn!(error = %e, conversation = conv, "cannot number a chat; it goes out without a conversation number");
                        metrics().unnumbered.inc();
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Records one message for each receiver (see [`Self::deliver`]).
    async fn record(
        self: &Arc<Self>,
        receivers: &[i64],
        message: &Outgoing<'_>,
        micros: u64,
        traceparent: &str,
        span: &tracing::Span,
        started: std::time::Instant,
    ) -> Vec<Result<(), Failure>> {
        let tail = entry_tail(
            &message.mid,
            message.sender_id,
            micros,
            traceparent,
            message.frame,
        );
        let targets: Vec<AppendTo> = receivers
            .iter()
            .map(|&user| AppendTo {
                user,
                // A classic session here holds the user alone; device
                // sessions may be on other nodes too.
                publish: !self.registry.holds_alone(user),
            })
            .collect();
        let dedup = message.dedup.then_some(self.config.dedup_ttl);
        // On a cluster, a shard failing over answers again within seconds:
        // waiting for it keeps this sender's chats in order (a copy the
        // failed attempt may have left is written once, by message id).
        // Only the receivers whose append failed are tried again.
        let mut appended: Vec<Option<Appended>> = vec![None; targets.len()];
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            let pending: Vec<usize> = (0..targets.len())
                .filter(|&i| appended[i].is_none())
                .collect();
            let attempt_targets: Vec<AppendTo> = pending
                .iter()
                .map(|&i| AppendTo {
                    user: targets[i].user,
                    publish: targets[i].publish,
                })
                .collect();
            let results = self
                .redis
                .append_each(
                    &attempt_targets,
                    &message.mid,
                    &tail,
                    self.config.limits.max_inbox,
                    dedup,
                )
                .instrument(span.clone())
                .await;
            let mut failed = Vec::new();
            let mut error = None;
            for (&i, result) in pending.iter().zip(results) {
                match result {
                    Ok(done) => appended[i] = Some(done),
                    Err(e) => {
                        failed.push(targets[i].user);
                        error = Some(e);
                    }
                }
            }
            let Some(e) = error else { break };
            if !(self.redis.failover_possible(&failed) && self.may_wait_for_failover()) {
                tracing::warn!(error = %e, receivers = failed.len(), "cannot record in redis; storing with the offline service");
                break;
            }
            let since = *failing_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= self.config.redis_failover_wait {
                // No failover came: do not make every chat wait.
                self.failover_gave_up.store(now_micros(), Ordering::Relaxed);
                tracing::warn!(error = %e, receivers = failed.len(), "no failover came; storing with the offline service");
                break;
            }
            tracing::debug!(error = %e, "append failed; retrying while the shard fails over");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Receivers Redis did not take: the offline service instead.
        let unrecorded: Vec<i64> = (0..targets.len())
            .filter(|&i| appended[i].is_none())
            .map(|i| targets[i].user)
            .collect();
        let mut stored = if unrecorded.is_empty() {
            Vec::new()
        } else {
            self.store_all_offline(&unrecorded, message).await
        }
        .into_iter();
        let count = |route: &'static str| {
            metrics()
                .deliveries
                .get_or_create(&label("route", route))
                .inc();
        };
        targets
            .iter()
            .zip(appended)
            .map(|(to, appended)| match appended {
                None => stored.next().unwrap_or_else(|| {
                    Err(Failure::new(
                        errno::UNAVAILABLE,
                        "could not record the message; try again".to_owned(),
                    ))
                }),
                Some(appended) => match appended {
                    Appended::Recorded {
                        seq,
                        subscribers: None,
                    } => {
                        let handoff = self.registry.hand_off(to.user, || {
                            Delivery::new(seq, message.mid.clone(), message.frame.to_vec())
                        });
                        if handoff == Handoff::Absent {
                            // Left this node meanwhile: maybe logged in elsewhere
                            // (told to read its stores: it may have read its
                            // inbox before this landed), maybe gone.
                            self.move_to_offline_store(to.user);
                            self.nudges
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(to.user);
                        }
                        count("local");
                        metrics()
                            .delivery_latency
                            .get_or_create(&label("path", "local"))
                            .observe(started.elapsed().as_secs_f64());
                        Ok(())
                    }
                    Appended::Recorded {
                        subscribers: Some(0),
                        ..
                    } => {
                        count("offline");
                        self.move_to_offline_store(to.user);
                        Ok(())
                    }
                    Appended::Recorded { .. } => {
                        count("remote");
                        Ok(())
                    }
                    Appended::Duplicate { .. } => Ok(()),
                    Appended::InboxFull => Err(Failure::new(
                        errno::BACKLOG_FULL,
                        format!(
                            "user {} has {} undelivered messages; this one was not accepted",
                            to.user, self.config.limits.max_inbox
                        ),
                    )),
                },
            })
            .collect()
    }

    /// Redis is down: each receiver's copy goes to the offline service, a few
    /// at a time, each with the message id as its idempotency key.
    async fn store_all_offline(
        &self,
        receivers: &[i64],
        message: &Outgoing<'_>,
    ) -> Vec<Result<(), Failure>> {
        let mut results = Vec::with_capacity(receivers.len());
        for chunk in receivers.chunks(16) {
            let stores: Vec<_> = chunk
                .iter()
                .map(|&receiver| {
                    self.store_offline(offline_pb::StoreRequest {
                        receiver_id: receiver,
                        sender_id: message.sender_id,
                        client_msg_id: message.mid.clone(),
                        payload: String::from_utf8_lossy(message.frame).into_owned(),
                        inbox_seq: 0,
                    })
                })
                .collect();
            results.extend(futures::future::join_all(stores).await);
        }
        // Receivers on this node read it from there now; the nodes of
        // those elsewhere are told as soon as Redis answers again.
        let mut nudges = self.nudges.lock().unwrap_or_else(|p| p.into_inner());
        for (&receiver, stored) in receivers.iter().zip(&results) {
            if stored.is_ok() && !self.registry.contains(receiver) {
                nudges.insert(receiver);
            } else if stored.is_ok() {
                self.registry.sync_offline(receiver);
            }
        }
        drop(nudges);
        metrics()
            .deliveries
            .get_or_create(&label("route", "offline"))
            .inc_by(results.iter().filter(|r| r.is_ok()).count() as u64);
        results
    }

    /// Stores a message with the offline service, retrying briefly; the
    /// request's idempotency key makes a retry store nothing twice.
    async fn store_offline(&self, request: offline_pb::StoreRequest) -> Result<(), Failure> {
        let receiver = request.receiver_id;
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
                                "the message for user {receiver} could not be recorded: {}",
                                failure.errmsg
                            ),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
            }
        }
    }

    /// Moves the user's inbox to the offline store in the background (one
    /// move per user at a time; a request during a move makes it run again).
    /// Entries stay in the inbox until stored, and are removed only while
    /// the user has no presence, so a session that logs in meanwhile finds
    /// every message in one place or the other.
    pub fn move_to_offline_store(self: &Arc<Self>, user: i64) {
        {
            let mut moving = self.moving.lock().unwrap_or_else(|p| p.into_inner());
            match moving.entry(user) {
                Entry::Occupied(mut again) => {
                    again.insert(true);
                    return;
                }
                Entry::Vacant(slot) => {
                    slot.insert(false);
                }
            }
        }
        let node = self.clone();
        // Part of the trace of the message that asked for the move.
        let span = tracing::info_span!("inbox.move", user);
        self.tasks.spawn(
            async move {
                let _permit = node.move_permits.acquire().await;
                loop {
                    if let Err(failure) = node.move_inbox(user).await {
                        // Still in the inbox: handed over at the next login.
                        tracing::warn!(
                            user,
                            errmsg = failure.errmsg,
                            "inbox not moved to the offline store"
                        );
                    }
                    let mut moving = node.moving.lock().unwrap_or_else(|p| p.into_inner());
                    if moving.get(&user) == Some(&true) {
                        moving.insert(user, false);
                    } else {
                        moving.remove(&user);
                        return;
                    }
                }
            }
            .instrument(span),
        );
    }

    async fn move_inbox(&self, user: i64) -> Result<(), Failure> {
        const PAGE: usize = 100;
        let unavailable =
            |e: crate::redis::RedisError| Failure::new(errno::UNAVAILABLE, e.to_string());
        loop {
            let page = self
                .redis
                .read_inbox(user, 0, PAGE)
                .await
                .map_err(unavailable)?;
            let Some(last) = page.entries.last().map(|e| e.seq) else {
                return Ok(());
            };
            let full_page = !page.complete;
            for entry in page.entries {
                self.store_offline(offline_pb::StoreRequest {
                    receiver_id: user,
                    sender_id: entry.sender_id,
                    client_msg_id: entry.mid,
                    payload: String::from_utf8_lossy(&entry.frame).into_owned(),
                    inbox_seq: entry.seq,
                })
                .await?;
            }
            if !self
                .redis
                .trim_moved(user, last)
                .await
                .map_err(unavailable)?
                || !full_page
            {
                return Ok(());
            }
        }
    }

    /// Appends a message from the user's offline store to their inbox, once
    /// (the message id is the idempotency key), without publishing it.
    pub async fn append_to_own_inbox(
        &self,
        user: i64,
        message: &offline_pb::OfflineMessage,
    ) -> Result<(), RedisError> {
        let mid = if message.client_msg_id.is_empty() {
            format!("offline-{}", message.position)
        } else {
            message.client_msg_id.clone()
        };
        let tail = entry_tail(
            &mid,
            message.sender_id,
            now_micros(),
            "",
            message.payload.as_bytes(),
        );
        let appended = self
            .redis
            .append(
                &[AppendTo {
                    user,
                    publish: false,
                }],
                &mid,
                &tail,
                self.config.limits.max_inbox,
                Some(self.config.dedup_ttl),
            )
            .await?;
        match appended.first() {
            Some(Appended::InboxFull) => {
                Err(RedisError::new(format!("the inbox of user {user} is full")))
            }
            _ => Ok(()),
        }
    }

    /// Notes that the user's inbox entries up to `seq` were delivered; the
    /// trimmer removes them from Redis in batches.
    pub fn note_delivered(&self, user: i64, seq: u64) {
        if seq == 0 {
            return;
        }
        let mut trims = self.trims.lock().unwrap_or_else(|p| p.into_inner());
        let mark = trims.entry(user).or_insert(0);
        *mark = (*mark).max(seq);
        drop(trims);
        self.trims_waiting.notify_one();
    }

    /// Trims delivered inbox entries in batches, at most one per user every
    /// [`TRIM_EVERY`]: a busy receiver costs Redis one trim per batch, not
    /// one per message. (The price: a node that dies may have written up to
    /// that much that is still untrimmed, and is handed over again.)
    pub async fn run_trimmer(self: Arc<Self>) {
        loop {
            self.trims_waiting.notified().await;
            tokio::time::sleep(TRIM_EVERY).await;
            if self.flush_trims().await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.trims_waiting.notify_one();
            }
        }
    }

    /// Trims what is waiting now; on failure keeps it for the next try (an
    /// untrimmed entry is at worst delivered again, never lost).
    pub async fn flush_trims(&self) -> Result<(), ()> {
        let batch: Vec<(i64, u64)> =
            std::mem::take(&mut *self.trims.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        if let Err(e) = self.redis.trim_delivered(&batch).await {
            tracing::warn!(error = %e, users = batch.len(), "cannot trim inboxes; will retry");
            let mut trims = self.trims.lock().unwrap_or_else(|p| p.into_inner());
            for (user, seq) in batch {
                let mark = trims.entry(user).or_insert(0);
                *mark = (*mark).max(seq);
            }
            return Err(());
        }
        Ok(())
    }

    /// Tells the nodes of remote receivers of offline-stored messages, every
    /// 200 ms until Redis takes it.
    pub async fn send_offline_nudges(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let users: Vec<i64> = self
                .nudges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .copied()
                .collect();
            if users.is_empty() {
                continue;
            }
            if self.redis.nudge_offline(&users).await.is_ok() {
                let mut nudges = self.nudges.lock().unwrap_or_else(|p| p.into_inner());
                for user in users {
                    nudges.remove(&user);
                }
            }
        }
    }

    /// What the subscriber received: hand it to the local session. A user
    /// who has left has the message in their inbox; it is moved to the
    /// offline store unless they are online elsewhere.
    pub fn on_bus_event(self: &Arc<Self>, event: BusEvent) {
        match event {
            BusEvent::ForUser { user, entry } if entry == OFFLINE_NUDGE => {
                self.registry.sync_offline(user);
            }
            BusEvent::ForUser { user, entry } if entry == crate::redis::DEVICE_JOINED => {
                self.registry.device_joined(user);
            }
            BusEvent::ForUser { user, entry } if entry.starts_with(b"0 live ") => {
                if let Some((except, frame)) = crate::redis::parse_live(&entry) {
                    let except = except
                        .strip_prefix(self.config.node_id.as_str())
                        .and_then(|rest| rest.strip_prefix('/'))
                        .and_then(|conn| conn.parse().ok());
                    self.registry.hand_live(user, except, frame);
                }
            }
            BusEvent::ForUser { user, entry } => {
                let Some(entry) = InboxEntry::parse(entry) else {
                    tracing::warn!(user, "dropping a malformed bus message");
                    return;
                };
                let span =
                    tracing::info_span!("chat.deliver", otel.kind = "consumer", receiver = user);
                telemetry::propagation::set_parent_from_traceparent(&span, &entry.traceparent);
                let _entered = span.enter();
                let sent_micros = entry.sent_micros;
                let handoff = self.registry.hand_off(user, || {
                    Delivery::new(entry.seq, entry.mid.clone(), entry.frame.clone())
                });
                match handoff {
                    Handoff::Queued => {
                        let waited = now_micros().saturating_sub(sent_micros);
                        metrics()
                            .delivery_latency
                            .get_or_create(&label("path", "remote"))
                            .observe(waited as f64 / 1e6);
                    }
                    Handoff::Busy => {}
                    Handoff::Absent => self.move_to_offline_store(user),
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
            // Whatever was published while a subscription was away is in
            // the inbox (or, if Redis was down, the offline store).
            BusEvent::Resync(users) => {
                for user in users {
                    self.registry.sync_offline(user);
                }
            }
        }
    }

    /// False for a while after a wait for a failover ran out.
    fn may_wait_for_failover(&self) -> bool {
        let gave_up = self.failover_gave_up.load(Ordering::Relaxed);
        now_micros().saturating_sub(gave_up) > 30_000_000
    }

    /// Whether this node may still write to a session that claimed its user
    /// at `claimed_at`: its presence claim cannot have expired in Redis. A
    /// node frozen (SIGSTOP, VM pause) past its TTL must not write what it
    /// received before it was frozen: the user may be online elsewhere.
    pub fn presence_lease_holds(&self, user: i64, claimed_at: Instant) -> bool {
        let slot = usize::from(crate::redis::slot::of_user(user));
        let confirmed = self.epoch
            + Duration::from_micros(self.presence_confirmed[slot].load(Ordering::Acquire));
        let since = confirmed.max(claimed_at);
        since.elapsed() < self.config.presence_ttl * 4 / 5
    }

    /// Keeps this node's presence claims alive; ends sessions whose user was
    /// taken over meanwhile (after a freeze, or after Redis lost its data).
    pub async fn keep_presence(self: Arc<Self>) {
        let period = self.config.presence_ttl / 4;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.shutdown.requested() => return,
            }
            let sent_at = Instant::now();
            let sessions = self.registry.snapshot();
            if sessions.is_empty() {
                self.confirm_presence(None, sent_at);
                continue;
            }
            let claims: Vec<(i64, String, bool)> = sessions
                .iter()
                .map(|s| (s.user, self.owner(s.connection), s.device))
                .collect();
            let held = self
                .redis
                .refresh_presence(&claims, self.config.presence_ttl)
                .await;
            for (session, held) in sessions.into_iter().zip(held) {
                let user = session.user;
                match held {
                    Some(Claim::Held { others }) => {
                        session.peers.store(others > 0, Ordering::Relaxed);
                        self.confirm_presence(Some(user), sent_at);
                    }
                    Some(Claim::Refused) => {
                        tracing::warn!(user, "presence taken by another session; ending ours");
                        session.kick.cancel();
                    }
                    // Its shard did not answer: the lease runs down.
                    None => {}
                }
            }
        }
    }

    /// Confirms the leases of `user`'s slot (or of every slot) as of `sent_at`.
    fn confirm_presence(&self, user: Option<i64>, sent_at: Instant) {
        let micros = u64::try_from(sent_at.duration_since(self.epoch).as_micros()).unwrap_or(0);
        match user {
            Some(user) => {
                let slot = usize::from(crate::redis::slot::of_user(user));
                self.presence_confirmed[slot].fetch_max(micros, Ordering::AcqRel);
            }
            None => {
                for confirmed in &self.presence_confirmed {
                    confirmed.fetch_max(micros, Ordering::AcqRel);
                }
            }
        }
    }

    /// The presence value of one of this node's connections.
    pub fn owner(&self, connection: u64) -> String {
        format!("{}/{connection}", self.config.node_id)
    }

    /// Forwards what the subscriber receives, until shutdown.
    /// Hands what the subscriber received to the sessions; a session whose
    /// entry did not fit the subscriber's backlog reads its inbox instead.
    pub async fn dispatch_bus(self: Arc<Self>, mut events: mpsc::Receiver<BusEvent>) {
        let backlog = self.redis.backlog.clone();
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { return };
                    backlog.taken(&event);
                    self.on_bus_event(event);
                }
                users = backlog.overflowed() => {
                    for user in users {
                        // What was left out may have been a chat (in the
                        // inbox) or an offline nudge (in the offline store):
                        // the session reads both. A user who left has the
                        // inbox moved, as a publish that reached nobody.
                        if self.registry.contains(user) {
                            self.registry.sync_offline(user);
                        } else {
                            self.move_to_offline_store(user);
                        }
                    }
                }
            }
        }
    }
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

    #[tokio::test(start_paused = true)]
    async fn group_cache_expires() {
        let cache = GroupCache::new(Duration::from_secs(30));
        cache.put(1, vec![1, 2].into());
        assert!(cache.get(1).is_some());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(cache.get(1).is_none());
    }
}
