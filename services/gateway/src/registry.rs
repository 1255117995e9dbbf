//! The sessions of this node, by user: who is here, and where to put a
//! message for them.

use std::{collections::HashMap, sync::Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A message on its way to a local session's writer.
#[derive(Debug)]
pub struct Delivery {
    pub sender_id: i64,
    pub frame: Vec<u8>,
}

#[derive(Clone)]
pub struct LocalSession {
    pub connection: u64,
    pub deliveries: mpsc::Sender<Delivery>,
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

    /// Queues a copy of `frame` for the user's session without waiting; the
    /// copy is made only when there is a session to take it.
    pub fn hand_off(&self, user: i64, sender_id: i64, frame: &[u8]) -> Handoff {
        let target = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
            .map(|s| s.deliveries.clone());
        let Some(tx) = target else {
            return Handoff::Absent;
        };
        let delivery = Delivery {
            sender_id,
            frame: frame.to_vec(),
        };
        match tx.try_send(delivery) {
            Ok(()) => Handoff::Queued,
            Err(_) => Handoff::Busy,
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
        let registry = Registry::default();
        assert_eq!(registry.hand_off(1, 9, b"x"), Handoff::Absent);

        let (deliveries, mut queue) = mpsc::channel(1);
        let session = LocalSession {
            connection: 7,
            deliveries,
            kick: CancellationToken::new(),
        };
        assert!(registry.insert(1, session));
        assert_eq!(registry.hand_off(1, 9, b"first"), Handoff::Queued);
        assert_eq!(
            registry.hand_off(1, 9, b"second"),
            Handoff::Busy,
            "queue of one is full"
        );
        let got = queue.try_recv().expect("queued");
        assert_eq!((got.sender_id, got.frame.as_slice()), (9, &b"first"[..]));

        queue.close();
        assert_eq!(
            registry.hand_off(1, 9, b"third"),
            Handoff::Busy,
            "closing counts as busy"
        );
        registry.remove(1, 8);
        assert!(
            registry.contains(1),
            "another connection's remove leaves it"
        );
        registry.remove(1, 7);
        assert_eq!(registry.hand_off(1, 9, b"x"), Handoff::Absent);
    }
}
