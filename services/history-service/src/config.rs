//! Settings of the history service, from `CLUSTERCHAT_HISTORY_*` variables.

use std::{net::SocketAddr, time::Duration};

use env_config::{ConfigError, Secret, internal_token, millis_or, optional_or, var_or};
use mysql_pool::MySqlSettings;

use crate::{search::SearchSettings, stream::RedisTarget};

#[derive(Debug, Clone)]
pub struct Config {
    /// `CLUSTERCHAT_HISTORY_LISTEN`, default `127.0.0.1:50053`; port 0 picks a free one.
    pub listen: SocketAddr,
    /// `CLUSTERCHAT_HISTORY_METRICS_LISTEN`, default `127.0.0.1:9103`
    /// (`off` disables): `GET /metrics` in the Prometheus text format.
    pub metrics_listen: Option<SocketAddr>,
    /// `CLUSTERCHAT_HISTORY_DATABASE_URL`, `..._DB_MAX_CONNECTIONS`, `..._DB_ACQUIRE_TIMEOUT_MS`.
    pub mysql: MySqlSettings,
    pub ingest: IngestSettings,
    /// `CLUSTERCHAT_HISTORY_USER_SERVICE`, default `http://127.0.0.1:50051`:
    /// where group memberships (and join times) come from.
    pub user_service: String,
    /// `CLUSTERCHAT_HISTORY_MEMBERSHIP_TTL_MS` (default 5 s): how long a
    /// user's memberships are reused before the user service is asked again.
    pub membership_ttl: Duration,
    /// `CLUSTERCHAT_HISTORY_RETENTION_DAYS` (default 0 = keep forever) and
    /// `CLUSTERCHAT_HISTORY_RETENTION_INTERVAL_MS` (default 10 min).
    pub retention: Retention,
    /// `CLUSTERCHAT_HISTORY_REQUEST_TIMEOUT_MS`.
    pub request_timeout: Duration,
    /// `CLUSTERCHAT_HISTORY_STARTUP_PATIENCE_MS`: how long start-up waits for the database.
    pub startup_patience: Duration,
    /// `CLUSTERCHAT_HISTORY_SEARCH` (`on`, the default, or `off`): whether
    /// stored text is indexed for SearchMessages. Off saves the index's
    /// share of the ingest (see the README's search measurements); searches
    /// are then refused with FAILED_PRECONDITION, and what is stored while
    /// off is not found once it is on again.
    /// `CLUSTERCHAT_HISTORY_SEARCH_SCAN_ROWS` (default 20000): a search whose
    /// conversations hold at most this many messages reads them instead of
    /// asking the index (0: always the index).
    pub search: SearchSettings,
    /// `CLUSTERCHAT_INTERNAL_TOKEN` (required): callers must send it as
    /// `authorization: Bearer <token>`; health and reflection stay open. The
    /// service sends it to the user service too.
    pub internal_token: Secret,
}

