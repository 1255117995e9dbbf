//! The ingest: reads the gateways' history streams as a member of the
//! consumer group `history` and stores what it reads, a batch at a time.
//!
//! One round reads every partition (at most about [`IngestSettings::batch`]
//! entries in all), stores the batch in one transaction
//! ([`HistoryStore::ingest`]), then acknowledges it, and now and then trims
//! what the group has acknowledged from the streams. Nothing is
//! acknowledged before it is committed; the store is idempotent, so an
//! entry read twice (a crash between commit and acknowledgement, a Redis
//! reply lost) is stored once. Hence, at every (re)connection, the
//! consumer's own pending entries are read again first, and entries that
//! another consumer has held for long (`claim_idle`) are taken over.
//!
//! Redis or the database down: the ingest waits and retries with backoff,
//! holding its batch, and never acknowledges what it has not stored; the
//! gateways keep appending (bounded by `MAXLEN ~`), and the ingest catches
//! up when both are back. It never fails the process.
//!
//! The partitions are dealt to lanes ([`IngestSettings::lanes`]): each
//! lane does all of the above for its own partitions, with its own Redis
//! connection and its own transaction in flight, so MariaDB works on as
//! many batches at once. A conversation lives in one partition, so its
//! messages and retractions stay in one lane, in stream order.
//!
//! Traces: each batch is a `history.ingest` span linked to the messages'
//! own traces (their `tp`, up to [`MAX_LINKS`]), and a message whose trace
//! is sampled gets a `history.store` span inside its own trace.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::trace::TraceContextExt as _;
use shutdown::Shutdown;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    config::IngestSettings,
    domain::{Entry, HISTORY_PARTITIONS},
    metrics::metrics,
    store::{HistoryStore, Ingested},
    stream::{GroupState, RawEntry, Streams},
};

/// Links from one batch span to the messages' traces, at most.
pub const MAX_LINKS: usize = 64;
/// `history.store` spans (sampled messages) per batch, at most.
const MAX_STORE_SPANS: usize = 32;
/// A partition that had nothing last time is read this many at a time.
const COLD_PARTITION_COUNT: usize = 64;
/// Trim the partitions written since the last trim this often, and refresh
/// the pending and backlog gauges of every partition this often.
const TRIM_EVERY: Duration = Duration::from_millis(500);
const GAUGES_EVERY: Duration = Duration::from_secs(5);
/// How often entries held by other consumers are looked for.
const CLAIM_EVERY: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Ingest {
    settings: IngestSettings,
    store: HistoryStore,
    /// This lane (0 until [`Ingest::run`] deals the lanes).
    lane: u32,
    gauges: Arc<Gauges>,
}

/// What the lanes report together: pending and backlog summed over every
/// partition, lag the largest of any lane.
struct Gauges {
    pending: [AtomicU64; HISTORY_PARTITIONS as usize],
    backlog: [AtomicU64; HISTORY_PARTITIONS as usize],
    lag_ms: [AtomicI64; HISTORY_PARTITIONS as usize],
}

impl Gauges {
    fn new() -> Self {
        Self {
            pending: std::array::from_fn(|_| AtomicU64::new(0)),
            backlog: std::array::from_fn(|_| AtomicU64::new(0)),
            lag_ms: std::array::from_fn(|_| AtomicI64::new(0)),
        }
    }

    fn set_state(&self, partition: u32, state: &GroupState) {
        self.pending[partition as usize].store(state.pending, Ordering::Relaxed);
        self.backlog[partition as usize].store(state.backlog, Ordering::Relaxed);
        let sum = |values: &[AtomicU64]| {
            let total: u64 = values.iter().map(|v| v.load(Ordering::Relaxed)).sum();
            i64::try_from(total).unwrap_or(i64::MAX)
        };
        metrics().pending.set(sum(&self.pending));
        metrics().backlog.set(sum(&self.backlog));
    }

    fn set_lag(&self, lane: u32, lag_ms: i64) {
        self.lag_ms[lane as usize].store(lag_ms, Ordering::Relaxed);
        let most = self.lag_ms.iter().map(|l| l.load(Ordering::Relaxed)).max();
        metrics().lag_ms.set(most.unwrap_or(0));
    }
}

/// What ended a round of work early.
enum Stop {
    /// Shutdown was requested.
    Shutdown,
    /// Redis failed; reconnect.
    Redis(redis::RedisError),
}

