//! Scenario 1, `one-to-one` (and `tls`: the same through TLS endpoints):
//! sender/receiver pairs across nodes, at a fixed offered rate and at
//! saturation, with the `history` rounds when the history service is
//! compared.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio_rustls::TlsConnector;

use super::{
    OneToOneRows, Target, chat_frame, drain,
    history_comparison::{
        HALF_SATURATION_RUN, HISTORY_STOPPED_RUN, HistoryRound, history_comparison,
    },
    logged_in_clients, spawn_receiver,
};
use crate::{
    Args,
    client::Client,
    history::History,
    procs::{self, Watched},
    redis_calls,
    stats::{RunResult, Sample, tally},
};

/// Scenario 1 at a fixed offered rate (`Some(rate)`) or as fast as the
/// senders can write (`None`).
async fn one_to_one(
    senders: Vec<(i64, Client)>,
    receiver_ids: &[i64],
    samples: &Arc<Mutex<Vec<Sample>>>,
    received: &Arc<AtomicU64>,
    run: u32,
    rate: Option<u64>,
    args: &Args,
) -> anyhow::Result<(Vec<(i64, Client)>, RunResult)> {
    let pad = "x".repeat(args.size.saturating_sub(40));
    let duration = Duration::from_secs(args.duration);
    let before = received.load(Ordering::Relaxed);
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let pairs = senders.len();
    for (i, (id, mut client)) in senders.into_iter().enumerate() {
        let to = receiver_ids[i];
        let pad = pad.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            match rate {
                Some(rate) => {
                    // Senders take turns: sender i starts i/pairs of a period
                    // late, so the offered load is a steady stream of one chat
                    // every 1/rate s, not every sender's chat at once each
                    // period (a burst of `pairs` chats measures how a burst
                    // drains, not latency at the offered rate).
                    let every = Duration::from_secs_f64(pairs as f64 / rate as f64);
                    let offset = every.mul_f64(i as f64 / pairs as f64);
                    let mut ticker =
                        tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    while started.elapsed() < duration {
                        ticker.tick().await;
                        let frame = chat_frame(id, Target::User(to), run, i, seq, &pad);
                        if client.writer.write_all(frame.as_bytes()).await.is_err()
                            || client.writer.write_all(&[0]).await.is_err()
                            || client.flush().await.is_err()
                        {
                            break;
                        }
                        seq += 1;
                    }
                }
                None => {
                    'sending: while started.elapsed() < duration {
                        for _ in 0..32 {
                            let frame = chat_frame(id, Target::User(to), run, i, seq, &pad);
                            if client.writer.write_all(frame.as_bytes()).await.is_err()
                                || client.writer.write_all(&[0]).await.is_err()
                            {
                                break 'sending;
                            }
                            seq += 1;
                        }
                        if client.flush().await.is_err() {
                            break;
                        }
                    }
                    let _ = client.flush().await;
                }
            }
            sent.fetch_add(seq, Ordering::Relaxed);
            (id, client)
        }));
    }
    let mut senders = Vec::with_capacity(tasks.len());
    for task in tasks {
        senders.push(task.await?);
    }
    let sent = sent.load(Ordering::Relaxed);
    drain(received, before + sent).await;
    let last = Instant::now();
    let mut result = tally(run, samples, sent, 1, started, last);
    // Throughput over the sending window plus what was still in flight.
    result.seconds = (last - started)
        .as_secs_f64()
        .min(result.seconds)
        .max(0.001);
    Ok((senders, result))
}

/// Logged-in senders and receivers of scenario 1, reused from run to run.
struct Pairs {
    senders: Vec<(i64, Client)>,
    receiver_ids: Vec<i64>,
    samples: Arc<Mutex<Vec<Sample>>>,
    received: Arc<AtomicU64>,
}

impl Pairs {
    /// `pairs` senders and receivers, pair i's sender on `nodes[i % N]` and
    /// its receiver on `nodes[(i + 1) % N]`.
    async fn log_in(
        args: &Args,
        prefix: &str,
        nodes: &[SocketAddr],
        tls: Option<&TlsConnector>,
    ) -> anyhow::Result<Self> {
        let senders =
            logged_in_clients(&format!("{prefix}s"), args.pairs, nodes, 0, false, tls).await?;
        let receivers = logged_in_clients(
            &format!("{prefix}r"),
            args.pairs,
            nodes,
            1,
            !args.classic,
            tls,
        )
        .await?;
        let receiver_ids: Vec<i64> = receivers.iter().map(|(id, _)| *id).collect();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(AtomicU64::new(0));
        for (_, client) in receivers {
            spawn_receiver(client, !args.classic, samples.clone(), received.clone());
        }
        Ok(Self {
            senders,
            receiver_ids,
            samples,
            received,
        })
    }

