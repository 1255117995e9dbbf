//! One Prometheus registry per process. Components register their metrics
//! at start-up; `/metrics` serves [`encode`].

use std::sync::{Mutex, OnceLock, atomic::AtomicU64};

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

/// This process's CPU time and resident memory, from /proc at each scrape:
/// `clusterchat_process_cpu_seconds_total` (what a dashboard divides by
/// messages for the cost per message of each process) and
/// `clusterchat_process_resident_memory_bytes`.
struct ProcessMetrics {
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_bytes: Gauge,
}

fn process_metrics() -> &'static ProcessMetrics {
    static PROCESS: OnceLock<ProcessMetrics> = OnceLock::new();
    PROCESS.get_or_init(|| {
        let metrics = ProcessMetrics {
            cpu_seconds: Counter::default(),
            resident_bytes: Gauge::default(),
        };
        register(
            "process_cpu_seconds",
            "CPU time (user and system) this process has used",
            metrics.cpu_seconds.clone(),
        );
        register(
            "process_resident_memory_bytes",
            "Resident memory of this process",
            metrics.resident_bytes.clone(),
        );
        metrics
    })
}

/// Reads /proc/self (Linux; elsewhere the values stay 0). One scrape at a
/// time: the CPU counter is raised by the difference from what it holds.
fn refresh_process_metrics() {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let metrics = process_metrics();
    // utime and stime are the 14th and 15th fields, in clock ticks (100 per
    // second on Linux); the command name before them may hold spaces.
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
            f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
        });
        let seconds = ticks / 100.0;
        let counted = metrics.cpu_seconds.get();
        if seconds > counted {
            metrics.cpu_seconds.inc_by(seconds - counted);
        }
    }
    // statm: size, resident (pages of 4 KiB on the platforms we run on).
    if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<i64>().ok())
    {
        metrics.resident_bytes.set(pages * 4096);
    }
}

/// The registry in the Prometheus text format.
pub fn encode() -> String {
    refresh_process_metrics();
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

#[cfg(test)]
mod tests {
    #[test]
    fn every_scrape_has_this_processs_cpu_and_memory() {
        // Burn a little CPU so the counter has something to count.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let text = super::encode();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} in\n{text}"))
        };
        assert!(value("clusterchat_process_resident_memory_bytes") > 1e6);
        assert!(value("clusterchat_process_cpu_seconds_total") >= 0.0);
    }
}
