//! Who exists, who is in which group and whom each user blocks, as this
//! node knows it: caches filled on first use and at login. Users are never
//! deleted, so a user known to exist is known for good; a group's members
//! and a user's blocks are kept for the cache TTL and forgotten at once
//! when a node says they changed.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use clusterchat_proto::user::v1::{self as user_pb, user_service_client::UserServiceClient};
use tokio::time::Instant;

use crate::{
    protocol::classic::{Failure, errno},
    upstream::{Traced, failure_from_status},
};

pub struct Directory {
    users: UserServiceClient<Traced>,
    groups: GroupCache,
    /// Per user, whom they block (the same cache, keyed by the user).
    blocks: GroupCache,
    known_users: Mutex<HashSet<i64>>,
}

impl Directory {
    pub fn new(users: UserServiceClient<Traced>, group_ttl: Duration) -> Self {
        Self {
            users,
            groups: GroupCache::new(group_ttl),
            blocks: GroupCache::new(group_ttl),
            known_users: Mutex::default(),
        }
    }

    pub fn remember_users(&self, users: impl IntoIterator<Item = i64>) {
        let mut known = self.known_users.lock().unwrap_or_else(|p| p.into_inner());
        known.extend(users);
    }

    /// Whether the user exists: from the cache, else one look-up.
    pub async fn user_exists(&self, user: i64) -> Result<bool, Failure> {
        if user <= 0 {
            return Ok(false);
        }
        if self
            .known_users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&user)
        {
            return Ok(true);
        }
        let reply = self
            .users
            .clone()
            .get_users(user_pb::GetUsersRequest { ids: vec![user] })
            .await
            .map_err(|s| failure_from_status(&s, "the user service"))?;
        let exists = reply.into_inner().users.iter().any(|u| u.id == user);
        if exists {
            self.remember_users([user]);
        }
        Ok(exists)
    }

    /// The members of a group, cached.
    pub async fn group_members(&self, group: i64) -> Result<Arc<[i64]>, Failure> {
        if let Some(members) = self.groups.get(group) {
            return Ok(members);
        }
        let ticket = self.groups.ticket();
        if group <= 0 {
            return Err(Failure::new(
                errno::NOT_FOUND,
                format!("group {group} does not exist"),
            ));
        }
        let reply = self
            .users
            .clone()
            .list_group_members(user_pb::ListGroupMembersRequest { group_id: group })
            .await
            .map_err(|s| failure_from_status(&s, "the user service"))?;
        let members: Arc<[i64]> = reply.into_inner().member_ids.into();
        self.remember_users(members.iter().copied());
        self.groups.put(group, members.clone(), ticket);
        Ok(members)
    }

    /// Whether `user` blocks `sender`: from the cache, else one look-up.
    /// When the user service cannot say (it, or its database, is down), the
    /// chat goes through: a chat must not need the database (an outage
    /// would otherwise refuse chats to every receiver not cached here). The
    /// empty list is cached for the TTL, so a dead service is not asked at
    /// every chat; a block made meanwhile still reaches every node.
    pub async fn blocks(&self, user: i64, sender: i64) -> bool {
        if let Some(blocked) = self.blocks.get(user) {
            return blocked.contains(&sender);
        }
        let ticket = self.blocks.ticket();
        let blocked: Arc<[i64]> = match self
            .users
            .clone()
            .list_blocked(user_pb::ListBlockedRequest { user_id: user })
            .await
        {
            Ok(reply) => reply.into_inner().blocked_ids.into(),
            Err(status) => {
                tracing::warn!(error = %status, user, "cannot read whom a user blocks; their chats are not filtered for the cache TTL");
                Arc::from(Vec::new())
            }
        };
        let blocks = blocked.contains(&sender);
        self.blocks.put(user, blocked, ticket);
        blocks
    }

    /// Forgets whom `user` blocks here (they blocked or unblocked someone).
    pub fn forget_blocks(&self, user: i64) {
        self.blocks.forget(user);
    }

    /// What to give [`Directory::cache_group`]: taken before asking the
    /// user service, so a list read before a change is not kept after it.
    pub fn group_ticket(&self) -> u64 {
        self.groups.ticket()
    }

    pub fn cache_group(&self, group: i64, members: Vec<i64>, ticket: u64) {
        self.groups.put(group, members.into(), ticket);
    }

    /// Forgets a group's members here (the group changed).
    pub fn forget_group(&self, group: i64) {
        self.groups.forget(group);
    }
}

/// When a group's member list was fetched, and the list.
type CachedMembers = (Instant, Arc<[i64]>);

/// Lists kept for a TTL and forgotten when they change. A list is read
/// from the user service with a ticket taken first ([`GroupCache::ticket`]):
/// if anything was forgotten meanwhile, the list may predate that change
/// (a read that started before a join and ended after it) and is not kept,
/// so a change is never undone by a read in flight.
struct GroupCache {
    ttl: Duration,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    lists: HashMap<i64, CachedMembers>,
    /// Bumped by every forget.
    forgets: u64,
}

impl GroupCache {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    fn get(&self, group: i64) -> Option<Arc<[i64]>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .lists
            .get(&group)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, members)| members.clone())
    }

    fn ticket(&self) -> u64 {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forgets
    }

    /// Keeps `members` unless something was forgotten since `ticket`.
    fn put(&self, group: i64, members: Arc<[i64]>, ticket: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.forgets == ticket {
            entries.lists.insert(group, (Instant::now(), members));
        }
    }

    fn forget(&self, group: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.lists.remove(&group);
        entries.forgets += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn group_cache_expires() {
        let cache = GroupCache::new(Duration::from_secs(30));
        cache.put(1, vec![1, 2].into(), cache.ticket());
        assert!(cache.get(1).is_some());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(cache.get(1).is_none());
    }

    /// A list read before a change (a join) and put after it is not kept:
    /// the next read asks again and sees the new member.
    #[test]
    fn a_read_in_flight_across_a_change_is_not_kept() {
        let cache = GroupCache::new(Duration::from_secs(30));
        let ticket = cache.ticket();
        // ...the user service answers [1, 2]; meanwhile user 3 joins:
        cache.forget(7);
        cache.put(7, vec![1, 2].into(), ticket);
        assert!(cache.get(7).is_none(), "a stale list was kept");
        let ticket = cache.ticket();
        cache.put(7, vec![1, 2, 3].into(), ticket);
        assert_eq!(cache.get(7).as_deref(), Some(&[1, 2, 3][..]));
    }
}
