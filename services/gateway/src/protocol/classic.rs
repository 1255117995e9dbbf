//! The classic chat protocol: requests parsed from JSON, replies encoded
//! byte for byte as the classic server does (compact JSON, keys sorted).
//!
//! Our additions, all optional for a classic client:
//! - a request may carry an integer `seq`; then the gateway answers it
//!   (login and register acks carry it, every other request gets a msgid 11
//!   reply with `errno` 0 or an `errmsg`);
//! - every failure is answered with msgid 11 and an `errmsg`, with `seq`
//!   when the request had one. A successful request without `seq` gets
//!   exactly the classic behaviour (for most messages: no reply at all);
//! - delivery acknowledgements: a login with `"acks":true` (and optionally
//!   `"since":RSEQ` to resume) gets every chat frame with `mid` (server
//!   message id) and `rseq` (the receiver's sequence), and acknowledges with
//!   `{"msgid":12,"ack":RSEQ}`; such a client also pings (`{"msgid":13}`,
//!   answered `{"msgid":14}`);
//! - a chat may carry `cmid`, the client's id for it: a retry with the same
//!   `cmid` is recorded once.

use serde_json::{Map, Value, json};

pub use super::conversation::Conversation;

pub const LOGIN_MSG: i64 = 1;
pub const LOGIN_MSG_ACK: i64 = 2;
pub const LOGINOUT_MSG: i64 = 3;
pub const REG_MSG: i64 = 4;
pub const REG_MSG_ACK: i64 = 5;
pub const ONE_CHAT_MSG: i64 = 6;
pub const ADD_FRIEND_MSG: i64 = 7;
pub const CREATE_GROUP_MSG: i64 = 8;
pub const ADD_GROUP_MSG: i64 = 9;
pub const GROUP_CHAT_MSG: i64 = 10;
/// Our reply to a request: `errno` 0 on success, else `errmsg` says why.
pub const REPLY_MSG: i64 = 11;
/// The client acknowledges deliveries up to `ack` (its `rseq`).
pub const ACK_MSG: i64 = 12;
/// A heartbeat from the client, answered with [`PONG_MSG`].
pub const PING_MSG: i64 = 13;
pub const PONG_MSG: i64 = 14;
/// The rest of a login ack's friends and groups, for a client that uses the
/// additions and has more of them than one frame should carry.
pub const ROSTER_PAGE_MSG: i64 = 15;
/// A page of a conversation's history (answered with msgid 11 `messages`).
pub const HISTORY_MSG: i64 = 16;
/// The user's conversations with unread counts (answered with msgid 11).
pub const CONVERSATIONS_MSG: i64 = 17;
/// Client: "I have read up to `upto`"; server: someone's read receipt.
pub const READ_MSG: i64 = 18;
/// "typing": from a client, and to the other party (never stored).
pub const TYPING_MSG: i64 = 19;
/// Client: "messages of this conversation reached me up to `upto`"; the
/// other party gets it as a delivery receipt (never stored).
pub const DELIVERED_MSG: i64 = 20;
/// The user's friends and groups with presence, as plain objects (msgid 11).
pub const ROSTER_MSG: i64 = 21;

/// At most this many messages or conversations per page.
pub const MAX_PAGE: u32 = 200;

/// Error numbers in msgid 11 replies (and login acks beyond the classic 1 and 2).
pub mod errno {
    /// The request is malformed or a field is invalid.
    pub const BAD_REQUEST: i64 = 1;
    /// Login: the account is online elsewhere (classic).
    pub const ACCOUNT_IN_USE: i64 = 2;
    /// The request needs a logged-in connection.
    pub const NOT_LOGGED_IN: i64 = 3;
    /// The request is not allowed for this user (id mismatch, not a member ...).
    pub const FORBIDDEN: i64 = 4;
    /// The user or group does not exist.
    pub const NOT_FOUND: i64 = 5;
    /// The request or message is larger than allowed.
    pub const TOO_LARGE: i64 = 6;
    /// Too many login or register attempts (per client address, or failed
    /// logins per account); the reply's `retry_after` says in how many
    /// seconds. (A connection over its request rate is paced, not refused.)
    pub const RATE_LIMITED: i64 = 7;
    /// A service behind the gateway is unavailable; nothing was done, retry.
    pub const UNAVAILABLE: i64 = 8;
    /// The name is taken.
    pub const ALREADY_EXISTS: i64 = 9;
    /// The gateway itself failed.
    pub const INTERNAL: i64 = 10;
    /// The server is full or shutting down.
    pub const OVERLOADED: i64 = 12;
    /// The receiver has too many undelivered messages; this one was not accepted.
    pub const BACKLOG_FULL: i64 = 13;
}