impl From<redis::RedisError> for Stop {
    fn from(error: redis::RedisError) -> Self {
        Stop::Redis(error)
    }
}

impl Ingest {
    pub fn new(settings: IngestSettings, store: HistoryStore) -> Self {
        Self {
            settings,
            store,
            lane: 0,
            gauges: Arc::new(Gauges::new()),
        }
    }

    /// The lanes the partitions are dealt to (the setting, within 1..=16).
    fn lanes(&self) -> u32 {
        self.settings.lanes.clamp(1, HISTORY_PARTITIONS)
    }

    /// Consumes the streams until `shutdown`, a task per lane.
    pub async fn run(self, shutdown: Shutdown) {
        let tasks: Vec<_> = (0..self.lanes())
            .map(|lane| {
                let ingest = Ingest {
                    lane,
                    ..self.clone()
                };
                tokio::spawn(ingest.run_lane(shutdown.clone()))
            })
            .collect();
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a history ingest lane ended abnormally");
            }
        }
        tracing::info!("history ingest stopped");
    }

    async fn run_lane(self, shutdown: Shutdown) {
        let mut redis = Outage::new("redis");
        loop {
            match self.connected(&shutdown, &mut redis).await {
                Stop::Shutdown => break,
                Stop::Redis(error) => {
                    metrics()
                        .errors
                        .get_or_create(&vec![("kind", "redis")])
                        .inc();
                    let delay = redis.failed(&error);
                    if sleep_or_shutdown(delay, &shutdown).await {
                        break;
                    }
                }
            }
        }
    }

    async fn connected(&self, shutdown: &Shutdown, outage: &mut Outage) -> Stop {
        let s = &self.settings;
        let lanes = self.lanes();
        let streams =
            match Streams::connect_lane(&s.redis, &s.prefix, &s.consumer, self.lane, lanes).await {
                Ok(streams) => streams,
                Err(e) => return Stop::Redis(e),
            };
        if let Err(e) = streams.create_groups().await {
            return Stop::Redis(e);
        }
        outage.recovered();
        tracing::info!(consumer = %s.consumer, prefix = %s.prefix, lane = self.lane, lanes, "history ingest reading the streams");
        let mut poll = Poll::new();
        match self.consume(&streams, &mut poll, shutdown).await {
            Ok(never) => match never {},
            Err(stop) => stop,
        }
    }

    async fn consume(
        &self,
        streams: &Streams,
        poll: &mut Poll,
        shutdown: &Shutdown,
    ) -> Result<std::convert::Infallible, Stop> {
        let batch = self.settings.batch;
        // What this consumer read before and may not have stored.
        for partition in streams.partitions() {
            let mut after = "0".to_owned();
            loop {
                let entries = streams.read_pending(partition, &after, batch).await?;
                let Some(last) = entries.last() else { break };
                after = last.id.clone();
                tracing::info!(
                    partition,
                    entries = entries.len(),
                    "re-reading unacknowledged entries"
                );
                self.process(streams, entries, poll, shutdown).await?;
            }
        }
        loop {
            if shutdown.is_requested() {
                return Err(Stop::Shutdown);
            }
            if poll.last_claim.is_none_or(|at| at.elapsed() >= CLAIM_EVERY) {
                poll.last_claim = Some(Instant::now());
                self.claim_idle(streams, poll, shutdown).await?;
            }
            let entries = poll.read_round(streams, batch).await?;
            let read = entries.len();
            if read == 0 {
                self.gauges.set_lag(self.lane, 0);
            } else {
                self.process(streams, entries, poll, shutdown).await?;
            }
            poll.trim_if_due(streams, &self.gauges).await?;
            // Let a trickle gather into a batch; nothing at all: idle. A
            // lane lingers `linger` times the lanes: at a steady rate the
            // lanes together commit as often as one lane would, with
            // batches as large (MariaDB's cost per chat grows as batches
            // shrink); a backlog is read without pause, by every lane at
            // once.
            let pause = match read {
                0 => self.settings.poll_idle,
                n if n < batch / 4 => self.settings.linger * self.lanes(),
                _ => Duration::ZERO,
            };
            if !pause.is_zero() && sleep_or_shutdown(pause, shutdown).await {
                return Err(Stop::Shutdown);
            }
        }
    }

    /// Takes over what other consumers have held unacknowledged for
    /// `claim_idle` (e.g. a replaced pod's) and stores it.
    async fn claim_idle(
        &self,
        streams: &Streams,
        poll: &mut Poll,
        shutdown: &Shutdown,
    ) -> Result<(), Stop> {
        for partition in streams.partitions() {
            let mut start = "0-0".to_owned();
            loop {
                let (next, entries) = streams
                    .claim_idle(
                        partition,
                        self.settings.claim_idle,
                        &start,
                        self.settings.batch,
                    )
                    .await?;
                if !entries.is_empty() {
                    tracing::info!(
                        partition,
                        entries = entries.len(),
                        "took over entries another consumer left unacknowledged"
                    );
                    self.process(streams, entries, poll, shutdown).await?;
                }
                if next == "0-0" || next == start {
                    break;
                }
                start = next;
            }
        }
        Ok(())
    }

    /// Stores a batch (retrying while the database is down), then
    /// acknowledges it. Entries that cannot be read are acknowledged and
    /// counted, never retried.
    async fn process(
        &self,
        streams: &Streams,
        raw: Vec<RawEntry>,
        poll: &mut Poll,
        shutdown: &Shutdown,
    ) -> Result<(), Stop> {
        let mut entries = Vec::with_capacity(raw.len());
        for entry in &raw {
            // None: pending, but trimmed from the stream meanwhile: gone.
            let Some(fields) = &entry.fields else {
                continue;
            };
            for parsed in Entry::parse_all(fields) {
                match parsed {
                    Ok(parsed) => entries.push(parsed),
                    Err(reason) => {
                        metrics().malformed.inc();
                        tracing::warn!(partition = entry.partition, id = %entry.id, reason, "skipping a malformed history entry");
                    }
                }
            }
        }
        // A stream entry may hold many chats (a gateway's call's chats for
        // one partition): one transaction stores at most a batch of them.
        for chunk in entries.chunks(self.settings.batch.max(1)) {
            self.store_batch(chunk, shutdown).await?;
        }
        metrics().entries.inc_by(raw.len() as u64);
        let mut by_partition: Vec<Vec<String>> = vec![Vec::new(); HISTORY_PARTITIONS as usize];
        for entry in raw {
            by_partition[entry.partition as usize].push(entry.id);
        }
        for (partition, ids) in (0..).zip(&by_partition) {
            if !ids.is_empty() {
                streams.ack(partition, ids).await?;
                poll.dirty.insert(partition);
            }
        }
        Ok(())
    }

    async fn store_batch(&self, entries: &[Entry], shutdown: &Shutdown) -> Result<(), Stop> {
        let m = metrics();
        let now_us = now_unix_us();
        let oldest = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Message(m) => Some(m.sent_at_us),
                Entry::Retract(_) => None,
            })
            .min();
        let span = tracing::info_span!(
            "history.ingest",
            otel.kind = "consumer",
            messaging.system = "redis",
            messaging.batch.message_count = entries.len(),
        );
        let messages = || {
            entries.iter().filter_map(|e| match e {
                Entry::Message(m) if !m.traceparent.is_empty() => Some(m),
                _ => None,
            })
        };
        for message in messages().take(MAX_LINKS) {
            if let Some(context) = span_context(&message.traceparent) {
                span.add_link(context);
            }
        }
        let batch_context = span.context().span().span_context().clone();
        let store_spans: Vec<tracing::Span> = messages()
            .filter(|m| is_sampled(&m.traceparent))
            .take(MAX_STORE_SPANS)
            .map(|message| {
                let store = tracing::info_span!(
                    parent: None,
                    "history.store",
                    conversation = %message.conversation,
                    seq = message.seq,
                );
                telemetry::propagation::set_parent_from_traceparent(&store, &message.traceparent);
                store.add_link(batch_context.clone());
                store
            })
            .collect();

        let started = Instant::now();
        let outcome = self
            .store_with_retry(entries, shutdown)
            .instrument(span)
            .await?;
        drop(store_spans);
        m.batch_duration.observe(started.elapsed().as_secs_f64());
        m.batch_size.observe(entries.len() as f64);
        m.ingested.inc_by(outcome.stored);
        m.duplicates.inc_by(outcome.duplicates);
        m.retracted.inc_by(outcome.retracted);
        if let Some(oldest) = oldest {
            let lag_us = now_us.saturating_sub(oldest).max(0);
            self.gauges.set_lag(self.lane, lag_us / 1000);
            m.lag.observe(lag_us as f64 / 1e6);
        }
        tracing::debug!(
            entries = entries.len(),
            stored = outcome.stored,
            duplicates = outcome.duplicates,
            "history batch stored"
        );
        Ok(())
    }

    /// One transaction for the batch; while the database is unreachable,
    /// the same again after a pause. A batch the database refuses for
    /// another reason is stored entry by entry, so one bad entry costs only
    /// itself.
    async fn store_with_retry(
        &self,
        entries: &[Entry],
        shutdown: &Shutdown,
    ) -> Result<Ingested, Stop> {
        let mut database = Outage::new("the history database");
        loop {
            match self.store.ingest(entries).await {
                Ok(outcome) => {
                    database.recovered();
                    return Ok(outcome);
                }
                Err(e) if mysql_pool::is_unavailable(&e) => {
                    metrics()
                        .errors
                        .get_or_create(&vec![("kind", "database")])
                        .inc();
                    let delay = database.failed(&e);
                    if sleep_or_shutdown(delay, shutdown).await {
                        return Err(Stop::Shutdown);
                    }
                }
                Err(e) if entries.len() > 1 => {
                    tracing::warn!(error = %e, entries = entries.len(), "the database refused a history batch; storing it entry by entry");
                    let mut total = Ingested::default();
                    for entry in entries {
                        let one =
                            Box::pin(self.store_with_retry(std::slice::from_ref(entry), shutdown))
                                .await?;
                        total.stored += one.stored;
                        total.duplicates += one.duplicates;
                        total.retracted += one.retracted;
                    }
                    return Ok(total);
                }
                Err(e) => {
                    metrics().dropped.inc();
                    let (conversation, mid) = match &entries[0] {
                        Entry::Message(m) => (m.conversation, m.mid.as_str()),
                        Entry::Retract(r) => (r.conversation, r.mid.as_str()),
                    };
                    tracing::error!(error = %e, %conversation, mid, "the database refused a history entry; it is skipped");
                    return Ok(Ingested::default());
                }
            }
        }
    }
}

