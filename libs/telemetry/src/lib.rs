//! Logging and tracing set-up shared by every clusterchat process.
//!
//! Logs are structured (`tracing`), lowercase messages with fields, filtered
//! by `RUST_LOG` (default `info`).
//!
//! **Architecture Invariant:** message texts and passwords are never recorded
//! as span fields or log fields; callers pass ids and sizes instead.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber for `service`. Call once, first thing in `main`.
pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_target(true))
        .try_init();
    if installed.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    }
}

/// For tests: a subscriber that writes to the test harness, installed at most once.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_test_writer())
        .try_init();
}