pub const CLASSIC_BAD_LOGIN: &str = "id or password is invalid!";
pub const CLASSIC_IN_USE: &str = "this account is using, input another!";

/// Why a request failed: the number and the words sent to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub errno: i64,
    pub errmsg: String,
    /// For a throttled request: seconds until it may succeed (`retry_after`
    /// in the reply).
    pub retry_after: Option<u64>,
}

impl Failure {
    pub fn new(errno: i64, errmsg: impl Into<String>) -> Self {
        Self {
            errno,
            errmsg: errmsg.into(),
            retry_after: None,
        }
    }

    /// A throttled request (errno 7): try again in `seconds`.
    pub fn throttled(errmsg: impl Into<String>, seconds: u64) -> Self {
        Self {
            retry_after: Some(seconds.max(1)),
            ..Self::new(errno::RATE_LIMITED, errmsg)
        }
    }

    pub fn bad_request(errmsg: impl Into<String>) -> Self {
        Self::new(errno::BAD_REQUEST, errmsg)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Login {
        id: i64,
        password: String,
        /// The client acknowledges deliveries (`acks` or `since` given).
        acks: bool,
        /// Resume after this receiver sequence (what the client has).
        since: u64,
    },
    Logout {
        id: Option<i64>,
    },
    Register {
        name: String,
        password: String,
    },
    OneChat {
        id: Option<i64>,
        to: i64,
        body: Map<String, Value>,
        cmid: Option<String>,
    },
    AddFriend {
        id: Option<i64>,
        friend: i64,
    },
    CreateGroup {
        id: Option<i64>,
        name: String,
        description: String,
    },
    AddGroup {
        id: Option<i64>,
        group: i64,
    },
    GroupChat {
        id: Option<i64>,
        group: i64,
        body: Map<String, Value>,
        cmid: Option<String>,
    },
    Ack {
        up_to: u64,
    },
    Ping,
    History {
        target: Target,
        before: u64,
        after: u64,
        limit: u32,
    },
    Conversations {
        limit: u32,
    },
    MarkRead {
        target: Target,
        up_to: u64,
    },
    Typing {
        target: Target,
    },
    Delivered {
        target: Target,
        up_to: u64,
    },
    Roster,
}

/// Which conversation a request is about: `toid`, `groupid` or `conv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Peer(i64),
    Group(i64),
    Conversation(Conversation),
}

impl Target {
    /// The conversation, as seen by `user`.
    pub fn conversation(self, user: i64) -> Conversation {
        match self {
            Self::Peer(peer) => Conversation::direct(user, peer),
            Self::Group(group) => Conversation::Group(group),
            Self::Conversation(c) => c,
        }
    }
}

/// A parsed frame: its `seq` (if any could be read) and the request or why
/// it is not one.
#[derive(Debug)]
pub struct Parsed {
    pub seq: Option<i64>,
    pub msgid: Option<i64>,
    pub request: Result<Request, Failure>,
}

pub fn parse(frame: &[u8]) -> Parsed {
    let object = match serde_json::from_slice::<Value>(frame) {
        Ok(Value::Object(object)) => object,
        Ok(_) => {
            return Parsed {
                seq: None,
                msgid: None,
                request: Err(Failure::bad_request("a request must be a JSON object")),
            };
        }
        Err(e) => {
            return Parsed {
                seq: None,
                msgid: None,
                request: Err(Failure::bad_request(format!("malformed JSON: {e}"))),
            };
        }
    };
    let seq = object.get("seq").and_then(Value::as_i64);
    let msgid = object.get("msgid").and_then(Value::as_i64);
    let request = if object.get("seq").is_some_and(|s| !s.is_i64()) {
        Err(Failure::bad_request("seq must be an integer"))
    } else {
        parse_request(object)
    };
    Parsed {
        seq,
        msgid,
        request,
    }
}

