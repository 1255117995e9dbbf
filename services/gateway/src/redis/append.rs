//! The appender: records messages in inboxes, many receivers per call.
//!
//! A node's concurrent chats form batches (one batch on its way at a time
//! while the next grows). On a single Redis a batch is one DELIVER call
//! (`deliver.rs`). On a cluster its chats are numbered first (one call and
//! one `WAIT` per shard of their conversations, `number_first`), then it is
//! one APPEND call per shard, whatever
//! slots its receivers live in (the keys go in ARGV: `counter.lua`'s
//! `item_keys`), followed by one `WAIT 1`, and what it recorded is
//! published (SPUBLISH) only after a replica confirmed it: a failover
//! cannot take back what a receiver has seen. A shard's call that fails (a
//! slot on its way to another node) wrote nothing; its slots are then
//! retried one call each, routed by redis-rs, which follows redirects.

use std::{fmt::Write as _, time::Duration};

use futures::StreamExt as _;
use redis::{Value, cluster_routing::SingleNodeRoutingInfo};
use tokio::sync::{mpsc, oneshot};

use super::{Commands, REPLICA_WAIT, Redis, RedisError, Via, presence::ttl_millis, slot};

/// What [`Redis::append`](super::Redis::append) did for one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Recorded with this sequence; published to that many subscribers
    /// (`None`: not published, the caller hands it over itself).
    Recorded { seq: u64, subscribers: Option<u64> },
    /// A retry of a message already recorded (same message id).
    Duplicate { seq: u64 },
    /// The receiver's inbox is at its limit; nothing was recorded.
    InboxFull,
    /// The receiver's inbox holds its budget of bytes; nothing was recorded.
    InboxBytesFull,
}

/// Records messages in inboxes, for many receivers in one call (a node
/// batches what its sessions send at the same moment: one script call costs
/// Redis far more than the few commands in it).
/// KEYS: per receiver, counter, inbox, dedup key; then the slot's epoch mark
/// (`counter.lua`); or no KEYS and, first in ARGV, their count and per
/// receiver its three keys and its slot's mark (one call for a shard's
/// slots). ARGV[1]: inbox limit,
/// ARGV[2]: its budget in bytes (measured once the inbox holds a backlog);
/// then per receiver, channel ('' = do not publish), dedup TTL in seconds
/// ('0' = no dedup key; '-TTL': a retry, which also looks for the message
/// id among the inbox's newest entries) and the index (from 0) of its entry
/// tail; then the tails.
/// Returns {seq, subscribers} per receiver; subscribers -1: inbox full,
/// -2: duplicate, -3: not published, -4: inbox over its bytes.
pub(super) const APPEND_SCRIPT: &str = concat!(
    include_str!("scripts/counter.lua"),
    include_str!("scripts/append.lua"),
    include_str!("scripts/append_each.lua")
);

/// A chat to number in its conversation as it is appended
/// ([`Redis::number_and_append`](super::Redis::number_and_append)).
#[derive(Debug, Clone)]
pub struct Numbering {
    pub conversation: String,
    /// Dedup TTL in seconds (0: the chat has no client id).
    pub ttl: u64,
    pub sender: i64,
    pub micros: u64,
    pub traceparent: String,
    /// Where the frame's numbered head starts in the entry's tail.
    pub head_at: usize,
}

/// One [`Redis::append_each`] call, for the appender.
pub(super) struct AppendJob {
    /// (user, channel to publish on or '').
    pub(super) receivers: Vec<(i64, String)>,
    pub(super) mid: String,
    pub(super) tail: Vec<u8>,
    pub(super) max_inbox: usize,
    pub(super) ttl: u64,
    /// A retry: look for the message id among the inbox's newest entries
    /// when no dedup key has it.
    pub(super) scan: bool,
    /// Number the chat in the same call (single Redis only): `tail` then
    /// ends with the frame's head, which the script completes.
    pub(super) number: Option<Numbering>,
    /// Where the frame starts in `tail`.
    pub(super) frame_at: usize,
    pub(super) reply: oneshot::Sender<JobReply>,
}

