//! Settings of the offline service, from `CLUSTERCHAT_OFFLINE_*` variables.

use std::{net::SocketAddr, time::Duration};

use env_config::{ConfigError, Secret, internal_token, millis_or, optional_or, var_or};
use mysql_pool::MySqlSettings;

use crate::domain::Limits;

#[derive(Debug, Clone)]
pub struct Config {
    /// `CLUSTERCHAT_OFFLINE_METRICS_LISTEN`, default `127.0.0.1:9102`
    /// (`off` disables): `GET /metrics` in the Prometheus text format.
    pub metrics_listen: Option<SocketAddr>,
    /// `CLUSTERCHAT_OFFLINE_LISTEN`, default `127.0.0.1:50052`; port 0 picks a free one.
    pub listen: SocketAddr,
    /// `CLUSTERCHAT_OFFLINE_DATABASE_URL`, `..._DB_MAX_CONNECTIONS`, `..._DB_ACQUIRE_TIMEOUT_MS`.
    pub mysql: MySqlSettings,
    /// `CLUSTERCHAT_OFFLINE_MAX_MESSAGE_BYTES` (default 128 KiB) and
    /// `CLUSTERCHAT_OFFLINE_MAX_BACKLOG` (default 10,000 per receiver) and
    /// `CLUSTERCHAT_OFFLINE_MAX_PAGE_BYTES` (default 1 MiB per Fetch).
    pub limits: Limits,
    /// `CLUSTERCHAT_OFFLINE_REQUEST_TIMEOUT_MS`.
    pub request_timeout: Duration,
    /// `CLUSTERCHAT_OFFLINE_STARTUP_PATIENCE_MS`: how long start-up waits for the database.
    pub startup_patience: Duration,
    /// `CLUSTERCHAT_INTERNAL_TOKEN` (required): callers must send it as
    /// `authorization: Bearer <token>`; health and reflection stay open.
    pub internal_token: Secret,
}

/// The token services and gateways use in tests (not a secret: tests only).
pub const TEST_INTERNAL_TOKEN: &str = "test-internal-token-not-a-secret";

pub const DEFAULT_DATABASE_URL: &str =
    "mysql://clusterchat:clusterchat@127.0.0.1:3307/clusterchat_offline";

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults = Limits::default();
        Ok(Self {
            metrics_listen: optional_or(
                "CLUSTERCHAT_OFFLINE_METRICS_LISTEN",
                Some(([127, 0, 0, 1], 9102).into()),
            )?,
            listen: var_or("CLUSTERCHAT_OFFLINE_LISTEN", ([127, 0, 0, 1], 50052).into())?,
            mysql: MySqlSettings::from_env("CLUSTERCHAT_OFFLINE", DEFAULT_DATABASE_URL)?,
            limits: Limits {
                max_message_bytes: var_or(
                    "CLUSTERCHAT_OFFLINE_MAX_MESSAGE_BYTES",
                    defaults.max_message_bytes,
                )?,
                max_backlog: var_or("CLUSTERCHAT_OFFLINE_MAX_BACKLOG", defaults.max_backlog)?,
                max_page_bytes: var_or(
                    "CLUSTERCHAT_OFFLINE_MAX_PAGE_BYTES",
                    defaults.max_page_bytes,
                )?,
            },
            request_timeout: millis_or(
                "CLUSTERCHAT_OFFLINE_REQUEST_TIMEOUT_MS",
                Duration::from_secs(10),
            )?,
            startup_patience: millis_or(
                "CLUSTERCHAT_OFFLINE_STARTUP_PATIENCE_MS",
                Duration::from_secs(60),
            )?,
            internal_token: internal_token()?,
        })
    }

    /// Defaults for a test: any free port, the given database, short waits.
    pub fn for_tests(database_url: &str) -> Self {
        Self {
            listen: ([127, 0, 0, 1], 0).into(),
            metrics_listen: Some(([127, 0, 0, 1], 0).into()),
            mysql: MySqlSettings::for_tests(database_url),
            limits: Limits::default(),
            request_timeout: Duration::from_secs(10),
            startup_patience: Duration::from_secs(30),
            internal_token: Secret::new(TEST_INTERNAL_TOKEN),
        }
    }
}
