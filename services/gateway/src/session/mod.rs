//! One client connection, whatever its transport: the request loop (read,
//! pace, authorize, dispatch), with a room per request kind beside it:
//! `login` (register, login, logout), `account` (session tokens, logging
//! out everywhere, a new password), `chat`, `social` (friends and
//! groups), `roster`, `presence`, `conversations` (history, read marks, typing,
//! receipts); `throttle` and `rate` pace them. The writer task
//! (`delivery::writer`) owns the socket's sending half.
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
//! account, across the cluster (errno 7 with `retry_after`). WebSocket
//! connections and clients that acknowledge are closed when they have been
//! silent for the idle timeout (they are pinged, or ping, more often than
//! that); classic TCP relies on TCP keepalive.

mod account;
mod chat;
pub mod conversations;
mod login;
mod presence;
mod rate;
mod roster;
mod social;
mod throttle;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use serde_json::{Map, Value};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    delivery::writer::{FrameSink, WriterCommand, run_writer},
    metrics::{label, metrics},
    node::{
        Node,
        admission::{AnonymousSlot, ClientAddress},
    },
    protocol::{
        classic::{self, Failure, Request, errno},
        client::ClientKind,
        framing::{Frame, FrameError},
    },
};

pub use chat::classic_now;

use self::{chat::partial_failure, rate::RateLimiter};

/// Chats of a burst recorded together at most (`handle_frames`).
const MAX_BURST: usize = 32;

/// The receiving half of a transport: complete frames, `None` at the end.
pub trait FrameSource: Send {
    fn next_frame(&mut self) -> impl Future<Output = Option<Frame>> + Send;

