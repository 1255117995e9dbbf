//! The numberer: gives each accepted chat its conversation sequence number
//! (`cseq`) and records it in the history stream, many chats per call.
//!
//! Conversations are spread over [`HISTORY_PARTITIONS`] streams,
//! `{prefix}{h:N}`, each in one hash slot; the conversation's counter
//! (`{prefix}{h:N}:c:CONV`, with epochs: `scripts/counter.lua`) and the dedup key of a retried chat
//! (`{prefix}{h:N}:m:MID`) share its slot, so one script numbers a chat and
//! appends it to the stream atomically: a number is never handed out
//! without its stream entry. The history service consumes the streams
//! (consumer group `history`); the layout is its contract too.
//!
//! A chat is numbered before it is appended to the receivers' inboxes (the
//! frames they get carry `conv` and `cseq`). One that is then refused
//! altogether is retracted with an `op=x` entry, and in the same script its
//! dedup key is dropped: a retry of it (same client id, so same mid) is a
//! new chat for history, numbered afresh with an `op=m` entry of its own,
//! which the tombstone of the first number (keyed by mid and seq) does not
//! hide. Keeping the key would answer the retry with the retracted number
//! and no entry, and history would never get the chat.

use std::{collections::BTreeMap, fmt::Write as _};

use futures::StreamExt as _;
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::{REPLICA_WAIT, Redis, RedisError, presence::ttl_millis, slot};

/// How many history streams there are (the history service reads as many).
pub const HISTORY_PARTITIONS: u32 = 16;

/// Entries a stream keeps at most (approximately) while nobody consumes it.
/// An entry holds one chat or several (a call's chats for the stream, up to
/// 64 and 16 KiB: `scripts/number.lua`), so what bounds Redis's memory
/// while the history service is down is the bytes cap as well.
pub const STREAM_MAX_LEN: u64 = 200_000;

/// A conversation's partition: FNV-1a (32 bits) of its id.
pub fn partition(conversation: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in conversation.as_bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % HISTORY_PARTITIONS
}

/// KEYS per chat: counter, dedup key, stream; then the slot's epoch mark
/// (`counter.lua`); or no KEYS and, first in ARGV, their count and per chat
/// its three keys and its slot's mark (one call for a shard's partitions).
/// ARGV[1]: the streams' MAXLEN,
/// ARGV[2]: their budget in bytes (checked at every 64th chat of a conversation);
/// then per chat: dedup TTL in seconds ('0': none), mid, conv, sender,
/// micros, traceparent, the frame's head (the frame up to `"cseq":`), and
/// the MAXLEN of the conversation's log ('0': none; `group_log.rs`).
/// Returns the sequence number of each chat (a retry: the first one's).
pub(super) const NUMBER_SCRIPT: &str = concat!(
    include_str!("scripts/counter.lua"),
    include_str!("scripts/number.lua"),
    include_str!("scripts/number_each.lua")
);

/// KEYS: stream, dedup key. ARGV: the streams' MAXLEN, mid, conv, seq.
/// Appends the `op=x` entry and drops the dedup key if it still holds this
/// number (a retry numbered meanwhile keeps its own). Returns whether it
/// dropped the key.
const RETRACT_SCRIPT: &str = include_str!("scripts/retract.lua");

/// One chat to number.
pub struct NumberJob {
    pub conversation: String,
    pub mid: String,
    /// Dedup TTL in seconds (0: the chat has no client id).
    pub ttl: u64,
    pub sender: i64,
    pub micros: u64,
    pub traceparent: String,
    /// The frame up to its `"cseq":` ([`crate::protocol::conversation::numbered_head`]).
    pub head: Vec<u8>,
    /// Also append it to the conversation's log, capped at this many
    /// entries (0: no log; `group_log.rs`).
    pub log: u64,
    pub reply: oneshot::Sender<Result<u64, String>>,
}

