//! The gateway's Redis: what it holds, how it is reached, and the helpers
//! every part of this module shares.
//!
//! Every key and the channel of one user share the hash tag `{u:ID}`, so a
//! user's state lives in one Redis Cluster slot and each script touches
//! one slot only (`{prefix}` namespaces clusters and test runs):
//!
//! - **Inbox** `{prefix}{u:ID}:in`: a list of the user's accepted messages
//!   not yet known to be delivered, oldest first, each entry
//!   `SEQ MID SENDER MICROS TRACEPARENT\nFRAME`. `:n` is the user's sequence
//!   counter (`scripts/counter.lua`: a counter Redis rolled back jumps above
//!   every number it gave before, by the slot's epoch mark). `:d` is
//!   the highest sequence written to one of the user's connections.
//!   `:m:MID` remembers a message id for a while, so that a retry is not
//!   recorded twice.
//! - **Routing**: the channel `{prefix}{u:ID}`, which the node holding the
//!   user subscribes to. [`Redis::append`] records a message in the inbox
//!   and publishes the same entry in one script: a message is never published
//!   without being recorded. A few messages on it are never recorded
//!   ([`ChannelMessage`]).
//! - **Presence** `{prefix}{u:ID}:p`: a hash of the sessions that hold the
//!   user (`node/connection` → kind and expiry), refreshed by their nodes: one
//!   classic session alone, or any number of device sessions.
//! - **History** `{prefix}{h:N}`: streams of numbered chats for the history
//!   service (`number.rs`).
//! - **Group logs** `{prefix}{h:N}:l:g:GID`: a group's chats, once each, and
//!   the channel of the same name; members' cursors `{prefix}{u:ID}:gc`
//!   (`group_log.rs`).
//! - **Throttles** `{prefix}t:NAME`: fixed-window counters shared by the nodes.
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
//! The files (each adds its own `impl Redis` methods):
//! - `mod.rs`: [`Redis`] and [`Redis::connect`], [`RedisError`],
//!   [`RedisTarget`], the command connection, key names, and running
//!   scripts and pipelines grouped by slot (with NOSCRIPT recovery);
//! - `inbox.rs`: the entry format, appending, reading and trimming inboxes;
//! - `append.rs`: the appender, which batches concurrent appends (on a
//!   cluster one APPEND call per slot);
//! - `deliver.rs`: on a single Redis, the appender's batch numbered and
//!   appended in one DELIVER call;
//! - `presence.rs`: claiming, refreshing and releasing users, who is online;
//! - `bus.rs`: what users' channels carry, publishing, (un)subscribing;
//! - `subscriber.rs`: the subscriber connections (`resp.rs`: their RESP);
//! - `number.rs`: conversation sequence numbers and the history streams;
//! - `group_log.rs`: group logs, their channels and members' cursors;
//! - `throttle.rs`: the throttles;
//! - `topology.rs`: the slot map and the replicas (cluster only);
//! - `slot.rs`: hash slots, grouping by slot, parsing `CLUSTER SHARDS`;
//! - `scripts/*.lua`: the Lua scripts, loaded with `include_str!`. Redis
//!   knows a script by the SHA1 of its exact bytes: each file starts with
//!   an empty line and ends without a newline, as the string literals they
//!   were (a changed byte changes the SHA: Redis then loads the script
//!   again after NOSCRIPT, once per server).

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use append::AppendJob;
use bus::SubCommand;
use redis::{Script, aio::ConnectionManager};
use shutdown::Shutdown;
use tokio::sync::{mpsc, watch};

mod append;
mod bus;
mod deliver;
pub mod group_log;
mod inbox;
pub mod number;
mod presence;
mod resp;
pub mod slot;
mod subscriber;
mod throttle;
mod topology;

pub use append::Appended;
pub use append::Numbering;
pub use bus::{BUS_BACKLOG_BYTES, BusBacklog, BusEvent, ChannelMessage, Topic};
pub use inbox::{AppendTo, Dedup, InboxEntry, InboxPage, READ_PAGE_BYTES, UnitChat, entry_tail};
pub use presence::Claim;

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

