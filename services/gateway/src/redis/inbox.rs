//! Inboxes: each user's accepted messages not yet known to be delivered.
//!
//! `{prefix}{u:ID}:in` is a list of entries, oldest first, numbered by the
//! counter `:n` (`scripts/counter.lua`); `:d` is the delivered mark (see the module's docs). This
//! file holds the entry format, recording ([`Redis::append`], which hands
//! the work to the batching appender in `append.rs`), reading a page
//! ([`Redis::read_inbox`]) and trimming what was delivered or moved to the
//! offline store.

use std::time::Duration;

use tokio::sync::oneshot;

use super::{
    Redis, RedisError,
    append::{AppendJob, Appended, Numbering},
};

/// One inbox entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    pub seq: u64,
    pub mid: String,
    pub sender_id: i64,
    pub sent_micros: u64,
    pub traceparent: String,
    pub frame: Vec<u8>,
}

impl InboxEntry {
    /// `SEQ MID SENDER MICROS TRACEPARENT\nFRAME`; `None` when malformed.
    /// The entry's buffer becomes the frame (no copy of it).
    pub fn parse(mut entry: Vec<u8>) -> Option<Self> {
        let newline = entry.iter().position(|&b| b == b'\n')?;
        let header = std::str::from_utf8(&entry[..newline]).ok()?;
        let mut fields = header.splitn(5, ' ');
        let seq = fields.next()?.parse().ok()?;
        let mid = fields.next()?.to_owned();
        let sender_id = fields.next()?.parse().ok()?;
        let sent_micros = fields.next()?.parse().ok()?;
        let traceparent = fields.next().unwrap_or("").to_owned();
        entry.drain(..=newline);
        Some(Self {
            seq,
            mid,
            sender_id,
            sent_micros,
            traceparent,
            frame: entry,
        })
    }
}

/// The part of an entry that is the same for every receiver (all but `SEQ `).
pub fn entry_tail(
    mid: &str,
    sender_id: i64,
    sent_micros: u64,
    traceparent: &str,
    frame: &[u8],
) -> Vec<u8> {
    let mut out = format!("{mid} {sender_id} {sent_micros} {traceparent}\n").into_bytes();
    out.extend_from_slice(frame);
    out
}

/// One receiver of [`Redis::append`].
pub struct AppendTo {
    pub user: i64,
    /// Publish to the user's channel (false: the caller delivers locally).
    pub publish: bool,
}

/// What [`Redis::read_inbox`] found.
#[derive(Debug, Default)]
pub struct InboxPage {
    /// The user's counter: the sequence of the newest message ever recorded.
    pub last_seq: u64,
    /// The highest sequence known to have been written to a connection.
    pub delivered: u64,
    /// Entries with a sequence above the one asked for, oldest first.
    pub entries: Vec<InboxEntry>,
    /// Nothing after the last entry: the page reached the newest message.
    pub complete: bool,
}

/// A page of the inbox holds at most this many bytes of entries (and at
/// least one entry): what a slow reader's writer holds at once.
pub const READ_PAGE_BYTES: usize = 1024 * 1024;

/// KEYS: counter, inbox, delivered. ARGV: after, count, byte budget.
/// Returns {last_seq, delivered, entries...} with entries after `after`:
/// at most `count`, and no more than the budget in bytes (at least one).
pub(super) const READ_SCRIPT: &str = concat!(
    include_str!("scripts/locate.lua"),
    include_str!("scripts/read.lua")
);

/// Removes inbox entries with a sequence <= up_to, for many users in one
/// call. KEYS: per user, inbox, delivered, presence. ARGV[1]: mode; then
/// per user, up_to. Mode 'd' (delivered): also raises the delivered mark.
/// Mode 's' (moved to the offline store): only while nobody holds the
/// user's presence, else -1 for that user and nothing removed (a session
/// that logged in meanwhile reads the inbox itself). Returns per user how
/// many entries went (or -1).
pub(super) const TRIM_SCRIPT: &str = concat!(
    include_str!("scripts/locate.lua"),
    include_str!("scripts/trim.lua")
);

