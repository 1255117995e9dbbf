//! The sessions of this node, by user: who is here, and where to put a
//! message for them.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::sync::{Notify, mpsc};

use crate::metrics::{label, metrics};
use tokio_util::sync::CancellationToken;

/// A message on its way to a local session's writer: one inbox entry.
#[derive(Debug)]
pub struct Delivery {
    /// The receiver's inbox sequence number.
    pub seq: u64,
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
            mid,
            frame,
            charge: None,
        }
    }
}

/// Bytes of live deliveries queued for one session, and its bound.
#[derive(Debug)]
pub struct QueuedBytes {
    used: AtomicUsize,
    max: usize,
}

impl QueuedBytes {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    fn charge(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        if self.used.fetch_add(bytes, Ordering::AcqRel) + bytes > self.max {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            return None;
        }
        Some(Charge {
            bytes,
            queue: self.clone(),
        })
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct Charge {
    bytes: usize,
    queue: Arc<QueuedBytes>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.queue.used.fetch_sub(self.bytes, Ordering::AcqRel);
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    Queued,
    /// Connected here, but its queue is full (a slow client) or closing.
    Busy,
    /// Not connected to this node.
    Absent,
}

#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<i64, LocalSession>>,
}

impl Registry {
    /// Adds the session; false when the user already has one here.
    pub fn insert(&self, user: i64, session: LocalSession) -> bool {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.contains_key(&user) {
            return false;
        }
        sessions.insert(user, session);
        true
    }

    /// Removes the user's session if it is still `connection`'s.
    pub fn remove(&self, user: i64, connection: u64) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions
            .get(&user)
            .is_some_and(|s| s.connection == connection)
        {
            sessions.remove(&user);
        }
    }

    pub fn contains(&self, user: i64) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&user)
    }

    /// Queues a delivery for the user's session without waiting; `make` runs
    /// only when there is a session to take it. A queue full in count or in
    /// bytes raises the session's sync signal: the message is in the inbox,
    /// the writer reads it from there when its client catches up.
    pub fn hand_off(&self, user: i64, make: impl FnOnce() -> Delivery) -> Handoff {
        let target = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
            .map(|s| (s.deliveries.clone(), s.queued.clone(), s.sync.clone()));
        let Some((tx, queued, sync)) = target else {
            return Handoff::Absent;
        };
        let mut delivery = make();
        delivery.charge = queued.charge(delivery.frame.len() + delivery.mid.len());
        let queued = delivery.charge.is_some() && tx.try_send(delivery).is_ok();
        if queued {
            Handoff::Queued
        } else {
            metrics()
                .overflowed
                .get_or_create(&label("queue", "session"))
                .inc();
            sync.raise();
            Handoff::Busy
        }
    }

    /// Asks every session to read its offline store and inbox (after the
    /// subscriber reconnected: Redis may have been down, and messages
    /// stored offline meanwhile).
    pub fn sync_all(&self) {
        for session in self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            session.sync.raise_with_offline();
        }
    }

    /// Asks the user's session, if here, to read its offline store.
    pub fn sync_offline(&self, user: i64) {
        if let Some(session) = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
        {
            session.sync.raise_with_offline();
        }
    }

    /// (user, connection, kick) of every session, for presence refresh.
    pub fn snapshot(&self) -> Vec<(i64, u64, CancellationToken)> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(user, s)| (*user, s.connection, s.kick.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            queued: QueuedBytes::new(1 << 20),
            sync: sync.clone(),
            kick: CancellationToken::new(),
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
        registry.remove(1, 8);
        assert!(
            registry.contains(1),
            "another connection's remove leaves it"
        );
        registry.remove(1, 7);
        assert_eq!(registry.hand_off(1, delivery(4)), Handoff::Absent);
    }

    #[test]
    fn a_queue_full_in_bytes_is_busy_and_gives_bytes_back_when_consumed() {
        let registry = Registry::default();
        let (deliveries, mut queue) = mpsc::channel(100);
        let sync = Arc::new(SyncSignal::default());
        let queued = QueuedBytes::new(100);
        let session = LocalSession {
            connection: 1,
            deliveries,
            queued: queued.clone(),
            sync: sync.clone(),
            kick: CancellationToken::new(),
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
}
