//! The history streams in Redis, as the history service sees them: one
//! stream per partition (`{PREFIX}{h:N}`), the consumer group `history`, and
//! the few commands the ingest needs (create the group, read new and pending
//! entries, take over entries a vanished consumer left, acknowledge, trim).
//!
//! Works the same on one Redis and on a Redis Cluster: on a cluster every
//! command names one partition's key, and the hash tag `{h:N}` keeps a
//! partition in one slot, so redis-rs's cluster connection sends it to that
//! slot's master (and follows MOVED/ASK and failovers). On one Redis the
//! read of new entries names every partition in one command.
//!
//! Entry fields are the contract's (a chat: the field `m`, and an entry
//! holds several chats when a gateway's call had several for the
//! partition: `m` once per chat; a retraction: `op`, `mid`, `conv`,
//! `seq`); they are turned into domain values in
//! [`crate::domain::Entry::parse_all`], not here.

use std::time::Duration;

use redis::{Value, aio::ConnectionManager};

use crate::domain::HISTORY_PARTITIONS;

/// The consumer group every history service instance reads with.
pub const GROUP: &str = "history";

/// Where the streams are: one Redis, or a Redis Cluster's seed nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// `redis+cluster://HOST:PORT[,HOST:PORT...]` (credentials before the
    /// first host hold for every node) or `URL,URL...` is a cluster; any
    /// other URL one Redis. The gateways read their URL the same way.
    pub fn parse(url: &str) -> Self {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let (userinfo, nodes) = match rest.rsplit_once('@') {
                Some((userinfo, nodes)) => (format!("{userinfo}@"), nodes),
                None => (String::new(), rest),
            };
            return Self::Cluster(
                nodes
                    .trim_end_matches('/')
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(|n| format!("redis://{userinfo}{n}"))
                    .collect(),
            );
        }
        if url.contains(',') {
            return Self::Cluster(
                url.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
        }
        Self::Single(url.to_owned())
    }
}

/// The stream key of partition `n`.
pub fn partition_key(prefix: &str, n: u32) -> String {
    format!("{prefix}{{h:{n}}}")
}

/// One stream entry as read. `fields` is `None` for an entry that was
/// pending but has since been trimmed or deleted from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub partition: u32,
    pub id: String,
    pub fields: Option<Vec<(String, String)>>,
}

impl RawEntry {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The consumer group's state on one partition, after a trim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupState {
    /// Entries delivered to a consumer and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to any consumer (0 when Redis cannot tell).
    pub backlog: u64,
}

/// One multiplexed connection to a single Redis, or redis-rs's cluster
/// connection, which routes each command by its key.
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Connection {
    /// Connects (a single Redis lazily; a cluster needs one reachable seed
    /// node to learn its slots).
    pub async fn open(target: &RedisTarget) -> redis::RedisResult<Self> {
        Ok(match target {
            RedisTarget::Single(url) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                let client = redis::Client::open(url.as_str())?;
                Self::Single(ConnectionManager::new_lazy_with_config(client, config)?)
            }
            RedisTarget::Cluster(nodes) => Self::Cluster(
                redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(5))
                    .retries(3)
                    .build()?
                    .get_async_connection()
                    .await?,
            ),
        })
    }
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The history streams of one key prefix, read as one consumer: all of
/// them, or a lane's ([`Streams::lane`]).
#[derive(Clone)]
pub struct Streams {
    connection: Connection,
    keys: Vec<String>,
    consumer: String,
    /// The partitions these streams read (all, or a lane's).
    owned: Vec<u32>,
}

impl Streams {
    pub async fn connect(
        target: &RedisTarget,
        prefix: &str,
        consumer: &str,
    ) -> redis::RedisResult<Self> {
        Self::connect_lane(target, prefix, consumer, 0, 1).await
    }

    /// Lane `lane` of `lanes`: partitions `lane`, `lane + lanes`, ... on a
    /// connection of their own (one lane's reads and acknowledgements do
    /// not queue behind another's), as the same consumer (pending entries
    /// are per stream, so lanes never share one).
    pub async fn connect_lane(
        target: &RedisTarget,
        prefix: &str,
        consumer: &str,
        lane: u32,
        lanes: u32,
    ) -> redis::RedisResult<Self> {
        Ok(Self {
            connection: Connection::open(target).await?,
            keys: (0..HISTORY_PARTITIONS)
                .map(|n| partition_key(prefix, n))
                .collect(),
            consumer: consumer.to_owned(),
            owned: (0..HISTORY_PARTITIONS)
                .filter(|p| p % lanes.max(1) == lane)
                .collect(),
        })
    }

