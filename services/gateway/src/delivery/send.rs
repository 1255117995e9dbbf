//! One chat to its receivers: numbered in its conversation (for history)
//! and recorded in each receiver's inbox (on a single Redis in one script
//! call; on a cluster one after the other), which publishes it to the node
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
    redis::{AppendTo, Appended, Dedup, Numbering, UnitChat, entry_tail},
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

/// The dedup TTL in seconds a chat's numbering keeps its mid (0: the chat
/// has no client id, nothing to deduplicate).
fn numbering_ttl(node: &Node, message: &Outgoing<'_>) -> u64 {
    if message.dedup {
        node.config.dedup_ttl.as_secs().max(1)
    } else {
        0
    }
}

/// A fresh message id, 32 hex digits (128 bits), unique without a client
/// id. Its first 12 hex digits are the time in milliseconds, the other 20
/// random (80 bits): ids made close in time sort close, so history's
/// unique index on `mid` takes each new one next to the last instead of on
/// a random page of the index (a random key costs InnoDB a page read and
/// written per row once the index outgrows its buffer pool).
pub fn new_message_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let random = rand::random::<u128>() >> 48;
    format!("{:012x}{random:020x}", millis & 0xffff_ffff_ffff)
}

/// Records one message for each receiver (one script each, one pipeline
/// for all), hands it to receivers on this node, and moves it to the
/// offline store for receivers nobody holds. When Redis is down, stores
/// it with the offline service instead. One result per receiver, in
/// order: a failure means that receiver will not get this message.
pub async fn deliver(node: &Node, receivers: &[i64], message: &Outgoing<'_>) -> Delivered {
    deliver_attempted(node, receivers, message, false, None).await
}