/// The chat's number when it was numbered, and one result per receiver.
pub(super) type JobReply = (Option<u64>, Vec<Result<Appended, String>>);

pub(super) fn appended(seq: i64, subscribers: i64) -> Appended {
    let seq = u64::try_from(seq).unwrap_or(0);
    match subscribers {
        -1 => Appended::InboxFull,
        -4 => Appended::InboxBytesFull,
        -2 => Appended::Duplicate { seq },
        -3 => Appended::Recorded {
            seq,
            subscribers: None,
        },
        n => Appended::Recorded {
            seq,
            subscribers: Some(u64::try_from(n).unwrap_or(0)),
        },
    }
}

impl Redis {
    /// Forms batches of append jobs (whatever waits while earlier batches
    /// are on their way) and runs each as one script call.
    /// A unit (a session's burst of chats to one receiver, see
    /// [`Redis::number_and_append_unit`](super::Redis::number_and_append_unit))
    /// arrives as one message and stays in one batch, so its chats share
    /// every call and succeed or fail together, in order.
    pub(super) async fn run_appender(self, mut jobs: mpsc::UnboundedReceiver<Vec<AppendJob>>) {
        /// Receivers in one script call: Redis runs nothing else meanwhile.
        const MAX_BATCH: usize = 256;
        /// Batches on their way at once. One: while it is on its way, the
        /// next one grows. Fewer, larger script calls cost Redis far less
        /// (each call is also one append-only-file write): measured on
        /// 2 cores, 4 in flight gave 50k msg/s at saturation, 1 gave 68k.
        const IN_FLIGHT: usize = 1;
        let mut running = futures::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                job = jobs.recv(), if running.len() < IN_FLIGHT => {
                    let Some(mut batch) = job else { break };
                    let mut receivers: usize = batch.iter().map(|j| j.receivers.len()).sum();
                    while receivers < MAX_BATCH {
                        match jobs.try_recv() {
                            Ok(unit) => {
                                receivers += unit.iter().map(|j| j.receivers.len()).sum::<usize>();
                                batch.extend(unit);
                            }
                            Err(_) => break,
                        }
                    }
                    running.push(self.append_batch(batch));
                }
                Some(()) = running.next(), if !running.is_empty() => {
                    // The sessions this batch just answered go first: a
                    // sender whose next chat is already read joins the
                    // next batch instead of the one after it. Without
                    // this, at saturation each sender was in every other
                    // batch, and batches held half the chats on their way.
                    tokio::task::yield_now().await;
                }
            }
        }
        while running.next().await.is_some() {}
    }

    async fn append_batch(&self, batch: Vec<AppendJob>) {
        if !self.sharded {
            return self.deliver_batch(batch).await;
        }
        let (batch, numbers): (Vec<AppendJob>, Vec<Option<u64>>) =
            self.number_first(batch).await.into_iter().unzip();
        if batch.is_empty() {
            return;
        }
        let max_inbox = batch.iter().map(|j| j.max_inbox).max().unwrap_or(1);
        // Every receiver of the batch, as (job, user, channel).
        let receivers: Vec<Receiver<'_>> = batch
            .iter()
            .enumerate()
            .flat_map(|(j, job)| job.receivers.iter().map(move |(u, c)| (j, *u, c.as_str())))
            .collect();
        let groups = slot::groups(self.sharded, receivers.iter().map(|r| r.1));
        let work = Work {
            batch: &batch,
            receivers: &receivers,
            max_inbox,
        };
        let results: Vec<Result<Vec<Appended>, RedisError>> = if self.sharded {
            self.append_by_shard(&work, &groups).await
        } else {
            futures::future::join_all(groups.iter().map(|g| self.append_group(&work, g))).await
        };
        let mut outcome: Vec<Option<Result<Appended, String>>> = vec![None; receivers.len()];
        for (group, result) in groups.iter().zip(results) {
            for (position, index) in group.iter().enumerate() {
                outcome[*index] = Some(match &result {
                    Ok(appended) => appended
                        .get(position)
                        .copied()
                        .ok_or_else(|| "redis answered fewer appends than asked".to_owned()),
                    Err(e) => Err(e.to_string()),
                });
            }
        }
        let mut outcome = outcome.into_iter();
        for (job, cseq) in batch.into_iter().zip(numbers) {
            let results: Vec<Result<Appended, String>> = outcome
                .by_ref()
                .take(job.receivers.len())
                .map(|o| o.unwrap_or_else(|| Err("append lost in a batch".to_owned())))
                .collect();
            let _ = job.reply.send((cseq, results));
        }
    }

    /// On a cluster, the chats of a batch that are numbered as they are
    /// appended (`AppendJob::number`) are numbered first, in their
    /// conversations' shards (one call and one `WAIT` per shard, as the
    /// numberer's), and their entries completed with the number; then the
    /// batch is appended. One batcher instead of two: a batch can hold every
    /// chat the node has on its way (a call's cost is mostly per call).
    /// Returns the jobs to append with
    /// their numbers, having answered those whose numbering failed
    /// (nothing was appended for them; the caller numbers them again).
    async fn number_first(&self, batch: Vec<AppendJob>) -> Vec<(AppendJob, Option<u64>)> {
        let numbering: Vec<usize> = (0..batch.len())
            .filter(|&j| batch[j].number.is_some())
            .collect();
        if numbering.is_empty() {
            return batch.into_iter().map(|job| (job, None)).collect();
        }
        let chats: Vec<super::number::NumberJob> = numbering
            .iter()
            .filter_map(|&j| {
                let job = &batch[j];
                let number = job.number.as_ref()?;
                Some(super::number::NumberJob {
                    conversation: number.conversation.clone(),
                    mid: job.mid.clone(),
                    ttl: number.ttl,
                    sender: number.sender,
                    micros: number.micros,
                    traceparent: number.traceparent.clone(),
                    head: job.tail[job.frame_at..].to_vec(),
                    log: 0,
                    reply: oneshot::channel().0,
                })
            })
            .collect();
        let mut numbers: Vec<Option<Result<u64, String>>> = batch.iter().map(|_| None).collect();
        for (&j, number) in numbering.iter().zip(self.number_all(&chats).await) {
            numbers[j] = Some(number);
        }
        let mut out = Vec::with_capacity(batch.len());
        for (mut job, number) in batch.into_iter().zip(numbers) {
            match number {
                None => out.push((job, None)),
                Some(Ok(cseq)) => {
                    let frame =
                        crate::protocol::conversation::complete(&job.tail[job.frame_at..], cseq);
                    job.tail.truncate(job.frame_at);
                    job.tail.extend_from_slice(&frame);
                    job.number = None;
                    out.push((job, Some(cseq)));
                }
                Some(Err(e)) => {
                    let failed = job.receivers.iter().map(|_| Err(e.clone())).collect();
                    let _ = job.reply.send((None, failed));
                }
            }
        }
        out
    }

    /// A receiver's three keys in an append: counter, inbox, dedup key.
    pub(super) fn inbox_keys(
        &self,
        cmd: &mut redis::Pipeline,
        key: &mut String,
        user: i64,
        job: &AppendJob,
    ) {
        // `{prefix}{u:ID}:` once, then each suffix in turn.
        key.clear();
        let _ = write!(key, "{}{{u:{user}}}:", self.prefix);
        let tag = key.len();
        key.push('n');
        cmd.arg(key.as_str());
        key.truncate(tag);
        key.push_str("in");
        cmd.arg(key.as_str());
        // Without dedup the third key is never touched.
        if job.ttl != 0 {
            key.truncate(tag);
            key.push_str("m:");
            key.push_str(&job.mid);
        }
        cmd.arg(key.as_str());
    }

    /// Adds one APPEND invocation for the receivers of `group` (one slot).
    fn append_invocation(&self, pipe: &mut redis::Pipeline, work: &Work<'_>, group: &[usize]) {
        crate::metrics::script_call("append");
        // The jobs this group needs the tails of, renumbered from 0.
        let mut tails: Vec<usize> = group.iter().map(|&i| work.receivers[i].0).collect();
        tails.sort_unstable();
        tails.dedup();
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(self.scripts.append.get_hash())
            .arg(group.len() * 3 + 1);
        let mut key = String::with_capacity(self.prefix.len() + 64);
        for &i in group {
            let (j, user, _) = work.receivers[i];
            self.inbox_keys(cmd, &mut key, user, &work.batch[j]);
        }
        // The group is one slot: the first receiver's.
        cmd.arg(self.epoch_mark_key(slot::of_user(work.receivers[group[0]].1)));
        cmd.arg(work.max_inbox).arg(self.budgets.inbox_bytes());
        for &i in group {
            let (j, _, channel) = work.receivers[i];
            // On a cluster, published after the WAIT instead.
            let channel = if self.sharded { "" } else { channel };
            let tail = tails.binary_search(&j).unwrap_or(0);
            let job = &work.batch[j];
            if job.scan {
                cmd.arg(channel).arg(format!("-{}", job.ttl)).arg(tail);
            } else {
                cmd.arg(channel).arg(job.ttl).arg(tail);
            }
        }
        for &j in &tails {
            cmd.arg(&work.batch[j].tail[..]);
        }
    }

    /// One APPEND invocation for every receiver of the groups `gs`, which
    /// all live on one shard: no declared keys, each receiver's keys and
    /// its slot's epoch mark in ARGV (`counter.lua`'s `item_keys`). One
    /// script call (and one epoch check) per shard per batch instead of one
    /// per slot: on a cluster nearly every receiver is a slot of its own.
    fn shard_append_invocation(
        &self,
        pipe: &mut redis::Pipeline,
        work: &Work<'_>,
        groups: &[Vec<usize>],
        gs: &[usize],
    ) {
        crate::metrics::script_call("append");
        let receivers = || gs.iter().flat_map(|&g| groups[g].iter().copied());
        let count: usize = gs.iter().map(|&g| groups[g].len()).sum();
        let mut tails: Vec<usize> = receivers().map(|i| work.receivers[i].0).collect();
        tails.sort_unstable();
        tails.dedup();
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(self.scripts.append.get_hash())
            .arg(0)
            .arg(count * 4);
        let mut key = String::with_capacity(self.prefix.len() + 64);
        for i in receivers() {
            let (j, user, _) = work.receivers[i];
            self.inbox_keys(cmd, &mut key, user, &work.batch[j]);
            cmd.arg(self.epoch_mark_key(slot::of_user(user)));
        }
        cmd.arg(work.max_inbox).arg(self.budgets.inbox_bytes());
        for i in receivers() {
            let (j, _, _) = work.receivers[i];
            // Published after the WAIT.
            let tail = tails.binary_search(&j).unwrap_or(0);
            let job = &work.batch[j];
            if job.scan {
                cmd.arg("").arg(format!("-{}", job.ttl)).arg(tail);
            } else {
                cmd.arg("").arg(job.ttl).arg(tail);
            }
        }
        for &j in &tails {
            cmd.arg(&work.batch[j].tail[..]);
        }
    }

    /// One slot's receivers on their own, routed by redis-rs (which follows
    /// MOVED and ASK): a single Redis, a slot whose owner is unknown, or a
    /// retry of one that failed in its shard's pipeline.
    async fn append_group(
        &self,
        work: &Work<'_>,
        group: &[usize],
    ) -> Result<Vec<Appended>, RedisError> {
        let wait = self.sharded
            && self
                .replicas
                .has_replica(slot::of_user(work.receivers[group[0]].1));
        let replies: Vec<Value> = self
            .run_scripts_via(Via::Appender, |pipe| {
                self.append_invocation(pipe, work, group);
                if wait {
                    pipe.cmd("WAIT").arg(1).arg(ttl_millis(REPLICA_WAIT));
                }
            })
            .await?;
        let mut replies = replies.into_iter();
        let mut appended = parse_appended(replies.next())?;
        if wait && !replica_confirmed(replies.next()) {
            return Err(unconfirmed());
        }
        if self.sharded {
            self.publish(work, &[group], std::slice::from_mut(&mut appended), None)
                .await?;
        }
        Ok(appended)
    }

    /// A cluster's batch: the slot groups of each shard in one pipeline to
    /// it, with one WAIT at the end, then one pipeline of SPUBLISHes. A
    /// group that fails there (a slot moved meanwhile, scripts not loaded
    /// after a failover) is retried on its own.
    async fn append_by_shard(
        &self,
        work: &Work<'_>,
        groups: &[Vec<usize>],
    ) -> Vec<Result<Vec<Appended>, RedisError>> {
        let (by_shard, mut alone) = slot::by_owner(
            &self.owners(),
            groups
                .iter()
                .map(|group| slot::of_user(work.receivers[group[0]].1)),
        );
        let mut results: Vec<Option<Result<Vec<Appended>, RedisError>>> =
            (0..groups.len()).map(|_| None).collect();
        let shards = futures::future::join_all(
            by_shard
                .iter()
                .map(|(shard, gs)| self.append_on_shard(work, groups, shard, gs)),
        )
        .await;
        for (gs, shard_results) in by_shard.values().zip(shards) {
            for (&g, result) in gs.iter().zip(shard_results) {
                match result {
                    Some(result) => results[g] = Some(result),
                    None => alone.push(g),
                }
            }
        }
        let retried: Vec<Result<Vec<Appended>, RedisError>> = futures::future::join_all(
            alone
                .iter()
                .map(|g| self.append_group(work, groups[*g].as_slice())),
        )
        .await;
        for (g, result) in alone.into_iter().zip(retried) {
            results[g] = Some(result);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(RedisError::new("append not attempted"))))
            .collect()
    }

    /// The groups `gs` of one shard in one pipeline. `None` for a group to
    /// retry on its own (nothing of it was recorded, or the outcome is
    /// unknown: a retry may record it twice, and the session writes it once).
    async fn append_on_shard(
        &self,
        work: &Work<'_>,
        groups: &[Vec<usize>],
        shard: &str,
        gs: &[usize],
    ) -> Vec<Option<Result<Vec<Appended>, RedisError>>> {
        let wait = gs.iter().any(|&g| {
            self.replicas
                .has_replica(slot::of_user(work.receivers[groups[g][0]].1))
        });
        let values = self
            .scripts_on_shard(Via::Appender, shard, |pipe| {
                self.shard_append_invocation(pipe, work, groups, gs);
                if wait {
                    pipe.cmd("WAIT").arg(1).arg(ttl_millis(REPLICA_WAIT));
                }
            })
            .await;
        let Ok(values) = values else {
            return gs.iter().map(|_| None).collect();
        };
        let mut values = values.into_iter();
        // One flat answer for the whole shard, cut back into its groups.
        let Ok(flat) = parse_appended(values.next()) else {
            return gs.iter().map(|_| None).collect();
        };
        let mut flat = flat.into_iter();
        let mut appended: Vec<Option<Vec<Appended>>> = gs
            .iter()
            .map(|&g| {
                let part: Vec<Appended> = flat.by_ref().take(groups[g].len()).collect();
                (part.len() == groups[g].len()).then_some(part)
            })
            .collect();
        if wait && !replica_confirmed(values.next()) {
            return gs.iter().map(|_| Some(Err(unconfirmed()))).collect();
        }
        let recorded: Vec<usize> = (0..gs.len()).filter(|&k| appended[k].is_some()).collect();
        let recorded_groups: Vec<&[usize]> =
            recorded.iter().map(|&k| groups[gs[k]].as_slice()).collect();
        let mut recorded_appends: Vec<Vec<Appended>> = recorded
            .iter()
            .map(|&k| appended[k].take().unwrap_or_default())
            .collect();
        let published = self
            .publish(work, &recorded_groups, &mut recorded_appends, Some(shard))
            .await;
        let mut out: Vec<Option<Result<Vec<Appended>, RedisError>>> =
            gs.iter().map(|_| None).collect();
        for (k, appends) in recorded.into_iter().zip(recorded_appends) {
            out[k] = Some(match &published {
                Ok(()) => Ok(appends),
                Err(e) => Err(RedisError::new(e.0.clone())),
            });
        }
        out
    }

    /// Publishes what `appended` recorded for receivers that asked for it
    /// and fills in how many subscribers got it: in one pipeline to `shard`
    /// when given, else routed by redis-rs. Recorded but not yet published:
    /// retried a few times, routed; after that the caller stores it with the
    /// offline service too (a duplicate at worst, never a message nobody is
    /// told about).
    async fn publish(
        &self,
        work: &Work<'_>,
        groups: &[&[usize]],
        appended: &mut [Vec<Appended>],
        shard: Option<&str>,
    ) -> Result<(), RedisError> {
        let mut targets: Vec<(usize, usize)> = Vec::new();
        let mut pipe = redis::pipe();
        for (g, group) in groups.iter().enumerate() {
            for (k, &i) in group.iter().enumerate() {
                let (j, _, channel) = work.receivers[i];
                // A duplicate too: the attempt that recorded it may have
                // failed before it published (a reply lost, a pipeline
                // re-run). A receiver that had it drops it by sequence.
                let seq = match appended[g].get(k) {
                    Some(Appended::Recorded { seq, .. }) => *seq,
                    Some(Appended::Duplicate { seq }) if *seq > 0 => *seq,
                    _ => continue,
                };
                if channel.is_empty() {
                    continue;
                }
                let mut entry = format!("{seq} ").into_bytes();
                entry.extend_from_slice(&work.batch[j].tail);
                pipe.cmd("SPUBLISH").arg(channel).arg(entry);
                targets.push((g, k));
            }
        }
        if targets.is_empty() {
            return Ok(());
        }
        let on_shard = match shard {
            Some(shard) => self
                .on_shard(shard, pipe.clone())
                .await
                .ok()
                .and_then(|values| {
                    values
                        .into_iter()
                        .map(|v| match v {
                            Value::Int(n) => Some(n),
                            _ => None,
                        })
                        .collect::<Option<Vec<i64>>>()
                }),
            None => None,
        };
        let counts: Vec<i64> = match on_shard {
            Some(counts) => counts,
            None => {
                let mut attempt = 0;
                loop {
                    match pipe_by_slot(&pipe)
                        .query_async(&mut self.commands.clone())
                        .await
                    {
                        Ok(counts) => break counts,
                        Err(e) if attempt >= 3 => return Err(e.into()),
                        Err(_) => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                        }
                    }
                }
            }
        };
        for ((g, k), count) in targets.into_iter().zip(counts) {
            if let Some(Appended::Recorded { seq, .. }) = appended[g].get(k).copied() {
                appended[g][k] = Appended::Recorded {
                    seq,
                    subscribers: Some(u64::try_from(count).unwrap_or(0)),
                };
            }
        }
        Ok(())
    }

    /// Runs a pipeline on the master at `shard` (`host:port`).
    pub(super) async fn on_shard(
        &self,
        shard: &str,
        pipe: redis::Pipeline,
    ) -> Result<Vec<Value>, RedisError> {
        let count = pipe.len();
        Ok(self.route_to(Via::Shared, shard, pipe, 0, count).await?)
    }

    /// Runs the script calls `build` adds on the master at `shard`; on a
    /// node that lacks them (it restarted, or was promoted) once more with
    /// the scripts loaded first in the same pipeline (a NOSCRIPT invocation
    /// did nothing).
    pub(super) async fn scripts_on_shard(
        &self,
        via: Via,
        shard: &str,
        build: impl Fn(&mut redis::Pipeline),
    ) -> Result<Vec<Value>, RedisError> {
        let mut pipe = redis::pipe();
        build(&mut pipe);
        let count = pipe.len();
        // A routed pipeline answers each command's error as its value.
        let no_script = |e: &redis::RedisError| {
            e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
        };
        match self.route_to(via, shard, pipe, 0, count).await {
            Err(e) if !no_script(&e) => Err(e.into()),
            Ok(values)
                if !values.iter().any(|v| {
                    matches!(v, Value::ServerError(e)
                        if e.kind() == Some(redis::ServerErrorKind::NoScript))
                }) =>
            {
                Ok(values)
            }
            _ => {
                let mut pipe = redis::pipe();
                let loads = self.load_scripts(&mut pipe);
                build(&mut pipe);
                Ok(self.route_to(via, shard, pipe, loads, count).await?)
            }
        }
    }

    /// `count` replies, after the first `offset`, of a pipeline run on the
    /// master at `shard`.
    async fn route_to(
        &self,
        via: Via,
        shard: &str,
        pipe: redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> Result<Vec<Value>, redis::RedisError> {
        let Commands::Cluster(conn) = self.connection(via) else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "not a cluster",
            )));
        };
        let Some((host, port)) = shard
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
        else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "bad shard address",
                shard.to_owned(),
            )));
        };
        let reply = conn
            .conn
            .clone()
            .route_pipeline(
                pipe,
                offset,
                count,
                SingleNodeRoutingInfo::ByAddress { host, port },
            )
            .await;
        conn.shared.note(reply.as_ref().map(|_| ()));
        reply
    }
}

