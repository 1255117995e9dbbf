//! The subscriber of a Redis Cluster: sharded pub/sub.
//!
//! A channel `{prefix}{u:ID}` lives in the slot of its hash tag, like the
//! user's keys, and SSUBSCRIBE reaches the shard that owns that slot, so a
//! message crosses one shard only (plain PUBLISH on a cluster goes to every
//! node). redis-rs keeps one subscriber connection per shard (a cluster
//! client of its own, RESP3, pushes into one queue that this task drains at
//! once) and follows the slot map.
//!
//! What can break a subscription, and what this task does about it:
//! - the connection to a shard drops (a master killed, frozen, restarted):
//!   redis-rs reports a `Disconnection` push;
//! - a slot moves to another shard (failover, `--cluster reshard`): the old
//!   owner ends the subscriptions of that slot with an `sunsubscribe` push.
//!
//! Either way the channel goes on a *pending* list that is subscribed again
//! (every 250 ms until the shard answers, routed by the current slot map,
//! which redis-rs refreshes on MOVED or a failed connection) and, once Redis
//! confirmed, that user's session reads its stores: whatever was published
//! meanwhile is in the inbox or the offline store. Until the list is empty
//! the node reports itself unhealthy.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt as _;
use redis::{
    PushInfo, PushKind, Value,
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo},
};
use shutdown::Shutdown;
use tokio::sync::mpsc;

use super::{BusBacklog, BusEvent, ClusterError, SUBSCRIBER_PING, SubCommand, user_of_channel};

/// Channels re-subscribed at once after a failure.
const RESUBSCRIBE_CONCURRENCY: usize = 64;

pub(super) struct Sharded {
    pub client: ClusterClient,
    pub pushes: mpsc::UnboundedReceiver<PushInfo>,
    pub prefix: String,
    pub commands: mpsc::UnboundedReceiver<SubCommand>,
    pub events: mpsc::Sender<BusEvent>,
    pub backlog: Arc<BusBacklog>,
    pub up: Arc<AtomicBool>,
    pub shutdown: Shutdown,
}

/// What the tasks share.
struct State {
    /// Channels this node should hold (the control channel too).
    wanted: HashSet<String>,
    /// Wanted channels whose subscription may be gone.
    pending: HashSet<String>,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) async fn run_sharded_subscriber(mut this: Sharded) {
    let control = format!("{}ctl", this.prefix);
    let user_prefix = format!("{}{{u:", this.prefix);
    let state: Shared = Arc::new(Mutex::new(State {
        wanted: HashSet::from([control.clone()]),
        pending: HashSet::from([control.clone()]),
    }));
    let Some(conn) = connect(&this).await else {
        return;
    };
    let masters_answer = Arc::new(AtomicBool::new(false));
    let up = {
        let (state, masters_answer, up) = (state.clone(), masters_answer.clone(), this.up.clone());
        move || {
            let ok = masters_answer.load(Ordering::Relaxed) && lock(&state).pending.is_empty();
            up.store(ok, Ordering::Relaxed);
        }
    };
    let worker = tokio::spawn(command_worker(
        conn.clone(),
        std::mem::replace(&mut this.commands, mpsc::unbounded_channel().1),
        state.clone(),
    ));
    let pinger = tokio::spawn(ping_masters(conn.clone(), masters_answer, up.clone()));
    let _stop = AbortOnDrop(vec![worker, pinger]);

    let resubscribing = Arc::new(tokio::sync::Mutex::new(()));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Vec<(String, bool)>>();
    let mut retry = tokio::time::interval(Duration::from_millis(250));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            push = this.pushes.recv() => {
                let Some(push) = push else { return };
                match on_push(&this, &state, &control, &user_prefix, push) {
                    Ok(true) => up(),
                    Ok(false) => {}
                    Err(()) => return,
                }
            }
            _ = retry.tick() => {
                let channels: Vec<String> = lock(&state).pending.iter().cloned().collect();
                // One round at a time; the next tick retries what failed.
                if !channels.is_empty()
                    && let Ok(guard) = resubscribing.clone().try_lock_owned()
                {
                    let conn = conn.clone();
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        let results = resubscribe(conn, channels).await;
                        drop(guard);
                        let _ = done.send(results);
                    });
                }
            }
            Some(results) = done_rx.recv() => {
                let mut synced = Vec::new();
                let mut left = Vec::new();
                let pending = {
                    let mut state = lock(&state);
                    for (channel, ok) in results {
                        if !ok {
                            continue;
                        }
                        state.pending.remove(&channel);
                        if !state.wanted.contains(&channel) {
                            left.push(channel);
                        } else if let Some(user) = user_of_channel(&user_prefix, &channel) {
                            synced.push(user);
                        }
                    }
                    state.pending.len()
                };
                for channel in left {
                    // Left while it was being subscribed again.
                    let _ = with_timeout(conn.clone().sunsubscribe(channel)).await;
                }
                up();
                if first && pending == 0 {
                    first = false;
                    tracing::info!("redis cluster subscriber connected");
                    if this.events.send(BusEvent::Resubscribed).await.is_err() {
                        return;
                    }
                } else if !synced.is_empty() {
                    tracing::info!(users = synced.len(), pending, "redis cluster subscriptions restored");
                    if this.events.send(BusEvent::Resync(synced)).await.is_err() {
                        return;
                    }
                }
            }
            _ = this.shutdown.requested() => return,
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Whether every master answers PING, every 2 s.
async fn ping_masters(mut conn: ClusterConnection, answer: Arc<AtomicBool>, up: impl Fn()) {
    let mut ping = tokio::time::interval(SUBSCRIBER_PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ping.tick().await;
        let answered = with_timeout(conn.route_command(
            redis::cmd("PING"),
            RoutingInfo::MultiNode((
                MultipleNodeRoutingInfo::AllMasters,
                Some(ResponsePolicy::AllSucceeded),
            )),
        ))
        .await
        .is_ok();
        if !answered && answer.load(Ordering::Relaxed) {
            tracing::warn!("a redis cluster master does not answer PING");
        }
        answer.store(answered, Ordering::Relaxed);
        up();
    }
}

