//! One client connection, whatever its transport: the request loop (reader)
//! and the writer task that owns the socket's sending half.
//!
//! A connection acts only as the user who logged in on it: before login only
//! register and login are accepted, an `id` in a request must be that user's,
//! and the identity receivers see is the server's.
//!
//! The writer serves two queues: replies to this client's own requests, and
//! deliveries (chats from others). Deliveries start flowing only after the
//! login ack was written, so the ack is always the first thing a client sees
//! after login; offline messages are acknowledged to the offline service only
//! after the frame carrying them reached the socket.

use std::{future::Future, io, sync::Arc, time::Duration};

use clusterchat_proto::{offline::v1 as offline_pb, user::v1 as user_pb};
use serde_json::{Map, Value};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    metrics::{label, metrics},
    node::Node,
    protocol::{
        classic::{self, Failure, Request, errno},
        framing::{Frame, FrameError},
    },
    registry::{Delivery, LocalSession},
    upstream::failure_from_status,
};

/// The receiving half of a transport: complete frames, `None` at the end.
pub trait FrameSource: Send {
    fn next_frame(&mut self) -> impl Future<Output = Option<Frame>> + Send;
}

/// The sending half of a transport.
pub trait FrameSink: Send + 'static {
    fn send(&mut self, frame: Vec<u8>) -> impl Future<Output = io::Result<()>> + Send;
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

enum WriterCommand {
    Frame(Vec<u8>),
    /// Write and flush, then say whether it reached the socket.
    Confirmed(Vec<u8>, oneshot::Sender<bool>),
    /// Start writing deliveries from this queue.
    Attach(mpsc::Receiver<Delivery>),
    /// Stop taking deliveries; hand back every one not written.
    Detach(oneshot::Sender<Vec<Delivery>>),
}

/// Writes until every command sender is gone. After a write error it keeps
/// running in "broken" mode so that undelivered deliveries can still be
/// collected with `Detach` and stored offline.
async fn run_writer<W: FrameSink>(mut sink: W, mut commands: mpsc::Receiver<WriterCommand>) {
    let mut deliveries: Option<mpsc::Receiver<Delivery>> = None;
    let mut failed: Vec<Delivery> = Vec::new();
    let mut broken = false;
    loop {
        let next_delivery = async {
            match deliveries.as_mut() {
                Some(rx) if !broken => rx.recv().await,
                _ => std::future::pending().await,
            }
        };
        enum Event {
            Command(Option<WriterCommand>),
            Delivery(Option<Delivery>),
        }
        let event = tokio::select! {
            biased;
            command = commands.recv() => Event::Command(command),
            delivery = next_delivery => Event::Delivery(delivery),
        };
        match event {
            Event::Command(None) => break,
            Event::Command(Some(WriterCommand::Frame(frame))) => {
                if !broken && sink.send(frame).await.is_err() {
                    broken = true;
                }
            }
            Event::Command(Some(WriterCommand::Confirmed(frame, done))) => {
                let ok = !broken && sink.send(frame).await.is_ok() && sink.flush().await.is_ok();
                broken |= !ok;
                let _ = done.send(ok);
            }
            Event::Command(Some(WriterCommand::Attach(rx))) => deliveries = Some(rx),
            Event::Command(Some(WriterCommand::Detach(done))) => {
                let mut rest = std::mem::take(&mut failed);
                if let Some(mut rx) = deliveries.take() {
                    rx.close();
                    while let Ok(d) = rx.try_recv() {
                        rest.push(d);
                    }
                }
                let _ = done.send(rest);
            }
            Event::Delivery(None) => deliveries = None,
            Event::Delivery(Some(delivery)) => {
                if sink.send(delivery.frame.clone()).await.is_err() {
                    broken = true;
                    failed.push(delivery);
                }
            }
        }
        let idle = commands.is_empty() && deliveries.as_ref().is_none_or(|rx| rx.is_empty());
        if idle && !broken && sink.flush().await.is_err() {
            broken = true;
        }
    }
}