/// (job, user, channel) of one receiver in a batch.
type Receiver<'a> = (usize, i64, &'a str);

/// A batch, flattened.
struct Work<'a> {
    batch: &'a [AppendJob],
    receivers: &'a [Receiver<'a>],
    max_inbox: usize,
}

/// SPUBLISHes of many slots, for redis-rs to route one by one: on a
/// cluster a pipeline must stay within one slot, so each becomes its own
/// request (they run concurrently on the multiplexed connections).
fn pipe_by_slot(pipe: &redis::Pipeline) -> RoutedEach<'_> {
    RoutedEach(pipe)
}

struct RoutedEach<'a>(&'a redis::Pipeline);

impl RoutedEach<'_> {
    async fn query_async(&self, conn: &mut Commands) -> Result<Vec<i64>, redis::RedisError> {
        let replies = futures::future::join_all(self.0.cmd_iter().map(|cmd| {
            let mut conn = conn.clone();
            async move { cmd.query_async::<i64>(&mut conn).await }
        }))
        .await;
        replies.into_iter().collect()
    }
}

fn parse_appended(value: Option<Value>) -> Result<Vec<Appended>, RedisError> {
    let flat: Vec<i64> = redis::from_redis_value(value.unwrap_or(Value::Nil))
        .map_err(|e| RedisError::new(e.to_string()))?;
    Ok(flat.chunks_exact(2).map(|p| appended(p[0], p[1])).collect())
}

/// Whether the WAIT after an append says a replica has it. One that does
/// not (a lagging replica, or a master cut off that a failover has already
/// replaced: it answers until it learns so, then drops what it took) is not
/// accepted: the caller tries again, and the retry finds the first copy by
/// its message id if it survived.
fn replica_confirmed(value: Option<Value>) -> bool {
    if let Some(Value::Int(0)) = value {
        tracing::warn!("no replica confirmed an append in time; trying again");
        crate::metrics::metrics().unreplicated_appends.inc();
        return false;
    }
    true
}

fn unconfirmed() -> RedisError {
    RedisError::new("no replica confirmed the append in time")
}
