//! Conversations as the server names them: `d:LOW:HIGH` for two users (their
//! ids ascending), `g:GID` for a group. History, the conversation list and
//! read marks are all keyed by this id.

use std::{fmt, str::FromStr};

use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conv {
    /// Two users; `low < high` always (the constructor sorts them).
    Direct {
        low: i64,
        high: i64,
    },
    Group(i64),
}

impl Conv {
    /// The conversation between `me` and `peer`.
    pub fn direct(me: i64, peer: i64) -> Self {
        Conv::Direct {
            low: me.min(peer),
            high: me.max(peer),
        }
    }

    /// The other party of a direct conversation as seen by `me`; `None` for
    /// a group.
    pub fn peer_of(&self, me: i64) -> Option<i64> {
        match *self {
            Conv::Direct { low, high } => Some(if low == me { high } else { low }),
            Conv::Group(_) => None,
        }
    }

    /// The conversation a chat frame belongs to: its `conv` when the server
    /// gave one, else worked out from the sender and the receiver.
    pub fn of_chat(frame: &Value) -> Option<Self> {
        if let Some(conv) = frame["conv"].as_str().and_then(|c| c.parse().ok()) {
            return Some(conv);
        }
        if let Some(group) = frame["groupid"].as_i64() {
            return Some(Conv::Group(group));
        }
        let (from, to) = (frame["id"].as_i64()?, frame["toid"].as_i64()?);
        Some(Conv::direct(from, to))
    }

    /// The fields that name this conversation in a history request (msgid
    /// 16): `toid` for a direct one (seen by `me`), `groupid` for a group.
    pub fn target_fields(&self, me: i64) -> Value {
        match self {
            Conv::Direct { .. } => json!({"toid": self.peer_of(me)}),
            Conv::Group(group) => json!({"groupid": group}),
        }
    }
}

impl fmt::Display for Conv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conv::Direct { low, high } => write!(f, "d:{low}:{high}"),
            Conv::Group(group) => write!(f, "g:{group}"),
        }
    }
}

impl FromStr for Conv {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let number = |n: &str| {
            n.parse::<i64>()
                .map_err(|_| anyhow::anyhow!("not a conversation id: {s:?}"))
        };
        match s.split(':').collect::<Vec<_>>()[..] {
            ["d", a, b] => Ok(Conv::direct(number(a)?, number(b)?)),
            ["g", group] => Ok(Conv::Group(number(group)?)),
            _ => anyhow::bail!("not a conversation id: {s:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_ids_are_ascending_whoever_asks() {
        assert_eq!(Conv::direct(17, 3).to_string(), "d:3:17");
        assert_eq!(Conv::direct(3, 17), Conv::direct(17, 3));
        assert_eq!(Conv::direct(17, 3).peer_of(17), Some(3));
        assert_eq!(Conv::direct(17, 3).peer_of(3), Some(17));
        assert_eq!(Conv::Group(7).peer_of(3), None);
    }

    #[test]
    fn parses_what_it_prints() {
        for text in ["d:3:17", "g:7"] {
            assert_eq!(text.parse::<Conv>().expect("parses").to_string(), text);
        }
        assert_eq!(
            "d:17:3".parse::<Conv>().expect("parses"),
            Conv::direct(3, 17)
        );
        for bad in ["", "d:3", "g:x", "x:1", "d:1:2:3", "g:"] {
            assert!(bad.parse::<Conv>().is_err(), "{bad}");
        }
    }

    #[test]
    fn conversation_of_a_chat_frame() {
        let with_conv = json!({"msgid": 6, "id": 2, "toid": 1, "conv": "d:1:2", "cseq": 5});
        assert_eq!(Conv::of_chat(&with_conv), Some(Conv::direct(1, 2)));
        let classic = json!({"msgid": 6, "id": 2, "toid": 1});
        assert_eq!(Conv::of_chat(&classic), Some(Conv::direct(1, 2)));
        let group = json!({"msgid": 10, "id": 2, "groupid": 9});
        assert_eq!(Conv::of_chat(&group), Some(Conv::Group(9)));
    }

    #[test]
    fn history_request_names_the_other_party() {
        assert_eq!(Conv::direct(1, 2).target_fields(1), json!({"toid": 2}));
        assert_eq!(Conv::direct(1, 2).target_fields(2), json!({"toid": 1}));
        assert_eq!(Conv::Group(5).target_fields(1), json!({"groupid": 5}));
    }
}
