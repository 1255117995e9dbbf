//! The classic request parser on one frame, and the replies and delivered
//! chats built from what a client gave.
//!
//! Input: the frame itself (what the splitter or a WebSocket text message
//! hands the session).
//!
//! Properties:
//! - `parse` never panics; a frame that is not a JSON object, or lacks an
//!   integer `msgid`, is a bad request; `seq` and `msgid` are read as the
//!   JSON says; every failure is errno 1 (bad request) and its reply (msgid
//!   11, login and register acks) is a JSON object carrying the same errmsg
//!   and seq;
//! - a chat's fields are what the client sent; `cmid` obeys its alphabet and
//!   neither it nor `seq` reaches the receivers;
//! - text a client gave comes back exact: a chat's `msg` in the frame every
//!   receiver gets (classic, and with `mid`/`rseq` for a client that
//!   acknowledges), whose keys are unique and whose `id`, `name`, `mid` and
//!   `rseq` are the server's; a registered name in the login ack; a group's
//!   name and description inside the JSON text nested in the ack.

use std::collections::BTreeMap;
use std::fmt;

use gateway::protocol::classic::{self, FriendEntry, GroupEntry, GroupMemberEntry, Request, errno};
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::{Map, Value};

pub fn check(frame: &[u8]) {
    let parsed = classic::parse(frame);
    let object = match serde_json::from_slice::<Value>(frame) {
        Ok(Value::Object(object)) => Some(object),
        _ => None,
    };
    let Some(object) = object else {
        assert_eq!((parsed.seq, parsed.msgid), (None, None));
        let failure = parsed.request.expect_err("not an object, yet a request");
        assert_eq!(failure.errno, errno::BAD_REQUEST);
        check_failure_replies(&failure, None);
        return;
    };
    assert_eq!(parsed.seq, object.get("seq").and_then(Value::as_i64));
    assert_eq!(parsed.msgid, object.get("msgid").and_then(Value::as_i64));

    let request = match parsed.request {
        Err(failure) => {
            assert_eq!(failure.errno, errno::BAD_REQUEST, "{failure:?}");
            check_failure_replies(&failure, parsed.seq);
            return;
        }
        Ok(request) => request,
    };
    assert!(
        object.get("seq").is_none_or(Value::is_i64),
        "a non-integer seq was accepted"
    );
    let msgid = parsed.msgid.expect("a request without msgid");
    match request {
        Request::Login { id, credential, .. } => {
            assert_eq!(msgid, classic::LOGIN_MSG);
            assert_eq!(Some(id), object.get("id").and_then(Value::as_i64));
            match credential {
                classic::Credential::Password(password) => {
                    assert_eq!(Some(password.as_str()), str_field(&object, "password"))
                }
                classic::Credential::Token(token) => {
                    assert_eq!(Some(token.as_str()), str_field(&object, "token"))
                }
            }
        }
        Request::Register { name, password } => {
            assert_eq!(msgid, classic::REG_MSG);
            assert_eq!(Some(password.as_str()), str_field(&object, "password"));
            check_name_in_login_ack(&name, parsed.seq);
        }
        Request::CreateGroup {
            name, description, ..
        } => {
            assert_eq!(msgid, classic::CREATE_GROUP_MSG);
            check_group_in_login_ack(&name, &description);
        }
        Request::OneChat { to, body, cmid, .. } => {
            assert_eq!(msgid, classic::ONE_CHAT_MSG);
            assert_eq!(Some(to), object.get("toid").and_then(Value::as_i64));
            check_chat(&object, body, cmid);
        }
        Request::GroupChat {
            group, body, cmid, ..
        } => {
            assert_eq!(msgid, classic::GROUP_CHAT_MSG);
            assert_eq!(Some(group), object.get("groupid").and_then(Value::as_i64));
            check_chat(&object, body, cmid);
        }
        Request::Ack { up_to, group } => {
            assert_eq!(msgid, classic::ACK_MSG);
            assert_eq!(Some(up_to), object.get("ack").and_then(Value::as_u64));
            let conv = object.get("conv").and_then(Value::as_str);
            let named = conv
                .and_then(|c| c.strip_prefix("g:"))
                .and_then(|g| g.parse::<i64>().ok());
            assert_eq!(group, named);
        }
        Request::Logout { .. } | Request::AddFriend { .. } | Request::AddGroup { .. } => {}
        Request::Ping => {
            assert_eq!(msgid, classic::PING_MSG);
            let pong = unique_object(&classic::pong(parsed.seq));
            assert_eq!(pong.get("seq").and_then(Value::as_i64), parsed.seq);
        }
        Request::History {
            target,
            before,
            after,
            limit,
        } => {
            assert_eq!(msgid, classic::HISTORY_MSG);
            check_target(&object, target);
            assert!(before == 0 || after == 0, "before and after both accepted");
            assert!((1..=classic::MAX_PAGE).contains(&limit));
        }
        Request::Search {
            query,
            target,
            limit,
            offset,
        } => {
            assert_eq!(msgid, classic::SEARCH_MSG);
            assert_eq!(Some(query.as_str()), str_field(&object, "q"));
            assert!(!query.trim().is_empty(), "a search without words accepted");
            if let Some(target) = target {
                check_target(&object, target);
            }
            assert!((1..=classic::MAX_SEARCH_PAGE).contains(&limit));
            assert!(offset <= classic::MAX_SEARCH_OFFSET);
        }
        Request::Conversations { limit } => {
            assert_eq!(msgid, classic::CONVERSATIONS_MSG);
            assert!((1..=classic::MAX_PAGE).contains(&limit));
        }
        Request::MarkRead { target, up_to } => {
            assert_eq!(msgid, classic::READ_MSG);
            check_target(&object, target);
            assert_eq!(Some(up_to), object.get("upto").and_then(Value::as_u64));
        }
        Request::Typing { target } => {
            assert_eq!(msgid, classic::TYPING_MSG);
            check_target(&object, target);
        }
        Request::Delivered { target, up_to } => {
            assert_eq!(msgid, classic::DELIVERED_MSG);
            check_target(&object, target);
            assert_eq!(Some(up_to), object.get("upto").and_then(Value::as_u64));
        }
        Request::Roster => assert_eq!(msgid, classic::ROSTER_MSG),
        Request::LogoutEverywhere => assert_eq!(msgid, classic::LOGOUT_ALL_MSG),
        Request::ChangePassword { .. } => assert_eq!(msgid, classic::PASSWORD_MSG),
        Request::Block { user, on } => {
            assert_eq!(
                msgid,
                if on {
                    classic::BLOCK_MSG
                } else {
                    classic::UNBLOCK_MSG
                }
            );
            assert_eq!(Some(user), object.get("userid").and_then(Value::as_i64));
        }
        Request::RemoveFriend { friend } => {
            assert_eq!(msgid, classic::REMOVE_FRIEND_MSG);
            assert_eq!(Some(friend), object.get("friendid").and_then(Value::as_i64));
        }
        Request::LeaveGroup { group } => {
            assert_eq!(msgid, classic::LEAVE_GROUP_MSG);
            assert_eq!(Some(group), object.get("groupid").and_then(Value::as_i64));
        }
        Request::GroupMembers { group } => {
            assert_eq!(msgid, classic::GROUP_MEMBERS_MSG);
            assert_eq!(Some(group), object.get("groupid").and_then(Value::as_i64));
        }
        Request::RenameGroup { group, name, .. } => {
            assert_eq!(msgid, classic::RENAME_GROUP_MSG);
            assert_eq!(Some(group), object.get("groupid").and_then(Value::as_i64));
            assert_eq!(Some(name.as_str()), str_field(&object, "groupname"));
        }
    }
}

