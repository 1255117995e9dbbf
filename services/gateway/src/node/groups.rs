//! Which groups this node's users are in: the node subscribes to the
//! channel of every group one of its users is in (`redis/group_log.rs`),
//! and hands each entry published there to those users' sessions.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use crate::redis::{Redis, RedisError};

#[derive(Default)]
pub struct LocalGroups {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Group → its members held here.
    members: HashMap<i64, HashSet<i64>>,
    /// User → their groups (for users held here).
    of_user: HashMap<i64, HashSet<i64>>,
}

impl LocalGroups {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The user (held here) is in these groups: subscribes to their
    /// channels; returns once Redis confirmed every one.
    pub async fn join(&self, redis: &Redis, user: i64, groups: &[i64]) -> Result<(), RedisError> {
        let asked: Vec<_> = {
            let mut inner = self.lock();
            let mine = inner.of_user.entry(user).or_default();
            mine.extend(groups.iter().copied());
            for &group in groups {
                inner.members.entry(group).or_default().insert(user);
            }
            // Asked under the lock, so an unsubscribe of a group its last
            // member here left cannot overtake this subscribe.
            groups.iter().map(|&g| redis.subscribe_group(g)).collect()
        };
        for subscribed in asked {
            subscribed.confirmed().await?;
        }
        Ok(())
    }

    /// The user left a group (or was never let in): no more of its entries.
    pub fn leave(&self, redis: &Redis, user: i64, group: i64) {
        let mut inner = self.lock();
        if let Some(mine) = inner.of_user.get_mut(&user) {
            mine.remove(&group);
        }
        Self::drop_member(&mut inner, redis, user, group);
    }

    /// The user's last session here ended.
    pub fn forget_user(&self, redis: &Redis, user: i64) {
        let mut inner = self.lock();
        for group in inner.of_user.remove(&user).unwrap_or_default() {
            Self::drop_member(&mut inner, redis, user, group);
        }
    }

    fn drop_member(inner: &mut Inner, redis: &Redis, user: i64, group: i64) {
        if let Some(members) = inner.members.get_mut(&group) {
            members.remove(&user);
            if members.is_empty() {
                inner.members.remove(&group);
                redis.unsubscribe_group(group);
            }
        }
    }

    /// The group's members held here.
    pub fn members(&self, group: i64) -> Vec<i64> {
        self.lock()
            .members
            .get(&group)
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The user's groups (as far as this node knows).
    pub fn of_user(&self, user: i64) -> Vec<i64> {
        self.lock()
            .of_user
            .get(&user)
            .map(|g| g.iter().copied().collect())
            .unwrap_or_default()
    }
}
