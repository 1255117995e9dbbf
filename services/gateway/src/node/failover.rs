//! Waiting for a Redis Cluster failover: a shard that fails over answers
//! again within seconds, and waiting for it keeps a sender's chats in order.
//! A wait that runs out is not repeated for every chat that follows.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// What to do after a failed attempt (see [`Failover::after_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again (after [`RETRY_EVERY`], already slept).
    Retry,
    /// No failover can come (a single Redis, or a wait ran out lately).
    Hopeless,
    /// The wait ran out without a failover.
    WaitedOut,
}

/// Between attempts while a shard fails over.
pub const RETRY_EVERY: Duration = Duration::from_millis(200);

/// After a wait ran out, chats do not wait again for this long.
const QUIET_AFTER_GIVING_UP: Duration = Duration::from_secs(30);

pub struct Failover {
    /// How long one chat may wait for a failover.
    wait: Duration,
    /// When a wait last ran out (µs since the Unix epoch).
    gave_up: AtomicU64,
}

impl Failover {
    pub fn new(wait: Duration) -> Self {
        Self {
            wait,
            gave_up: AtomicU64::new(0),
        }
    }

    /// After an attempt failed: `possible` says whether the failing shard
    /// may fail over; `failing_since` is when this chat's first attempt
    /// failed (set here). Sleeps before a retry.
    pub async fn after_failure(
        &self,
        possible: bool,
        failing_since: &mut Option<Instant>,
    ) -> Verdict {
        let since = *failing_since.get_or_insert_with(Instant::now);
        if !possible || !self.may_wait() {
            return Verdict::Hopeless;
        }
        if since.elapsed() >= self.wait {
            // No failover came: do not make every chat wait.
            self.gave_up.store(now_micros(), Ordering::Relaxed);
            return Verdict::WaitedOut;
        }
        tokio::time::sleep(RETRY_EVERY).await;
        Verdict::Retry
    }

    /// False for a while after a wait for a failover ran out.
    fn may_wait(&self) -> bool {
        let gave_up = self.gave_up.load(Ordering::Relaxed);
        now_micros().saturating_sub(gave_up) > QUIET_AFTER_GIVING_UP.as_micros() as u64
    }
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_that_ran_out_is_not_repeated() {
        let failover = Failover::new(Duration::ZERO);
        let mut since = None;
        assert_eq!(
            failover.after_failure(false, &mut since).await,
            Verdict::Hopeless
        );
        assert_eq!(
            failover.after_failure(true, &mut since).await,
            Verdict::WaitedOut
        );
        let mut again = None;
        assert_eq!(
            failover.after_failure(true, &mut again).await,
            Verdict::Hopeless,
            "the next chat does not wait"
        );
    }
}
