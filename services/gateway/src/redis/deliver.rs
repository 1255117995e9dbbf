//! DELIVER: on a single Redis, a batch of chats numbered in their
//! conversations and appended to their receivers' inboxes in one script
//! call (the appender's batch, `append.rs`, comes here when there is one
//! Redis). On a cluster the two are apart, in the same batch: the
//! appender numbers its chats first (`append.rs`, `number_first`, with
//! `number.rs`'s calls), then appends them.

use redis::Value;

use super::{
    Redis, RedisError,
    append::{AppendJob, appended},
    number::STREAM_MAX_LEN,
};

/// A single Redis's batch in one call: each chat numbered in its
/// conversation (as [`NUMBER_SCRIPT`](super::number::NUMBER_SCRIPT) does)
/// and appended to its receivers' inboxes (as [`APPEND_SCRIPT`](super::append::APPEND_SCRIPT) does) with
/// the frame that carries its number. Half the script calls of numbering
/// and appending apart, and one round trip instead of two; a cluster cannot
/// (a conversation's counter and its receivers' inboxes are in other slots,
/// often on other shards).
/// KEYS: per chat, when it is numbered, its counter, dedup key and stream;
/// then per receiver counter, inbox, dedup key; last the epoch mark.
/// ARGV[1..4]: inbox limit, inbox bytes, the streams' MAXLEN and bytes;
/// then per chat: its receivers, the numbering's dedup TTL ('-': not
/// numbered), the append's dedup TTL (as APPEND's), mid, conv, sender,
/// micros, traceparent, the entry's head ("mid sender micros tp\n") and the
/// frame (numbered: up to its `"cseq":`); then each receiver's channel.
/// Returns per chat its number (0: not numbered), then {seq, subscribers}
/// per receiver.
pub(super) const DELIVER_SCRIPT: &str = concat!(
    include_str!("scripts/counter.lua"),
    include_str!("scripts/number.lua"),
    include_str!("scripts/append.lua"),
    include_str!("scripts/deliver_each.lua")
);

impl Redis {
    /// A single Redis's batch: one call of [`DELIVER_SCRIPT`] numbers and
    /// appends every chat of it.
    pub(super) async fn deliver_batch(&self, batch: Vec<AppendJob>) {
        let max_inbox = batch.iter().map(|j| j.max_inbox).max().unwrap_or(1);
        let reply: Result<Vec<Value>, RedisError> = self
            .run_scripts(|pipe| self.deliver_invocation(pipe, &batch, max_inbox))
            .await;
        let flat: Result<Vec<i64>, String> = reply
            .and_then(|values| {
                redis::from_redis_value(values.into_iter().next().unwrap_or(Value::Nil))
                    .map_err(|e| RedisError::new(e.to_string()))
            })
            .map_err(|e| e.to_string());
        let mut flat = match flat {
            Ok(flat) => flat.into_iter(),
            Err(e) => {
                for job in batch {
                    let failed = job.receivers.iter().map(|_| Err(e.clone())).collect();
                    let _ = job.reply.send((None, failed));
                }
                return;
            }
        };
        for job in batch {
            let cseq = flat
                .next()
                .and_then(|n| u64::try_from(n).ok())
                .filter(|&n| n > 0);
            let results = job
                .receivers
                .iter()
                .map(|_| match (flat.next(), flat.next()) {
                    (Some(seq), Some(subscribers)) => Ok(appended(seq, subscribers)),
                    _ => Err("redis answered fewer appends than asked".to_owned()),
                })
                .collect();
            let _ = job
                .reply
                .send((cseq.filter(|_| job.number.is_some()), results));
        }
    }

    /// Adds the one DELIVER invocation of a single Redis's batch.
    fn deliver_invocation(
        &self,
        pipe: &mut redis::Pipeline,
        batch: &[AppendJob],
        max_inbox: usize,
    ) {
        crate::metrics::script_call("deliver");
        let keys: usize = batch
            .iter()
            .map(|j| 3 * j.receivers.len() + if j.number.is_some() { 3 } else { 0 })
            .sum();
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(self.scripts.deliver.get_hash())
            .arg(keys + 1);
        let mut key = String::with_capacity(self.prefix.len() + 80);
        for job in batch {
            if let Some(number) = &job.number {
                self.chat_keys(cmd, &mut key, &number.conversation, &job.mid);
            }
            for (user, _) in &job.receivers {
                self.inbox_keys(cmd, &mut key, *user, job);
            }
        }
        cmd.arg(self.epoch_mark_key(0));
        cmd.arg(max_inbox)
            .arg(self.budgets.inbox_bytes())
            .arg(STREAM_MAX_LEN)
            .arg(self.budgets.stream_bytes());
        for job in batch {
            cmd.arg(job.receivers.len());
            match &job.number {
                Some(number) => cmd.arg(number.ttl),
                None => cmd.arg("-"),
            };
            if job.scan {
                cmd.arg(format!("-{}", job.ttl));
            } else {
                cmd.arg(job.ttl);
            }
            match &job.number {
                Some(number) => cmd
                    .arg(&job.mid)
                    .arg(&number.conversation)
                    .arg(number.sender)
                    .arg(number.micros)
                    .arg(&number.traceparent),
                None => cmd.arg("").arg("").arg("").arg("").arg(""),
            };
            cmd.arg(&job.tail[..job.frame_at])
                .arg(&job.tail[job.frame_at..]);
            for (_, channel) in &job.receivers {
                cmd.arg(channel.as_str());
            }
        }
    }
}
