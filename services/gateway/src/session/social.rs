//! Friends and groups: adding (msgid 7) and removing (25) a friend,
//! creating (8), joining (9), leaving (26) and renaming (28) a group, its
//! members with roles (27), through the user service. A group change is
//! told to every node, whose caches of its members forget it; a member who
//! left is dropped from every node's followers of the group's log.

use clusterchat_proto::user::v1 as user_pb;
use serde_json::Map;

use super::Session;
use crate::{
    delivery::writer::WriterCommand, protocol::classic::Failure, upstream::failure_from_status,
};

impl Session {
    pub(super) async fn add_friend(
        &self,
        user: i64,
        friend: i64,
    ) -> Result<Map<String, serde_json::Value>, Failure> {
        self.node
            .upstreams
            .users
            .clone()
            .add_friend(user_pb::AddFriendRequest {
                user_id: user,
                friend_id: friend,
            })
            .await
            .map_err(|s| failure_from_status(&s, "the user service"))?;
        self.node.directory.remember_users([friend]);
        Ok(Map::new())
    }

    pub(super) async fn create_group(
        &self,
        user: i64,
        name: String,
        description: String,
    ) -> Result<Map<String, serde_json::Value>, Failure> {
        let group = self
            .node
            .upstreams
            .users
            .clone()
            .create_group(user_pb::CreateGroupRequest {
                creator_id: user,
                name,
                description,
            })
            .await
            .map_err(|s| failure_from_status(&s, "the user service"))?
            .into_inner()
            .group_id;
        self.invalidate_group(group).await;
        self.follow_group(user, group, 0).await;
        let mut results = Map::new();
        results.insert("groupid".into(), group.into());
        Ok(results)
    }

    pub(super) async fn join_group(
        &self,
        user: i64,
        group: i64,
    ) -> Result<Map<String, serde_json::Value>, Failure> {
        self.node
            .upstreams
            .users
            .clone()
            .join_group(user_pb::JoinGroupRequest {
                user_id: user,
                group_id: group,
            })
            .await
            .map_err(|s| failure_from_status(&s, "the user service"))?;
        self.invalidate_group(group).await;
        // A new member gets the group's chats from now on, not older ones.
        let newest = self.node.redis.newest_in(&format!("g:{group}")).await;
        match newest {
            Ok(newest) => self.follow_group(user, group, newest).await,
            Err(e) => {
                tracing::warn!(error = %e, group, user, "cannot read the group's newest chat; the member's cursor starts at the log's oldest")
            }
        }
        Ok(Map::new())
    }

