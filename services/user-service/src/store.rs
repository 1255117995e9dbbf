//! The only module of the user service that speaks SQL.
//!
//! **Architecture Invariant:** only this module touches the user tables, and
//! no other service reads them.

use sqlx::{MySqlPool, QueryBuilder, Row as _};

use crate::{
    config::Limits,
    domain::{
        GROUP_PAGE_MEMBERS, Group, GroupDescription, GroupId, GroupMember, GroupName, GroupPage,
        GroupRole, Membership, User, UserId, UserName,
    },
    error::UserError,
    sessions::{MAX_SESSIONS, SessionInfo, TokenHash},
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone)]
pub struct UserStore {
    pool: MySqlPool,
    limits: Limits,
}

/// A page of a user's groups, and whether more follow it.
pub struct GroupsPage {
    pub groups: Vec<Group>,
    pub more: bool,
}

impl UserStore {
    pub fn new(pool: MySqlPool, limits: Limits) -> Self {
        Self { pool, limits }
    }

    #[tracing::instrument(name = "sql.insert_user", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn insert_user(
        &self,
        name: &UserName,
        password_hash: &str,
    ) -> Result<UserId, UserError> {
        let result =
            sqlx::query("INSERT INTO users (name, name_key, password_hash) VALUES (?, ?, ?)")
                .bind(name.as_str())
                .bind(name.key())
                .bind(password_hash)
                .execute(&self.pool)
                .await;
        match result {
            Ok(done) => Ok(UserId::from_db(last_id(done.last_insert_id())?)),
            Err(e) if mysql_pool::is_unique_violation(&e) => Err(UserError::AlreadyExists(
                format!("the name {:?} is already taken", name.as_str()),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// The user and their password hash, if the id exists.
    #[tracing::instrument(name = "sql.credentials", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn credentials(&self, id: UserId) -> Result<Option<(User, String)>, UserError> {
        let row = sqlx::query("SELECT id, name, password_hash FROM users WHERE id = ?")
            .bind(id.get())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (user_from_row(&r, 0, 1), r.get::<String, _>(2))))
    }

    /// Replaces a user's password hash.
    #[tracing::instrument(name = "sql.set_password", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn set_password(&self, id: UserId, password_hash: &str) -> Result<(), UserError> {
        sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
            .bind(password_hash)
            .bind(id.get())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a session; past [`MAX_SESSIONS`] the user's oldest end.
    #[tracing::instrument(name = "sql.insert_session", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn insert_session(
        &self,
        token: TokenHash,
        user: UserId,
        device: &str,
        (started_at_ms, expires_at_ms): (i64, i64),
    ) -> Result<(), UserError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO user_sessions (token_hash, user_id, device, started_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&token.0[..])
        .bind(user.get())
        .bind(device)
        .bind(started_at_ms)
        .bind(expires_at_ms)
        .execute(&mut *tx)
        .await?;
        // Expired ones go first, then the oldest beyond the bound.
        sqlx::query("DELETE FROM user_sessions WHERE user_id = ? AND expires_at_ms <= ?")
            .bind(user.get())
            .bind(started_at_ms)
            .execute(&mut *tx)
            .await?;
        let extra: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT token_hash FROM user_sessions WHERE user_id = ? ORDER BY started_at_ms DESC LIMIT 1000 OFFSET ?",
        )
        .bind(user.get())
        .bind(MAX_SESSIONS)
        .fetch_all(&mut *tx)
        .await?;
        for hash in extra {
            sqlx::query("DELETE FROM user_sessions WHERE token_hash = ?")
                .bind(hash)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The user of a live session, whose expiry moves to `expires_at_ms`;
    /// `None` when the token is unknown, ended or expired.
    #[tracing::instrument(name = "sql.resume_session", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn resume_session(
        &self,
        token: TokenHash,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<Option<User>, UserError> {
        let moved = sqlx::query(
            "UPDATE user_sessions SET expires_at_ms = ? WHERE token_hash = ? AND expires_at_ms > ?",
        )
        .bind(expires_at_ms)
        .bind(&token.0[..])
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT u.id, u.name FROM user_sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?",
        )
        .bind(&token.0[..])
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| user_from_row(&r, 0, 1)))
    }

    /// Ends one session; true when it existed.
    #[tracing::instrument(name = "sql.end_session", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn end_session(&self, token: TokenHash) -> Result<bool, UserError> {
        let done = sqlx::query("DELETE FROM user_sessions WHERE token_hash = ?")
            .bind(&token.0[..])
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Ends every session of the user but `keep`; how many ended.
    #[tracing::instrument(name = "sql.end_sessions", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn end_sessions(
        &self,
        user: UserId,
        keep: Option<TokenHash>,
    ) -> Result<u64, UserError> {
        let keep = keep.map(|k| k.0.to_vec()).unwrap_or_default();
        let done = sqlx::query("DELETE FROM user_sessions WHERE user_id = ? AND token_hash <> ?")
            .bind(user.get())
            .bind(keep)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// A user's live sessions, newest first.
    #[tracing::instrument(name = "sql.sessions", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn sessions(&self, user: UserId, now_ms: i64) -> Result<Vec<SessionInfo>, UserError> {
        let rows = sqlx::query(
            "SELECT device, started_at_ms, expires_at_ms FROM user_sessions WHERE user_id = ? AND expires_at_ms > ? ORDER BY started_at_ms DESC",
        )
        .bind(user.get())
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| SessionInfo {
                device: r.get(0),
                started_at_ms: r.get(1),
                expires_at_ms: r.get(2),
            })
            .collect())
    }

    #[tracing::instrument(name = "sql.user_by_name", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn user_by_name(&self, name: &UserName) -> Result<Option<User>, UserError> {
        let row = sqlx::query("SELECT id, name FROM users WHERE name_key = ?")
            .bind(name.key())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| user_from_row(&r, 0, 1)))
    }

    #[tracing::instrument(name = "sql.users_by_ids", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, UserError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = QueryBuilder::new("SELECT id, name FROM users WHERE id IN (");
        let mut list = query.separated(", ");
        for id in ids {
            list.push_bind(id.get());
        }
        query.push(") ORDER BY id");
        let rows = query.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|r| user_from_row(r, 0, 1)).collect())
    }

    #[tracing::instrument(name = "sql.user_exists", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn user_exists(&self, id: UserId) -> Result<bool, UserError> {
        let row = sqlx::query("SELECT 1 FROM users WHERE id = ?")
            .bind(id.get())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Writes both directions in one transaction. Returns false when the two
    /// were already friends.
    #[tracing::instrument(name = "sql.add_friendship", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn add_friendship(&self, user: UserId, friend: UserId) -> Result<bool, UserError> {
        let mut tx = self.pool.begin().await?;
        let mut created = 0;
        for (a, b) in [(user, friend), (friend, user)] {
            created +=
                sqlx::query("INSERT IGNORE INTO friendships (user_id, friend_id) VALUES (?, ?)")
                    .bind(a.get())
                    .bind(b.get())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
        }
        tx.commit().await?;
        Ok(created > 0)
    }

    /// `user` blocks (`on`) or unblocks `other`; true when it changed.
    #[tracing::instrument(name = "sql.set_block", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn set_block(
        &self,
        user: UserId,
        other: UserId,
        on: bool,
    ) -> Result<bool, UserError> {
        let query = if on {
            "INSERT IGNORE INTO blocks (user_id, blocked_id) VALUES (?, ?)"
        } else {
            "DELETE FROM blocks WHERE user_id = ? AND blocked_id = ?"
        };
        let done = sqlx::query(query)
            .bind(user.get())
            .bind(other.get())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Whom `user` blocks, in id order.
    #[tracing::instrument(name = "sql.blocked", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn blocked(&self, user: UserId) -> Result<Vec<i64>, UserError> {
        Ok(sqlx::query_scalar(
            "SELECT blocked_id FROM blocks WHERE user_id = ? ORDER BY blocked_id",
        )
        .bind(user.get())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Ends a friendship both ways; true when there was one.
    #[tracing::instrument(name = "sql.remove_friendship", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn remove_friendship(&self, user: UserId, friend: UserId) -> Result<bool, UserError> {
        let done = sqlx::query(
            "DELETE FROM friendships WHERE (user_id = ? AND friend_id = ?) OR (user_id = ? AND friend_id = ?)",
        )
        .bind(user.get())
        .bind(friend.get())
        .bind(friend.get())
        .bind(user.get())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// A group's new name and description (its name is unique, as at
    /// creation).
    #[tracing::instrument(name = "sql.rename_group", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn rename_group(
        &self,
        group: GroupId,
        name: &GroupName,
        description: &GroupDescription,
    ) -> Result<(), UserError> {
        let result = sqlx::query(
            "UPDATE chat_groups SET name = ?, name_key = ?, description = ? WHERE id = ?",
        )
        .bind(name.as_str())
        .bind(name.key())
        .bind(description.as_str())
        .bind(group.get())
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if mysql_pool::is_unique_violation(&e) => Err(UserError::AlreadyExists(
                format!("a group is already named {:?}", name.as_str()),
            )),
            Err(e) => Err(e.into()),
        }
    }

    #[tracing::instrument(name = "sql.friends", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn friends(&self, user: UserId) -> Result<Vec<User>, UserError> {
        let rows = sqlx::query(
            "SELECT u.id, u.name FROM friendships f JOIN users u ON u.id = f.friend_id \
             WHERE f.user_id = ? ORDER BY u.id",
        )
        .bind(user.get())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| user_from_row(r, 0, 1)).collect())
    }

    #[tracing::instrument(name = "sql.create_group", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn create_group(
        &self,
        creator: UserId,
        name: &GroupName,
        description: &GroupDescription,
    ) -> Result<GroupId, UserError> {
        let mut tx = self.pool.begin().await?;
        self.lock_user_below_group_cap(&mut tx, creator).await?;
        let inserted =
            sqlx::query("INSERT INTO chat_groups (name, name_key, description) VALUES (?, ?, ?)")
                .bind(name.as_str())
                .bind(name.key())
                .bind(description.as_str())
                .execute(&mut *tx)
                .await;
        let group = match inserted {
            Ok(done) => GroupId::from_db(last_id(done.last_insert_id())?),
            Err(e) if mysql_pool::is_unique_violation(&e) => {
                return Err(UserError::AlreadyExists(format!(
                    "a group named {:?} already exists",
                    name.as_str()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        sqlx::query("INSERT INTO group_members (group_id, user_id, role) VALUES (?, ?, ?)")
            .bind(group.get())
            .bind(creator.get())
            .bind(GroupRole::Creator.as_db())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(group)
    }

    #[tracing::instrument(name = "sql.group_exists", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn group_exists(&self, group: GroupId) -> Result<bool, UserError> {
        let row = sqlx::query("SELECT 1 FROM chat_groups WHERE id = ?")
            .bind(group.get())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Returns false when the user was already a member (whatever their role).
    ///
    /// Both caps hold under concurrent joins: the user's row and then the
    /// group's row are locked (`FOR UPDATE`) before anything is counted, so
    /// joins to one group, and joins and creations by one user, take turns
    /// until commit. Every writer locks in that order (user, then group), so
    /// they cannot deadlock. The counts are read after the locks are held:
    /// a transaction's snapshot starts at its first plain read, so they see
    /// everything committed by whoever held the lock before.
    #[tracing::instrument(name = "sql.add_member", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn add_member(&self, group: GroupId, user: UserId) -> Result<bool, UserError> {
        let mut tx = self.pool.begin().await?;
        lock_row(&mut tx, Row::User, user.get()).await?;
        lock_row(&mut tx, Row::Group, group.get()).await?;
        let member = sqlx::query("SELECT 1 FROM group_members WHERE group_id = ? AND user_id = ?")
            .bind(group.get())
            .bind(user.get())
            .fetch_optional(&mut *tx)
            .await?;
        if member.is_some() {
            return Ok(false);
        }
        let max_members = self.limits.max_group_members;
        let members: i64 = sqlx::query("SELECT COUNT(*) FROM group_members WHERE group_id = ?")
            .bind(group.get())
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        if members >= i64::from(max_members) {
            return Err(UserError::LimitReached(format!(
                "group {} is full ({max_members} members)",
                group.get()
            )));
        }
        self.check_group_cap(&mut tx, user).await?;
        sqlx::query("INSERT INTO group_members (group_id, user_id, role) VALUES (?, ?, ?)")
            .bind(group.get())
            .bind(user.get())
            .bind(GroupRole::Normal.as_db())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Locks `user`'s row until commit and refuses when they are already in
    /// as many groups as allowed.
    async fn lock_user_below_group_cap(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
        user: UserId,
    ) -> Result<(), UserError> {
        lock_row(tx, Row::User, user.get()).await?;
        self.check_group_cap(tx, user).await
    }

    /// Call with `user`'s row locked.
    async fn check_group_cap(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
        user: UserId,
    ) -> Result<(), UserError> {
        let max_groups = self.limits.max_groups_per_user;
        let groups: i64 = sqlx::query("SELECT COUNT(*) FROM group_members WHERE user_id = ?")
            .bind(user.get())
            .fetch_one(&mut **tx)
            .await?
            .get(0);
        if groups >= i64::from(max_groups) {
            return Err(UserError::LimitReached(format!(
                "user {} is already in {max_groups} groups, the most allowed",
                user.get()
            )));
        }
        Ok(())
    }

    #[tracing::instrument(name = "sql.member_role", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn member_role(
        &self,
        group: GroupId,
        user: UserId,
    ) -> Result<Option<GroupRole>, UserError> {
        let row = sqlx::query("SELECT role FROM group_members WHERE group_id = ? AND user_id = ?")
            .bind(group.get())
            .bind(user.get())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| GroupRole::from_db(&r.get::<String, _>(0))))
    }

    #[tracing::instrument(name = "sql.remove_member", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn remove_member(&self, group: GroupId, user: UserId) -> Result<bool, UserError> {
        let done = sqlx::query("DELETE FROM group_members WHERE group_id = ? AND user_id = ?")
            .bind(group.get())
            .bind(user.get())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// A page of the groups `user` belongs to, in id order, each with all
    /// its members: at most `page.size` groups and, past the first group,
    /// at most [`GROUP_PAGE_MEMBERS`] members in all. The groups are sized
    /// a few at a time, so a page costs what it returns, not what follows it.
    #[tracing::instrument(name = "sql.groups_of_user", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn groups_of_user(
        &self,
        user: UserId,
        page: GroupPage,
    ) -> Result<GroupsPage, UserError> {
        const SIZED_AT_ONCE: u32 = 32;
        let mut ids: Vec<i64> = Vec::new();
        let mut members: u64 = 0;
        let mut after = page.after.map_or(0, GroupId::get);
        let mut more = false;
        'sizing: loop {
            let sized = sqlx::query(
                "SELECT me.group_id, \
                 (SELECT COUNT(*) FROM group_members m WHERE m.group_id = me.group_id) \
                 FROM group_members me WHERE me.user_id = ? AND me.group_id > ? \
                 ORDER BY me.group_id LIMIT ?",
            )
            .bind(user.get())
            .bind(after)
            .bind(SIZED_AT_ONCE)
            .fetch_all(&self.pool)
            .await?;
            for row in &sized {
                let (id, size): (i64, i64) = (row.get(0), row.get(1));
                let size = u64::try_from(size).unwrap_or(0);
                let full = ids.len() >= page.size as usize
                    || (!ids.is_empty() && members + size > GROUP_PAGE_MEMBERS);
                if full {
                    more = true;
                    break 'sizing;
                }
                ids.push(id);
                members += size;
                after = id;
            }
            if sized.len() < SIZED_AT_ONCE as usize {
                break;
            }
        }
        if ids.is_empty() {
            return Ok(GroupsPage {
                groups: Vec::new(),
                more: false,
            });
        }
        let mut query = QueryBuilder::new(
            "SELECT g.id, g.name, g.description, m.user_id, u.name, m.role \
             FROM chat_groups g \
             JOIN group_members m ON m.group_id = g.id \
             JOIN users u ON u.id = m.user_id \
             WHERE g.id IN (",
        );
        let mut list = query.separated(", ");
        for id in &ids {
            list.push_bind(*id);
        }
        query.push(") ORDER BY g.id, m.joined_at, m.user_id");
        let rows = query.build().fetch_all(&self.pool).await?;
        let mut groups: Vec<Group> = Vec::new();
        for row in &rows {
            let id = GroupId::from_db(row.get(0));
            if groups.last().is_none_or(|g| g.id != id) {
                groups.push(Group {
                    id,
                    name: row.get(1),
                    description: row.get(2),
                    members: Vec::new(),
                });
            }
            if let Some(group) = groups.last_mut() {
                group.members.push(GroupMember {
                    user: user_from_row(row, 3, 4),
                    role: GroupRole::from_db(&row.get::<String, _>(5)),
                });
            }
        }
        Ok(GroupsPage { groups, more })
    }

    #[tracing::instrument(name = "sql.member_ids", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn member_ids(&self, group: GroupId) -> Result<Vec<UserId>, UserError> {
        let rows =
            sqlx::query("SELECT user_id FROM group_members WHERE group_id = ? ORDER BY user_id")
                .bind(group.get())
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(|r| UserId::from_db(r.get(0))).collect())
    }

    /// The groups `user` is in, with the time they joined, in group id order.
    /// Bounded by the cap on groups per user.
    #[tracing::instrument(name = "sql.memberships", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn memberships(&self, user: UserId) -> Result<Vec<Membership>, UserError> {
        // joined_at is a TIMESTAMP(3); the session's time zone does not
        // matter to UNIX_TIMESTAMP, and the milliseconds are exact.
        let rows = sqlx::query(
            "SELECT group_id, CAST(UNIX_TIMESTAMP(joined_at) * 1000 AS SIGNED) \
             FROM group_members WHERE user_id = ? ORDER BY group_id",
        )
        .bind(user.get())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Membership {
                group: GroupId::from_db(r.get(0)),
                joined_at_unix_ms: r.get(1),
            })
            .collect())
    }
}

/// A row a transaction locks before it counts members or groups.
#[derive(Clone, Copy)]
enum Row {
    User,
    Group,
}

/// Locks the row (`SELECT ... FOR UPDATE`) until the transaction ends;
/// `NotFound` when there is none.
async fn lock_row(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    row: Row,
    id: i64,
) -> Result<(), UserError> {
    let (sql, what) = match row {
        Row::User => ("SELECT id FROM users WHERE id = ? FOR UPDATE", "user"),
        Row::Group => (
            "SELECT id FROM chat_groups WHERE id = ? FOR UPDATE",
            "group",
        ),
    };
    match sqlx::query(sql).bind(id).fetch_optional(&mut **tx).await? {
        Some(_) => Ok(()),
        None => Err(UserError::NotFound(format!("{what} {id} does not exist"))),
    }
}

fn user_from_row(row: &sqlx::mysql::MySqlRow, id: usize, name: usize) -> User {
    User {
        id: UserId::from_db(row.get(id)),
        name: row.get(name),
    }
}

fn last_id(raw: u64) -> Result<i64, UserError> {
    i64::try_from(raw).map_err(|e| UserError::Internal(e.into()))
}
