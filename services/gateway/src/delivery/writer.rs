//! The writer task of one connection: it owns the socket's sending half and
//! writes replies and deliveries.
//!
//! Deliveries of a logged-in user come from two places: the live queue (what
//! the subscriber or a local sender handed over) and, when the live queue is
//! not the whole story, the user's stores: the offline service first (older
//! messages), then the Redis inbox. The writer keeps `cursor`, the highest
//! inbox sequence it wrote. A live delivery is written only when it is the
//! next one (`cursor + 1`); anything else (a gap, a full queue, a subscriber
//! reconnect, a presence lease that may have lapsed) makes the writer read
//! its stores instead ("sync"), so the order is the inbox's order and nothing
//! is skipped or written twice by one session.
//!
//! Group chats come from the groups' logs instead (`redis/group_log.rs`):
//! per group the writer keeps the highest `cseq` it wrote, writes a live
//! entry that is the next one, and reads the log from there otherwise.
//! What was delivered raises the user's cursor in that group (the same
//! confirmation as an inbox entry: the peer's TCP, or the client's ack).
//!
//! Inbox entries are trimmed only after the client's TCP acknowledged every
//! byte of them (classic clients and those that use the additions; a
//! transport that cannot tell, WebSocket, counts the write) or after the
//! client acknowledged them (devices). A frame written to a peer that closed
//! or vanished is not acknowledged, so it stays for the next login. Nothing
//! the writer holds is the only copy of a message: a writer that dies,
//! blocks or is aborted loses nothing.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    io,
    sync::Arc,
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use clusterchat_proto::history::v1 as history_pb;

use crate::{
    delivery::{
        recent::RecentMids,
        sync::{self, OfflinePage},
    },
    metrics::metrics,
    node::{
        Node,
        registry::{Delivery, SyncSignal},
    },
    protocol::client::{ClientKind, delivery_frame},
};

/// The sending half of a transport.
pub trait FrameSink: Send + 'static {
    fn send(&mut self, frame: Vec<u8>) -> impl Future<Output = io::Result<()>> + Send;
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// From now on frames may share one write (the client parses a stream).
    fn allow_batching(&mut self) {}
    /// Proves the connection alive (a WebSocket ping); TCP does nothing.
    fn heartbeat(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        async { Ok(()) }
    }
    /// Bytes handed to the connection so far (frames still gathered for a
    /// flush are not).
    fn written(&self) -> u64 {
        0
    }
    /// Bytes of those the peer acknowledged; `None` when the transport
    /// cannot tell (then a write counts as delivered).
    fn acknowledged(&self) -> Option<u64> {
        None
    }
}

pub enum WriterCommand {
    Frame(Vec<u8>),
    /// Write and flush, then say whether it reached the socket.
    Confirmed(Vec<u8>, oneshot::Sender<bool>),
    /// Start writing deliveries for a logged-in user.
    Attach(Box<DeliveryState>),
    /// Stop writing deliveries (the session ends); answered once stopped.
    Detach(oneshot::Sender<()>),
    /// The client acknowledged its deliveries up to this sequence.
    ClientAck(u64),
    /// The client acknowledged a group's log entries up to this `cseq`.
    ClientAckGroup(i64, u64),
    /// The user joined (or created) a group through this session and their
    /// cursor there is this `cseq`: the group's next chat is written live
    /// instead of being read back from the log (a join's first message
    /// made every new member read their cursor and the log).
    FollowGroup(i64, u64),
    /// The client uses the additions: frames may share a write.
    AllowBatching,
    /// Send a transport-level heartbeat.
    Heartbeat,
}

