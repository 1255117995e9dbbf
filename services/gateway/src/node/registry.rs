//! The sessions of this node, by user: who is here, and where to put a
//! message for them. A user has one classic session, or any number of
//! device sessions (clients that acknowledge), here and on other nodes.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::sync::{Notify, mpsc};

use crate::{
    metrics::{label, metrics},
    node::admission::ByteBudget,
    protocol::client::ClientKind,
};
use tokio_util::sync::CancellationToken;

/// A message on its way to a local session's writer: one inbox entry, or
/// one entry of a group's log.
#[derive(Debug)]
pub struct Delivery {
    /// The receiver's inbox sequence number; for a group log entry, its
    /// `cseq` in the group.
    pub seq: u64,
    /// The group whose log this entry is from (0: an inbox entry).
    pub group: i64,
    /// Who sent it (group log entries: a member's own are not written
    /// back to them).
    pub sender: i64,
    /// The server message id.
    pub mid: String,
    pub frame: Vec<u8>,
    /// Its bytes in the session's queue, given back when it is dropped
    /// (written, or skipped).
    charge: Option<Charge>,
}

impl Delivery {
    pub fn new(seq: u64, mid: String, frame: Vec<u8>) -> Self {
        Self {
            seq,
            group: 0,
            sender: 0,
            mid,
            frame,
            charge: None,
        }
    }

    /// An entry of a group's log.
    pub fn from_log(group: i64, cseq: u64, sender: i64, mid: String, frame: Vec<u8>) -> Self {
        Self {
            group,
            sender,
            ..Self::new(cseq, mid, frame)
        }
    }

    /// A frame that is not an inbox entry (a receipt, typing, a chat sent
    /// from another device): written as it comes, never acknowledged.
    pub fn live(frame: Vec<u8>) -> Self {
        Self::new(0, String::new(), frame)
    }

    pub fn is_live(&self) -> bool {
        self.seq == 0
    }
}

/// Bytes of live deliveries queued for one session, and its bound; each
/// charge also counts against the node's budget for all its sessions'
/// queues together.
#[derive(Debug)]
pub struct QueuedBytes {
    own: ByteBudget,
    node: Arc<ByteBudget>,
}

/// Which bound a delivery did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    /// The session's queue.
    Session,
    /// The node's budget for all queues.
    Node,
}

impl Full {
    fn label(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Node => "node",
        }
    }
}

impl QueuedBytes {
    pub fn new(max: usize, node: Arc<ByteBudget>) -> Arc<Self> {
        Arc::new(Self {
            own: ByteBudget::new(max),
            node,
        })
    }

    fn charge(self: &Arc<Self>, bytes: usize) -> Result<Charge, Full> {
        if !self.own.take(bytes) {
            return Err(Full::Session);
        }
        if !self.node.take(bytes) {
            self.own.give_back(bytes);
            return Err(Full::Node);
        }
        Ok(Charge {
            bytes,
            queue: self.clone(),
        })
    }

    pub fn used(&self) -> usize {
        self.own.used()
    }
}

#[derive(Debug)]
struct Charge {
    bytes: usize,
    queue: Arc<QueuedBytes>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.queue.own.give_back(self.bytes);
        self.queue.node.give_back(self.bytes);
    }
}

/// Tells a session's writer that its live queue is not the whole story
/// (a message was dropped because the queue was full, or the subscriber
/// reconnected): it must read its inbox before writing anything live.
#[derive(Default)]
pub struct SyncSignal {
    needed: AtomicBool,
    /// The offline store may hold messages for the user too (stored while
    /// Redis was unreachable): read it before the inbox.
    offline: AtomicBool,
    notify: Notify,
}

