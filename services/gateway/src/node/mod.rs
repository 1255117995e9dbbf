//! One gateway node's long-lived parts, which its sessions share. Each part
//! is its own struct, handed only what it needs:
//!
//! - [`registry`]: this node's sessions, by user;
//! - [`directory`]: who exists and who is in which group (caches);
//! - [`groups`]: the groups of the users held here, whose logs' channels
//!   this node subscribes to;
//! - [`admission`]: connections with nobody logged in, unfinished requests;
//! - [`lease`]: this node's presence claims, and whether a session may
//!   still be written to;
//! - [`trimmer`]: delivered inbox entries trimmed from Redis in batches;
//! - [`presence`]: telling friends and fellow group members when a user
//!   comes online or goes offline;
//! - [`offline`]: the offline service (storing, moving inboxes there,
//!   nudging other nodes);
//! - [`failover`]: waiting for a Redis Cluster shard that fails over.
//!
//! [`Node`] is these parts and the handles they share (config, Redis, the
//! gRPC clients, shutdown, the task tracker), and nothing else.
//!
//! **Architecture Invariant:** no database or gRPC call on the path of a chat
//! between online users. Whether a user or group exists and who is in a
//! group come from the directory's caches, filled on first use and at
//! login, and kept fresh by invalidations over Redis.

pub mod admission;
pub mod directory;
pub mod failover;
pub mod groups;
pub mod lease;
pub mod offline;
pub mod presence;
pub mod registry;
pub mod trimmer;

use std::sync::Arc;

use shutdown::Shutdown;
use tokio_util::task::TaskTracker;

use crate::{config::Config, redis::Redis, upstream::Upstreams};

use self::{
    admission::Admission, directory::Directory, failover::Failover, groups::LocalGroups,
    lease::Lease, offline::OfflineStore, registry::Registry, trimmer::Trimmer,
};

pub struct Node {
    pub config: Config,
    pub redis: Redis,
    pub upstreams: Upstreams,
    pub shutdown: Shutdown,
    /// Every session and background hand-over, so shutdown can wait for them.
    pub tasks: TaskTracker,
    pub registry: Registry,
    pub directory: Directory,
    pub groups: LocalGroups,
    pub admission: Arc<Admission>,
    pub lease: Lease,
    pub trimmer: Trimmer,
    pub offline: Arc<OfflineStore>,
    pub failover: Failover,
}

impl Node {
    pub fn new(config: Config, redis: Redis, upstreams: Upstreams, shutdown: Shutdown) -> Self {
        let tasks = TaskTracker::new();
        Self {
            registry: Registry::default(),
            directory: Directory::new(upstreams.users.clone(), config.group_cache_ttl),
            groups: LocalGroups::default(),
            admission: Arc::new(Admission::new(
                config.limits.partial_budget_bytes,
                config.limits.outbound_node_bytes,
                config.limits.anonymous_per_address,
            )),
            lease: Lease::new(config.presence_ttl, config.limits.max_devices),
            trimmer: Trimmer::new(redis.clone()),
            offline: Arc::new(OfflineStore::new(
                upstreams.offline.clone(),
                redis.clone(),
                tasks.clone(),
            )),
            failover: Failover::new(config.redis_failover_wait),
            tasks,
            config,
            redis,
            upstreams,
            shutdown,
        }
    }

    /// The cluster-wide address of one of this node's connections (see
    /// [`registry::session_address`]).
    pub fn session_address(&self, connection: u64) -> String {
        registry::session_address(&self.config.node_id, connection)
    }
}