/// The delivery state of a logged-in session.
pub struct DeliveryState {
    pub node: Arc<Node>,
    pub user: i64,
    /// What the client gets: a client that acknowledges (`msgid` 12) gets
    /// frames with `mid` and `rseq`, and its inbox is trimmed on its acks
    /// rather than on writes; a classic one gets exactly the classic frame.
    pub kind: ClientKind,
    /// The highest inbox sequence written to this connection.
    pub cursor: u64,
    /// Clients that acknowledge: the highest sequence they have
    /// acknowledged (or said they have, at login).
    pub acked: u64,
    /// Where to continue reading the offline store; `None` when drained.
    pub offline_after: Option<u64>,
    /// The inbox was too full to take an offline-store message: the inbox
    /// is read (and acknowledged) first, the offline store again after this.
    pub offline_paused_until: Option<Instant>,
    /// Offline-store entries moved from the inbox at or below this sequence
    /// were delivered from the inbox already.
    pub delivered_floor: u64,
    pub claimed_at: Instant,
    /// Clients that acknowledge: offline-store positions to acknowledge once
    /// the client acknowledged the sequence (gate) of the last one written.
    pub offline_acks: VecDeque<(u64, u64)>,
    /// Message ids written lately, to write each message once.
    pub recent: RecentMids,
    pub queue: mpsc::Receiver<Delivery>,
    pub sync: Arc<SyncSignal>,
    pub needs_sync: bool,
    /// Classic clients: what the login ack carried (inbox sequence,
    /// offline-store position), confirmed like any write once attached.
    pub login_written: Option<(u64, Option<u64>)>,
    /// Classic clients: writes that count as delivered once the peer's TCP
    /// acknowledged them.
    pub unconfirmed: VecDeque<Unconfirmed>,
    /// The presence lease lapsed (a freeze, a partition): the next sync
    /// reads the offline store first.
    pub lapsed: bool,
    /// The next sync reads the inbox (else only the groups' logs behind).
    pub inbox_behind: bool,
    /// Per group, the highest log entry (`cseq`) written to this
    /// connection; a group missing here starts from the user's cursor.
    pub groups: HashMap<i64, u64>,
    /// Groups whose log must be read before their live entries are written.
    pub groups_behind: BTreeSet<i64>,
    /// Classic clients: group log entries written since the last mark.
    pub groups_unmarked: Vec<(i64, u64)>,
}

/// Written to a classic client, not yet acknowledged by its TCP: once
/// `bytes` are, the inbox is trimmed up to `inbox` and the offline store
/// acknowledged up to `offline`.
pub struct Unconfirmed {
    bytes: u64,
    inbox: u64,
    offline: Option<u64>,
    /// Group log entries (group, cseq) covered too.
    groups: Vec<(i64, u64)>,
}

/// Unconfirmed writes kept apart at most; past this, new ones join the
/// newest (confirmed a little later, never earlier).
const UNCONFIRMED_MARKS: usize = 64;

/// How often a writer with unconfirmed writes asks the kernel what the peer
/// acknowledged.
const CONFIRM_EVERY: Duration = Duration::from_millis(20);

/// How long a classic session that ends waits for the peer to acknowledge
/// its last writes (else they are delivered again at the next login).
const CONFIRM_AT_END: Duration = Duration::from_millis(200);

/// How long the offline store waits when the inbox was too full to take
/// its messages.
const OFFLINE_PAUSE: Duration = Duration::from_secs(1);
/// How often a writer whose presence lease is not confirmed looks again.
const LEASE_LOOK_EVERY: Duration = Duration::from_millis(100);

/// Inbox entries read per step of a sync.
const INBOX_PAGE: usize = 200;

/// Group log entries read per step of a sync.
const LOG_PAGE: usize = 200;

enum Step {
    /// Caught up: live deliveries may flow.
    Done,
    /// Wrote a page; more to read.
    More,
    /// Could not read, or paused; try again after this long, or longer
    /// after failures before (doubling up to 5 s: a dependency that fails
    /// is not asked ever faster).
    Retry(Duration),
    /// May not write yet (the presence lease is not confirmed): look again
    /// after this long, however often it was so before. Looking costs
    /// nothing (the lease is this node's own state), and a backoff grown
    /// while Redis was slow to confirm it would leave the session silent
    /// for seconds after it is confirmed again.
    Wait(Duration),
    /// The socket failed.
    Broken,
}