impl SyncSignal {
    pub fn raise(&self) {
        self.needed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub fn raise_with_offline(&self) {
        self.offline.store(true, Ordering::Release);
        self.raise();
    }

    /// Whether the offline store must be read; clears it.
    pub fn take_offline(&self) -> bool {
        self.offline.swap(false, Ordering::AcqRel)
    }

    /// Whether a sync was asked for since the last call; clears it.
    pub fn take(&self) -> bool {
        self.needed.swap(false, Ordering::AcqRel)
    }

    pub async fn raised(&self) {
        self.notify.notified().await;
    }
}

#[derive(Clone)]
pub struct LocalSession {
    pub connection: u64,
    pub deliveries: mpsc::Sender<Delivery>,
    /// The queue's bytes: bounded as well as its count.
    pub queued: Arc<QueuedBytes>,
    pub sync: Arc<SyncSignal>,
    /// Cancelled to end the session from outside (presence lost, shutdown).
    pub kick: CancellationToken,
    /// A device session (the client acknowledges) shares the user with
    /// other device sessions; any other holds the user alone. A client
    /// that uses the additions gets live events (receipts, typing, its own
    /// chats sent from other devices).
    pub kind: ClientKind,
    /// Other sessions of the user exist (here or elsewhere), as last seen:
    /// the chats it sends go to them too.
    pub peers: Arc<AtomicBool>,
    /// The client asked for presence changes (msgid 22) at login.
    pub presence: bool,
    /// Set before `kick` when the user signed out everywhere or changed
    /// their password: the session says so to its client as it ends.
    pub signed_out: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    Queued,
    /// Connected here, but its queue is full (a slow client) or closing.
    Busy,
    /// Not connected to this node.
    Absent,
}

/// One session, as [`Registry::snapshot`] sees it.
pub struct Snapshot {
    pub user: i64,
    pub connection: u64,
    pub device: bool,
    pub kick: CancellationToken,
    pub peers: Arc<AtomicBool>,
}

#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<i64, Vec<LocalSession>>>,
    /// The last connection id handed out.
    last_connection: AtomicU64,
}

/// The cluster-wide address of one of a node's connections, `NODE/CONNECTION`:
/// the field of its presence claim, and the `except` of live events it sends.
pub fn session_address(node_id: &str, connection: u64) -> String {
    format!("{node_id}/{connection}")
}

