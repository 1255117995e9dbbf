//! The use cases of the user service, in domain types. The gRPC layer calls
//! these after parsing its input; they decide what is allowed.

use crate::{
    domain::{
        GroupDescription, GroupId, GroupName, GroupPage, GroupRole, Membership, Password, User,
        UserId, UserName,
    },
    error::UserError,
    password::PasswordHasher,
    sessions::{self, SESSION_TTL, SessionInfo},
    store::{GroupsPage, UserStore},
};

/// A session started at login: its token (shown to the client once) and
/// when it expires unless used.
pub struct NewSession {
    pub token: String,
    pub expires_at_ms: i64,
}

fn ttl_ms() -> i64 {
    SESSION_TTL.as_millis() as i64
}

#[derive(Clone)]
pub struct Users {
    store: UserStore,
    hasher: PasswordHasher,
}

impl Users {
    pub fn new(store: UserStore, hasher: PasswordHasher) -> Self {
        Self { store, hasher }
    }

    #[tracing::instrument(skip_all, fields(name_len = name.as_str().len()))]
    pub async fn register(&self, name: UserName, password: Password) -> Result<UserId, UserError> {
        // Cheap check first so a taken name does not cost a hash; the unique
        // key still decides races.
        if self.store.user_by_name(&name).await?.is_some() {
            return Err(UserError::AlreadyExists(format!(
                "the name {:?} is already taken",
                name.as_str()
            )));
        }
        let hash = self.hasher.hash(password).await?;
        self.store.insert_user(&name, &hash).await
    }

    /// Wrong id and wrong password are indistinguishable, in answer and in time.
    #[tracing::instrument(skip_all, fields(user_id = id))]
    pub async fn login(&self, id: i64, password: Password) -> Result<User, UserError> {
        let found = match UserId::parse(id, "id") {
            Ok(id) => self.store.credentials(id).await?,
            Err(_) => None,
        };
        let (user, hash) = match found {
            Some((user, hash)) => (Some(user), Some(hash)),
            None => (None, None),
        };
        if self.hasher.verify(password, hash).await? {
            user.ok_or(UserError::BadCredentials)
        } else {
            Err(UserError::BadCredentials)
        }
    }

    /// A login that also starts a session on `device`.
    pub async fn login_with_session(
        &self,
        id: i64,
        password: Password,
        device: &str,
    ) -> Result<(User, NewSession), UserError> {
        let user = self.login(id, password).await?;
        let (token, hash) = sessions::new_token();
        let now = sessions::now_ms();
        let expires_at_ms = now + ttl_ms();
        self.store
            .insert_session(
                hash,
                user.id,
                &sessions::device_name(device),
                (now, expires_at_ms),
            )
            .await?;
        Ok((
            user,
            NewSession {
                token,
                expires_at_ms,
            },
        ))
    }

    /// The user a live session token belongs to; its expiry moves on.
    pub async fn resume_session(&self, token: &str) -> Result<(User, i64), UserError> {
        let hash = sessions::parse_token(token)?;
        let now = sessions::now_ms();
        let expires_at_ms = now + ttl_ms();
        let user = self
            .store
            .resume_session(hash, now, expires_at_ms)
            .await?
            .ok_or(UserError::SessionEnded)?;
        Ok((user, expires_at_ms))
    }

    /// Ends one session (a token that is no longer one: nothing to end).
    pub async fn end_session(&self, token: &str) -> Result<bool, UserError> {
        match sessions::parse_token(token) {
            Ok(hash) => self.store.end_session(hash).await,
            Err(_) => Ok(false),
        }
    }

    pub async fn end_all_sessions(&self, user: UserId) -> Result<u64, UserError> {
        self.store.end_sessions(user, None).await
    }

    /// Checks the current password, stores the new one's hash and ends
    /// every session but `keep_token` (if it is one).
    #[tracing::instrument(skip_all, fields(user_id = id))]
    pub async fn change_password(
        &self,
        id: i64,
        password: Password,
        new_password: Password,
        keep_token: &str,
    ) -> Result<u64, UserError> {
        let user = self.login(id, password).await?;
        let hash = self.hasher.hash(new_password).await?;
        self.store.set_password(user.id, &hash).await?;
        let keep = sessions::parse_token(keep_token).ok();
        self.store.end_sessions(user.id, keep).await
    }

    pub async fn sessions(&self, user: UserId) -> Result<Vec<SessionInfo>, UserError> {
        self.store.sessions(user, sessions::now_ms()).await
    }

    #[tracing::instrument(skip(self))]
    pub async fn remove_friend(&self, user: UserId, friend: UserId) -> Result<bool, UserError> {
        self.require_user(user).await?;
        self.store.remove_friendship(user, friend).await
    }

