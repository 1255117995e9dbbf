//! Trimming delivered inbox entries from Redis, and raising members'
//! cursors in group logs, in batches: a busy receiver costs Redis one trim
//! per batch, not one per message.
//!
//! Group cursors are written less often ([`GROUP_CURSOR_EVERY`], and at
//! once when a session ends): a member of a busy group would otherwise cost
//! a write per chat, which is what group logs save. A cursor behind is
//! never a loss, only chats handed over again after a node died.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use crate::redis::Redis;

/// How long delivered inbox entries wait to be trimmed, so trims are batched.
pub const TRIM_EVERY: Duration = Duration::from_millis(20);

/// How often members' group cursors are written while their sessions last.
pub const GROUP_CURSOR_EVERY: Duration = Duration::from_secs(5);

pub struct Trimmer {
    redis: Redis,
    /// Per user, the highest inbox sequence delivered and not yet trimmed.
    marks: Mutex<HashMap<i64, u64>>,
    /// Per (user, group), the highest group log entry delivered and not
    /// yet written to the user's cursor.
    cursors: Mutex<Cursors>,
    waiting: Notify,
}

#[derive(Default)]
struct Cursors {
    marks: HashMap<(i64, i64), u64>,
    /// Users whose cursors go with the next batch (their session ended).
    urgent: HashSet<i64>,
    written_at: Option<Instant>,
}

impl Trimmer {
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            marks: Mutex::default(),
            cursors: Mutex::default(),
            waiting: Notify::new(),
        }
    }

    /// Notes that the user's inbox entries up to `seq` were delivered; they
    /// are trimmed with the next batch.
    pub fn note_delivered(&self, user: i64, seq: u64) {
        if seq == 0 {
            return;
        }
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        let mark = marks.entry(user).or_insert(0);
        *mark = (*mark).max(seq);
        drop(marks);
        self.waiting.notify_one();
    }

    /// Notes that the group's log entries up to `cseq` were delivered to
    /// the user; their cursor is raised with the next batch.
    pub fn note_group_delivered(&self, user: i64, group: i64, cseq: u64) {
        if cseq == 0 {
            return;
        }
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        let mark = cursors.marks.entry((user, group)).or_insert(0);
        *mark = (*mark).max(cseq);
    }

    /// A session of the user ended: their group cursors go with the next
    /// batch (the next login, maybe elsewhere, starts from them).
    pub fn session_ended(&self, user: i64) {
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        if cursors.marks.keys().any(|&(u, _)| u == user) {
            cursors.urgent.insert(user);
            drop(cursors);
            self.waiting.notify_one();
        }
    }

    /// Trims in batches, at most one per user every [`TRIM_EVERY`]. (The
    /// price: a node that dies may have written up to that much that is
    /// still untrimmed, and is handed over again.)
    pub async fn run(&self) {
        loop {
            let _ = tokio::time::timeout(GROUP_CURSOR_EVERY, self.waiting.notified()).await;
            tokio::time::sleep(TRIM_EVERY).await;
            if self.flush_due(false).await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.waiting.notify_one();
            }
        }
    }

    /// Trims what is waiting now; on failure keeps it for the next try (an
    /// untrimmed entry is at worst delivered again, never lost).
    pub async fn flush(&self) -> Result<(), ()> {
        self.flush_due(true).await
    }

    /// Trims what is waiting, and writes the group cursors that are due
    /// (`all`: every one).
    async fn flush_due(&self, all: bool) -> Result<(), ()> {
        let cursors: Vec<(i64, i64, u64)> = {
            let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
            let due = all
                || cursors
                    .written_at
                    .is_none_or(|at| at.elapsed() >= GROUP_CURSOR_EVERY);
            if due {
                cursors.written_at = Some(Instant::now());
                cursors.urgent.clear();
                std::mem::take(&mut cursors.marks)
                    .into_iter()
                    .map(|((user, group), cseq)| (user, group, cseq))
                    .collect()
            } else if cursors.urgent.is_empty() {
                Vec::new()
            } else {
                let urgent = std::mem::take(&mut cursors.urgent);
                let taken: Vec<(i64, i64)> = cursors
                    .marks
                    .keys()
                    .filter(|(user, _)| urgent.contains(user))
                    .copied()
                    .collect();
                taken
                    .into_iter()
                    .filter_map(|key| cursors.marks.remove(&key).map(|c| (key.0, key.1, c)))
                    .collect()
            }
        };
        if let Err(e) = self.redis.raise_group_cursors(&cursors).await {
            tracing::warn!(error = %e, cursors = cursors.len(), "cannot raise group cursors; will retry");
            let mut marks = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
            for (user, group, cseq) in cursors {
                let mark = marks.marks.entry((user, group)).or_insert(0);
                *mark = (*mark).max(cseq);
                marks.urgent.insert(user);
            }
            return Err(());
        }
        let batch: Vec<(i64, u64)> =
            std::mem::take(&mut *self.marks.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        if let Err(e) = self.redis.trim_delivered(&batch).await {
            tracing::warn!(error = %e, users = batch.len(), "cannot trim inboxes; will retry");
            let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
            for (user, seq) in batch {
                let mark = marks.entry(user).or_insert(0);
                *mark = (*mark).max(seq);
            }
            return Err(());
        }
        Ok(())
    }
}
