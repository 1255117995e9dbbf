//! The account's sessions: a token that keeps a device signed in (started
//! by a login with `"remember":true`, ended by logging out), logging out
//! everywhere (msgid 23) and changing the password (msgid 24). Sessions
//! ended from elsewhere are told over their own connection (msgid 23)
//! within a publish on the user's channel, on every node.

use clusterchat_proto::user::v1 as user_pb;
use serde_json::{Map, Value};

use super::Session;
use crate::{protocol::classic::Failure, upstream::failure_from_status};

impl Session {
    /// Ends the session token this connection holds, if any (logout).
    /// Best effort: a token the user service could not end expires.
    pub(super) async fn end_token(&mut self) {
        let Some(token) = self.active.as_mut().and_then(|a| a.token.take()) else {
            return;
        };
        if let Err(status) = self
            .node
            .upstreams
            .users
            .clone()
            .end_session(user_pb::EndSessionRequest { token })
            .await
        {
            tracing::warn!(error = %status, "cannot end a session token at logout; it expires unused");
        }
    }

    /// Every token of the user ends, and every session on every node (this
    /// one too, after its reply).
    pub(super) async fn logout_everywhere(
        &mut self,
        user: i64,
    ) -> Result<Map<String, Value>, Failure> {
        let ended = self
            .node
            .upstreams
            .users
            .clone()
            .end_all_sessions(user_pb::EndAllSessionsRequest { user_id: user })
            .await
            .map_err(|s| failure_from_status(&s, "the user service"))?
            .into_inner()
            .ended;
        if let Some(active) = self.active.as_mut() {
            active.token = None;
        }
        self.node.redis.publish_signout(user, "-").await;
        let mut results = Map::new();
        results.insert("tokens_ended".into(), ended.into());
        Ok(results)
    }

    /// A new password; the user's other sessions end, and their tokens
    /// (this connection's token stays good).
    pub(super) async fn change_password(
        &mut self,
        user: i64,
        password: String,
        new_password: String,
    ) -> Result<Map<String, Value>, Failure> {
        let keep_token = self
            .active
            .as_ref()
            .and_then(|a| a.token.clone())
            .unwrap_or_default();
        let ended = self
            .node
            .upstreams
            .users
            .clone()
            .change_password(user_pb::ChangePasswordRequest {
                id: user,
                password,
                new_password,
                keep_token,
            })
            .await
            .map_err(|s| failure_from_status(&s, "the user service"))?
            .into_inner()
            .sessions_ended;
        let me = self.node.session_address(self.connection);
        self.node.redis.publish_signout(user, &me).await;
        let mut results = Map::new();
        results.insert("tokens_ended".into(), ended.into());
        Ok(results)
    }
}