/// The first connection to the cluster, retried until it works.
async fn connect(this: &Sharded) -> Option<ClusterConnection> {
    let mut delay = Duration::from_millis(100);
    loop {
        match with_timeout(this.client.get_async_connection()).await {
            Ok(conn) => return Some(conn),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "redis cluster subscriber cannot connect");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = this.shutdown.requested() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Handles one push from a shard: a message, or news that subscriptions
/// may be gone (then true). Err when the node has stopped listening.
fn on_push(
    this: &Sharded,
    state: &Shared,
    control: &str,
    user_prefix: &str,
    push: PushInfo,
) -> Result<bool, ()> {
    match push.kind {
        PushKind::SMessage | PushKind::Message => {
            let mut data = push.data.into_iter();
            let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                (data.next(), data.next())
            else {
                return Ok(false);
            };
            let Ok(channel) = std::str::from_utf8(&channel) else {
                return Ok(false);
            };
            if let Some(user) = user_of_channel(user_prefix, channel) {
                this.backlog.offer(&this.events, user, payload)?;
            } else if channel == control {
                match this.events.try_send(BusEvent::Control(payload)) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => return Err(()),
                }
            }
            Ok(false)
        }
        PushKind::SUnsubscribe => {
            // A slot moved away from the shard (or our own unsubscribe, of
            // a channel no longer wanted).
            if let Some(Value::BulkString(channel)) = push.data.first()
                && let Ok(channel) = std::str::from_utf8(channel)
            {
                let mut state = lock(state);
                if state.wanted.contains(channel) {
                    tracing::info!(channel, "redis cluster ended a subscription (slot moved)");
                    state.pending.insert(channel.to_owned());
                    return Ok(true);
                }
            }
            Ok(false)
        }
        PushKind::Disconnection => {
            tracing::warn!("a redis cluster subscriber connection dropped; subscribing again");
            let mut state = lock(state);
            let wanted: Vec<String> = state.wanted.iter().cloned().collect();
            state.pending.extend(wanted);
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Applies the node's (un)subscribes in order; a subscribe answers once
/// Redis confirmed it, so what is published afterwards reaches this node.
async fn command_worker(
    mut conn: ClusterConnection,
    mut commands: mpsc::UnboundedReceiver<SubCommand>,
    state: Shared,
) {
    while let Some(command) = commands.recv().await {
        match command {
            SubCommand::Subscribe(channel, done) => {
                let result = with_timeout(conn.ssubscribe(&channel)).await;
                if result.is_ok() {
                    lock(&state).wanted.insert(channel);
                }
                let _ = done.send(result);
            }
            SubCommand::Unsubscribe(channel) => {
                {
                    let mut state = lock(&state);
                    state.wanted.remove(&channel);
                    state.pending.remove(&channel);
                }
                if let Err(e) = with_timeout(conn.sunsubscribe(&channel)).await {
                    // The shard's connection is gone, and the subscription
                    // with it.
                    tracing::debug!(error = %e, channel, "sunsubscribe failed");
                }
            }
        }
    }
}

/// Subscribes to each channel again; says which succeeded.
async fn resubscribe(conn: ClusterConnection, channels: Vec<String>) -> Vec<(String, bool)> {
    futures::stream::iter(channels)
        .map(|channel| {
            let mut conn = conn.clone();
            async move {
                let ok = with_timeout(conn.ssubscribe(&channel)).await.is_ok();
                (channel, ok)
            }
        })
        .buffer_unordered(RESUBSCRIBE_CONCURRENCY)
        .collect()
        .await
}

async fn with_timeout<T>(
    request: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(SUBSCRIBER_PING * 2, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ClusterError::new("redis cluster did not answer in time")),
    }
}