/// How an append recognises a message it recorded before.
#[derive(Debug, Clone, Copy)]
pub enum Dedup {
    /// It does not: no client message id, every append is new.
    None,
    /// By a key that remembers the message id this long (the chat carries
    /// a `cmid`).
    Key(Duration),
    /// A retry of an append whose outcome is unknown (its reply timed out,
    /// its connection was cut): by the key, else by the message id among
    /// the inbox's newest entries, so a chat without a `cmid` is not
    /// recorded twice with a new `rseq` either.
    Retry(Duration),
}

impl Redis {
    /// Records a message in each receiver's inbox and publishes it to those
    /// marked `publish`. `dedup_ttl`: when set, the message id is remembered
    /// per receiver for that long and a retry with the same id records
    /// nothing new. Concurrent appends of this node share script calls.
    pub async fn append(
        &self,
        receivers: &[AppendTo],
        mid: &str,
        tail: &[u8],
        max_inbox: usize,
        dedup_ttl: Option<Duration>,
    ) -> Result<Vec<Appended>, RedisError> {
        let dedup = dedup_ttl.map_or(Dedup::None, Dedup::Key);
        self.append_each(receivers, mid, tail, max_inbox, dedup)
            .await
            .into_iter()
            .collect()
    }

    /// [`Self::append`] with a result per receiver: on a cluster, a shard
    /// that fails fails only its own receivers.
    pub async fn append_each(
        &self,
        receivers: &[AppendTo],
        mid: &str,
        tail: &[u8],
        max_inbox: usize,
        dedup: Dedup,
    ) -> Vec<Result<Appended, RedisError>> {
        self.append_job(receivers, mid, tail, None, max_inbox, dedup)
            .await
            .1
    }

    /// A Redis Cluster (else a single Redis).
    pub fn is_cluster(&self) -> bool {
        self.sharded
    }

    /// [`Self::number`] and [`Self::append_each`] in one batch (on a single
    /// Redis in one script call; on a cluster the appender numbers its
    /// batch's chats first, `append.rs`'s `number_first`): the
    /// chat gets its number in `numbering.conversation` and each receiver's
    /// entry the frame completed with it. `tail` is
    /// [`entry_tail`] of the frame's numbered head
    /// ([`crate::protocol::conversation::numbered_head`]), which starts at
    /// `numbering.head_at`. Returns the number (`None`: the numbering
    /// failed, and every result with it) and a result per receiver (on a
    /// cluster, appends may fail after the numbering did not: the caller
    /// then appends the numbered frame again).
    pub async fn number_and_append(
        &self,
        receivers: &[AppendTo],
        mid: &str,
        tail: &[u8],
        numbering: Numbering,
        max_inbox: usize,
        dedup: Dedup,
    ) -> (Option<u64>, Vec<Result<Appended, RedisError>>) {
        self.append_job(receivers, mid, tail, Some(numbering), max_inbox, dedup)
            .await
    }

    async fn append_job(
        &self,
        receivers: &[AppendTo],
        mid: &str,
        tail: &[u8],
        number: Option<Numbering>,
        max_inbox: usize,
        dedup: Dedup,
    ) -> (Option<u64>, Vec<Result<Appended, RedisError>>) {
        let (job, reply) = self.job(receivers, mid, tail, number, max_inbox, dedup);
        if self.appender.send(vec![job]).is_err() {
            return stopped(receivers.len());
        }
        settled(reply, receivers.len()).await
    }

