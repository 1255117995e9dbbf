//! Validated requests of the offline service.

use crate::error::OfflineError;

pub const DEFAULT_FETCH_LIMIT: u32 = 100;
pub const MAX_FETCH_LIMIT: u32 = 1000;
pub const MAX_CLIENT_MSG_ID_CHARS: usize = 128;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest payload accepted, in bytes.
    pub max_message_bytes: usize,
    /// Most pending messages one receiver may have.
    pub max_backlog: u32,
    /// Most payload bytes one Fetch returns (at least one message is always
    /// returned), so a page stays far below gRPC's 4 MiB message limit.
    pub max_page_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 128 * 1024,
            max_backlog: 10_000,
            max_page_bytes: 1024 * 1024,
        }
    }
}

fn positive_id(raw: i64, field: &str) -> Result<i64, OfflineError> {
    if raw > 0 {
        Ok(raw)
    } else {
        Err(OfflineError::InvalidArgument(format!(
            "{field} must be a positive user id, got {raw}"
        )))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverId(i64);

impl ReceiverId {
    pub fn parse(raw: i64) -> Result<Self, OfflineError> {
        positive_id(raw, "receiver_id").map(Self)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// A message on its way into the store: non-empty, within the size limit.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub receiver: ReceiverId,
    pub sender_id: i64,
    pub client_msg_id: Option<String>,
    pub payload: String,
    /// Its sequence in the receiver's gateway inbox (0: none).
    pub inbox_seq: u64,
}

impl NewMessage {
    pub fn parse(
        receiver_id: i64,
        sender_id: i64,
        client_msg_id: String,
        payload: String,
        limits: &Limits,
    ) -> Result<Self, OfflineError> {
        let receiver = ReceiverId::parse(receiver_id)?;
        let sender_id = positive_id(sender_id, "sender_id")?;
        if payload.is_empty() {
            return Err(OfflineError::InvalidArgument(
                "payload must not be empty".into(),
            ));
        }
        if payload.len() > limits.max_message_bytes {
            return Err(OfflineError::TooLarge {
                size: payload.len(),
                max: limits.max_message_bytes,
            });
        }
        let client_msg_id = if client_msg_id.is_empty() {
            None
        } else if client_msg_id.chars().count() > MAX_CLIENT_MSG_ID_CHARS {
            return Err(OfflineError::InvalidArgument(format!(
                "client_msg_id is longer than {MAX_CLIENT_MSG_ID_CHARS} characters"
            )));
        } else {
            Some(client_msg_id)
        };
        Ok(Self {
            receiver,
            sender_id,
            client_msg_id,
            payload,
            inbox_seq: 0,
        })
    }

    pub fn with_inbox_seq(self, inbox_seq: u64) -> Self {
        Self { inbox_seq, ..self }
    }
}

/// How many messages one fetch returns: 0 means the default.
pub fn page_size(raw: u32) -> Result<u32, OfflineError> {
    match raw {
        0 => Ok(DEFAULT_FETCH_LIMIT),
        1..=MAX_FETCH_LIMIT => Ok(raw),
        _ => Err(OfflineError::InvalidArgument(format!(
            "limit must be between 1 and {MAX_FETCH_LIMIT} (or 0 for {DEFAULT_FETCH_LIMIT}), got {raw}"
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub position: u64,
    pub sender_id: i64,
    pub payload: String,
    pub stored_at_unix_ms: i64,
    pub client_msg_id: Option<String>,
    pub inbox_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub position: u64,
    pub duplicate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_message_bytes: 10,
            max_backlog: 5,
            max_page_bytes: 100,
        }
    }

    #[test]
    fn payload_must_be_non_empty_and_within_bounds() {
        assert!(NewMessage::parse(1, 2, String::new(), String::new(), &limits()).is_err());
        let too_big = NewMessage::parse(1, 2, String::new(), "x".repeat(11), &limits());
        assert!(matches!(
            too_big,
            Err(OfflineError::TooLarge { size: 11, max: 10 })
        ));
        assert!(NewMessage::parse(1, 2, String::new(), "x".repeat(10), &limits()).is_ok());
    }

    #[test]
    fn ids_must_be_positive() {
        assert!(NewMessage::parse(0, 2, String::new(), "x".into(), &limits()).is_err());
        assert!(NewMessage::parse(1, -2, String::new(), "x".into(), &limits()).is_err());
    }

    #[test]
    fn empty_client_id_means_none() {
        let m = NewMessage::parse(1, 2, String::new(), "x".into(), &limits()).expect("valid");
        assert_eq!(m.client_msg_id, None);
        let m = NewMessage::parse(1, 2, "abc".into(), "x".into(), &limits()).expect("valid");
        assert_eq!(m.client_msg_id.as_deref(), Some("abc"));
    }

    #[test]
    fn page_size_bounds() {
        assert_eq!(page_size(0).expect("default"), DEFAULT_FETCH_LIMIT);
        assert_eq!(page_size(7).expect("seven"), 7);
        assert!(page_size(MAX_FETCH_LIMIT + 1).is_err());
    }
}
