//! The only module of the offline service that speaks SQL, and the place
//! where "never lose a message" is decided.
//!
//! Every Store and Ack first locks the receiver's row in `offline_receivers`
//! (`SELECT ... FOR UPDATE`) and holds it until commit. Positions are
//! therefore handed out in commit order, per receiver: a reader that fetched
//! up to position N has seen every message at or below N, and `Ack(N)` removes
//! exactly those. A message stored during a fetch or an ack gets a position
//! above anything the reader has seen, so no ack can remove it.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{MySql, MySqlPool, Row as _, Transaction};

use crate::{
    domain::{Limits, NewMessage, ReceiverId, Stored, StoredMessage},
    error::OfflineError,
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Lock conflicts between concurrent first stores for one receiver are
/// resolved by InnoDB aborting one transaction; we retry it this many times.
const DEADLOCK_RETRIES: usize = 5;

#[derive(Clone)]
pub struct OfflineStore {
    pool: MySqlPool,
    limits: Limits,
}

struct ReceiverState {
    last_position: u64,
    pending: u32,
}

impl OfflineStore {
    pub fn new(pool: MySqlPool, limits: Limits) -> Self {
        Self { pool, limits }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    #[tracing::instrument(name = "sql.store", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn store(&self, message: &NewMessage) -> Result<Stored, OfflineError> {
        let mut attempt = 0;
        loop {
            match self.store_once(message).await {
                Err(OfflineError::Unavailable(e))
                    if is_lock_conflict(&e) && attempt < DEADLOCK_RETRIES =>
                {
                    attempt += 1;
                    tracing::debug!(attempt, "store hit a lock conflict; retrying");
                }
                result => return result,
            }
        }
    }

    async fn store_once(&self, message: &NewMessage) -> Result<Stored, OfflineError> {
        let mut tx = self.pool.begin().await?;
        let receiver = lock_receiver(&mut tx, message.receiver, true).await?;

        if let Some(client_id) = &message.client_msg_id {
            let existing = sqlx::query(
                "SELECT position FROM offline_messages \
                 WHERE receiver_id = ? AND sender_id = ? AND client_msg_id = ? AND inbox_seq = ?",
            )
            .bind(message.receiver.get())
            .bind(message.sender_id)
            .bind(client_id)
            .bind(message.inbox_seq)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                tx.commit().await?;
                return Ok(Stored {
                    position: row.get(0),
                    duplicate: true,
                });
            }
        }

        if receiver.pending >= self.limits.max_backlog {
            return Err(OfflineError::BacklogFull {
                receiver: message.receiver.get(),
                max: self.limits.max_backlog,
            });
        }

        let position = receiver.last_position + 1;
        sqlx::query(
            "INSERT INTO offline_messages \
             (receiver_id, position, sender_id, client_msg_id, payload, stored_at_ms, inbox_seq) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(message.receiver.get())
        .bind(position)
        .bind(message.sender_id)
        .bind(message.client_msg_id.as_deref())
        .bind(&message.payload)
        .bind(now_unix_ms())
        .bind(message.inbox_seq)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE offline_receivers SET last_position = ?, pending = pending + 1 WHERE receiver_id = ?",
        )
        .bind(position)
        .bind(message.receiver.get())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Stored {
            position,
            duplicate: false,
        })
    }

    /// Up to `limit` pending messages after `after`, oldest first, and whether
    /// more follow.
    #[tracing::instrument(name = "sql.fetch", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn fetch(
        &self,
        receiver: ReceiverId,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<StoredMessage>, bool), OfflineError> {
        let rows = sqlx::query(
            "SELECT position, sender_id, payload, stored_at_ms, client_msg_id, inbox_seq FROM offline_messages \
             WHERE receiver_id = ? AND position > ? ORDER BY position LIMIT ?",
        )
        .bind(receiver.get())
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut messages = Vec::new();
        let mut bytes = 0;
        for row in rows.iter().take(limit as usize) {
            let message = StoredMessage {
                position: row.get(0),
                sender_id: row.get(1),
                payload: row.get(2),
                stored_at_unix_ms: row.get(3),
                client_msg_id: row.get(4),
                inbox_seq: row.get(5),
            };
            bytes += message.payload.len();
            if bytes > self.limits.max_page_bytes && !messages.is_empty() {
                break;
            }
            messages.push(message);
        }
        let more = rows.len() > messages.len();
        Ok((messages, more))
    }

    /// Receivers with messages that have no inbox sequence, at most
    /// `limit`, and whether there are more.
    #[tracing::instrument(name = "sql.unsequenced", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn unsequenced(
        &self,
        limit: u32,
        sender: Option<i64>,
    ) -> Result<(Vec<i64>, bool), OfflineError> {
        let rows = sqlx::query(
            "SELECT DISTINCT receiver_id FROM offline_messages WHERE inbox_seq = 0 \
             AND (? IS NULL OR sender_id = ?) ORDER BY receiver_id LIMIT ?",
        )
        .bind(sender)
        .bind(sender)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut receivers: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
        let more = receivers.len() > limit as usize;
        receivers.truncate(limit as usize);
        Ok((receivers, more))
    }

    /// Removes the receiver's messages at or below `up_to`. Acknowledging a
    /// position that was never handed out is refused: it could only come
    /// from a reader that has not seen those messages.
    #[tracing::instrument(name = "sql.ack", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn ack(&self, receiver: ReceiverId, up_to: u64) -> Result<u64, OfflineError> {
        let mut tx = self.pool.begin().await?;
        let state = lock_receiver(&mut tx, receiver, false).await?;
        if up_to > state.last_position {
            return Err(OfflineError::InvalidArgument(format!(
                "cannot acknowledge position {up_to}: the latest position stored for user {} is {}",
                receiver.get(),
                state.last_position
            )));
        }
        let removed =
            sqlx::query("DELETE FROM offline_messages WHERE receiver_id = ? AND position <= ?")
                .bind(receiver.get())
                .bind(up_to)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if removed > 0 {
            sqlx::query("UPDATE offline_receivers SET pending = pending - ? WHERE receiver_id = ?")
                .bind(removed)
                .bind(receiver.get())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(removed)
    }
}

/// Locks (and with `create`, first creates) the receiver's row until the
/// transaction ends.
async fn lock_receiver(
    tx: &mut Transaction<'_, MySql>,
    receiver: ReceiverId,
    create: bool,
) -> Result<ReceiverState, OfflineError> {
    if create {
        sqlx::query(
            "INSERT INTO offline_receivers (receiver_id, last_position, pending) VALUES (?, 0, 0) \
             ON DUPLICATE KEY UPDATE receiver_id = receiver_id",
        )
        .bind(receiver.get())
        .execute(&mut **tx)
        .await?;
    }
    let row = sqlx::query(
        "SELECT last_position, pending FROM offline_receivers WHERE receiver_id = ? FOR UPDATE",
    )
    .bind(receiver.get())
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map_or(
        ReceiverState {
            last_position: 0,
            pending: 0,
        },
        |r| ReceiverState {
            last_position: r.get(0),
            pending: r.get(1),
        },
    ))
}

fn is_lock_conflict(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| matches!(e.number(), 1205 | 1213)))
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