fn parse_request(mut object: Map<String, Value>) -> Result<Request, Failure> {
    let msgid = match object.get("msgid") {
        None => return Err(Failure::bad_request("msgid is missing")),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| Failure::bad_request("msgid must be an integer"))?,
    };
    let request = match msgid {
        LOGIN_MSG => {
            let since = optional_int(&object, "since")?;
            let acks = match object.get("acks") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(Failure::bad_request("acks must be true or false")),
            };
            Request::Login {
                id: required_int(&object, "id")?,
                password: required_str(&object, "password")?,
                acks: acks || since.is_some(),
                since: non_negative(since.unwrap_or(0), "since")?,
            }
        }
        LOGINOUT_MSG => Request::Logout {
            id: optional_int(&object, "id")?,
        },
        REG_MSG => Request::Register {
            name: required_str(&object, "name")?,
            password: required_str(&object, "password")?,
        },
        ONE_CHAT_MSG => {
            let id = optional_int(&object, "id")?;
            let to = required_int(&object, "toid")?;
            require_msg(&object)?;
            object.remove("seq");
            let cmid = take_cmid(&mut object)?;
            Request::OneChat {
                id,
                to,
                body: object,
                cmid,
            }
        }
        ADD_FRIEND_MSG => Request::AddFriend {
            id: optional_int(&object, "id")?,
            friend: required_int(&object, "friendid")?,
        },
        CREATE_GROUP_MSG => Request::CreateGroup {
            id: optional_int(&object, "id")?,
            name: required_str(&object, "groupname")?,
            description: optional_str(&object, "groupdesc")?.unwrap_or_default(),
        },
        ADD_GROUP_MSG => Request::AddGroup {
            id: optional_int(&object, "id")?,
            group: required_int(&object, "groupid")?,
        },
        GROUP_CHAT_MSG => {
            let id = optional_int(&object, "id")?;
            let group = required_int(&object, "groupid")?;
            require_msg(&object)?;
            object.remove("seq");
            let cmid = take_cmid(&mut object)?;
            Request::GroupChat {
                id,
                group,
                body: object,
                cmid,
            }
        }
        ACK_MSG => Request::Ack {
            up_to: non_negative(required_int(&object, "ack")?, "ack")?,
        },
        PING_MSG => Request::Ping,
        HISTORY_MSG => {
            let before = non_negative(optional_int(&object, "before")?.unwrap_or(0), "before")?;
            let after = non_negative(optional_int(&object, "after")?.unwrap_or(0), "after")?;
            if before > 0 && after > 0 {
                return Err(Failure::bad_request("give before or after, not both"));
            }
            Request::History {
                target: target(&object)?,
                before,
                after,
                limit: page_limit(&object)?,
            }
        }
        CONVERSATIONS_MSG => Request::Conversations {
            limit: page_limit(&object)?,
        },
        READ_MSG => Request::MarkRead {
            target: target(&object)?,
            up_to: non_negative(required_int(&object, "upto")?, "upto")?,
        },
        TYPING_MSG => Request::Typing {
            target: target(&object)?,
        },
        DELIVERED_MSG => Request::Delivered {
            target: target(&object)?,
            up_to: non_negative(required_int(&object, "upto")?, "upto")?,
        },
        ROSTER_MSG => Request::Roster,
        LOGIN_MSG_ACK | REG_MSG_ACK | REPLY_MSG | PONG_MSG => {
            return Err(Failure::bad_request(format!(
                "msgid {msgid} is sent by the server, not to it"
            )));
        }
        other => return Err(Failure::bad_request(format!("unknown msgid {other}"))),
    };
    Ok(request)
}

