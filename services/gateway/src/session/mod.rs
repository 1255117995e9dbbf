//! One client connection, whatever its transport: the request loop. The
//! writer task (`writer.rs`) owns the socket's sending half.
//!
//! A connection acts only as the user who logged in on it: before login only
//! register and login are accepted, an `id` in a request must be that user's,
//! and the identity receivers see is the server's.
//!
//! A connection that sends faster than its rate is paced, not refused: the
//! loop stops reading it until a token is free, so TCP pushes back on the
//! client; a group chat costs one token per `fanout_per_token` receivers.
//! A connection must log in within the login deadline. Logins and
//! registrations are throttled per client address, and failed logins per
//! account, across the cluster (errno 7 with `retry_after`). WebSocket connections and clients that acknowledge are closed
//! when they have been silent for the idle timeout (they are pinged, or
//! ping, more often than that); classic TCP relies on TCP keepalive.

pub mod conversations;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use clusterchat_proto::{offline::v1 as offline_pb, user::v1 as user_pb};
use serde_json::{Map, Value};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    delivery::writer::{
        FrameSink, Inbound, OfflinePage, WriterCommand, acknowledge_offline, delivery_frame,
        run_writer,
    },
    metrics::{label, metrics},
    node::registry::{LocalSession, QueuedBytes, SyncSignal},
    node::{
        Node, Outgoing,
        admission::{AnonymousSlot, ClientAddress},
        new_message_id,
    },
    protocol::{
        classic::{self, Failure, Request, errno},
        conversation::Conversation,
        framing::{Frame, FrameError},
    },
    upstream::{self, failure_from_status},
};

/// The receiving half of a transport: complete frames, `None` at the end.
pub trait FrameSource: Send {
    fn next_frame(&mut self) -> impl Future<Output = Option<Frame>> + Send;

    /// After `next_frame` gave `None`: why the source ended, when the client
    /// should be told (a budget it went past).
    fn ended_because(&mut self) -> Option<Failure> {
        None
    }
}

/// Which transport a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    WebSocket,
}

struct ActiveUser {
    id: i64,
    name: String,
    kick: CancellationToken,
    /// A device session (shares the user with the user's other devices).
    device: bool,
    /// Other sessions of the user exist: a chat sent here goes to them too.
    peers: Arc<std::sync::atomic::AtomicBool>,
    /// Conversations this session last said "typing" in, and when.
    typing_sent: std::collections::HashMap<crate::protocol::conversation::Conversation, Instant>,
}

/// A token bucket. `wait` says how long until the next request may run.
struct RateLimiter {
    tokens: f64,
    per_sec: f64,
    burst: f64,
    last: Instant,
}

impl RateLimiter {
    fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            per_sec: f64::from(per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes `n` tokens, possibly ones that refill only in the future: the
    /// returned time is how long the caller must wait before running.
    fn take(&mut self, n: u32) -> Duration {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_sec)
            .min(self.burst);
        self.last = now;
        self.tokens -= f64::from(n);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
    }
}

pub struct Session {
    node: Arc<Node>,
    connection: u64,
    /// The client's address (from the proxy's PROXY header when trusted).
    client: SocketAddr,
    /// Counted among its address's connections with nobody logged in (let
    /// go the moment a login succeeds).
    anonymous: Option<AnonymousSlot>,
    writer: mpsc::Sender<WriterCommand>,
    active: Option<ActiveUser>,
    limiter: RateLimiter,
    /// The client has used an addition (seq, acks ...): frames may share a
    /// write. Classic clients get one frame per write.
    uses_additions: bool,
    /// Idle timeout applies (WebSocket, or a client that acknowledges).
    heartbeats: bool,
}

