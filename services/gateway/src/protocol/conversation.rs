//! Conversations: who a chat belongs to, and the fields that say so on a
//! frame (`conv`, `cseq`). Pure code.
//!
//! A one-to-one conversation is `d:LOW:HIGH` (the two user ids, ascending),
//! a group's is `g:GID`. Its messages are numbered by `cseq`, one counter
//! per conversation (see `redis/number.rs`).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conversation {
    Direct(i64, i64),
    Group(i64),
}

impl Conversation {
    pub fn direct(a: i64, b: i64) -> Self {
        Self::Direct(a.min(b), a.max(b))
    }

    /// `d:1:2` or `g:7`; `None` for anything else (ids must be positive,
    /// a direct one ascending and of two different users).
    pub fn parse(text: &str) -> Option<Self> {
        let id = |s: &str| {
            s.parse::<i64>()
                .ok()
                .filter(|&n| n > 0 && !s.starts_with('+'))
        };
        if let Some(rest) = text.strip_prefix("d:") {
            let (a, b) = rest.split_once(':')?;
            let (a, b) = (id(a)?, id(b)?);
            return (a < b).then_some(Self::Direct(a, b));
        }
        text.strip_prefix("g:").and_then(id).map(Self::Group)
    }

    /// Whether `user` takes part (a group's members are known elsewhere).
    pub fn includes_directly(&self, user: i64) -> bool {
        matches!(*self, Self::Direct(a, b) if a == user || b == user)
    }

    /// The other party of a one-to-one conversation, seen from `user`.
    pub fn peer_of(&self, user: i64) -> Option<i64> {
        match *self {
            Self::Direct(a, b) if a == user => Some(b),
            Self::Direct(a, b) if b == user => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct(a, b) => write!(f, "d:{a}:{b}"),
            Self::Group(g) => write!(f, "g:{g}"),
        }
    }
}

/// A frame's JSON up to (not including) its closing `}`, followed by
/// `,"conv":"CONV","cseq":` : the sequence number and `}` complete it.
/// `None` when the frame is not a non-empty JSON object.
pub fn numbered_head(frame: &[u8], conversation: &Conversation) -> Option<Vec<u8>> {
    let end = frame.iter().rposition(|&b| b == b'}')?;
    let last = frame[..end]
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace())?;
    if *last == b'{' {
        return None;
    }
    let mut head = Vec::with_capacity(end + 40);
    head.extend_from_slice(&frame[..end]);
    head.extend_from_slice(format!(",\"conv\":\"{conversation}\",\"cseq\":").as_bytes());
    Some(head)
}

/// The frame a numbered head becomes with its sequence number.
pub fn complete(head: &[u8], cseq: u64) -> Vec<u8> {
    let mut frame = Vec::with_capacity(head.len() + 21);
    frame.extend_from_slice(head);
    frame.extend_from_slice(cseq.to_string().as_bytes());
    frame.push(b'}');
    frame
}

/// The frame without the `conv` and `cseq` that [`numbered_head`] added,
/// for a classic client (which sees exactly the classic frame). A frame
/// without them is returned as it is.
pub fn strip(mut frame: Vec<u8>) -> Vec<u8> {
    const MARK: &[u8] = b",\"conv\":\"";
    let Some(at) = frame.windows(MARK.len()).rposition(|w| w == MARK) else {
        return frame;
    };
    let tail = &frame[at + MARK.len()..];
    let Some(quote) = tail.iter().position(|&b| b == b'"') else {
        return frame;
    };
    let ours = Conversation::parse(std::str::from_utf8(&tail[..quote]).unwrap_or("")).is_some()
        && tail[quote..]
            .strip_prefix(b"\",\"cseq\":")
            .is_some_and(|rest| {
                rest.len() >= 2
                    && rest[rest.len() - 1] == b'}'
                    && rest[..rest.len() - 1].iter().all(u8::is_ascii_digit)
            });
    if ours {
        frame.truncate(at);
        frame.push(b'}');
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_parse_and_print() {
        assert_eq!(Conversation::direct(9, 3).to_string(), "d:3:9");
        assert_eq!(
            Conversation::parse("d:3:9"),
            Some(Conversation::Direct(3, 9))
        );
        assert_eq!(Conversation::parse("g:7"), Some(Conversation::Group(7)));
        for bad in [
            "d:9:3", "d:3:3", "d:3", "g:", "g:-1", "g:+1", "x:1", "d:0:1", "",
        ] {
            assert_eq!(Conversation::parse(bad), None, "{bad}");
        }
        let c = Conversation::direct(3, 9);
        assert_eq!(c.peer_of(3), Some(9));
        assert_eq!(c.peer_of(4), None);
        assert!(c.includes_directly(9));
    }

    #[test]
    fn numbering_adds_the_fields_and_strip_takes_exactly_them_away() {
        let classic = br#"{"id":1,"msg":"hi \"conv\":","msgid":6,"name":"a","toid":2}"#;
        let head = numbered_head(classic, &Conversation::direct(2, 1)).expect("an object");
        let numbered = complete(&head, 1_764_000_000_000_001);
        let value: serde_json::Value = serde_json::from_slice(&numbered).expect("json");
        assert_eq!(value["conv"], "d:1:2");
        assert_eq!(value["cseq"], 1_764_000_000_000_001u64);
        assert_eq!(value["msg"], "hi \"conv\":");
        assert_eq!(strip(numbered), classic.to_vec());
        assert_eq!(
            strip(classic.to_vec()),
            classic.to_vec(),
            "nothing to strip"
        );
        assert!(numbered_head(b"{}", &Conversation::Group(1)).is_none());
        // A sender's own look-alike text is not ours to strip.
        let forged = br#"{"msg":"x,\"conv\":\"d:1:2\",\"cseq\":5}"}"#.to_vec();
        assert_eq!(strip(forged.clone()), forged);
    }
}
