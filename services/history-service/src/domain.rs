//! Validated requests and the values of the history service. Each `parse` is
//! the only way in, so a value of these types is valid by construction.

use std::fmt;

use crate::error::HistoryError;

/// Partitions of the history stream (`{PREFIX}{h:0}` .. `{PREFIX}{h:15}`);
/// the gateways use the same number.
pub const HISTORY_PARTITIONS: u32 = 16;
/// A page or a conversation list when the caller does not say.
pub const DEFAULT_PAGE: u32 = 50;
/// The most a page or a conversation list holds; more is read as this.
pub const MAX_PAGE: u32 = 200;
/// Unread messages are counted up to this many.
pub const MAX_UNREAD: u32 = 1000;
/// A page (or a conversation list) ends before its frames pass this many
/// bytes (it always holds at least one), so a reply stays well below the
/// 4 MiB of a gRPC message whatever the frames' sizes.
pub const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;
/// The longest server message id a gateway writes.
pub const MAX_MID_BYTES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(i64);

impl UserId {
    pub fn parse(raw: i64, field: &str) -> Result<Self, HistoryError> {
        if raw > 0 {
            Ok(Self(raw))
        } else {
            Err(HistoryError::InvalidArgument(format!(
                "{field} must be a positive user id, got {raw}"
            )))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// A conversation: two users (`d:LOW:HIGH`) or a group (`g:GID`). Only the
/// canonical spelling parses, so one conversation has one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conversation {
    Direct { low: i64, high: i64 },
    Group(i64),
}

impl Conversation {
    pub fn parse(raw: &str) -> Result<Self, HistoryError> {
        let invalid = |why: &str| {
            HistoryError::InvalidArgument(format!(
                "conversation {raw:?} is not valid: {why} (expected d:LOW:HIGH or g:GROUP)"
            ))
        };
        if let Some(rest) = raw.strip_prefix("d:") {
            let (low, high) = rest
                .split_once(':')
                .ok_or_else(|| invalid("no second id"))?;
            let low = canonical_id(low)
                .ok_or_else(|| invalid("the first id is not a positive integer"))?;
            let high = canonical_id(high)
                .ok_or_else(|| invalid("the second id is not a positive integer"))?;
            if low > high {
                return Err(invalid("the ids must be in ascending order"));
            }
            Ok(Self::Direct { low, high })
        } else if let Some(group) = raw.strip_prefix("g:") {
            canonical_id(group)
                .map(Self::Group)
                .ok_or_else(|| invalid("the group id is not a positive integer"))
        } else {
            Err(invalid("it must start with d: or g:"))
        }
    }

    /// The other party of a 1:1 conversation that `user` is in.
    pub fn peer_of(self, user: UserId) -> Option<UserId> {
        match self {
            Self::Direct { low, high } if low == user.get() => Some(UserId(high)),
            Self::Direct { low, high } if high == user.get() => Some(UserId(low)),
            _ => None,
        }
    }

    /// Both parties of a 1:1 conversation.
    pub fn parties(self) -> Option<[UserId; 2]> {
        match self {
            Self::Direct { low, high } => Some([UserId(low), UserId(high)]),
            Self::Group(_) => None,
        }
    }

    pub fn group(self) -> Option<i64> {
        match self {
            Self::Group(id) => Some(id),
            Self::Direct { .. } => None,
        }
    }
}

impl fmt::Display for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct { low, high } => write!(f, "d:{low}:{high}"),
            Self::Group(id) => write!(f, "g:{id}"),
        }
    }
}

/// A positive decimal id without sign, leading zeros or spaces.
fn canonical_id(raw: &str) -> Option<i64> {
    if raw.is_empty() || raw.starts_with('0') || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok().filter(|&id: &i64| id > 0)
}

/// Which page of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageAt {
    Newest,
    /// The messages just before this seq.
    Before(u64),
    /// The messages just after this seq.
    After(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub at: PageAt,
    pub limit: u32,
}

impl Page {
    pub fn parse(before_seq: u64, after_seq: u64, limit: u32) -> Result<Self, HistoryError> {
        let at = match (before_seq, after_seq) {
            (0, 0) => PageAt::Newest,
            (before, 0) => PageAt::Before(before),
            (0, after) => PageAt::After(after),
            (before, after) => {
                return Err(HistoryError::InvalidArgument(format!(
                    "before_seq ({before}) and after_seq ({after}) cannot both be set: a page goes one way"
                )));
            }
        };
        Ok(Self {
            at,
            limit: list_size(limit),
        })
    }
}