/// Runs a connection to its end: requests until the client leaves, its
/// session is taken over, it falls silent, or the node shuts down; then
/// cleans up.
pub async fn run<R: FrameSource, W: FrameSink>(
    node: Arc<Node>,
    mut source: R,
    sink: W,
    transport: Transport,
    client: SocketAddr,
) {
    let (writer, commands) = mpsc::channel(64);
    let writer_task = tokio::spawn(run_writer(sink, commands));
    let limits = &node.config.limits;
    let mut session = Session {
        connection: node.next_id(),
        client,
        anonymous: None,
        limiter: RateLimiter::new(limits.rate_per_sec, limits.rate_burst),
        node: node.clone(),
        writer,
        active: None,
        uses_additions: transport == Transport::WebSocket,
        heartbeats: transport == Transport::WebSocket,
    };
    let idle_timeout = node.config.idle_timeout;
    let mut heard = Instant::now();
    let mut beat = tokio::time::interval(idle_timeout / 4);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let login_deadline = node.config.login_deadline;
    // Since when the connection has had nobody logged in.
    let mut anonymous_since = Some(Instant::now());
    loop {
        anonymous_since = match (&session.active, anonymous_since) {
            (Some(_), _) => None,
            (None, None) => Some(Instant::now()),
            (None, since) => since,
        };
        match (&session.active, &session.anonymous) {
            (Some(_), Some(_)) => session.anonymous = None,
            (None, None) => match AnonymousSlot::take(&node.admission, client.ip()) {
                Some(slot) => session.anonymous = Some(slot),
                None => {
                    metrics()
                        .refused
                        .get_or_create(&label("why", "anonymous_per_address"))
                        .inc();
                    let limit = node.config.limits.anonymous_per_address;
                    let failure = Failure::new(
                        errno::OVERLOADED,
                        format!(
                            "{} has {limit} connections here that have not logged in; log in on one of them or close it",
                            ClientAddress::of(client.ip())
                        ),
                    );
                    session
                        .send_failure(&failure, classic::reply_error(&failure, None))
                        .await;
                    break;
                }
            },
            _ => {}
        }
        let login_due = anonymous_since.map(|since| since + login_deadline);
        let kicked = session.active.as_ref().map(|a| a.kick.clone());
        let kicked = async {
            match kicked {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = source.next_frame() => match frame {
                Some(frame) => {
                    heard = Instant::now();
                    // Boxed: the request path (login's gRPC calls ...) is a
                    // large future; inline it would make every idle
                    // connection's task that large.
                    Box::pin(session.handle_frame(frame)).await;
                }
                None => {
                    if let Some(failure) = source.ended_because() {
                        session.send_failure(&failure, classic::reply_error(&failure, None)).await;
                    }
                    break;
                }
            },
            _ = beat.tick(), if session.heartbeats => {
                let _ = session.writer.send(WriterCommand::Heartbeat).await;
            }
            () = tokio::time::sleep_until(heard + idle_timeout), if session.heartbeats => {
                tracing::info!(connection = session.connection, "closing a connection silent for the idle timeout");
                break;
            }
            () = sleep_until_some(login_due) => {
                metrics().refused.get_or_create(&label("why", "login_deadline")).inc();
                let failure = Failure::new(
                    errno::NOT_LOGGED_IN,
                    format!("no login within {} s; closing", login_deadline.as_secs_f64()),
                );
                session.send_failure(&failure, classic::reply_error(&failure, None)).await;
                break;
            }
            _ = kicked => break,
            _ = node.shutdown.requested() => break,
        }
    }
    session.end_active().await;
    drop(session);
    // A writer stuck on a client that stopped reading holds nothing that is
    // not also in the user's inbox: give it a moment, then drop it.
    let abort = writer_task.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), writer_task)
        .await
        .is_err()
    {
        abort.abort();
    }
}

impl Session {
    /// Sends an error reply and counts it.
    async fn send_failure(&self, failure: &Failure, reply: Vec<u8>) {
        metrics()
            .errors
            .get_or_create(&vec![("errno", failure.errno.to_string())])
            .inc();
        self.send(reply).await;
    }

    async fn send(&self, frame: Vec<u8>) {
        let _ = self.writer.send(WriterCommand::Frame(frame)).await;
    }

    async fn send_confirmed(&self, frame: Vec<u8>) -> bool {
        let (done, written) = oneshot::channel();
        if self
            .writer
            .send(WriterCommand::Confirmed(frame, done))
            .await
            .is_err()
        {
            return false;
        }
        written.await.unwrap_or(false)
    }

    async fn mark_uses_additions(&mut self) {
        if !self.uses_additions {
            self.uses_additions = true;
            let _ = self.writer.send(WriterCommand::AllowBatching).await;
        }
    }

    async fn handle_frame(&mut self, frame: Frame) {
        let bytes = match frame {
            Frame::Value(bytes) => bytes,
            Frame::Heartbeat => return,
            Frame::Invalid(FrameError::TooLarge { max }) => {
                let failure = Failure::new(
                    errno::TOO_LARGE,
                    format!("request larger than {max} bytes; it was discarded"),
                );
                return self
                    .send_failure(&failure, classic::reply_error(&failure, None))
                    .await;
            }
            Frame::Invalid(FrameError::NotAnObject) => {
                let failure = Failure::bad_request(
                    "expected a JSON object; the bytes before the next request were skipped",
                );
                return self
                    .send_failure(&failure, classic::reply_error(&failure, None))
                    .await;
            }
        };
        // Paced, not refused: while we wait, this connection is not read and
        // TCP pushes back on the client.
        let wait = self.limiter.take(1);
        if !wait.is_zero() {
            metrics().paced.inc();
            tokio::time::sleep(wait).await;
        }
        let parsed = classic::parse(&bytes);
        let seq = parsed.seq;
        if seq.is_some() {
            self.mark_uses_additions().await;
        }
        let request = match parsed.request {
            Ok(request) => request,
            Err(failure) => {
                let reply = match parsed.msgid {
                    Some(classic::LOGIN_MSG) => classic::login_failed(&failure, seq),
                    Some(classic::REG_MSG) => classic::register_failed(&failure, seq),
                    _ => classic::reply_error(&failure, seq),
                };
                return self.send_failure(&failure, reply).await;
            }
        };
        let kind = request_kind(&request);
        metrics().requests.get_or_create(&label("kind", kind)).inc();
        if matches!(request, Request::Ack { .. } | Request::Ping) {
            return self.dispatch(request, seq).await;
        }
        // One span per request: the root of a chat's trace. Never the text.
        let span = tracing::info_span!(
            "chat.request",
            otel.name = kind,
            otel.kind = "server",
            user = self.active.as_ref().map(|a| a.id),
            connection = self.connection,
        );
        self.dispatch(request, seq).instrument(span).await;
    }

