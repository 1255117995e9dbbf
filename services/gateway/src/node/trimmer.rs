//! Trimming delivered inbox entries from Redis, and raising members'
//! cursors in group logs, in batches: a busy receiver costs Redis one trim
//! per batch, not one per message.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::sync::Notify;

use crate::redis::Redis;

/// How long delivered inbox entries wait to be trimmed, so trims are batched.
pub const TRIM_EVERY: Duration = Duration::from_millis(20);

pub struct Trimmer {
    redis: Redis,
    /// Per user, the highest inbox sequence delivered and not yet trimmed.
    marks: Mutex<HashMap<i64, u64>>,
    /// Per (user, group), the highest group log entry delivered and not
    /// yet written to the user's cursor.
    cursors: Mutex<HashMap<(i64, i64), u64>>,
    waiting: Notify,
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
        let mark = cursors.entry((user, group)).or_insert(0);
        *mark = (*mark).max(cseq);
        drop(cursors);
        self.waiting.notify_one();
    }

    /// Trims in batches, at most one per user every [`TRIM_EVERY`]. (The
    /// price: a node that dies may have written up to that much that is
    /// still untrimmed, and is handed over again.)
    pub async fn run(&self) {
        loop {
            self.waiting.notified().await;
            tokio::time::sleep(TRIM_EVERY).await;
            if self.flush().await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.waiting.notify_one();
            }
        }
    }

    /// Trims what is waiting now; on failure keeps it for the next try (an
    /// untrimmed entry is at worst delivered again, never lost).
    pub async fn flush(&self) -> Result<(), ()> {
        let cursors: Vec<(i64, i64, u64)> =
            std::mem::take(&mut *self.cursors.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .map(|((user, group), cseq)| (user, group, cseq))
                .collect();
        if let Err(e) = self.redis.raise_group_cursors(&cursors).await {
            tracing::warn!(error = %e, cursors = cursors.len(), "cannot raise group cursors; will retry");
            let mut marks = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
            for (user, group, cseq) in cursors {
                let mark = marks.entry((user, group)).or_insert(0);
                *mark = (*mark).max(cseq);
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
