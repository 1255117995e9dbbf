//! Presence: which sessions hold a user, `{prefix}{u:ID}:p`.
//!
//! A hash per user, one field per session (`node/connection`), refreshed by
//! the session's node: one classic session alone, or any number of device
//! sessions (the scripts below). [`Redis::online`] asks whether users are
//! held anywhere.

use std::time::Duration;

use redis::Script;

use super::{Grouped, Redis, RedisError, slot};

/// Presence is a hash per user: one field per session that holds the user
/// (`node/connection`), valued `KIND:EXPIRY_MS` (KIND `c` a classic
/// session, `d` a device session); the key itself expires with its latest
/// field. A classic session holds the user alone; device sessions share it.
/// KEYS: presence. ARGV: owner, kind, TTL in ms, the most sessions a user
/// may hold. Claims (or refreshes) the owner's field, dropping expired
/// ones; 0 when the user is held by a session it may not share with, -1
/// when a new field would pass the most (then nothing changes), else 1 +
/// how many other sessions hold the user.
const CLAIM_SCRIPT: &str = concat!(
    include_str!("scripts/claim.lua"),
    include_str!("scripts/claim_one.lua")
);

/// The same for many sessions in one call (a node's refresh): KEYS: their
/// presence hashes; ARGV: TTL in ms, the most sessions, then owner and kind
/// per key. Or no KEYS and, first in ARGV, their count and the keys (users
/// of many slots of one shard: Redis 7 lets a script without flags touch
/// any key its node serves). Returns CLAIM's answer per key.
pub(super) const CLAIM_EACH_SCRIPT: &str = concat!(
    include_str!("scripts/claim.lua"),
    include_str!("scripts/claim_each.lua")
);

/// Sessions refreshed in one script call: Redis runs nothing else meanwhile.
const CLAIMS_PER_CALL: usize = 256;

/// KEYS: presence. ARGV: owner. Drops the owner's field (the key with the last).
const RELEASE_SCRIPT: &str = include_str!("scripts/release.lua");

impl Redis {
    /// Claims the user for `owner` unless a session it may not share with
    /// holds them: a classic session (`device` false) holds the user alone,
    /// device sessions share it with each other, at most `max_devices` of
    /// them.
    pub async fn claim_presence(
        &self,
        user: i64,
        owner: &str,
        device: bool,
        (ttl, max_devices): (Duration, u32),
    ) -> Result<Claim, RedisError> {
        let claimed: i64 = Script::new(CLAIM_SCRIPT)
            .key(self.presence_key(user))
            .arg(owner)
            .arg(presence_kind(device))
            .arg(ttl_millis(ttl))
            .arg(max_devices)
            .invoke_async(&mut self.commands.clone())
            .await?;
        Ok(Claim::from_reply(claimed))
    }

    /// Releases the claim if `owner` still holds it. Retried a few times
    /// (it is idempotent): a command right after Redis restarted can fail
    /// while the connection is re-established, and an unreleased claim
    /// locks the user out until it expires. Returns how many sessions still
    /// hold the user (0: they are offline now).
    pub async fn release_presence(&self, user: i64, owner: &str) -> Result<u32, RedisError> {
        let mut attempt = 0;
        loop {
            let released: Result<u32, _> = Script::new(RELEASE_SCRIPT)
                .key(self.presence_key(user))
                .arg(owner)
                .invoke_async(&mut self.commands.clone())
                .await;
            match released {
                Ok(live) => return Ok(live),
                Err(e) if attempt >= 3 => return Err(e.into()),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
            }
        }
    }