impl Redis {
    pub(super) fn stream_key(&self, partition: u32) -> String {
        format!("{}{{h:{partition}}}", self.prefix)
    }

    /// A chat's three keys in a numbering: its conversation's counter, its
    /// dedup key and its partition's stream (one slot); returns that slot.
    pub(super) fn chat_keys(
        &self,
        cmd: &mut redis::Pipeline,
        key: &mut String,
        conversation: &str,
        mid: &str,
    ) -> u16 {
        let stream = self.stream_key(partition(conversation));
        key.clear();
        let _ = write!(key, "{stream}:c:{conversation}");
        cmd.arg(key.as_str());
        key.clear();
        let _ = write!(key, "{stream}:m:{mid}");
        cmd.arg(key.as_str());
        let slot = slot::of_key(stream.as_bytes());
        cmd.arg(stream);
        slot
    }

    /// Numbers a chat and records it for the history service; concurrent
    /// chats of this node share script calls.
    pub async fn number(&self, job: NumberJob) -> Result<u64, RedisError> {
        let (reply, numbered) = oneshot::channel();
        let job = NumberJob { reply, ..job };
        if self.numberer.send(job).is_err() {
            return Err(RedisError::new("the numberer has stopped"));
        }
        numbered
            .await
            .map_err(|_| RedisError::new("the numberer has stopped"))?
            .map_err(RedisError::new)
    }

