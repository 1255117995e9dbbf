//! Domain types of the user service. Each `parse` is the only way in, so a
//! value of these types is valid by construction.

use crate::error::UserError;

pub const MAX_USER_NAME_CHARS: usize = 32;
pub const MAX_GROUP_NAME_CHARS: usize = 64;
pub const MAX_GROUP_DESCRIPTION_CHARS: usize = 512;
pub const MAX_PASSWORD_BYTES: usize = 256;
/// Groups per ListUserGroups page: at most this many, and this many when the
/// caller does not say (page_size 0), so that a caller from before pages
/// existed still gets every group of a user within the per-user default cap.
pub const MAX_GROUP_PAGE: u32 = 500;
/// A ListUserGroups page also ends before its groups' members would pass this
/// many in all (a page always holds at least one group), so that one page
/// reads a bounded number of rows however many groups follow it.
pub const GROUP_PAGE_MEMBERS: u64 = 50_000;
/// A ListUserGroups page also ends before its encoded groups would pass this
/// many bytes (a page always holds at least one group; the largest group,
/// 1000 members with 32-character names of four-byte characters, encodes to
/// about 150 KiB). Well under the 4 MiB a gRPC message may have.
pub const GROUP_PAGE_BYTES: usize = 3 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(i64);

impl UserId {
    pub fn parse(raw: i64, field: &str) -> Result<Self, UserError> {
        if raw > 0 {
            Ok(Self(raw))
        } else {
            Err(UserError::InvalidArgument(format!(
                "{field} must be a positive user id, got {raw}"
            )))
        }
    }

