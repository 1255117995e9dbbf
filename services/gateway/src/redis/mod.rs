//! Everything the gateway asks of Redis, behind one small interface.
//!
//! Every key and the channel of one user share the hash tag `{u:ID}`, so a
//! user's state lives in one Redis Cluster slot and each script below touches
//! one slot only (`{prefix}` namespaces clusters and test runs):
//!
//! - **Inbox** `{prefix}{u:ID}:in`: a list of the user's accepted messages
//!   not yet known to be delivered, oldest first, each entry
//!   `SEQ MID SENDER MICROS TRACEPARENT\nFRAME`. `:n` is the user's sequence
//!   counter (it starts at Redis's clock in microseconds, so a counter lost
//!   with Redis's data restarts above every number it gave before). `:d` is
//!   the highest sequence written to one of the user's connections.
//! - **Routing**: the channel `{prefix}{u:ID}`, which the node holding the
//!   user subscribes to. [`Redis::append`] records a message in the inbox
//!   and publishes the same entry in one script: a message is never published
//!   without being recorded.
//! - **Presence** `{prefix}{u:ID}:p`: a hash of the sessions that hold the
//!   user (`node/connection` → kind and expiry), refreshed by their nodes: one
//!   classic session alone, or any number of device sessions.
//! - **History** `{prefix}{h:N}`: streams of numbered chats for the history
//!   service (`number.rs`).
//! - **Control** `{prefix}ctl`: cache invalidations between nodes.
//!
//! **Single Redis or Redis Cluster**, picked by the URL
//! (`redis+cluster://HOST:PORT[,HOST:PORT...]` or several URLs separated by
//! commas is a cluster). The code path is the same; what differs:
//! - grouping: a script call or a pipeline holds the users of one hash slot
//!   on a cluster ([`slot::groups`]), everything on a single Redis; groups
//!   run concurrently, each routed to the shard that owns its slot;
//! - routing is sharded pub/sub (SPUBLISH/SSUBSCRIBE) on both, with one
//!   subscriber connection per shard (`subscriber.rs`): a single Redis is a
//!   cluster of one shard; on a cluster a message crosses one shard, not all
//!   of them as plain PUBLISH would;
//! - replication: on a cluster an append waits for a replica (`WAIT 1`)
//!   before it is published or answered, so a failover cannot lose an
//!   accepted message or hand out its sequence number twice.
//!
//! Every (un)subscribe goes through one ordered worker; subscriptions are
//! restored after any failure and the users concerned read their stores.
//!
//! **API Boundary:** session code sees only [`Redis`]'s methods.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use redis::{Script, aio::ConnectionManager};

mod append;
pub mod number;
mod resp;
pub mod slot;
mod subscriber;
use shutdown::Shutdown;
use tokio::sync::{mpsc, oneshot, watch};

#[derive(Debug, thiserror::Error)]
#[error("redis is unavailable: {0}")]
pub struct RedisError(String);

impl RedisError {
    pub fn new(why: impl Into<String>) -> Self {
        Self(why.into())
    }
}

impl From<redis::RedisError> for RedisError {
    fn from(e: redis::RedisError) -> Self {
        Self(e.to_string())
    }
}

/// What the subscriber hands to the node.
#[derive(Debug)]
pub enum BusEvent {
    /// An inbox entry published for a user this node subscribed to.
    ForUser { user: i64, entry: Vec<u8> },
    /// A cache invalidation from some node (maybe this one).
    Control(Vec<u8>),
    /// These users' subscriptions were restored (a connection dropped, a
    /// shard failed over, a slot moved): whatever was published meanwhile
    /// must be read from their stores.
    Resync(Vec<i64>),
}

/// The user whose channel this is (`{prefix}{u:ID}`), given `{prefix}{u:`.
fn user_of_channel(user_prefix: &str, channel: &str) -> Option<i64> {
    channel
        .strip_prefix(user_prefix)
        .and_then(|rest| rest.strip_suffix('}'))
        .and_then(|id| id.parse().ok())
}

/// What waits between the subscriber and the node, bounded in bytes: past
/// the bound an entry is not queued (it is in the inbox) and its user is
/// noted, for the node to make that session read its inbox. The subscriber
/// never waits for the node, so redis-rs's own buffer stays empty.
#[derive(Debug)]
pub struct BusBacklog {
    bytes: AtomicUsize,
    max: usize,
    overflowed: Mutex<HashSet<i64>>,
    notify: tokio::sync::Notify,
}

