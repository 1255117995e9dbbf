//! Live presence: a user's friends and fellow group members (their
//! *watchers*) are told, over their own connections, when the user comes
//! online (their first session anywhere) and goes offline (their last one
//! ends), as msgid 22 frames. Nobody polls.
//!
//! The login publishes before it answers the client, so "online" reaches a
//! watcher before any chat the user then sends; the last session's end
//! publishes "offline" after its last chat. Who the watchers are then comes
//! from the user service (friends and groups change on any node), and how a
//! change is published, and what tells the watchers of a user whose node
//! died: `node::presence`.

use std::collections::BTreeSet;

use super::Session;
use crate::{
    node::presence::announce,
    protocol::classic::{FriendEntry, GroupEntry},
};

/// Those who see `me`'s presence (friends and fellow members of each
/// group) and are online now, from the roster's own presence lookup.
pub(super) fn watchers_online(me: i64, friends: &[FriendEntry], groups: &[GroupEntry]) -> Vec<i64> {
    let people = friends.iter().map(|f| (f.id, f.online)).chain(
        groups
            .iter()
            .flat_map(|g| g.members.iter().map(|m| (m.id, m.online))),
    );
    let online: BTreeSet<i64> = people
        .filter(|&(id, on)| on && id != me)
        .map(|(id, _)| id)
        .collect();
    online.into_iter().collect()
}

impl Session {
    /// `user` now has `people` among their watchers (a friend added, a group
    /// joined); they learn that `user` is online, and see it in their roster
    /// when they next ask (their client asks on a presence it did not know).
    pub(super) async fn watched_by(&self, user: i64, people: &[i64]) {
        let people: Vec<i64> = people.iter().copied().filter(|&p| p != user).collect();
        announce(&self.node, user, &people, true).await;
    }
}
