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

pub enum Handoff {
    Queued,
    /// Not connected here, or its queue is full or closing: the delivery
    /// comes back for the caller to route elsewhere.
    Refused(Delivery),
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

    /// Queues `delivery` for the user's session without waiting.
    pub fn hand_off(&self, user: i64, delivery: Delivery) -> Handoff {
        let target = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
            .map(|s| s.deliveries.clone());
        match target {
            None => Handoff::Refused(delivery),
            Some(tx) => match tx.try_send(delivery) {
                Ok(()) => Handoff::Queued,
                Err(mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d)) => {
                    Handoff::Refused(d)
                }
            },
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
