//! One chat to its receivers: numbered in its conversation (for history),
//! then recorded in each receiver's inbox, which publishes it to the node
//! holding the receiver; handed straight to receivers on this node; moved
//! to the offline store for receivers nobody holds. When Redis is down the
//! offline service stores it instead. Only then is the sender answered.
//!
//! On a Redis Cluster, a shard that fails over is waited for (`failover`),
//! so a sender's chats stay in order.

use clusterchat_proto::offline::v1 as offline_pb;
use tracing::Instrument as _;

use crate::{
    delivery::sync,
    metrics::{label, metrics},
    node::{
        Node,
        failover::{Verdict, now_micros},
        registry::{Delivery, Handoff},
    },
    protocol::{
        classic::{Failure, errno},
        conversation::{self, Conversation},
    },
    redis::{AppendTo, Appended, Dedup, entry_tail},
};

/// A chat on its way: the frame receivers see and the message's identity.
pub struct Outgoing<'a> {
    pub sender_id: i64,
    pub frame: &'a [u8],
    /// Unique per message, made once and reused by every retry of it.
    pub mid: String,
    /// The client gave a message id: remember `mid` per receiver, so that a
    /// retried send is recorded once.
    pub dedup: bool,
    pub conversation: Conversation,
}

/// What [`Node::deliver`] did.
pub struct Delivered {
    /// One result per receiver, in order: a failure means that receiver
    /// will not get this message.
    pub results: Vec<Result<(), Failure>>,
    /// The chat's sequence number in its conversation (`None`: Redis could
    /// not number it; it is delivered but missing from history).
    pub cseq: Option<u64>,
}