/// Bytes of published entries the subscriber may hold for the node.
pub const BUS_BACKLOG_BYTES: usize = 32 * 1024 * 1024;

impl BusBacklog {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            bytes: AtomicUsize::new(0),
            max,
            overflowed: Mutex::default(),
            notify: tokio::sync::Notify::new(),
        })
    }

    /// Queues a user's entry unless the backlog is full (in bytes or count).
    fn offer(&self, events: &mpsc::Sender<BusEvent>, user: i64, entry: Vec<u8>) -> Result<(), ()> {
        let len = entry.len();
        if self.bytes.fetch_add(len, Ordering::AcqRel) + len > self.max {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            self.overflow(user);
            return Ok(());
        }
        match events.try_send(BusEvent::ForUser { user, entry }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.bytes.fetch_sub(len, Ordering::AcqRel);
                self.overflow(user);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        }
    }

    fn overflow(&self, user: i64) {
        crate::metrics::metrics()
            .overflowed
            .get_or_create(&crate::metrics::label("queue", "bus"))
            .inc();
        self.overflowed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user);
        self.notify.notify_one();
    }

    /// The node took an entry off the queue.
    pub fn taken(&self, event: &BusEvent) {
        if let BusEvent::ForUser { entry, .. } = event {
            self.bytes.fetch_sub(entry.len(), Ordering::AcqRel);
        }
    }

    /// Waits until some user's entry was left out, then says whose.
    pub async fn overflowed(&self) -> Vec<i64> {
        loop {
            let users: Vec<i64> = self
                .overflowed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
                .collect();
            if !users.is_empty() {
                return users;
            }
            self.notify.notified().await;
        }
    }
}

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

/// Published on a user's channel (never recorded): "read your offline store".
pub const OFFLINE_NUDGE: &[u8] = b"0 sync\n";

/// Published on a user's channel, never recorded: a frame for the user's
/// sessions that use the additions (a read receipt, typing, a chat sent
/// from another device), except the session `except` (`node/connection`).
pub fn live_entry(except: &str, frame: &[u8]) -> Vec<u8> {
    let mut entry = format!("0 live {except}\n").into_bytes();
    entry.extend_from_slice(frame);
    entry
}

/// Published on a user's channel when one of their devices logs in: the
/// sessions of the user elsewhere start sending their own chats to their
/// other devices.
pub const DEVICE_JOINED: &[u8] = b"0 peers\n";