    /// A frame already read and split (the rest of a burst the client
    /// wrote at once), without waiting; `None` when none is.
    fn try_next_frame(&mut self) -> Option<Frame> {
        None
    }

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
    /// A device session (shares the user with the user's other devices),
    /// or not.
    kind: ClientKind,
    /// Other sessions of the user exist: a chat sent here goes to them too.
    peers: Arc<std::sync::atomic::AtomicBool>,
    /// The session token this connection logged in with or was given
    /// (`"remember":true`): logging out ends it.
    token: Option<String>,
    /// Set when the session is ended by the user from elsewhere (log out
    /// everywhere, a new password): its client is told as it closes.
    signed_out: Arc<std::sync::atomic::AtomicBool>,
    /// Conversations this session last said "typing" in, and when.
    typing_sent: std::collections::HashMap<crate::protocol::conversation::Conversation, Instant>,
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
    /// What the client has shown itself to be so far: classic until it
    /// uses an addition (seq, acks ...), from when frames may share a write
    /// (classic clients get one frame per write). A login with `acks` makes
    /// its session a device (`ActiveUser::kind`).
    kind: ClientKind,
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
        connection: node.registry.next_connection(),
        client,
        anonymous: None,
        limiter: RateLimiter::new(limits.rate_per_sec, limits.rate_burst),
        node: node.clone(),
        writer,
        active: None,
        kind: match transport {
            Transport::Tcp => ClientKind::Classic,
            Transport::WebSocket => ClientKind::Additions,
        },
        heartbeats: transport == Transport::WebSocket,
    };
    let idle_timeout = node.config.idle_timeout;
    let mut heard = Instant::now();
    let mut beat = tokio::time::interval(idle_timeout / 4);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let login_deadline = node.config.login_deadline;
    // Since when the connection has had nobody logged in.
    let mut anonymous_since = Some(Instant::now());
    // A frame read while collecting a burst that did not join it: the next
    // to handle.
    let mut stash: Option<Frame> = None;
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
        let signed_out = session.active.as_ref().map(|a| a.signed_out.clone());
        let kicked = async {
            match kicked {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        if let Some(frame) = stash.take() {
            Box::pin(session.handle_frames(frame, &mut source, &mut stash)).await;
            continue;
        }
        tokio::select! {
            frame = source.next_frame() => match frame {
                Some(frame) => {
                    heard = Instant::now();
                    // Boxed: the request path (login's gRPC calls ...) is a
                    // large future; inline it would make every idle
                    // connection's task that large.
                    Box::pin(session.handle_frames(frame, &mut source, &mut stash)).await;
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
            _ = kicked => {
                // Ended by the user from elsewhere: say so before closing.
                if signed_out.is_some_and(|s| s.load(std::sync::atomic::Ordering::Acquire))
                    && session.kind.uses_additions()
                {
                    session
                        .send(classic::signed_out("you were logged out everywhere: log in again"))
                        .await;
                }
                break;
            }
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
        if !self.kind.uses_additions() {
            self.kind = ClientKind::Additions;
            let _ = self.writer.send(WriterCommand::AllowBatching).await;
        }
    }

    /// Handles `frame`, and with it the frames already read behind it
    /// when they make a burst: one-to-one chats to the same receiver,
    /// each with a token free. A burst's chats are recorded together
    /// (`send::deliver_unit`), and answered in order. The first frame
    /// read that does not join goes to `stash`, to be handled next.
    async fn handle_frames<R: FrameSource>(
        &mut self,
        frame: Frame,
        source: &mut R,
        stash: &mut Option<Frame>,
    ) {
        let Some((request, seq)) = self.accept(frame).await else {
            return;
        };
        let to = match &request {
            Request::OneChat { to, .. } if self.authorize(&request).is_ok() => *to,
            _ => return self.handle_request(request, seq).await,
        };
        let mut burst = vec![(request, seq)];
        while burst.len() < MAX_BURST {
            let Some(frame) = source.try_next_frame() else {
                break;
            };
            match self.joins_burst(frame, to).await {
                Ok(joined) => burst.push(joined),
                Err(frame) => {
                    *stash = Some(frame);
                    break;
                }
            }
        }
        if burst.len() == 1 {
            let (request, seq) = burst.remove(0);
            return self.handle_request(request, seq).await;
        }
        self.serve_burst(to, burst).await;
    }

    /// `frame`, when it joins a burst of chats to `to`: a one-to-one chat
    /// to them this connection may send, with a token free now (one that
    /// must wait is handled on its own, after the burst). Else the frame,
    /// untouched.
    async fn joins_burst(
        &mut self,
        frame: Frame,
        to: i64,
    ) -> Result<(Request, Option<i64>), Frame> {
        let Frame::Value(bytes) = &frame else {
            return Err(frame);
        };
        let parsed = classic::parse(bytes);
        let request = match parsed.request {
            Ok(request @ Request::OneChat { to: receiver, .. })
                if receiver == to && self.authorize(&request).is_ok() =>
            {
                request
            }
            _ => return Err(frame),
        };
        if !self.limiter.try_take() {
            return Err(frame);
        }
        if parsed.seq.is_some() {
            self.mark_uses_additions().await;
        }
        metrics()
            .requests
            .get_or_create(&label("kind", request_kind(&request)))
            .inc();
        Ok((request, parsed.seq))
    }

    /// A burst of one-to-one chats to `to`, each checked by `authorize`.
    async fn serve_burst(&mut self, to: i64, burst: Vec<(Request, Option<i64>)>) {
        let Some(active) = &self.active else {
            return;
        };
        let (user, name) = (active.id, active.name.clone());
        let spans: Vec<tracing::Span> = burst
            .iter()
            .map(|_| {
                tracing::info_span!(
                    "chat.request",
                    otel.name = "chat",
                    otel.kind = "server",
                    user,
                    connection = self.connection,
                )
            })
            .collect();
        let mut seqs = Vec::with_capacity(burst.len());
        let mut chats = Vec::with_capacity(burst.len());
        for (request, seq) in burst {
            if let Request::OneChat { body, cmid, .. } = request {
                chats.push((body, cmid));
                seqs.push(seq);
            }
        }
        let results = self.one_chats((user, &name), to, chats, &spans).await;
        for ((result, seq), span) in results.into_iter().zip(seqs).zip(spans) {
            self.answer(result, seq).instrument(span).await;
        }
    }

    /// What every frame goes through before its request is served: its
    /// size and shape, the connection's pace, parsing. Answers a frame that
    /// fails them; else returns its request and `seq`.
    async fn accept(&mut self, frame: Frame) -> Option<(Request, Option<i64>)> {
        let bytes = match frame {
            Frame::Value(bytes) => bytes,
            Frame::Heartbeat => return None,
            Frame::Invalid(FrameError::TooLarge { max }) => {
                let failure = Failure::new(
                    errno::TOO_LARGE,
                    format!("request larger than {max} bytes; it was discarded"),
                );
                self.send_failure(&failure, classic::reply_error(&failure, None))
                    .await;
                return None;
            }
            Frame::Invalid(FrameError::NotAnObject) => {
                let failure = Failure::bad_request(
                    "expected a JSON object; the bytes before the next request were skipped",
                );
                self.send_failure(&failure, classic::reply_error(&failure, None))
                    .await;
                return None;
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
                self.send_failure(&failure, reply).await;
                return None;
            }
        };
        metrics()
            .requests
            .get_or_create(&label("kind", request_kind(&request)))
            .inc();
        Some((request, seq))
    }

    async fn handle_request(&mut self, request: Request, seq: Option<i64>) {
        let kind = request_kind(&request);
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
                credential,
                options,
            } => self.login(id, credential, options, seq).await,
            Request::Register { name, password } => self.register(name, password, seq).await,
            Request::Ping => {
                self.mark_uses_additions().await;
                self.send(classic::pong(seq)).await;
            }
            other => {
                let result = match self.authorize(&other) {
                    Ok(user) => self.serve(user, other).await,
                    Err(failure) => Err(failure),
                };
                self.answer(result, seq).await;
            }
        }
    }

    /// Answers a served request: its results (with `seq`), or its failure.
    async fn answer(&self, result: Result<Map<String, Value>, Failure>, seq: Option<i64>) {
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
            | Request::LogoutEverywhere
            | Request::ChangePassword { .. }
            | Request::RemoveFriend { .. }
            | Request::Block { .. }
            | Request::LeaveGroup { .. }
            | Request::GroupMembers { .. }
            | Request::RenameGroup { .. }
            | Request::Search { .. }
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

    /// Serves a request of the logged-in user (`authorize` said it may act
    /// as them): each kind in its room.
    async fn serve(
        &mut self,
        (user, name): (i64, String),
        request: Request,
    ) -> Result<Map<String, Value>, Failure> {
        match request {
            Request::Logout { .. } => {
                self.end_token().await;
                self.end_active().await;
                Ok(Map::new())
            }
            Request::LogoutEverywhere => self.logout_everywhere(user).await,
            Request::RemoveFriend { friend } => self.remove_friend(user, friend).await,
            Request::Block { user: other, on } => self.block(user, other, on).await,
            Request::LeaveGroup { group } => self.leave_group(user, group).await,
            Request::GroupMembers { group } => self.group_members(user, group).await,
            Request::RenameGroup {
                group,
                name,
                description,
            } => self.rename_group(user, group, name, description).await,
            Request::ChangePassword {
                password,
                new_password,
            } => self.change_password(user, password, new_password).await,
            Request::OneChat { to, body, cmid, .. } => {
                self.one_chat((user, &name), to, body, cmid).await
            }
            Request::GroupChat {
                group, body, cmid, ..
            } => self.group_chat((user, &name), group, body, cmid).await,
            Request::Ack { up_to, group: None } => {
                let _ = self.writer.send(WriterCommand::ClientAck(up_to)).await;
                Ok(Map::new())
            }
            Request::Ack {
                up_to,
                group: Some(group),
            } => {
                let _ = self
                    .writer
                    .send(WriterCommand::ClientAckGroup(group, up_to))
                    .await;
                Ok(Map::new())
            }
            Request::AddFriend { friend, .. } => {
                let added = self.add_friend(user, friend).await?;
                self.watched_by(user, &[friend]).await;
                Ok(added)
            }
            Request::CreateGroup {
                name, description, ..
            } => self.create_group(user, name, description).await,
            Request::AddGroup { group, .. } => {
                let joined = self.join_group(user, group).await?;
                if let Ok(members) = self.node.directory.group_members(group).await {
                    self.watched_by(user, &members).await;
                }
                Ok(joined)
            }
            Request::History {
                target,
                before,
                after,
                limit,
            } => conversations::history(&self.node, user, target, before, after, limit).await,
            Request::Conversations { limit } => conversations::list(&self.node, user, limit).await,
            Request::Search {
                query,
                target,
                limit,
                offset,
            } => conversations::search(&self.node, user, &query, target, limit, offset).await,
            Request::MarkRead { target, up_to } => {
                let me = self.node.session_address(self.connection);
                conversations::mark_read(&self.node, user, &me, target, up_to).await
            }
            Request::Typing { target } => {
                let me = self.node.session_address(self.connection);
                let Some(active) = self.active.as_mut() else {
                    return Ok(Map::new());
                };
                conversations::typing(
                    &self.node,
                    (user, &name),
                    &me,
                    target,
                    &mut active.typing_sent,
                )
                .await
            }
            Request::Delivered { target, up_to } => {
                let me = self.node.session_address(self.connection);
                conversations::delivered(&self.node, user, &me, target, up_to).await
            }
            Request::Roster => {
                let (friends, groups) = self.roster(user).await?;
                let mut results = classic::roster_results(&friends, &groups);
                results.insert("blocked".into(), self.blocked(user).await?.into());
                Ok(results)
            }
            Request::Login { .. } | Request::Register { .. } | Request::Ping => Ok(Map::new()),
        }
    }
}

/// Sleeps until `when`, or forever when there is none.
async fn sleep_until_some(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
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
        Request::LogoutEverywhere => "logout_everywhere",
        Request::RemoveFriend { .. } => "remove_friend",
        Request::Block { on: true, .. } => "block",
        Request::Block { on: false, .. } => "unblock",
        Request::LeaveGroup { .. } => "leave_group",
        Request::GroupMembers { .. } => "group_members",
        Request::RenameGroup { .. } => "rename_group",
        Request::Search { .. } => "search",
        Request::ChangePassword { .. } => "change_password",
    }
}
