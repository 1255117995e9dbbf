//! Replies: the frames the gateway sends, encoded byte for byte as the
//! classic server does (compact JSON, keys sorted), and the chat frames as
//! receivers see them.

use serde_json::{Map, Value, json};

use super::roster::{FriendEntry, GroupEntry, friend_json, group_json};
use super::{
    Conversation, DELIVERED_MSG, Failure, LOGIN_MSG_ACK, LOGOUT_ALL_MSG, PONG_MSG, PRESENCE_MSG,
    READ_MSG, REG_MSG_ACK, REPLY_MSG, ROSTER_PAGE_MSG, TYPING_MSG,
};

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

pub(super) fn object(value: Value) -> Map<String, Value> {
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
    login_ok_with(id, name, friends, groups, offline, seq, Map::new())
}

/// The login ack with friends and groups already encoded, plus `extra`
/// fields for a client that uses the additions (`"roster_more":true`: the
/// rest of them follow in roster pages, msgid 15; `token`: a session
/// token).
pub fn login_ok_with(
    id: i64,
    name: &str,
    friends: Vec<String>,
    groups: Vec<String>,
    offline: &[String],
    seq: Option<i64>,
    extra: Map<String, Value>,
) -> Vec<u8> {
    let mut reply = object(json!({"errno": 0, "id": id, "msgid": LOGIN_MSG_ACK, "name": name}));
    insert_strings(&mut reply, "friends", friends);
    insert_strings(&mut reply, "groups", groups);
    insert_strings(&mut reply, "offlinemsg", offline.to_vec());
    reply.extend(extra);
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

/// `{"msgid":22,"id":..,"online":..}`: a friend or fellow group member came
/// online (their first session) or went offline (their last one ended, or
/// its lease ran out).
pub fn presence(id: i64, online: bool) -> Vec<u8> {
    encode(object(
        json!({"id": id, "msgid": PRESENCE_MSG, "online": online}),
    ))
}

/// `{"msgid":23,"reason":..}`: this session was ended from elsewhere (log
/// out everywhere, a new password); the connection closes after it.
pub fn signed_out(reason: &str) -> Vec<u8> {
    encode(object(json!({"msgid": LOGOUT_ALL_MSG, "reason": reason})))
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
    use crate::protocol::classic::{CLASSIC_BAD_LOGIN, CLASSIC_IN_USE, Request, errno, parse};

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