impl Registry {
    /// A number unique within this node's life, for a new connection.
    pub fn next_connection(&self) -> u64 {
        self.last_connection.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Vec<LocalSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the session; false when its connection has one already, or
    /// when either it or one here holds the user alone (classic).
    pub fn insert(&self, user: i64, session: LocalSession) -> bool {
        let mut sessions = self.lock();
        let here = sessions.entry(user).or_default();
        if here.iter().any(|s| {
            s.connection == session.connection
                || !s.kind.acknowledges()
                || !session.kind.acknowledges()
        }) {
            return false;
        }
        if !here.is_empty() {
            session.peers.store(true, Ordering::Relaxed);
            for other in here.iter() {
                other.peers.store(true, Ordering::Relaxed);
            }
        }
        here.push(session);
        true
    }

    /// Another device of the user logged in somewhere.
    pub fn device_joined(&self, user: i64) {
        if let Some(here) = self.lock().get(&user) {
            for session in here {
                session.peers.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Removes `connection`'s session of the user; `last` runs (under the
    /// registry's lock, so a login here cannot slip in between) when that
    /// was the user's last session on this node.
    pub fn remove(&self, user: i64, connection: u64, last: impl FnOnce()) {
        let mut sessions = self.lock();
        let Some(here) = sessions.get_mut(&user) else {
            return;
        };
        let before = here.len();
        here.retain(|s| s.connection != connection);
        if here.len() < before && here.is_empty() {
            sessions.remove(&user);
            last();
        }
    }

    pub fn contains(&self, user: i64) -> bool {
        self.lock().contains_key(&user)
    }

    /// Whether a classic session here holds the user: then nobody else can
    /// have them, and a message for them need not be published.
    pub fn holds_alone(&self, user: i64) -> bool {
        self.lock()
            .get(&user)
            .is_some_and(|here| here.iter().any(|s| !s.kind.acknowledges()))
    }

    /// Queues a delivery for each of the user's sessions without waiting;
    /// `make` runs once per session that takes it. A queue full in count or
    /// in bytes raises that session's sync signal: the message is in the
    /// inbox, the writer reads it from there when its client catches up.
    /// Queued when some session took it, else Busy, or Absent when none is here.
    pub fn hand_off(&self, user: i64, make: impl Fn() -> Delivery) -> Handoff {
        let targets: Vec<_> = match self.lock().get(&user) {
            Some(here) => here
                .iter()
                .map(|s| (s.deliveries.clone(), s.queued.clone(), s.sync.clone()))
                .collect(),
            None => return Handoff::Absent,
        };
        let mut outcome = Handoff::Busy;
        for (tx, queued, sync) in targets {
            let mut delivery = make();
            let full = match queued.charge(delivery.frame.len() + delivery.mid.len()) {
                Ok(charge) => {
                    delivery.charge = Some(charge);
                    match tx.try_send(delivery) {
                        Ok(()) => None,
                        Err(_) => Some(Full::Session),
                    }
                }
                Err(full) => Some(full),
            };
            match full {
                None => outcome = Handoff::Queued,
                Some(full) => {
                    metrics()
                        .overflowed
                        .get_or_create(&label("queue", full.label()))
                        .inc();
                    sync.raise();
                }
            }
        }
        outcome
    }

    /// Queues a live frame (not an inbox entry) for the user's sessions
    /// that use the additions, except `except` (a connection of this node).
    /// A full queue drops it: live frames are never the only copy of
    /// anything (a receipt or a chat is in history, typing is ephemeral).
    pub fn hand_live(&self, user: i64, except: Option<u64>, frame: &[u8]) {
        self.hand_frame(user, frame, |s| {
            s.kind.uses_additions() && Some(s.connection) != except
        });
    }

    /// Queues `frame` for the user's sessions here that `wanted` picks; a
    /// full queue drops it (counted).
    fn hand_frame(&self, user: i64, frame: &[u8], wanted: impl Fn(&LocalSession) -> bool) {
        let targets: Vec<_> = match self.lock().get(&user) {
            Some(here) => here
                .iter()
                .filter(|s| wanted(s))
                .map(|s| (s.deliveries.clone(), s.queued.clone()))
                .collect(),
            None => return,
        };
        for (tx, queued) in targets {
            let mut delivery = Delivery::live(frame.to_vec());
            delivery.charge = queued.charge(delivery.frame.len()).ok();
            if delivery.charge.is_none() || tx.try_send(delivery).is_err() {
                metrics()
                    .overflowed
                    .get_or_create(&label("queue", "live"))
                    .inc();
            }
        }
    }

    /// Ends the user's sessions here but `except`, saying they were signed
    /// out.
    pub fn sign_out(&self, user: i64, except: Option<u64>) {
        if let Some(here) = self.lock().get(&user) {
            for session in here.iter().filter(|s| Some(s.connection) != except) {
                session.signed_out.store(true, Ordering::Release);
                session.kick.cancel();
            }
        }
    }

    /// Queues a presence change for the user's sessions that asked for
    /// them; a full queue drops it (the next roster has the state).
    pub fn hand_presence(&self, user: i64, frame: &[u8]) {
        self.hand_frame(user, frame, |s| s.presence);
    }

    /// Asks every session to read its offline store and inbox (after the
    /// subscriber reconnected: Redis may have been down, and messages
    /// stored offline meanwhile).
    pub fn sync_all(&self) {
        for session in self.lock().values().flatten() {
            session.sync.raise_with_offline();
        }
    }

    /// Asks the user's sessions, if here, to read their offline store.
    pub fn sync_offline(&self, user: i64) {
        if let Some(here) = self.lock().get(&user) {
            for session in here {
                session.sync.raise_with_offline();
            }
        }
    }

    /// Every session, for presence refresh.
    pub fn snapshot(&self) -> Vec<Snapshot> {
        self.lock()
            .iter()
            .flat_map(|(user, here)| {
                here.iter().map(|s| Snapshot {
                    user: *user,
                    connection: s.connection,
                    device: s.kind.acknowledges(),
                    kick: s.kick.clone(),
                    peers: s.peers.clone(),
                })
            })
            .collect()
    }

    /// How many sessions this node holds.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unbounded() -> Arc<ByteBudget> {
        Arc::new(ByteBudget::new(usize::MAX))
    }

    #[test]
    fn the_node_budget_bounds_all_queues_together() {
        let node = Arc::new(ByteBudget::new(150));
        let first = QueuedBytes::new(100, node.clone());
        let second = QueuedBytes::new(100, node.clone());
        let held = first.charge(80).expect("within both bounds");
        assert_eq!(
            first.charge(30).err(),
            Some(Full::Session),
            "the session's own bound"
        );
        assert_eq!(second.charge(80).err(), Some(Full::Node), "80 + 80 > 150");
        assert_eq!(second.used(), 0, "a refused charge holds nothing");
        assert_eq!(node.used(), 80);
        drop(held);
        assert_eq!(node.used(), 0, "given back with the delivery");
        let _held = second.charge(80).expect("room again");
    }

    #[test]
    fn hand_off_tells_queued_busy_and_absent_apart() {
        let delivery = |seq: u64| move || Delivery::new(seq, format!("m{seq}"), b"{}".to_vec());
        let registry = Registry::default();
        assert_eq!(registry.hand_off(1, delivery(1)), Handoff::Absent);

        let (deliveries, mut queue) = mpsc::channel(1);
        let sync = Arc::new(SyncSignal::default());
        let session = LocalSession {
            connection: 7,
            deliveries,
            queued: QueuedBytes::new(1 << 20, unbounded()),
            sync: sync.clone(),
            kick: CancellationToken::new(),
            presence: false,
            signed_out: Arc::default(),
            kind: ClientKind::Classic,
            peers: Arc::default(),
        };
        assert!(registry.insert(1, session));
        assert_eq!(registry.hand_off(1, delivery(1)), Handoff::Queued);
        assert!(!sync.take());
        assert_eq!(
            registry.hand_off(1, delivery(2)),
            Handoff::Busy,
            "queue of one is full"
        );
        assert!(sync.take(), "a dropped delivery asks for a sync");
        assert!(!sync.take(), "taking clears it");
        assert_eq!(queue.try_recv().expect("queued").seq, 1);

        queue.close();
        assert_eq!(
            registry.hand_off(1, delivery(3)),
            Handoff::Busy,
            "closing counts as busy"
        );
        registry.sync_all();
        assert!(sync.take());
        assert!(
            sync.take_offline(),
            "after a resubscribe, the offline store too"
        );
        assert!(!sync.take_offline());
        registry.remove(1, 8, || panic!("not its session"));
        assert!(
            registry.contains(1),
            "another connection's remove leaves it"
        );
        let mut last = false;
        registry.remove(1, 7, || last = true);
        assert!(last, "its only session");
        assert_eq!(registry.hand_off(1, delivery(4)), Handoff::Absent);
    }

    #[test]
    fn a_queue_full_in_bytes_is_busy_and_gives_bytes_back_when_consumed() {
        let registry = Registry::default();
        let (deliveries, mut queue) = mpsc::channel(100);
        let sync = Arc::new(SyncSignal::default());
        let queued = QueuedBytes::new(100, unbounded());
        let session = LocalSession {
            connection: 1,
            deliveries,
            queued: queued.clone(),
            sync: sync.clone(),
            kick: CancellationToken::new(),
            presence: false,
            signed_out: Arc::default(),
            kind: ClientKind::Classic,
            peers: Arc::default(),
        };
        assert!(registry.insert(1, session));
        let big = |seq: u64| move || Delivery::new(seq, "m".into(), vec![b'x'; 59]);
        assert_eq!(registry.hand_off(1, big(1)), Handoff::Queued);
        assert_eq!(queued.used(), 60);
        assert_eq!(
            registry.hand_off(1, big(2)),
            Handoff::Busy,
            "120 > 100 bytes"
        );
        assert!(sync.take(), "the writer is told to read the inbox");
        assert_eq!(queued.used(), 60, "a refused delivery holds nothing");
        drop(queue.try_recv().expect("queued"));
        assert_eq!(queued.used(), 0, "consumed: its bytes are free again");
        assert_eq!(registry.hand_off(1, big(3)), Handoff::Queued);
    }

    #[test]
    fn device_sessions_share_a_user_and_classic_ones_do_not() {
        let registry = Registry::default();
        let session = |connection: u64, device: bool| {
            let (deliveries, queue) = mpsc::channel(10);
            let session = LocalSession {
                connection,
                deliveries,
                queued: QueuedBytes::new(1 << 20, unbounded()),
                sync: Arc::new(SyncSignal::default()),
                kick: CancellationToken::new(),
                presence: false,
                signed_out: Arc::default(),
                kind: if device {
                    ClientKind::Device
                } else {
                    ClientKind::Additions
                },
                peers: Arc::default(),
            };
            (session, queue)
        };
        let (a, mut qa) = session(1, true);
        let (b, mut qb) = session(2, true);
        let (c, _qc) = session(3, false);
        let (a_peers, b_peers) = (a.peers.clone(), b.peers.clone());
        assert!(!a_peers.load(Ordering::Relaxed));
        assert!(registry.insert(5, a));
        assert!(registry.insert(5, b), "a second device");
        assert!(
            a_peers.load(Ordering::Relaxed) && b_peers.load(Ordering::Relaxed),
            "each knows of the other"
        );
        assert!(
            !registry.insert(5, c),
            "a classic session holds the user alone"
        );
        assert!(!registry.holds_alone(5));
        assert_eq!(
            registry.hand_off(5, || Delivery::new(1, "m1".into(), b"{}".to_vec())),
            Handoff::Queued
        );
        assert_eq!(qa.try_recv().expect("device 1").seq, 1);
        assert_eq!(qb.try_recv().expect("device 2").seq, 1);
        registry.hand_live(5, Some(1), b"{\"msgid\":19}");
        assert!(qa.try_recv().is_err(), "not to the session it came from");
        assert!(qb.try_recv().expect("device 2").is_live());
        let mut last = false;
        registry.remove(5, 1, || last = true);
        assert!(!last, "device 2 is still here");
        registry.remove(5, 2, || last = true);
        assert!(last);
        let (c, _qc) = session(3, false);
        assert!(registry.insert(5, c));
        assert!(registry.holds_alone(5));
        let (d, _qd) = session(4, true);
        assert!(
            !registry.insert(5, d),
            "nor a device next to a classic session"
        );
    }
}