/// A fresh random 128-bit message id.
pub fn new_message_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Records one message for each receiver (one script each, one pipeline
/// for all), hands it to receivers on this node, and moves it to the
/// offline store for receivers nobody holds. When Redis is down, stores
/// it with the offline service instead. One result per receiver, in
/// order: a failure means that receiver will not get this message.
pub async fn deliver(node: &Node, receivers: &[i64], message: &Outgoing<'_>) -> Delivered {
    let started = std::time::Instant::now();
    let span = tracing::info_span!(
        "redis.append",
        otel.kind = "producer",
        db.system = "redis",
        messaging.batch.message_count = receivers.len(),
    );
    let micros = now_micros();
    let traceparent = telemetry::propagation::traceparent(&span);
    let numbered = number(node, message, micros, &traceparent)
        .instrument(span.clone())
        .await;
    let frame = numbered
        .as_ref()
        .map_or(message.frame, |(_, frame)| frame.as_slice());
    let message = &Outgoing {
        sender_id: message.sender_id,
        frame,
        mid: message.mid.clone(),
        dedup: message.dedup,
        conversation: message.conversation,
    };
    let results = record(
        node,
        receivers,
        message,
        micros,
        &traceparent,
        &span,
        started,
    )
    .await;
    let cseq = numbered.as_ref().map(|(cseq, _)| *cseq);
    if let Some(cseq) = cseq
        && results.iter().all(Result::is_err)
    {
        // Nobody got it: history must not show it either. Its number is
        // forgotten with it, so a retry (same mid) is numbered afresh.
        node.redis
            .retract(&message.conversation.to_string(), &message.mid, cseq)
            .await;
    }
    Delivered { results, cseq }
}

/// How long a numbering that failed once waits before its second attempt.
const RECONNECT_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Numbers the chat in its conversation and records it for the history
/// service (the frame gets `conv` and `cseq`). On a cluster a failing
/// shard is waited for as an append is; `None` when it cannot be done
/// (Redis down: the chat still goes out, without a number).
async fn number(
    node: &Node,
    message: &Outgoing<'_>,
    micros: u64,
    traceparent: &str,
) -> Option<(u64, Vec<u8>)> {
    let head = conversation::numbered_head(message.frame, &message.conversation)?;
    let conv = message.conversation.to_string();
    let mut failing_since: Option<std::time::Instant> = None;
    let mut reconnected = false;
    loop {
        let job = crate::redis::number::NumberJob {
            conversation: conv.clone(),
            mid: message.mid.clone(),
            ttl: if message.dedup {
                node.config.dedup_ttl.as_secs().max(1)
            } else {
                0
            },
            sender: message.sender_id,
            micros,
            traceparent: traceparent.to_owned(),
            head: head.clone(),
            reply: tokio::sync::oneshot::channel().0,
        };
        match node.redis.number(job).await {
            Ok(cseq) => return Some((cseq, conversation::complete(&head, cseq))),
            Err(e) => {
                let possible = node.redis.number_failover_possible(&conv);
                let verdict = node
                    .failover
                    .after_failure(possible, &mut failing_since)
                    .await;
                if verdict == Verdict::Hopeless && !reconnected {
                    // The first command after Redis restarted fails on the
                    // old connection; the next one reconnects.
                    reconnected = true;
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
                if verdict != Verdict::Retry {
                    tracing::warn!(error = %e, conversation = conv, "cannot number a chat; it goes out without a conversation number");
                    metrics().unnumbered.inc();
                    return None;
                }
            }
        }
    }
}

/// Records one message for each receiver (see [`deliver`]).
async fn record(
    node: &Node,
    receivers: &[i64],
    message: &Outgoing<'_>,
    micros: u64,
    traceparent: &str,
    span: &tracing::Span,
    started: std::time::Instant,
) -> Vec<Result<(), Failure>> {
    let tail = entry_tail(
        &message.mid,
        message.sender_id,
        micros,
        traceparent,
        message.frame,
    );
    let targets: Vec<AppendTo> = receivers
        .iter()
        .map(|&user| AppendTo {
            user,
            // A classic session here holds the user alone; device
            // sessions may be on other nodes too.
            publish: !node.registry.holds_alone(user),
        })
        .collect();
    let mut dedup = if message.dedup {
        Dedup::Key(node.config.dedup_ttl)
    } else {
        Dedup::None
    };
    // A receiver this node stored chats for while Redis was unreachable
    // gets those in their inbox first (the sender's order); while that
    // fails, this chat joins them in the offline store.
    let mut held = vec![false; targets.len()];
    node.offline.refresh_owed().await;
    for (i, to) in targets.iter().enumerate() {
        if node.offline.owes(to.user) {
            match sync::repay_offline(node, to.user).await {
                Ok(true) => node.offline.repaid(to.user),
                // Full: this chat is refused for the same reason.
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, user = to.user, "cannot move chats stored offline to the inbox yet");
                    held[i] = true;
                }
            }
        }
    }
    // On a cluster, a shard failing over answers again within seconds:
    // waiting for it keeps this sender's chats in order (a copy the
    // failed attempt may have left is written once, by message id).
    // Only the receivers whose append failed are tried again.
    let mut appended: Vec<Option<Appended>> = vec![None; targets.len()];
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let pending: Vec<usize> = (0..targets.len())
            .filter(|&i| appended[i].is_none() && !held[i])
            .collect();
        if pending.is_empty() {
            break;
        }
        let attempt_targets: Vec<AppendTo> = pending
            .iter()
            .map(|&i| AppendTo {
                user: targets[i].user,
                publish: targets[i].publish,
            })
            .collect();
        let results = node
            .redis
            .append_each(
                &attempt_targets,
                &message.mid,
                &tail,
                node.config.limits.max_inbox,
                dedup,
            )
            .instrument(span.clone())
            .await;
        let mut failed = Vec::new();
        let mut error = None;
        for (&i, result) in pending.iter().zip(results) {
            match result {
                Ok(done) => appended[i] = Some(done),
                Err(e) => {
                    failed.push(targets[i].user);
                    error = Some(e);
                }
            }
        }
        let Some(e) = error else { break };
        tracing::debug!(error = %e, "append failed");
        // The failed attempt may have landed (a reply that timed out).
        dedup = Dedup::Retry(node.config.dedup_ttl);
        let possible = node.redis.failover_possible(&failed);
        match node
            .failover
            .after_failure(possible, &mut failing_since)
            .await
        {
            Verdict::Retry => {}
            Verdict::Hopeless => {
                tracing::warn!(error = %e, receivers = failed.len(), "cannot record in redis; storing with the offline service");
                break;
            }
            Verdict::WaitedOut => {
                tracing::warn!(error = %e, receivers = failed.len(), "no failover came; storing with the offline service");
                break;
            }
        }
    }
    // Receivers Redis did not take: the offline service instead.
    let unrecorded: Vec<i64> = (0..targets.len())
        .filter(|&i| appended[i].is_none())
        .map(|i| targets[i].user)
        .collect();
    let mut stored = if unrecorded.is_empty() {
        Vec::new()
    } else {
        store_all_offline(node, &unrecorded, message).await
    }
    .into_iter();
    let count = |route: &'static str| {
        metrics()
            .deliveries
            .get_or_create(&label("route", route))
            .inc();
    };
    targets
        .iter()
        .zip(appended)
        .map(|(to, appended)| match appended {
            None => stored.next().unwrap_or_else(|| {
                Err(Failure::new(
                    errno::UNAVAILABLE,
                    "could not record the message; try again".to_owned(),
                ))
            }),
            Some(appended) => match appended {
                Appended::Recorded {
                    seq,
                    subscribers: None,
                } => {
                    let handoff = node.registry.hand_off(to.user, || {
                        Delivery::new(seq, message.mid.clone(), message.frame.to_vec())
                    });
                    if handoff == Handoff::Absent {
                        // Left this node meanwhile: maybe logged in elsewhere
                        // (told to read its stores: it may have read its
                        // inbox before this landed), maybe gone.
                        node.offline.move_inbox_later(to.user);
                        node.offline.nudge_later(to.user);
                    }
                    count("local");
                    metrics()
                        .delivery_latency
                        .get_or_create(&label("path", "local"))
                        .observe(started.elapsed().as_secs_f64());
                    Ok(())
                }
                Appended::Recorded {
                    subscribers: Some(0),
                    ..
                } => {
                    count("offline");
                    node.offline.move_inbox_later(to.user);
                    Ok(())
                }
                Appended::Recorded { .. } => {
                    count("remote");
                    Ok(())
                }
                Appended::Duplicate { .. } => Ok(()),
                Appended::InboxFull => Err(Failure::new(
                    errno::BACKLOG_FULL,
                    format!(
                        "user {} has {} undelivered messages; this one was not accepted",
                        to.user, node.config.limits.max_inbox
                    ),
                )),
                Appended::InboxBytesFull => Err(Failure::new(
                    errno::BACKLOG_FULL,
                    format!(
                        "user {}'s undelivered messages take {} bytes; this one was not accepted",
                        to.user, node.config.limits.max_inbox_bytes
                    ),
                )),
            },
        })
        .collect()
}

