//! Group logs: a group's chats written once, read by each member's cursor.
//!
//! A group chat is numbered in its conversation like any chat
//! (`number.rs`); the same script call appends it to the conversation's log
//! `{prefix}{h:N}:l:g:GID` (a stream in the partition's slot, the chat's
//! `cseq` as its id, the entry in the inbox entry's format with the `cseq`
//! as `SEQ`), capped at [`GROUP_LOG_MAX_LEN`] entries. The sending node then
//! publishes the entry once on the channel of the same name, which every
//! node holding a member subscribes to. Each member has one cursor per group
//! in `{prefix}{u:ID}:gc` (a hash: group → the highest `cseq` delivered),
//! raised in batches by the trimmer; a session writes a live entry that is
//! the next after its cursor and reads the log from the cursor otherwise.
//! So a group message costs Redis one script call and one publish however
//! many members it has, instead of an append per member.

use std::fmt::Write as _;

use tokio::sync::oneshot;

use super::{Redis, RedisError, bus::SubCommand, inbox::InboxEntry, number::partition};

/// Entries a group's log keeps (approximately): a member whose cursor is
/// older reads the rest from the history service.
pub const GROUP_LOG_MAX_LEN: u64 = 10_000;

/// KEYS: cursor hashes. ARGV: per key, the field and the value. Raises each
/// field to its value unless it is already there; returns how many it raised.
pub(super) const CURSOR_SCRIPT: &str = include_str!("scripts/cursor.lua");

/// XRANGE's reply: (id, [(field, value)]) per entry.
type StreamEntries = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// What [`Redis::read_group_log`] found.
#[derive(Debug, Default)]
pub struct LogPage {
    /// Entries after the cursor asked for, oldest first.
    pub entries: Vec<InboxEntry>,
    /// Fewer than asked for: nothing newer is in the log now.
    pub complete: bool,
}

impl Redis {
    /// The log of a group (and the channel its entries are published on).
    pub fn group_log_key(&self, group: i64) -> String {
        let conversation = format!("g:{group}");
        let mut key = self.stream_key(partition(&conversation));
        let _ = write!(key, ":l:{conversation}");
        key
    }

    fn group_cursor_key(&self, user: i64) -> String {
        self.user_key(user, "gc")
    }

    /// Publishes a group log entry (`CSEQ MID SENDER MICROS TRACEPARENT\nFRAME`)
    /// to the nodes holding the group's members.
    pub async fn publish_group(&self, group: i64, entry: &[u8]) -> Result<(), RedisError> {
        let _: i64 = redis::cmd("SPUBLISH")
            .arg(self.group_log_key(group))
            .arg(entry)
            .query_async(&mut self.commands.clone())
            .await?;
        Ok(())
    }

    /// Entries of a group's log after `after`, oldest first, at most `count`.
    pub async fn read_group_log(
        &self,
        group: i64,
        after: u64,
        count: usize,
    ) -> Result<LogPage, RedisError> {
        let reply: StreamEntries = redis::cmd("XRANGE")
            .arg(self.group_log_key(group))
            .arg(format!("({after}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.commands.clone())
            .await?;
        let complete = reply.len() < count;
        let entries = reply
            .into_iter()
            .filter_map(|(_, fields)| {
                let (_, entry) = fields.into_iter().find(|(name, _)| name == "e")?;
                InboxEntry::parse(entry)
            })
            .collect();
        Ok(LogPage { entries, complete })
    }

    /// The user's cursors in these groups (`None`: the user has none there
    /// yet: they read the group's log from its start).
    pub async fn group_cursors(
        &self,
        user: i64,
        groups: &[i64],
    ) -> Result<Vec<Option<u64>>, RedisError> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let cursors: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(self.group_cursor_key(user))
            .arg(groups)
            .query_async(&mut self.commands.clone())
            .await?;
        Ok(cursors)
    }

    /// Sets the user's cursor in a group (they joined it: nothing older is
    /// theirs).
    pub async fn set_group_cursor(
        &self,
        user: i64,
        group: i64,
        cseq: u64,
    ) -> Result<(), RedisError> {
        let _: i64 = redis::cmd("HSET")
            .arg(self.group_cursor_key(user))
            .arg(group)
            .arg(cseq)
            .query_async(&mut self.commands.clone())
            .await?;
        Ok(())
    }

    /// Raises cursors (user, group, cseq), never lowers one: one script per
    /// slot, in one pipeline per shard.
    pub async fn raise_group_cursors(&self, marks: &[(i64, i64, u64)]) -> Result<(), RedisError> {
        if marks.is_empty() {
            return Ok(());
        }
        let _: Vec<(Vec<usize>, Vec<i64>)> = self
            .run_grouped(marks.iter().map(|m| m.0), |pipe, group| {
                crate::metrics::script_call("cursor");
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(self.scripts.cursor.get_hash())
                    .arg(group.len());
                for &i in group {
                    cmd.arg(self.group_cursor_key(marks[i].0));
                }
                for &i in group {
                    cmd.arg(marks[i].1).arg(marks[i].2);
                }
            })
            .await?;
        Ok(())
    }

    /// Asks for a group's channel; the answer says once Redis confirmed it
    /// (asking again for a channel this node has is harmless).
    pub fn subscribe_group(&self, group: i64) -> Subscribed {
        let (tx, rx) = oneshot::channel();
        let _ = self
            .subscriber
            .send(SubCommand::Subscribe(self.group_log_key(group), tx));
        Subscribed(rx)
    }

    pub fn unsubscribe_group(&self, group: i64) {
        let _ = self
            .subscriber
            .send(SubCommand::Unsubscribe(self.group_log_key(group)));
    }
}

/// A subscription on its way ([`Redis::subscribe_group`]).
pub struct Subscribed(oneshot::Receiver<Result<(), RedisError>>);

impl Subscribed {
    /// Waits until Redis confirmed it.
    pub async fn confirmed(self) -> Result<(), RedisError> {
        self.0
            .await
            .map_err(|_| RedisError::new("the subscriber has stopped"))?
    }
}