impl DeliveryState {
    /// One step of a sync: a page of the offline store, else a page of the
    /// inbox (read in that order: `sync.rs`).
    async fn sync_step<W: FrameSink>(&mut self, sink: &mut W) -> Step {
        let node = self.node.clone();
        if !node.lease.holds(self.user, self.claimed_at) {
            self.lapsed = true;
            return Step::Wait(LEASE_LOOK_EVERY);
        }
        if std::mem::take(&mut self.lapsed) {
            // The claim may have expired meanwhile, and with nobody holding
            // the user a sender's node may have moved the inbox to the
            // offline store: read that first, as a login does.
            self.offline_after.get_or_insert(0);
            self.behind_all();
        }
        if let Some(&group) = self.groups_behind.first() {
            return self.group_step(sink, group).await;
        }
        let paused = self
            .offline_paused_until
            .is_some_and(|until| until > Instant::now());
        if let Some(after) = self.offline_after.filter(|_| !paused) {
            let page = match sync::fetch_offline(&node, self.user, after).await {
                Ok(page) => page,
                Err(status) => {
                    tracing::warn!(user = self.user, code = ?status.code(), "offline fetch failed; retrying");
                    return Step::Retry(Duration::from_millis(500));
                }
            };
            let floor = self.delivered_floor.max(self.cursor);
            let acked = self.delivered_floor.max(self.acked);
            let prepared = match OfflinePage::prepare(
                &node,
                self.user,
                self.kind,
                (floor, acked),
                &page,
            )
            .await
            {
                Ok(prepared) => prepared,
                Err(e) => {
                    tracing::warn!(user = self.user, error = %e, "cannot move offline messages to the inbox; retrying");
                    return Step::Retry(Duration::from_millis(500));
                }
            };
            let written = prepared.frames.len() as u64;
            for (mid, frame) in prepared.frames {
                if !self.recent.first_time(&mid) {
                    continue;
                }
                if sink.send(frame).await.is_err() {
                    return Step::Broken;
                }
            }
            if sink.flush().await.is_err() {
                return Step::Broken;
            }
            metrics().offline_delivered.inc_by(written);
            self.cursor = self.cursor.max(prepared.gate);
            if let Some(last) = prepared.last_position {
                self.offline_after = Some(last);
            }
            if self.kind.acknowledges() {
                if let Some(last) = prepared.last_position {
                    self.acknowledge_offline_page(prepared.gate, last).await;
                }
            } else {
                self.written(sink, self.cursor, prepared.last_position);
            }
            if !prepared.more {
                self.offline_after = None;
            }
            if prepared.inbox_full {
                self.offline_paused_until = Some(Instant::now() + OFFLINE_PAUSE);
            }
            // What it moved to the inbox is read from there.
            self.inbox_behind = true;
            return Step::More;
        }
        if !self.inbox_behind && self.offline_after.is_none() {
            return Step::Done;
        }
        let page = match node
            .redis
            .read_inbox(self.user, self.cursor, INBOX_PAGE)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(user = self.user, error = %e, "inbox read failed; retrying");
                return Step::Retry(Duration::from_millis(500));
            }
        };
        let complete = page.complete;
        let taken = sync::inbox_frames(
            self.kind,
            page.entries,
            self.cursor,
            &mut self.recent,
            usize::MAX,
            false,
        );
        for frame in taken.frames {
            if sink.send(frame).await.is_err() {
                return Step::Broken;
            }
        }
        self.cursor = taken.cursor;
        if sink.flush().await.is_err() {
            return Step::Broken;
        }
        if complete {
            // Nothing between the cursor and the newest sequence is left to
            // read: what is not in the inbox was delivered or moved to the
            // offline store before this session claimed the user.
            self.cursor = self.cursor.max(page.last_seq);
            self.inbox_behind = false;
        }
        if !self.kind.acknowledges() {
            self.written(sink, self.cursor, None);
        }
        if !complete {
            Step::More
        } else if self.offline_after.is_some() {
            // Paused for a full inbox: the offline store again in a moment.
            Step::Retry(OFFLINE_PAUSE)
        } else {
            Step::Done
        }
    }

    /// One step of a sync for a group: a page of its log after what this
    /// connection has (the user's cursor, the first time).
    async fn group_step<W: FrameSink>(&mut self, sink: &mut W, group: i64) -> Step {
        let node = self.node.clone();
        if !self.groups.contains_key(&group) {
            // The user's cursors, for every group about to be read at once
            // (a login reads them all).
            let unknown: Vec<i64> = self
                .groups_behind
                .iter()
                .copied()
                .filter(|g| !self.groups.contains_key(g))
                .collect();
            match node.redis.group_cursors(self.user, &unknown).await {
                Ok(cursors) => {
                    for (g, cursor) in unknown.into_iter().zip(cursors) {
                        self.groups.insert(g, cursor.unwrap_or(0));
                    }
                }
                Err(e) => {
                    tracing::warn!(user = self.user, error = %e, "cannot read group cursors; retrying");
                    return Step::Retry(Duration::from_millis(500));
                }
            }
        }
        let cursor = self.groups.get(&group).copied().unwrap_or(0);
        let page = match node.redis.read_group_log(group, cursor, LOG_PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(user = self.user, group, error = %e, "group log read failed; retrying");
                return Step::Retry(Duration::from_millis(500));
            }
        };
        if let Some(first) = page.entries.first()
            && cursor > 0
            && first.seq > cursor + 1
        {
            // Older than the log keeps, or numbers Redis skipped (a new
            // epoch): history has whatever there was.
            match self.read_history_gap(sink, group, cursor, first.seq).await {
                Ok(0) => {}
                Ok(_) => return Step::More,
                Err(step) => return step,
            }
        }
        let mut last = cursor;
        for entry in page.entries {
            if entry.seq <= last {
                continue;
            }
            last = entry.seq;
            if entry.sender_id == self.user || !self.recent.first_time(&entry.mid) {
                continue;
            }
            let frame = delivery_frame(self.kind, entry.frame, &entry.mid, 0);
            if sink.send(frame).await.is_err() {
                return Step::Broken;
            }
        }
        if sink.flush().await.is_err() {
            return Step::Broken;
        }
        self.groups.insert(group, last);
        if last > cursor {
            self.group_written(group, last);
            if !self.kind.acknowledges() {
                self.written(sink, self.cursor, None);
            }
        }
        if page.complete {
            self.groups_behind.remove(&group);
        }
        Step::More
    }

    /// The group's chats after `cursor` and before `until` that its log no
    /// longer has, from the history service (a page; it checks that the
    /// user may read them). Returns how many it wrote (0: history has none
    /// there either: numbers Redis skipped).
    async fn read_history_gap<W: FrameSink>(
        &mut self,
        sink: &mut W,
        group: i64,
        cursor: u64,
        until: u64,
    ) -> Result<usize, Step> {
        metrics().group_log_gaps.inc();
        let page = self
            .node
            .upstreams
            .history
            .clone()
            .get_history(history_pb::GetHistoryRequest {
                user_id: self.user,
                conversation: format!("g:{group}"),
                // A page goes one way: from the cursor on (what reaches
                // `until` is left to the log).
                before_seq: 0,
                after_seq: cursor,
                limit: LOG_PAGE as u32,
            })
            .await;
        let messages = match page {
            Ok(page) => page.into_inner().messages,
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::ResourceExhausted
                        | tonic::Code::Aborted
                        | tonic::Code::Internal
                        | tonic::Code::Unknown
                ) =>
            {
                tracing::warn!(user = self.user, group, code = ?status.code(), "group chats older than the log keeps: history cannot be read; retrying");
                return Err(Step::Retry(Duration::from_millis(500)));
            }
            // Not theirs to read (they left the group) or not a question
            // history answers: go on with what the log has.
            Err(status) => {
                tracing::warn!(user = self.user, group, code = ?status.code(), error = status.message(), "group chats older than the log keeps: history refused; going on with the log");
                return Ok(0);
            }
        };
        tracing::info!(
            user = self.user,
            group,
            from = cursor,
            to = until,
            found = messages.len(),
            "group chats older than the group's log keeps, from history"
        );
        let mut last = cursor;
        for message in &messages {
            if message.seq <= last || message.seq >= until {
                continue;
            }
            last = message.seq;
            if message.sender_id == self.user || !self.recent.first_time(&message.mid) {
                continue;
            }
            let frame = delivery_frame(
                self.kind,
                message.frame.clone().into_bytes(),
                &message.mid,
                0,
            );
            if sink.send(frame).await.is_err() {
                return Err(Step::Broken);
            }
        }
        if last == cursor {
            return Ok(0);
        }
        if sink.flush().await.is_err() {
            return Err(Step::Broken);
        }
        self.groups.insert(group, last);
        self.group_written(group, last);
        if !self.kind.acknowledges() {
            self.written(sink, self.cursor, None);
        }
        Ok(messages.len())
    }

    /// The user's cursor in `group` is `cseq` (set by their join): what
    /// this connection has of it, unless it has more already (a sync or a
    /// live entry came first).
    fn follow_group(&mut self, group: i64, cseq: u64) {
        let written = self.groups.entry(group).or_insert(cseq);
        *written = (*written).max(cseq);
    }

    /// Group log entries up to `cseq` were written: a client that
    /// acknowledges confirms them itself; for the others they are
    /// confirmed as the inbox's are (the peer's TCP).
    fn group_written(&mut self, group: i64, cseq: u64) {
        if !self.kind.acknowledges() {
            self.groups_unmarked.push((group, cseq));
        }
    }

    /// Everything must be read again: the inbox, and every group's log.
    fn behind_all(&mut self) {
        self.needs_sync = true;
        self.inbox_behind = true;
        self.groups_behind
            .extend(self.node.groups.of_user(self.user));
    }

    /// Classic clients: inbox entries up to `inbox` and offline-store
    /// messages up to `offline` were written (and flushed); they count as
    /// delivered once the peer acknowledged every byte written so far.
    fn written<W: FrameSink>(&mut self, sink: &W, inbox: u64, offline: Option<u64>) {
        let bytes = sink.written();
        let full = self.unconfirmed.len() >= UNCONFIRMED_MARKS;
        let groups = std::mem::take(&mut self.groups_unmarked);
        match self.unconfirmed.back_mut() {
            Some(last) if last.bytes == bytes || full => {
                last.bytes = bytes;
                last.inbox = last.inbox.max(inbox);
                last.offline = last.offline.max(offline);
                last.groups.extend(groups);
            }
            _ => self.unconfirmed.push_back(Unconfirmed {
                bytes,
                inbox,
                offline,
                groups,
            }),
        }
    }

    /// Classic clients: trims the inbox and acknowledges the offline store
    /// for what the peer's TCP acknowledged (everything written, when the
    /// transport cannot tell).
    async fn confirm<W: FrameSink>(&mut self, sink: &mut W) {
        if self.unconfirmed.is_empty() {
            return;
        }
        let acked = sink.acknowledged().unwrap_or(u64::MAX);
        let (mut inbox, mut offline) = (0, None);
        while let Some(mark) = self.unconfirmed.front() {
            if mark.bytes > acked {
                break;
            }
            inbox = inbox.max(mark.inbox);
            offline = offline.max(mark.offline);
            for &(group, cseq) in &mark.groups {
                self.node
                    .trimmer
                    .note_group_delivered(self.user, group, cseq);
            }
            self.unconfirmed.pop_front();
        }
        self.node.trimmer.note_delivered(self.user, inbox);
        if let Some(position) = offline {
            self.node.offline.acknowledge(self.user, position).await;
        }
    }

    /// The session ends: what the peer acknowledges within a moment counts
    /// as delivered; the rest waits in the stores for the next login.
    async fn confirm_at_end<W: FrameSink>(&mut self, sink: &mut W) {
        if !self.groups_unmarked.is_empty() && sink.flush().await.is_ok() {
            self.written(sink, self.cursor, None);
        }
        let until = Instant::now() + CONFIRM_AT_END;
        loop {
            self.confirm(sink).await;
            if self.unconfirmed.is_empty() || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(CONFIRM_EVERY / 2).await;
        }
        if !self.unconfirmed.is_empty() {
            let left = self.unconfirmed.back().map_or(0, |m| m.inbox);
            tracing::info!(
                user = self.user,
                up_to = left,
                "the client's TCP did not acknowledge the last deliveries; they wait for the next login"
            );
        }
    }

    /// Clients that acknowledge: acknowledges offline-store messages up to
    /// `position` now (nothing in the page waits for the client), or once
    /// the client acknowledged `gate`.
    pub async fn acknowledge_offline_page(&mut self, gate: u64, position: u64) {
        if self.kind.acknowledges() && gate > 0 {
            self.offline_acks.push_back((gate, position));
        } else {
            self.node.offline.acknowledge(self.user, position).await;
        }
    }

    /// The client acknowledged up to `up_to`: trim its inbox, and release
    /// the offline-store pages it has now confirmed.
    async fn client_acknowledged(&mut self, up_to: u64) {
        let up_to = up_to.min(self.cursor);
        self.acked = self.acked.max(up_to);
        self.node.trimmer.note_delivered(self.user, up_to);
        let mut release = None;
        while let Some(&(gate, position)) = self.offline_acks.front() {
            if gate > up_to {
                break;
            }
            release = Some(position);
            self.offline_acks.pop_front();
        }
        if let Some(position) = release {
            self.node.offline.acknowledge(self.user, position).await;
        }
    }

    /// The client acknowledged a group's log entries up to `cseq`.
    fn client_acknowledged_group(&mut self, group: i64, cseq: u64) {
        if let Some(&written) = self.groups.get(&group) {
            self.node
                .trimmer
                .note_group_delivered(self.user, group, cseq.min(written));
        }
    }

    /// A live entry of a group's log: written if it is the next one after
    /// what this connection has, else the writer reads the log.
    async fn live_group<W: FrameSink>(&mut self, delivery: Delivery, sink: &mut W) -> bool {
        let group = delivery.group;
        let Some(&written) = self.groups.get(&group) else {
            self.groups_behind.insert(group);
            self.needs_sync = true;
            return true;
        };
        if delivery.seq <= written {
            return true;
        }
        if !self.node.lease.holds(self.user, self.claimed_at) {
            self.lapsed = true;
            self.behind_all();
            return true;
        }
        if delivery.seq != written + 1 {
            self.groups_behind.insert(group);
            self.needs_sync = true;
            return true;
        }
        if delivery.sender != self.user && self.recent.first_time(&delivery.mid) {
            let frame = delivery_frame(self.kind, delivery.frame, &delivery.mid, 0);
            if sink.send(frame).await.is_err() {
                return false;
            }
        }
        self.groups.insert(group, delivery.seq);
        self.group_written(group, delivery.seq);
        true
    }

    /// A live delivery: written if it is the next one and the lease holds,
    /// else the writer syncs. Returns false when the socket failed.
    async fn live<W: FrameSink>(&mut self, delivery: Delivery, sink: &mut W) -> bool {
        if delivery.is_live() {
            return sink.send(delivery.frame.clone()).await.is_ok();
        }
        if delivery.group != 0 {
            return self.live_group(delivery, sink).await;
        }
        if delivery.seq <= self.cursor {
            return true;
        }
        if !self.node.lease.holds(self.user, self.claimed_at) {
            self.lapsed = true;
            self.behind_all();
            return true;
        }
        if delivery.seq != self.cursor + 1 {
            self.needs_sync = true;
            self.inbox_behind = true;
            return true;
        }
        if self.recent.first_time(&delivery.mid) {
            let frame = delivery_frame(self.kind, delivery.frame, &delivery.mid, delivery.seq);
            if sink.send(frame).await.is_err() {
                return false;
            }
        }
        self.cursor = delivery.seq;
        true
    }
}

