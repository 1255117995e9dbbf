//! The `history` scenario's comparison: scenario 1 in rounds with the
//! history service running and stopped (SIGSTOP), reduced to the median
//! of each side, with every round kept in the JSON.

use serde_json::{Value, json};

use super::OneToOneRows;
use crate::{Args, stats::RunResult};

/// Run ids of scenario 1 with the history service stopped.
pub(crate) const HISTORY_STOPPED_RUN: u32 = 6;
/// Run id of the run at half of the saturation just measured.
pub(crate) const HALF_SATURATION_RUN: u32 = 8;

/// One round of the `history` comparison (see
/// [`one_to_one_rows`](super::one_to_one::one_to_one_rows)).
pub(crate) struct HistoryRound {
    pub(crate) fixed: RunResult,
    pub(crate) cpu_fixed: Value,
    pub(crate) during_fixed: Value,
    pub(crate) fixed_stopped: RunResult,
    pub(crate) saturated_stopped: RunResult,
    pub(crate) drain: Value,
    pub(crate) saturated: RunResult,
    pub(crate) cpu_saturated: Value,
    pub(crate) during_saturation: Value,
    /// The history service's lag during a run at half of `saturated`'s
    /// rate (issue 21: lag ≤ 1 s there).
    pub(crate) during_half_saturation: Value,
}

/// The median of each side over the rounds, and every round in the JSON.
/// The rows of the Markdown table are the median runs (by p99 at the
/// offered rate, by throughput at saturation).
pub(crate) fn history_comparison(args: &Args, mut rounds: Vec<HistoryRound>) -> OneToOneRows {
    let per_sec = |r: &RunResult| r.delivered as f64 / r.seconds;
    // Index of the median by `key` (the lower middle of an even count).
    let median = |keys: Vec<f64>| {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
        order[(order.len() - 1) / 2]
    };
    let p99s = |rounds: &mut [HistoryRound], stopped: bool| -> Vec<f64> {
        rounds
            .iter_mut()
            .map(|r| {
                let run = if stopped {
                    &mut r.fixed_stopped
                } else {
                    &mut r.fixed
                };
                run.latencies.percentile_ms(0.99)
            })
            .collect()
    };
    let (p99_running, p99_stopped) = (p99s(&mut rounds, false), p99s(&mut rounds, true));
    let saturation_running: Vec<f64> = rounds.iter().map(|r| per_sec(&r.saturated)).collect();
    let saturation_stopped: Vec<f64> = rounds
        .iter()
        .map(|r| per_sec(&r.saturated_stopped))
        .collect();
    let (fixed_at, fixed_stopped_at) = (median(p99_running.clone()), median(p99_stopped.clone()));
    let (saturated_at, saturated_stopped_at) = (
        median(saturation_running.clone()),
        median(saturation_stopped.clone()),
    );
    let side = |values: &[f64], at: usize| json!({"median": values[at], "rounds": values});
    let difference = |running: f64, stopped: f64| (running - stopped) / stopped * 100.0;

    let mut out = serde_json::Map::new();
    out.insert(
        "comparison".into(),
        json!({
            "rounds": rounds.len(),
            "order": "each round: fixed rate running, fixed rate stopped, saturation stopped, (drain), saturation running",
            "saturation_per_sec": {
                "running": side(&saturation_running, saturated_at),
                "stopped": side(&saturation_stopped, saturated_stopped_at),
                "difference_pct": difference(saturation_running[saturated_at], saturation_stopped[saturated_stopped_at]),
            },
            "p99_ms_at_offered_rate": {
                "offered_per_sec": args.rate,
                "running": side(&p99_running, fixed_at),
                "stopped": side(&p99_stopped, fixed_stopped_at),
                "difference_pct": difference(p99_running[fixed_at], p99_stopped[fixed_stopped_at]),
            },
            "target": "within 10 %",
        }),
    );
    out.insert(
        "one_to_one_fixed_rate_stopped".into(),
        json!({"offered_per_sec": args.rate, "result": rounds[fixed_stopped_at].fixed_stopped.json()}),
    );
    out.insert(
        "one_to_one_saturation_stopped".into(),
        rounds[saturated_stopped_at].saturated_stopped.json(),
    );
    // The lag of the median saturation run (every round's is in `rounds`).
    out.insert(
        "during_saturation".into(),
        rounds[saturated_at].during_saturation.clone(),
    );
    out.insert(
        "during_fixed_rate".into(),
        rounds[fixed_at].during_fixed.clone(),
    );
    out.insert(
        "during_half_saturation".into(),
        rounds[saturated_at].during_half_saturation.clone(),
    );
    out.insert(
        "drain_after_stopped_runs".into(),
        rounds[saturated_stopped_at].drain.clone(),
    );
    let all: Vec<Value> = rounds
        .iter_mut()
        .map(|r| {
            json!({
                "fixed_rate_running": r.fixed.json(),
                "fixed_rate_stopped": r.fixed_stopped.json(),
                "saturation_stopped": r.saturated_stopped.json(),
                "drain_after_stopped_runs": r.drain,
                "saturation_running": r.saturated.json(),
                "during_fixed_rate": r.during_fixed,
                "during_saturation": r.during_saturation,
                "during_half_saturation": r.during_half_saturation,
            })
        })
        .collect();
    out.insert("rounds".into(), all.into());
    let (mut fixed, mut saturated) = (None, None);
    for (i, round) in rounds.into_iter().enumerate() {
        if i == fixed_at {
            fixed = Some((round.fixed, round.cpu_fixed));
        }
        if i == saturated_at {
            saturated = Some((round.saturated, round.cpu_saturated));
        }
    }
    let ((fixed, cpu_fixed), (saturated, cpu_saturated)) = (
        fixed.expect("the median is one of the rounds"),
        saturated.expect("the median is one of the rounds"),
    );
    OneToOneRows {
        fixed,
        saturated,
        cpu_fixed,
        cpu_saturated,
        history: Some(out),
    }
}
