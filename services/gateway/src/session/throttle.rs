//! Login and register throttles, counted in Redis for the whole cluster:
//! attempts per client address, failed logins per account (errno 7 with
//! `retry_after`).

use std::time::Duration;

use super::Session;
use crate::{
    metrics::{label, metrics},
    node::admission::ClientAddress,
    protocol::classic::Failure,
};

/// A throttle's refusal (counted as `why`), to retry once `left` has passed:
/// `say` words it from the whole seconds to wait.
fn throttled(why: &'static str, left: Duration, say: impl FnOnce(u64) -> String) -> Failure {
    metrics().refused.get_or_create(&label("why", why)).inc();
    let seconds = u64::try_from(left.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1);
    Failure::throttled(say(seconds), seconds)
}

/// Login and register throttles, counted in Redis for the whole cluster.
/// When Redis cannot count, the attempt is let through (a login needs Redis
/// for presence anyway) and the failure logged.
impl Session {
    /// Counts a `what` attempt from the client's address; refused past `limit`
    /// per window.
    pub(super) async fn throttle_address(&self, what: &str, limit: u32) -> Result<(), Failure> {
        let ip = ClientAddress::of(self.client.ip());
        let window = self.node.config.limits.throttle_window;
        match self
            .node
            .redis
            .throttle(&format!("{what}:a:{ip}"), window, true)
            .await
        {
            Ok((count, left)) if count > u64::from(limit) => {
                tracing::info!(%ip, what, count, "throttled an address");
                Err(throttled("throttle_address", left, |seconds| {
                    format!("too many {what} attempts from {ip}; retry in {seconds} s")
                }))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot count {what} attempts; letting it through");
                Ok(())
            }
        }
    }

    /// Refused while the account has had too many failed logins this window
    /// (whatever the password now: that is what stops guessing).
    pub(super) async fn throttle_account(&self, user: i64) -> Result<(), Failure> {
        let limits = &self.node.config.limits;
        match self
            .node
            .redis
            .throttle(&format!("fail:u:{user}"), limits.throttle_window, false)
            .await
        {
            Ok((failures, left)) if failures >= u64::from(limits.login_failures_per_account) => {
                tracing::info!(user, failures, "throttled an account");
                Err(throttled("throttle_account", left, |seconds| {
                    format!("too many failed logins for user {user}; retry in {seconds} s")
                }))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read failed logins; letting it through");
                Ok(())
            }
        }
    }

    pub(super) async fn count_failed_login(&self, user: i64) {
        let window = self.node.config.limits.throttle_window;
        if let Err(e) = self
            .node
            .redis
            .throttle(&format!("fail:u:{user}"), window, true)
            .await
        {
            tracing::warn!(error = %e, "cannot count a failed login");
        }
    }
}