/// [`deliver`]; `attempted`: an earlier attempt may have recorded it
/// (its outcome is unknown), so the first append looks for it by message
/// id, as a retry does. `numbered`: the earlier attempt numbered it and
/// `message.frame` carries that number (it is appended as it is).
async fn deliver_attempted(
    node: &Node,
    receivers: &[i64],
    message: &Outgoing<'_>,
    attempted: bool,
    numbered: Option<u64>,
) -> Delivered {
    let started = std::time::Instant::now();
    let span = tracing::info_span!(
        "redis.append",
        otel.kind = "producer",
        db.system = "redis",
        messaging.batch.message_count = receivers.len(),
    );
    let micros = now_micros();
    let traceparent = telemetry::propagation::traceparent(&span);
    // Numbered in the appender's batch that appends it: on a single Redis
    // in the same script call; on a cluster just before, in its
    // conversation's slot (`redis/append.rs`).
    let head = match numbered {
        Some(_) => None,
        None => conversation::numbered_head(message.frame, &message.conversation),
    };
    let (results, cseq) = record(
        node,
        receivers,
        message,
        head,
        Stamp {
            micros,
            traceparent: &traceparent,
            span: &span,
            started,
        },
        attempted,
    )
    .await;
    let cseq = cseq.or(numbered);
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

/// A session's burst: consecutive one-to-one chats of one sender to one
/// receiver, already read from the connection. Their first attempt is one
/// unit of the appender (`redis::Redis::number_and_append_unit`): the
/// chats share its batch's calls instead of each waiting for the one
/// before, and are recorded or fail together, in order. From the first
/// chat that was not recorded on, the rest go one by one as [`deliver`]
/// sends a chat (waiting out a failover, the offline store), each looked
/// for by message id first, so the receiver still gets them once and in
/// order. A receiver owed chats stored offline takes the one-by-one path
/// from the start. One [`Delivered`] per chat, in order; `spans`: each
/// chat's request span.
pub async fn deliver_unit(
    node: &Node,
    to: i64,
    messages: &[Outgoing<'_>],
    spans: &[tracing::Span],
) -> Vec<Delivered> {
    let mut out = Vec::with_capacity(messages.len());
    node.offline.refresh_owed().await;
    let heads: Option<Vec<Vec<u8>>> = messages
        .iter()
        .map(|m| conversation::numbered_head(m.frame, &m.conversation))
        .collect();
    let heads = match heads {
        Some(heads) if messages.len() > 1 && !node.offline.owes(to) => heads,
        _ => {
            for (message, span) in messages.iter().zip(spans) {
                out.push(deliver(node, &[to], message).instrument(span.clone()).await);
            }
            return out;
        }
    };
    let started = std::time::Instant::now();
    let micros = now_micros();
    // One append span per chat, each in its request's trace.
    let appends: Vec<tracing::Span> = spans
        .iter()
        .map(|parent| {
            tracing::info_span!(
                parent: parent,
                "redis.append",
                otel.kind = "producer",
                db.system = "redis",
                messaging.batch.message_count = 1,
            )
        })
        .collect();
    let traceparents: Vec<String> = appends
        .iter()
        .map(telemetry::propagation::traceparent)
        .collect();
    let tails: Vec<Vec<u8>> = messages
        .iter()
        .zip(&heads)
        .zip(&traceparents)
        .map(|((m, head), tp)| entry_tail(&m.mid, m.sender_id, micros, tp, head))
        .collect();
    let chats = messages
        .iter()
        .zip(&heads)
        .zip(&tails)
        .zip(&traceparents)
        .map(|(((m, head), tail), tp)| UnitChat {
            mid: &m.mid,
            tail,
            numbering: Numbering {
                conversation: m.conversation.to_string(),
                ttl: numbering_ttl(node, m),
                sender: m.sender_id,
                micros,
                traceparent: tp.clone(),
                head_at: tail.len() - head.len(),
            },
            dedup: if m.dedup {
                Dedup::Key(node.config.dedup_ttl)
            } else {
                Dedup::None
            },
        })
        .collect();
    let target = AppendTo {
        user: to,
        // As `record`: a classic session here holds the user alone.
        publish: !node.registry.holds_alone(to),
    };
    let first = node
        .redis
        .number_and_append_unit(target, chats, node.config.limits.max_inbox)
        .instrument(appends.first().cloned().unwrap_or_else(tracing::Span::none))
        .await;
    let mut one_by_one = false;
    for (((message, head), span), (cseq, result)) in
        messages.iter().zip(&heads).zip(spans).zip(first)
    {
        match (cseq, result) {
            (Some(cseq), Ok(appended)) if !one_by_one => {
                let frame = conversation::complete(head, cseq);
                let numbered = Outgoing {
                    frame: &frame,
                    mid: message.mid.clone(),
                    ..*message
                };
                let result = outcome(node, to, appended, &numbered, started);
                if result.is_err() {
                    // Refused (the inbox is full): not in history either.
                    node.redis
                        .retract(&message.conversation.to_string(), &message.mid, cseq)
                        .await;
                }
                out.push(Delivered {
                    results: vec![result],
                    cseq: Some(cseq),
                });
            }
            (cseq, result) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "a burst's append failed; the rest go one by one");
                }
                one_by_one = true;
                // Numbered already (a cluster numbers before it appends):
                // appended with that number, not numbered again.
                let frame = cseq.map(|n| conversation::complete(head, n));
                let message = Outgoing {
                    frame: frame.as_deref().unwrap_or(message.frame),
                    mid: message.mid.clone(),
                    ..*message
                };
                out.push(
                    deliver_attempted(node, &[to], &message, true, cseq)
                        .instrument(span.clone())
                        .await,
                );
            }
        }
    }
    out
}

/// A group chat: numbered and written once, to the group's log
/// (`redis/group_log.rs`), and published once to the nodes holding its
/// members, whatever their number. When Redis cannot take it (down, a
/// failover that did not come) it is refused for every member ("try
/// again"): a group's chats have one path, so a member gets them in order
/// (the offline service would be a second one, read in another order).
pub async fn to_group(
    node: &Node,
    group: i64,
    receivers: &[i64],
    message: &Outgoing<'_>,
) -> Delivered {
    let span = tracing::info_span!(
        "redis.group_log",
        otel.kind = "producer",
        db.system = "redis",
        group,
        members = receivers.len(),
    );
    let refused = |why: &str| Delivered {
        results: receivers
            .iter()
            .map(|_| Err(Failure::new(errno::UNAVAILABLE, why.to_owned())))
            .collect(),
        cseq: None,
    };
    let Some(head) = conversation::numbered_head(message.frame, &message.conversation) else {
        return refused("a group chat must be a JSON object");
    };
    let micros = now_micros();
    let traceparent = telemetry::propagation::traceparent(&span);
    // Always by message id: a numbering retried after a lost reply finds
    // the first one's number and writes no second log entry.
    let message = &Outgoing {
        dedup: true,
        mid: message.mid.clone(),
        ..*message
    };
    let Some((cseq, frame)) = number(
        node,
        message,
        &head,
        micros,
        &traceparent,
        crate::redis::group_log::GROUP_LOG_MAX_LEN,
    )
    .instrument(span.clone())
    .await
    else {
        return refused("the group chat could not be recorded (Redis is unavailable); try again");
    };
    let mut entry = format!("{cseq} ").into_bytes();
    entry.extend(entry_tail(
        &message.mid,
        message.sender_id,
        micros,
        &traceparent,
        &frame,
    ));
    if let Err(e) = node
        .redis
        .publish_group(group, &entry)
        .instrument(span)
        .await
    {
        // It is in the log: members' sessions read it at their next sync
        // (the group's next chat, a resubscribe, a login).
        tracing::warn!(error = %e, group, "cannot publish a group chat; members read it from the log later");
    }
    metrics()
        .deliveries
        .get_or_create(&label("route", "group"))
        .inc();
    Delivered {
        results: receivers.iter().map(|_| Ok(())).collect(),
        cseq: Some(cseq),
    }
}

