//! The subscriber of a single Redis: one connection, plain SUBSCRIBE.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt as _;
use shutdown::Shutdown;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BusBacklog, BusEvent, ClusterError, SUBSCRIBER_PING, SubCommand, user_of_channel};

/// Holds the node's one subscriber connection: forwards messages, applies
/// (un)subscribe commands in the order they were given, pings the
/// connection, and after any failure reconnects and subscribes again to
/// every channel it should hold.
pub(super) async fn run_subscriber(
    client: redis::Client,
    prefix: String,
    mut commands: mpsc::UnboundedReceiver<SubCommand>,
    events: mpsc::Sender<BusEvent>,
    backlog: Arc<BusBacklog>,
    up: Arc<AtomicBool>,
    shutdown: Shutdown,
) {
    let wanted: Arc<Mutex<HashSet<String>>> = Arc::default();
    let control = format!("{prefix}ctl");
    let user_prefix = format!("{prefix}{{u:");
    let mut delay = Duration::from_millis(100);
    loop {
        if shutdown.is_requested() {
            return;
        }
        let connected = tokio::time::timeout(SUBSCRIBER_PING * 2, client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(p)) => p,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "connect timed out".to_owned(),
                };
                tracing::warn!(error, retry_in = ?delay, "redis subscriber cannot connect");
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
        match tokio::time::timeout(SUBSCRIBER_PING * 2, sink.subscribe(&channels)).await {
            Ok(Ok(())) => {}
            failed => {
                tracing::warn!(?failed, "redis resubscribe failed");
                continue;
            }
        }
        delay = Duration::from_millis(100);
        up.store(true, Ordering::Relaxed);
        tracing::info!(channels = channels.len(), "redis subscriber connected");
        if events.send(BusEvent::Resubscribed).await.is_err() {
            return;
        }

        // The worker owns the sending half: commands in order, and pings.
        // It cancels `broken` when the connection stops answering.
        let broken = CancellationToken::new();
        let (work_tx, work_rx) = mpsc::unbounded_channel();
        let worker = tokio::spawn(subscriber_worker(sink, work_rx, broken.clone()));
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { break };
                    let channel = message.get_channel_name();
                    let payload = message.get_payload_bytes().to_vec();
                    let user = user_of_channel(&user_prefix, channel);
                    let sent = match user {
                        Some(user) => backlog.offer(&events, user, payload),
                        None if channel == control => {
                            events.send(BusEvent::Control(payload)).await.map_err(|_| ())
                        }
                        None => continue,
                    };
                    if sent.is_err() {
                        worker.abort();
                        return;
                    }
                }
                Some(command) = commands.recv() => {
                    if let Ok(mut w) = wanted.lock() {
                        match &command {
                            SubCommand::Subscribe(channel, _) => w.insert(channel.clone()),
                            SubCommand::Unsubscribe(channel) => w.remove(channel),
                        };
                    }
                    if let Err(mpsc::error::SendError(command)) = work_tx.send(command) {
                        apply_while_down(command, &wanted);
                    }
                }
                _ = broken.cancelled() => break,
                _ = shutdown.requested() => {
                    worker.abort();
                    return;
                }
            }
        }
        worker.abort();
        up.store(false, Ordering::Relaxed);
        tracing::warn!("redis subscriber disconnected; reconnecting");
    }
}

async fn subscriber_worker(
    mut sink: redis::aio::PubSubSink,
    mut work: mpsc::UnboundedReceiver<SubCommand>,
    broken: CancellationToken,
) {
    let mut ping = tokio::time::interval(SUBSCRIBER_PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = work.recv() => {
                let Some(command) = command else { return };
                let result = match command {
                    SubCommand::Subscribe(channel, done) => {
                        let result = tokio::time::timeout(SUBSCRIBER_PING * 2, sink.subscribe(&channel)).await;
                        let ok = matches!(result, Ok(Ok(())));
                        let _ = done.send(match result {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => Err(e.into()),
                            Err(_) => Err(ClusterError("subscribe timed out".into())),
                        });
                        ok
                    }
                    SubCommand::Unsubscribe(channel) => matches!(
                        tokio::time::timeout(SUBSCRIBER_PING * 2, sink.unsubscribe(&channel)).await,
                        Ok(Ok(()))
                    ),
                };
                if !result {
                    broken.cancel();
                    return;
                }
            }
            _ = ping.tick() => {
                let answered = tokio::time::timeout(SUBSCRIBER_PING * 2, sink.ping::<redis::Value>()).await;
                if !matches!(answered, Ok(Ok(_))) {
                    tracing::warn!("redis subscriber connection does not answer PING");
                    broken.cancel();
                    return;
                }
            }
        }
    }
}

fn apply_while_down(command: SubCommand, wanted: &Mutex<HashSet<String>>) {
    match command {
        SubCommand::Subscribe(channel, done) => {
            if let Ok(mut w) = wanted.lock() {
                w.remove(&channel);
            }
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
