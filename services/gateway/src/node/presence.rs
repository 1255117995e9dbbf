//! Telling a user's watchers (friends, fellow group members) that the user
//! came online or went offline: msgid 22 frames, pushed.
//!
//! A change is one publish per watcher who is online, on the watcher's own
//! channel (a live event, never stored), in pipelines grouped by shard: a
//! user with 1,000 online friends logging in costs 1,000 publishes in a few
//! calls, and each watcher one frame. Sessions announce their user's first
//! login and last logout (`session::presence`).
//!
//! A node that dies, freezes or loses Redis says nothing: no session
//! refreshes its users' presence, and each key expires after the presence
//! TTL. Every subscriber connection hears Redis expire keys
//! (`redis::subscriber`); for a presence key, one node (the first to mark
//! it) asks the user service who watches the user and tells those online.

use std::sync::Arc;

use super::Node;
use crate::{metrics::metrics, protocol::classic, upstream};

/// Tells the online ones among `watchers` that `user` came online or went
/// offline. Best effort, as every live event: a watcher who misses it sees
/// the state in their next roster (at login, or msgid 21).
pub async fn announce(node: &Node, user: i64, watchers: &[i64], online: bool) {
    if watchers.is_empty() {
        return;
    }
    let reachable: Vec<i64> = match node.redis.online(watchers).await {
        Ok(flags) => watchers
            .iter()
            .zip(flags)
            .filter_map(|(&w, on)| on.then_some(w))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, user, "presence not announced: Redis does not answer");
            return;
        }
    };
    announce_to(node, user, &reachable, online).await;
}

/// Tells `watchers`, known to be online, that `user` came online or went
/// offline.
pub async fn announce_to(node: &Node, user: i64, watchers: &[i64], online: bool) {
    if watchers.is_empty() {
        return;
    }
    node.redis
        .publish_presence(watchers, &classic::presence(user, online))
        .await;
    metrics().presence_announced.inc_by(watchers.len() as u64);
}

/// `user`'s presence key expired: unless they are back already, the first
/// node to mark it tells their watchers they are offline.
pub async fn expired(node: Arc<Node>, user: i64) {
    match node.redis.mark_presence_gone(user).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::debug!(error = %e, user, "cannot mark a presence that ran out");
            return;
        }
    }
    tracing::info!(user, "presence ran out");
    gone(node, user).await;
}

/// `user` has no session left: unless they are back already, their
/// watchers (asked of the user service) are told they are offline.
pub async fn gone(node: Arc<Node>, user: i64) {
    let watchers = match watchers_of(&node, user).await {
        Ok(watchers) => watchers,
        Err(status) => {
            tracing::warn!(error = %status, user, "offline, but the user service does not say who watches; they see it at their next roster");
            return;
        }
    };
    if node.redis.online(&[user]).await.ok() != Some(vec![false]) {
        return;
    }
    announce(&node, user, &watchers, false).await;
}

/// Everyone who sees `user`'s presence, from the user service.
async fn watchers_of(node: &Node, user: i64) -> Result<Vec<i64>, tonic::Status> {
    use clusterchat_proto::user::v1::ListFriendsRequest;
    let mut for_friends = node.upstreams.users.clone();
    let mut for_groups = node.upstreams.users.clone();
    let (friends, groups) = tokio::try_join!(
        for_friends.list_friends(ListFriendsRequest { user_id: user }),
        upstream::all_user_groups(&mut for_groups, user),
    )?;
    let mut watchers: Vec<i64> = friends
        .into_inner()
        .friends
        .iter()
        .map(|f| f.id)
        .chain(groups.iter().flat_map(|g| {
            g.members
                .iter()
                .filter_map(|m| m.user.as_ref().map(|u| u.id))
        }))
        .filter(|&id| id != user)
        .collect();
    watchers.sort_unstable();
    watchers.dedup();
    Ok(watchers)
}