    async fn dispatch(&mut self, request: Request, seq: Option<i64>) {
        match request {
            Request::Login {
                id,
                password,
                acks,
                since,
            } => self.login(id, password, acks, since, seq).await,
            Request::Register { name, password } => self.register(name, password, seq).await,
            Request::Ping => {
                self.mark_uses_additions().await;
                self.send(classic::pong(seq)).await;
            }
            other => {
                let result = match self.authorize(&other) {
                    Ok(user) => self.handle_as(user, other).await,
                    Err(failure) => Err(failure),
                };
                match (result, seq) {
                    (Ok(results), Some(seq)) => self.send(classic::reply_ok(seq, results)).await,
                    (Ok(results), None) => {
                        // Without seq there is no reply to carry the members
                        // a group chat did not reach: say it as an error.
                        if let Some(failure) = partial_failure(&results) {
                            self.send_failure(&failure, classic::reply_error(&failure, None))
                                .await;
                        }
                    }
                    (Err(failure), seq) => {
                        self.send_failure(&failure, classic::reply_error(&failure, seq))
                            .await
                    }
                }
            }
        }
    }

    /// The logged-in user, if the request may act as them.
    fn authorize(&self, request: &Request) -> Result<(i64, String), Failure> {
        let Some(active) = &self.active else {
            return Err(Failure::new(errno::NOT_LOGGED_IN, "log in first"));
        };
        let claimed = match request {
            Request::Logout { id }
            | Request::OneChat { id, .. }
            | Request::AddFriend { id, .. }
            | Request::CreateGroup { id, .. }
            | Request::AddGroup { id, .. }
            | Request::GroupChat { id, .. } => *id,
            Request::Login { .. }
            | Request::Register { .. }
            | Request::Ack { .. }
            | Request::Ping
            | Request::History { .. }
            | Request::Conversations { .. }
            | Request::MarkRead { .. }
            | Request::Typing { .. }
            | Request::Delivered { .. }
            | Request::Roster => None,
        };
        match claimed {
            Some(id) if id != active.id => Err(Failure::new(
                errno::FORBIDDEN,
                format!(
                    "id {id} is not the user logged in on this connection ({})",
                    active.id
                ),
            )),
            _ => Ok((active.id, active.name.clone())),
        }
    }

    /// Records a chat for its receivers. Fails when nobody got it; when only
    /// some did, the reply says who did not and why. A device session's
    /// other devices see it too (a live event, not an inbox entry: it is in
    /// history for a device that misses it).
    async fn chat(
        &self,
        sender: (i64, &str),
        receivers: &[i64],
        body: Map<String, Value>,
        cmid: Option<String>,
        conversation: Conversation,
    ) -> Result<Map<String, Value>, Failure> {
        let frame = classic::forward_chat(body, sender.0, sender.1, classic_now);
        let message = Outgoing {
            sender_id: sender.0,
            frame: &frame,
            dedup: cmid.is_some(),
            mid: match cmid {
                Some(cmid) => format!("{}-{cmid}", sender.0),
                None => new_message_id(),
            },
            conversation,
        };
        let delivered = self.node.deliver(receivers, &message).await;
        let accepted = delivered.results.iter().any(Result::is_ok);
        if let Some(cseq) = delivered.cseq
            && accepted
            && self
                .active
                .as_ref()
                .is_some_and(|a| a.device && a.peers.load(std::sync::atomic::Ordering::Relaxed))
        {
            let head = crate::protocol::conversation::numbered_head(&frame, &conversation)
                .unwrap_or_default();
            let numbered = crate::protocol::conversation::complete(&head, cseq);
            let carbon = classic::with_delivery_fields(&numbered, &message.mid, 0);
            let node = self.node.clone();
            let owner = node.owner(self.connection);
            let me = sender.0;
            tokio::spawn(async move {
                node.redis.publish_live(&[me], &owner, &carbon).await;
            });
        }
        let failed: Vec<(i64, Failure)> = receivers
            .iter()
            .zip(delivered.results)
            .filter_map(|(&to, r)| r.err().map(|f| (to, f)))
            .collect();
        let mut reply = Map::new();
        reply.insert("mid".into(), message.mid.clone().into());
        if let Some(cseq) = delivered.cseq {
            reply.insert("conv".into(), conversation.to_string().into());
            reply.insert("cseq".into(), cseq.into());
        }
        match failed.first() {
            None => Ok(reply),
            Some((_, first)) if failed.len() == receivers.len() => Err(first.clone()),
            Some(_) => {
                let list: Vec<Value> = failed
                    .iter()
                    .map(|(id, f)| serde_json::json!({"id": id, "errno": f.errno, "errmsg": f.errmsg}))
                    .collect();
                reply.insert("failed".into(), list.into());
                Ok(reply)
            }
        }
    }

