//! The history service under load (`history` and `history-table`
//! scenarios): what it costs live chat, how far behind it falls, how fast
//! it stores, and how fast it answers on a large table.
//!
//! The gateways number every chat and append it to one of the history
//! streams (`{prefix}{h:N}`, N < [`PARTITIONS`]) in the same Redis script
//! whether or not the history service runs; the service reads them as the
//! consumer group `history` and acknowledges after commit. So:
//! - *not running* is the process stopped (SIGSTOP, [`Paused`]): chat goes
//!   on unchanged, the streams fill, and SIGCONT lets it catch up, which
//!   is also the cleanest measurement of its ingest capacity (a backlog
//!   drained with nothing else running);
//! - *how far behind*: entries added to the streams (XINFO STREAM
//!   `entries-added`, exact) minus entries the service acknowledged (its
//!   counters on `/metrics`: stored, duplicate, retracted, malformed,
//!   dropped), counted from an instant it was caught up; *caught up* is
//!   read from the ids (nothing pending and the group's last delivered id
//!   is the stream's last id, in every partition); the *lag* is the age of
//!   the oldest entry not yet acknowledged, from its stream id (Redis's
//!   clock, in ms). XINFO GROUPS' own `lag` is not used: Redis 7.0 lets
//!   it drift once the service trims what it acknowledged (it read 121,203
//!   on a stream it had read to the end);
//! - the table: entries written straight to the streams as gateways write
//!   them (1:1 conversations of users far above any the bench registers),
//!   ingested by the running service, then `GetHistory` of 50 over gRPC.