/// Redis is down: each receiver's copy goes to the offline service, a few
/// at a time, each with the message id as its idempotency key.
async fn store_all_offline(
    node: &Node,
    receivers: &[i64],
    message: &Outgoing<'_>,
) -> Vec<Result<(), Failure>> {
    let mut results = Vec::with_capacity(receivers.len());
    for chunk in receivers.chunks(16) {
        let stores: Vec<_> = chunk
            .iter()
            .map(|&receiver| {
                node.offline.store(offline_pb::StoreRequest {
                    receiver_id: receiver,
                    sender_id: message.sender_id,
                    client_msg_id: message.mid.clone(),
                    payload: String::from_utf8_lossy(message.frame).into_owned(),
                    inbox_seq: 0,
                })
            })
            .collect();
        results.extend(futures::future::join_all(stores).await);
    }
    node.offline.outage_seen();
    // Receivers on this node read it from there now; the nodes of
    // those elsewhere are told as soon as Redis answers again.
    for (&receiver, stored) in receivers.iter().zip(&results) {
        if stored.is_ok() {
            node.offline.owe(receiver);
        }
        if stored.is_ok() && !node.registry.contains(receiver) {
            node.offline.nudge_later(receiver);
        } else if stored.is_ok() {
            node.registry.sync_offline(receiver);
        }
    }
    metrics()
        .deliveries
        .get_or_create(&label("route", "offline"))
        .inc_by(results.iter().filter(|r| r.is_ok()).count() as u64);
    results
}