    /// [`Pairs::run`], and what it cost: the watched processes' CPU per
    /// 100k delivered and (with `--redis-info`) Redis calls per message.
    async fn measured(
        &mut self,
        args: &Args,
        run: u32,
        rate: Option<u64>,
        watched: &[Watched],
    ) -> anyhow::Result<(RunResult, Value)> {
        let calls = redis_calls::snapshot(&args.redis_info).await;
        let before = procs::snapshot(watched);
        let result = self.run(args, run, rate).await?;
        let mut cpu = procs::spent(watched, &before, result.delivered, 1e5, "100k delivered");
        if let (Some(calls), Some(now)) = (calls, redis_calls::snapshot(&args.redis_info).await) {
            cpu["redis_calls"] = redis_calls::per_unit(&calls, &now, result.delivered);
        }
        Ok((result, cpu))
    }

    /// One run at `rate` (`None`: saturation).
    async fn run(&mut self, args: &Args, run: u32, rate: Option<u64>) -> anyhow::Result<RunResult> {
        match rate {
            Some(rate) => eprintln!("one-to-one at {rate} msg/s for {} s ...", args.duration),
            None => eprintln!("one-to-one at saturation for {} s ...", args.duration),
        }
        let senders = std::mem::take(&mut self.senders);
        let (senders, result) = one_to_one(
            senders,
            &self.receiver_ids,
            &self.samples,
            &self.received,
            run,
            rate,
            args,
        )
        .await?;
        self.senders = senders;
        Ok(result)
    }
}

/// Scenario 1: at the fixed rate (run `run`) and at saturation (`run + 1`).
/// With `history`, `--history-rounds` rounds of: fixed rate with the
/// history service running, then stopped; saturation stopped, then (after
/// it drained what piled up) running. So neither side always goes first;
/// the medians are compared.
pub(crate) async fn one_to_one_rows(
    args: &Args,
    prefix: &str,
    nodes: &[SocketAddr],
    tls: Option<&TlsConnector>,
    run: u32,
    watched: &[Watched],
    history: Option<&Arc<History>>,
) -> anyhow::Result<OneToOneRows> {
    let mut pairs = Pairs::log_in(args, prefix, nodes, tls).await?;
    let Some(history) = history else {
        let (fixed, cpu_fixed) = pairs.measured(args, run, Some(args.rate), watched).await?;
        let (saturated, cpu_saturated) = pairs.measured(args, run + 1, None, watched).await?;
        return Ok(OneToOneRows {
            fixed,
            saturated,
            cpu_fixed,
            cpu_saturated,
            history: None,
        });
    };

    let mut rounds = Vec::new();
    for round in 1..=args.history_rounds.max(1) {
        eprintln!(
            "history round {round} of {}: service running",
            args.history_rounds.max(1)
        );
        let sampler = history.sample().await?;
        let (fixed, cpu_fixed) = pairs.measured(args, run, Some(args.rate), watched).await?;
        let during_fixed = sampler.finish(fixed.delivered).await?;

        eprintln!("history service stopped (SIGSTOP):");
        let paused = history.pause().await?;
        let fixed_stopped = pairs
            .run(args, HISTORY_STOPPED_RUN, Some(args.rate))
            .await?;
        let saturated_stopped = pairs.run(args, HISTORY_STOPPED_RUN + 1, None).await?;
        eprintln!("history service let go on (SIGCONT); draining what piled up ...");
        let drain = paused.resume_and_drain(history, watched).await?;

        eprintln!("history service running:");
        let sampler = history.sample().await?;
        let (saturated, cpu_saturated) = pairs.measured(args, run + 1, None, watched).await?;
        eprintln!("waiting for the history service to catch up ...");
        let during_saturation = sampler.finish(saturated.delivered).await?;

        // Half of that saturation, offered steadily: how far history lags.
        let half = (saturated.delivered as f64 / saturated.seconds / 2.0).max(1.0) as u64;
        let sampler = history.sample().await?;
        let at_half = pairs.run(args, HALF_SATURATION_RUN, Some(half)).await?;
        let mut during_half_saturation = sampler.finish(at_half.delivered).await?;
        during_half_saturation["offered_per_sec"] = half.into();
        rounds.push(HistoryRound {
            fixed,
            cpu_fixed,
            during_fixed,
            fixed_stopped,
            saturated_stopped,
            drain,
            saturated,
            cpu_saturated,
            during_saturation,
            during_half_saturation,
        });
    }
    Ok(history_comparison(args, rounds))
}