use std::{
    net::SocketAddr,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use redis::{Value as Redis, aio::MultiplexedConnection};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

mod table;

/// The gateways' and the service's partition count (the stream contract).
pub const PARTITIONS: u32 = 16;
/// The consumer group the history service reads as.
const GROUP: &str = "history";

/// How often the backlog is sampled while chat runs.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Where the history service and its streams are.
pub struct History {
    redis: MultiplexedConnection,
    prefix: String,
    /// `/metrics` of the service (host:port).
    metrics: SocketAddr,
    pid: u32,
    grpc: Option<String>,
    token: Option<String>,
}

/// The streams at one instant, over all partitions.
#[derive(Clone, Copy, Default)]
struct Streams {
    /// Entries ever added (by gateways, or by [`History::fill_table`]).
    added: u64,
    /// Read by the service, not yet acknowledged (it acknowledges after commit).
    pending: u64,
    /// Every entry read and acknowledged.
    caught_up: bool,
    /// Age of the oldest entry not yet acknowledged, in ms (0 when caught up).
    oldest_ms: f64,
}

/// What `/metrics` says at one instant.
#[derive(Clone, Copy, Default)]
struct Scrape {
    /// Messages stored for the first time.
    stored: u64,
    /// Stream entries acknowledged for any reason (stored, duplicate,
    /// retracted, malformed, dropped).
    acknowledged: u64,
    /// The service's `history_ingest_lag_ms` gauge.
    lag_ms: f64,
}

/// Counts at an instant the service was caught up, to count the backlog from.
#[derive(Clone, Copy)]
struct Baseline {
    added: u64,
    acknowledged: u64,
    stored: u64,
}

impl Baseline {
    /// Entries added since and not yet acknowledged.
    fn backlog(&self, streams: &Streams, scrape: &Scrape) -> u64 {
        streams
            .added
            .saturating_sub(self.added)
            .saturating_sub(scrape.acknowledged.saturating_sub(self.acknowledged))
    }
}

impl History {
    pub async fn connect(
        redis_url: &str,
        prefix: &str,
        metrics: SocketAddr,
        pid: u32,
        grpc: Option<String>,
        token_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis_url)?;
        let redis = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("history streams' Redis {redis_url}"))?;
        let token = token_file
            .map(|path| {
                std::fs::read_to_string(path)
                    .map(|t| t.trim().to_owned())
                    .with_context(|| format!("cannot read the token in {}", path.display()))
            })
            .transpose()?;
        let history = Self {
            redis,
            prefix: prefix.to_owned(),
            metrics,
            pid,
            grpc,
            token,
        };
        history
            .scrape()
            .await
            .with_context(|| format!("the history service's /metrics on {metrics}"))?;
        Ok(history)
    }

    fn key(&self, partition: u32) -> String {
        format!("{}{{h:{partition}}}", self.prefix)
    }

    /// Added and pending entries of every partition, whether all is
    /// acknowledged, and the oldest unacknowledged entry's age.
    async fn streams(&self) -> anyhow::Result<Streams> {
        let mut pipe = redis::pipe();
        for p in 0..PARTITIONS {
            pipe.cmd("XINFO").arg("STREAM").arg(self.key(p));
            pipe.cmd("XINFO").arg("GROUPS").arg(self.key(p));
        }
        let replies: Vec<Redis> = pipe.query_async(&mut self.redis.clone()).await.context(
            "XINFO of the history streams (the history service makes them when it starts)",
        )?;
        let mut out = Streams {
            caught_up: true,
            ..Streams::default()
        };
        let mut oldest: Option<u64> = None;
        for (p, pair) in (0..PARTITIONS).zip(replies.chunks(2)) {
            let stream = fields(&pair[0]);
            let field = |fields: &[(String, Redis)], name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            out.added += field(&stream, "entries-added")
                .as_ref()
                .and_then(int)
                .unwrap_or(0);
            let last = field(&stream, "last-generated-id")
                .as_ref()
                .and_then(text)
                .and_then(|id| stream_id(&id))
                .unwrap_or((0, 0));
            let group = group_info(&pair[1]).unwrap_or_default();
            let pending = field(&group, "pending").as_ref().and_then(int).unwrap_or(0);
            let delivered = field(&group, "last-delivered-id").as_ref().and_then(text);
            out.pending += pending;
            let unread = delivered.as_deref().and_then(stream_id).unwrap_or((0, 0)) < last;
            out.caught_up &= pending == 0 && !unread;
            let first = if pending > 0 {
                // [count, smallest id, greatest id, consumers]
                let summary: Redis = redis::cmd("XPENDING")
                    .arg(self.key(p))
                    .arg(GROUP)
                    .query_async(&mut self.redis.clone())
                    .await?;
                array(&summary).get(1).and_then(text)
            } else if unread {
                let next: Redis = redis::cmd("XRANGE")
                    .arg(self.key(p))
                    .arg(format!("({}", delivered.as_deref().unwrap_or("0-0")))
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut self.redis.clone())
                    .await?;
                array(&next)
                    .first()
                    .and_then(|entry| array(entry).first().and_then(text))
            } else {
                None
            };
            if let Some((ms, _)) = first.as_deref().and_then(stream_id) {
                oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
            }
        }
        out.oldest_ms = oldest.map_or(0.0, |ms| now_millis().saturating_sub(ms) as f64);
        Ok(out)
    }

    /// `/metrics` of the service: a plain HTTP/1.0 GET (no chunks; the
    /// server closes when done).
    async fn scrape(&self) -> anyhow::Result<Scrape> {
        let body = tokio::time::timeout(Duration::from_secs(2), async {
            let mut stream = TcpStream::connect(self.metrics).await?;
            stream
                .write_all(
                    format!("GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", self.metrics).as_bytes(),
                )
                .await?;
            let mut body = String::new();
            stream.read_to_string(&mut body).await?;
            anyhow::Ok(body)
        })
        .await
        .context("no answer within 2 s")??;
        let value = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        anyhow::ensure!(
            body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
            "/metrics answered {}",
            body.lines().next().unwrap_or_default()
        );
        // The service registers its metrics when it first ingests.
        let count =
            |name: &str| value(&format!("clusterchat_history_{name}_total")).unwrap_or(0.0) as u64;
        let stored = count("ingested_messages");
        // Stream entries (an entry holds one chat or several); a service
        // without that counter had one chat per entry.
        let acknowledged = value("clusterchat_history_stream_entries_total").map_or_else(
            || {
                stored
                    + count("duplicate_messages")
                    + count("retracted_messages")
                    + count("malformed_entries")
                    + count("dropped_entries")
            },
            |entries| entries as u64,
        );
        Ok(Scrape {
            stored,
            acknowledged,
            lag_ms: value("clusterchat_history_ingest_lag_ms").unwrap_or(f64::NAN),
        })
    }

    /// Messages the service has stored since it started (on the bench's
    /// fresh stack: the rows of its table).
    pub async fn stored_rows(&self) -> anyhow::Result<u64> {
        Ok(self.scrape().await?.stored)
    }

    /// Waits until the service is caught up; the counts then.
    async fn baseline(&self) -> anyhow::Result<Baseline> {
        self.caught_up(Duration::from_secs(600)).await?;
        let (streams, scrape) = (self.streams().await?, self.scrape().await?);
        Ok(Baseline {
            added: streams.added,
            acknowledged: scrape.acknowledged,
            stored: scrape.stored,
        })
    }

    /// Stops the service's process (SIGSTOP) until
    /// [`Paused::resume_and_drain`] or drop, once it is caught up.
    pub async fn pause(&self) -> anyhow::Result<Paused> {
        let baseline = self.baseline().await?;
        signal(self.pid, "STOP")?;
        Ok(Paused {
            pid: Some(self.pid),
            baseline,
        })
    }

    /// Waits until every entry is acknowledged; how long that took.
    async fn caught_up(&self, limit: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if self.streams().await?.caught_up {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "the history service did not catch up within {} s",
                limit.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Once caught up, starts sampling the streams and `/metrics` (see
    /// [`Sampler::finish`]).
    pub async fn sample(self: &Arc<Self>) -> anyhow::Result<Sampler> {
        let baseline = self.baseline().await?;
        let started = Instant::now();
        let points = Arc::new(Mutex::new(Vec::new()));
        let (history, out) = (self.clone(), points.clone());
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let (Ok(streams), Ok(scrape)) = (history.streams().await, history.scrape().await)
                else {
                    continue;
                };
                out.lock().unwrap_or_else(|p| p.into_inner()).push(Point {
                    at: started.elapsed().as_secs_f64(),
                    backlog: baseline.backlog(&streams, &scrape),
                    oldest_ms: streams.oldest_ms,
                    lag_ms: scrape.lag_ms,
                });
            }
        });
        Ok(Sampler {
            history: self.clone(),
            baseline,
            started,
            points,
            task,
        })
    }
}