struct ActiveUser {
    id: i64,
    name: String,
    kick: CancellationToken,
}

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
            per_sec: f64::from(per_sec),
            burst: f64::from(burst),
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_sec)
            .min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct Session {
    node: Arc<Node>,
    connection: u64,
    writer: mpsc::Sender<WriterCommand>,
    active: Option<ActiveUser>,
    limiter: RateLimiter,
}

/// Runs a connection to its end: requests until the client leaves, its
/// session is taken over, or the node shuts down; then cleans up.
pub async fn run<R: FrameSource, W: FrameSink>(node: Arc<Node>, mut source: R, sink: W) {
    let (writer, commands) = mpsc::channel(64);
    let writer_task = tokio::spawn(run_writer(sink, commands));
    let limits = &node.config.limits;
    let mut session = Session {
        connection: node.next_id(),
        limiter: RateLimiter::new(limits.rate_per_sec, limits.rate_burst),
        node: node.clone(),
        writer,
        active: None,
    };
    loop {
        let kicked = session.active.as_ref().map(|a| a.kick.clone());
        let kicked = async {
            match kicked {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = source.next_frame() => match frame {
                // Boxed: the request path (login's gRPC calls ...) is a large
                // future; inline it would make every idle connection's task
                // that large.
                Some(frame) => Box::pin(session.handle_frame(frame)).await,
                None => break,
            },
            _ = kicked => break,
            _ = node.shutdown.requested() => break,
        }
    }
    session.end_active().await;
    drop(session);
    let _ = writer_task.await;
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

    async fn handle_frame(&mut self, frame: Frame) {
        let bytes = match frame {
            Frame::Value(bytes) => bytes,
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
        let parsed = classic::parse(&bytes);
        if !self.limiter.allow() {
            let failure = Failure::new(
                errno::RATE_LIMITED,
                "too many requests; this one was not processed, slow down",
            );
            return self
                .send_failure(&failure, classic::reply_error(&failure, parsed.seq))
                .await;
        }
        let seq = parsed.seq;
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
            Request::Login { id, password } => self.login(id, password, seq).await,
            Request::Register { name, password } => self.register(name, password, seq).await,
            other => {
                let result = match self.authorize(&other) {
                    Ok(user) => self.handle_as(user, other).await,
                    Err(failure) => Err(failure),
                };
                match (result, seq) {
                    (Ok(results), Some(seq)) => self.send(classic::reply_ok(seq, results)).await,
                    (Ok(_), None) => {}
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
            Request::Login { .. } | Request::Register { .. } => None,
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

    async fn handle_as(
        &mut self,
        (user, name): (i64, String),
        request: Request,
    ) -> Result<Map<String, Value>, Failure> {
        let mut results = Map::new();
        match request {
            Request::Logout { .. } => self.end_active().await,
            Request::OneChat { to, body, .. } => {
                if !self.node.user_exists(to).await? {
                    return Err(Failure::new(
                        errno::NOT_FOUND,
                        format!("user {to} does not exist"),
                    ));
                }
                let frame = classic::forward_chat(body, user, &name, &classic_now());
                self.node.deliver(&[to], user, &frame).await?;
            }
            Request::GroupChat { group, body, .. } => {
                let members = self.node.group_members(group).await?;
                if !members.contains(&user) {
                    return Err(Failure::new(
                        errno::FORBIDDEN,
                        format!("you are not a member of group {group}"),
                    ));
                }
                let receivers: Vec<i64> = members.iter().copied().filter(|m| *m != user).collect();
                let frame = classic::forward_chat(body, user, &name, &classic_now());
                self.node.deliver(&receivers, user, &frame).await?;
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
            Request::Login { .. } | Request::Register { .. } => {}
        }
        Ok(results)
    }

    async fn register(&mut self, name: String, password: String, seq: Option<i64>) {
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

    async fn login(&mut self, id: i64, password: String, seq: Option<i64>) {
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
        match self.try_login(id, password, seq).await {
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
        seq: Option<i64>,
    ) -> Result<LoginAck, Failure> {
        let node = self.node.clone();
        let user = match node
            .upstreams
            .users
            .clone()
            .login(user_pb::LoginRequest { id, password })
            .await
        {
            Ok(reply) => reply.into_inner().user.unwrap_or_default(),
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                return Err(Failure::new(errno::BAD_REQUEST, classic::CLASSIC_BAD_LOGIN));
            }
            Err(status) => return Err(failure_from_status(&status, "the user service")),
        };
        let owner = node.owner(self.connection);
        let unavailable = |e: crate::cluster::ClusterError| {
            tracing::warn!(error = %e, "login cannot reach redis");
            Failure::new(
                errno::UNAVAILABLE,
                "the chat cluster is temporarily unavailable; try again",
            )
        };
        if !node
            .cluster
            .claim_presence(user.id, &owner, node.config.presence_ttl)
            .await
            .map_err(unavailable)?
        {
            return Err(Failure::new(errno::ACCOUNT_IN_USE, classic::CLASSIC_IN_USE));
        }
        let kick = CancellationToken::new();
        let (deliveries, queue) = mpsc::channel(node.config.limits.outbound_queue.max(1));
        let local = LocalSession {
            connection: self.connection,
            deliveries,
            kick: kick.clone(),
        };
        if !node.registry.insert(user.id, local) {
            let _ = node.cluster.release_presence(user.id, &owner).await;
            return Err(Failure::new(errno::ACCOUNT_IN_USE, classic::CLASSIC_IN_USE));
        }
        metrics().online_users.inc();
        self.active = Some(ActiveUser {
            id: user.id,
            name: user.name.clone(),
            kick,
        });
        // From here on, failures must undo the login: end_active does.
        let prepared = async {
            node.cluster
                .subscribe_user(user.id)
                .await
                .map_err(unavailable)?;
            self.login_ack(&user, queue, seq).await
        };
        match prepared.await {
            Ok(ack) => Ok(ack),
            Err(failure) => {
                self.end_active().await;
                Err(failure)
            }
        }
    }

    /// Friends and groups with presence, and the first page of offline messages.
    async fn login_ack(
        &self,
        user: &user_pb::User,
        queue: mpsc::Receiver<Delivery>,
        seq: Option<i64>,
    ) -> Result<LoginAck, Failure> {
        let mut for_friends = self.node.upstreams.users.clone();
        let mut for_groups = self.node.upstreams.users.clone();
        let (friends, groups) = tokio::try_join!(
            for_friends.list_friends(user_pb::ListFriendsRequest { user_id: user.id }),
            for_groups.list_user_groups(user_pb::ListUserGroupsRequest { user_id: user.id }),
        )
        .map_err(|s| failure_from_status(&s, "the user service"))?;
        let friends = friends.into_inner().friends;
        let groups = groups.into_inner().groups;

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
        let online = self.node.cluster.online(&ids).await.map_err(|e| {
            tracing::warn!(error = %e, "login cannot read presence");
            Failure::new(
                errno::UNAVAILABLE,
                "the chat cluster is temporarily unavailable; try again",
            )
        })?;
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
                            online: is_online(u.id) || u.id == user.id,
                            id: u.id,
                            name: u.name,
                            creator,
                        })
                    })
                    .collect(),
            })
            .collect();

        let offline = self
            .node
            .upstreams
            .offline
            .clone()
            .fetch(offline_pb::FetchRequest {
                receiver_id: user.id,
                after: 0,
                limit: self.node.config.offline_batch,
            })
            .await
            .map(|r| r.into_inner());
        let (offline, backlog) = match offline {
            Ok(page) => (page.messages, page.more),
            Err(status) => {
                // Login still succeeds; the messages stay stored and are
                // handed over as soon as the offline service answers.
                tracing::warn!(code = ?status.code(), "offline fetch failed at login; will retry");
                (Vec::new(), true)
            }
        };
        let frame = classic::login_ok(
            user.id,
            &user.name,
            &friends,
            &groups,
            &offline
                .iter()
                .map(|m| m.payload.clone())
                .collect::<Vec<_>>(),
            seq,
        );
        Ok(LoginAck {
            frame,
            user_id: user.id,
            up_to: offline.last().map(|m| m.position),
            offline_count: offline.len() as u64,
            backlog,
            queue,
        })
    }

    async fn finish_login(&mut self, ack: LoginAck) {
        let written = self.send_confirmed(ack.frame).await;
        let _ = self.writer.send(WriterCommand::Attach(ack.queue)).await;
        if !written {
            return;
        }
        tracing::info!(
            user = ack.user_id,
            connection = self.connection,
            "logged in"
        );
        metrics().offline_delivered.inc_by(ack.offline_count);
        if let Some(up_to) = ack.up_to {
            acknowledge_offline(&self.node, ack.user_id, up_to).await;
        }
        if ack.backlog {
            let Some(active) = &self.active else { return };
            let node = self.node.clone();
            let writer = self.writer.clone();
            let kick = active.kick.clone();
            let after = ack.up_to.unwrap_or(0);
            self.node
                .tasks
                .spawn(hand_over_backlog(node, writer, kick, ack.user_id, after));
        }
    }

    /// Ends the logged-in session (logout, disconnect, kick, shutdown):
    /// no new deliveries, what was queued but not written goes offline, and
    /// the user is free to log in anywhere.
    async fn end_active(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        let node = &self.node;
        node.registry.remove(active.id, self.connection);
        metrics().online_users.dec();
        node.cluster.unsubscribe_user(active.id);
        active.kick.cancel();
        let (done, rest) = oneshot::channel();
        let undelivered = if self.writer.send(WriterCommand::Detach(done)).await.is_ok() {
            rest.await.unwrap_or_default()
        } else {
            Vec::new()
        };
        for delivery in undelivered {
            node.store_offline_until_done(active.id, delivery).await;
        }
        if let Err(e) = node
            .cluster
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

struct LoginAck {
    frame: Vec<u8>,
    user_id: i64,
    up_to: Option<u64>,
    offline_count: u64,
    backlog: bool,
    queue: mpsc::Receiver<Delivery>,
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
    }
}

async fn acknowledge_offline(node: &Node, user: i64, up_to: u64) {
    let request = offline_pb::AckRequest {
        receiver_id: user,
        up_to,
    };
    for attempt in 1..=3u64 {
        match node.upstreams.offline.clone().ack(request).await {
            Ok(_) => return,
            Err(status) => {
                tracing::warn!(user, attempt, code = ?status.code(), "offline ack failed");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
        }
    }
    // Not acknowledged: the messages stay stored and come again at the next
    // login. A duplicate is better than a loss.
}

/// Offline messages beyond the first page (or all of them, when the offline
/// service did not answer at login), written as ordinary chat frames, each
/// page acknowledged once it reached the socket.
async fn hand_over_backlog(
    node: Arc<Node>,
    writer: mpsc::Sender<WriterCommand>,
    kick: CancellationToken,
    user: i64,
    mut after: u64,
) {
    let mut delay = Duration::from_millis(500);
    loop {
        if kick.is_cancelled() || node.shutdown.is_requested() {
            return;
        }
        let page = node
            .upstreams
            .offline
            .clone()
            .fetch(offline_pb::FetchRequest {
                receiver_id: user,
                after,
                limit: node.config.offline_batch,
            })
            .await;
        let page = match page {
            Ok(page) => page.into_inner(),
            Err(status) => {
                tracing::warn!(user, code = ?status.code(), "offline fetch failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = kick.cancelled() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let Some(last) = page.messages.last().map(|m| m.position) else {
            return;
        };
        let count = page.messages.len();
        for (i, message) in page.messages.into_iter().enumerate() {
            let frame = message.payload.into_bytes();
            if i + 1 < count {
                if writer.send(WriterCommand::Frame(frame)).await.is_err() {
                    return;
                }
            } else {
                let (done, written) = oneshot::channel();
                if writer
                    .send(WriterCommand::Confirmed(frame, done))
                    .await
                    .is_err()
                    || !written.await.unwrap_or(false)
                {
                    return;
                }
            }
        }
        metrics().offline_delivered.inc_by(count as u64);
        acknowledge_offline(&node, user, last).await;
        after = last;
        if !page.more {
            return;
        }
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

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_refills_over_time() {
        let mut limiter = RateLimiter::new(10, 2);
        assert!(limiter.allow());
        assert!(limiter.allow());
        assert!(!limiter.allow());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(limiter.allow());
        assert!(!limiter.allow());
    }
}