    /// The user is in the group from its chat `cseq` on: their cursor, and
    /// this node's subscription to the group's log. Best effort: without
    /// it the user gets the group's chats at their next login.
    async fn follow_group(&self, user: i64, group: i64, cseq: u64) {
        let node = &self.node;
        let cursor_set = match node.redis.set_group_cursor(user, group, cseq).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, group, user, "cannot set a new member's cursor");
                false
            }
        };
        if let Err(e) = node.groups.join(&node.redis, user, &[group]).await {
            tracing::warn!(error = %e, group, user, "cannot subscribe to a group's log; the member gets its chats at the next login");
        }
        // This session's writer starts at the cursor (others read it the
        // first time the group speaks). A chat published before the
        // subscription was confirmed is a gap the next one finds.
        if cursor_set {
            let _ = self
                .writer
                .send(WriterCommand::FollowGroup(group, cseq))
                .await;
        }
    }

    pub(super) async fn remove_friend(
        &self,
        user: i64,
        friend: i64,
    ) -> Result<Map<String, serde_json::Value>, Failure> {
        let removed = self
            .node
            .upstreams
            .users
            .clone()
            .remove_friend(user_pb::RemoveFriendRequest {
                user_id: user,
                friend_id: friend,
            })
            .await
            .map_err(|s| failure_from_status(&s, "the user service"))?
            .into_inner()
            .removed;
        if !removed {
            return Err(Failure::new(
                crate::protocol::classic::errno::NOT_FOUND,
                format!("user {friend} is not your friend"),
            ));
        }
        Ok(Map::new())
    }

    /// Blocks or unblocks `other`; every node forgets whom `user` blocks.
    pub(super) async fn block(
        &self,
        user: i64,
        other: i64,
        on: bool,
    ) -> Result<Map<String, serde_json::Value>, Failure> {
        let request = user_pb::BlockRequest {
            user_id: user,
            blocked_id: other,
        };
        let mut users = self.node.upstreams.users.clone();
        let reply = if on {
            users.block(request).await
        } else {
            users.unblock(request).await
        };
        reply.map_err(|s| failure_from_status(&s, "the user service"))?;
        self.node.directory.forget_blocks(user);
        if let Err(e) = self
            .node
            .redis
            .publish_control(format!("b:{user}").as_bytes())
            .await
        {
            tracing::warn!(error = %e, user, "cannot tell other nodes of a block; they see it within the cache TTL");
        }
        Ok(Map::new())
    }

    /// Whom `user` blocks.
    pub(super) async fn blocked(&self, user: i64) -> Result<Vec<i64>, Failure> {
        Ok(self
            .node
            .upstreams
            .users
            .clone()
            .list_blocked(user_pb::ListBlockedRequest { user_id: user })
            .await
            .map_err(|s| failure_from_status(&s, "the user service"))?
            .into_inner()
            .blocked_ids)
    }

    pub(super) async fn leave_group(
        &self,
        user: i64,
        group: i64,
    ) -> Result<Map<String, serde_json::Value>, Failure> {
        let left = self
            .node
            .upstreams
            .users
            .clone()
            .leave_group(user_pb::LeaveGroupRequest {
                user_id: user,
                group_id: group,
            })
            .await
            .map_err(|s| failure_from_status(&s, "the user service"))?
            .into_inner()
            .left;
        if !left {
            return Err(Failure::new(
                crate::protocol::classic::errno::NOT_FOUND,
                format!("you are not in group {group}"),
            ));
        }
        // Every node stops handing the user this group's chats.
        self.node.groups.leave(&self.node.redis, user, group);
        self.node.directory.forget_group(group);
        if let Err(e) = self
            .node
            .redis
            .publish_control(format!("left:{group}:{user}").as_bytes())
            .await
        {
            tracing::warn!(error = %e, group, user, "cannot tell other nodes a member left; their sessions of the user get the group's chats until the next login");
        }
        Ok(Map::new())
    }

    /// The members (id, name, presence, creator) of a group the user is in.
    pub(super) async fn group_members(
        &self,
        user: i64,
        group: i64,
    ) -> Result<Map<String, serde_json::Value>, Failure> {
        let (_, groups) = self.roster(user).await?;
        let Some(found) = groups.into_iter().find(|g| g.id == group) else {
            return Err(Failure::new(
                crate::protocol::classic::errno::FORBIDDEN,
                format!("you are not in group {group}"),
            ));
        };
        let members: Vec<serde_json::Value> = found
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id,
                    "name": m.name,
                    "online": m.online,
                    "role": if m.creator { "creator" } else { "member" },
                })
            })
            .collect();
        let mut results = Map::new();
        results.insert("groupid".into(), group.into());
        results.insert("groupname".into(), found.name.into());
        results.insert("groupdesc".into(), found.description.into());
        results.insert("members".into(), members.into());
        Ok(results)
    }

    pub(super) async fn rename_group(
        &self,
        user: i64,
        group: i64,
        name: String,
        description: Option<String>,
    ) -> Result<Map<String, serde_json::Value>, Failure> {
        let description = match description {
            Some(description) => description,
            None => crate::upstream::all_user_groups(&mut self.node.upstreams.users.clone(), user)
                .await
                .map_err(|s| failure_from_status(&s, "the user service"))?
                .into_iter()
                .find(|g| g.id == group)
                .map(|g| g.description)
                .unwrap_or_default(),
        };
        self.node
            .upstreams
            .users
            .clone()
            .rename_group(user_pb::RenameGroupRequest {
                group_id: group,
                user_id: user,
                name,
                description,
            })
            .await
            .map_err(|s| failure_from_status(&s, "the user service"))?;
        self.invalidate_group(group).await;
        Ok(Map::new())
    }

    /// Forgets a group's members here and on every other node.
    async fn invalidate_group(&self, group: i64) {
        self.node.directory.forget_group(group);
        if let Err(e) = self
            .node
            .redis
            .publish_control(format!("g:{group}").as_bytes())
            .await
        {
            tracing::warn!(error = %e, group, "cannot broadcast a group change; other nodes refresh within the cache TTL");
        }
    }
}