/// `toid`, `groupid` or `conv` (exactly one).
fn target(object: &Map<String, Value>) -> Result<Target, Failure> {
    let peer = optional_int(object, "toid")?;
    let group = optional_int(object, "groupid")?;
    let conv = optional_str(object, "conv")?;
    match (peer, group, conv) {
        (Some(peer), None, None) if peer > 0 => Ok(Target::Peer(peer)),
        (None, Some(group), None) if group > 0 => Ok(Target::Group(group)),
        (None, None, Some(conv)) => Conversation::parse(&conv)
            .map(Target::Conversation)
            .ok_or_else(|| {
                Failure::bad_request(format!(
                    "conv {conv:?} is not a conversation (d:LOW:HIGH or g:GROUP)"
                ))
            }),
        (None, None, None) => Err(Failure::bad_request("toid, groupid or conv is missing")),
        (Some(_), None, None) | (None, Some(_), None) => {
            Err(Failure::bad_request("toid and groupid must be positive"))
        }
        _ => Err(Failure::bad_request("give one of toid, groupid and conv")),
    }
}

/// `limit`: 1 to [`MAX_PAGE`]; absent or 0 means 50.
fn page_limit(object: &Map<String, Value>) -> Result<u32, Failure> {
    match optional_int(object, "limit")? {
        None | Some(0) => Ok(50),
        Some(n) if (1..=i64::from(MAX_PAGE)).contains(&n) => Ok(n as u32),
        Some(_) => Err(Failure::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        ))),
    }
}

fn non_negative(value: i64, field: &str) -> Result<u64, Failure> {
    u64::try_from(value).map_err(|_| Failure::bad_request(format!("{field} must not be negative")))
}

/// The client's id for a chat: 1 to 64 characters of `A-Z a-z 0-9 - _`.
fn take_cmid(object: &mut Map<String, Value>) -> Result<Option<String>, Failure> {
    let Some(cmid) = optional_str(object, "cmid")? else {
        return Ok(None);
    };
    object.remove("cmid");
    let valid = (1..=64).contains(&cmid.len())
        && cmid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(Some(cmid))
    } else {
        Err(Failure::bad_request(
            "cmid must be 1 to 64 characters of A-Z, a-z, 0-9, - and _",
        ))
    }
}

fn required_int(object: &Map<String, Value>, field: &str) -> Result<i64, Failure> {
    optional_int(object, field)?.ok_or_else(|| Failure::bad_request(format!("{field} is missing")))
}

fn optional_int(object: &Map<String, Value>, field: &str) -> Result<Option<i64>, Failure> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| Failure::bad_request(format!("{field} must be an integer"))),
    }
}

fn required_str(object: &Map<String, Value>, field: &str) -> Result<String, Failure> {
    optional_str(object, field)?.ok_or_else(|| Failure::bad_request(format!("{field} is missing")))
}

fn optional_str(object: &Map<String, Value>, field: &str) -> Result<Option<String>, Failure> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Failure::bad_request(format!("{field} must be a string"))),
    }
}

fn require_msg(object: &Map<String, Value>) -> Result<(), Failure> {
    match object.get("msg") {
        Some(Value::String(_)) => Ok(()),
        None => Err(Failure::bad_request("msg is missing")),
        Some(_) => Err(Failure::bad_request("msg must be a string")),
    }
}

// ------------------------------------------------------------------ replies

fn encode(value: Map<String, Value>) -> Vec<u8> {
    // serde_json's Map is a BTreeMap here (no `preserve_order`), so keys come
    // out sorted, as the classic server's nlohmann::json writes them.
    Value::Object(value).to_string().into_bytes()
}

fn with_seq(mut object: Map<String, Value>, seq: Option<i64>) -> Map<String, Value> {
    if let Some(seq) = seq {
        object.insert("seq".into(), seq.into());
    }
    object
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

pub fn register_ok(id: i64, seq: Option<i64>) -> Vec<u8> {
    encode(with_seq(
        object(json!({"errno": 0, "id": id, "msgid": REG_MSG_ACK})),
        seq,
    ))
}

/// Without `seq`, exactly the classic `{"errno":1,"msgid":5}`; with it, also why.
pub fn register_failed(failure: &Failure, seq: Option<i64>) -> Vec<u8> {
    let mut reply = object(json!({"errno": 1, "msgid": REG_MSG_ACK}));
    if seq.is_some() || failure.retry_after.is_some() {
        reply.insert("errmsg".into(), failure.errmsg.clone().into());
    }
    encode(with_retry_after(with_seq(reply, seq), failure))
}

pub fn login_failed(failure: &Failure, seq: Option<i64>) -> Vec<u8> {
    encode(with_retry_after(
        with_seq(
            object(
                json!({"errmsg": failure.errmsg, "errno": failure.errno, "msgid": LOGIN_MSG_ACK}),
            ),
            seq,
        ),
        failure,
    ))
}

/// Adds `retry_after` (seconds) when the failure has one.
fn with_retry_after(mut object: Map<String, Value>, failure: &Failure) -> Map<String, Value> {
    if let Some(seconds) = failure.retry_after {
        object.insert("retry_after".into(), seconds.into());
    }
    object
}

pub struct FriendEntry {
    pub id: i64,
    pub name: String,
    pub online: bool,
}

pub struct GroupMemberEntry {
    pub id: i64,
    pub name: String,
    pub online: bool,
    pub creator: bool,
}

pub struct GroupEntry {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub members: Vec<GroupMemberEntry>,
}

fn state(online: bool) -> &'static str {
    if online { "online" } else { "offline" }
}