/// The history service stopped (SIGSTOP); dropped, it is let go on.
pub struct Paused {
    pid: Option<u32>,
    /// When it was stopped (caught up).
    baseline: Baseline,
}

impl Paused {
    /// SIGCONT, then waits until what was added meanwhile is acknowledged:
    /// how many entries, how long, how many stored per second.
    ///
    /// With `watched` processes (`--pids`), also what each part spent per
    /// message stored while it drained (nothing else runs then): the
    /// history service's and MariaDB's cost per message, which the chat
    /// rows cannot give (most of a saturation run's backlog is stored
    /// after it).
    pub async fn resume_and_drain(
        mut self,
        history: &History,
        watched: &[crate::procs::Watched],
    ) -> anyhow::Result<Value> {
        let streams = history.streams().await?;
        let backlog = streams.added.saturating_sub(self.baseline.added);
        let before = crate::procs::snapshot(watched);
        if let Some(pid) = self.pid.take() {
            signal(pid, "CONT")?;
        }
        let took = history.caught_up(Duration::from_secs(1200)).await?;
        let after = history.scrape().await?;
        let stored = after.stored.saturating_sub(self.baseline.stored);
        let cpu = crate::procs::spent(watched, &before, stored, 1e6, "stored message");
        let us_per_stored = |group: &str| cpu["groups"][group]["cpu_seconds_per_unit"].clone();
        let acknowledged = after
            .acknowledged
            .saturating_sub(self.baseline.acknowledged);
        let seconds = took.as_secs_f64().max(0.001);
        Ok(json!({
            "backlog_entries": backlog,
            "oldest_ms": streams.oldest_ms,
            // Entries a gateway's XADD MAXLEN ~ (200,000 per partition)
            // trimmed before the service read them: lost to history, by
            // design, while the service is down.
            "trimmed_unread": backlog.saturating_sub(acknowledged),
            "stored": stored,
            "seconds": seconds,
            "stored_per_sec": stored as f64 / seconds,
            "cpu_us_per_stored": {
                "history-service": us_per_stored("history-service"),
                "mariadb": us_per_stored("mariadb"),
            },
        }))
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = signal(pid, "CONT");
        }
    }
}

/// One sample taken while chat runs.
#[derive(Clone, Copy)]
struct Point {
    /// Seconds since the sampler started.
    at: f64,
    /// Entries added since it started and not yet acknowledged.
    backlog: u64,
    /// Age of the oldest of them, ms.
    oldest_ms: f64,
    /// The service's own `history_ingest_lag_ms`.
    lag_ms: f64,
}