    async fn handle_as(
        &mut self,
        (user, name): (i64, String),
        request: Request,
    ) -> Result<Map<String, Value>, Failure> {
        let mut results = Map::new();
        match request {
            Request::Logout { .. } => self.end_active().await,
            Request::OneChat { to, body, cmid, .. } => {
                if !self.node.user_exists(to).await? {
                    return Err(Failure::new(
                        errno::NOT_FOUND,
                        format!("user {to} does not exist"),
                    ));
                }
                return self
                    .chat(
                        (user, &name),
                        &[to],
                        body,
                        cmid,
                        Conversation::direct(user, to),
                    )
                    .await;
            }
            Request::GroupChat {
                group, body, cmid, ..
            } => {
                let members = self.node.group_members(group).await?;
                if !members.contains(&user) {
                    return Err(Failure::new(
                        errno::FORBIDDEN,
                        format!("you are not a member of group {group}"),
                    ));
                }
                let receivers: Vec<i64> = members.iter().copied().filter(|m| *m != user).collect();
                if receivers.is_empty() {
                    return Ok(results);
                }
                // Fan-out is charged to the sender: one request's token was
                // taken when it arrived, the rest per receivers here.
                let per_token = self.node.config.limits.fanout_per_token;
                let extra = u32::try_from(receivers.len()).unwrap_or(u32::MAX) / per_token;
                let wait = self.limiter.take(extra);
                if !wait.is_zero() {
                    metrics().paced.inc();
                    tokio::time::sleep(wait).await;
                }
                return self
                    .chat(
                        (user, &name),
                        &receivers,
                        body,
                        cmid,
                        Conversation::Group(group),
                    )
                    .await;
            }
            Request::Ack { up_to } => {
                let _ = self.writer.send(WriterCommand::ClientAck(up_to)).await;
            }
            Request::AddFriend { friend, .. } => {
                self.node
                    .upstreams
                    .users
                    .clone()
                    .add_friend(user_pb::AddFriendRequest {
                        user_id: user,
                        friend_id: friend,
                    })
                    .await
                    .map_err(|s| failure_from_status(&s, "the user service"))?;
                self.node.remember_users([friend]);
            }
            Request::CreateGroup {
                name, description, ..
            } => {
                let group = self
                    .node
                    .upstreams
                    .users
                    .clone()
                    .create_group(user_pb::CreateGroupRequest {
                        creator_id: user,
                        name,
                        description,
                    })
                    .await
                    .map_err(|s| failure_from_status(&s, "the user service"))?
                    .into_inner()
                    .group_id;
                self.node.invalidate_group(group).await;
                results.insert("groupid".into(), group.into());
            }
            Request::AddGroup { group, .. } => {
                self.node
                    .upstreams
                    .users
                    .clone()
                    .join_group(user_pb::JoinGroupRequest {
                        user_id: user,
                        group_id: group,
                    })
                    .await
                    .map_err(|s| failure_from_status(&s, "the user service"))?;
                self.node.invalidate_group(group).await;
            }
            Request::History {
                target,
                before,
                after,
                limit,
            } => {
                return conversations::history(&self.node, user, target, before, after, limit)
                    .await;
            }
            Request::Conversations { limit } => {
                return conversations::list(&self.node, user, limit).await;
            }
            Request::MarkRead { target, up_to } => {
                let owner = self.node.owner(self.connection);
                return conversations::mark_read(&self.node, user, &owner, target, up_to).await;
            }
            Request::Typing { target } => {
                let owner = self.node.owner(self.connection);
                let Some(active) = self.active.as_mut() else {
                    return Ok(results);
                };
                return conversations::typing(
                    &self.node,
                    (user, &name),
                    &owner,
                    target,
                    &mut active.typing_sent,
                )
                .await;
            }
            Request::Delivered { target, up_to } => {
                let owner = self.node.owner(self.connection);
                return conversations::delivered(&self.node, user, &owner, target, up_to).await;
            }
            Request::Roster => {
                let (friends, groups) = self.roster(user).await?;
                return Ok(classic::roster_results(&friends, &groups));
            }
            Request::Login { .. } | Request::Register { .. } | Request::Ping => {}
        }
        Ok(results)
    }

    async fn register(&mut self, name: String, password: String, seq: Option<i64>) {
        let limit = self.node.config.limits.registers_per_address;
        if let Err(failure) = self.throttle_address("register", limit).await {
            return self
                .send_failure(&failure, classic::register_failed(&failure, seq))
                .await;
        }
        let reply = self
            .node
            .upstreams
            .users
            .clone()
            .register(user_pb::RegisterRequest { name, password })
            .await;
        let frame = match reply {
            Ok(r) => {
                let id = r.into_inner().id;
                self.node.remember_users([id]);
                classic::register_ok(id, seq)
            }
            Err(status) => {
                let failure = failure_from_status(&status, "the user service");
                return self
                    .send_failure(&failure, classic::register_failed(&failure, seq))
                    .await;
            }
        };
        self.send(frame).await;
    }

    async fn login(&mut self, id: i64, password: String, acks: bool, since: u64, seq: Option<i64>) {
        if let Some(active) = &self.active {
            let failure = Failure::new(
                errno::FORBIDDEN,
                format!(
                    "this connection is already logged in as user {}; log out first",
                    active.id
                ),
            );
            return self
                .send_failure(&failure, classic::login_failed(&failure, seq))
                .await;
        }
        if acks {
            self.mark_uses_additions().await;
            self.heartbeats = true;
        }
        match self.try_login(id, password, acks, since, seq).await {
            Ok(ack) => self.finish_login(ack).await,
            Err(failure) => {
                self.send_failure(&failure, classic::login_failed(&failure, seq))
                    .await
            }
        }
    }

