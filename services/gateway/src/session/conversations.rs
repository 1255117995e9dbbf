//! The conversation requests of the additions (msgid 16 to 20): history
//! pages, the conversation list, read marks, typing and delivery receipts. History and read
//! marks live in the history service (asked over gRPC: these requests are
//! not on the path of a chat); receipts and typing go to the other party's
//! sessions as live events over Redis pub/sub, never stored.

use std::{collections::HashMap, time::Duration};

use clusterchat_proto::history::v1 as history_pb;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::{
    node::Node,
    protocol::{
        classic::{self, Failure, Target, errno},
        conversation::Conversation,
    },
    upstream::failure_from_status,
};

/// A session sends "typing" for one conversation at most this often.
pub const TYPING_EVERY: Duration = Duration::from_secs(2);

/// The conversation a request names, if `user` may ask about it. Group
/// membership (and join time) is the history service's to check; typing
/// checks it in [`typing`].
fn conversation_of(user: i64, target: Target) -> Result<Conversation, Failure> {
    let conversation = target.conversation(user);
    match conversation {
        Conversation::Direct(..) if !conversation.includes_directly(user) => Err(Failure::new(
            errno::FORBIDDEN,
            format!("conversation {conversation} is not yours"),
        )),
        Conversation::Direct(a, b) if a == b => Err(Failure::bad_request(
            "a conversation needs two different users",
        )),
        _ => Ok(conversation),
    }
}

fn history_failure(status: &tonic::Status) -> Failure {
    failure_from_status(status, "the history service")
}

/// A stored message as a client sees it: its frame (which carries `conv`
/// and `cseq`) with `mid`.
fn message_json(message: &history_pb::HistoryMessage) -> Value {
    let frame = classic::with_delivery_fields(message.frame.as_bytes(), &message.mid, 0);
    serde_json::from_slice(&frame).unwrap_or_else(|_| {
        // Not JSON (it always is): still show what was said.
        serde_json::json!({
            "conv": message.conversation,
            "cseq": message.seq,
            "id": message.sender_id,
            "mid": message.mid,
            "msg": message.text,
        })
    })
}

/// msgid 16: a page of the conversation, oldest first.
pub async fn history(
    node: &Node,
    user: i64,
    target: Target,
    before: u64,
    after: u64,
    limit: u32,
) -> Result<Map<String, Value>, Failure> {
    let conversation = conversation_of(user, target)?;
    let page = node
        .upstreams
        .history
        .clone()
        .get_history(history_pb::GetHistoryRequest {
            user_id: user,
            conversation: conversation.to_string(),
            before_seq: before,
            after_seq: after,
            limit,
        })
        .await
        .map_err(|s| history_failure(&s))?
        .into_inner();
    let mut reply = Map::new();
    reply.insert("conv".into(), conversation.to_string().into());
    reply.insert(
        "messages".into(),
        page.messages
            .iter()
            .map(message_json)
            .collect::<Vec<_>>()
            .into(),
    );
    reply.insert("more".into(), page.more.into());
    Ok(reply)
}

/// msgid 31: messages holding every word of `query`, best first, each as
/// history shows it with `marks`: where the words are in its `msg`,
/// `[start, end)` in Unicode code points.
pub async fn search(
    node: &Node,
    user: i64,
    query: &str,
    target: Option<Target>,
    limit: u32,
    offset: u32,
) -> Result<Map<String, Value>, Failure> {
    let conversation = target.map(|t| conversation_of(user, t)).transpose()?;
    let found = node
        .upstreams
        .history
        .clone()
        .search_messages(history_pb::SearchMessagesRequest {
            user_id: user,
            query: query.to_owned(),
            conversation: conversation.map(|c| c.to_string()).unwrap_or_default(),
            limit,
            offset,
        })
        .await
        .map_err(|s| history_failure(&s))?
        .into_inner();
    let hits: Vec<Value> = found
        .hits
        .iter()
        .filter_map(|hit| {
            let message = hit.message.as_ref()?;
            let mut shown = message_json(message);
            let marks: Vec<Value> = hit
                .highlights
                .iter()
                .map(|h| serde_json::json!([h.start, h.end]))
                .collect();
            if let Some(object) = shown.as_object_mut() {
                object.insert("marks".into(), marks.into());
            }
            Some(shown)
        })
        .collect();
    let mut reply = Map::new();
    reply.insert("hits".into(), hits.into());
    reply.insert("more".into(), found.more.into());
    Ok(reply)
}

