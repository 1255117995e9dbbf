//! One Prometheus registry per process. Components register their metrics
//! at start-up; `/metrics` serves [`encode`].

use std::sync::{Mutex, OnceLock};

use prometheus_client::{encoding::text, registry::Registry};

pub use prometheus_client::metrics::{
    counter::Counter,
    family::Family,
    gauge::Gauge,
    histogram::{Histogram, exponential_buckets},
};

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::with_prefix("clusterchat")))
}

/// Registers `metric` as `clusterchat_{name}`.
pub fn register<M>(name: &str, help: &str, metric: M)
where
    M: prometheus_client::registry::Metric,
{
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .register(name, help, metric);
}

/// The registry in the Prometheus text format.
pub fn encode() -> String {
    let mut out = String::new();
    let registry = registry().lock().unwrap_or_else(|p| p.into_inner());
    if text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

/// Latency buckets from 100 µs to ~6.5 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