/// Writes until every command sender is gone.
pub async fn run_writer<W: FrameSink>(mut sink: W, mut commands: mpsc::Receiver<WriterCommand>) {
    let mut state: Option<DeliveryState> = None;
    let mut broken = false;
    let mut retry_at: Option<Instant> = None;
    let mut retry_delay = Duration::from_millis(100);
    // Classic clients: the cursor last marked written (after a flush).
    let mut marked = 0u64;
    loop {
        if let Some(st) = state.as_mut().filter(|_| !broken) {
            if st.sync.take() {
                st.behind_all();
                // Asked for now (Redis is back, a gap): try at once, not
                // after the backoff of failures before.
                retry_at = None;
                retry_delay = Duration::from_millis(100);
            }
            if st.sync.take_offline() {
                st.offline_after.get_or_insert(0);
            }
            let due = retry_at.is_none_or(|at| at <= Instant::now());
            if st.needs_sync && due {
                match st.sync_step(&mut sink).await {
                    Step::Done => {
                        st.needs_sync = false;
                        retry_at = None;
                        retry_delay = Duration::from_millis(100);
                    }
                    Step::More => retry_at = None,
                    Step::Wait(after) => retry_at = Some(Instant::now() + after),
                    Step::Retry(after) => {
                        retry_delay = after.max(retry_delay * 2).min(Duration::from_secs(5));
                        retry_at = Some(Instant::now() + retry_delay);
                    }
                    Step::Broken => broken = true,
                }
                marked = st.cursor;
                // Serve commands between pages.
                if st.needs_sync && retry_at.is_none() && commands.is_empty() {
                    continue;
                }
            }
        }
        enum Event {
            Command(Option<WriterCommand>),
            Delivery(Option<Delivery>),
            Wake,
        }
        let signal = state.as_ref().map(|st| st.sync.clone());
        let confirming = !broken && state.as_ref().is_some_and(|st| !st.unconfirmed.is_empty());
        let live = state
            .as_mut()
            .filter(|st| !st.needs_sync && !broken)
            .map(|st| &mut st.queue);
        let event = tokio::select! {
            biased;
            command = commands.recv() => Event::Command(command),
            () = async { match &signal { Some(s) => s.raised().await, None => std::future::pending().await } } => Event::Wake,
            () = async { match retry_at { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => Event::Wake,
            () = async { if confirming { tokio::time::sleep(CONFIRM_EVERY).await } else { std::future::pending().await } } => Event::Wake,
            delivery = async { match live { Some(q) => q.recv().await, None => std::future::pending().await } } => Event::Delivery(delivery),
        };
        match event {
            Event::Wake => {
                if let Some(st) = state.as_mut().filter(|_| !broken) {
                    if !st.kind.acknowledges()
                        && (st.cursor > marked || !st.groups_unmarked.is_empty())
                    {
                        if sink.flush().await.is_err() {
                            broken = true;
                            continue;
                        }
                        st.written(&sink, st.cursor, None);
                        marked = st.cursor;
                    }
                    st.confirm(&mut sink).await;
                }
            }
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
            Event::Command(Some(WriterCommand::Attach(mut st))) => {
                marked = st.cursor;
                // The groups' logs are read from the user's cursors first.
                let groups = st.node.groups.of_user(st.user);
                st.needs_sync |= !groups.is_empty();
                st.groups_behind.extend(groups);
                if let Some((inbox, offline)) = st.login_written.take() {
                    st.written(&sink, inbox, offline);
                }
                state = Some(*st);
            }
            Event::Command(Some(WriterCommand::Detach(done))) => {
                if let Some(mut st) = state.take() {
                    st.confirm_at_end(&mut sink).await;
                    st.node.trimmer.session_ended(st.user);
                }
                let _ = done.send(());
            }
            Event::Command(Some(WriterCommand::ClientAck(up_to))) => {
                if let Some(st) = state.as_mut().filter(|st| st.kind.acknowledges()) {
                    st.client_acknowledged(up_to).await;
                }
            }
            Event::Command(Some(WriterCommand::ClientAckGroup(group, up_to))) => {
                if let Some(st) = state.as_mut().filter(|st| st.kind.acknowledges()) {
                    st.client_acknowledged_group(group, up_to);
                }
            }
            Event::Command(Some(WriterCommand::FollowGroup(group, cseq))) => {
                if let Some(st) = state.as_mut() {
                    st.follow_group(group, cseq);
                }
            }
            Event::Command(Some(WriterCommand::AllowBatching)) => sink.allow_batching(),
            Event::Command(Some(WriterCommand::Heartbeat)) => {
                if !broken && sink.heartbeat().await.is_err() {
                    broken = true;
                }
            }
            Event::Delivery(None) => {
                if let Some(mut st) = state.take() {
                    st.confirm_at_end(&mut sink).await;
                    st.node.trimmer.session_ended(st.user);
                }
            }
            Event::Delivery(Some(delivery)) => {
                if let Some(st) = state.as_mut()
                    && !st.live(delivery, &mut sink).await
                {
                    broken = true;
                }
            }
        }
        let idle = commands.is_empty()
            && state
                .as_ref()
                .is_none_or(|st| st.needs_sync || st.queue.is_empty());
        if idle && !broken {
            if sink.flush().await.is_err() {
                broken = true;
            } else if let Some(st) = state.as_mut() {
                if !st.kind.acknowledges() && (st.cursor > marked || !st.groups_unmarked.is_empty())
                {
                    st.written(&sink, st.cursor, None);
                    marked = st.cursor;
                }
                st.confirm(&mut sink).await;
            }
        }
    }
}
