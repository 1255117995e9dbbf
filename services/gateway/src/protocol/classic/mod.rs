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
//!
//! Here: the message numbers, the error numbers and [`Failure`]; in
//! `request.rs` the parsing ([`Request`], [`parse`]), in `reply.rs` the
//! frames the gateway sends, in `roster.rs` the friend and group entries
//! and their JSON.

mod reply;
mod request;
mod roster;

pub use super::conversation::Conversation;
pub use reply::{
    delivery_receipt, forward_chat, login_failed, login_ok, login_ok_with, pong, presence,
    read_receipt, register_failed, register_ok, reply_error, reply_ok, roster_page, signed_out,
    typing, with_delivery_fields,
};
pub use request::{Credential, LoginOptions, Parsed, Request, Target, parse};
pub use roster::{
    FriendEntry, GroupEntry, GroupMemberEntry, friend_json, group_json, roster_results,
};

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
/// Server only: a friend's or fellow group member's presence changed
/// (`id`, `online`), pushed to sessions that use the additions.
pub const PRESENCE_MSG: i64 = 22;
/// Client: "log me out everywhere" (every session, every token); server:
/// `{"msgid":23,"reason":..}` to each session so ended, before it closes.
pub const LOGOUT_ALL_MSG: i64 = 23;
/// Client: a new password (`password`, `new_password`); the user's other
/// sessions end (each told with msgid 23).
pub const PASSWORD_MSG: i64 = 24;
/// Client: end a friendship (`friendid`), both ways.
pub const REMOVE_FRIEND_MSG: i64 = 25;
/// Client: leave a group (`groupid`); its creator may not.
pub const LEAVE_GROUP_MSG: i64 = 26;
/// Client: a group's members with roles and presence (`groupid`).
pub const GROUP_MEMBERS_MSG: i64 = 27;
/// Client: rename a group (`groupid`, `groupname`, optional `groupdesc`);
/// its creator alone.
pub const RENAME_GROUP_MSG: i64 = 28;
/// Client: block a user (`userid`): their one-to-one chats to you are
/// refused (errno 4, "user ID does not accept your messages").
pub const BLOCK_MSG: i64 = 29;
/// Client: unblock a user (`userid`).
pub const UNBLOCK_MSG: i64 = 30;
/// Client: search your history (`q`; optional `toid`, `groupid` or `conv`,
/// `limit`, `offset`): hits best first with `marks` (msgid 11).
pub const SEARCH_MSG: i64 = 31;
/// Search hits per page, at most, and how deep paging goes.
pub const MAX_SEARCH_PAGE: u32 = 100;
pub const MAX_SEARCH_OFFSET: u32 = 1000;

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