/// Which partitions to read how much of, and what to trim.
struct Poll {
    /// Partitions whose last read filled its count (more is waiting).
    hot: [bool; HISTORY_PARTITIONS as usize],
    /// Partitions acknowledged since their last trim.
    dirty: BTreeSet<u32>,
    last_trim: Instant,
    /// `None`: not yet (due at once).
    last_gauges: Option<Instant>,
    last_claim: Option<Instant>,
}

impl Poll {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            hot: [false; HISTORY_PARTITIONS as usize],
            dirty: BTreeSet::new(),
            last_trim: now,
            last_gauges: None,
            // Claim once right after start (after our own pending entries).
            last_claim: None,
        }
    }

    /// Reads every partition at once: busy partitions share the batch,
    /// quiet ones are asked for a little.
    async fn read_round(&mut self, streams: &Streams, batch: usize) -> Result<Vec<RawEntry>, Stop> {
        let hot = streams
            .partitions()
            .filter(|&p| self.hot[p as usize])
            .count();
        // Partitions asked for as many entries share a command (on one
        // Redis: usually one or two commands a round instead of 16).
        let mut by_count: std::collections::BTreeMap<usize, Vec<u32>> = Default::default();
        for partition in streams.partitions() {
            let count = if self.hot[partition as usize] {
                (batch / hot.max(1)).max(COLD_PARTITION_COUNT.min(batch))
            } else {
                COLD_PARTITION_COUNT.min(batch)
            };
            by_count.entry(count).or_default().push(partition);
        }
        let reads = by_count
            .iter()
            .map(|(&count, partitions)| streams.read_new_from(partitions, count));
        let results = futures::future::join_all(reads).await;
        let mut entries = Vec::new();
        for ((&count, partitions), result) in by_count.iter().zip(results) {
            for (&partition, read) in partitions.iter().zip(result?) {
                self.hot[partition as usize] = read.len() >= count;
                entries.extend(read);
            }
        }
        Ok(entries)
    }

    async fn trim_if_due(&mut self, streams: &Streams, shared: &Gauges) -> Result<(), Stop> {
        let gauges = self
            .last_gauges
            .is_none_or(|at| at.elapsed() >= GAUGES_EVERY);
        if !gauges && (self.dirty.is_empty() || self.last_trim.elapsed() < TRIM_EVERY) {
            return Ok(());
        }
        let partitions: Vec<u32> = if gauges {
            streams.partitions().collect()
        } else {
            self.dirty.iter().copied().collect()
        };
        for partition in partitions {
            let state = streams.trim(partition).await?;
            shared.set_state(partition, &state);
        }
        self.dirty.clear();
        self.last_trim = Instant::now();
        if gauges {
            self.last_gauges = Some(Instant::now());
        }
        Ok(())
    }
}

