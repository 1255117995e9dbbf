//! The gateway's Prometheus metrics (served on `/metrics` of the admin port).

use std::sync::OnceLock;

use telemetry::metrics::{Counter, Family, Gauge, Histogram, latency_histogram, register};

type Labels = Vec<(&'static str, &'static str)>;

pub struct GatewayMetrics {
    /// Open client connections, by transport (`tcp`, `ws`).
    pub connections: Family<Labels, Gauge>,
    /// Users logged in on this node.
    pub online_users: Gauge,
    /// Requests received, by kind (`login`, `chat`, `group_chat` ...).
    pub requests: Family<Labels, Counter>,
    /// Messages handed on, by route (`local`, `remote`, `offline`).
    pub deliveries: Family<Labels, Counter>,
    /// From the sending node's publish to this node's hand-off to the
    /// receiver's queue, by path (`local`, `remote`).
    pub delivery_latency: Family<Labels, Histogram>,
    /// Offline messages handed over at or after login.
    pub offline_delivered: Counter,
    /// Requests that waited for the connection's rate (paced, not refused).
    pub paced: Counter,
    /// Errors answered to clients, by errno.
    pub errors: Family<Vec<(&'static str, String)>, Counter>,
    /// Connections or requests refused by a budget, by why
    /// (`frame_deadline`, `partial_budget`, `handshake_timeout`,
    /// `login_deadline`, `throttle_address`, `throttle_account` ...).
    pub refused: Family<Labels, Counter>,
    /// Live deliveries left in the inbox because a queue was over its bound
    /// (the writer reads them from there), by which (`session`, `bus`).
    pub overflowed: Family<Labels, Counter>,
    /// Appends on a Redis Cluster that no replica confirmed in time.
    pub unreplicated_appends: Counter,
    /// Second copies of a message a session had written already.
    pub duplicates_skipped: Counter,
    /// Chats delivered without a conversation number (Redis could not
    /// number them): they carry no `cseq` and are missing from history.
    pub unnumbered: Counter,
    pub group_log_gaps: Counter,
    /// Script calls that record chats (`append`, `number`, `deliver`): per
    /// message, what Redis charges most for (one call per shard per batch
    /// on a cluster, one per batch on a single Redis).
    pub script_calls: Family<Labels, Counter>,
    /// Presence changes published to watchers (one per watcher told).
    pub presence_announced: Counter,
    /// 1 while `/healthz` is green (subscribed to Redis, not draining), as
    /// of the last scrape; what the alert rules watch.
    pub healthy: Gauge,
}

pub fn metrics() -> &'static GatewayMetrics {
    static METRICS: OnceLock<GatewayMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = GatewayMetrics {
            connections: Family::default(),
            online_users: Gauge::default(),
            requests: Family::default(),
            deliveries: Family::default(),
            delivery_latency: Family::new_with_constructor(latency_histogram),
            offline_delivered: Counter::default(),
            paced: Counter::default(),
            errors: Family::default(),
            refused: Family::default(),
            overflowed: Family::default(),
            unreplicated_appends: Counter::default(),
            duplicates_skipped: Counter::default(),
            unnumbered: Counter::default(),
            group_log_gaps: Counter::default(),
            script_calls: Family::default(),
            presence_announced: Counter::default(),
            healthy: Gauge::default(),
        };
        register(
            "gateway_connections",
            "Open client connections by transport",
            m.connections.clone(),
        );
        register(
            "gateway_healthy",
            "1 while /healthz is green (subscribed to Redis, not draining)",
            m.healthy.clone(),
        );
        register(
            "gateway_presence_announced",
            "Presence changes published to watchers, one per watcher told",
            m.presence_announced.clone(),
        );
        register(
            "gateway_online_users",
            "Users logged in on this node",
            m.online_users.clone(),
        );
        register(
            "gateway_requests",
            "Client requests by kind",
            m.requests.clone(),
        );
        register(
            "gateway_deliveries",
            "Chat messages handed on, by route",
            m.deliveries.clone(),
        );
        register(
            "gateway_delivery_latency_seconds",
            "Publish to hand-off to the receiver's queue, by path",
            m.delivery_latency.clone(),
        );
        register(
            "gateway_offline_delivered",
            "Offline messages handed over",
            m.offline_delivered.clone(),
        );
        register(
            "gateway_paced_requests",
            "Requests that waited for their connection's rate",
            m.paced.clone(),
        );
        register(
            "gateway_errors",
            "Errors answered to clients, by errno",
            m.errors.clone(),
        );
        register(
            "gateway_refused",
            "Connections or requests refused by a budget, by why",
            m.refused.clone(),
        );
        register(
            "gateway_overflowed_deliveries",
            "Live deliveries left in the inbox because a queue was full",
            m.overflowed.clone(),
        );
        register(
            "gateway_unreplicated_appends",
            "Appends on a Redis Cluster that no replica confirmed within the wait",
            m.unreplicated_appends.clone(),
        );
        register(
            "gateway_unnumbered_chats",
            "Chats delivered without a conversation number (missing from history)",
            m.unnumbered.clone(),
        );
        register(
            "gateway_group_log_gaps",
            "Group log reads that found the log starting after a member's cursor (older than the log keeps, or a new counter epoch)",
            m.group_log_gaps.clone(),
        );
        register(
            "gateway_duplicates_skipped",
            "Second copies of a message a session had written already (an append whose reply was lost, stored offline too)",
            m.duplicates_skipped.clone(),
        );
        register(
            "gateway_redis_script_calls",
            "Redis script calls that record chats, by script (append, number, deliver)",
            m.script_calls.clone(),
        );
        m
    })
}

/// Counts one script call that records chats.
pub fn script_call(script: &'static str) {
    metrics()
        .script_calls
        .get_or_create(&label("script", script))
        .inc();
}

pub fn label(key: &'static str, value: &'static str) -> Labels {
    vec![(key, value)]
}