/// The classic login ack: `friends`, `groups` and `offlinemsg` appear only
/// when non-empty, each entry a JSON text inside a string.
pub fn login_ok(
    id: i64,
    name: &str,
    friends: &[FriendEntry],
    groups: &[GroupEntry],
    offline: &[String],
    seq: Option<i64>,
) -> Vec<u8> {
    let friends = friends.iter().map(friend_json).collect();
    let groups = groups.iter().map(group_json).collect();
    login_ok_with(id, name, friends, groups, offline, seq, false)
}

/// A friend as the login ack lists it: a JSON object inside a string.
pub fn friend_json(f: &FriendEntry) -> String {
    json!({"id": f.id, "name": f.name, "state": state(f.online)}).to_string()
}

/// A group as the login ack lists it: a JSON object inside a string, its
/// members likewise.
pub fn group_json(g: &GroupEntry) -> String {
    let users: Vec<Value> = g
        .members
        .iter()
        .map(|m| {
            let role = if m.creator { "creator" } else { "normal" };
            json!({"id": m.id, "name": m.name, "role": role, "state": state(m.online)})
                .to_string()
                .into()
        })
        .collect();
    json!({"groupdesc": g.description, "groupname": g.name, "id": g.id, "users": users}).to_string()
}

/// The login ack with friends and groups already encoded. `more`: the rest
/// of them follow in roster pages (msgid 15), for a client that uses the
/// additions; the ack then says `"roster_more":true`.
pub fn login_ok_with(
    id: i64,
    name: &str,
    friends: Vec<String>,
    groups: Vec<String>,
    offline: &[String],
    seq: Option<i64>,
    more: bool,
) -> Vec<u8> {
    let mut reply = object(json!({"errno": 0, "id": id, "msgid": LOGIN_MSG_ACK, "name": name}));
    insert_strings(&mut reply, "friends", friends);
    insert_strings(&mut reply, "groups", groups);
    insert_strings(&mut reply, "offlinemsg", offline.to_vec());
    if more {
        reply.insert("roster_more".into(), true.into());
    }
    encode(with_seq(reply, seq))
}

/// The rest of a long roster after the login ack:
/// `{"msgid":15,"friends":[..],"groups":[..],"more":bool}` (entries encoded
/// as in the ack; `more` false on the last page).
pub fn roster_page(friends: Vec<String>, groups: Vec<String>, more: bool) -> Vec<u8> {
    let mut page = object(json!({"msgid": ROSTER_PAGE_MSG, "more": more}));
    insert_strings(&mut page, "friends", friends);
    insert_strings(&mut page, "groups", groups);
    encode(page)
}

/// `key: [strings]` in `object`, unless there are none (the classic server
/// leaves an empty list out).
fn insert_strings(object: &mut Map<String, Value>, key: &str, strings: Vec<String>) {
    if !strings.is_empty() {
        let list: Vec<Value> = strings.into_iter().map(Value::String).collect();
        object.insert(key.into(), list.into());
    }
}

/// `{"errno":0,"msgid":11,"seq":n}` plus any results (e.g. `groupid`).
pub fn reply_ok(seq: i64, results: Map<String, Value>) -> Vec<u8> {
    let mut reply = results;
    reply.insert("errno".into(), 0.into());
    reply.insert("msgid".into(), REPLY_MSG.into());
    encode(with_seq(reply, Some(seq)))
}

