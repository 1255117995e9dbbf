//! Settings of the user service, from `CLUSTERCHAT_USER_*` variables.

use std::{net::SocketAddr, time::Duration};

use env_config::{ConfigError, Secret, internal_token, millis_or, optional_or, var_or};
use mysql_pool::MySqlSettings;

#[derive(Debug, Clone)]
pub struct Config {
    /// `CLUSTERCHAT_USER_METRICS_LISTEN`, default `127.0.0.1:9101`
    /// (`off` disables): `GET /metrics` in the Prometheus text format.
    pub metrics_listen: Option<SocketAddr>,
    /// `CLUSTERCHAT_USER_LISTEN`, default `127.0.0.1:50051`; port 0 picks a free one.
    pub listen: SocketAddr,
    /// `CLUSTERCHAT_USER_DATABASE_URL`, `..._DB_MAX_CONNECTIONS`, `..._DB_ACQUIRE_TIMEOUT_MS`.
    pub mysql: MySqlSettings,
    /// `CLUSTERCHAT_USER_REQUEST_TIMEOUT_MS`: a request that takes longer is cancelled.
    pub request_timeout: Duration,
    /// `CLUSTERCHAT_USER_STARTUP_PATIENCE_MS`: how long start-up waits for the database.
    pub startup_patience: Duration,
    /// `CLUSTERCHAT_USER_HASH_CONCURRENCY`: password hashes computed at once
    /// (each takes ~19 MiB and a core for tens of milliseconds).
    pub hash_concurrency: usize,
    /// `CLUSTERCHAT_USER_MAX_HASH_QUEUE` (default 64): register/login
    /// requests that may wait for a hash slot; beyond them a request is
    /// refused at once (`RESOURCE_EXHAUSTED`, "busy: ...") rather than queued
    /// without bound. 64 waiting behind 2 per core is about a second of work.
    pub max_hash_queue: usize,
    pub limits: Limits,
    /// `CLUSTERCHAT_INTERNAL_TOKEN` (required): callers must send it as
    /// `authorization: Bearer <token>`; health and reflection stay open.
    pub internal_token: Secret,
}

/// Bounds on groups, each refused with `RESOURCE_EXHAUSTED` when reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `CLUSTERCHAT_USER_MAX_GROUP_MEMBERS` (default 1000, what chat-bench's
    /// group fan-out needs): one group chat is one delivery per member.
    pub max_group_members: u32,
    /// `CLUSTERCHAT_USER_MAX_GROUPS_PER_USER` (default 500): groups a user
    /// may create or join; their member lists are all loaded at login.
    pub max_groups_per_user: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_group_members: 1000,
            max_groups_per_user: 500,
        }
    }
}

/// The token services and gateways use in tests (not a secret: tests only).
pub const TEST_INTERNAL_TOKEN: &str = "test-internal-token-not-a-secret";

pub const DEFAULT_DATABASE_URL: &str =
    "mysql://clusterchat:clusterchat@127.0.0.1:3307/clusterchat_user";

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let defaults = Limits::default();
        Ok(Self {
            metrics_listen: optional_or(
                "CLUSTERCHAT_USER_METRICS_LISTEN",
                Some(([127, 0, 0, 1], 9101).into()),
            )?,
            listen: var_or("CLUSTERCHAT_USER_LISTEN", ([127, 0, 0, 1], 50051).into())?,
            mysql: MySqlSettings::from_env("CLUSTERCHAT_USER", DEFAULT_DATABASE_URL)?,
            request_timeout: millis_or(
                "CLUSTERCHAT_USER_REQUEST_TIMEOUT_MS",
                Duration::from_secs(10),
            )?,
            startup_patience: millis_or(
                "CLUSTERCHAT_USER_STARTUP_PATIENCE_MS",
                Duration::from_secs(60),
            )?,
            hash_concurrency: var_or("CLUSTERCHAT_USER_HASH_CONCURRENCY", cores * 2)?,
            max_hash_queue: var_or("CLUSTERCHAT_USER_MAX_HASH_QUEUE", 64)?,
            limits: Limits {
                max_group_members: var_or(
                    "CLUSTERCHAT_USER_MAX_GROUP_MEMBERS",
                    defaults.max_group_members,
                )?,
                max_groups_per_user: var_or(
                    "CLUSTERCHAT_USER_MAX_GROUPS_PER_USER",
                    defaults.max_groups_per_user,
                )?,
            },
            internal_token: internal_token()?,
        })
    }

    /// Defaults for a test: any free port, the given database, short waits.
    pub fn for_tests(database_url: &str) -> Self {
        Self {
            listen: ([127, 0, 0, 1], 0).into(),
            metrics_listen: Some(([127, 0, 0, 1], 0).into()),
            mysql: MySqlSettings::for_tests(database_url),
            request_timeout: Duration::from_secs(10),
            startup_patience: Duration::from_secs(30),
            hash_concurrency: 4,
            max_hash_queue: 64,
            limits: Limits::default(),
            internal_token: Secret::new(TEST_INTERNAL_TOKEN),
        }
    }
}
