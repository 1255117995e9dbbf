//! Latency recording and percentiles, and the result of a measured run
//! (sent, delivered, lost, duplicates, throughput, latency) as it goes into
//! the JSON report.

use std::{collections::HashSet, sync::Mutex, time::Instant};

use serde_json::{Value, json};

#[derive(Default)]
pub(crate) struct Latencies(pub(crate) Vec<u64>);

impl Latencies {
    pub(crate) fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let index = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[index] as f64 / 1e6
    }

    pub(crate) fn summary(&mut self) -> Value {
        json!({
            "p50_ms": self.percentile_ms(0.50),
            "p90_ms": self.percentile_ms(0.90),
            "p99_ms": self.percentile_ms(0.99),
            "max_ms": self.percentile_ms(1.0),
        })
    }
}

/// One received chat: (run, sender, seq, latency ns).
pub(crate) type Sample = (u32, u32, u64, u64);

pub(crate) struct RunResult {
    pub(crate) sent: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) duplicates: u64,
    pub(crate) seconds: f64,
    pub(crate) latencies: Latencies,
}

impl RunResult {
    pub(crate) fn json(&mut self) -> Value {
        json!({
            "sent": self.sent,
            "delivered": self.delivered,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "delivered_per_sec": self.delivered as f64 / self.seconds,
            "latency": self.latencies.summary(),
        })
    }
}

pub(crate) fn tally(
    run: u32,
    samples: &Mutex<Vec<Sample>>,
    sent: u64,
    expected_per_message: u64,
    first_sent: Instant,
    last_seen: Instant,
) -> RunResult {
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner());
    let mut unique = HashSet::new();
    let mut latencies = Latencies::default();
    let mut total = 0u64;
    let mut dup = 0u64;
    for &(r, sender, seq, latency) in samples.iter() {
        if r != run {
            continue;
        }
        total += 1;
        if expected_per_message == 1 && !unique.insert((sender, seq)) {
            dup += 1;
        }
        latencies.0.push(latency);
    }
    let expected = sent * expected_per_message;
    RunResult {
        sent,
        delivered: total - dup,
        lost: expected.saturating_sub(total - dup),
        duplicates: dup,
        seconds: last_seen
            .duration_since(first_sent)
            .as_secs_f64()
            .max(0.001),
        latencies,
    }
}