/// Where the history streams are and how they are consumed.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// `CLUSTERCHAT_HISTORY_REDIS_URL`, default `redis://127.0.0.1:6479`:
    /// the gateways' Redis, in the same forms (`redis://` one server;
    /// `redis+cluster://HOST:PORT,...` or `URL,URL...` a Redis Cluster).
    pub redis: RedisTarget,
    /// `CLUSTERCHAT_HISTORY_REDIS_PREFIX`, default `cc:` (the gateways').
    pub prefix: String,
    /// `CLUSTERCHAT_HISTORY_CONSUMER`: this instance's name in the consumer
    /// group; default the host name, else `history-1`. Keep it stable across
    /// restarts: at start the service re-reads its own unacknowledged entries.
    pub consumer: String,
    /// `CLUSTERCHAT_HISTORY_BATCH` (default 4000): about how many entries
    /// one batch (one transaction) takes over all partitions. A batch's
    /// round trips and commit cost about the same whatever its size, and
    /// while chat keeps the cores busy they are what bounds how fast the
    /// service stores: with 1000 it stored 7,082 msg/s while chat ran at
    /// 11,325, with 4000 10,346 at 12,618 (README, "Batches of 4,000").
    /// Its memory is the batch: about 4 MB of chat-sized frames, up to
    /// 4000 × 64 KiB × 2 with full-size ones (deploy/k8s sets 1000 for its
    /// 256 MiB limit).
    pub batch: usize,
    /// `CLUSTERCHAT_HISTORY_POLL_IDLE_MS` (default 50): the pause after a
    /// read that found nothing.
    pub poll_idle: Duration,
    /// `CLUSTERCHAT_HISTORY_LINGER_MS` (default 100): the pause after a
    /// read that found less than a quarter of a batch, so that a trickle
    /// gathers into batches (each batch is one read per partition group,
    /// one transaction and its commit: at 5,000 chats/s, batches of a few
    /// dozen cost MariaDB three times as much per chat as batches of
    /// hundreds). Each lane pauses `linger` times the lanes, so at a steady
    /// rate batches are as large as with one lane; history lags a quiet
    /// stream by up to that (400 ms by default).
    pub linger: Duration,
    /// `CLUSTERCHAT_HISTORY_CLAIM_IDLE_MS` (default 60 s): entries another
    /// consumer has held unacknowledged this long are taken over.
    pub claim_idle: Duration,
    /// `CLUSTERCHAT_HISTORY_LANES` (default 1, 1 to 16): the partitions are
    /// dealt to this many lanes (partition N to lane N mod LANES), each
    /// reading, storing and acknowledging its own, with a transaction of
    /// its own in flight. A conversation is in one partition, so one lane.
    /// More lanes drain a backlog faster (4: 1.5-1.7× on the bench) when
    /// MariaDB has cores to spare; on cores shared with chat they take
    /// them from chat (README, "Ingest lanes"), hence 1 by default.
    pub lanes: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Messages older than this many days are deleted; 0 keeps them forever.
    pub days: u32,
    pub interval: Duration,
}

/// The token services and gateways use in tests (not a secret: tests only).
pub const TEST_INTERNAL_TOKEN: &str = "test-internal-token-not-a-secret";