    /// The partitions these streams read, in order.
    pub fn partitions(&self) -> impl Iterator<Item = u32> + '_ {
        self.owned.iter().copied()
    }

    fn key(&self, partition: u32) -> &str {
        &self.keys[partition as usize]
    }

    /// Creates the consumer group on every partition (and the stream, if
    /// no gateway wrote to it yet), from the stream's beginning; a group
    /// that exists is left as it is.
    pub async fn create_groups(&self) -> redis::RedisResult<()> {
        for partition in self.partitions() {
            let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(self.key(partition))
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut self.connection.clone())
                .await;
            match created {
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    /// Entries never delivered to any consumer (at most `count`). They
    /// become pending for this consumer until acknowledged.
    pub async fn read_new(
        &self,
        partition: u32,
        count: usize,
    ) -> redis::RedisResult<Vec<RawEntry>> {
        self.read_group(partition, ">", count).await
    }

    /// Entries never delivered to any consumer, at most `count` from each
    /// of `partitions`, in that order. One command on a single Redis; on a
    /// cluster one per partition (each is its own slot).
    pub async fn read_new_from(
        &self,
        partitions: &[u32],
        count: usize,
    ) -> redis::RedisResult<Vec<Vec<RawEntry>>> {
        if matches!(self.connection, Connection::Cluster(_)) || partitions.len() < 2 {
            let reads = partitions.iter().map(|&p| self.read_new(p, count));
            return futures::future::join_all(reads).await.into_iter().collect();
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS");
        for &partition in partitions {
            cmd.arg(self.key(partition));
        }
        for _ in partitions {
            cmd.arg(">");
        }
        let reply: Value = cmd.query_async(&mut self.connection.clone()).await?;
        let mut read: Vec<Vec<RawEntry>> = partitions.iter().map(|_| Vec::new()).collect();
        for (key, entries) in streams_of(reply) {
            let Some(at) = partitions.iter().position(|&p| self.key(p) == key) else {
                continue;
            };
            read[at] = parse_entries(partitions[at], entries);
        }
        Ok(read)
    }

    /// This consumer's own pending entries with an id above `after` (`"0"`
    /// for all): what it read before and may not have stored.
    pub async fn read_pending(
        &self,
        partition: u32,
        after: &str,
        count: usize,
    ) -> redis::RedisResult<Vec<RawEntry>> {
        self.read_group(partition, after, count).await
    }

    async fn read_group(
        &self,
        partition: u32,
        id: &str,
        count: usize,
    ) -> redis::RedisResult<Vec<RawEntry>> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(self.key(partition))
            .arg(id)
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(parse_read_reply(partition, reply))
    }

    /// Takes over entries that another consumer (a history service that
    /// vanished, e.g. a pod replaced under a new name) has held unacknowledged
    /// for at least `min_idle`: they become this consumer's pending entries.
    /// Returns them and where the next call should start (`"0-0"` at the end).
    pub async fn claim_idle(
        &self,
        partition: u32,
        min_idle: Duration,
        start: &str,
        count: usize,
    ) -> redis::RedisResult<(String, Vec<RawEntry>)> {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(self.key(partition))
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
            .arg(start)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.connection.clone())
            .await?;
        let mut parts = array(reply).into_iter();
        let next = parts
            .next()
            .and_then(string)
            .unwrap_or_else(|| "0-0".into());
        let entries = parts
            .next()
            .map(|entries| parse_entries(partition, entries))
            .unwrap_or_default();
        Ok((next, entries))
    }

    pub async fn ack(&self, partition: u32, ids: &[String]) -> redis::RedisResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: i64 = redis::cmd("XACK")
            .arg(self.key(partition))
            .arg(GROUP)
            .arg(ids)
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }

    /// Removes from the stream what the group has acknowledged: everything
    /// before the oldest pending entry or, when none is pending, everything
    /// up to the last one delivered. Entries not yet delivered stay.
    pub async fn trim(&self, partition: u32) -> redis::RedisResult<GroupState> {
        let key = self.key(partition);
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .query_async(&mut self.connection.clone())
            .await?;
        let Some(group) = find_group(groups, GROUP) else {
            return Ok(GroupState::default());
        };
        let pending = group.int("pending").unwrap_or(0);
        let backlog = group.int("lag").unwrap_or(0);
        let keep_from = if pending > 0 {
            // [count, smallest id, greatest id, [[consumer, count] ...]]
            let summary: Value = redis::cmd("XPENDING")
                .arg(key)
                .arg(GROUP)
                .query_async(&mut self.connection.clone())
                .await?;
            array(summary).into_iter().nth(1).and_then(string)
        } else {
            group
                .string("last-delivered-id")
                .and_then(|id| next_id(&id))
        };
        if let Some(min_id) = keep_from {
            let _: i64 = redis::cmd("XTRIM")
                .arg(key)
                .arg("MINID")
                .arg(&min_id)
                .query_async(&mut self.connection.clone())
                .await?;
        }
        Ok(GroupState {
            pending: u64::try_from(pending).unwrap_or(0),
            backlog: u64::try_from(backlog).unwrap_or(0),
        })
    }
}

