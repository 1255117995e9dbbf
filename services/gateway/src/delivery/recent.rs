//! Message ids written lately on one connection, so each message is written
//! once.

use std::collections::{HashSet, VecDeque};

use crate::metrics::metrics;

/// Message ids written lately on one connection. A message can reach a
/// session twice: a sender whose append failed after Redis had recorded it
/// (the reply lost in a failover) stores it with the offline service too.
/// Such a copy arrives within seconds of the first; it is skipped (its
/// sequence still counts as written). Grows with what is written, so an
/// idle session costs nothing.
#[derive(Default)]
pub struct RecentMids {
    order: VecDeque<String>,
    seen: HashSet<String>,
}

impl RecentMids {
    const CAPACITY: usize = 1024;

    /// True the first time `mid` is seen (and always for an empty one).
    pub fn first_time(&mut self, mid: &str) -> bool {
        if mid.is_empty() {
            return true;
        }
        if self.seen.contains(mid) {
            metrics().duplicates_skipped.inc();
            return false;
        }
        if self.order.len() >= Self::CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.order.push_back(mid.to_owned());
        self.seen.insert(mid.to_owned());
        true
    }
}
