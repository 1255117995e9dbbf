//! Domain types of the user service. Each `parse` is the only way in, so a
//! value of these types is valid by construction.

use crate::error::UserError;

pub const MAX_USER_NAME_CHARS: usize = 32;
pub const MAX_GROUP_NAME_CHARS: usize = 64;
pub const MAX_GROUP_DESCRIPTION_CHARS: usize = 512;
pub const MAX_PASSWORD_BYTES: usize = 256;

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
}