    async fn try_login(
        &mut self,
        id: i64,
        password: String,
        acks: bool,
        since: u64,
        seq: Option<i64>,
    ) -> Result<LoginAck, Failure> {
        let node = self.node.clone();
        self.throttle_address("login", node.config.limits.logins_per_address)
            .await?;
        self.throttle_account(id).await?;
        let user = match node
            .upstreams
            .users
            .clone()
            .login(user_pb::LoginRequest { id, password })
            .await
        {
            Ok(reply) => reply.into_inner().user.unwrap_or_default(),
            Err(status)
                if status.code() == tonic::Code::Unauthenticated
                    && !upstream::is_credential_refusal(&status) =>
            {
                self.count_failed_login(id).await;
                return Err(Failure::new(errno::BAD_REQUEST, classic::CLASSIC_BAD_LOGIN));
            }
            Err(status) => return Err(failure_from_status(&status, "the user service")),
        };
        let owner = node.owner(self.connection);
        let claimed_at = Instant::now();
        let others = match node
            .redis
            .claim_presence(user.id, &owner, acks, node.config.presence_ttl)
            .await
            .map_err(redis_unavailable)?
        {
            crate::redis::Claim::Held { others } => others,
            crate::redis::Claim::Refused => {
                return Err(Failure::new(errno::ACCOUNT_IN_USE, classic::CLASSIC_IN_USE));
            }
        };
        let peers = Arc::new(std::sync::atomic::AtomicBool::new(others > 0));
        let kick = CancellationToken::new();
        let (deliveries, queue) = mpsc::channel(node.config.limits.outbound_queue.max(1));
        let sync = Arc::new(SyncSignal::default());
        let local = LocalSession {
            connection: self.connection,
            deliveries,
            queued: QueuedBytes::new(node.config.limits.outbound_bytes),
            sync: sync.clone(),
            kick: kick.clone(),
            device: acks,
            modern: self.uses_additions,
            peers: peers.clone(),
        };
        if !node.registry.insert(user.id, local) {
            let _ = node.redis.release_presence(user.id, &owner).await;
            return Err(Failure::new(errno::ACCOUNT_IN_USE, classic::CLASSIC_IN_USE));
        }
        metrics().online_users.inc();
        self.anonymous = None;
        self.active = Some(ActiveUser {
            id: user.id,
            name: user.name.clone(),
            kick,
            device: acks,
            peers,
            typing_sent: std::collections::HashMap::new(),
        });
        // From here on, failures must undo the login: end_active does.
        // Nothing queued for the user is lost by that: it is in the inbox.
        let prepared = async {
            node.redis
                .subscribe_user(user.id)
                .await
                .map_err(redis_unavailable)?;
            if others > 0 {
                // The user's other devices start copying their chats here.
                node.redis
                    .publish_raw(&[user.id], crate::redis::DEVICE_JOINED)
                    .await;
            }
            let pending = self.pending_at_login(user.id, acks, since).await?;
            self.login_ack(&user, pending, seq).await
        };
        match prepared.await {
            Ok(mut ack) => {
                ack.inbound = Some(Box::new(Inbound {
                    node: node.clone(),
                    user: user.id,
                    acks,
                    modern: self.uses_additions,
                    cursor: ack.pending.cursor,
                    acked: ack.pending.resumed_at.max(ack.pending.delivered_floor),
                    offline_after: ack.pending.offline_after,
                    delivered_floor: ack.pending.delivered_floor,
                    claimed_at,
                    offline_acks: std::collections::VecDeque::new(),
                    recent: std::mem::take(&mut ack.pending.recent),
                    queue,
                    sync,
                    needs_sync: ack.pending.needs_sync,
                }));
                Ok(ack)
            }
            Err(failure) => {
                self.end_active().await;
                Err(failure)
            }
        }
    }

    /// What waits for the user, for the login ack: the first page of the
    /// offline store, then (if that was all of it) the inbox, within a byte
    /// budget. The offline store is read first: a move from the inbox
    /// stores before it trims, and trims only while the user has no
    /// presence, so every message is in one of the two reads.
    async fn pending_at_login(
        &self,
        user: i64,
        acks: bool,
        since: u64,
    ) -> Result<Pending, Failure> {
        const BUDGET_BYTES: usize = 256 * 1024;
        let node = &self.node;
        let offline = node
            .upstreams
            .offline
            .clone()
            .fetch(offline_pb::FetchRequest {
                receiver_id: user,
                after: 0,
                limit: node.config.offline_batch,
            })
            .await
            .map(tonic::Response::into_inner);
        let inbox = node
            .redis
            .read_inbox(user, since, node.config.offline_batch as usize)
            .await
            .map_err(redis_unavailable)?;
        // A client cannot have what was never sent.
        let mut cursor = since.min(inbox.last_seq);
        let resumed_at = cursor;
        let mut pending = Pending {
            frames: Vec::new(),
            offline_up_to: None,
            offline_gate: 0,
            offline_after: None,
            delivered_floor: inbox.delivered,
            cursor,
            resumed_at,
            needs_sync: false,
            recent: crate::delivery::writer::RecentMids::default(),
        };
        match offline {
            Ok(page) => {
                let floor = inbox.delivered.max(cursor);
                // At login, the client said what it has: `since`.
                let prepared = OfflinePage::prepare(
                    node,
                    user,
                    (acks, self.uses_additions),
                    floor,
                    floor,
                    &page.messages,
                )
                .await
                .map_err(redis_unavailable)?;
                pending.frames = prepared
                    .frames
                    .into_iter()
                    .filter(|(mid, _)| pending.recent.first_time(mid))
                    .map(|(_, frame)| frame)
                    .collect();
                pending.offline_gate = prepared.gate;
                cursor = cursor.max(prepared.gate);
                pending.offline_up_to = page.messages.last().map(|m| m.position);
                if page.more {
                    pending.offline_after = pending.offline_up_to;
                }
                if prepared.appended > 0 {
                    // Moved to the inbox after it was read: the writer
                    // reads it again once the ack is written.
                    pending.needs_sync = true;
                    pending.cursor = cursor;
                    return Ok(pending);
                }
            }
            Err(status) => {
                // Login still succeeds; the messages stay stored and are
                // handed over as soon as the offline service answers.
                tracing::warn!(code = ?status.code(), "offline fetch failed at login; will retry");
                pending.offline_after = Some(0);
            }
        }
        if pending.offline_after.is_some() {
            // The inbox comes after the rest of the offline store.
            pending.needs_sync = true;
            pending.cursor = cursor;
            return Ok(pending);
        }
        let mut bytes: usize = pending.frames.iter().map(Vec::len).sum();
        let complete = inbox.complete;
        let mut all_fit = true;
        for entry in inbox.entries {
            if entry.seq <= cursor {
                continue;
            }
            if bytes + entry.frame.len() > BUDGET_BYTES && !pending.frames.is_empty() {
                all_fit = false;
                break;
            }
            bytes += entry.frame.len();
            let seq = entry.seq;
            if pending.recent.first_time(&entry.mid) {
                pending.frames.push(delivery_frame(
                    acks,
                    self.uses_additions,
                    entry.frame,
                    &entry.mid,
                    seq,
                ));
            }
            cursor = seq;
        }
        if complete && all_fit {
            cursor = cursor.max(inbox.last_seq);
        } else {
            pending.needs_sync = true;
        }
        pending.cursor = cursor;
        Ok(pending)
    }