    /// For ids read back from our own database.
    pub(crate) fn from_db(raw: i64) -> Self {
        Self(raw)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupId(i64);

impl GroupId {
    pub fn parse(raw: i64) -> Result<Self, UserError> {
        if raw > 0 {
            Ok(Self(raw))
        } else {
            Err(UserError::InvalidArgument(format!(
                "group_id must be a positive group id, got {raw}"
            )))
        }
    }

    pub(crate) fn from_db(raw: i64) -> Self {
        Self(raw)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// Where a page of a user's groups starts and how many groups it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPage {
    /// Groups with an id above this one (keyset pagination: a group joined
    /// or left between pages neither shifts nor repeats the others).
    pub after: Option<GroupId>,
    pub size: u32,
}

impl GroupPage {
    /// `page_token` is what the previous page's `next_page_token` said.
    pub fn parse(page_size: i32, page_token: &str) -> Result<Self, UserError> {
        let size = match u32::try_from(page_size) {
            Ok(0) => MAX_GROUP_PAGE,
            Ok(size) => size.min(MAX_GROUP_PAGE),
            Err(_) => {
                return Err(UserError::InvalidArgument(format!(
                    "page_size must not be negative, got {page_size}"
                )));
            }
        };
        let after = if page_token.is_empty() {
            None
        } else {
            let id = page_token
                .strip_prefix("after:")
                .and_then(|id| id.parse::<i64>().ok())
                .filter(|id| *id > 0)
                .ok_or_else(|| {
                    UserError::InvalidArgument(format!(
                        "page_token {page_token:?} is not a next_page_token of this service"
                    ))
                })?;
            Some(GroupId(id))
        };
        Ok(Self { after, size })
    }

    /// The token of the page that follows `last`.
    pub fn token_after(last: GroupId) -> String {
        format!("after:{}", last.0)
    }
}

/// A display name: trimmed, 1..=max characters, no control characters.
/// Uniqueness is decided on [`Name::key`], its lower-cased form.
fn parse_name(raw: &str, what: &str, max_chars: usize) -> Result<String, UserError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(UserError::InvalidArgument(format!(
            "{what} must not be empty"
        )));
    }
    let chars = name.chars().count();
    if chars > max_chars {
        return Err(UserError::InvalidArgument(format!(
            "{what} is {chars} characters long; at most {max_chars} are allowed"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(UserError::InvalidArgument(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(name.to_owned())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(raw: &str) -> Result<Self, UserError> {
        parse_name(raw, "user name", MAX_USER_NAME_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What uniqueness is decided on: "Alice" and "alice" are the same name.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupName(String);

impl GroupName {
    pub fn parse(raw: &str) -> Result<Self, UserError> {
        parse_name(raw, "group name", MAX_GROUP_NAME_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription(String);

impl GroupDescription {
    /// May be empty; bounded in length.
    pub fn parse(raw: &str) -> Result<Self, UserError> {
        let chars = raw.chars().count();
        if chars > MAX_GROUP_DESCRIPTION_CHARS {
            return Err(UserError::InvalidArgument(format!(
                "group description is {chars} characters long; at most {MAX_GROUP_DESCRIPTION_CHARS} are allowed"
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A clear-text password on its way to the hasher. Never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: String) -> Result<Self, UserError> {
        if raw.is_empty() {
            return Err(UserError::InvalidArgument(
                "password must not be empty".into(),
            ));
        }
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(UserError::InvalidArgument(format!(
                "password is longer than {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupRole {
    Creator,
    Normal,
}

impl GroupRole {
    pub fn as_db(self) -> &'static str {
        match self {
            GroupRole::Creator => "creator",
            GroupRole::Normal => "normal",
        }
    }

    pub(crate) fn from_db(raw: &str) -> Self {
        if raw == "creator" {
            GroupRole::Creator
        } else {
            GroupRole::Normal
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub user: User,
    pub role: GroupRole,
}

/// A user's membership of one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub group: GroupId,
    pub joined_at_unix_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: GroupId,
    pub name: String,
    pub description: String,
    pub members: Vec<GroupMember>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(UserName::parse("  bob ").expect("valid").as_str(), "bob");
        assert!(UserName::parse("   ").is_err());
        assert!(UserName::parse(&"x".repeat(MAX_USER_NAME_CHARS + 1)).is_err());
        assert!(UserName::parse(&"é".repeat(MAX_USER_NAME_CHARS)).is_ok());
        assert!(UserName::parse("a\u{0}b").is_err());
        assert!(UserName::parse("a\nb").is_err());
    }

    #[test]
    fn name_key_folds_case() {
        let a = UserName::parse("Ålice").expect("valid");
        let b = UserName::parse("åLICE").expect("valid");
        assert_eq!(a.key(), b.key());
        assert_ne!(a.as_str(), b.as_str());
    }

    #[test]
    fn ids_must_be_positive() {
        assert!(UserId::parse(0, "id").is_err());
        assert!(UserId::parse(-1, "id").is_err());
        assert_eq!(UserId::parse(5, "id").expect("valid").get(), 5);
        assert!(GroupId::parse(-3).is_err());
    }

    #[test]
    fn password_is_bounded_and_hidden() {
        assert!(Password::parse(String::new()).is_err());
        assert!(Password::parse("x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        let p = Password::parse("hunter2".into()).expect("valid");
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn description_may_be_empty_but_bounded() {
        assert!(GroupDescription::parse("").is_ok());
        assert!(GroupDescription::parse(&"d".repeat(MAX_GROUP_DESCRIPTION_CHARS + 1)).is_err());
    }

    #[test]
    fn group_pages_default_clamp_and_round_trip() {
        let first = GroupPage::parse(0, "").expect("valid");
        assert_eq!((first.after, first.size), (None, MAX_GROUP_PAGE));
        assert_eq!(GroupPage::parse(7, "").expect("valid").size, 7);
        assert_eq!(
            GroupPage::parse(i32::MAX, "").expect("valid").size,
            MAX_GROUP_PAGE
        );
        assert!(GroupPage::parse(-1, "").is_err());
        let token = GroupPage::token_after(GroupId(42));
        let next = GroupPage::parse(10, &token).expect("valid");
        assert_eq!(next.after, Some(GroupId(42)));
        for bad in ["42", "after:", "after:-1", "after:x"] {
            assert!(GroupPage::parse(10, bad).is_err(), "{bad}");
        }
    }
}
