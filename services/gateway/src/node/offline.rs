//! The offline service from this node's side: storing a message there
//! (with retries; the message id makes a retry store nothing twice),
//! moving the inbox of a user nobody holds there, and telling other nodes
//! about messages stored there while Redis was unreachable.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    sync::{Arc, Mutex},
    time::Duration,
};

use clusterchat_proto::offline::v1::{
    self as offline_pb, offline_service_client::OfflineServiceClient,
};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::{
    protocol::classic::{Failure, errno},
    redis::{Redis, RedisError},
    upstream::{Traced, failure_from_status},
};

pub struct OfflineStore {
    client: OfflineServiceClient<Traced>,
    redis: Redis,
    /// Where moves run, so shutdown waits for them.
    tasks: TaskTracker,
    /// Users whose inbox is being moved to the offline store; true when
    /// another move was asked for meanwhile.
    moving: Mutex<HashMap<i64, bool>>,
    move_permits: Semaphore,
    /// Remote receivers of messages stored offline because Redis was
    /// unreachable: their nodes are told once Redis answers again.
    nudges: Mutex<HashSet<i64>>,
    /// Receivers with chats stored while Redis was unreachable (without an
    /// inbox sequence): their next chat from here reaches their inbox only
    /// after those did, so what one sender sent stays in order
    /// (`delivery::send`). Filled by this node's own offline stores, and
    /// from the offline service's list at start and after each outage (a
    /// sender may go on through another node than the one that stored
    /// its chats).
    owed: Mutex<HashSet<i64>>,
    /// `owed` is not empty (read without its lock on every chat).
    any_owed: std::sync::atomic::AtomicBool,
    /// The list must be read from the offline service before the next
    /// chat is recorded.
    owed_stale: std::sync::atomic::AtomicBool,
    /// One reading of the list at a time; when the last attempt failed.
    owed_reading: tokio::sync::Mutex<Option<std::time::Instant>>,
}

impl OfflineStore {
    pub fn new(client: OfflineServiceClient<Traced>, redis: Redis, tasks: TaskTracker) -> Self {
        Self {
            client,
            redis,
            tasks,
            moving: Mutex::default(),
            move_permits: Semaphore::new(32),
            nudges: Mutex::default(),
            owed: Mutex::default(),
            any_owed: std::sync::atomic::AtomicBool::new(false),
            owed_stale: std::sync::atomic::AtomicBool::new(true),
            owed_reading: tokio::sync::Mutex::new(None),
        }
    }

    /// Redis was (or may have been) unreachable: chats may have been stored
    /// without an inbox sequence by any node; read the list again.
    pub fn outage_seen(&self) {
        self.owed_stale
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Reads the receivers with chats without an inbox sequence from the
    /// offline service, when an outage (or this node's start) made the list
    /// stale. One call per outage for the whole node. When the offline
    /// service does not answer, chats go on (tried again a second later).
    pub async fn refresh_owed(&self) {
        use std::sync::atomic::Ordering;
        if !self.owed_stale.load(Ordering::Acquire) {
            return;
        }
        let mut reading = self.owed_reading.lock().await;
        if !self.owed_stale.load(Ordering::Acquire)
            || reading.is_some_and(|failed| failed.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        // Cleared first: an outage seen during the call marks it stale again.
        self.owed_stale.store(false, Ordering::Release);
        match self
            .client
            .clone()
            .unsequenced(offline_pb::UnsequencedRequest {
                limit: 0,
                sender_id: 0,
            })
            .await
        {
            Ok(list) => {
                let list = list.into_inner();
                if list.more {
                    tracing::warn!(
                        receivers = list.receiver_ids.len(),
                        "more receivers have chats stored during an outage than one reading takes"
                    );
                }
                let mut owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
                owed.extend(list.receiver_ids);
                self.any_owed
                    .store(!owed.is_empty(), std::sync::atomic::Ordering::Release);
                *reading = None;
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), "cannot read which receivers have chats stored during an outage");
                self.owed_stale.store(true, Ordering::Release);
                *reading = Some(std::time::Instant::now());
            }
        }
    }