/// How many items a page or list holds: 0 means the default, more than the
/// most is the most.
pub fn list_size(raw: u32) -> u32 {
    match raw {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// What part of a conversation a user may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// A party to a 1:1 conversation: all of it.
    All,
    /// A group member: what was sent at or after they joined.
    SentFrom { joined_at_us: i64 },
}

impl Visibility {
    pub fn shows(self, sent_at_us: i64) -> bool {
        sent_at_us >= self.earliest_sent_at()
    }

    /// The earliest send time shown.
    pub fn earliest_sent_at(self) -> i64 {
        match self {
            Self::All => i64::MIN,
            Self::SentFrom { joined_at_us } => joined_at_us,
        }
    }
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub conversation: Conversation,
    pub seq: u64,
    pub mid: String,
    pub sender_id: i64,
    pub sent_at_us: i64,
    pub frame: String,
}

impl StoredMessage {
    /// The frame's `msg` field; empty when the frame has none.
    pub fn text(&self) -> String {
        frame_text(&self.frame)
    }
}

/// A chat frame's `msg` field; empty when it has none (or is not JSON).
pub fn frame_text(frame: &str) -> String {
    serde_json::from_str::<serde_json::Value>(frame)
        .ok()
        .and_then(|frame| frame.get("msg")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One page of a conversation, ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub messages: Vec<StoredMessage>,
    pub more: bool,
}

/// One entry of a user's conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub conversation: Conversation,
    pub last: StoredMessage,
    pub read_seq: u64,
    pub unread: u32,
    pub peer_read_seq: u64,
}

/// A user's read mark after MarkRead, and what is still unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    pub read_seq: u64,
    pub unread: u32,
}

/// A history stream entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `op=m`: a message to keep.
    Message(NewMessage),
    /// `op=x`: the message with this mid was given this number and then
    /// refused: delete it if stored under this number, never store it
    /// under this number later (a retry of it comes with a new number).
    Retract(Retraction),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub conversation: Conversation,
    pub seq: u64,
    pub mid: String,
    pub sender_id: i64,
    pub sent_at_us: i64,
    /// The W3C traceparent of the gateway's span (may be empty).
    pub traceparent: String,
    pub frame: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retraction {
    pub conversation: Conversation,
    pub seq: u64,
    pub mid: String,
}

impl Entry {
    /// An entry from its fields. A chat is one field, `m` =
    /// `CONV SEQ MID FROM AT TP\nFRAME` (TP may be empty), as the gateways
    /// write it; a retraction (and a chat written before that form) has
    /// the fields `op`, `mid`, `conv`, `seq`, and for a chat `from`, `at`,
    /// `tp`, `frame`. The error says what is wrong.
    /// Every chat of a stream entry given as its fields in order: gateways
    /// put a call's chats for one stream in one entry, the field `m` once
    /// per chat; an entry without `m` is one entry of the older forms
    /// ([`Entry::parse`]).
    pub fn parse_all(fields: &[(String, String)]) -> Vec<Result<Self, String>> {
        let packed: Vec<Result<Self, String>> = fields
            .iter()
            .filter(|(name, _)| name == "m")
            .map(|(_, value)| Self::parse_packed(value))
            .collect();
        if !packed.is_empty() {
            return packed;
        }
        let field = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        vec![Self::parse(field)]
    }