/// A conversation target is exactly what the request named, and valid.
fn check_target(object: &Map<String, Value>, target: classic::Target) {
    match target {
        classic::Target::Peer(peer) => {
            assert!(peer > 0);
            assert_eq!(Some(peer), object.get("toid").and_then(Value::as_i64));
        }
        classic::Target::Group(group) => {
            assert!(group > 0);
            assert_eq!(Some(group), object.get("groupid").and_then(Value::as_i64));
        }
        classic::Target::Conversation(conversation) => {
            let named = str_field(object, "conv").expect("a conv");
            assert_eq!(conversation.to_string(), named, "conv round-trips");
        }
    }
}

fn str_field<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    object.get(field).and_then(Value::as_str)
}

/// The three replies a failure can become carry it intact.
fn check_failure_replies(failure: &classic::Failure, seq: Option<i64>) {
    for (reply, msgid) in [
        (classic::reply_error(failure, seq), classic::REPLY_MSG),
        (classic::login_failed(failure, seq), classic::LOGIN_MSG_ACK),
    ] {
        let reply = unique_object(&reply);
        assert_eq!(reply.get("msgid").and_then(Value::as_i64), Some(msgid));
        assert_eq!(
            reply.get("errno").and_then(Value::as_i64),
            Some(failure.errno)
        );
        assert_eq!(str_field(&reply, "errmsg"), Some(failure.errmsg.as_str()));
        assert_eq!(reply.get("seq").and_then(Value::as_i64), seq);
    }
    let reply = unique_object(&classic::register_failed(failure, seq));
    assert_eq!(reply.get("errno").and_then(Value::as_i64), Some(1));
    if seq.is_some() {
        assert_eq!(str_field(&reply, "errmsg"), Some(failure.errmsg.as_str()));
    }
}

