//! What arrives on the bus (the Redis subscriptions of this node's users,
//! and the control channel), handed to the sessions here. A user who has
//! left has the message in their inbox; it is moved to the offline store.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::{
    metrics::{label, metrics},
    node::{
        Node,
        failover::now_micros,
        registry::{Delivery, Handoff},
    },
    redis::{BusEvent, ChannelMessage, InboxEntry, Topic},
};

/// Hands what the subscriber received to the sessions, until the
/// subscriber stops; a session whose entry did not fit the subscriber's
/// backlog reads its stores instead.
pub async fn dispatch(node: &Arc<Node>, mut events: mpsc::Receiver<BusEvent>) {
    let backlog = node.redis.backlog.clone();
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { return };
                backlog.taken(&event);
                on_event(node, event);
            }
            topics = backlog.overflowed() => {
                for topic in topics {
                    let user = match topic {
                        Topic::User(user) => user,
                        Topic::Group(group) => {
                            // Its members here read the group's log.
                            for member in node.groups.members(group) {
                                node.registry.sync_offline(member);
                            }
                            continue;
                        }
                    };
                    // What was left out may have been a chat (in the
                    // inbox) or an offline nudge (in the offline store):
                    // the session reads both. A user who left has the
                    // inbox moved, as a publish that reached nobody.
                    if node.registry.contains(user) {
                        node.registry.sync_offline(user);
                    } else {
                        node.offline.move_inbox_later(user);
                    }
                }
            }
        }
    }
}

fn on_event(node: &Arc<Node>, event: BusEvent) {
    match event {
        BusEvent::ForUser { user, entry } => match ChannelMessage::parse(entry) {
            Some(ChannelMessage::SyncOffline) => node.registry.sync_offline(user),
            Some(ChannelMessage::PeersJoined) => node.registry.device_joined(user),
            Some(ChannelMessage::Live { except, frame }) => hand_live(node, user, &except, &frame),
            Some(ChannelMessage::Presence(frame)) => node.registry.hand_presence(user, &frame),
            Some(ChannelMessage::SignOut { except }) => node
                .registry
                .sign_out(user, local_connection(node, &except)),
            Some(ChannelMessage::Entry(entry)) => hand_entry(node, user, entry),
            None => tracing::warn!(user, "dropping a malformed bus message"),
        },
        BusEvent::ForGroup { group, entry } => match InboxEntry::parse(entry) {
            Some(entry) => hand_group_entry(node, group, &entry),
            None => tracing::warn!(group, "dropping a malformed group log entry"),
        },
        BusEvent::PresenceExpired(user) => {
            tokio::spawn(crate::node::presence::expired(node.clone(), user));
        }
        BusEvent::Control(payload) => {
            let text = std::str::from_utf8(&payload).unwrap_or("");
            if let Some(group) = text.strip_prefix("g:").and_then(|g| g.parse().ok()) {
                node.directory.forget_group(group);
            } else if let Some(user) = text.strip_prefix("b:").and_then(|u| u.parse().ok()) {
                node.directory.forget_blocks(user);
            } else if let Some((group, user)) = text
                .strip_prefix("left:")
                .and_then(|rest| rest.split_once(':'))
                .and_then(|(g, u)| Some((g.parse().ok()?, u.parse().ok()?)))
            {
                // A member left: no session of theirs here gets the
                // group's chats any more.
                node.directory.forget_group(group);
                node.groups.leave(&node.redis, user, group);
            }
        }
        // Whatever was published while a subscription was away is in
        // the inbox (or, if Redis was down, the offline store).
        BusEvent::Resync(topics) => {
            // Leases that ran down while Redis was away hold these
            // sessions' writes until the next refresh: now, not later.
            node.lease.refresh_now();
            // Other nodes may have stored chats offline meanwhile.
            node.offline.outage_seen();
            for topic in topics {
                match topic {
                    Topic::User(user) => node.registry.sync_offline(user),
                    // A sync reads the user's group logs too.
                    Topic::Group(group) => {
                        for member in node.groups.members(group) {
                            node.registry.sync_offline(member);
                        }
                    }
                }
            }
        }
    }
}

/// A live event for every session of the user here but the one that sent
/// it (`except`, a session address).
fn hand_live(node: &Node, user: i64, except: &str, frame: &[u8]) {
    node.registry
        .hand_live(user, local_connection(node, except), frame);
}

/// The connection here that a session address (`node/connection`) names.
fn local_connection(node: &Node, address: &str) -> Option<u64> {
    address
        .strip_prefix(node.config.node_id.as_str())
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|conn| conn.parse().ok())
}

/// A chat from a group's log, to the sessions here of the group's members
/// (the sender's own too: their cursor moves past it, nothing is written).
fn hand_group_entry(node: &Node, group: i64, entry: &InboxEntry) {
    let members = node.groups.members(group);
    if members.is_empty() {
        return;
    }
    let span = tracing::info_span!(
        "chat.deliver",
        otel.kind = "consumer",
        group,
        members = members.len()
    );
    telemetry::propagation::set_parent_from_traceparent(&span, &entry.traceparent);
    let _entered = span.enter();
    let mut queued = false;
    for member in members {
        let handoff = node.registry.hand_off(member, || {
            Delivery::from_log(
                group,
                entry.seq,
                entry.sender_id,
                entry.mid.clone(),
                entry.frame.clone(),
            )
        });
        queued |= handoff == Handoff::Queued;
    }
    if queued {
        let waited = now_micros().saturating_sub(entry.sent_micros);
        metrics()
            .delivery_latency
            .get_or_create(&label("path", "group"))
            .observe(waited as f64 / 1e6);
    }
}

/// A chat from the user's inbox, to the user's session here.
fn hand_entry(node: &Node, user: i64, entry: InboxEntry) {
    let span = tracing::info_span!("chat.deliver", otel.kind = "consumer", receiver = user);
    telemetry::propagation::set_parent_from_traceparent(&span, &entry.traceparent);
    let _entered = span.enter();
    let sent_micros = entry.sent_micros;
    let handoff = node.registry.hand_off(user, || {
        Delivery::new(entry.seq, entry.mid.clone(), entry.frame.clone())
    });
    match handoff {
        Handoff::Queued => {
            let waited = now_micros().saturating_sub(sent_micros);
            metrics()
                .delivery_latency
                .get_or_create(&label("path", "remote"))
                .observe(waited as f64 / 1e6);
        }
        Handoff::Busy => {}
        Handoff::Absent => node.offline.move_inbox_later(user),
    }
}
