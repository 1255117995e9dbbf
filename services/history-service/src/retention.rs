//! Retention: with `CLUSTERCHAT_HISTORY_RETENTION_DAYS` above 0, messages
//! sent longer ago than that are deleted, periodically, in small chunks (so
//! the ingest and readers never wait long behind a big delete).

use std::time::Duration;

use shutdown::Shutdown;

use crate::{config::Retention, metrics::metrics, store::HistoryStore};

/// Messages deleted per statement.
const CHUNK: u32 = 1000;
/// The pause between two chunks.
const BETWEEN_CHUNKS: Duration = Duration::from_millis(20);
const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;

/// Runs until `shutdown`; returns at once when retention is off.
pub async fn run(store: HistoryStore, retention: Retention, shutdown: Shutdown) {
    if retention.days == 0 {
        return;
    }
    tracing::info!(days = retention.days, every = ?retention.interval, "history retention on");
    loop {
        let cutoff = now_unix_us() - i64::from(retention.days) * MICROS_PER_DAY;
        match expire(&store, cutoff, &shutdown).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, days = retention.days, "expired old history"),
            Err(e) => {
                tracing::warn!(error = %e, "history retention failed; trying again at the next interval")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(retention.interval) => {}
            () = shutdown.requested() => return,
        }
    }
}

/// Deletes every message sent before `cutoff_us`, a chunk at a time.
pub async fn expire(
    store: &HistoryStore,
    cutoff_us: i64,
    shutdown: &Shutdown,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let deleted = store.delete_sent_before(cutoff_us, CHUNK).await?;
        total += deleted;
        metrics().expired.inc_by(deleted);
        if deleted < u64::from(CHUNK) || shutdown.is_requested() {
            return Ok(total);
        }
        tokio::time::sleep(BETWEEN_CHUNKS).await;
    }
}

fn now_unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
