//! The bus: what travels on users' channels and the control channel.
//!
//! A user's channel `{prefix}{u:ID}` carries the inbox entries published by
//! APPEND and a few messages never recorded anywhere (an offline-store
//! nudge, a device's arrival, live frames), all understood by
//! [`ChannelMessage::parse`]. `{prefix}ctl` carries cache invalidations
//! between nodes. The subscriber (`subscriber.rs`) hands what arrives to
//! the node as [`BusEvent`]s through a [`BusBacklog`] bounded in bytes.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::{mpsc, oneshot};

use super::{Grouped, Redis, RedisError, inbox::InboxEntry};

/// What the subscriber hands to the node.
#[derive(Debug)]
pub enum BusEvent {
    /// An inbox entry published for a user this node subscribed to.
    ForUser { user: i64, entry: Vec<u8> },
    /// A group log entry published for a group this node subscribed to.
    ForGroup { group: i64, entry: Vec<u8> },
    /// A cache invalidation from some node (maybe this one).
    Control(Vec<u8>),
    /// These users' subscriptions were restored (a connection dropped, a
    /// shard failed over, a slot moved): whatever was published meanwhile
    /// must be read from their stores (a group's: from its log).
    Resync(Vec<Topic>),
    /// A user's presence key expired: no session refreshed it (their node
    /// died, froze or lost Redis), so they are offline. Every node hears it.
    PresenceExpired(i64),
}

/// What [`Redis`](super::Redis) asks of the subscriber.
pub(super) enum SubCommand {
    Subscribe(String, oneshot::Sender<Result<(), RedisError>>),
    Unsubscribe(String),
}

/// Whose a channel is: a user's, or a group's log's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    User(i64),
    Group(i64),
}

/// The topic of a channel: `{prefix}{u:ID}` (given `{prefix}{u:`) or
/// `{prefix}{h:N}:l:g:GID` (given `{prefix}{h:`).
pub(super) fn topic_of_channel(prefix: &str, channel: &str) -> Option<Topic> {
    let rest = channel.strip_prefix(prefix)?;
    if let Some(user) = rest.strip_prefix("{u:") {
        return user.strip_suffix('}')?.parse().ok().map(Topic::User);
    }
    let (_, group) = rest.strip_prefix("{h:")?.split_once("}:l:g:")?;
    group.parse().ok().map(Topic::Group)
}

/// The keyspace notifications of presence keys (database 0): each
/// subscriber connection listens to this pattern, for presence that ran
/// out. Redis publishes there with `notify-keyspace-events` holding `K`
/// and `x` (the subscriber turns them on where Redis lets it); only the
/// connections with this pattern get anything, and only for presence keys.
pub(super) fn presence_events_pattern(prefix: &str) -> String {
    format!("{KEYSPACE}{prefix}{{u:*}}:p")
}

const KEYSPACE: &str = "__keyspace@0__:";

/// The user whose presence key `channel` (of [`presence_events_pattern`])
/// is about: `__keyspace@0__:{prefix}{u:ID}:p`.
pub(super) fn user_of_presence_channel(prefix: &str, channel: &str) -> Option<i64> {
    channel
        .strip_prefix(KEYSPACE)?
        .strip_prefix(prefix)?
        .strip_prefix("{u:")?
        .strip_suffix("}:p")?
        .parse()
        .ok()
}

/// What waits between the subscriber and the node, bounded in bytes: past
/// the bound an entry is not queued (it is in the inbox) and its user is
/// noted, for the node to make that session read its inbox. The subscriber
/// never waits for the node, so redis-rs's own buffer stays empty.
#[derive(Debug)]
pub struct BusBacklog {
    bytes: AtomicUsize,
    max: usize,
    overflowed: Mutex<HashSet<Topic>>,
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