    /// Friends and groups with presence, and what waits for the user.
    /// The user's friends and groups (with members), each with presence:
    /// for the login ack and msgid 21.
    async fn roster(
        &self,
        user_id: i64,
    ) -> Result<(Vec<classic::FriendEntry>, Vec<classic::GroupEntry>), Failure> {
        let mut for_friends = self.node.upstreams.users.clone();
        let mut for_groups = self.node.upstreams.users.clone();
        let (friends, groups) = tokio::try_join!(
            for_friends.list_friends(user_pb::ListFriendsRequest { user_id }),
            upstream::all_user_groups(&mut for_groups, user_id),
        )
        .map_err(|s| failure_from_status(&s, "the user service"))?;
        let friends = friends.into_inner().friends;

        let mut ids: Vec<i64> = friends.iter().map(|f| f.id).collect();
        for group in &groups {
            ids.extend(
                group
                    .members
                    .iter()
                    .filter_map(|m| m.user.as_ref().map(|u| u.id)),
            );
            self.node.cache_group(
                group.id,
                group
                    .members
                    .iter()
                    .filter_map(|m| m.user.as_ref().map(|u| u.id))
                    .collect(),
            );
        }
        ids.sort_unstable();
        ids.dedup();
        self.node.remember_users(ids.iter().copied());
        let online = self
            .node
            .redis
            .online(&ids)
            .await
            .map_err(redis_unavailable)?;
        let is_online = |id: i64| ids.binary_search(&id).ok().is_some_and(|i| online[i]);

        let friends: Vec<classic::FriendEntry> = friends
            .into_iter()
            .map(|f| classic::FriendEntry {
                online: is_online(f.id),
                id: f.id,
                name: f.name,
            })
            .collect();
        let groups: Vec<classic::GroupEntry> = groups
            .into_iter()
            .map(|g| classic::GroupEntry {
                id: g.id,
                name: g.name,
                description: g.description,
                members: g
                    .members
                    .into_iter()
                    .filter_map(|m| {
                        let creator = m.role() == user_pb::GroupRole::Creator;
                        m.user.map(|u| classic::GroupMemberEntry {
                            online: is_online(u.id) || u.id == user_id,
                            id: u.id,
                            name: u.name,
                            creator,
                        })
                    })
                    .collect(),
            })
            .collect();
        Ok((friends, groups))
    }

    async fn login_ack(
        &self,
        user: &user_pb::User,
        pending: Pending,
        seq: Option<i64>,
    ) -> Result<LoginAck, Failure> {
        let (friends, groups) = self.roster(user.id).await?;
        let offline: Vec<String> = pending
            .frames
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        let friends: Vec<String> = friends.iter().map(classic::friend_json).collect();
        let groups: Vec<String> = groups.iter().map(classic::group_json).collect();
        // A classic client gets everything in the ack; one that uses the
        // additions gets it in frames of a bounded size.
        let budget = if self.uses_additions {
            ROSTER_PAGE_BYTES
        } else {
            usize::MAX
        };
        let mut pages = roster_pages(friends, groups, budget).into_iter();
        let (friends, groups) = pages.next().unwrap_or_default();
        let more = pages.len() > 0;
        let frame =
            classic::login_ok_with(user.id, &user.name, friends, groups, &offline, seq, more);
        let last = pages.len();
        let roster_pages = pages
            .enumerate()
            .map(|(i, (friends, groups))| classic::roster_page(friends, groups, i + 1 < last))
            .collect();
        Ok(LoginAck {
            frame,
            roster_pages,
            user_id: user.id,
            pending,
            inbound: None,
        })
    }