    pub fn parse<'a>(field: impl Fn(&str) -> Option<&'a str>) -> Result<Self, String> {
        if let Some(packed) = field("m") {
            return Self::parse_packed(packed);
        }
        let required = |name: &str| field(name).ok_or_else(|| format!("no {name} field"));
        let (conversation, seq, mid) =
            Self::numbered(required("conv")?, required("seq")?, required("mid")?)?;
        match required("op")? {
            "x" => Ok(Self::Retract(Retraction {
                conversation,
                seq,
                mid,
            })),
            "m" => Self::message(
                (conversation, seq, mid),
                required("from")?,
                required("at")?,
                field("tp").unwrap_or_default(),
                required("frame")?,
            ),
            other => Err(format!("unknown op {other:?}")),
        }
    }

    /// A chat in its one field: `CONV SEQ MID FROM AT TP\nFRAME`.
    fn parse_packed(packed: &str) -> Result<Self, String> {
        let (header, frame) = packed
            .split_once('\n')
            .ok_or("m has no newline before the frame")?;
        let mut parts = header.splitn(6, ' ');
        let mut next = |name: &str| parts.next().ok_or_else(|| format!("m has no {name}"));
        let conv = next("conv")?;
        let seq = next("seq")?;
        let mid = next("mid")?;
        let from = next("from")?;
        let at = next("at")?;
        let tp = next("tp").unwrap_or_default();
        Self::message(Self::numbered(conv, seq, mid)?, from, at, tp, frame)
    }

    /// The conversation, number and message id every entry has.
    fn numbered(conv: &str, seq: &str, mid: &str) -> Result<(Conversation, u64, String), String> {
        if mid.is_empty() || mid.len() > MAX_MID_BYTES {
            return Err(format!(
                "mid must have 1 to {MAX_MID_BYTES} bytes, not {}",
                mid.len()
            ));
        }
        let conversation = Conversation::parse(conv).map_err(|e| e.to_string())?;
        let seq: u64 = seq
            .parse()
            .ok()
            .filter(|&seq| seq > 0)
            .ok_or("seq is not a positive integer")?;
        Ok((conversation, seq, mid.to_owned()))
    }

    fn message(
        (conversation, seq, mid): (Conversation, u64, String),
        from: &str,
        at: &str,
        traceparent: &str,
        frame: &str,
    ) -> Result<Self, String> {
        let sender_id: i64 = from
            .parse()
            .ok()
            .filter(|&id| id > 0)
            .ok_or("from is not a positive user id")?;
        let sent_at_us: i64 = at
            .parse()
            .ok()
            .filter(|&at| at > 0)
            .ok_or("at is not a positive number of microseconds")?;
        if frame.is_empty() {
            return Err("frame is empty".into());
        }
        Ok(Self::Message(NewMessage {
            conversation,
            seq,
            mid,
            sender_id,
            sent_at_us,
            traceparent: traceparent.to_owned(),
            frame: frame.to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_parse_only_in_canonical_form() {
        assert_eq!(
            Conversation::parse("d:3:17").expect("direct"),
            Conversation::Direct { low: 3, high: 17 }
        );
        assert_eq!(
            Conversation::parse("g:7").expect("group"),
            Conversation::Group(7)
        );
        for bad in [
            "",
            "d:",
            "d:3",
            "d:17:3",
            "d:03:17",
            "d:3:+17",
            "d:0:1",
            "d:-1:2",
            "g:",
            "g:0",
            "g:07",
            "g: 7",
            "x:1",
            "d:3:17:1",
            "g:99999999999999999999",
        ] {
            let error = Conversation::parse(bad).expect_err(bad);
            assert!(error.to_string().contains("is not valid"), "{bad}: {error}");
        }
        for good in ["d:3:17", "d:5:5", "g:7", "d:1:9223372036854775807"] {
            assert_eq!(Conversation::parse(good).expect(good).to_string(), good);
        }
    }

    #[test]
    fn a_direct_conversation_has_two_parties() {
        let conv = Conversation::parse("d:3:17").expect("direct");
        assert_eq!(conv.peer_of(UserId(3)), Some(UserId(17)));
        assert_eq!(conv.peer_of(UserId(17)), Some(UserId(3)));
        assert_eq!(conv.peer_of(UserId(4)), None);
        assert_eq!(Conversation::Group(3).peer_of(UserId(3)), None);
    }

    #[test]
    fn pages_go_one_way_and_are_bounded() {
        assert_eq!(Page::parse(0, 0, 0).expect("newest").at, PageAt::Newest);
        assert_eq!(Page::parse(0, 0, 0).expect("default").limit, DEFAULT_PAGE);
        assert_eq!(
            Page::parse(9, 0, 7).expect("before"),
            Page {
                at: PageAt::Before(9),
                limit: 7
            }
        );
        assert_eq!(
            Page::parse(0, 9, 1000).expect("after"),
            Page {
                at: PageAt::After(9),
                limit: MAX_PAGE
            }
        );
        let both = Page::parse(9, 3, 0).expect_err("both");
        assert!(both.to_string().contains("cannot both be set"), "{both}");
    }

    #[test]
    fn text_is_the_frames_msg() {
        let message = |frame: &str| StoredMessage {
            conversation: Conversation::Group(1),
            seq: 1,
            mid: "m".into(),
            sender_id: 1,
            sent_at_us: 1,
            frame: frame.into(),
        };
        assert_eq!(message(r#"{"msgid":6,"msg":"hi 🙂"}"#).text(), "hi 🙂");
        assert_eq!(message(r#"{"msgid":6}"#).text(), "");
        assert_eq!(message("not json").text(), "");
    }

    #[test]
    fn group_members_see_from_their_join_time() {
        let visibility = Visibility::SentFrom { joined_at_us: 100 };
        assert!(!visibility.shows(99));
        assert!(visibility.shows(100));
        assert!(Visibility::All.shows(i64::MIN));
    }

    fn fields<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn a_chat_parses_from_its_one_field_as_from_the_older_fields() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let packed = format!(
            "d:3:17 1795600000000042 m-1 3 1795600000000001 {tp}\n{{\"msgid\":6,\"msg\":\"a b\"}}"
        );
        let one = Entry::parse(fields(&[("m", packed.as_str())])).expect("one field");
        let older = Entry::parse(fields(&[
            ("op", "m"),
            ("mid", "m-1"),
            ("conv", "d:3:17"),
            ("seq", "1795600000000042"),
            ("from", "3"),
            ("at", "1795600000000001"),
            ("tp", tp),
            ("frame", r#"{"msgid":6,"msg":"a b"}"#),
        ]))
        .expect("older fields");
        assert_eq!(one, older);
        // No traceparent: the header ends with a space.
        let untraced = Entry::parse(fields(&[("m", "g:7 5 m-2 3 10 \n{}")])).expect("no tp");
        let Entry::Message(m) = untraced else {
            panic!("not a message: {untraced:?}")
        };
        assert_eq!(
            (m.seq, m.traceparent.as_str(), m.frame.as_str()),
            (5, "", "{}")
        );
    }

    #[test]
    fn an_entry_with_several_chats_gives_each_in_order() {
        let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let all = Entry::parse_all(&owned(&[
            ("m", "g:7 5 m-5 3 10 \n{}"),
            ("m", "g:7 6 m-6 3 11 \n"),
            ("m", "d:3:17 2 m-7 3 12 \n{}"),
        ]));
        let seqs: Vec<Result<u64, bool>> = all
            .iter()
            .map(|e| match e {
                Ok(Entry::Message(m)) => Ok(m.seq),
                Ok(Entry::Retract(_)) => Err(false),
                Err(_) => Err(true),
            })
            .collect();
        // The malformed one (an empty frame) is reported alone.
        assert_eq!(seqs, vec![Ok(5), Err(true), Ok(2)]);
        // An entry of the older fields is one entry.
        let older = Entry::parse_all(&owned(&[
            ("op", "x"),
            ("mid", "m-1"),
            ("conv", "g:7"),
            ("seq", "4"),
        ]));
        assert!(matches!(older.as_slice(), [Ok(Entry::Retract(_))]));
    }

    #[test]
    fn a_malformed_chat_field_says_what_is_wrong() {
        let parse = |m: &str| Entry::parse(fields(&[("m", m)])).expect_err(m);
        assert!(parse("g:7 5 m-2 3 10").contains("newline"));
        assert!(parse("g:7 5 m-2\n{}").contains("no from"));
        assert!(parse("g:7 0 m-2 3 10 \n{}").contains("seq"));
        assert!(parse("d:9:3 5 m-2 3 10 \n{}").contains("ascending"));
        assert!(parse("g:7 5 m-2 3 10 \n").contains("frame is empty"));
    }

    #[test]
    fn stream_entries_parse_as_the_gateways_wrote_them_before() {
        let message = Entry::parse(fields(&[
            ("op", "m"),
            ("mid", "m-1"),
            ("conv", "d:3:17"),
            ("seq", "1795600000000042"),
            ("from", "3"),
            ("at", "1795600000000001"),
            (
                "tp",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("frame", r#"{"msgid":6,"msg":"hi"}"#),
        ]))
        .expect("message");
        let Entry::Message(m) = message else {
            panic!("not a message: {message:?}")
        };
        assert_eq!(m.conversation, Conversation::Direct { low: 3, high: 17 });
        assert_eq!((m.seq, m.sender_id), (1_795_600_000_000_042, 3));
        assert!(m.traceparent.starts_with("00-"));

        let retract = Entry::parse(fields(&[
            ("op", "x"),
            ("mid", "m-1"),
            ("conv", "g:7"),
            ("seq", "9"),
        ]))
        .expect("retract");
        assert_eq!(
            retract,
            Entry::Retract(Retraction {
                conversation: Conversation::Group(7),
                seq: 9,
                mid: "m-1".into()
            })
        );
    }

    #[test]
    fn malformed_entries_say_what_is_wrong() {
        let base = [
            ("op", "m"),
            ("mid", "m-1"),
            ("conv", "g:7"),
            ("seq", "5"),
            ("from", "3"),
            ("at", "10"),
            ("frame", "{}"),
        ];
        let with = |name: &str, value: &'static str| {
            let mut pairs = base.to_vec();
            pairs.retain(|(k, _)| *k != name);
            if !value.is_empty() {
                pairs.push((Box::leak(name.to_owned().into_boxed_str()), value));
            }
            Entry::parse(fields(&pairs)).expect_err(name)
        };
        assert!(with("op", "q").contains("unknown op"));
        assert!(with("mid", "").contains("no mid"));
        let long_mid: &'static str = Box::leak("x".repeat(MAX_MID_BYTES + 1).into_boxed_str());
        assert!(with("mid", long_mid).contains("1 to 100 bytes"));
        assert!(with("conv", "d:9:3").contains("ascending"));
        assert!(with("seq", "0").contains("seq"));
        assert!(with("from", "-1").contains("from"));
        assert!(with("at", "x").contains("at"));
        assert!(with("frame", "").contains("no frame"));
    }
}