/// (except, frame) of a [`live_entry`]; `None` for anything else.
pub fn parse_live(entry: &[u8]) -> Option<(&str, &[u8])> {
    let rest = entry.strip_prefix(b"0 live ")?;
    let newline = rest.iter().position(|&b| b == b'\n')?;
    Some((
        std::str::from_utf8(&rest[..newline]).ok()?,
        &rest[newline + 1..],
    ))
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

/// What [`Redis::append`] did for one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Recorded with this sequence; published to that many subscribers
    /// (`None`: not published, the caller hands it over itself).
    Recorded { seq: u64, subscribers: Option<u64> },
    /// A retry of a message already recorded (same message id).
    Duplicate { seq: u64 },
    /// The receiver's inbox is at its limit; nothing was recorded.
    InboxFull,
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

struct AppendJob {
    /// (user, channel to publish on or '').
    receivers: Vec<(i64, String)>,
    mid: String,
    tail: Vec<u8>,
    max_inbox: usize,
    ttl: u64,
    /// One result per receiver.
    reply: oneshot::Sender<Vec<Result<Appended, String>>>,
}

fn appended(seq: i64, subscribers: i64) -> Appended {
    let seq = u64::try_from(seq).unwrap_or(0);
    match subscribers {
        -1 => Appended::InboxFull,
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

enum SubCommand {
    Subscribe(String, oneshot::Sender<Result<(), RedisError>>),
    Unsubscribe(String),
}

#[derive(Clone)]
pub struct Redis {
    prefix: Arc<str>,
    commands: Commands,
    /// A Redis Cluster (else a single Redis): see the module's docs.
    sharded: bool,
    /// Redis only: which slots have a replica to wait for.
    replicas: Arc<slot::ReplicaMap>,
    /// The shards and their slots, for the subscriber (one shard owning
    /// every slot on a single Redis).
    topology: Arc<watch::Sender<Arc<Vec<slot::Shard>>>>,
    /// Slot → its master's address (cluster only), for the appender.
    owners: Arc<std::sync::RwLock<Arc<slot::Owners>>>,
    subscriber: mpsc::UnboundedSender<SubCommand>,
    subscriber_up: Arc<AtomicBool>,
    scripts: Arc<Scripts>,
    appender: mpsc::UnboundedSender<AppendJob>,
    numberer: mpsc::UnboundedSender<number::NumberJob>,
    /// What the subscriber holds for the node.
    pub backlog: Arc<BusBacklog>,
}

/// The command connection: one multiplexed connection to a single Redis,
/// or redis-rs's cluster connection, which routes each command (or
/// single-slot pipeline) to the shard owning its key's slot, follows
/// MOVED/ASK and finds the new master after a failover.
#[derive(Clone)]
enum Commands {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Commands {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
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
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
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

/// Where the gateway's Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Single(String),
    /// Seed nodes of a Redis Cluster (any one reachable master suffices).
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// `redis+cluster://HOST:PORT[,HOST:PORT...]` or `URL,URL...` is a
    /// cluster; any other URL a single Redis.
    pub fn parse(url: &str) -> Self {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            // Credentials, if any, hold for every node.
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

/// How long an append waits for a replica of its shard (cluster only).
const REPLICA_WAIT: Duration = Duration::from_millis(500);

struct Scripts {
    append: Script,
    read: Script,
    trim: Script,
    number: Script,
}

/// Records messages in inboxes, for many receivers in one call (a node
/// batches what its sessions send at the same moment: one script call costs
/// Redis far more than the few commands in it).
/// KEYS: per receiver, counter, inbox, dedup key. ARGV[1]: inbox limit;
/// then per receiver, channel ('' = do not publish), dedup TTL in seconds
/// ('0' = no dedup key) and the index (from 0) of its entry tail; then the tails.
/// Returns {seq, subscribers} per receiver; subscribers -1: inbox full,
/// -2: duplicate, -3: not published.
const APPEND_SCRIPT: &str = r"
local n = #KEYS / 3
local max = tonumber(ARGV[1])
local tails = 2 + 3 * n
local out = {}
for i = 0, n - 1 do
  local k, a = 3 * i, 1 + 3 * i
  local channel, ttl = ARGV[a + 1], ARGV[a + 2]
  local prev = false
  if ttl ~= '0' then prev = redis.call('GET', KEYS[k + 3]) end
  local seq, subscribers
  if prev then
    seq, subscribers = tonumber(prev), -2
  else
    seq = redis.call('INCR', KEYS[k + 1])
    if seq == 1 then
      local t = redis.call('TIME')
      seq = tonumber(t[1]) * 1000000 + tonumber(t[2])
      redis.call('SET', KEYS[k + 1], string.format('%d', seq))
    end
    local s = string.format('%d', seq)
    local entry = s .. ' ' .. ARGV[tails + tonumber(ARGV[a + 3])]
    if redis.call('RPUSH', KEYS[k + 2], entry) > max then
      -- Over the limit: take it back, and the number (entries must stay
      -- numbered without gaps: READ and TRIM find them by position).
      redis.call('RPOP', KEYS[k + 2])
      redis.call('DECR', KEYS[k + 1])
      seq, subscribers = 0, -1
    else
      if ttl ~= '0' then redis.call('SET', KEYS[k + 3], s, 'EX', ttl) end
      subscribers = -3
      if channel ~= '' then subscribers = redis.call('SPUBLISH', channel, entry) end
    end
  end
  out[#out + 1] = seq
  out[#out + 1] = subscribers
end
return out";

/// A fixed-window counter. KEYS: the counter. ARGV: window in ms, 'hit'
/// (count this attempt) or 'peek'. Returns {attempts in the window, ms left}.
const THROTTLE_SCRIPT: &str = r"
local n
if ARGV[2] == 'hit' then
  n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
else
  n = tonumber(redis.call('GET', KEYS[1]) or '0')
end
return {n, redis.call('PTTL', KEYS[1])}";

/// KEYS: counter, inbox, delivered. ARGV: after, count, byte budget.
/// Returns {last_seq, delivered, entries...} with entries after `after`:
/// at most `count`, and no more than the budget in bytes (at least one).
const READ_SCRIPT: &str = r"
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local delivered = tonumber(redis.call('GET', KEYS[3]) or '0')
local out = {last, delivered}
local first = redis.call('LINDEX', KEYS[2], 0)
if not first then return out end
local head = tonumber(string.match(first, '^%d+'))
local start = tonumber(ARGV[1]) - head + 1
if start < 0 then start = 0 end
local entries = redis.call('LRANGE', KEYS[2], start, start + tonumber(ARGV[2]) - 1)
local budget = tonumber(ARGV[3])
for i = 1, #entries do
  budget = budget - #entries[i]
  if budget < 0 and i > 1 then break end
  out[#out + 1] = entries[i]
end
return out";

/// Removes inbox entries with a sequence <= up_to, for many users in one
/// call. KEYS: per user, inbox, delivered, presence. ARGV[1]: mode; then
/// per user, up_to. Mode 'd' (delivered): also raises the delivered mark.
/// Mode 's' (moved to the offline store): only while nobody holds the
/// user's presence, else -1 for that user and nothing removed (a session
/// that logged in meanwhile reads the inbox itself). Returns per user how
/// many entries went (or -1).
const TRIM_SCRIPT: &str = r"
local out = {}
for i = 1, #KEYS / 3 do
  local inbox, delivered, presence = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local up_to = ARGV[1 + i]
  local removed = 0
  if ARGV[1] == 's' and redis.call('EXISTS', presence) == 1 then
    removed = -1
  else
    if ARGV[1] ~= 's' then
      local d = tonumber(redis.call('GET', delivered) or '0')
      if tonumber(up_to) > d then redis.call('SET', delivered, up_to) end
    end
    local first = redis.call('LINDEX', inbox, 0)
    if first then
      local n = tonumber(up_to) - tonumber(string.match(first, '^%d+')) + 1
      if n > 0 then
        local len = redis.call('LLEN', inbox)
        if n >= len then
          redis.call('DEL', inbox)
          removed = len
        else
          redis.call('LTRIM', inbox, n, -1)
          removed = n
        end
      end
    end
  end
  out[i] = removed
end
return out";

/// Presence is a hash per user: one field per session that holds the user
/// (`node/connection`), valued `KIND:EXPIRY_MS` (KIND `c` a classic
/// session, `d` a device session); the key itself expires with its latest
/// field. A classic session holds the user alone; device sessions share it.
/// KEYS: presence. ARGV: owner, kind, TTL in ms. Claims (or refreshes) the
/// owner's field, dropping expired ones; 0 when the user is held by a
/// session it may not share with (then nothing changes), else 1 + how many
/// other sessions hold the user.
const CLAIM_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fields = redis.call('HGETALL', KEYS[1])
local others = 0
for i = 1, #fields, 2 do
  local kind, expiry = string.match(fields[i + 1], '^(%a):(%d+)$')
  if not expiry or tonumber(expiry) <= now then
    redis.call('HDEL', KEYS[1], fields[i])
  elseif fields[i] ~= ARGV[1] then
    if kind == 'c' or ARGV[2] == 'c' then return 0 end
    others = others + 1
  end
end
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. string.format('%d', now + ttl))
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1 + others";

/// KEYS: presence. ARGV: owner. Drops the owner's field (the key with the last).
const RELEASE_SCRIPT: &str = r"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return removed";

/// How often the subscriber connection is pinged, and how long an answer may take.
const SUBSCRIBER_PING: Duration = Duration::from_secs(2);

impl Redis {
    /// Connects the command connection and starts the subscriber task, which
    /// sends what arrives to `events`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        events: mpsc::Sender<BusEvent>,
        shutdown: Shutdown,
    ) -> Result<Self, RedisError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let subscriber_up = Arc::new(AtomicBool::new(false));
        let backlog = BusBacklog::new(BUS_BACKLOG_BYTES);
        let target = RedisTarget::parse(url);
        let first = match &target {
            RedisTarget::Single(url) => url.clone(),
            RedisTarget::Cluster(nodes) => nodes.first().cloned().unwrap_or_default(),
        };
        let info = redis::IntoConnectionInfo::into_connection_info(first.as_str())?;
        let settings = info.redis_settings();
        let auth = settings
            .password()
            .map(|p| (settings.username().map(str::to_owned), p.to_owned()));
        let (commands, topology, sharded) = match target {
            RedisTarget::Single(url) => {
                let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
                    return Err(RedisError::new(format!(
                        "{url}: only plain TCP redis:// URLs are supported"
                    )));
                };
                let client = redis::Client::open(url)?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                let commands = ConnectionManager::new_with_config(client, config).await?;
                // One shard that owns every slot.
                let everything = slot::Shard {
                    master: Some(format!("{host}:{port}")),
                    ranges: vec![(0, 16_383)],
                    replicated: false,
                };
                let topology = watch::channel(Arc::new(vec![everything])).0;
                (Commands::Single(commands), topology, false)
            }
            RedisTarget::Cluster(nodes) => {
                let commands = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(Duration::from_secs(1))
                    .response_timeout(Duration::from_secs(2))
                    .retries(3)
                    .build()?
                    .get_async_connection()
                    .await?;
                let topology = watch::channel(Arc::new(Vec::new())).0;
                (Commands::Cluster(commands), topology, true)
            }
        };
        let refresh = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(subscriber::run(subscriber::Subscriber {
            topology: topology.subscribe(),
            refresh: refresh.clone(),
            auth,
            prefix: prefix.to_owned(),
            commands: rx,
            events,
            backlog: backlog.clone(),
            up: subscriber_up.clone(),
            shutdown,
        }));
        let (appender, jobs) = mpsc::unbounded_channel();
        let (numberer, number_jobs) = mpsc::unbounded_channel();
        let cluster = Self {
            prefix: prefix.into(),
            commands,
            sharded,
            replicas: Arc::new(slot::ReplicaMap::new()),
            topology: Arc::new(topology),
            owners: Arc::default(),
            subscriber: tx,
            subscriber_up,
            scripts: Arc::new(Scripts {
                append: Script::new(APPEND_SCRIPT),
                read: Script::new(READ_SCRIPT),
                trim: Script::new(TRIM_SCRIPT),
                number: Script::new(number::NUMBER_SCRIPT),
            }),
            appender,
            numberer,
            backlog,
        };
        tokio::spawn(cluster.clone().run_appender(jobs));
        tokio::spawn(cluster.clone().run_numberer(number_jobs));
        if sharded {
            cluster.read_slot_map().await;
            tokio::spawn(cluster.clone().watch_slot_map(refresh));
        }
        Ok(cluster)
    }

    /// Reads the slot map: which master owns which slots, and which have a
    /// replica online (cluster only).
    async fn read_slot_map(&self) {
        let reply: Result<redis::Value, _> = redis::cmd("CLUSTER")
            .arg("SHARDS")
            .query_async(&mut self.commands.clone())
            .await;
        match reply {
            Ok(reply) => {
                let shards = slot::shards(&reply);
                self.replicas.update(&shards);
                self.topology.send_if_modified(|current| {
                    let changed = **current != shards;
                    if changed {
                        tracing::info!(shards = ?shards.iter().map(|s| (&s.master, &s.ranges)).collect::<Vec<_>>(), "redis cluster slot map");
                        *self.owners.write().unwrap_or_else(|p| p.into_inner()) =
                            Arc::new(slot::owners(&shards));
                        *current = Arc::new(shards);
                    }
                    changed
                });
            }
            Err(e) => tracing::debug!(error = %e, "cannot read CLUSTER SHARDS"),
        }
    }

    /// Keeps the slot map current: every second, and at once when the
    /// subscriber asks (a connection failed, a slot moved).
    async fn watch_slot_map(self, refresh: Arc<tokio::sync::Notify>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = refresh.notified() => {
                    // Not more often than every 100 ms.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            self.read_slot_map().await;
        }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// Whether a failed append to these users may soon work again: on a
    /// cluster, when a shard of theirs has (or just had) a replica that can
    /// take over.
    pub fn failover_possible(&self, users: &[i64]) -> bool {
        self.sharded
            && users
                .iter()
                .any(|u| self.replicas.had_replica_lately(slot::of_user(*u)))
    }

    /// Slot → the address of its master, as last read (cluster only).
    fn owners(&self) -> Arc<slot::Owners> {
        self.owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn user_channel(&self, user: i64) -> String {
        format!("{}{{u:{user}}}", self.prefix)
    }

    fn user_key(&self, user: i64, suffix: &str) -> String {
        format!("{}{{u:{user}}}:{suffix}", self.prefix)
    }

    fn presence_key(&self, user: i64) -> String {
        self.user_key(user, "p")
    }

    /// True while the subscriber connection is up.
    pub fn is_subscribed(&self) -> bool {
        self.subscriber_up.load(Ordering::Relaxed)
    }

    /// Runs a pipeline of EVALSHAs; after a Redis restart or a failover
    /// (NOSCRIPT) runs it once more with the scripts loaded first in the
    /// same pipeline (so on a cluster they reach the same shard), which is
    /// safe: a NOSCRIPT invocation did nothing.
    async fn run_scripts<T: redis::FromRedisValue>(
        &self,
        build: impl Fn(&mut redis::Pipeline),
    ) -> Result<Vec<T>, RedisError> {
        let mut pipe = redis::pipe();
        build(&mut pipe);
        match pipe.query_async(&mut self.commands.clone()).await {
            Ok(values) => Ok(values),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let mut pipe = redis::pipe();
                for script in [
                    &self.scripts.append,
                    &self.scripts.read,
                    &self.scripts.trim,
                    &self.scripts.number,
                ] {
                    pipe.load_script(script).ignore();
                }
                build(&mut pipe);
                Ok(pipe.query_async(&mut self.commands.clone()).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs `build` once per group of `users` that may share a script call
    /// (one hash slot on a cluster: [`slot::groups`]; all of them on a
    /// single Redis), each invocation touching only its group's slot; `build`
    /// gets the indices of its group. On a cluster the groups of one shard
    /// share one pipeline to it (the shards' pipelines run concurrently); a
    /// group that fails there (its slot moved, a script not loaded after a
    /// failover) is retried on its own, routed by redis-rs. Replies come
    /// back per group; a group's failure fails the whole call.
    async fn run_grouped<T: redis::FromRedisValue>(
        &self,
        users: impl ExactSizeIterator<Item = i64>,
        build: impl Fn(&mut redis::Pipeline, &[usize]),
    ) -> Result<Vec<(Vec<usize>, Vec<T>)>, RedisError> {
        self.run_grouped_each(users, build)
            .await
            .into_iter()
            .map(|(group, replies)| Ok((group, replies?)))
            .collect()
    }

    /// [`Self::run_grouped`], with a result per group: a shard that fails
    /// fails only its own groups.
    async fn run_grouped_each<T: redis::FromRedisValue>(
        &self,
        users: impl ExactSizeIterator<Item = i64>,
        build: impl Fn(&mut redis::Pipeline, &[usize]),
    ) -> Vec<Grouped<T>> {
        let users: Vec<i64> = users.collect();
        let groups = slot::groups(self.sharded, users.iter().copied());
        let build = &build;
        let alone = |group: Vec<usize>| async move {
            let replies = self.run_scripts(|pipe| build(pipe, &group)).await;
            (group, replies)
        };
        if !self.sharded {
            return futures::future::join_all(groups.into_iter().map(alone)).await;
        }
        let owners = self.owners();
        let mut by_shard: std::collections::HashMap<Arc<str>, Vec<Vec<usize>>> =
            std::collections::HashMap::new();
        let mut retry = Vec::new();
        for group in groups {
            let slot = usize::from(slot::of_user(users[group[0]]));
            match owners.get(slot).cloned().flatten() {
                Some(shard) => by_shard.entry(shard).or_default().push(group),
                None => retry.push(group),
            }
        }
        let shards =
            futures::future::join_all(by_shard.into_iter().map(|(shard, groups)| async move {
                let mut pipe = redis::pipe();
                let mut counts = Vec::with_capacity(groups.len());
                for group in &groups {
                    let before = pipe.len();
                    build(&mut pipe, group);
                    counts.push(pipe.len() - before);
                }
                let values = self.on_shard(&shard, pipe).await;
                (groups, counts, values)
            }))
            .await;
        let mut out = Vec::new();
        for (groups, counts, values) in shards {
            let Ok(values) = values else {
                retry.extend(groups);
                continue;
            };
            let mut values = values.into_iter();
            for (group, count) in groups.into_iter().zip(counts) {
                let replies: Vec<redis::Value> = values.by_ref().take(count).collect();
                let parsed = (replies.len() == count)
                    .then(|| {
                        replies
                            .into_iter()
                            .map(|v| T::from_redis_value(v).ok())
                            .collect::<Option<Vec<T>>>()
                    })
                    .flatten();
                match parsed {
                    Some(replies) => out.push((group, Ok(replies))),
                    None => retry.push(group),
                }
            }
        }
        out.extend(futures::future::join_all(retry.into_iter().map(alone)).await);
        out
    }

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
        self.append_each(receivers, mid, tail, max_inbox, dedup_ttl)
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
        dedup_ttl: Option<Duration>,
    ) -> Vec<Result<Appended, RedisError>> {
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
            ttl: dedup_ttl.map_or(0, |t| t.as_secs().max(1)),
            reply,
        };
        let stopped = || {
            (0..receivers.len())
                .map(|_| Err(RedisError::new("the appender has stopped")))
                .collect()
        };
        if self.appender.send(job).is_err() {
            return stopped();
        }
        match appended.await {
            Ok(results) => results
                .into_iter()
                .map(|r| r.map_err(RedisError::new))
                .collect(),
            Err(_) => stopped(),
        }
    }
}

impl Redis {
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

    /// Tells the nodes holding these users that their offline store has
    /// messages they may not know of (stored while this node could not reach
    /// Redis). The entry `0 sync` is never in an inbox.
    pub async fn nudge_offline(&self, users: &[i64]) -> Result<(), RedisError> {
        let _: Vec<(Vec<usize>, Vec<i64>)> = self
            .run_grouped(users.iter().copied(), |pipe, group| {
                for &i in group {
                    pipe.cmd("SPUBLISH")
                        .arg(self.user_channel(users[i]))
                        .arg(OFFLINE_NUDGE);
                }
            })
            .await?;
        Ok(())
    }

    pub async fn publish_control(&self, payload: &[u8]) -> Result<(), RedisError> {
        let _: i64 = redis::cmd("SPUBLISH")
            .arg(format!("{}ctl", self.prefix))
            .arg(payload)
            .query_async(&mut self.commands.clone())
            .await?;
        Ok(())
    }

    /// Subscribes to a user's channel; returns once Redis confirmed it, so a
    /// message published afterwards reaches this node.
    pub async fn subscribe_user(&self, user: i64) -> Result<(), RedisError> {
        let (tx, rx) = oneshot::channel();
        self.subscriber
            .send(SubCommand::Subscribe(self.user_channel(user), tx))
            .map_err(|_| RedisError("the subscriber has stopped".into()))?;
        rx.await
            .map_err(|_| RedisError("the subscriber has stopped".into()))?
    }

    pub fn unsubscribe_user(&self, user: i64) {
        let _ = self
            .subscriber
            .send(SubCommand::Unsubscribe(self.user_channel(user)));
    }

    /// Counts an attempt against `name` (when `hit`) in a fixed window, for
    /// the whole cluster: how many attempts the window has seen and how long
    /// until it ends.
    pub async fn throttle(
        &self,
        name: &str,
        window: Duration,
        hit: bool,
    ) -> Result<(u64, Duration), RedisError> {
        let (count, ttl): (u64, i64) = Script::new(THROTTLE_SCRIPT)
            .key(format!("{}t:{name}", self.prefix))
            .arg(ttl_millis(window))
            .arg(if hit { "hit" } else { "peek" })
            .invoke_async(&mut self.commands.clone())
            .await?;
        Ok((
            count,
            Duration::from_millis(u64::try_from(ttl).unwrap_or(0)),
        ))
    }

    /// Claims the user for `owner` unless a session it may not share with
    /// holds them: a classic session (`device` false) holds the user alone,
    /// device sessions share it with each other.
    pub async fn claim_presence(
        &self,
        user: i64,
        owner: &str,
        device: bool,
        ttl: Duration,
    ) -> Result<Claim, RedisError> {
        let claimed: i64 = Script::new(CLAIM_SCRIPT)
            .key(self.presence_key(user))
            .arg(owner)
            .arg(presence_kind(device))
            .arg(ttl_millis(ttl))
            .invoke_async(&mut self.commands.clone())
            .await?;
        Ok(Claim::from_reply(claimed))
    }

    /// Releases the claim if `owner` still holds it. Retried a few times
    /// (it is idempotent): a command right after Redis restarted can fail
    /// while the connection is re-established, and an unreleased claim
    /// locks the user out until it expires.
    pub async fn release_presence(&self, user: i64, owner: &str) -> Result<(), RedisError> {
        let mut attempt = 0;
        loop {
            let released: Result<i64, _> = Script::new(RELEASE_SCRIPT)
                .key(self.presence_key(user))
                .arg(owner)
                .invoke_async(&mut self.commands.clone())
                .await;
            match released {
                Ok(_) => return Ok(()),
                Err(e) if attempt >= 3 => return Err(e.into()),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
            }
        }
    }

    /// Extends each claim (re-creating it after a Redis restart). For each,
    /// false when another owner has taken the user meanwhile, `None` when
    /// its shard did not answer.
    pub async fn refresh_presence(
        &self,
        claims: &[(i64, String, bool)],
        ttl: Duration,
    ) -> Vec<Option<Claim>> {
        let replies: Vec<Grouped<i64>> = self
            .run_grouped_each(claims.iter().map(|c| c.0), |pipe, group| {
                for &i in group {
                    let (user, owner, device) = &claims[i];
                    // EVALSHA would fail with NOSCRIPT after a Redis restart;
                    // claims are refreshed seconds apart, so plain EVAL is fine.
                    pipe.cmd("EVAL")
                        .arg(CLAIM_SCRIPT)
                        .arg(1)
                        .arg(self.presence_key(*user))
                        .arg(owner)
                        .arg(presence_kind(*device))
                        .arg(ttl_millis(ttl));
                }
            })
            .await;
        let mut held = vec![None; claims.len()];
        for (group, replies) in replies {
            match replies {
                Ok(replies) => {
                    for (i, reply) in group.into_iter().zip(replies) {
                        held[i] = Some(Claim::from_reply(reply));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, users = group.len(), "cannot refresh presence")
                }
            }
        }
        held
    }

    /// Publishes a [`live_entry`] to each user's channel. Best effort (it is
    /// never recorded anywhere): a failure is logged.
    pub async fn publish_live(&self, users: &[i64], except: &str, frame: &[u8]) {
        self.publish_raw(users, &live_entry(except, frame)).await;
    }

    /// Publishes `entry` as it is to each user's channel, best effort.
    pub async fn publish_raw(&self, users: &[i64], entry: &[u8]) {
        if users.is_empty() {
            return;
        }
        let replies: Vec<Grouped<i64>> = self
            .run_grouped_each(users.iter().copied(), |pipe, group| {
                for &i in group {
                    pipe.cmd("SPUBLISH")
                        .arg(self.user_channel(users[i]))
                        .arg(entry);
                }
            })
            .await;
        for (group, replies) in replies {
            if let Err(e) = replies {
                tracing::debug!(error = %e, users = group.len(), "a live event was not published");
            }
        }
    }

    /// Whether each user is online anywhere in the cluster.
    /// Users on a shard that does not answer (failing over) count as
    /// offline; only when no shard answers is it an error.
    pub async fn online(&self, users: &[i64]) -> Result<Vec<bool>, RedisError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let replies: Vec<Grouped<bool>> = self
            .run_grouped_each(users.iter().copied(), |pipe, group| {
                for &i in group {
                    pipe.exists(self.presence_key(users[i]));
                }
            })
            .await;
        let mut online = vec![false; users.len()];
        let mut failure = None;
        let mut answered = false;
        for (group, replies) in replies {
            match replies {
                Ok(replies) => {
                    answered = true;
                    for (i, reply) in group.into_iter().zip(replies) {
                        online[i] = reply;
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) if !answered => Err(e),
            Some(e) => {
                tracing::warn!(error = %e, "some presence unknown (a shard does not answer); shown offline");
                Ok(online)
            }
            None => Ok(online),
        }
    }
}

/// The item indices of one group and its replies.
type Grouped<T> = (Vec<usize>, Result<Vec<T>, RedisError>);

/// What a presence claim (or refresh) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Held by a session this one may not share with.
    Refused,
    /// Held, by this session and that many others (device sessions).
    Held { others: u32 },
}

impl Claim {
    fn from_reply(reply: i64) -> Self {
        match reply {
            n if n >= 1 => Self::Held {
                others: u32::try_from(n - 1).unwrap_or(u32::MAX),
            },
            _ => Self::Refused,
        }
    }

    pub fn is_held(self) -> bool {
        matches!(self, Self::Held { .. })
    }
}

fn presence_kind(device: bool) -> &'static str {
    if device { "d" } else { "c" }
}

fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_picks_the_backend() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6479"),
            RedisTarget::Single("redis://127.0.0.1:6479".into())
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://10.0.0.1:6379,10.0.0.2:6379/"),
            RedisTarget::Cluster(vec![
                "redis://10.0.0.1:6379".into(),
                "redis://10.0.0.2:6379".into()
            ])
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://:s3cret@redis:6379,redis-2:6379"),
            RedisTarget::Cluster(vec![
                "redis://:s3cret@redis:6379".into(),
                "redis://:s3cret@redis-2:6379".into()
            ])
        );
        assert_eq!(
            RedisTarget::parse("redis://a:1, redis://b:2"),
            RedisTarget::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
    }

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
