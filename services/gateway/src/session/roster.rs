//! The user's friends and groups, each with presence: for the login ack
//! (paged for clients that use the additions) and msgid 21.

use clusterchat_proto::user::v1 as user_pb;

use super::Session;
use crate::{
    delivery::sync::redis_unavailable,
    protocol::classic::{self, Failure},
    upstream::{self, failure_from_status},
};

impl Session {
    /// The user's friends and groups (with members), each with presence:
    /// for the login ack and msgid 21.
    pub(super) async fn roster(
        &self,
        user_id: i64,
    ) -> Result<(Vec<classic::FriendEntry>, Vec<classic::GroupEntry>), Failure> {
        let mut for_friends = self.node.upstreams.users.clone();
        let mut for_groups = self.node.upstreams.users.clone();
        let ticket = self.node.directory.group_ticket();
        let (friends, groups) = tokio::try_join!(
            for_friends.list_friends(user_pb::ListFriendsRequest { user_id }),
            upstream::all_user_groups(&mut for_groups, user_id),
        )
        .map_err(|s| failure_from_status(&s, "the user service"))?;
        let friends = friends.into_inner().friends;

        let mut ids: Vec<i64> = friends.iter().map(|f| f.id).collect();
        for group in &groups {
            ids.extend(
                group
                    .members
                    .iter()
                    .filter_map(|m| m.user.as_ref().map(|u| u.id)),
            );
            self.node.directory.cache_group(
                group.id,
                group
                    .members
                    .iter()
                    .filter_map(|m| m.user.as_ref().map(|u| u.id))
                    .collect(),
                ticket,
            );
        }
        ids.sort_unstable();
        ids.dedup();
        self.node.directory.remember_users(ids.iter().copied());
        let online = self
            .node
            .redis
            .online(&ids)
            .await
            .map_err(redis_unavailable)?;
        let is_online = |id: i64| ids.binary_search(&id).ok().is_some_and(|i| online[i]);

        let friends: Vec<classic::FriendEntry> = friends
            .into_iter()
            .map(|f| classic::FriendEntry {
                online: is_online(f.id),
                id: f.id,
                name: f.name,
            })
            .collect();
        let groups: Vec<classic::GroupEntry> = groups
            .into_iter()
            .map(|g| classic::GroupEntry {
                id: g.id,
                name: g.name,
                description: g.description,
                members: g
                    .members
                    .into_iter()
                    .filter_map(|m| {
                        let creator = m.role() == user_pb::GroupRole::Creator;
                        m.user.map(|u| classic::GroupMemberEntry {
                            online: is_online(u.id) || u.id == user_id,
                            id: u.id,
                            name: u.name,
                            creator,
                        })
                    })
                    .collect(),
            })
            .collect();
        Ok((friends, groups))
    }
}

/// Encoded friends and groups in one frame, for a client that uses the
/// additions: what does not fit follows in roster pages.
pub(super) const ROSTER_PAGE_BYTES: usize = 256 * 1024;

/// Friends, then groups, in pages of at most `budget` bytes of entries (at
/// least one entry each); always at least one page.
pub(super) fn roster_pages(
    friends: Vec<String>,
    groups: Vec<String>,
    budget: usize,
) -> Vec<(Vec<String>, Vec<String>)> {
    let mut pages: Vec<(Vec<String>, Vec<String>)> = vec![Default::default()];
    let mut bytes = 0usize;
    let entries = friends
        .into_iter()
        .map(|f| (false, f))
        .chain(groups.into_iter().map(|g| (true, g)));
    for (is_group, entry) in entries {
        let page_empty = pages
            .last()
            .is_none_or(|(f, g)| f.is_empty() && g.is_empty());
        if bytes.saturating_add(entry.len()) > budget && !page_empty {
            pages.push(Default::default());
            bytes = 0;
        }
        bytes = bytes.saturating_add(entry.len());
        if let Some((f, g)) = pages.last_mut() {
            if is_group {
                g.push(entry)
            } else {
                f.push(entry)
            }
        }
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_roster_is_paged_friends_first_each_page_within_budget() {
        let friends: Vec<String> = (0..3).map(|i| format!("f{i}-{}", "x".repeat(40))).collect();
        let groups: Vec<String> = (0..5).map(|i| format!("g{i}-{}", "y".repeat(90))).collect();
        let pages = roster_pages(friends.clone(), groups.clone(), 150);
        for (f, g) in &pages {
            let bytes: usize = f.iter().chain(g).map(String::len).sum();
            assert!(bytes <= 150 || f.len() + g.len() == 1, "{bytes}");
        }
        let all_friends: Vec<String> = pages.iter().flat_map(|(f, _)| f.clone()).collect();
        let all_groups: Vec<String> = pages.iter().flat_map(|(_, g)| g.clone()).collect();
        assert_eq!((all_friends, all_groups), (friends.clone(), groups.clone()));
        assert!(pages.len() > 3);
        assert_eq!(
            roster_pages(friends, groups, usize::MAX).len(),
            1,
            "classic: one frame"
        );
        assert_eq!(
            roster_pages(Vec::new(), Vec::new(), 10).len(),
            1,
            "an empty roster is one page"
        );
    }
}
