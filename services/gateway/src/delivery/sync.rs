//! Reading a user's stores, in the one order that loses nothing: the
//! offline service first (older messages), then the Redis inbox. A move
//! from the inbox to the offline store stores before it trims, and trims
//! only while the user has no presence, so every message is in one of the
//! two reads. Used at login (what the login ack carries) and by the writer
//! whenever the live queue is not the whole story (a "sync").

use clusterchat_proto::offline::v1 as offline_pb;

use crate::{
    delivery::recent::RecentMids,
    node::{Node, failover::now_micros},
    protocol::{
        classic::{Failure, errno},
        client::{ClientKind, delivery_frame},
    },
    redis::{AppendTo, Appended, InboxEntry, RedisError, entry_tail},
};

/// A page of the offline store, ready for one session.
pub struct OfflinePage {
    /// The frames to write, oldest first, with their message ids.
    pub frames: Vec<(String, Vec<u8>)>,
    /// The highest inbox sequence among them (0: none had one).
    pub gate: u64,
    /// How many were appended to the inbox instead.
    pub appended: u64,
    /// The offline-store position of the page's last message.
    pub last_position: Option<u64>,
    /// The store holds more after this page.
    pub more: bool,
    /// The inbox was full: the page stops before a message that could not
    /// be appended to it (it is read again once the client acknowledged
    /// some of the inbox).
    pub inbox_full: bool,
}

/// Reads the page of the user's offline store after `after`.
pub async fn fetch_offline(
    node: &Node,
    user: i64,
    after: u64,
) -> Result<offline_pb::FetchResponse, tonic::Status> {
    node.offline
        .client()
        .fetch(offline_pb::FetchRequest {
            receiver_id: user,
            after,
            limit: node.config.offline_batch,
        })
        .await
        .map(tonic::Response::into_inner)
}

impl OfflinePage {
    /// Prepares a page of the offline store for a client of `kind`. Leaves
    /// out what was written from the inbox already (sequence at or below
    /// `floor`). For a client that acknowledges, what it has not
    /// acknowledged yet (above `acked`) still gates the page: the offline
    /// store keeps it until the client acknowledges it (its inbox copy may
    /// be gone already). A message without an inbox sequence (stored while
    /// Redis was unreachable) is appended to the inbox instead, once (its
    /// id is the idempotency key), for every kind of client: it reaches the
    /// client from there, after the older messages the inbox holds, and
    /// with a sequence a client can acknowledge.
    pub async fn prepare(
        node: &Node,
        user: i64,
        kind: ClientKind,
        (floor, acked): (u64, u64),
        page: &offline_pb::FetchResponse,
    ) -> Result<Self, RedisError> {
        let mut prepared = Self {
            frames: Vec::new(),
            gate: 0,
            appended: 0,
            last_position: page.messages.last().map(|m| m.position),
            more: page.more,
            inbox_full: false,
        };
        let acks = kind.acknowledges();
        let mut before = None;
        for m in &page.messages {
            let position = before.replace(m.position);
            if m.inbox_seq != 0 && m.inbox_seq <= floor {
                if acks && m.inbox_seq > acked {
                    prepared.gate = prepared.gate.max(m.inbox_seq);
                }
                continue;
            }
            if m.inbox_seq == 0 {
                match append_to_inbox(node, user, m, false).await? {
                    ToInbox::Full => {
                        // Not an error: the client must be able to log in
                        // and acknowledge what fills its inbox.
                        prepared.last_position = position;
                        prepared.more = true;
                        prepared.inbox_full = true;
                        break;
                    }
                    ToInbox::Appended => prepared.appended += 1,
                    // Appended before (by the sender's node, or an earlier
                    // read of this page): delivered, in the inbox, or moved
                    // to this store as its own entry with that sequence
                    // (read in its place); never written from here, ahead
                    // of older messages.
                    ToInbox::AlreadyAt(at) => {
                        if acks && at <= floor && at > acked {
                            prepared.gate = prepared.gate.max(at);
                        }
                    }
                }
                continue;
            }
            prepared.frames.push((
                m.client_msg_id.clone(),
                delivery_frame(
                    kind,
                    m.payload.clone().into_bytes(),
                    &m.client_msg_id,
                    m.inbox_seq,
                ),
            ));
            prepared.gate = prepared.gate.max(m.inbox_seq);
        }
        Ok(prepared)
    }
}

/// Appends every message of the user's offline store that has no inbox
/// sequence (stored while Redis was unreachable) to their inbox, in the
/// store's order, each once, published to their sessions. A sender's node
/// does this before its next chat to the user goes to the inbox, so the
/// sender's chats keep their order. False when the inbox is full (what did
/// not fit stays in the offline store; the chat that follows is refused
/// for the same reason).
pub async fn repay_offline(node: &Node, user: i64) -> Result<bool, RedisError> {
    let mut after = 0;
    loop {
        let page = fetch_offline(node, user, after).await.map_err(|status| {
            RedisError::new(format!("offline fetch failed: {}", status.message()))
        })?;
        for m in page.messages.iter().filter(|m| m.inbox_seq == 0) {
            if let ToInbox::Full = append_to_inbox(node, user, m, true).await? {
                return Ok(false);
            }
        }
        match page.messages.last() {
            Some(last) if page.more => after = last.position,
            _ => return Ok(true),
        }
    }
}

/// What [`append_to_inbox`] did.
enum ToInbox {
    Appended,
    /// Appended before, with this sequence (the message id is the
    /// idempotency key).
    AlreadyAt(u64),
    Full,
}