/// A failing dependency: how long to wait before the next attempt, and
/// log lines that say it is down, still down (every 30 s) and back.
struct Outage {
    what: &'static str,
    since: Option<Instant>,
    last_logged: Option<Instant>,
    delay: Duration,
}

impl Outage {
    const FIRST_DELAY: Duration = Duration::from_millis(100);
    const MAX_DELAY: Duration = Duration::from_secs(5);
    const LOG_EVERY: Duration = Duration::from_secs(30);

    fn new(what: &'static str) -> Self {
        Self {
            what,
            since: None,
            last_logged: None,
            delay: Self::FIRST_DELAY,
        }
    }

    fn failed(&mut self, error: &dyn std::fmt::Display) -> Duration {
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        if self
            .last_logged
            .is_none_or(|at| at.elapsed() >= Self::LOG_EVERY)
        {
            self.last_logged = Some(now);
            tracing::warn!(
                error = %error,
                down_for = ?since.elapsed(),
                retry_in = ?self.delay,
                "history ingest cannot reach {}; retrying (nothing is acknowledged until it is stored)",
                self.what
            );
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX_DELAY);
        delay
    }

    fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(down_for = ?since.elapsed(), "history ingest reaches {} again", self.what);
        }
        self.last_logged = None;
        self.delay = Self::FIRST_DELAY;
    }
}