    async fn finish_login(&mut self, mut ack: LoginAck) {
        let written = self.send_confirmed(ack.frame).await;
        if !written {
            return;
        }
        for page in std::mem::take(&mut ack.roster_pages) {
            self.send(page).await;
        }
        tracing::info!(
            user = ack.user_id,
            connection = self.connection,
            client = %self.client,
            "logged in"
        );
        let pending = &ack.pending;
        metrics()
            .offline_delivered
            .inc_by(pending.frames.len() as u64);
        let Some(mut inbound) = ack.inbound else {
            return;
        };
        if let Some(up_to) = pending.offline_up_to {
            if inbound.acks && pending.offline_gate > 0 {
                inbound
                    .offline_acks
                    .push_back((pending.offline_gate, up_to));
            } else {
                acknowledge_offline(&self.node, ack.user_id, up_to).await;
            }
        }
        // Classic clients: what the ack carried was delivered. Clients that
        // acknowledge: what they said they have (`since`).
        let delivered = if inbound.acks {
            pending.resumed_at
        } else {
            pending.cursor
        };
        self.node.note_delivered(ack.user_id, delivered);
        let _ = self.writer.send(WriterCommand::Attach(inbound)).await;
    }

    /// Ends the logged-in session (logout, disconnect, kick, shutdown): no
    /// new deliveries and the user is free to log in anywhere. What was
    /// queued but not written is still in the user's inbox.
    async fn end_active(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        let node = &self.node;
        // The node stays subscribed while another of the user's devices is here.
        node.registry.remove(active.id, self.connection, || {
            node.redis.unsubscribe_user(active.id);
        });
        metrics().online_users.dec();
        active.kick.cancel();
        let (done, stopped) = oneshot::channel();
        if self.writer.send(WriterCommand::Detach(done)).await.is_ok() {
            // A writer stuck on a client that stopped reading must not keep
            // the user locked: stop waiting after a moment.
            let _ = tokio::time::timeout(Duration::from_secs(2), stopped).await;
        }
        if let Err(e) = node
            .redis
            .release_presence(active.id, &node.owner(self.connection))
            .await
        {
            tracing::warn!(error = %e, user = active.id, "cannot release presence; it expires by itself");
        }
        tracing::info!(
            user = active.id,
            connection = self.connection,
            "session ended"
        );
    }
}

/// `failed` of a group chat's results, as one failure naming the members.
fn partial_failure(results: &Map<String, Value>) -> Option<Failure> {
    let failed = results.get("failed")?.as_array()?;
    let first = failed.first()?;
    let ids: Vec<String> = failed.iter().map(|f| f["id"].to_string()).collect();
    Some(Failure::new(
        first["errno"].as_i64().unwrap_or(errno::INTERNAL),
        format!(
            "delivered to the group except members {}: {}",
            ids.join(", "),
            first["errmsg"].as_str().unwrap_or("not accepted")
        ),
    ))
}

/// Encoded friends and groups in one frame, for a client that uses the
/// additions: what does not fit follows in roster pages.
const ROSTER_PAGE_BYTES: usize = 256 * 1024;

/// Friends, then groups, in pages of at most `budget` bytes of entries (at
/// least one entry each); always at least one page.
fn roster_pages(
    friends: Vec<String>,
    groups: Vec<String>,
    budget: usize,
) -> Vec<(Vec<String>, Vec<String>)> {
    let mut pages: Vec<(Vec<String>, Vec<String>)> = vec![Default::default()];
    let mut bytes = 0usize;
    let entries = friends
        .into_iter()
        .map(|f| (false, f))
        .chain(groups.into_iter().map(|g| (true, g)));
    for (is_group, entry) in entries {
        let page_empty = pages
            .last()
            .is_none_or(|(f, g)| f.is_empty() && g.is_empty());
        if bytes.saturating_add(entry.len()) > budget && !page_empty {
            pages.push(Default::default());
            bytes = 0;
        }
        bytes = bytes.saturating_add(entry.len());
        if let Some((f, g)) = pages.last_mut() {
            if is_group {
                g.push(entry)
            } else {
                f.push(entry)
            }
        }
    }
    pages
}

/// Sleeps until `when`, or forever when there is none.
async fn sleep_until_some(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}

/// A throttle's refusal (counted as `why`), to retry once `left` has passed:
/// `say` words it from the whole seconds to wait.
fn throttled(why: &'static str, left: Duration, say: impl FnOnce(u64) -> String) -> Failure {
    metrics().refused.get_or_create(&label("why", why)).inc();
    let seconds = u64::try_from(left.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1);
    Failure::throttled(say(seconds), seconds)
}

/// Login and register throttles, counted in Redis for the whole cluster.
/// When Redis cannot count, the attempt is let through (a login needs Redis
/// for presence anyway) and the failure logged.
impl Session {
    /// Counts a `what` attempt from the client's address; refused past `limit`
    /// per window.
    async fn throttle_address(&self, what: &str, limit: u32) -> Result<(), Failure> {
        let ip = ClientAddress::of(self.client.ip());
        let window = self.node.config.limits.throttle_window;
        match self
            .node
            .redis
            .throttle(&format!("{what}:a:{ip}"), window, true)
            .await
        {
            Ok((count, left)) if count > u64::from(limit) => {
                tracing::info!(%ip, what, count, "throttled an address");
                Err(throttled("throttle_address", left, |seconds| {
                    format!("too many {what} attempts from {ip}; retry in {seconds} s")
                }))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot count {what} attempts; letting it through");
                Ok(())
            }
        }
    }