/// How long a numbering that failed once waits before its second attempt.
const RECONNECT_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Numbers the chat in its conversation and records it for the history
/// service (the frame gets `conv` and `cseq`), and, when `log` is not 0, in
/// its conversation's log capped at `log` entries. On a cluster a failing
/// shard is waited for as an append is; `None` when it cannot be done
/// (Redis down: the chat still goes out, without a number).
async fn number(
    node: &Node,
    message: &Outgoing<'_>,
    head: &[u8],
    micros: u64,
    traceparent: &str,
    log: u64,
) -> Option<(u64, Vec<u8>)> {
    let conv = message.conversation.to_string();
    let mut failing_since: Option<std::time::Instant> = None;
    let mut reconnected = false;
    loop {
        let job = crate::redis::number::NumberJob {
            conversation: conv.clone(),
            mid: message.mid.clone(),
            ttl: numbering_ttl(node, message),
            sender: message.sender_id,
            micros,
            traceparent: traceparent.to_owned(),
            head: head.to_vec(),
            log,
            reply: tokio::sync::oneshot::channel().0,
        };
        match node.redis.number(job).await {
            Ok(cseq) => return Some((cseq, conversation::complete(head, cseq))),
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

/// When and in which trace a chat was sent.
struct Stamp<'a> {
    micros: u64,
    traceparent: &'a str,
    span: &'a tracing::Span,
    started: std::time::Instant,
}

/// Records one message for each receiver (see [`deliver`]). With `head`
/// (the frame's numbered head, single Redis only) the first attempt
/// numbers the chat too; returns its number then.
async fn record(
    node: &Node,
    receivers: &[i64],
    message: &Outgoing<'_>,
    mut head: Option<Vec<u8>>,
    stamp: Stamp<'_>,
    attempted: bool,
) -> (Vec<Result<(), Failure>>, Option<u64>) {
    let Stamp {
        micros,
        traceparent,
        span,
        started,
    } = stamp;
    let mut tail = entry_tail(
        &message.mid,
        message.sender_id,
        micros,
        traceparent,
        head.as_deref().unwrap_or(message.frame),
    );
    let frame_at = tail.len() - head.as_ref().map_or(message.frame.len(), Vec::len);
    let mut cseq = None;
    // The frame as receivers get it (numbered once the first call numbered it).
    let mut frame = message.frame.to_vec();
    let targets: Vec<AppendTo> = receivers
        .iter()
        .map(|&user| AppendTo {
            user,
            // A classic session here holds the user alone; device
            // sessions may be on other nodes too.
            publish: !node.registry.holds_alone(user),
        })
        .collect();
    let mut dedup = if attempted {
        Dedup::Retry(node.config.dedup_ttl)
    } else if message.dedup {
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
    let mut merged_attempts = 0;
    // On a cluster the numbering (the conversation's shard) can fail while
    // the inboxes' shards answer.
    let mut numbering_failed = false;
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
        let results = match head.take() {
            Some(numbered_head) => {
                let numbering = Numbering {
                    conversation: message.conversation.to_string(),
                    ttl: numbering_ttl(node, message),
                    sender: message.sender_id,
                    micros,
                    traceparent: traceparent.to_owned(),
                    head_at: frame_at,
                };
                let (numbered, results) = node
                    .redis
                    .number_and_append(
                        &attempt_targets,
                        &message.mid,
                        &tail,
                        numbering,
                        node.config.limits.max_inbox,
                        dedup,
                    )
                    .instrument(span.clone())
                    .await;
                match numbered {
                    Some(n) => {
                        // Retries append the numbered frame.
                        cseq = Some(n);
                        frame = conversation::complete(&numbered_head, n);
                        tail.truncate(frame_at);
                        tail.extend_from_slice(&frame);
                    }
                    // The call failed: the next attempt numbers it again.
                    None => head = Some(numbered_head),
                }
                numbering_failed = numbered.is_none();
                merged_attempts += 1;
                results
            }
            None => {
                node.redis
                    .append_each(
                        &attempt_targets,
                        &message.mid,
                        &tail,
                        node.config.limits.max_inbox,
                        dedup,
                    )
                    .instrument(span.clone())
                    .await
            }
        };
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
        let conversation = message.conversation.to_string();
        let possible = node.redis.failover_possible(&failed)
            || (numbering_failed && node.redis.number_failover_possible(&conversation));
        match node
            .failover
            .after_failure(possible, &mut failing_since)
            .await
        {
            Verdict::Retry => {}
            // A cluster whose conversation shard cannot number it: the
            // chat goes on without a number, to the inboxes (as a chat
            // numbered apart did before the appender numbered it).
            Verdict::Hopeless | Verdict::WaitedOut
                if numbering_failed && node.redis.is_cluster() && merged_attempts > 1 =>
            {
                if head.take().is_some() {
                    tracing::warn!(
                        conversation,
                        "cannot number a chat; it goes out without a conversation number"
                    );
                    metrics().unnumbered.inc();
                    tail.truncate(frame_at);
                    tail.extend_from_slice(message.frame);
                }
                numbering_failed = false;
                failing_since = None;
            }
            // The first command after Redis restarted fails on the old
            // connection; the next one reconnects (for a chat numbered as
            // it is appended, as a numbering on its own is retried).
            Verdict::Hopeless if head.is_some() && merged_attempts == 1 => {
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
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
    if let Some(numbered_head) = head {
        let numbered = if merged_attempts == 0 {
            // Nobody to append to (every receiver waits for chats stored
            // offline): numbered on its own.
            let message = &Outgoing {
                frame: message.frame,
                mid: message.mid.clone(),
                ..*message
            };
            number(node, message, &numbered_head, micros, traceparent, 0)
                .instrument(span.clone())
                .await
        } else {
            // Redis is down: the chat goes on without a number.
            tracing::warn!(conversation = %message.conversation, "cannot number a chat; it goes out without a conversation number");
            metrics().unnumbered.inc();
            None
        };
        if let Some((n, numbered_frame)) = numbered {
            cseq = Some(n);
            frame = numbered_frame;
        }
    }
    let message = &Outgoing {
        frame: &frame,
        mid: message.mid.clone(),
        ..*message
    };
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
    let results = targets
        .iter()
        .zip(appended)
        .map(|(to, appended)| match appended {
            None => stored.next().unwrap_or_else(|| {
                Err(Failure::new(
                    errno::UNAVAILABLE,
                    "could not record the message; try again".to_owned(),
                ))
            }),
            Some(appended) => outcome(node, to.user, appended, message, started),
        })
        .collect();
    (results, cseq)
}

/// What a receiver's recorded (or refused) append means for the sender:
/// handed over here, published, or refused with a reason.
fn outcome(
    node: &Node,
    to: i64,
    appended: Appended,
    message: &Outgoing<'_>,
    started: std::time::Instant,
) -> Result<(), Failure> {
    let count = |route: &'static str| {
        metrics()
            .deliveries
            .get_or_create(&label("route", route))
            .inc();
    };
    match appended {
        Appended::Recorded {
            seq,
            subscribers: None,
        } => {
            let handoff = node.registry.hand_off(to, || {
                Delivery::new(seq, message.mid.clone(), message.frame.to_vec())
            });
            if handoff == Handoff::Absent {
                // Left this node meanwhile: maybe logged in elsewhere
                // (told to read its stores: it may have read its
                // inbox before this landed), maybe gone.
                node.offline.move_inbox_later(to);
                node.offline.nudge_later(to);
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
            node.offline.move_inbox_later(to);
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
                to, node.config.limits.max_inbox
            ),
        )),
        Appended::InboxBytesFull => Err(Failure::new(
            errno::BACKLOG_FULL,
            format!(
                "user {}'s undelivered messages take {} bytes; this one was not accepted",
                to, node.config.limits.max_inbox_bytes
            ),
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_32_hex_digits_unique_and_sort_by_time() {
        let first = new_message_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let ids: Vec<String> = (0..1000).map(|_| new_message_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            assert!(*id > first, "a later id sorts after: {id} vs {first}");
        }
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }
}