pub const DEFAULT_DATABASE_URL: &str =
    "mysql://clusterchat:clusterchat@127.0.0.1:3307/clusterchat_history";

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let prefix: String = var_or("CLUSTERCHAT_HISTORY_REDIS_PREFIX", "cc:".to_owned())?;
        if prefix.contains(['{', '}']) {
            return Err(ConfigError::Invalid {
                name: "CLUSTERCHAT_HISTORY_REDIS_PREFIX".into(),
                value: prefix,
                reason: "it must not contain braces: the partition's hash tag {h:N} follows it"
                    .into(),
            });
        }
        let redis_url: Secret = var_or(
            "CLUSTERCHAT_HISTORY_REDIS_URL",
            Secret::new("redis://127.0.0.1:6479"),
        )?;
        let batch: usize = var_or("CLUSTERCHAT_HISTORY_BATCH", 4000)?;
        let lanes: u32 = var_or("CLUSTERCHAT_HISTORY_LANES", 1)?;
        if !(1..=crate::domain::HISTORY_PARTITIONS).contains(&lanes) {
            return Err(ConfigError::Invalid {
                name: "CLUSTERCHAT_HISTORY_LANES".into(),
                value: lanes.to_string(),
                reason: format!(
                    "from 1 to {} (the partitions are dealt to the lanes)",
                    crate::domain::HISTORY_PARTITIONS
                ),
            });
        }
        if batch == 0 {
            return Err(ConfigError::Invalid {
                name: "CLUSTERCHAT_HISTORY_BATCH".into(),
                value: "0".into(),
                reason: "a batch holds at least one entry".into(),
            });
        }
        Ok(Self {
            listen: var_or("CLUSTERCHAT_HISTORY_LISTEN", ([127, 0, 0, 1], 50053).into())?,
            metrics_listen: optional_or(
                "CLUSTERCHAT_HISTORY_METRICS_LISTEN",
                Some(([127, 0, 0, 1], 9103).into()),
            )?,
            mysql: MySqlSettings::from_env("CLUSTERCHAT_HISTORY", DEFAULT_DATABASE_URL)?,
            ingest: IngestSettings {
                redis: RedisTarget::parse(redis_url.expose()),
                prefix,
                consumer: var_or("CLUSTERCHAT_HISTORY_CONSUMER", default_consumer())?,
                batch,
                poll_idle: millis_or(
                    "CLUSTERCHAT_HISTORY_POLL_IDLE_MS",
                    Duration::from_millis(50),
                )?,
                linger: millis_or("CLUSTERCHAT_HISTORY_LINGER_MS", Duration::from_millis(100))?,
                claim_idle: millis_or(
                    "CLUSTERCHAT_HISTORY_CLAIM_IDLE_MS",
                    Duration::from_secs(60),
                )?,
                lanes,
            },
            user_service: var_or(
                "CLUSTERCHAT_HISTORY_USER_SERVICE",
                "http://127.0.0.1:50051".to_owned(),
            )?,
            membership_ttl: millis_or(
                "CLUSTERCHAT_HISTORY_MEMBERSHIP_TTL_MS",
                Duration::from_secs(5),
            )?,
            retention: Retention {
                days: var_or("CLUSTERCHAT_HISTORY_RETENTION_DAYS", 0)?,
                interval: millis_or(
                    "CLUSTERCHAT_HISTORY_RETENTION_INTERVAL_MS",
                    Duration::from_secs(600),
                )?,
            },
            request_timeout: millis_or(
                "CLUSTERCHAT_HISTORY_REQUEST_TIMEOUT_MS",
                Duration::from_secs(10),
            )?,
            startup_patience: millis_or(
                "CLUSTERCHAT_HISTORY_STARTUP_PATIENCE_MS",
                Duration::from_secs(60),
            )?,
            search: SearchSettings {
                enabled: match var_or("CLUSTERCHAT_HISTORY_SEARCH", "on".to_owned())?.as_str() {
                    "on" | "true" | "1" => true,
                    "off" | "false" | "0" => false,
                    other => {
                        return Err(ConfigError::Invalid {
                            name: "CLUSTERCHAT_HISTORY_SEARCH".into(),
                            value: other.to_owned(),
                            reason: "on or off".into(),
                        });
                    }
                },
                scan_rows: var_or("CLUSTERCHAT_HISTORY_SEARCH_SCAN_ROWS", 20_000)?,
            },
            internal_token: internal_token()?,
        })
    }

    /// Defaults for a test: any free port, the given database, Redis, key
    /// prefix and user service, short waits.
    pub fn for_tests(
        database_url: &str,
        redis_url: &str,
        prefix: &str,
        user_service: &str,
    ) -> Self {
        Self {
            listen: ([127, 0, 0, 1], 0).into(),
            metrics_listen: Some(([127, 0, 0, 1], 0).into()),
            mysql: MySqlSettings::for_tests(database_url),
            ingest: IngestSettings {
                redis: RedisTarget::parse(redis_url),
                prefix: prefix.to_owned(),
                consumer: "history-1".into(),
                batch: 1000,
                poll_idle: Duration::from_millis(20),
                linger: Duration::from_millis(20),
                claim_idle: Duration::from_secs(60),
                lanes: 2,
            },
            user_service: user_service.to_owned(),
            membership_ttl: Duration::from_millis(200),
            retention: Retention {
                days: 0,
                interval: Duration::from_secs(600),
            },
            request_timeout: Duration::from_secs(10),
            startup_patience: Duration::from_secs(30),
            search: SearchSettings::default(),
            internal_token: Secret::new(TEST_INTERNAL_TOKEN),
        }
    }
}

/// The host name (stable across restarts of a machine or a StatefulSet
/// pod), else `history-1`.
fn default_consumer() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "history-1".to_owned())
}
