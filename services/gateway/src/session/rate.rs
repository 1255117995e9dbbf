//! Pacing a connection: a token bucket per connection. A connection that
//! sends faster than its rate is paced, not refused: the loop stops reading
//! it until a token is free, so TCP pushes back on the client.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket. `wait` says how long until the next request may run.
pub(super) struct RateLimiter {
    tokens: f64,
    per_sec: f64,
    burst: f64,
    last: Instant,
}

impl RateLimiter {
    pub(super) fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            per_sec: f64::from(per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes `n` tokens, possibly ones that refill only in the future: the
    /// returned time is how long the caller must wait before running.
    pub(super) fn take(&mut self, n: u32) -> Duration {
        self.refill();
        self.tokens -= f64::from(n);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
    }

    /// Takes one token if one is free now; else takes nothing.
    pub(super) fn try_take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_sec)
            .min(self.burst);
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_paces_instead_of_refusing() {
        let mut limiter = RateLimiter::new(10, 2);
        assert_eq!(limiter.take(1), Duration::ZERO);
        assert_eq!(limiter.take(1), Duration::ZERO);
        // The third waits for one refill, the fourth for two.
        assert_eq!(limiter.take(1), Duration::from_millis(100));
        assert_eq!(limiter.take(1), Duration::from_millis(200));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(limiter.take(1), Duration::from_millis(100));
        // A fan-out of 20 tokens waits for all of them to refill.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(limiter.take(20), Duration::from_secs(2));
        assert_eq!(
            limiter.take(0),
            Duration::from_secs(2),
            "free, but queued behind"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn try_take_takes_only_a_free_token() {
        let mut limiter = RateLimiter::new(10, 2);
        assert!(limiter.try_take());
        assert!(limiter.try_take());
        assert!(!limiter.try_take(), "none free");
        // Nothing was taken by the refusal: one refill frees one.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(limiter.try_take());
        assert!(!limiter.try_take());
        assert_eq!(limiter.take(1), Duration::from_millis(100));
    }
}