pub fn reply_error(failure: &Failure, seq: Option<i64>) -> Vec<u8> {
    encode(with_retry_after(
        with_seq(
            object(json!({"errmsg": failure.errmsg, "errno": failure.errno, "msgid": REPLY_MSG})),
            seq,
        ),
        failure,
    ))
}

/// `{"msgid":18,"conv":..,"id":READER,"upto":CSEQ}`: a read receipt.
pub fn read_receipt(conversation: &Conversation, reader: i64, up_to: u64) -> Vec<u8> {
    encode(object(json!({
        "conv": conversation.to_string(),
        "id": reader,
        "msgid": READ_MSG,
        "upto": up_to,
    })))
}

/// `{"msgid":20,"conv":..,"id":RECEIVER,"upto":CSEQ}`: a delivery receipt.
pub fn delivery_receipt(conversation: &Conversation, receiver: i64, up_to: u64) -> Vec<u8> {
    encode(object(json!({
        "conv": conversation.to_string(),
        "id": receiver,
        "msgid": DELIVERED_MSG,
        "upto": up_to,
    })))
}

/// msgid 21's results: friends and groups as plain objects.
pub fn roster_results(friends: &[FriendEntry], groups: &[GroupEntry]) -> Map<String, Value> {
    let friends: Vec<Value> = friends
        .iter()
        .map(|f| json!({"id": f.id, "name": f.name, "online": f.online}))
        .collect();
    let groups: Vec<Value> = groups
        .iter()
        .map(|g| {
            let members: Vec<Value> = g
                .members
                .iter()
                .map(|m| json!({"id": m.id, "name": m.name, "online": m.online, "creator": m.creator}))
                .collect();
            json!({"id": g.id, "name": g.name, "description": g.description, "members": members})
        })
        .collect();
    object(json!({"friends": friends, "groups": groups}))
}

/// `{"msgid":19,"conv":..,"id":..,"name":..}` (and `groupid` in a group).
pub fn typing(conversation: &Conversation, id: i64, name: &str) -> Vec<u8> {
    let mut event = object(json!({
        "conv": conversation.to_string(),
        "id": id,
        "msgid": TYPING_MSG,
        "name": name,
    }));
    if let Conversation::Group(group) = conversation {
        event.insert("groupid".into(), (*group).into());
    }
    encode(event)
}

/// `{"msgid":14}` (with `seq` when the ping had one).
pub fn pong(seq: Option<i64>) -> Vec<u8> {
    encode(with_seq(object(json!({"msgid": PONG_MSG})), seq))
}

/// A chat frame for a client that acknowledges: the frame with the server
/// message id and the receiver's sequence appended (`rseq` 0: none known).
pub fn with_delivery_fields(frame: &[u8], mid: &str, rseq: u64) -> Vec<u8> {
    let Some(end) = frame.iter().rposition(|&b| b == b'}') else {
        return frame.to_vec();
    };
    let mut extra = String::new();
    if !mid.is_empty() {
        extra.push_str(&format!("\"mid\":{}", Value::String(mid.to_owned())));
    }
    if rseq != 0 {
        if !extra.is_empty() {
            extra.push(',');
        }
        extra.push_str(&format!("\"rseq\":{rseq}"));
    }
    if extra.is_empty() {
        return frame.to_vec();
    }
    let empty_object = frame[..end].iter().rev().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let mut out = Vec::with_capacity(frame.len() + extra.len() + 1);
    out.extend_from_slice(&frame[..end]);
    if !empty_object {
        out.push(b',');
    }
    out.extend_from_slice(extra.as_bytes());
    out.extend_from_slice(&frame[end..]);
    out
}