    /// Refused while the account has had too many failed logins this window
    /// (whatever the password now: that is what stops guessing).
    async fn throttle_account(&self, user: i64) -> Result<(), Failure> {
        let limits = &self.node.config.limits;
        match self
            .node
            .redis
            .throttle(&format!("fail:u:{user}"), limits.throttle_window, false)
            .await
        {
            Ok((failures, left)) if failures >= u64::from(limits.login_failures_per_account) => {
                tracing::info!(user, failures, "throttled an account");
                Err(throttled("throttle_account", left, |seconds| {
                    format!("too many failed logins for user {user}; retry in {seconds} s")
                }))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read failed logins; letting it through");
                Ok(())
            }
        }
    }

    async fn count_failed_login(&self, user: i64) {
        let window = self.node.config.limits.throttle_window;
        if let Err(e) = self
            .node
            .redis
            .throttle(&format!("fail:u:{user}"), window, true)
            .await
        {
            tracing::warn!(error = %e, "cannot count a failed login");
        }
    }
}

fn redis_unavailable(e: crate::redis::RedisError) -> Failure {
    tracing::warn!(error = %e, "cannot reach redis");
    Failure::new(
        errno::UNAVAILABLE,
        "the chat cluster is temporarily unavailable; try again",
    )
}

/// What waits for a user at login.
struct Pending {
    /// Frames for the login ack's `offlinemsg`, oldest first.
    frames: Vec<Vec<u8>>,
    /// The last offline-store position among them (acknowledged once
    /// written, or for a client that acknowledges, once it acknowledged
    /// `offline_gate`).
    offline_up_to: Option<u64>,
    offline_gate: u64,
    /// Where the writer continues in the offline store; `None`: drained.
    offline_after: Option<u64>,
    delivered_floor: u64,
    /// The highest inbox sequence the client has after the ack.
    cursor: u64,
    /// What a resuming client said it has (clamped).
    resumed_at: u64,
    /// More waits than the ack carries.
    needs_sync: bool,
    /// Message ids in `frames`: the writer goes on from here.
    recent: crate::delivery::writer::RecentMids,
}

struct LoginAck {
    frame: Vec<u8>,
    /// The rest of the friends and groups (msgid 15), after the ack.
    roster_pages: Vec<Vec<u8>>,
    user_id: i64,
    pending: Pending,
    inbound: Option<Box<Inbound>>,
}

fn request_kind(request: &Request) -> &'static str {
    match request {
        Request::Login { .. } => "login",
        Request::Logout { .. } => "logout",
        Request::Register { .. } => "register",
        Request::OneChat { .. } => "chat",
        Request::AddFriend { .. } => "add_friend",
        Request::CreateGroup { .. } => "create_group",
        Request::AddGroup { .. } => "join_group",
        Request::GroupChat { .. } => "group_chat",
        Request::Ack { .. } => "ack",
        Request::Ping => "ping",
        Request::History { .. } => "history",
        Request::Conversations { .. } => "conversations",
        Request::MarkRead { .. } => "mark_read",
        Request::Typing { .. } => "typing",
        Request::Delivered { .. } => "delivered",
        Request::Roster => "roster",
    }
}

/// The classic `time` format, "YYYY-MM-DD HH:MM:SS", in UTC.
pub fn classic_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

fn format_utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_time_format() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_795_609_815), "2026-11-25 12:30:15");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn a_long_roster_is_paged_friends_first_each_page_within_budget() {
        let friends: Vec<String> = (0..3).map(|i| format!("f{i}-{}", "x".repeat(40))).collect();
        let groups: Vec<String> = (0..5).map(|i| format!("g{i}-{}", "y".repeat(90))).collect();
        let pages = roster_pages(friends.clone(), groups.clone(), 150);
        for (f, g) in &pages {
            let bytes: usize = f.iter().chain(g).map(String::len).sum();
            assert!(bytes <= 150 || f.len() + g.len() == 1, "{bytes}");
        }
        let all_friends: Vec<String> = pages.iter().flat_map(|(f, _)| f.clone()).collect();
        let all_groups: Vec<String> = pages.iter().flat_map(|(_, g)| g.clone()).collect();
        assert_eq!((all_friends, all_groups), (friends.clone(), groups.clone()));
        assert!(pages.len() > 3);
        assert_eq!(
            roster_pages(friends, groups, usize::MAX).len(),
            1,
            "classic: one frame"
        );
        assert_eq!(
            roster_pages(Vec::new(), Vec::new(), 10).len(),
            1,
            "an empty roster is one page"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_paces_instead_of_refusing() {
        let mut limiter = RateLimiter::new(10, 2);
        assert_eq!(limiter.take(1), Duration::ZERO);
        assert_eq!(limiter.take(1), Duration::ZERO);
        // The third waits for one refill, the fourth for two.
        assert_eq!(limiter.take(1), Duration::from_millis(100));
        assert_eq!(limiter.take(1), Duration::from_millis(200));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(limiter.take(1), Duration::from_millis(100));
        // A fan-out of 20 tokens waits for all of them to refill.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(limiter.take(20), Duration::from_secs(2));
        assert_eq!(
            limiter.take(0),
            Duration::from_secs(2),
            "free, but queued behind"
        );
    }
}
