//! Throttles: fixed-window counters shared by every node,
//! `{prefix}t:NAME` (the session's login and register throttles: attempts
//! per address, failed logins per account).

use std::time::Duration;

use redis::Script;

use super::{Redis, RedisError, presence::ttl_millis};

/// A fixed-window counter. KEYS: the counter. ARGV: window in ms, 'hit'
/// (count this attempt) or 'peek'. Returns {attempts in the window, ms left}.
const THROTTLE_SCRIPT: &str = include_str!("scripts/throttle.lua");

impl Redis {
    /// Counts an attempt against `name` (when `hit`) in a fixed window, for
    /// the whole cluster: how many attempts the window has seen and how long
    /// until it ends.
    pub async fn throttle(
        &self,
        name: &str,
        window: Duration,
        hit: bool,
    ) -> Result<(u64, Duration), RedisError> {
        let (count, ttl): (u64, i64) = Script::new(THROTTLE_SCRIPT)
            .key(format!("{}t:{name}", self.prefix))
            .arg(ttl_millis(window))
            .arg(if hit { "hit" } else { "peek" })
            .invoke_async(&mut self.commands.clone())
            .await?;
        Ok((
            count,
            Duration::from_millis(u64::try_from(ttl).unwrap_or(0)),
        ))
    }
}