/// Sleeps for `delay`; true when shutdown was requested meanwhile.
async fn sleep_or_shutdown(delay: Duration, shutdown: &Shutdown) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => shutdown.is_requested(),
        () = shutdown.requested() => true,
    }
}

/// The span context a W3C traceparent names, if valid.
fn span_context(traceparent: &str) -> Option<opentelemetry::trace::SpanContext> {
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// Whether a traceparent (`00-TRACE-SPAN-FLAGS`) has the sampled flag.
fn is_sampled(traceparent: &str) -> bool {
    traceparent
        .rsplit('-')
        .next()
        .and_then(|flags| u8::from_str_radix(flags, 16).ok())
        .is_some_and(|flags| flags & 1 == 1)
}

fn now_unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_report_pending_and_backlog_summed_and_the_largest_lag() {
        let gauges = Gauges::new();
        let state = |pending, backlog| GroupState { pending, backlog };
        // Lane 0 of 2 has partition 0, lane 1 partition 1.
        gauges.set_state(0, &state(3, 10));
        gauges.set_state(1, &state(4, 20));
        assert_eq!(metrics().pending.get(), 7);
        assert_eq!(metrics().backlog.get(), 30);
        gauges.set_state(0, &state(0, 0));
        assert_eq!(
            metrics().backlog.get(),
            20,
            "a lane's new state replaces its old one"
        );
        gauges.set_lag(0, 250);
        gauges.set_lag(1, 40);
        assert_eq!(metrics().lag_ms.get(), 250);
        gauges.set_lag(0, 0);
        assert_eq!(metrics().lag_ms.get(), 40, "the largest lag of any lane");
    }

    #[test]
    fn sampled_is_the_low_bit_of_the_flags() {
        assert!(is_sampled(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
        assert!(!is_sampled(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        ));
        assert!(!is_sampled(""));
    }

    #[test]
    fn an_outage_backs_off_up_to_five_seconds_and_starts_over_when_it_ends() {
        let mut outage = Outage::new("redis");
        let delays: Vec<Duration> = (0..8).map(|_| outage.failed(&"down")).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(*delays.last().expect("some"), Duration::from_secs(5));
        outage.recovered();
        assert_eq!(outage.failed(&"down again"), Duration::from_millis(100));
    }
}