/// Appends a message from the user's offline store to their inbox, once.
async fn append_to_inbox(
    node: &Node,
    user: i64,
    message: &offline_pb::OfflineMessage,
    publish: bool,
) -> Result<ToInbox, RedisError> {
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
    let appended = node
        .redis
        .append(
            &[AppendTo { user, publish }],
            &mid,
            &tail,
            node.config.limits.max_inbox,
            Some(node.config.dedup_ttl),
        )
        .await?;
    Ok(match appended.first() {
        Some(Appended::InboxFull | Appended::InboxBytesFull) => ToInbox::Full,
        Some(Appended::Duplicate { seq }) => ToInbox::AlreadyAt(*seq),
        _ => ToInbox::Appended,
    })
}

/// Inbox entries as frames for one client.
pub struct InboxFrames {
    pub frames: Vec<Vec<u8>>,
    /// The highest sequence among the entries taken (written or skipped as
    /// already written); the cursor given when none was.
    pub cursor: u64,
    /// Every entry fit the byte budget.
    pub all_fit: bool,
}

/// The entries after `cursor` as frames for a client of `kind`, each
/// message once (`recent`), within `budget` bytes (at least one frame,
/// unless frames were `taken_before` these).
pub fn inbox_frames(
    kind: ClientKind,
    entries: Vec<InboxEntry>,
    mut cursor: u64,
    recent: &mut RecentMids,
    budget: usize,
    taken_before: bool,
) -> InboxFrames {
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0usize;
    let mut all_fit = true;
    for entry in entries {
        if entry.seq <= cursor {
            continue;
        }
        if bytes.saturating_add(entry.frame.len()) > budget && (taken_before || !frames.is_empty())
        {
            all_fit = false;
            break;
        }
        bytes = bytes.saturating_add(entry.frame.len());
        let seq = entry.seq;
        if recent.first_time(&entry.mid) {
            frames.push(delivery_frame(kind, entry.frame, &entry.mid, seq));
        }
        cursor = seq;
    }
    InboxFrames {
        frames,
        cursor,
        all_fit,
    }
}

/// What waits for a user at login.
pub struct Pending {
    /// Frames for the login ack's `offlinemsg`, oldest first.
    pub frames: Vec<Vec<u8>>,
    /// The last offline-store position among them (acknowledged once
    /// written, or for a client that acknowledges, once it acknowledged
    /// `offline_gate`).
    pub offline_up_to: Option<u64>,
    pub offline_gate: u64,
    /// Where the writer continues in the offline store; `None`: drained.
    pub offline_after: Option<u64>,
    pub delivered_floor: u64,
    /// The highest inbox sequence the client has after the ack.
    pub cursor: u64,
    /// What a resuming client said it has (clamped).
    pub resumed_at: u64,
    /// More waits than the ack carries.
    pub needs_sync: bool,
    /// Message ids in `frames`: the writer goes on from here.
    pub recent: RecentMids,
}

/// What the login ack carries of the user's stores, at most this much.
const LOGIN_BUDGET_BYTES: usize = 256 * 1024;

/// What waits for the user, for the login ack: the first page of the
/// offline store, then (if that was all of it) the inbox after `since`,
/// within a byte budget.
pub async fn at_login(
    node: &Node,
    user: i64,
    kind: ClientKind,
    since: u64,
) -> Result<Pending, Failure> {
    let offline = fetch_offline(node, user, 0).await;
    let inbox = node
        .redis
        .read_inbox(user, since, node.config.offline_batch as usize)
        .await
        .map_err(redis_unavailable)?;
    // A client cannot have what was never sent.
    let cursor = since.min(inbox.last_seq);
    let mut pending = Pending {
        frames: Vec::new(),
        offline_up_to: None,
        offline_gate: 0,
        offline_after: None,
        delivered_floor: inbox.delivered,
        cursor,
        resumed_at: cursor,
        needs_sync: false,
        recent: RecentMids::default(),
    };
    match offline {
        Ok(page) => {
            // At login, the client said what it has: `since`.
            let floor = inbox.delivered.max(cursor);
            let prepared = OfflinePage::prepare(node, user, kind, (floor, floor), &page)
                .await
                .map_err(redis_unavailable)?;
            pending.frames = prepared
                .frames
                .into_iter()
                .filter(|(mid, _)| pending.recent.first_time(mid))
                .map(|(_, frame)| frame)
                .collect();
            pending.offline_gate = prepared.gate;
            pending.cursor = pending.cursor.max(prepared.gate);
            pending.offline_up_to = prepared.last_position;
            if prepared.more {
                pending.offline_after = Some(prepared.last_position.unwrap_or(0));
            }
            if prepared.appended > 0 {
                // Moved to the inbox after it was read: the writer
                // reads it again once the ack is written.
                pending.needs_sync = true;
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
        return Ok(pending);
    }
    let budget = LOGIN_BUDGET_BYTES.saturating_sub(pending.frames.iter().map(Vec::len).sum());
    let complete = inbox.complete;
    let taken = inbox_frames(
        kind,
        inbox.entries,
        pending.cursor,
        &mut pending.recent,
        budget,
        !pending.frames.is_empty(),
    );
    pending.frames.extend(taken.frames);
    pending.cursor = taken.cursor;
    if complete && taken.all_fit {
        pending.cursor = pending.cursor.max(inbox.last_seq);
    } else {
        pending.needs_sync = true;
    }
    Ok(pending)
}

/// Redis could not be reached: the client is told to try again.
pub fn redis_unavailable(e: RedisError) -> Failure {
    tracing::warn!(error = %e, "cannot reach redis");
    Failure::new(
        errno::UNAVAILABLE,
        "the chat cluster is temporarily unavailable; try again",
    )
}