/// A chat as its receivers see it: the sender's object with `id` and `name`
/// set by the server, and `time` added when the client gave none. `mid` and
/// `rseq` are the server's to add on delivery ([`with_delivery_fields`]): a
/// sender's own would repeat those keys, or with no sequence known stand
/// alone, and a receiver acknowledging a forged `rseq` loses its inbox.
pub fn forward_chat(
    mut body: Map<String, Value>,
    sender_id: i64,
    sender_name: &str,
    now: impl FnOnce() -> String,
) -> Vec<u8> {
    body.remove("mid");
    body.remove("rseq");
    // Ours too (the conversation and its sequence are added once numbered).
    body.remove("conv");
    body.remove("cseq");
    body.insert("id".into(), sender_id.into());
    body.insert("name".into(), sender_name.into());
    if !body.get("time").is_some_and(Value::is_string) {
        body.insert("time".into(), now().into());
    }
    encode(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).expect("utf8")
    }

    #[test]
    fn classic_register_and_login_acks_byte_for_byte() {
        assert_eq!(
            text(register_ok(22, None)),
            r#"{"errno":0,"id":22,"msgid":5}"#
        );
        assert_eq!(
            text(register_failed(&Failure::bad_request("taken"), None)),
            r#"{"errno":1,"msgid":5}"#
        );
        assert_eq!(
            text(login_failed(&Failure::new(1, CLASSIC_BAD_LOGIN), None)),
            r#"{"errmsg":"id or password is invalid!","errno":1,"msgid":2}"#
        );
        assert_eq!(
            text(login_failed(&Failure::new(2, CLASSIC_IN_USE), None)),
            r#"{"errmsg":"this account is using, input another!","errno":2,"msgid":2}"#
        );
        assert_eq!(
            text(login_ok(22, "alice", &[], &[], &[], None)),
            r#"{"errno":0,"id":22,"msgid":2,"name":"alice"}"#
        );
    }

    #[test]
    fn login_ack_nests_json_texts_in_strings() {
        let friends = [FriendEntry {
            id: 2,
            name: "bob".into(),
            online: true,
        }];
        let groups = [GroupEntry {
            id: 5,
            name: "g".into(),
            description: "d".into(),
            members: vec![GroupMemberEntry {
                id: 1,
                name: "a".into(),
                online: false,
                creator: true,
            }],
        }];
        let offline = [r#"{"msg":"hi","msgid":6}"#.to_owned()];
        let got = text(login_ok(1, "a", &friends, &groups, &offline, Some(9)));
        let expected = concat!(
            r#"{"errno":0,"friends":["{\"id\":2,\"name\":\"bob\",\"state\":\"online\"}"],"#,
            r#""groups":["{\"groupdesc\":\"d\",\"groupname\":\"g\",\"id\":5,\"users\":[\"{\\\"id\\\":1,\\\"name\\\":\\\"a\\\",\\\"role\\\":\\\"creator\\\",\\\"state\\\":\\\"offline\\\"}\"]}"],"#,
            r#""id":1,"msgid":2,"name":"a","offlinemsg":["{\"msg\":\"hi\",\"msgid\":6}"],"seq":9}"#
        );
        assert_eq!(got, expected);
    }

    #[test]
    fn seq_is_echoed_and_errors_say_why() {
        assert_eq!(
            text(register_ok(3, Some(7))),
            r#"{"errno":0,"id":3,"msgid":5,"seq":7}"#
        );
        assert_eq!(
            text(register_failed(
                &Failure::new(9, "the name is taken"),
                Some(7)
            )),
            r#"{"errmsg":"the name is taken","errno":1,"msgid":5,"seq":7}"#
        );
        let mut results = Map::new();
        results.insert("groupid".into(), 4.into());
        assert_eq!(
            text(reply_ok(8, results)),
            r#"{"errno":0,"groupid":4,"msgid":11,"seq":8}"#
        );
        assert_eq!(
            text(reply_error(
                &Failure::new(errno::NOT_FOUND, "user 9 does not exist"),
                None
            )),
            r#"{"errmsg":"user 9 does not exist","errno":5,"msgid":11}"#
        );
    }

    #[test]
    fn requests_parse_with_clear_errors() {
        let p = parse(br#"{"msgid":1,"id":3,"password":"x","seq":4}"#);
        assert_eq!(p.seq, Some(4));
        assert_eq!(
            p.request,
            Ok(Request::Login {
                id: 3,
                password: "x".into(),
                acks: false,
                since: 0,
            })
        );
        let p = parse(br#"{"msgid":1,"id":3,"password":"x","since":17}"#);
        assert!(matches!(
            p.request,
            Ok(Request::Login {
                acks: true,
                since: 17,
                ..
            })
        ));
        let p = parse(br#"{"msgid":12,"ack":-1}"#);
        assert_eq!(
            p.request,
            Err(Failure::bad_request("ack must not be negative"))
        );
        assert_eq!(
            parse(br#"{"msgid":12,"ack":5}"#).request,
            Ok(Request::Ack { up_to: 5 })
        );
        assert_eq!(parse(br#"{"msgid":13}"#).request, Ok(Request::Ping));
        let p = parse(br#"{"msgid":6,"toid":2,"msg":"m","cmid":"a b"}"#);
        assert!(p.request.is_err(), "a cmid with a space is refused");

        let p = parse(br#"{"msgid":1,"id":"3","password":"x"}"#);
        assert_eq!(
            p.request,
            Err(Failure::bad_request("id must be an integer"))
        );
        let p = parse(br#"{"msgid":6,"toid":2}"#);
        assert_eq!(p.request, Err(Failure::bad_request("msg is missing")));
        let p = parse(br#"{"msgid":99}"#);
        assert_eq!(p.request, Err(Failure::bad_request("unknown msgid 99")));
        let p = parse(br#"{"id":1}"#);
        assert_eq!(p.request, Err(Failure::bad_request("msgid is missing")));
        let p = parse(br#"{"msgid":1,"#);
        assert!(
            p.request
                .expect_err("malformed")
                .errmsg
                .starts_with("malformed JSON")
        );
        let p = parse(br#"{"msgid":3,"seq":"x"}"#);
        assert_eq!(
            p.request,
            Err(Failure::bad_request("seq must be an integer"))
        );
    }

    #[test]
    fn forwarded_chat_carries_the_servers_identity() {
        let p = parse(br#"{"msgid":6,"id":666,"name":"mallory","toid":2,"msg":"hi","time":"t","seq":1,"extra":true}"#);
        let Ok(Request::OneChat { body, cmid, .. }) = p.request else {
            panic!("not a chat")
        };
        assert_eq!(cmid, None);
        let out = text(forward_chat(body, 1, "alice", || "now".into()));
        assert_eq!(
            out,
            r#"{"extra":true,"id":1,"msg":"hi","msgid":6,"name":"alice","time":"t","toid":2}"#
        );
    }

    #[test]
    fn a_sender_cannot_forge_the_delivery_fields() {
        // Found by the classic fuzz target: the sender's `mid` and `rseq`
        // reached the receiver beside (or, for rseq 0, instead of) the server's.
        let p = parse(br#"{"msgid":6,"toid":2,"msg":"m","mid":"fake","rseq":99}"#);
        let Ok(Request::OneChat { body, .. }) = p.request else {
            panic!("not a chat")
        };
        let frame = forward_chat(body, 1, "alice", || "now".into());
        assert_eq!(
            text(frame.clone()),
            r#"{"id":1,"msg":"m","msgid":6,"name":"alice","time":"now","toid":2}"#
        );
        assert_eq!(
            text(with_delivery_fields(&frame, "1-x", 0)),
            r#"{"id":1,"msg":"m","msgid":6,"name":"alice","time":"now","toid":2,"mid":"1-x"}"#
        );
    }

    #[test]
    fn delivery_fields_are_appended_to_the_object() {
        assert_eq!(
            text(with_delivery_fields(br#"{"msg":"}","msgid":6}"#, "ab", 7)),
            r#"{"msg":"}","msgid":6,"mid":"ab","rseq":7}"#
        );
        assert_eq!(
            text(with_delivery_fields(br#"{"msgid":6}"#, "ab", 0)),
            r#"{"msgid":6,"mid":"ab"}"#
        );
        assert_eq!(text(with_delivery_fields(b"{}", "", 3)), r#"{"rseq":3}"#);
        assert_eq!(text(with_delivery_fields(b"{}", "", 0)), "{}");
        let cmid = parse(br#"{"msgid":10,"groupid":2,"msg":"m","cmid":"c-1_x"}"#);
        let Ok(Request::GroupChat { body, cmid, .. }) = cmid.request else {
            panic!("not a group chat")
        };
        assert_eq!(cmid.as_deref(), Some("c-1_x"));
        assert!(!body.contains_key("cmid"), "receivers do not see it");
    }
}