/// msgid 17: the user's conversations, the latest first.
pub async fn list(node: &Node, user: i64, limit: u32) -> Result<Map<String, Value>, Failure> {
    let list = node
        .upstreams
        .history
        .clone()
        .list_conversations(history_pb::ListConversationsRequest {
            user_id: user,
            limit,
        })
        .await
        .map_err(|s| history_failure(&s))?
        .into_inner();
    let conversations: Vec<Value> = list
        .conversations
        .iter()
        .map(|c| {
            let mut entry = Map::new();
            entry.insert("conv".into(), c.conversation.clone().into());
            if c.group_id != 0 {
                entry.insert("groupid".into(), c.group_id.into());
            } else {
                entry.insert("peer".into(), c.peer_id.into());
            }
            if let Some(last) = &c.last {
                entry.insert("last".into(), message_json(last));
            }
            entry.insert("read".into(), c.read_seq.into());
            entry.insert("unread".into(), c.unread.into());
            entry.insert("peer_read".into(), c.peer_read_seq.into());
            Value::Object(entry)
        })
        .collect();
    let mut reply = Map::new();
    reply.insert("conversations".into(), conversations.into());
    Ok(reply)
}

/// msgid 18: raises the user's read mark, then tells the other party (in a
/// one-to-one conversation) and the user's other devices.
pub async fn mark_read(
    node: &Node,
    user: i64,
    owner: &str,
    target: Target,
    up_to: u64,
) -> Result<Map<String, Value>, Failure> {
    let conversation = conversation_of(user, target)?;
    // Not beyond the newest message (which history may not have yet).
    let newest = node
        .redis
        .newest_in(&conversation.to_string())
        .await
        .map_err(|e| Failure::new(errno::UNAVAILABLE, format!("cannot mark read now: {e}")))?;
    let up_to = up_to.min(newest);
    let marked = node
        .upstreams
        .history
        .clone()
        .mark_read(history_pb::MarkReadRequest {
            user_id: user,
            conversation: conversation.to_string(),
            up_to_seq: up_to,
        })
        .await
        .map_err(|s| history_failure(&s))?
        .into_inner();
    if marked.read_seq > 0 {
        let receipt = classic::read_receipt(&conversation, user, marked.read_seq);
        let mut to = vec![user];
        to.extend(conversation.peer_of(user));
        node.redis.publish_live(&to, owner, &receipt).await;
    }
    let mut reply = Map::new();
    reply.insert("read".into(), marked.read_seq.into());
    reply.insert("unread".into(), marked.unread.into());
    Ok(reply)
}

/// msgid 20: tells the other party of a one-to-one conversation how far
/// its messages reached this device (never stored; in a group, nobody is
/// told: a member's receipt would go to every sender).
pub async fn delivered(
    node: &Node,
    user: i64,
    owner: &str,
    target: Target,
    up_to: u64,
) -> Result<Map<String, Value>, Failure> {
    let conversation = conversation_of(user, target)?;
    let Some(peer) = conversation.peer_of(user) else {
        return Ok(Map::new());
    };
    // Not beyond the newest message, as for read marks.
    let newest = node
        .redis
        .newest_in(&conversation.to_string())
        .await
        .map_err(|e| Failure::new(errno::UNAVAILABLE, format!("cannot pass it on now: {e}")))?;
    let up_to = up_to.min(newest);
    if up_to > 0 {
        node.redis
            .publish_live(
                &[peer],
                owner,
                &classic::delivery_receipt(&conversation, user, up_to),
            )
            .await;
    }
    Ok(Map::new())
}

/// msgid 19: "typing" to the other party or the group's other members,
/// at most every [`TYPING_EVERY`] per conversation (more is dropped).
pub async fn typing(
    node: &Node,
    (user, name): (i64, &str),
    owner: &str,
    target: Target,
    sent: &mut HashMap<Conversation, Instant>,
) -> Result<Map<String, Value>, Failure> {
    let conversation = conversation_of(user, target)?;
    let to: Vec<i64> = match conversation {
        Conversation::Direct(..) => {
            let peer = conversation.peer_of(user);
            // Someone who blocked the typist is not told either.
            if let Some(peer) = peer
                && node.directory.blocks(peer, user).await
            {
                return Ok(Map::new());
            }
            peer.into_iter().collect()
        }
        Conversation::Group(group) => {
            let members = node.directory.group_members(group).await?;
            if !members.contains(&user) {
                return Err(Failure::new(
                    errno::FORBIDDEN,
                    format!("you are not a member of group {group}"),
                ));
            }
            members.iter().copied().filter(|&m| m != user).collect()
        }
    };
    let now = Instant::now();
    sent.retain(|_, at| now.duration_since(*at) < TYPING_EVERY);
    if let std::collections::hash_map::Entry::Vacant(slot) = sent.entry(conversation) {
        slot.insert(now);
        node.redis
            .publish_live(&to, owner, &classic::typing(&conversation, user, name))
            .await;
    }
    Ok(Map::new())
}