    /// A unit of chats to one receiver (a session's burst), each numbered
    /// as it is appended ([`Self::number_and_append`]), in one batch of the
    /// appender: they share its calls, and on a single Redis, or the
    /// receiver's shard and the conversation's, they are recorded or fail
    /// together, in order. One result per chat, in order.
    pub async fn number_and_append_unit(
        &self,
        to: AppendTo,
        chats: Vec<UnitChat<'_>>,
        max_inbox: usize,
    ) -> Vec<(Option<u64>, Result<Appended, RedisError>)> {
        let receivers = [to];
        let (jobs, replies): (Vec<AppendJob>, Vec<_>) = chats
            .into_iter()
            .map(|chat| {
                self.job(
                    &receivers,
                    chat.mid,
                    chat.tail,
                    Some(chat.numbering),
                    max_inbox,
                    chat.dedup,
                )
            })
            .unzip();
        let sent = self.appender.send(jobs).is_ok();
        let mut out = Vec::with_capacity(replies.len());
        for reply in replies {
            let (cseq, mut results) = if sent {
                settled(reply, 1).await
            } else {
                stopped(1)
            };
            let result = results
                .pop()
                .unwrap_or_else(|| Err(RedisError::new("redis answered fewer appends than asked")));
            out.push((cseq, result));
        }
        out
    }

    fn job(
        &self,
        receivers: &[AppendTo],
        mid: &str,
        tail: &[u8],
        number: Option<Numbering>,
        max_inbox: usize,
        dedup: Dedup,
    ) -> (AppendJob, oneshot::Receiver<super::append::JobReply>) {
        let (reply, appended) = oneshot::channel();
        let job = AppendJob {
            receivers: receivers
                .iter()
                .map(|to| {
                    (
                        to.user,
                        if to.publish {
                            self.user_channel(to.user)
                        } else {
                            String::new()
                        },
                    )
                })
                .collect(),
            mid: mid.to_owned(),
            tail: tail.to_vec(),
            max_inbox,
            ttl: match dedup {
                Dedup::None => 0,
                Dedup::Key(ttl) | Dedup::Retry(ttl) => ttl.as_secs().max(1),
            },
            scan: matches!(dedup, Dedup::Retry(_)),
            frame_at: number.as_ref().map_or(0, |n| n.head_at),
            number,
            reply,
        };
        (job, appended)
    }

    /// Up to `count` inbox entries with a sequence above `after`, with the
    /// user's counter and delivered mark, read atomically.
    pub async fn read_inbox(
        &self,
        user: i64,
        after: u64,
        count: usize,
    ) -> Result<InboxPage, RedisError> {
        let mut replies: Vec<Vec<redis::Value>> = self
            .run_scripts(|pipe| {
                pipe.cmd("EVALSHA")
                    .arg(self.scripts.read.get_hash())
                    .arg(3)
                    .arg(self.user_key(user, "n"))
                    .arg(self.user_key(user, "in"))
                    .arg(self.user_key(user, "d"))
                    .arg(after)
                    .arg(count.max(1))
                    .arg(READ_PAGE_BYTES);
            })
            .await?;
        let values = replies.pop().unwrap_or_default();
        let mut values = values.into_iter();
        let number = |v: Option<redis::Value>| match v {
            Some(redis::Value::Int(n)) => u64::try_from(n).unwrap_or(0),
            _ => 0,
        };
        let last_seq = number(values.next());
        let delivered = number(values.next());
        let mut entries = Vec::new();
        for value in values {
            if let redis::Value::BulkString(bytes) = value {
                match InboxEntry::parse(bytes) {
                    Some(entry) if entry.seq > after => entries.push(entry),
                    Some(_) => {}
                    None => tracing::warn!(user, "skipping a malformed inbox entry"),
                }
            }
        }
        // The newest entry is the counter's (APPEND numbers and pushes in
        // one script), so a page ending at the counter ended the inbox.
        let complete = entries.last().is_none_or(|e| e.seq >= last_seq);
        Ok(InboxPage {
            last_seq,
            delivered,
            entries,
            complete,
        })
    }

