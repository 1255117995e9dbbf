//! Everything the gateway asks of Redis, behind one small interface.
//!
//! - **Routing**: each user connected to a node has a channel
//!   `{prefix}u:{id}` that this node subscribes to. Sending to a user who is
//!   on another node is a PUBLISH to that channel; Redis answers how many
//!   subscribers got it, and 0 means "nobody holds this user" (the caller
//!   then stores the message offline).
//! - **Presence**: `{prefix}p:{id}` holds `node/connection` of the session
//!   that owns the user, with a TTL the owning node keeps refreshing. A node
//!   that dies stops refreshing and its users are free again within the TTL.
//! - **Control**: `{prefix}ctl` carries cache invalidations between nodes.
//!
//! The node keeps ONE subscriber connection (reconnected and resubscribed
//! after Redis restarts) and one multiplexed command connection that
//! pipelines concurrent commands.
//!
//! **API Boundary:** session code sees only [`Cluster`]'s methods. Moving to
//! Redis Cluster means SPUBLISH/SSUBSCRIBE here (channels are per user, so
//! they shard well) and nothing else.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt as _;
use redis::{AsyncCommands as _, Script, aio::ConnectionManager};
use shutdown::Shutdown;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
#[error("redis is unavailable: {0}")]
pub struct ClusterError(String);

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        Self(e.to_string())
    }
}

/// What the subscriber hands to the node.
#[derive(Debug)]
pub enum BusEvent {
    /// A message for a user this node subscribed to.
    ForUser { user: i64, payload: Vec<u8> },
    /// A cache invalidation from some node (maybe this one).
    Control(Vec<u8>),
    /// The subscriber (re)connected: everything local was resubscribed.
    Resubscribed,
}

enum SubCommand {
    Subscribe(String, oneshot::Sender<Result<(), ClusterError>>),
    Unsubscribe(String),
}

#[derive(Clone)]
pub struct Cluster {
    prefix: Arc<str>,
    commands: ConnectionManager,
    subscriber: mpsc::UnboundedSender<SubCommand>,
    subscriber_up: Arc<AtomicBool>,
}

const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

const REFRESH_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0";

impl Cluster {
    /// Connects the command connection and starts the subscriber task, which
    /// sends what arrives to `events`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        events: mpsc::Sender<BusEvent>,
        shutdown: Shutdown,
    ) -> Result<Self, ClusterError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let commands = ConnectionManager::new_with_config(client.clone(), config).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let subscriber_up = Arc::new(AtomicBool::new(false));
        let control = format!("{prefix}ctl");
        tokio::spawn(run_subscriber(
            client,
            prefix.to_owned(),
            control,
            rx,
            events,
            subscriber_up.clone(),
            shutdown,
        ));
        Ok(Self {
            prefix: prefix.into(),
            commands,
            subscriber: tx,
            subscriber_up,
        })
    }

    fn user_channel(&self, user: i64) -> String {
        format!("{}u:{user}", self.prefix)
    }

    fn presence_key(&self, user: i64) -> String {
        format!("{}p:{user}", self.prefix)
    }

    /// True while the subscriber connection is up.
    pub fn is_subscribed(&self) -> bool {
        self.subscriber_up.load(Ordering::Relaxed)
    }

    /// Publishes each payload to its user's channel in one pipeline. For each,
    /// whether some node received it.
    pub async fn publish(&self, messages: &[(i64, &[u8])]) -> Result<Vec<bool>, ClusterError> {
        let mut pipe = redis::pipe();
        for (user, payload) in messages {
            pipe.publish(self.user_channel(*user), *payload);
        }
        let receivers: Vec<i64> = pipe.query_async(&mut self.commands.clone()).await?;
        Ok(receivers.into_iter().map(|n| n > 0).collect())
    }

    pub async fn publish_control(&self, payload: &[u8]) -> Result<(), ClusterError> {
        let _: i64 = self
            .commands
            .clone()
            .publish(format!("{}ctl", self.prefix), payload)
            .await?;
        Ok(())
    }

    /// Subscribes to a user's channel; returns once Redis confirmed it, so a
    /// message published afterwards reaches this node.
    pub async fn subscribe_user(&self, user: i64) -> Result<(), ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.subscriber
            .send(SubCommand::Subscribe(self.user_channel(user), tx))
            .map_err(|_| ClusterError("the subscriber has stopped".into()))?;
        rx.await
            .map_err(|_| ClusterError("the subscriber has stopped".into()))?
    }

    pub fn unsubscribe_user(&self, user: i64) {
        let _ = self
            .subscriber
            .send(SubCommand::Unsubscribe(self.user_channel(user)));
    }

    /// Claims the user for `owner` unless someone holds them already.
    pub async fn claim_presence(
        &self,
        user: i64,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, ClusterError> {
        let reply: Option<String> = redis::cmd("SET")
            .arg(self.presence_key(user))
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl_millis(ttl))
            .query_async(&mut self.commands.clone())
            .await?;
        Ok(reply.is_some())
    }

    /// Releases the claim if `owner` still holds it.
    pub async fn release_presence(&self, user: i64, owner: &str) -> Result<(), ClusterError> {
        let _: i64 = Script::new(RELEASE_SCRIPT)
            .key(self.presence_key(user))
            .arg(owner)
            .invoke_async(&mut self.commands.clone())
            .await?;
        Ok(())
    }

    /// Extends each claim (re-creating it after a Redis restart). For each,
    /// false when another owner has taken the user meanwhile.
    pub async fn refresh_presence(
        &self,
        claims: &[(i64, String)],
        ttl: Duration,
    ) -> Result<Vec<bool>, ClusterError> {
        let mut pipe = redis::pipe();
        for (user, owner) in claims {
            // EVALSHA would fail with NOSCRIPT after a Redis restart; claims
            // are refreshed seconds apart, so plain EVAL is fine.
            pipe.cmd("EVAL")
                .arg(REFRESH_SCRIPT)
                .arg(1)
                .arg(self.presence_key(*user))
                .arg(owner)
                .arg(ttl_millis(ttl));
        }
        let held: Vec<i64> = pipe.query_async(&mut self.commands.clone()).await?;
        Ok(held.into_iter().map(|h| h == 1).collect())
    }

    /// Whether each user is online anywhere in the cluster.
    pub async fn online(&self, users: &[i64]) -> Result<Vec<bool>, ClusterError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = users.iter().map(|u| self.presence_key(*u)).collect();
        let owners: Vec<Option<String>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut self.commands.clone())
            .await?;
        Ok(owners.into_iter().map(|o| o.is_some()).collect())
    }
}

fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Holds the node's one subscriber connection: applies (un)subscribe
/// commands, forwards messages, and after any disconnect reconnects and
/// subscribes again to every channel it should hold.
async fn run_subscriber(
    client: redis::Client,
    prefix: String,
    control: String,
    mut commands: mpsc::UnboundedReceiver<SubCommand>,
    events: mpsc::Sender<BusEvent>,
    up: Arc<AtomicBool>,
    shutdown: Shutdown,
) {
    let wanted: Arc<Mutex<HashSet<String>>> = Arc::default();
    let user_prefix = format!("{prefix}u:");
    let mut delay = Duration::from_millis(100);
    loop {
        if shutdown.is_requested() {
            return;
        }
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "redis subscriber cannot connect");
                // Commands that arrive while down fail at once: the caller
                // (a login) reports "unavailable" instead of hanging.
                let deadline = tokio::time::sleep(delay);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        _ = shutdown.requested() => return,
                        Some(cmd) = commands.recv() => apply_while_down(cmd, &wanted),
                    }
                }
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut channels: Vec<String> = wanted
            .lock()
            .map(|w| w.iter().cloned().collect())
            .unwrap_or_default();
        channels.push(control.clone());
        if let Err(e) = sink.subscribe(&channels).await {
            tracing::warn!(error = %e, "redis resubscribe failed");
            continue;
        }
        delay = Duration::from_millis(100);
        up.store(true, Ordering::Relaxed);
        tracing::info!(channels = channels.len(), "redis subscriber connected");
        let _ = events.send(BusEvent::Resubscribed).await;

        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { break };
                    let channel = message.get_channel_name();
                    let payload = message.get_payload_bytes().to_vec();
                    let event = match channel.strip_prefix(&user_prefix).and_then(|id| id.parse().ok()) {
                        Some(user) => BusEvent::ForUser { user, payload },
                        None if channel == control => BusEvent::Control(payload),
                        None => continue,
                    };
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                Some(command) = commands.recv() => match command {
                    SubCommand::Subscribe(channel, done) => {
                        if let Ok(mut w) = wanted.lock() {
                            w.insert(channel.clone());
                        }
                        // Subscribe from a task of its own, so that the
                        // stream keeps being read while Redis confirms.
                        let mut sink = sink.clone();
                        tokio::spawn(async move {
                            let _ = done.send(sink.subscribe(&channel).await.map_err(ClusterError::from));
                        });
                    }
                    SubCommand::Unsubscribe(channel) => {
                        if let Ok(mut w) = wanted.lock() {
                            w.remove(&channel);
                        }
                        let mut sink = sink.clone();
                        tokio::spawn(async move {
                            let _ = sink.unsubscribe(&channel).await;
                        });
                    }
                },
                _ = shutdown.requested() => return,
            }
        }
        up.store(false, Ordering::Relaxed);
        tracing::warn!("redis subscriber disconnected; reconnecting");
    }
}

fn apply_while_down(command: SubCommand, wanted: &Mutex<HashSet<String>>) {
    match command {
        SubCommand::Subscribe(channel, done) => {
            let _ = done.send(Err(ClusterError(format!(
                "cannot subscribe to {channel}: not connected"
            ))));
        }
        SubCommand::Unsubscribe(channel) => {
            if let Ok(mut w) = wanted.lock() {
                w.remove(&channel);
            }
        }
    }
}