/// Samples the streams every [`SAMPLE_EVERY`] while a run goes on.
pub struct Sampler {
    history: Arc<History>,
    baseline: Baseline,
    started: Instant,
    points: Arc<Mutex<Vec<Point>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Call when the run is over (every chat delivered): the backlog then,
    /// how long until it was 0, the worst lag seen, and how fast the
    /// service stored meanwhile (`delivered`: what the run delivered).
    pub async fn finish(self, delivered: u64) -> anyhow::Result<Value> {
        let run_seconds = self.started.elapsed().as_secs_f64();
        let (streams, scrape) = (self.history.streams().await?, self.history.scrape().await?);
        let at_end = self.baseline.backlog(&streams, &scrape);
        let catch_up = self.history.caught_up(Duration::from_secs(600)).await;
        self.task.abort();
        let catch_up = catch_up?.as_secs_f64();
        let after = self.history.scrape().await?;
        let stored = after.stored.saturating_sub(self.baseline.stored);
        let stored_during_run = scrape.stored.saturating_sub(self.baseline.stored);
        let points = self
            .points
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let max = |f: fn(&Point) -> f64| {
            points
                .iter()
                .map(f)
                .filter(|v| v.is_finite())
                .fold(0.0_f64, f64::max)
        };
        Ok(json!({
            "samples": points.len(),
            "sample_every_ms": SAMPLE_EVERY.as_millis(),
            "run_seconds": run_seconds,
            "delivered": delivered,
            "max_backlog_entries": max(|p| p.backlog as f64).max(at_end as f64),
            "max_lag_ms": max(|p| p.oldest_ms).max(streams.oldest_ms),
            "max_service_lag_gauge_ms": max(|p| p.lag_ms),
            "backlog_at_end": {"entries": at_end, "pending": streams.pending, "oldest_ms": streams.oldest_ms},
            "caught_up_after_end_seconds": catch_up,
            // [seconds since the run started, entries not yet
            // acknowledged, age of the oldest in ms], every sample
            "series": points.iter().map(|p| json!([
                (p.at * 10.0).round() / 10.0,
                p.backlog,
                p.oldest_ms,
            ])).collect::<Vec<_>>(),
            "stored": stored,
            "stored_during_run": stored_during_run,
            "stored_per_sec_during_run": stored_during_run as f64 / run_seconds.max(0.001),
            "stored_per_sec_until_caught_up": stored as f64 / (run_seconds + catch_up).max(0.001),
        }))
    }
}

/// `kill -SIG PID` (the workspace forbids the `unsafe` of a libc call).
fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A stream id (`MS-SEQ`) as (ms, seq), which orders as the ids do.
fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn array(value: &Redis) -> &[Redis] {
    match value {
        Redis::Array(items) | Redis::Set(items) => items,
        _ => &[],
    }
}

fn text(value: &Redis) -> Option<String> {
    match value {
        Redis::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Redis::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(value: &Redis) -> Option<u64> {
    match value {
        Redis::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// Name/value pairs of a reply (RESP2: a flat array; RESP3: a map).
fn fields(reply: &Redis) -> Vec<(String, Redis)> {
    match reply {
        Redis::Map(pairs) => pairs
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, v.clone())))
            .collect(),
        other => array(other)
            .chunks(2)
            .filter_map(|kv| Some((text(&kv[0])?, kv.get(1)?.clone())))
            .collect(),
    }
}

/// The fields of group [`GROUP`] in an XINFO GROUPS reply.
fn group_info(reply: &Redis) -> Option<Vec<(String, Redis)>> {
    array(reply).iter().map(fields).find(|group| {
        group
            .iter()
            .any(|(k, v)| k == "name" && text(v).as_deref() == Some(GROUP))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Redis {
        Redis::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_the_history_group_of_xinfo_groups() {
        let reply = Redis::Array(vec![
            Redis::Array(vec![
                bulk("name"),
                bulk("other"),
                bulk("lag"),
                Redis::Int(9),
            ]),
            Redis::Array(vec![
                bulk("name"),
                bulk("history"),
                bulk("pending"),
                Redis::Int(3),
                bulk("lag"),
                Redis::Nil,
            ]),
        ]);
        let group = group_info(&reply).expect("the history group");
        let field = |name: &str| group.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        assert_eq!(field("pending").and_then(int), Some(3));
        assert_eq!(field("lag").and_then(int), None);
        assert!(group_info(&Redis::Array(vec![])).is_none());
        assert_eq!(stream_id("1700000000123-4"), Some((1_700_000_000_123, 4)));
        assert!(stream_id("1700000000123-4") < stream_id("1700000000123-10"));
        assert_eq!(stream_id("0-0"), Some((0, 0)));
    }
}
