//! Settings of the offline service, from `CLUSTERCHAT_OFFLINE_*` variables.

use std::{net::SocketAddr, time::Duration};

use env_config::{ConfigError, Secret, internal_token, millis_or, optional_or, var_or};
use mysql_pool::MySqlSettings;

use crate::domain::{Limits, MAX_CLIENT_MSG_ID_CHARS, MAX_FETCH_LIMIT};

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
        let config = Self {
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
        };
        config.check_fits_in_a_grpc_message()?;
        Ok(config)
    }

    /// A Fetch page holds payloads up to the larger of the page and message
    /// bounds, and up to `MAX_FETCH_LIMIT` messages of overhead (ids, a
    /// client message id each): all of it must fit in one gRPC message, or
    /// every Fetch of a long backlog would fail instead of paging.
    fn check_fits_in_a_grpc_message(&self) -> Result<(), ConfigError> {
        let per_message = MAX_CLIENT_MSG_ID_CHARS * 4 + 64;
        let overhead = MAX_FETCH_LIMIT as usize * per_message;
        let largest = self
            .limits
            .max_page_bytes
            .max(self.limits.max_message_bytes);
        if largest + overhead > grpc_server::MAX_MESSAGE_BYTES {
            return Err(ConfigError::Invalid {
                name: "CLUSTERCHAT_OFFLINE_MAX_PAGE_BYTES / ..._MAX_MESSAGE_BYTES".into(),
                value: largest.to_string(),
                reason: format!(
                    "a Fetch page must fit in a gRPC message ({} bytes), so each may be at most {}",
                    grpc_server::MAX_MESSAGE_BYTES,
                    grpc_server::MAX_MESSAGE_BYTES - overhead
                ),
            });
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_bounds_fit_in_a_grpc_message_and_larger_ones_are_refused() {
        let mut config = Config::for_tests("mysql://unused");
        config.check_fits_in_a_grpc_message().expect("defaults fit");
        config.limits.max_page_bytes = grpc_server::MAX_MESSAGE_BYTES;
        let error = config
            .check_fits_in_a_grpc_message()
            .expect_err("too large");
        assert!(
            error.to_string().contains("must fit in a gRPC message"),
            "{error}"
        );
    }
}
