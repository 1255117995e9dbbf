//! Requests: a frame's JSON parsed into a [`Request`] (or the [`Failure`]
//! that says why it is not one), with its `seq` and `msgid`.

use serde_json::{Map, Value};

use super::{
    ACK_MSG, ADD_FRIEND_MSG, ADD_GROUP_MSG, BLOCK_MSG, CONVERSATIONS_MSG, CREATE_GROUP_MSG,
    Conversation, DELIVERED_MSG, Failure, GROUP_CHAT_MSG, GROUP_MEMBERS_MSG, HISTORY_MSG,
    LEAVE_GROUP_MSG, LOGIN_MSG, LOGIN_MSG_ACK, LOGINOUT_MSG, LOGOUT_ALL_MSG, MAX_PAGE,
    MAX_SEARCH_OFFSET, MAX_SEARCH_PAGE, ONE_CHAT_MSG, PASSWORD_MSG, PING_MSG, PONG_MSG, READ_MSG,
    REG_MSG, REG_MSG_ACK, REMOVE_FRIEND_MSG, RENAME_GROUP_MSG, REPLY_MSG, ROSTER_MSG, SEARCH_MSG,
    TYPING_MSG, UNBLOCK_MSG,
};

/// What a login proves who it is with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Password(String),
    /// A session token a login with `"remember":true` was given.
    Token(String),
}

