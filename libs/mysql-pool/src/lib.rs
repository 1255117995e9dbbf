//! MySQL/MariaDB pools for the services that own a database.
//!
//! Each service owns its own database; this crate only knows how to reach one:
//! a lazily connecting pool that fails fast (so a request can answer
//! UNAVAILABLE instead of hanging), creating the database when missing,
//! running the service's migrations once it is reachable, and telling which
//! `sqlx::Error`s mean "the database is down" as opposed to a bug.

use std::time::Duration;

use env_config::Secret;
use sqlx::{
    MySql, MySqlPool,
    migrate::{MigrateDatabase, Migrator},
    mysql::{MySqlConnectOptions, MySqlPoolOptions},
};

#[derive(Debug, Clone)]
pub struct MySqlSettings {
    /// `mysql://user:password@host:port/database`
    pub url: Secret,
    pub max_connections: u32,
    /// How long a request waits for a connection before it is told UNAVAILABLE.
    pub acquire_timeout: Duration,
}

impl MySqlSettings {
    /// `{prefix}_DATABASE_URL`, `{prefix}_DB_MAX_CONNECTIONS` (16) and
    /// `{prefix}_DB_ACQUIRE_TIMEOUT_MS` (2000).
    pub fn from_env(prefix: &str, default_url: &str) -> Result<Self, env_config::ConfigError> {
        Ok(Self {
            url: env_config::var_or(&format!("{prefix}_DATABASE_URL"), Secret::new(default_url))?,
            max_connections: env_config::var_or(&format!("{prefix}_DB_MAX_CONNECTIONS"), 16)?,
            acquire_timeout: env_config::millis_or(
                &format!("{prefix}_DB_ACQUIRE_TIMEOUT_MS"),
                Duration::from_secs(2),
            )?,
        })
    }

    /// For tests: a small pool that gives up on the database after a second.
    pub fn for_tests(url: &str) -> Self {
        Self {
            url: Secret::new(url),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the database URL is not valid")]
    BadUrl(#[source] sqlx::Error),
    #[error("the database is not reachable after {0:?}")]
    Unreachable(Duration, #[source] sqlx::Error),
    #[error("the migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Opens a pool without connecting yet: connections are made on demand and
/// remade after the server comes back.
pub fn connect_lazy(settings: &MySqlSettings) -> Result<MySqlPool, PoolError> {
    let options: MySqlConnectOptions = settings.url.expose().parse().map_err(PoolError::BadUrl)?;
    let options = options.charset("utf8mb4").collation("utf8mb4_bin");
    Ok(MySqlPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(true)
        .connect_lazy_with(options))
}

/// Waits until the server answers (creating the database if it is missing),
/// then applies `migrator`. Gives up after `patience`.
pub async fn prepare(
    settings: &MySqlSettings,
    pool: &MySqlPool,
    migrator: &Migrator,
    patience: Duration,
) -> Result<(), PoolError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = async {
            if !MySql::database_exists(settings.url.expose()).await? {
                tracing::info!("creating database");
                MySql::create_database(settings.url.expose()).await?;
            }
            sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
        };
        match attempt.await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(error = %e, retry_in = ?delay, "database not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(PoolError::Unreachable(patience, e)),
        }
    }
    migrator.run(pool).await?;
    Ok(())
}

/// True when the error means the database cannot be reached right now
/// (connection refused or lost, pool timed out), so the caller should answer
/// UNAVAILABLE and the client may retry.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        // 1040 too many connections, 1053 server shutting down, 1205 lock wait
        // timeout, 1213 deadlock, 1927 connection killed, 2006/2013 server gone.
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| matches!(e.number(), 1040 | 1053 | 1205 | 1213 | 1927 | 2006 | 2013)),
        _ => false,
    }
}

/// True when the error is a violated UNIQUE key.
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}
