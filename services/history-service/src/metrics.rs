//! The history service's own metrics (`/metrics`, next to the gRPC server's).

use std::sync::OnceLock;

use telemetry::metrics::{
    Counter, Family, Gauge, Histogram, exponential_buckets, latency_histogram, register,
};

pub struct Metrics {
    /// Messages stored for the first time.
    pub ingested: Counter,
    /// Entries whose message was already stored (redeliveries).
    pub duplicates: Counter,
    /// Messages deleted or never stored because they were retracted.
    pub retracted: Counter,
    /// Entries that could not be read as an entry (acknowledged and skipped).
    pub malformed: Counter,
    /// Entries the database refused one by one (acknowledged and skipped).
    pub dropped: Counter,
    /// Stream entries acknowledged (read and done with, for any reason): an
    /// entry holds one chat or several (a gateway's call's chats for one
    /// partition), so this is what the streams' `entries-added` compares to.
    pub entries: Counter,
    /// Chats per batch (one transaction).
    pub batch_size: Histogram,
    /// Time to store a batch (one transaction).
    pub batch_duration: Histogram,
    /// Now minus the accepted time of the oldest entry of the last batch, in
    /// milliseconds (0 after a read that found nothing new).
    pub lag_ms: Gauge,
    /// The same per batch, as a distribution.
    pub lag: Histogram,
    /// Entries delivered to a history consumer and not yet acknowledged,
    /// over all partitions (as of the last trim).
    pub pending: Gauge,
    /// Entries written by gateways and not yet read, over all partitions.
    pub backlog: Gauge,
    /// Failures of Redis or the database on the ingest path, by `kind`.
    pub errors: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Messages deleted by retention.
    pub expired: Counter,
}

pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = Metrics {
            ingested: Counter::default(),
            duplicates: Counter::default(),
            retracted: Counter::default(),
            malformed: Counter::default(),
            dropped: Counter::default(),
            entries: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            batch_duration: latency_histogram(),
            lag_ms: Gauge::default(),
            lag: latency_histogram(),
            pending: Gauge::default(),
            backlog: Gauge::default(),
            errors: Family::default(),
            expired: Counter::default(),
        };
        register(
            "history_ingested_messages",
            "Messages stored by the history ingest for the first time",
            m.ingested.clone(),
        );
        register(
            "history_duplicate_messages",
            "Stream entries whose message was already stored (redeliveries)",
            m.duplicates.clone(),
        );
        register(
            "history_retracted_messages",
            "Messages deleted or never stored because their number was retracted",
            m.retracted.clone(),
        );
        register(
            "history_malformed_entries",
            "Stream entries that were not valid entries (acknowledged and skipped)",
            m.malformed.clone(),
        );
        register(
            "history_dropped_entries",
            "Stream entries the database refused one by one (acknowledged and skipped)",
            m.dropped.clone(),
        );
        register(
            "history_stream_entries",
            "Stream entries acknowledged, for any reason (an entry holds one chat or several)",
            m.entries.clone(),
        );
        register(
            "history_ingest_batch_size",
            "Chats per ingest batch (one transaction)",
            m.batch_size.clone(),
        );
        register(
            "history_ingest_batch_duration_seconds",
            "Time to store one ingest batch",
            m.batch_duration.clone(),
        );
        register(
            "history_ingest_lag_ms",
            "Now minus the accepted time of the oldest entry of the last batch, in ms (0 when caught up)",
            m.lag_ms.clone(),
        );
        register(
            "history_ingest_lag_seconds",
            "Per batch: now minus the accepted time of its oldest entry",
            m.lag.clone(),
        );
        register(
            "history_stream_pending",
            "Stream entries delivered to the history consumers and not yet acknowledged",
            m.pending.clone(),
        );
        register(
            "history_stream_backlog",
            "Stream entries written by the gateways and not yet read by the history service",
            m.backlog.clone(),
        );
        register(
            "history_ingest_errors",
            "Failures on the ingest path, by kind (redis, database)",
            m.errors.clone(),
        );
        register(
            "history_expired_messages",
            "Messages deleted by retention (CLUSTERCHAT_HISTORY_RETENTION_DAYS)",
            m.expired.clone(),
        );
        m
    })
}