    /// Queues a user's or a group's entry unless the backlog is full (in
    /// bytes or count).
    pub(super) fn offer(
        &self,
        events: &mpsc::Sender<BusEvent>,
        topic: Topic,
        entry: Vec<u8>,
    ) -> Result<(), ()> {
        let len = entry.len();
        if self.bytes.fetch_add(len, Ordering::AcqRel) + len > self.max {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            self.overflow(topic);
            return Ok(());
        }
        let event = match topic {
            Topic::User(user) => BusEvent::ForUser { user, entry },
            Topic::Group(group) => BusEvent::ForGroup { group, entry },
        };
        match events.try_send(event) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.bytes.fetch_sub(len, Ordering::AcqRel);
                self.overflow(topic);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        }
    }

    fn overflow(&self, topic: Topic) {
        crate::metrics::metrics()
            .overflowed
            .get_or_create(&crate::metrics::label("queue", "bus"))
            .inc();
        self.overflowed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic);
        self.notify.notify_one();
    }

    /// The node took an entry off the queue.
    pub fn taken(&self, event: &BusEvent) {
        if let BusEvent::ForUser { entry, .. } | BusEvent::ForGroup { entry, .. } = event {
            self.bytes.fetch_sub(entry.len(), Ordering::AcqRel);
        }
    }

    /// Waits until some entry was left out, then says whose.
    pub async fn overflowed(&self) -> Vec<Topic> {
        loop {
            let users: Vec<Topic> = self
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

/// Published on a user's channel (never recorded): "read your offline store".
const OFFLINE_NUDGE: &[u8] = b"0 sync\n";

/// Published on a user's channel, never recorded: a frame for the user's
/// sessions that use the additions (a read receipt, typing, a chat sent
/// from another device), except the session `except` (`node/connection`).
fn live_entry(except: &str, frame: &[u8]) -> Vec<u8> {
    let mut entry = format!("0 live {except}\n").into_bytes();
    entry.extend_from_slice(frame);
    entry
}

/// Published on a user's channel, never recorded: a presence change
/// (msgid 22) for the user's sessions that asked for them at login.
fn presence_entry(frame: &[u8]) -> Vec<u8> {
    let mut entry = b"0 presence\n".to_vec();
    entry.extend_from_slice(frame);
    entry
}

/// Published on a user's channel, never recorded: end the user's sessions
/// but `except` (`node/connection`, or `-` for none): they logged out
/// everywhere, or changed their password.
fn signout_entry(except: &str) -> Vec<u8> {
    format!("0 signout {except}\n").into_bytes()
}

/// Published on a user's channel when one of their devices logs in: the
/// sessions of the user elsewhere start sending their own chats to their
/// other devices.
const DEVICE_JOINED: &[u8] = b"0 peers\n";

/// (except, frame) of a [`live_entry`]; `None` for anything else.
fn parse_live(entry: &[u8]) -> Option<(&str, &[u8])> {
    let rest = entry.strip_prefix(b"0 live ")?;
    let newline = rest.iter().position(|&b| b == b'\n')?;
    Some((
        std::str::from_utf8(&rest[..newline]).ok()?,
        &rest[newline + 1..],
    ))
}

/// A message on a user's channel, understood: the one place where the
/// bytes published there are told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelMessage {
    /// An inbox entry, published by APPEND with its recording.
    Entry(InboxEntry),
    /// [`OFFLINE_NUDGE`]: the user's offline store has messages to read.
    SyncOffline,
    /// [`DEVICE_JOINED`]: one of the user's devices logged in.
    PeersJoined,
    /// A [`live_entry`]: a frame for the user's sessions except `except`
    /// (`node/connection`).
    Live { except: String, frame: Vec<u8> },
    /// A [`presence_entry`]: a friend's or fellow member's presence changed.
    Presence(Vec<u8>),
    /// A [`signout_entry`]: end the user's sessions but `except`.
    SignOut { except: String },
}

impl ChannelMessage {
    /// What `bytes` published on a user's channel are; `None` when
    /// malformed. In this order: [`OFFLINE_NUDGE`] and [`DEVICE_JOINED`]
    /// exactly, anything starting `0 live ` as a [`live_entry`], anything
    /// else as an inbox entry. The buffer becomes the frame (no copy of it).
    pub fn parse(bytes: Vec<u8>) -> Option<Self> {
        if bytes == OFFLINE_NUDGE {
            Some(Self::SyncOffline)
        } else if bytes == DEVICE_JOINED {
            Some(Self::PeersJoined)
        } else if let Some(rest) = bytes.strip_prefix(b"0 signout ") {
            let except = std::str::from_utf8(rest.strip_suffix(b"\n")?).ok()?;
            Some(Self::SignOut {
                except: except.to_owned(),
            })
        } else if bytes.starts_with(b"0 presence\n") {
            let mut frame = bytes;
            frame.drain(..b"0 presence\n".len());
            Some(Self::Presence(frame))
        } else if bytes.starts_with(b"0 live ") {
            let (except, header) = parse_live(&bytes)
                .map(|(except, frame)| (except.to_owned(), bytes.len() - frame.len()))?;
            let mut frame = bytes;
            frame.drain(..header);
            Some(Self::Live { except, frame })
        } else {
            InboxEntry::parse(bytes).map(Self::Entry)
        }
    }
}

impl Redis {
    /// True while the subscriber connection is up.
    pub fn is_subscribed(&self) -> bool {
        self.subscriber_up.load(Ordering::Relaxed)
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

    /// Publishes a [`live_entry`] to each user's channel. Best effort (it is
    /// never recorded anywhere): a failure is logged.
    pub async fn publish_live(&self, users: &[i64], except: &str, frame: &[u8]) {
        self.publish_raw(users, &live_entry(except, frame)).await;
    }

    /// Ends the user's sessions on every node but `except` (a session
    /// address, or `-`).
    pub async fn publish_signout(&self, user: i64, except: &str) {
        self.publish_raw(&[user], &signout_entry(except)).await;
    }

    /// Publishes a presence change to each user's channel, best effort.
    pub async fn publish_presence(&self, users: &[i64], frame: &[u8]) {
        self.publish_raw(users, &presence_entry(frame)).await;
    }

    /// Publishes `entry` as it is to each user's channel, best effort.
    async fn publish_raw(&self, users: &[i64], entry: &[u8]) {
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

    /// Tells the user's sessions elsewhere that one of their devices logged
    /// in ([`DEVICE_JOINED`]), best effort.
    pub async fn announce_device_joined(&self, user: i64) {
        self.publish_raw(&[user], DEVICE_JOINED).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::entry_tail;

    #[test]
    fn a_channel_names_a_user_or_a_group_or_nothing() {
        let topic = |channel: &str| topic_of_channel("cc:", channel);
        assert_eq!(topic("cc:{u:42}"), Some(Topic::User(42)));
        assert_eq!(topic("cc:{h:7}:l:g:9"), Some(Topic::Group(9)));
        assert_eq!(topic("cc:ctl"), None, "the control channel");
        assert_eq!(topic("cc:{h:7}"), None, "a history stream is no channel");
        assert_eq!(topic("cc:{h:7}:l:d:1:2"), None, "only groups have logs");
        assert_eq!(topic("other:{u:42}"), None, "another prefix");
        assert_eq!(topic("cc:{u:x}"), None);
    }

    /// What the node did with a channel's bytes before [`ChannelMessage`].
    fn as_the_node_did(entry: Vec<u8>) -> Option<ChannelMessage> {
        if entry == OFFLINE_NUDGE {
            Some(ChannelMessage::SyncOffline)
        } else if entry == DEVICE_JOINED {
            Some(ChannelMessage::PeersJoined)
        } else if entry.starts_with(b"0 live ") {
            parse_live(&entry).map(|(except, frame)| ChannelMessage::Live {
                except: except.to_owned(),
                frame: frame.to_vec(),
            })
        } else {
            InboxEntry::parse(entry).map(ChannelMessage::Entry)
        }
    }

    #[test]
    fn channel_messages_round_trip() {
        assert_eq!(
            ChannelMessage::parse(OFFLINE_NUDGE.to_vec()),
            Some(ChannelMessage::SyncOffline)
        );
        assert_eq!(
            ChannelMessage::parse(DEVICE_JOINED.to_vec()),
            Some(ChannelMessage::PeersJoined)
        );
        let frame = b"{\"t\":\"typing\",\"x\":\"a\nb\"}";
        assert_eq!(
            ChannelMessage::parse(live_entry("node-1/42", frame)),
            Some(ChannelMessage::Live {
                except: "node-1/42".into(),
                frame: frame.to_vec(),
            })
        );
        assert_eq!(
            ChannelMessage::parse(live_entry("", b"")),
            Some(ChannelMessage::Live {
                except: String::new(),
                frame: Vec::new(),
            })
        );
        let mut entry = b"1795600000000042 ".to_vec();
        entry.extend(entry_tail("abc", 42, 7, "00-abc-def-01", frame));
        assert_eq!(
            ChannelMessage::parse(entry.clone()),
            Some(ChannelMessage::Entry(InboxEntry {
                seq: 1_795_600_000_000_042,
                mid: "abc".into(),
                sender_id: 42,
                sent_micros: 7,
                traceparent: "00-abc-def-01".into(),
                frame: frame.to_vec(),
            }))
        );
    }

    #[test]
    fn channel_messages_are_read_as_the_node_read_them() {
        let mut entry = b"5 ".to_vec();
        entry.extend(entry_tail("m", 7, 1, "", b"{}"));
        let inputs: Vec<Vec<u8>> = vec![
            OFFLINE_NUDGE.to_vec(),
            DEVICE_JOINED.to_vec(),
            live_entry("n/1", b"{}"),
            entry,
            // Not exactly a nudge: read as inbox entries (malformed).
            b"0 sync\n{}".to_vec(),
            b"0 sync".to_vec(),
            b"0 peers\nx".to_vec(),
            // A live prefix without its newline, or not UTF-8: nothing,
            // not an inbox entry.
            b"0 live n/1".to_vec(),
            b"0 live \xff\n{}".to_vec(),
            b"0 live".to_vec(),
            b"0 livestock 1 2\n{}".to_vec(),
            // An inbox entry numbered 0 would look like the rest.
            b"0 m 7 1 \n{}".to_vec(),
            b"".to_vec(),
            b"\n".to_vec(),
            b"no header".to_vec(),
        ];
        for input in inputs {
            assert_eq!(
                ChannelMessage::parse(input.clone()),
                as_the_node_did(input.clone()),
                "{:?}",
                String::from_utf8_lossy(&input)
            );
        }
        assert_eq!(ChannelMessage::parse(b"0 live n/1".to_vec()), None);
        assert_eq!(ChannelMessage::parse(b"0 sync\n{}".to_vec()), None);
    }
}