/// How a session that logs in wants to be served (all additions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginOptions {
    /// The client acknowledges deliveries (`acks` or `since` given).
    pub acks: bool,
    /// Resume after this receiver sequence (what the client has).
    pub since: u64,
    /// Push friends' and fellow members' presence changes (msgid 22).
    pub presence: bool,
    /// `"remember":true` with a password: start a session token for the
    /// device named here (`device`, may be empty).
    pub remember: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Login {
        id: i64,
        credential: Credential,
        options: LoginOptions,
    },
    Logout {
        id: Option<i64>,
    },
    /// Ends every session of the user, on every node, and their tokens.
    LogoutEverywhere,
    /// A new password (the current one given); the user's other sessions end.
    ChangePassword {
        password: String,
        new_password: String,
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
    /// `{"msgid":12,"ack":RSEQ}`; with `"conv":"g:GID"`, the group log
    /// entries of that group up to `ack` (their `cseq`).
    Ack {
        up_to: u64,
        group: Option<i64>,
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
    /// Ends a friendship (both ways).
    RemoveFriend {
        friend: i64,
    },
    /// Leaves a group (its creator may not).
    LeaveGroup {
        group: i64,
    },
    /// A group's members with their roles and presence (members only).
    GroupMembers {
        group: i64,
    },
    /// Blocks (`on`) or unblocks a user: their one-to-one chats are refused.
    Block {
        user: i64,
        on: bool,
    },
    /// A group's new name (and description, kept when absent); its
    /// creator's alone.
    RenameGroup {
        group: i64,
        name: String,
        description: Option<String>,
    },
    /// Messages holding every word of `query`, in one conversation or all
    /// the user may read.
    Search {
        query: String,
        target: Option<Target>,
        limit: u32,
        offset: u32,
    },
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
            let acks = optional_bool(&object, "acks")?;
            let credential = match optional_str(&object, "token")? {
                Some(token) => Credential::Token(token),
                None => Credential::Password(required_str(&object, "password")?),
            };
            let remember = match (&credential, optional_bool(&object, "remember")?) {
                (Credential::Password(_), true) => {
                    Some(optional_str(&object, "device")?.unwrap_or_default())
                }
                _ => None,
            };
            Request::Login {
                id: required_int(&object, "id")?,
                credential,
                options: LoginOptions {
                    acks: acks || since.is_some(),
                    since: non_negative(since.unwrap_or(0), "since")?,
                    presence: optional_bool(&object, "presence")?,
                    remember,
                },
            }
        }
        LOGOUT_ALL_MSG => Request::LogoutEverywhere,
        PASSWORD_MSG => Request::ChangePassword {
            password: required_str(&object, "password")?,
            new_password: required_str(&object, "new_password")?,
        },
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
            group: match object.get("conv") {
                None => None,
                Some(conv) => Some(
                    conv.as_str()
                        .and_then(|c| c.strip_prefix("g:"))
                        .and_then(|g| g.parse().ok())
                        .ok_or_else(|| {
                            Failure::bad_request(
                                "conv must be a group's conversation, \"g:GID\"".to_owned(),
                            )
                        })?,
                ),
            },
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
        BLOCK_MSG | UNBLOCK_MSG => Request::Block {
            user: required_int(&object, "userid")?,
            on: msgid == BLOCK_MSG,
        },
        REMOVE_FRIEND_MSG => Request::RemoveFriend {
            friend: required_int(&object, "friendid")?,
        },
        LEAVE_GROUP_MSG => Request::LeaveGroup {
            group: required_int(&object, "groupid")?,
        },
        GROUP_MEMBERS_MSG => Request::GroupMembers {
            group: required_int(&object, "groupid")?,
        },
        RENAME_GROUP_MSG => Request::RenameGroup {
            group: required_int(&object, "groupid")?,
            name: required_str(&object, "groupname")?,
            description: optional_str(&object, "groupdesc")?,
        },
        SEARCH_MSG => {
            let query = required_str(&object, "q")?;
            if query.trim().is_empty() {
                return Err(Failure::bad_request("q is empty: give a word to look for"));
            }
            let scoped = ["toid", "groupid", "conv"]
                .iter()
                .any(|f| !matches!(object.get(*f), None | Some(Value::Null)));
            let limit = match optional_int(&object, "limit")? {
                None | Some(0) => 20,
                Some(n) if (1..=i64::from(MAX_SEARCH_PAGE)).contains(&n) => n as u32,
                Some(_) => {
                    return Err(Failure::bad_request(format!(
                        "limit must be between 1 and {MAX_SEARCH_PAGE}"
                    )));
                }
            };
            let offset = non_negative(optional_int(&object, "offset")?.unwrap_or(0), "offset")?;
            if offset > u64::from(MAX_SEARCH_OFFSET) {
                return Err(Failure::bad_request(format!(
                    "offset must be at most {MAX_SEARCH_OFFSET}"
                )));
            }
            Request::Search {
                query,
                target: if scoped { Some(target(&object)?) } else { None },
                limit,
                offset: offset as u32,
            }
        }
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

/// A flag: absent or null is false.
fn optional_bool(object: &Map<String, Value>, field: &str) -> Result<bool, Failure> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(Failure::bad_request(format!(
            "{field} must be true or false"
        ))),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_needs_words_and_keeps_its_page_in_bounds() {
        assert_eq!(
            parse(r#"{"msgid":31,"q":"天气 park"}"#.as_bytes()).request,
            Ok(Request::Search {
                query: "天气 park".into(),
                target: None,
                limit: 20,
                offset: 0,
            })
        );
        assert_eq!(
            parse(br#"{"msgid":31,"q":"x","groupid":7,"limit":5,"offset":10}"#).request,
            Ok(Request::Search {
                query: "x".into(),
                target: Some(Target::Group(7)),
                limit: 5,
                offset: 10,
            })
        );
        for (frame, why) in [
            (&br#"{"msgid":31}"#[..], "q is missing"),
            (
                br#"{"msgid":31,"q":"  "}"#,
                "q is empty: give a word to look for",
            ),
            (
                br#"{"msgid":31,"q":"x","limit":101}"#,
                "limit must be between 1 and 100",
            ),
            (
                br#"{"msgid":31,"q":"x","offset":1001}"#,
                "offset must be at most 1000",
            ),
        ] {
            assert_eq!(parse(frame).request, Err(Failure::bad_request(why)));
        }
    }

    #[test]
    fn requests_parse_with_clear_errors() {
        let p = parse(br#"{"msgid":1,"id":3,"password":"x","seq":4}"#);
        assert_eq!(p.seq, Some(4));
        assert_eq!(
            p.request,
            Ok(Request::Login {
                id: 3,
                credential: Credential::Password("x".into()),
                options: LoginOptions::default(),
            })
        );
        let p = parse(br#"{"msgid":1,"id":3,"password":"x","since":17}"#);
        assert!(matches!(
            p.request,
            Ok(Request::Login {
                options: LoginOptions {
                    acks: true,
                    since: 17,
                    ..
                },
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
            Ok(Request::Ack {
                up_to: 5,
                group: None
            })
        );
        assert_eq!(
            parse(br#"{"msgid":12,"ack":5,"conv":"g:7"}"#).request,
            Ok(Request::Ack {
                up_to: 5,
                group: Some(7)
            })
        );
        assert!(
            parse(br#"{"msgid":12,"ack":5,"conv":"d:1:2"}"#)
                .request
                .is_err()
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
}