    /// The receivers `sender` has chats for that were stored without an
    /// inbox sequence (during a Redis outage, maybe through another node the
    /// sender has left since): this node owes them too, so the sender's next
    /// chats keep their place behind those. Asked at each login, before its
    /// ack; when the offline service does not answer, the login goes on.
    pub async fn owe_what_sender_left(&self, sender: i64) {
        match self
            .client
            .clone()
            .unsequenced(offline_pb::UnsequencedRequest {
                limit: 0,
                sender_id: sender,
            })
            .await
        {
            Ok(list) => {
                for receiver in list.into_inner().receiver_ids {
                    self.owe(receiver);
                }
            }
            Err(status) => {
                tracing::warn!(sender, code = ?status.code(), "cannot read whom a sender has chats stored during an outage for");
            }
        }
    }

    /// This node stored a chat for `user` without an inbox sequence.
    pub fn owe(&self, user: i64) {
        let mut owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        owed.insert(user);
        self.any_owed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether chats for `user` stored here without an inbox sequence may
    /// not be in their inbox yet.
    pub fn owes(&self, user: i64) -> bool {
        // Almost always nobody: no lock per receiver of every chat then.
        if !self.any_owed.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        self.owed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&user)
    }

    /// What was owed to `user` is in their inbox now.
    pub fn repaid(&self, user: i64) {
        let mut owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        owed.remove(&user);
        if owed.is_empty() {
            self.any_owed
                .store(false, std::sync::atomic::Ordering::Release);
        }
    }

    /// The offline service's client, for reading a user's stored messages.
    pub fn client(&self) -> OfflineServiceClient<Traced> {
        self.client.clone()
    }

    /// Stores a message with the offline service, retrying briefly; the
    /// request's idempotency key makes a retry store nothing twice.
    pub async fn store(&self, request: offline_pb::StoreRequest) -> Result<(), Failure> {
        let receiver = request.receiver_id;
        let mut attempt = 0;
        loop {
            match self.client.clone().store(request.clone()).await {
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

    /// Acknowledges the user's stored messages up to `up_to` (they were
    /// delivered), retrying briefly. Not acknowledged, they stay stored and
    /// come again at the next login: a duplicate is better than a loss.
    pub async fn acknowledge(&self, user: i64, up_to: u64) {
        let request = offline_pb::AckRequest {
            receiver_id: user,
            up_to,
        };
        for attempt in 1..=3u64 {
            match self.client.clone().ack(request).await {
                Ok(_) => return,
                Err(status) => {
                    tracing::warn!(user, attempt, code = ?status.code(), "offline ack failed");
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
    pub fn move_inbox_later(self: &Arc<Self>, user: i64) {
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
        let store = self.clone();
        // Part of the trace of the message that asked for the move.
        let span = tracing::info_span!("inbox.move", user);
        self.tasks.spawn(
            async move {
                let _permit = store.move_permits.acquire().await;
                loop {
                    if let Err(failure) = store.move_inbox(user).await {
                        // Still in the inbox: handed over at the next login.
                        tracing::warn!(
                            user,
                            errmsg = failure.errmsg,
                            "inbox not moved to the offline store"
                        );
                    }
                    let mut moving = store.moving.lock().unwrap_or_else(|p| p.into_inner());
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
        let unavailable = |e: RedisError| Failure::new(errno::UNAVAILABLE, e.to_string());
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
                self.store(offline_pb::StoreRequest {
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

    /// The node holding `user` is told to read the offline store as soon
    /// as Redis takes it.
    pub fn nudge_later(&self, user: i64) {
        self.nudges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user);
    }

    /// Tells the nodes of remote receivers of offline-stored messages, every
    /// 200 ms until Redis takes it.
    pub async fn send_nudges(&self) {
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
}