/// The gateway's handle on Redis, cheap to clone (see the module's docs).
#[derive(Clone)]
pub struct Redis {
    prefix: Arc<str>,
    commands: Commands,
    /// Cluster only: the numberer's and the appender's own connections
    /// (each a multiplexed connection per shard), for their pipelines that
    /// end in `WAIT`. Redis holds a client's later commands while its
    /// `WAIT` waits for a replica, so on the shared connection every
    /// publish, trim, presence refresh and the other stage's script call
    /// queued behind it. (A `WAIT` covers the writes of its own
    /// connection: it travels in the pipeline with them.) On a single
    /// Redis, clones of `commands`.
    waiting: Arc<Waiting>,
    /// A Redis Cluster (else a single Redis): see the module's docs.
    sharded: bool,
    /// Cluster only: which slots have a replica to wait for.
    replicas: Arc<slot::ReplicaMap>,
    /// The shards and their slots, for the subscriber (one shard owning
    /// every slot on a single Redis).
    topology: Arc<watch::Sender<Arc<Vec<slot::Shard>>>>,
    /// Slot → its master's address (cluster only), for the appender.
    owners: Arc<std::sync::RwLock<Arc<slot::Owners>>>,
    subscriber: mpsc::UnboundedSender<SubCommand>,
    subscriber_up: Arc<AtomicBool>,
    scripts: Arc<Scripts>,
    /// Units of append jobs: a unit is never split between batches.
    appender: mpsc::UnboundedSender<Vec<AppendJob>>,
    numberer: mpsc::UnboundedSender<number::NumberJob>,
    /// What the subscriber holds for the node.
    pub backlog: Arc<BusBacklog>,
    /// Bytes one inbox and one history stream may hold.
    budgets: Arc<Budgets>,
}

/// What Redis may hold, in bytes, besides the counts: one receiver's inbox
/// (a send past it is refused, errno 13) and one history stream (past it,
/// its oldest entries go; the history service reads them long before,
/// unless it is down for long). Set from the configuration at start.
pub struct Budgets {
    inbox_bytes: std::sync::atomic::AtomicU64,
    stream_bytes: std::sync::atomic::AtomicU64,
}