    /// Removes inbox entries that were written to their user's connection
    /// (or acknowledged by it), one script per user, in one pipeline.
    pub async fn trim_delivered(&self, marks: &[(i64, u64)]) -> Result<(), RedisError> {
        if marks.is_empty() {
            return Ok(());
        }
        let _: Vec<(Vec<usize>, Vec<Vec<i64>>)> = self
            .run_grouped(marks.iter().map(|m| m.0), |pipe, group| {
                for chunk in group.chunks(256) {
                    let chunk: Vec<(i64, u64)> = chunk.iter().map(|&i| marks[i]).collect();
                    self.trim_invocation(pipe, &chunk, "d");
                }
            })
            .await?;
        Ok(())
    }

    /// Removes entries up to `up_to` that were copied to the offline store,
    /// unless the user is online meanwhile. False when the user is online
    /// and nothing was removed.
    pub async fn trim_moved(&self, user: i64, up_to: u64) -> Result<bool, RedisError> {
        let removed: Vec<Vec<i64>> = self
            .run_scripts(|pipe| self.trim_invocation(pipe, &[(user, up_to)], "s"))
            .await?;
        Ok(removed
            .first()
            .and_then(|r| r.first())
            .is_some_and(|n| *n >= 0))
    }

    fn trim_invocation(&self, pipe: &mut redis::Pipeline, marks: &[(i64, u64)], mode: &str) {
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(self.scripts.trim.get_hash())
            .arg(marks.len() * 3);
        for (user, _) in marks {
            cmd.arg(self.user_key(*user, "in"))
                .arg(self.user_key(*user, "d"))
                .arg(self.presence_key(*user));
        }
        cmd.arg(mode);
        for (_, up_to) in marks {
            cmd.arg(*up_to);
        }
    }
}

/// One chat of [`Redis::number_and_append_unit`]: as
/// [`Redis::number_and_append`]'s arguments.
pub struct UnitChat<'a> {
    pub mid: &'a str,
    pub tail: &'a [u8],
    pub numbering: Numbering,
    pub dedup: Dedup,
}

/// Every receiver's result when the appender is gone.
fn stopped(receivers: usize) -> (Option<u64>, Vec<Result<Appended, RedisError>>) {
    (
        None,
        (0..receivers)
            .map(|_| Err(RedisError::new("the appender has stopped")))
            .collect(),
    )
}

/// A job's reply, its errors as [`RedisError`]s.
async fn settled(
    reply: oneshot::Receiver<super::append::JobReply>,
    receivers: usize,
) -> (Option<u64>, Vec<Result<Appended, RedisError>>) {
    match reply.await {
        Ok((cseq, results)) => (
            cseq,
            results
                .into_iter()
                .map(|r| r.map_err(RedisError::new))
                .collect(),
        ),
        Err(_) => stopped(receivers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_entries_round_trip() {
        let mut entry = b"1795600000000042 ".to_vec();
        entry.extend(entry_tail(
            "abc",
            42,
            7,
            "00-abc-def-01",
            b"{\"msg\":\"a\nb\"}",
        ));
        let parsed = InboxEntry::parse(entry.clone()).expect("valid");
        assert_eq!(
            parsed,
            InboxEntry {
                seq: 1_795_600_000_000_042,
                mid: "abc".into(),
                sender_id: 42,
                sent_micros: 7,
                traceparent: "00-abc-def-01".into(),
                frame: b"{\"msg\":\"a\nb\"}".to_vec(),
            }
        );
        let mut untraced = b"5 ".to_vec();
        untraced.extend(entry_tail("m", 7, 1, "", b"{}"));
        assert_eq!(InboxEntry::parse(untraced).expect("valid").traceparent, "");
        assert!(InboxEntry::parse(b"no header".to_vec()).is_none());
        assert!(InboxEntry::parse(b"x m 1 2 \n{}".to_vec()).is_none());
    }
}