    /// Marks that `user`'s presence ran out, for a few seconds: true for
    /// the one node that marked it first (which tells their watchers).
    pub async fn mark_presence_gone(&self, user: i64) -> Result<bool, RedisError> {
        let marked: Option<String> = redis::cmd("SET")
            .arg(self.user_key(user, "gone"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(10_000)
            .query_async(&mut self.commands.clone())
            .await?;
        Ok(marked.is_some())
    }

    /// Extends each claim (re-creating it after a Redis restart). For each,
    /// false when another owner has taken the user meanwhile, `None` when
    /// its shard did not answer.
    pub async fn refresh_presence(
        &self,
        claims: &[(i64, String, bool)],
        (ttl, max_devices): (Duration, u32),
    ) -> Vec<Option<Claim>> {
        let mut held = vec![None; claims.len()];
        // On a cluster every user is a slot of their own: one call per
        // shard (per 256 sessions), keys in ARGV, instead of one per user.
        let rest: Vec<usize> = if self.sharded {
            self.refresh_by_shard(claims, (ttl, max_devices), &mut held)
                .await
        } else {
            (0..claims.len()).collect()
        };
        if rest.is_empty() {
            return held;
        }
        // One call per slot group (on a single Redis: per 256 sessions), not
        // one per session: a script call costs Redis far more than the few
        // commands of a claim. On a cluster, what a shard's call could not
        // do (a slot moved, the shard failing over), slot by slot.
        let replies: Vec<Grouped<Vec<i64>>> = self
            .run_grouped_each(rest.iter().map(|&i| claims[i].0), |pipe, group| {
                for chunk in group.chunks(CLAIMS_PER_CALL) {
                    let chunk: Vec<usize> = chunk.iter().map(|&k| rest[k]).collect();
                    self.claim_each_call(pipe, claims, &chunk, (ttl, max_devices), false);
                }
            })
            .await;
        for (group, replies) in replies {
            match replies {
                Ok(replies) => {
                    let replies = replies.into_iter().flatten();
                    for (i, reply) in group.into_iter().zip(replies) {
                        held[rest[i]] = Some(Claim::from_reply(reply));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, users = group.len(), "cannot refresh presence")
                }
            }
        }
        held
    }

    /// One CLAIM_EACH call for `claims[chunk]`: keys declared (one slot),
    /// or in ARGV (`in_argv`: many slots of one shard).
    fn claim_each_call(
        &self,
        pipe: &mut redis::Pipeline,
        claims: &[(i64, String, bool)],
        chunk: &[usize],
        (ttl, max_devices): (Duration, u32),
        in_argv: bool,
    ) {
        let cmd = pipe.cmd("EVALSHA").arg(self.scripts.claim_each.get_hash());
        if in_argv {
            cmd.arg(0);
        }
        cmd.arg(chunk.len());
        for &i in chunk {
            cmd.arg(self.presence_key(claims[i].0));
        }
        cmd.arg(ttl_millis(ttl)).arg(max_devices);
        for &i in chunk {
            let (_, owner, device) = &claims[i];
            cmd.arg(owner).arg(presence_kind(*device));
        }
    }

    /// A cluster's refresh: the claims of each shard's users in calls of
    /// up to 256, keys in ARGV, the shards concurrently. Fills `held`;
    /// returns the claims it could not do (their slot has no known owner,
    /// or their shard's call failed: nothing was written by it).
    async fn refresh_by_shard(
        &self,
        claims: &[(i64, String, bool)],
        (ttl, max_devices): (Duration, u32),
        held: &mut [Option<Claim>],
    ) -> Vec<usize> {
        let (by_shard, mut rest) =
            slot::by_owner(&self.owners(), claims.iter().map(|c| slot::of_user(c.0)));
        let shards = futures::future::join_all(by_shard.iter().map(|(shard, items)| async move {
            let replies = self
                .scripts_on_shard(super::Via::Shared, shard, |pipe| {
                    for chunk in items.chunks(CLAIMS_PER_CALL) {
                        self.claim_each_call(pipe, claims, chunk, (ttl, max_devices), true);
                    }
                })
                .await;
            (items, replies)
        }))
        .await;
        for (items, replies) in shards {
            let answers: Option<Vec<i64>> = replies.ok().and_then(|values| {
                let calls = items.chunks(CLAIMS_PER_CALL).count();
                (values.len() == calls).then_some(())?;
                let mut answers = Vec::with_capacity(items.len());
                for (value, chunk) in values.into_iter().zip(items.chunks(CLAIMS_PER_CALL)) {
                    let call: Vec<i64> = redis::from_redis_value(value).ok()?;
                    (call.len() == chunk.len()).then_some(())?;
                    answers.extend(call);
                }
                Some(answers)
            });
            match answers {
                Some(answers) => {
                    for (&i, reply) in items.iter().zip(answers) {
                        held[i] = Some(Claim::from_reply(reply));
                    }
                }
                None => rest.extend(items.iter().copied()),
            }
        }
        rest
    }

    /// Whether each user is online anywhere in the cluster.
    /// Users on a shard that does not answer (failing over) count as
    /// offline; only when no shard answers is it an error.
    pub async fn online(&self, users: &[i64]) -> Result<Vec<bool>, RedisError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let replies: Vec<Grouped<bool>> = self
            .run_grouped_each(users.iter().copied(), |pipe, group| {
                for &i in group {
                    pipe.exists(self.presence_key(users[i]));
                }
            })
            .await;
        let mut online = vec![false; users.len()];
        let mut failure = None;
        let mut answered = false;
        for (group, replies) in replies {
            match replies {
                Ok(replies) => {
                    answered = true;
                    for (i, reply) in group.into_iter().zip(replies) {
                        online[i] = reply;
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) if !answered => Err(e),
            Some(e) => {
                tracing::warn!(error = %e, "some presence unknown (a shard does not answer); shown offline");
                Ok(online)
            }
            None => Ok(online),
        }
    }
}

/// What a presence claim (or refresh) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Held by a session this one may not share with.
    Refused,
    /// The user's device sessions are as many as they may be.
    TooManyDevices,
    /// Held, by this session and that many others (device sessions).
    Held { others: u32 },
}

impl Claim {
    fn from_reply(reply: i64) -> Self {
        match reply {
            n if n >= 1 => Self::Held {
                others: u32::try_from(n - 1).unwrap_or(u32::MAX),
            },
            -1 => Self::TooManyDevices,
            _ => Self::Refused,
        }
    }

    pub fn is_held(self) -> bool {
        matches!(self, Self::Held { .. })
    }
}

fn presence_kind(device: bool) -> &'static str {
    if device { "d" } else { "c" }
}

/// A duration in milliseconds for Redis (also the appender's and the
/// numberer's `WAIT`), at least 1: to `WAIT`, 0 is forever.
pub(super) fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