impl Budgets {
    fn inbox_bytes(&self) -> u64 {
        self.inbox_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn stream_bytes(&self) -> u64 {
        self.stream_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The command connection: one multiplexed connection to a single Redis,
/// or redis-rs's cluster connection, which routes each command (or
/// single-slot pipeline) to the shard owning its key's slot, follows
/// MOVED/ASK and finds the new master after a failover.
enum Commands {
    Single(ConnectionManager),
    Cluster(ClusterCommands),
}

/// A cluster connection as of its clone, and the shared handle that replaces
/// it. After every node of a cluster restarted at once, redis-rs's cluster
/// connection can keep answering "no connections found" (seen for 25 s and
/// more); when it does for [`CLUSTER_REBUILD_AFTER`], a new one is made from
/// the seed nodes, and every clone taken after that uses it.
struct ClusterCommands {
    conn: redis::cluster_async::ClusterConnection,
    shared: Arc<ClusterShared>,
}

/// See [`Redis::waiting`].
struct Waiting {
    number: Commands,
    append: Commands,
}

/// Which connection a shard's pipeline travels on.
#[derive(Clone, Copy)]
pub(super) enum Via {
    Shared,
    Numberer,
    Appender,
}

struct ClusterShared {
    client: redis::cluster::ClusterClient,
    current: std::sync::RwLock<redis::cluster_async::ClusterConnection>,
    /// When commands started failing for want of any connection.
    lost_since: std::sync::Mutex<Option<std::time::Instant>>,
    rebuilding: AtomicBool,
}

/// How long a cluster connection may find no connection before it is
/// made again.
const CLUSTER_REBUILD_AFTER: Duration = Duration::from_secs(2);

impl ClusterCommands {
    /// A cluster connection of its own (its own connection to each node).
    async fn connect(client: &redis::cluster::ClusterClient) -> Result<Commands, RedisError> {
        let conn = client.get_async_connection().await?;
        let shared = Arc::new(ClusterShared {
            client: client.clone(),
            current: std::sync::RwLock::new(conn.clone()),
            lost_since: std::sync::Mutex::new(None),
            rebuilding: AtomicBool::new(false),
        });
        Ok(Commands::Cluster(Self { conn, shared }))
    }
}

impl ClusterShared {
    fn note(self: &Arc<Self>, result: Result<(), &redis::RedisError>) {
        use std::sync::atomic::Ordering;
        let mut lost = self.lost_since.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Err(e) if e.kind() == redis::ErrorKind::ClusterConnectionNotFound => {
                let since = *lost.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= CLUSTER_REBUILD_AFTER
                    && !self.rebuilding.swap(true, Ordering::AcqRel)
                {
                    let shared = self.clone();
                    tokio::spawn(async move {
                        match shared.client.get_async_connection().await {
                            Ok(conn) => {
                                tracing::warn!(
                                    "redis cluster connection found no node for 2 s; made a new one"
                                );
                                *shared.current.write().unwrap_or_else(|p| p.into_inner()) = conn;
                                *shared.lost_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot make a new redis cluster connection yet")
                            }
                        }
                        shared.rebuilding.store(false, Ordering::Release);
                    });
                }
            }
            Err(_) => {}
            Ok(()) => *lost = None,
        }
    }
}

impl Clone for Commands {
    fn clone(&self) -> Self {
        match self {
            Self::Single(c) => Self::Single(c.clone()),
            Self::Cluster(c) => Self::Cluster(ClusterCommands {
                conn: c
                    .shared
                    .current
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                shared: c.shared.clone(),
            }),
        }
    }
}

impl redis::aio::ConnectionLike for Commands {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => {
                let shared = c.shared.clone();
                let reply = c.conn.req_packed_command(cmd);
                Box::pin(async move {
                    let reply = reply.await;
                    shared.note(reply.as_ref().map(|_| ()));
                    reply
                })
            }
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
            Self::Cluster(c) => {
                let shared = c.shared.clone();
                let replies = c.conn.req_packed_commands(pipeline, offset, count);
                Box::pin(async move {
                    let replies = replies.await;
                    shared.note(replies.as_ref().map(|_| ()));
                    replies
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.conn.get_db(),
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
/// [`Budgets`] until [`Redis::set_budgets`] says otherwise.
pub const DEFAULT_INBOX_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_STREAM_BYTES: u64 = 64 * 1024 * 1024;

const REPLICA_WAIT: Duration = Duration::from_millis(500);

struct Scripts {
    append: Script,
    read: Script,
    trim: Script,
    number: Script,
    deliver: Script,
    claim_each: Script,
    cursor: Script,
}

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
        let (commands, waiting, topology, sharded) = match target {
            RedisTarget::Single(url) => {
                let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
                    return Err(RedisError::new(format!(
                        "{url}: only plain TCP redis:// URLs are supported"
                    )));
                };
                let client = redis::Client::open(url)?;
                // One connection attempt per reconnect: every command waits
                // for the reconnect under way, so retries with backoff
                // here made each command take a second while Redis was
                // down (a chat then waited that long to be stored offline).
                // The callers retry by themselves where it helps
                // (`node::failover`), and the next command reconnects.
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(0);
                let commands =
                    Commands::Single(ConnectionManager::new_with_config(client, config).await?);
                let waiting = Waiting {
                    number: commands.clone(),
                    append: commands.clone(),
                };
                // One shard that owns every slot.
                let everything = slot::Shard {
                    master: Some(format!("{host}:{port}")),
                    ranges: vec![(0, 16_383)],
                    replicated: false,
                };
                let topology = watch::channel(Arc::new(vec![everything])).0;
                (commands, waiting, topology, false)
            }
            RedisTarget::Cluster(nodes) => {
                let client = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(Duration::from_secs(1))
                    .response_timeout(Duration::from_secs(2))
                    .retries(3)
                    .build()?;
                let commands = ClusterCommands::connect(&client).await?;
                let waiting = Waiting {
                    number: ClusterCommands::connect(&client).await?,
                    append: ClusterCommands::connect(&client).await?,
                };
                let topology = watch::channel(Arc::new(Vec::new())).0;
                (commands, waiting, topology, true)
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
            waiting: Arc::new(waiting),
            sharded,
            replicas: Arc::new(slot::ReplicaMap::new()),
            topology: Arc::new(topology),
            owners: Arc::default(),
            subscriber: tx,
            subscriber_up,
            scripts: Arc::new(Scripts {
                append: Script::new(append::APPEND_SCRIPT),
                read: Script::new(inbox::READ_SCRIPT),
                trim: Script::new(inbox::TRIM_SCRIPT),
                number: Script::new(number::NUMBER_SCRIPT),
                deliver: Script::new(deliver::DELIVER_SCRIPT),
                claim_each: Script::new(presence::CLAIM_EACH_SCRIPT),
                cursor: Script::new(group_log::CURSOR_SCRIPT),
            }),
            appender,
            numberer,
            backlog,
            budgets: Arc::new(Budgets {
                inbox_bytes: DEFAULT_INBOX_BYTES.into(),
                stream_bytes: DEFAULT_STREAM_BYTES.into(),
            }),
        };
        tokio::spawn(cluster.clone().run_appender(jobs));
        tokio::spawn(cluster.clone().run_numberer(number_jobs));
        if sharded {
            cluster.read_slot_map().await;
            tokio::spawn(cluster.clone().watch_slot_map(refresh));
        }
        Ok(cluster)
    }

    /// Sets the byte budgets (see [`Budgets`]) for every clone of this handle.
    pub fn set_budgets(&self, inbox_bytes: u64, stream_bytes: u64) {
        self.budgets
            .inbox_bytes
            .store(inbox_bytes.max(1), std::sync::atomic::Ordering::Relaxed);
        self.budgets
            .stream_bytes
            .store(stream_bytes.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    fn user_channel(&self, user: i64) -> String {
        format!("{}{{u:{user}}}", self.prefix)
    }

    fn user_key(&self, user: i64, suffix: &str) -> String {
        format!("{}{{u:{user}}}:{suffix}", self.prefix)
    }

    /// The epoch mark of a slot's counters (`scripts/counter.lua`), named
    /// with a hash tag of that slot; on a single Redis one for all.
    pub fn epoch_mark_key(&self, slot: u16) -> String {
        let slot = if self.sharded { slot } else { 0 };
        format!("{}{{{}}}:epoch", self.prefix, slot::tag_of_slot(slot))
    }

    fn presence_key(&self, user: i64) -> String {
        self.user_key(user, "p")
    }

    /// Runs a pipeline of EVALSHAs; after a Redis restart or a failover
    /// (NOSCRIPT) runs it once more with the scripts loaded first in the
    /// same pipeline (so on a cluster they reach the same shard), which is
    /// safe: a NOSCRIPT invocation did nothing.
    async fn run_scripts<T: redis::FromRedisValue>(
        &self,
        build: impl Fn(&mut redis::Pipeline),
    ) -> Result<Vec<T>, RedisError> {
        self.run_scripts_via(Via::Shared, build).await
    }

    /// [`Self::run_scripts`] on the connection `via` names.
    async fn run_scripts_via<T: redis::FromRedisValue>(
        &self,
        via: Via,
        build: impl Fn(&mut redis::Pipeline),
    ) -> Result<Vec<T>, RedisError> {
        let mut pipe = redis::pipe();
        build(&mut pipe);
        match pipe.query_async(&mut self.connection(via)).await {
            Ok(values) => Ok(values),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let mut pipe = redis::pipe();
                self.load_scripts(&mut pipe);
                build(&mut pipe);
                Ok(pipe.query_async(&mut self.connection(via)).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The connection `via` names (a clone: cheap).
    fn connection(&self, via: Via) -> Commands {
        match via {
            Via::Shared => self.commands.clone(),
            Via::Numberer => self.waiting.number.clone(),
            Via::Appender => self.waiting.append.clone(),
        }
    }

    /// Adds a SCRIPT LOAD of every script run by its hash to `pipe`, their
    /// replies ignored; returns how many commands it added.
    pub(super) fn load_scripts(&self, pipe: &mut redis::Pipeline) -> usize {
        let scripts = [
            &self.scripts.append,
            &self.scripts.read,
            &self.scripts.trim,
            &self.scripts.number,
            &self.scripts.deliver,
            &self.scripts.claim_each,
            &self.scripts.cursor,
        ];
        for script in scripts {
            pipe.load_script(script).ignore();
        }
        scripts.len()
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
                // Commands per group, counted as the pipeline is built
                // (again, when the scripts had to be loaded first).
                let counts = std::sync::Mutex::new(Vec::with_capacity(groups.len()));
                let values = self
                    .scripts_on_shard(Via::Shared, &shard, |pipe| {
                        let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
                        counts.clear();
                        for group in &groups {
                            let before = pipe.len();
                            build(pipe, group);
                            counts.push(pipe.len() - before);
                        }
                    })
                    .await;
                let counts = counts.into_inner().unwrap_or_else(|p| p.into_inner());
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
}

/// The item indices of one group and its replies.
type Grouped<T> = (Vec<usize>, Result<Vec<T>, RedisError>);

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
}