    /// `user` blocks or unblocks `other` (both must exist; not oneself).
    #[tracing::instrument(skip(self))]
    pub async fn set_block(
        &self,
        user: UserId,
        other: UserId,
        on: bool,
    ) -> Result<bool, UserError> {
        if user == other {
            return Err(UserError::InvalidArgument(
                "a user cannot block themselves".into(),
            ));
        }
        self.require_user(user).await?;
        self.require_user(other).await?;
        self.store.set_block(user, other, on).await
    }

    pub async fn blocked(&self, user: UserId) -> Result<Vec<i64>, UserError> {
        self.store.blocked(user).await
    }

    /// Only the group's creator may rename it.
    #[tracing::instrument(skip(self, name, description))]
    pub async fn rename_group(
        &self,
        group: GroupId,
        user: UserId,
        name: GroupName,
        description: GroupDescription,
    ) -> Result<(), UserError> {
        self.require_group(group).await?;
        match self.store.member_role(group, user).await? {
            Some(GroupRole::Creator) => self.store.rename_group(group, &name, &description).await,
            _ => Err(UserError::FailedPrecondition(format!(
                "only the creator of group {} may rename it",
                group.get()
            ))),
        }
    }

    pub async fn user_by_name(&self, name: UserName) -> Result<User, UserError> {
        self.store
            .user_by_name(&name)
            .await?
            .ok_or_else(|| UserError::NotFound(format!("no user is named {:?}", name.as_str())))
    }

    pub async fn users_by_ids(&self, ids: Vec<UserId>) -> Result<Vec<User>, UserError> {
        const MAX_BATCH: usize = 1000;
        if ids.len() > MAX_BATCH {
            return Err(UserError::InvalidArgument(format!(
                "at most {MAX_BATCH} ids per request, got {}",
                ids.len()
            )));
        }
        self.store.users_by_ids(&ids).await
    }

    #[tracing::instrument(skip(self))]
    pub async fn add_friend(&self, user: UserId, friend: UserId) -> Result<bool, UserError> {
        if user == friend {
            return Err(UserError::InvalidArgument(
                "a user cannot befriend themselves".into(),
            ));
        }
        self.require_user(user).await?;
        self.require_user(friend).await?;
        self.store.add_friendship(user, friend).await
    }

    pub async fn friends(&self, user: UserId) -> Result<Vec<User>, UserError> {
        self.require_user(user).await?;
        self.store.friends(user).await
    }

    #[tracing::instrument(skip(self, name, description))]
    pub async fn create_group(
        &self,
        creator: UserId,
        name: GroupName,
        description: GroupDescription,
    ) -> Result<GroupId, UserError> {
        // The store checks that the creator exists and is below the cap on
        // groups per user, under a lock.
        self.store.create_group(creator, &name, &description).await
    }

    /// Refused with `LimitReached` when the group is full or the user is in
    /// as many groups as allowed (checked under locks in the store).
    #[tracing::instrument(skip(self))]
    pub async fn join_group(&self, user: UserId, group: GroupId) -> Result<bool, UserError> {
        self.store.add_member(group, user).await
    }

    #[tracing::instrument(skip(self))]
    pub async fn leave_group(&self, user: UserId, group: GroupId) -> Result<bool, UserError> {
        self.require_group(group).await?;
        match self.store.member_role(group, user).await? {
            None => Ok(false),
            Some(GroupRole::Creator) => Err(UserError::FailedPrecondition(
                "the creator of a group cannot leave it".into(),
            )),
            Some(GroupRole::Normal) => self.store.remove_member(group, user).await,
        }
    }

    pub async fn groups_of_user(
        &self,
        user: UserId,
        page: GroupPage,
    ) -> Result<GroupsPage, UserError> {
        self.require_user(user).await?;
        self.store.groups_of_user(user, page).await
    }

    pub async fn group_member_ids(&self, group: GroupId) -> Result<Vec<UserId>, UserError> {
        self.require_group(group).await?;
        self.store.member_ids(group).await
    }

    /// The groups `user` is in and when they joined each (none for an
    /// unknown user: the history service asks for any user id it is given,
    /// and "no groups" is the true answer for one that does not exist).
    pub async fn memberships(&self, user: UserId) -> Result<Vec<Membership>, UserError> {
        self.store.memberships(user).await
    }

    async fn require_user(&self, id: UserId) -> Result<(), UserError> {
        if self.store.user_exists(id).await? {
            Ok(())
        } else {
            Err(UserError::NotFound(format!(
                "user {} does not exist",
                id.get()
            )))
        }
    }

    async fn require_group(&self, id: GroupId) -> Result<(), UserError> {
        if self.store.group_exists(id).await? {
            Ok(())
        } else {
            Err(UserError::NotFound(format!(
                "group {} does not exist",
                id.get()
            )))
        }
    }
}
