//! Settings of the user service, from `CLUSTERCHAT_USER_*` variables.

use std::{net::SocketAddr, time::Duration};

use env_config::{ConfigError, millis_or, optional_or, var_or};
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
}

pub const DEFAULT_DATABASE_URL: &str =
    "mysql://clusterchat:clusterchat@127.0.0.1:3307/clusterchat_user";

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
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
        }
    }
}