/// The smallest stream id above `id` (`MS-SEQ`).
fn next_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    if (ms, seq) == (0, 0) {
        return None; // nothing was ever delivered
    }
    Some(match seq.checked_add(1) {
        Some(seq) => format!("{ms}-{seq}"),
        None => format!("{}-0", ms.checked_add(1)?),
    })
}

fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

fn string(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// XREADGROUP of one partition.
fn parse_read_reply(partition: u32, reply: Value) -> Vec<RawEntry> {
    streams_of(reply)
        .into_iter()
        .flat_map(|(_, entries)| parse_entries(partition, entries))
        .collect()
}

/// XREADGROUP: nil, or `[[key, [entry ...]] ...]` (a map of key to entries
/// on RESP3), as (key, entries) per stream.
fn streams_of(reply: Value) -> Vec<(String, Value)> {
    match reply {
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(key, entries)| (string(key).unwrap_or_default(), entries))
            .collect(),
        other => array(other)
            .into_iter()
            .filter_map(|stream| {
                let mut parts = array(stream).into_iter();
                let key = parts.next().and_then(string).unwrap_or_default();
                Some((key, parts.next()?))
            })
            .collect(),
    }
}

/// `[[id, [field, value, ...] | nil] ...]`
fn parse_entries(partition: u32, entries: Value) -> Vec<RawEntry> {
    array(entries)
        .into_iter()
        .filter_map(|entry| {
            let mut parts = array(entry).into_iter();
            let id = parts.next().and_then(string)?;
            let fields = match parts.next() {
                None | Some(Value::Nil) => None,
                Some(fields) => {
                    let mut flat = array(fields).into_iter().map(string);
                    let mut pairs = Vec::new();
                    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                        pairs.push((k.unwrap_or_default(), v.unwrap_or_default()));
                    }
                    Some(pairs)
                }
            };
            Some(RawEntry {
                partition,
                id,
                fields,
            })
        })
        .collect()
}

/// One group of XINFO GROUPS, as name → value.
struct GroupInfo(Vec<(String, Value)>);

impl GroupInfo {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    fn int(&self, name: &str) -> Option<i64> {
        match self.get(name)? {
            Value::Int(n) => Some(*n),
            other => string(other.clone())?.parse().ok(),
        }
    }

    fn string(&self, name: &str) -> Option<String> {
        string(self.get(name)?.clone())
    }
}

fn find_group(groups: Value, name: &str) -> Option<GroupInfo> {
    array(groups).into_iter().find_map(|group| {
        let mut flat = array(group).into_iter();
        let mut fields = Vec::new();
        while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
            fields.push((string(k)?, v));
        }
        let info = GroupInfo(fields);
        (info.string("name").as_deref() == Some(name)).then_some(info)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_url_picks_the_backend() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6479"),
            RedisTarget::Single("redis://127.0.0.1:6479".into())
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://:pw@10.0.0.1:6379,10.0.0.2:6379/"),
            RedisTarget::Cluster(vec![
                "redis://:pw@10.0.0.1:6379".into(),
                "redis://:pw@10.0.0.2:6379".into()
            ])
        );
        assert_eq!(
            RedisTarget::parse("redis://a:1, redis://b:2"),
            RedisTarget::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
    }

    #[test]
    fn partition_keys_carry_the_hash_tag() {
        assert_eq!(partition_key("cc:", 0), "cc:{h:0}");
        assert_eq!(partition_key("cc:", 15), "cc:{h:15}");
    }

    #[test]
    fn read_replies_parse_with_trimmed_entries_as_none() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("cc:{h:3}"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("op"), bulk("m"), bulk("mid"), bulk("a")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read_reply(3, reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(entries[0].field("op"), Some("m"));
        assert_eq!(entries[0].field("mid"), Some("a"));
        assert_eq!(entries[1].fields, None);
        assert!(parse_read_reply(0, Value::Nil).is_empty());
    }

    #[test]
    fn trimming_keeps_from_the_entry_after_the_last_delivered() {
        assert_eq!(
            next_id("1700000000000-5").as_deref(),
            Some("1700000000000-6")
        );
        assert_eq!(next_id(&format!("7-{}", u64::MAX)).as_deref(), Some("8-0"));
        assert_eq!(next_id("0-0"), None);
        assert_eq!(next_id("garbage"), None);
    }

    #[test]
    fn xinfo_groups_finds_ours() {
        let groups = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("history"),
            bulk("pending"),
            Value::Int(2),
            bulk("last-delivered-id"),
            bulk("5-1"),
            bulk("lag"),
            Value::Nil,
        ])]);
        let info = find_group(groups, GROUP).expect("found");
        assert_eq!(info.int("pending"), Some(2));
        assert_eq!(info.string("last-delivered-id").as_deref(), Some("5-1"));
        assert_eq!(info.int("lag"), None);
    }
}
