//! Message ids written lately on one connection, so each message is written
//! once.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use foldhash::fast::RandomState;

use crate::metrics::metrics;

/// Message ids written lately on one connection. A message can reach a
/// session twice: a sender whose append failed after Redis had recorded it
/// (the reply lost in a failover) stores it with the offline service too.
/// Such a copy arrives within seconds of the first; it is skipped (its
/// sequence still counts as written). Grows with what is written, so an
/// idle session costs nothing.
///
/// Looked up for every frame a session writes: one allocation per id
/// (shared by the set and the order), and a seeded fast hash instead of
/// SipHash (the set never holds more than [`Self::CAPACITY`] ids).
#[derive(Default)]
pub struct RecentMids {
    order: VecDeque<Arc<str>>,
    seen: HashSet<Arc<str>, RandomState>,
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
        let mid: Arc<str> = Arc::from(mid);
        self.order.push_back(mid.clone());
        self.seen.insert(mid);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::RecentMids;

    #[test]
    fn an_id_is_new_once_until_it_falls_out_of_the_window() {
        let mut recent = RecentMids::default();
        assert!(recent.first_time("a"));
        assert!(!recent.first_time("a"));
        assert!(recent.first_time(""));
        assert!(recent.first_time(""));
        for i in 0..RecentMids::CAPACITY {
            assert!(recent.first_time(&format!("m{i}")));
        }
        // "a" was the oldest: pushed out by the 1,024 after it.
        assert!(recent.first_time("a"));
        assert!(!recent.first_time(&format!("m{}", RecentMids::CAPACITY - 1)));
        assert_eq!(recent.seen.len(), RecentMids::CAPACITY);
        assert_eq!(recent.order.len(), RecentMids::CAPACITY);
    }
}