    /// The newest sequence number of a conversation (0: it has none): what
    /// a read mark may reach. History lags behind this a little.
    pub async fn newest_in(&self, conversation: &str) -> Result<u64, RedisError> {
        let key = format!(
            "{}:c:{conversation}",
            self.stream_key(partition(conversation))
        );
        let newest: Option<u64> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.commands.clone())
            .await?;
        Ok(newest.unwrap_or(0))
    }

    /// Whether a failed numbering may soon work again: on a cluster, when
    /// the conversation's partition has (or just had) a replica.
    pub fn number_failover_possible(&self, conversation: &str) -> bool {
        let key = self.stream_key(partition(conversation));
        self.sharded
            && self
                .replicas
                .had_replica_lately(slot::of_key(key.as_bytes()))
    }

    /// Tells the history service that a numbered chat was refused after
    /// all (nobody got it), and forgets its number, so that a retry of it
    /// is numbered and recorded afresh (see the module's docs). One script
    /// in the stream's slot: the entry and the dedup key go together, so a
    /// retry never reuses a retracted number, and a retraction that failed
    /// leaves both the number and its `op=m` entry standing. Best effort:
    /// logged when it fails. Only a chat refused altogether gets here, so
    /// this adds nothing to an accepted chat's Redis calls.
    pub async fn retract(&self, conversation: &str, mid: &str, cseq: u64) {
        let stream = self.stream_key(partition(conversation));
        let result: Result<i64, _> = redis::Script::new(RETRACT_SCRIPT)
            .key(&stream)
            .key(format!("{stream}:m:{mid}"))
            .arg(STREAM_MAX_LEN)
            .arg(mid)
            .arg(conversation)
            .arg(cseq)
            .invoke_async(&mut self.commands.clone())
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, mid, "cannot retract a refused chat from history");
        }
    }

    /// Forms batches of number jobs (whatever waits while the batch before
    /// is on its way), as the appender does.
    pub(super) async fn run_numberer(self, mut jobs: mpsc::UnboundedReceiver<NumberJob>) {
        const MAX_BATCH: usize = 256;
        let mut running = futures::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                job = jobs.recv(), if running.is_empty() => {
                    let Some(first) = job else { break };
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match jobs.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    running.push(self.number_batch(batch));
                }
                Some(()) = running.next(), if !running.is_empty() => {}
            }
        }
        while running.next().await.is_some() {}
    }

    /// One script call for the batch on a single Redis; on a cluster one
    /// per shard for all its partitions, followed by a `WAIT 1` where a
    /// slot has a replica, the shards concurrently.
    async fn number_batch(&self, batch: Vec<NumberJob>) {
        let outcome = self.number_all(&batch).await;
        for (job, outcome) in batch.into_iter().zip(outcome) {
            let _ = job.reply.send(outcome);
        }
    }

    /// Numbers every chat of `batch` (its replies unused): one result per
    /// chat, in order. The numberer's batches, and on a cluster the
    /// appender's chats that are numbered as they are appended.
    pub(super) async fn number_all(&self, batch: &[NumberJob]) -> Vec<Result<u64, String>> {
        let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, job) in batch.iter().enumerate() {
            by_partition
                .entry(partition(&job.conversation))
                .or_default()
                .push(i);
        }
        let groups: Vec<Vec<usize>> = if self.sharded {
            by_partition.into_values().collect()
        } else {
            vec![by_partition.into_values().flatten().collect()]
        };
        let results = if self.sharded {
            self.number_by_shard(batch, &groups).await
        } else {
            futures::future::join_all(groups.iter().map(|g| self.number_group(batch, g))).await
        };
        let mut outcome: Vec<Option<Result<u64, String>>> = batch.iter().map(|_| None).collect();
        for (group, result) in groups.iter().zip(results) {
            for (k, &i) in group.iter().enumerate() {
                outcome[i] = Some(match &result {
                    Ok(seqs) => seqs
                        .get(k)
                        .copied()
                        .ok_or_else(|| "redis answered fewer numbers than asked".to_owned()),
                    Err(e) => Err(e.to_string()),
                });
            }
        }
        outcome
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err("numbering lost in a batch".to_owned())))
            .collect()
    }

    /// A cluster's batch: the partitions of each shard in one script call
    /// to it (keys in ARGV, `counter.lua`'s `item_keys`) with one `WAIT`,
    /// the shards concurrently. A shard's call that fails (a slot moved, the
    /// script not loaded after a failover) wrote nothing; its partitions are
    /// then numbered one by one, routed by redis-rs.
    async fn number_by_shard(
        &self,
        batch: &[NumberJob],
        groups: &[Vec<usize>],
    ) -> Vec<Result<Vec<u64>, RedisError>> {
        let (by_shard, mut alone) = slot::by_owner(
            &self.owners(),
            groups.iter().map(|group| {
                let stream = self.stream_key(partition(&batch[group[0]].conversation));
                slot::of_key(stream.as_bytes())
            }),
        );
        let mut results: Vec<Option<Result<Vec<u64>, RedisError>>> =
            groups.iter().map(|_| None).collect();
        let shards = futures::future::join_all(
            by_shard
                .iter()
                .map(|(shard, gs)| self.number_on_shard(batch, groups, shard, gs)),
        )
        .await;
        for (gs, numbered) in by_shard.values().zip(shards) {
            match numbered {
                Some(seqs) => {
                    let mut seqs = seqs.into_iter();
                    for &g in gs {
                        results[g] = Some(Ok(seqs.by_ref().take(groups[g].len()).collect()));
                    }
                }
                None => alone.extend(gs.iter().copied()),
            }
        }
        let retried = futures::future::join_all(
            alone
                .iter()
                .map(|&g| self.number_group(batch, groups[g].as_slice())),
        )
        .await;
        for (g, result) in alone.into_iter().zip(retried) {
            results[g] = Some(result);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(RedisError::new("numbering not attempted"))))
            .collect()
    }

    /// The partitions `gs` of one shard in one call; `None` when it failed
    /// (nothing was written: see `item_keys`) or answered short.
    async fn number_on_shard(
        &self,
        batch: &[NumberJob],
        groups: &[Vec<usize>],
        shard: &str,
        gs: &[usize],
    ) -> Option<Vec<u64>> {
        let chats: Vec<usize> = gs.iter().flat_map(|&g| groups[g].iter().copied()).collect();
        let wait = gs.iter().any(|&g| {
            let stream = self.stream_key(partition(&batch[groups[g][0]].conversation));
            self.replicas.has_replica(slot::of_key(stream.as_bytes()))
        });
        let replies = self
            .scripts_on_shard(super::Via::Numberer, shard, |pipe| {
                crate::metrics::script_call("number");
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(self.scripts.number.get_hash())
                    .arg(0)
                    .arg(chats.len() * 4);
                let mut key = String::with_capacity(self.prefix.len() + 80);
                for &i in &chats {
                    let job = &batch[i];
                    let slot = self.chat_keys(cmd, &mut key, &job.conversation, &job.mid);
                    cmd.arg(self.epoch_mark_key(slot));
                }
                cmd.arg(STREAM_MAX_LEN).arg(self.budgets.stream_bytes());
                for &i in &chats {
                    number_args(cmd, &batch[i]);
                }
                if wait {
                    pipe.cmd("WAIT").arg(1).arg(ttl_millis(REPLICA_WAIT));
                }
            })
            .await;
        let mut replies = replies.ok()?.into_iter();
        let seqs: Vec<i64> = redis::from_redis_value(replies.next()?).ok()?;
        if seqs.len() != chats.len() {
            return None;
        }
        if wait && matches!(replies.next(), Some(Value::Int(0))) {
            crate::metrics::metrics().unreplicated_appends.inc();
        }
        Some(
            seqs.into_iter()
                .map(|s| u64::try_from(s).unwrap_or(0))
                .collect(),
        )
    }

    async fn number_group(
        &self,
        batch: &[NumberJob],
        group: &[usize],
    ) -> Result<Vec<u64>, RedisError> {
        let first = self.stream_key(partition(&batch[group[0]].conversation));
        let wait = self.sharded && self.replicas.has_replica(slot::of_key(first.as_bytes()));
        let replies: Vec<Value> = self
            .run_scripts_via(super::Via::Numberer, |pipe| {
                crate::metrics::script_call("number");
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(self.scripts.number.get_hash())
                    .arg(group.len() * 3 + 1);
                let mut key = String::with_capacity(self.prefix.len() + 80);
                for &i in group {
                    let job = &batch[i];
                    self.chat_keys(cmd, &mut key, &job.conversation, &job.mid);
                }
                cmd.arg(self.epoch_mark_key(slot::of_key(first.as_bytes())));
                cmd.arg(STREAM_MAX_LEN).arg(self.budgets.stream_bytes());
                for &i in group {
                    number_args(cmd, &batch[i]);
                }
                if wait {
                    pipe.cmd("WAIT").arg(1).arg(ttl_millis(REPLICA_WAIT));
                }
            })
            .await?;
        let mut replies = replies.into_iter();
        let seqs: Vec<i64> = redis::from_redis_value(replies.next().unwrap_or(Value::Nil))
            .map_err(|e| RedisError::new(e.to_string()))?;
        if wait && matches!(replies.next(), Some(Value::Int(0))) {
            crate::metrics::metrics().unreplicated_appends.inc();
        }
        Ok(seqs
            .into_iter()
            .map(|s| u64::try_from(s).unwrap_or(0))
            .collect())
    }
}

/// A chat's arguments to NUMBER, after the keys and the two limits.
fn number_args(cmd: &mut redis::Pipeline, job: &NumberJob) {
    cmd.arg(job.ttl)
        .arg(&job.mid)
        .arg(&job.conversation)
        .arg(job.sender)
        .arg(job.micros)
        .arg(&job.traceparent)
        .arg(&job.head[..])
        .arg(job.log);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // The history service does not compute partitions, but a change
        // here would move conversations' counters: keep it fixed.
        assert_eq!(partition("d:1:2"), partition("d:1:2"));
        let used: std::collections::HashSet<u32> =
            (1..200).map(|g| partition(&format!("g:{g}"))).collect();
        assert_eq!(used.len(), HISTORY_PARTITIONS as usize);
        assert!(used.iter().all(|p| *p < HISTORY_PARTITIONS));
    }
}
