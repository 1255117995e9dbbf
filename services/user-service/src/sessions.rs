//! Session tokens: a device that logged in with its password stays signed
//! in with a token instead (issue 22). A token is 32 random bytes from the
//! OS, written `ccs_` + 64 hex digits; the service keeps only a BLAKE2s-256
//! hash of it, so the table read out signs nobody in. A token lasts
//! [`SESSION_TTL`] from its last use, at most [`MAX_SESSIONS`] per user (a
//! new one past that ends the oldest).

use argon2::password_hash::rand_core::{OsRng, RngCore as _};
use blake2::{Blake2s256, Digest as _};

use crate::error::UserError;

/// How long a token lasts unused: each login with it moves its expiry.
pub const SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Sessions a user may hold; starting one more ends the oldest.
pub const MAX_SESSIONS: i64 = 50;

const PREFIX: &str = "ccs_";

/// A token's stored form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

/// A new token: its text (for the client, once) and its hash (stored).
pub fn new_token() -> (String, TokenHash) {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let mut text = String::with_capacity(PREFIX.len() + 64);
    text.push_str(PREFIX);
    for b in bytes {
        text.push_str(&format!("{b:02x}"));
    }
    let hash = hash_of(&text);
    (text, hash)
}

/// The hash of a token a client presents; one that is not a token's shape
/// is refused as an ended session (nothing to look up).
pub fn parse_token(text: &str) -> Result<TokenHash, UserError> {
    let digits = text.strip_prefix(PREFIX).ok_or(UserError::SessionEnded)?;
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(UserError::SessionEnded);
    }
    Ok(hash_of(text))
}

fn hash_of(text: &str) -> TokenHash {
    TokenHash(Blake2s256::digest(text.as_bytes()).into())
}

/// What a session is on, for the user's list: trimmed, control characters
/// dropped, at most 64 characters; "unnamed device" when empty.
pub fn device_name(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect::<String>()
        .trim()
        .to_owned();
    if cleaned.is_empty() {
        "unnamed device".into()
    } else {
        cleaned
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One of a user's sessions, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub device: String,
    pub started_at_ms: i64,
    pub expires_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_parses_to_its_hash_and_nothing_else_does() {
        let (text, hash) = new_token();
        assert_eq!(text.len(), 68);
        assert_eq!(parse_token(&text).expect("its own token"), hash);
        let (other, _) = new_token();
        assert_ne!(parse_token(&other).expect("a token"), hash);
        for bad in [
            "",
            "ccs_",
            "ccs_zz",
            &text[..67],
            &format!("{text}0"),
            &text.replace("ccs_", "xyz_"),
        ] {
            assert!(
                matches!(parse_token(bad), Err(UserError::SessionEnded)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn device_names_are_bounded_and_clean() {
        assert_eq!(device_name("  Firefox on Linux \n"), "Firefox on Linux");
        assert_eq!(device_name(""), "unnamed device");
        assert_eq!(device_name(&"é".repeat(100)).chars().count(), 64);
        assert_eq!(device_name("a\u{0}b"), "ab");
    }
}
