//! This node's presence leases: its claims on its users in Redis are
//! refreshed every quarter of the TTL, and a session may be written to only
//! while its claim cannot have expired. A node frozen (SIGSTOP, VM pause)
//! past its TTL must not write what it received before it was frozen: the
//! user may be online elsewhere.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use shutdown::Shutdown;
use tokio::{sync::Notify, time::Instant};

use crate::{
    node::registry::{Registry, session_address},
    redis::{Claim, Redis, slot},
};

/// How soon a refresh that failed somewhere is tried again.
const RETRY_SOON: Duration = Duration::from_millis(250);

pub struct Lease {
    ttl: Duration,
    /// Device sessions one user may hold (a refresh that would re-create a
    /// claim past it ends that session).
    max_devices: u32,
    /// Per hash slot (of the users' tags), when this node's claims there
    /// were last confirmed (µs since `epoch`), measured from the moment the
    /// refresh was sent: a shard that fails over holds up only its own
    /// users' leases.
    confirmed: Box<[AtomicU64]>,
    epoch: Instant,
    /// Asks for a refresh now, not at the next period (Redis is back: the
    /// sessions whose leases ran down wait for it before they write).
    refresh: Notify,
}

impl Lease {
    pub fn new(ttl: Duration, max_devices: u32) -> Self {
        Self {
            ttl,
            max_devices,
            confirmed: (0..16_384).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            refresh: Notify::new(),
        }
    }

    /// Refreshes the claims now (after Redis came back).
    pub fn refresh_now(&self) {
        self.refresh.notify_one();
    }

    /// Whether this node may still write to a session that claimed its user
    /// at `claimed_at`: its presence claim cannot have expired in Redis.
    pub fn holds(&self, user: i64, claimed_at: Instant) -> bool {
        let slot = usize::from(slot::of_user(user));
        let confirmed =
            self.epoch + Duration::from_micros(self.confirmed[slot].load(Ordering::Acquire));
        let since = confirmed.max(claimed_at);
        since.elapsed() < self.ttl * 4 / 5
    }

    /// Keeps this node's presence claims alive; ends sessions whose user was
    /// taken over meanwhile (after a freeze, or after Redis lost its data).
    pub async fn keep(
        &self,
        registry: &Registry,
        redis: &Redis,
        node_id: &str,
        shutdown: &Shutdown,
    ) {
        let period = self.ttl / 4;
        // After a refresh that did not reach every shard, the next one comes
        // sooner: a lease that ran down holds its sessions' writes.
        let mut next = period;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = self.refresh.notified() => {}
                _ = shutdown.requested() => return,
            }
            let sent_at = Instant::now();
            let sessions = registry.snapshot();
            if sessions.is_empty() {
                self.confirm(None, sent_at);
                continue;
            }
            let claims: Vec<(i64, String, bool)> = sessions
                .iter()
                .map(|s| (s.user, session_address(node_id, s.connection), s.device))
                .collect();
            let held = redis
                .refresh_presence(&claims, (self.ttl, self.max_devices))
                .await;
            next = if held.iter().any(Option::is_none) {
                period.min(RETRY_SOON)
            } else {
                period
            };
            for (session, held) in sessions.into_iter().zip(held) {
                let user = session.user;
                match held {
                    Some(Claim::Held { others }) => {
                        session.peers.store(others > 0, Ordering::Relaxed);
                        self.confirm(Some(user), sent_at);
                    }
                    Some(Claim::Refused) => {
                        tracing::warn!(user, "presence taken by another session; ending ours");
                        session.kick.cancel();
                    }
                    // Its claim was gone (Redis lost it) and the user's
                    // other devices filled every place meanwhile.
                    Some(Claim::TooManyDevices) => {
                        tracing::warn!(
                            user,
                            "presence lost to the user's other devices; ending ours"
                        );
                        session.kick.cancel();
                    }
                    // Its shard did not answer: the lease runs down.
                    None => {}
                }
            }
        }
    }

    /// Confirms the leases of `user`'s slot (or of every slot) as of `sent_at`.
    fn confirm(&self, user: Option<i64>, sent_at: Instant) {
        let micros = u64::try_from(sent_at.duration_since(self.epoch).as_micros()).unwrap_or(0);
        match user {
            Some(user) => {
                let slot = usize::from(slot::of_user(user));
                self.confirmed[slot].fetch_max(micros, Ordering::AcqRel);
            }
            None => {
                for confirmed in &self.confirmed {
                    confirmed.fetch_max(micros, Ordering::AcqRel);
                }
            }
        }
    }
}
