//! Registering, logging in and out. A login claims the user's presence in
//! Redis (one classic session, or any number of devices), registers the
//! session here, subscribes to the user's channel, and answers with the
//! roster and what waited for the user (`delivery::sync`); the writer goes
//! on from there.

use std::{sync::Arc, time::Duration};

use clusterchat_proto::user::v1 as user_pb;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{
    ActiveUser, Session,
    roster::{ROSTER_PAGE_BYTES, roster_pages},
};
use crate::{
    delivery::{
        sync::{self, Pending, redis_unavailable},
        writer::{DeliveryState, WriterCommand},
    },
    metrics::{label, metrics},
    node::registry::{LocalSession, QueuedBytes, SyncSignal},
    protocol::classic::{self, Credential, Failure, LoginOptions, errno},
    redis::Claim,
    upstream::{self, failure_from_status},
};

impl Session {
    pub(super) async fn register(&mut self, name: String, password: String, seq: Option<i64>) {
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
                self.node.directory.remember_users([id]);
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

    pub(super) async fn login(
        &mut self,
        id: i64,
        credential: Credential,
        options: LoginOptions,
        seq: Option<i64>,
    ) {
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
        if options.acks {
            self.mark_uses_additions().await;
            self.heartbeats = true;
        }
        match self.try_login(id, credential, options, seq).await {
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
        credential: Credential,
        options: LoginOptions,
        seq: Option<i64>,
    ) -> Result<LoginAck, Failure> {
        let LoginOptions {
            acks,
            since,
            presence,
            remember,
        } = options;
        let node = self.node.clone();
        let kind = self.kind.at_login(acks);
        self.throttle_address("login", node.config.limits.logins_per_address)
            .await?;
        self.throttle_account(id).await?;
        let mut users = node.upstreams.users.clone();
        // The user, and the session token this connection holds (given
        // now, or the one it logged in with).
        let answer = match credential {
            Credential::Password(password) => users
                .login(user_pb::LoginRequest {
                    id,
                    password,
                    start_session: remember.is_some() && acks,
                    device: remember.unwrap_or_default(),
                })
                .await
                .map(|reply| {
                    let reply = reply.into_inner();
                    let token = (!reply.token.is_empty()).then_some(reply.token);
                    (reply.user.unwrap_or_default(), token)
                }),
            Credential::Token(token) => users
                .resume_session(user_pb::ResumeSessionRequest {
                    token: token.clone(),
                })
                .await
                .map(|reply| (reply.into_inner().user.unwrap_or_default(), Some(token))),
        };
        let (user, token) = match answer {
            // A token is its user's alone.
            Ok((user, Some(_))) if user.id != id => {
                self.count_failed_login(id).await;
                return Err(Failure::new(
                    errno::BAD_REQUEST,
                    format!("this session token is not user {id}'s; log in with your password"),
                ));
            }
            Ok(found) => found,
            Err(status)
                if status.code() == tonic::Code::Unauthenticated
                    && !upstream::is_credential_refusal(&status) =>
            {
                self.count_failed_login(id).await;
                let words = if status.message().contains("session") {
                    status.message().to_owned()
                } else {
                    classic::CLASSIC_BAD_LOGIN.to_owned()
                };
                return Err(Failure::new(errno::BAD_REQUEST, words));
            }
            Err(status) => return Err(failure_from_status(&status, "the user service")),
        };
        let me = node.session_address(self.connection);
        let claimed_at = Instant::now();
        let limits = (node.config.presence_ttl, node.config.limits.max_devices);
        let others = match node
            .redis
            .claim_presence(user.id, &me, kind.acknowledges(), limits)
            .await
            .map_err(redis_unavailable)?
        {
            Claim::Held { others } => others,
            Claim::Refused => {
                return Err(Failure::new(errno::ACCOUNT_IN_USE, classic::CLASSIC_IN_USE));
            }
            Claim::TooManyDevices => {
                metrics()
                    .refused
                    .get_or_create(&label("why", "max_devices"))
                    .inc();
                return Err(Failure::new(
                    errno::TOO_LARGE,
                    format!(
                        "user {} has {} devices logged in, the most there may be; log out on one of them first",
                        user.id, node.config.limits.max_devices
                    ),
                ));
            }
        };
        let peers = Arc::new(std::sync::atomic::AtomicBool::new(others > 0));
        let kick = CancellationToken::new();
        let signed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (deliveries, queue) = mpsc::channel(node.config.limits.outbound_queue.max(1));
        let sync = Arc::new(SyncSignal::default());
        let local = LocalSession {
            connection: self.connection,
            deliveries,
            queued: QueuedBytes::new(
                node.config.limits.outbound_bytes,
                node.admission.live_queues.clone(),
            ),
            sync: sync.clone(),
            kick: kick.clone(),
            kind,
            peers: peers.clone(),
            presence: presence && kind.uses_additions(),
            signed_out: signed_out.clone(),
        };
        if !node.registry.insert(user.id, local) {
            let _ = node.redis.release_presence(user.id, &me).await;
            return Err(Failure::new(errno::ACCOUNT_IN_USE, classic::CLASSIC_IN_USE));
        }
        metrics().online_users.inc();
        self.anonymous = None;
        self.active = Some(ActiveUser {
            id: user.id,
            name: user.name.clone(),
            kick,
            kind,
            peers,
            token: token.clone(),
            signed_out: signed_out.clone(),
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
                node.redis.announce_device_joined(user.id).await;
            }
            node.offline.owe_what_sender_left(user.id).await;
            let pending = sync::at_login(&node, user.id, kind, since).await?;
            self.login_ack(&user, pending, seq, token.as_deref()).await
        };
        match prepared.await {
            Ok(mut ack) => {
                let online = std::mem::take(&mut ack.watchers_online);
                // The user's first session: their watchers see them come
                // online before anything they send.
                if others == 0 {
                    crate::node::presence::announce_to(&node, user.id, &online, true).await;
                }
                ack.deliveries = Some(Box::new(DeliveryState {
                    node: node.clone(),
                    user: user.id,
                    kind,
                    cursor: ack.pending.cursor,
                    acked: ack.pending.resumed_at.max(ack.pending.delivered_floor),
                    offline_after: ack.pending.offline_after,
                    offline_paused_until: None,
                    delivered_floor: ack.pending.delivered_floor,
                    claimed_at,
                    offline_acks: std::collections::VecDeque::new(),
                    recent: std::mem::take(&mut ack.pending.recent),
                    queue,
                    sync,
                    needs_sync: ack.pending.needs_sync,
                    login_written: None,
                    unconfirmed: std::collections::VecDeque::new(),
                    lapsed: false,
                    inbox_behind: ack.pending.needs_sync,
                    groups: std::collections::HashMap::new(),
                    groups_behind: std::collections::BTreeSet::new(),
                    groups_unmarked: Vec::new(),
                }));
                Ok(ack)
            }
            Err(failure) => {
                self.end_active().await;
                Err(failure)
            }
        }
    }

    async fn login_ack(
        &self,
        user: &user_pb::User,
        pending: Pending,
        seq: Option<i64>,
        token: Option<&str>,
    ) -> Result<LoginAck, Failure> {
        let (friends, groups) = self.roster(user.id).await?;
        let watchers_online = super::presence::watchers_online(user.id, &friends, &groups);
        // Group chats come from the groups' logs: this node takes what is
        // published there from now on, and the writer reads the logs from
        // the user's cursors before anything live.
        let ids: Vec<i64> = groups.iter().map(|g| g.id).collect();
        self.node
            .groups
            .join(&self.node.redis, user.id, &ids)
            .await
            .map_err(redis_unavailable)?;
        let offline: Vec<String> = pending
            .frames
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        let friends: Vec<String> = friends.iter().map(classic::friend_json).collect();
        let groups: Vec<String> = groups.iter().map(classic::group_json).collect();
        // A classic client gets everything in the ack; one that uses the
        // additions gets it in frames of a bounded size.
        let budget = if self.kind.uses_additions() {
            ROSTER_PAGE_BYTES
        } else {
            usize::MAX
        };
        let mut pages = roster_pages(friends, groups, budget).into_iter();
        let (friends, groups) = pages.next().unwrap_or_default();
        let more = pages.len() > 0;
        let mut extra = serde_json::Map::new();
        if more {
            extra.insert("roster_more".into(), true.into());
        }
        if let Some(token) = token {
            extra.insert("token".into(), token.into());
        }
        let frame =
            classic::login_ok_with(user.id, &user.name, friends, groups, &offline, seq, extra);
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
            deliveries: None,
            watchers_online,
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
        let Some(mut deliveries) = ack.deliveries else {
            return;
        };
        if deliveries.kind.acknowledges() {
            if let Some(up_to) = pending.offline_up_to {
                deliveries
                    .acknowledge_offline_page(pending.offline_gate, up_to)
                    .await;
            }
            // What they said they have (`since`).
            self.node
                .trimmer
                .note_delivered(ack.user_id, pending.resumed_at);
        } else {
            // What the ack carried, once the client's TCP acknowledged it.
            deliveries.login_written = Some((pending.cursor, pending.offline_up_to));
        }
        let _ = self.writer.send(WriterCommand::Attach(deliveries)).await;
    }

    /// Ends the logged-in session (logout, disconnect, kick, shutdown): no
    /// new deliveries and the user is free to log in anywhere. What was
    /// queued but not written is still in the user's inbox.
    pub(super) async fn end_active(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        let node = &self.node;
        // The node stays subscribed while another of the user's devices is here.
        node.registry.remove(active.id, self.connection, || {
            node.redis.unsubscribe_user(active.id);
            node.groups.forget_user(&node.redis, active.id);
        });
        metrics().online_users.dec();
        active.kick.cancel();
        let (done, stopped) = oneshot::channel();
        if self.writer.send(WriterCommand::Detach(done)).await.is_ok() {
            // A writer stuck on a client that stopped reading must not keep
            // the user locked: stop waiting after a moment.
            let _ = tokio::time::timeout(Duration::from_secs(2), stopped).await;
        }
        match node
            .redis
            .release_presence(active.id, &node.session_address(self.connection))
            .await
        {
            // The user's last session anywhere: their watchers see them go
            // (who they are now, from the user service: friends and groups
            // may have changed since the login, on any node).
            Ok(0) => {
                node.tasks
                    .spawn(crate::node::presence::gone(node.clone(), active.id));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, user = active.id, "cannot release presence; it expires by itself");
            }
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
    /// The rest of the friends and groups (msgid 15), after the ack.
    roster_pages: Vec<Vec<u8>>,
    user_id: i64,
    pending: Pending,
    /// The session's delivery state, handed to the writer once the ack is written.
    deliveries: Option<Box<DeliveryState>>,
    /// Who sees the user's presence and is online now.
    watchers_online: Vec<i64>,
}