fn check_name_in_login_ack(name: &str, seq: Option<i64>) {
    let friends = [FriendEntry {
        id: 2,
        name: name.to_owned(),
        online: true,
    }];
    let ack = unique_object(&classic::login_ok(1, name, &friends, &[], &[], seq));
    assert_eq!(str_field(&ack, "name"), Some(name));
    let friend = ack
        .get("friends")
        .and_then(|f| f.get(0))
        .and_then(Value::as_str)
        .expect("a friend entry");
    assert_eq!(
        str_field(&unique_object(friend.as_bytes()), "name"),
        Some(name)
    );
}

fn check_group_in_login_ack(name: &str, description: &str) {
    let groups = [GroupEntry {
        id: 5,
        name: name.to_owned(),
        description: description.to_owned(),
        members: vec![GroupMemberEntry {
            id: 1,
            name: name.to_owned(),
            online: false,
            creator: true,
        }],
    }];
    let ack = unique_object(&classic::login_ok(1, "a", &[], &groups, &[], None));
    let group = ack
        .get("groups")
        .and_then(|g| g.get(0))
        .and_then(Value::as_str)
        .expect("a group entry");
    let group = unique_object(group.as_bytes());
    assert_eq!(str_field(&group, "groupname"), Some(name));
    assert_eq!(str_field(&group, "groupdesc"), Some(description));
    let member = group
        .get("users")
        .and_then(|u| u.get(0))
        .and_then(Value::as_str)
        .expect("a member entry");
    assert_eq!(
        str_field(&unique_object(member.as_bytes()), "name"),
        Some(name)
    );
}

/// The server's side of a delivered chat.
const SENDER_ID: i64 = 42;
const SENDER_NAME: &str = "al\"ice\u{0}\u{2028}😀";

fn check_chat(request: &Map<String, Value>, body: Map<String, Value>, cmid: Option<String>) {
    let msg = str_field(request, "msg").expect("a chat without a string msg");
    if let Some(cmid) = &cmid {
        assert!((1..=64).contains(&cmid.len()), "cmid {cmid:?}");
        assert!(
            cmid.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "cmid {cmid:?}"
        );
        assert_eq!(str_field(request, "cmid"), Some(cmid.as_str()));
    }
    assert!(!body.contains_key("seq") && !body.contains_key("cmid"));

    let frame = classic::forward_chat(body, SENDER_ID, SENDER_NAME, || "now".into());
    let exact = serde_json::to_string(msg).expect("a string encodes");
    assert!(
        find(&frame, exact.as_bytes()),
        "the text is not byte-exact in {}",
        String::from_utf8_lossy(&frame)
    );
    let mid = match &cmid {
        Some(cmid) => format!("{SENDER_ID}-{cmid}"),
        None => "0123456789abcdef".to_owned(),
    };
    for (mid, rseq) in [
        ("", 0),
        ("", 9),
        (mid.as_str(), 0),
        (mid.as_str(), u64::MAX),
    ] {
        let delivered = classic::with_delivery_fields(&frame, mid, rseq);
        let chat = unique_object(&delivered);
        assert_eq!(str_field(&chat, "msg"), Some(msg));
        assert_eq!(chat.get("id").and_then(Value::as_i64), Some(SENDER_ID));
        assert_eq!(str_field(&chat, "name"), Some(SENDER_NAME));
        assert_eq!(
            str_field(&chat, "mid"),
            (!mid.is_empty()).then_some(mid),
            "mid of {}",
            String::from_utf8_lossy(&delivered)
        );
        assert_eq!(
            chat.get("rseq").and_then(Value::as_u64),
            (rseq != 0).then_some(rseq),
            "rseq of {}",
            String::from_utf8_lossy(&delivered)
        );
        assert!(!chat.contains_key("seq") && !chat.contains_key("cmid"));
        match request.get("time") {
            Some(Value::String(time)) => assert_eq!(str_field(&chat, "time"), Some(time.as_str())),
            _ => assert_eq!(str_field(&chat, "time"), Some("now")),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Parses what the server sends: one JSON object, every key once (a
/// repeated key is read differently by different JSON libraries).
pub fn unique_object(bytes: &[u8]) -> Map<String, Value> {
    match serde_json::from_slice::<UniqueObject>(bytes) {
        Ok(UniqueObject(object)) => object.into_iter().collect(),
        Err(e) => panic!("{e}: {}", String::from_utf8_lossy(bytes)),
    }
}

struct UniqueObject(BTreeMap<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object with unique keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueObject, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    if out.contains_key(&key) {
                        return Err(A::Error::custom(format!("the key {key:?} appears twice")));
                    }
                    out.insert(key, value);
                }
                Ok(UniqueObject(out))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}
