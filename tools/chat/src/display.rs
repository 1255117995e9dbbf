//! How the interactive client shows conversations: history pages, the
//! conversation list, read receipts, typing and messages sent from the user's
//! other devices. Pure text from JSON, so it is tested here without a server.

use std::collections::HashMap;

use serde_json::Value;

use crate::conv::Conv;

/// The names the client has learnt (from the roster and from frames), so
/// that ids read as people and groups.
#[derive(Default)]
pub struct Names {
    pub users: HashMap<i64, String>,
    pub groups: HashMap<i64, String>,
}

impl Names {
    /// `bob (2)`, or `user 2` for someone not met yet.
    pub fn user(&self, id: i64) -> String {
        self.users
            .get(&id)
            .filter(|n| !n.is_empty())
            .map_or_else(|| format!("user {id}"), |n| format!("{n} ({id})"))
    }

    /// `group 5 (team)`, or `group 5`.
    pub fn group(&self, id: i64) -> String {
        self.groups
            .get(&id)
            .filter(|n| !n.is_empty())
            .map_or_else(|| format!("group {id}"), |n| format!("group {id} ({n})"))
    }

    /// The conversation as `me` sees it: the other person, or the group.
    pub fn conv(&self, conv: &Conv, me: i64) -> String {
        match (conv, conv.peer_of(me)) {
            (Conv::Group(group), _) => self.group(*group),
            (_, Some(peer)) => self.user(peer),
            (Conv::Direct { .. }, None) => conv.to_string(),
        }
    }

    /// Remembers the sender's name a frame carries (chats and typing events
    /// have the server's `id` and `name`).
    pub fn learn(&mut self, frame: &Value) {
        if let (Some(id), Some(name)) = (frame["id"].as_i64(), frame["name"].as_str())
            && !name.is_empty()
        {
            self.users.insert(id, name.to_owned());
        }
    }
}

fn text(frame: &Value, key: &str) -> String {
    frame[key]
        .as_str()
        .map_or_else(|| frame[key].to_string(), str::to_owned)
}

/// At most `max` characters of `text` on one line, with `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    let line = text.replace(['\n', '\r'], " ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Who sent a frame, for `me`: `you` or their name.
fn sender(frame: &Value, me: i64) -> String {
    match frame["id"].as_i64() {
        Some(id) if id == me => "you".into(),
        Some(id) => match frame["name"].as_str() {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => format!("user {id}"),
        },
        None => "?".into(),
    }
}

/// One message of a history page: `  2025-01-01 10:00:05  bob: hello`.
pub fn history_line(frame: &Value, me: i64) -> String {
    format!(
        "  {}  {}: {}",
        text(frame, "time"),
        sender(frame, me),
        text(frame, "msg")
    )
}

/// A history reply (msgid 11 with `messages`) as a header and one line per
/// message, oldest first. `earlier` is true for a page asked with `more`.
pub fn history_page(reply: &Value, me: i64, names: &Names, earlier: bool) -> String {
    let messages = reply["messages"].as_array().map_or(&[][..], Vec::as_slice);
    let who = reply["conv"]
        .as_str()
        .and_then(|c| c.parse::<Conv>().ok())
        .map_or_else(|| "?".to_owned(), |c| names.conv(&c, me));
    let mut out = match (messages.len(), earlier) {
        (0, false) => format!("history with {who}: no messages"),
        (0, true) => format!("history with {who}: no earlier messages"),
        (1, _) => format!("history with {who}: 1 message"),
        (n, _) => format!("history with {who}: {n} messages"),
    };
    if reply["more"] == true {
        out.push_str(" (type more for earlier ones)");
    } else if !messages.is_empty() {
        out.push_str(" (from the beginning)");
    }
    for frame in messages {
        out.push('\n');
        out.push_str(&history_line(frame, me));
    }
    out
}

/// A page of search hits (msgid 11 with `hits`), best first: where each
/// was said, when, by whom, the words in [brackets].
pub fn search_hits(reply: &Value, query: &str, offset: u32, me: i64, names: &Names) -> String {
    let hits = reply["hits"].as_array().map_or(&[][..], Vec::as_slice);
    let mut out = match (hits.len(), offset) {
        (0, 0) => format!("search {query:?}: nothing found"),
        (0, _) => format!("search {query:?}: no more hits"),
        (n, 0) => format!("search {query:?}: {n} hit{}", if n == 1 { "" } else { "s" }),
        (n, _) => format!("search {query:?}: {n} more"),
    };
    if reply["more"] == true {
        out.push_str(" (type more for the next ones)");
    }
    for hit in hits {
        let conv = hit["conv"]
            .as_str()
            .and_then(|c| c.parse::<Conv>().ok())
            .map_or_else(|| text(hit, "conv"), |c| names.conv(&c, me));
        let msg = text(hit, "msg");
        let marks: Vec<(usize, usize)> = hit["marks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| Some((m[0].as_u64()? as usize, m[1].as_u64()? as usize)))
            .collect();
        out.push_str(&format!(
            "\n  {}  {conv}  {}: {}",
            text(hit, "time"),
            sender(hit, me),
            clip(&marked(&msg, &marks), 200)
        ));
    }
    out
}

/// `text` with each `[start, end)` (code points) in brackets.
fn marked(text: &str, marks: &[(usize, usize)]) -> String {
    let mut out = String::with_capacity(text.len() + 2 * marks.len());
    for (i, c) in text.chars().enumerate() {
        if marks.iter().any(|&(start, _)| start == i) {
            out.push('[');
        }
        out.push(c);
        if marks.iter().any(|&(_, end)| end == i + 1) {
            out.push(']');
        }
    }
    out
}

/// The highest and the lowest `cseq` of a history reply's messages.
pub fn cseq_range(reply: &Value) -> Option<(u64, u64)> {
    let seqs = reply["messages"]
        .as_array()?
        .iter()
        .filter_map(|m| m["cseq"].as_u64());
    seqs.fold(None, |range, s| match range {
        None => Some((s, s)),
        Some((low, high)) => Some((low.min(s), high.max(s))),
    })
}

/// One entry of a conversations reply (msgid 17):
/// `bob (2)  [2 unread]  2025-01-01 10:00:05 bob: hello`.
pub fn conversation_row(entry: &Value, me: i64, names: &Names) -> String {
    let conv = entry["conv"].as_str().and_then(|c| c.parse::<Conv>().ok());
    let who = conv.map_or_else(|| text(entry, "conv"), |c| names.conv(&c, me));
    let unread = entry["unread"].as_u64().unwrap_or(0);
    let mut out = format!("  {who}");
    if unread > 0 {
        out.push_str(&format!("  [{unread} unread]"));
    }
    let last = &entry["last"];
    if last.is_object() {
        out.push_str(&format!(
            "  {} {}: {}",
            text(last, "time"),
            sender(last, me),
            clip(&text(last, "msg"), 60)
        ));
        // Your last message in a 1:1 conversation, and the other side has
        // read it.
        let peer_read = entry["peer_read"].as_u64().unwrap_or(0);
        if last["id"].as_i64() == Some(me) && last["cseq"].as_u64().is_some_and(|c| c <= peer_read)
        {
            out.push_str("  (read)");
        }
    }
    out
}

/// The conversation list, newest first.
pub fn conversation_list(reply: &Value, me: i64, names: &Names) -> String {
    let entries = reply["conversations"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    if entries.is_empty() {
        return "conversations: none yet".into();
    }
    let mut out = format!("conversations ({}), newest first:", entries.len());
    for entry in entries {
        out.push('\n');
        out.push_str(&conversation_row(entry, me, names));
    }
    out
}

/// One short line for after the login: who has unread messages for you.
pub fn unread_summary(reply: &Value, me: i64, names: &Names) -> String {
    let unread: Vec<String> = reply["conversations"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|entry| {
            let n = entry["unread"].as_u64().filter(|n| *n > 0)?;
            let conv = entry["conv"].as_str()?.parse::<Conv>().ok()?;
            Some(format!("{} {n}", names.conv(&conv, me)))
        })
        .collect();
    if unread.is_empty() {
        "no unread messages".into()
    } else {
        format!(
            "unread: {} (type conversations, or history:id)",
            unread.join(" · ")
        )
    }
}

/// A live read receipt (msgid 18 without `seq`): `bob (2) read up to #57`.
/// `None` when the reader is `me` on another device: nothing to tell.
pub fn receipt(event: &Value, me: i64, names: &Names) -> Option<String> {
    let reader = event["id"].as_i64()?;
    if reader == me {
        return None;
    }
    let upto = text(event, "upto");
    let line = match event["conv"].as_str().and_then(|c| c.parse::<Conv>().ok()) {
        Some(Conv::Group(group)) => format!(
            "{} read {} up to #{upto}",
            names.user(reader),
            names.group(group)
        ),
        _ => format!("{} read up to #{upto}", names.user(reader)),
    };
    Some(line)
}

/// A live typing event (msgid 19): `bob is typing…`.
pub fn typing(event: &Value, names: &Names) -> String {
    let who = match event["name"].as_str() {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => event["id"]
            .as_i64()
            .map_or_else(|| "someone".into(), |id| names.user(id)),
    };
    match event["groupid"].as_i64() {
        Some(group) => format!("{who} is typing in {}…", names.group(group)),
        None => format!("{who} is typing…"),
    }
}

/// A presence change (msgid 22): `bob (2) is online` / `is offline`.
pub fn presence(event: &Value, names: &Names) -> Option<String> {
    let id = event["id"].as_i64()?;
    let online = event["online"].as_bool()?;
    let state = if online { "online" } else { "offline" };
    Some(format!("{} is {state}", names.user(id)))
}

/// A chat the user sent from another device (its `id` is the user):
/// `2025-01-01 10:00:05 you (other device) → bob (2): hi`.
pub fn own_chat_from_other_device(frame: &Value, names: &Names) -> String {
    let to = match (frame["groupid"].as_i64(), frame["toid"].as_i64()) {
        (Some(group), _) => names.group(group),
        (None, Some(to)) => names.user(to),
        (None, None) => "?".into(),
    };
    format!(
        "{} you (other device) → {to}: {}",
        text(frame, "time"),
        text(frame, "msg")
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn search_hits_bracket_the_words_where_they_were_said() {
        let reply = json!({"errno": 0, "more": true, "hits": [
            {"conv": "d:1:2", "id": 2, "name": "bob", "time": "2026-12-07 10:00:00",
             "msg": "明天去北京开会", "marks": [[3, 5]]},
        ]});
        let mut names = Names::default();
        names.learn(&json!({"id": 2, "name": "bob"}));
        assert_eq!(
            search_hits(&reply, "北京", 0, 1, &names),
            "search \"北京\": 1 hit (type more for the next ones)\n  2026-12-07 10:00:00  bob (2)  bob: 明天去[北京]开会"
        );
        assert_eq!(marked("abcabc", &[(0, 1), (3, 6)]), "[a]bc[abc]");
        let none = json!({"errno": 0, "more": false, "hits": []});
        assert_eq!(
            search_hits(&none, "x", 0, 1, &names),
            "search \"x\": nothing found"
        );
    }

    fn names() -> Names {
        let mut names = Names::default();
        names.users.insert(2, "bob".into());
        names.groups.insert(5, "team".into());
        names
    }

    fn frame(from: i64, name: &str, to: i64, cseq: u64, msg: &str) -> Value {
        json!({"msgid": 6, "id": from, "name": name, "toid": to, "msg": msg,
               "time": "2025-01-01 10:00:00", "conv": "d:1:2", "cseq": cseq, "mid": "m"})
    }

    #[test]
    fn names_of_people_groups_and_conversations() {
        let names = names();
        assert_eq!(names.user(2), "bob (2)");
        assert_eq!(names.user(3), "user 3");
        assert_eq!(names.group(5), "group 5 (team)");
        assert_eq!(names.group(6), "group 6");
        assert_eq!(names.conv(&Conv::direct(1, 2), 1), "bob (2)");
        assert_eq!(names.conv(&Conv::direct(1, 2), 2), "user 1");
        assert_eq!(names.conv(&Conv::Group(5), 1), "group 5 (team)");
    }

    #[test]
    fn learns_senders_names() {
        let mut names = Names::default();
        names.learn(&frame(3, "carol", 1, 1, "hi"));
        names.learn(&json!({"msgid": 19, "id": 4}));
        assert_eq!(names.user(3), "carol (3)");
        assert_eq!(names.user(4), "user 4");
    }

    #[test]
    fn clips_long_and_multi_line_text() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("a\nb", 10), "a b");
        assert_eq!(clip("abcdefghij", 5), "abcd…");
        assert_eq!(clip("ééééé", 3), "éé…", "cuts characters, not bytes");
    }

    #[test]
    fn history_page_oldest_first_with_you_and_them() {
        let reply = json!({"errno": 0, "msgid": 11, "seq": 3, "conv": "d:1:2", "more": true,
            "messages": [frame(1, "alice", 2, 7, "hi"), frame(2, "bob", 1, 8, "hello: there")]});
        assert_eq!(
            history_page(&reply, 1, &names(), false),
            "history with bob (2): 2 messages (type more for earlier ones)\n  \
             2025-01-01 10:00:00  you: hi\n  \
             2025-01-01 10:00:00  bob: hello: there"
        );
        assert_eq!(cseq_range(&reply), Some((7, 8)));
    }

    #[test]
    fn history_page_at_the_beginning_and_empty() {
        let first = json!({"conv": "g:5", "more": false,
            "messages": [frame(2, "bob", 1, 1, "first")]});
        assert_eq!(
            history_page(&first, 1, &names(), false),
            "history with group 5 (team): 1 message (from the beginning)\n  \
             2025-01-01 10:00:00  bob: first"
        );
        let empty = json!({"conv": "d:1:3", "more": false, "messages": []});
        assert_eq!(
            history_page(&empty, 1, &names(), false),
            "history with user 3: no messages"
        );
        assert_eq!(
            history_page(&empty, 1, &names(), true),
            "history with user 3: no earlier messages"
        );
        assert_eq!(cseq_range(&empty), None);
    }

    #[test]
    fn conversation_list_newest_first_with_unread_and_read_marks() {
        let reply = json!({"conversations": [
            {"conv": "d:1:2", "peer": 2, "unread": 2, "read": 3, "peer_read": 0,
             "last": frame(2, "bob", 1, 5, "are you there?")},
            {"conv": "g:5", "groupid": 5, "unread": 0, "read": 9, "peer_read": 0,
             "last": {"msgid": 10, "id": 1, "name": "alice", "groupid": 5, "msg": "see you",
                      "time": "2025-01-01 10:00:00", "conv": "g:5", "cseq": 9}},
            {"conv": "d:1:3", "peer": 3, "unread": 0, "read": 4, "peer_read": 4,
             "last": frame(1, "alice", 3, 4, "ok")},
        ]});
        assert_eq!(
            conversation_list(&reply, 1, &names()),
            "conversations (3), newest first:\n  \
             bob (2)  [2 unread]  2025-01-01 10:00:00 bob: are you there?\n  \
             group 5 (team)  2025-01-01 10:00:00 you: see you\n  \
             user 3  2025-01-01 10:00:00 you: ok  (read)"
        );
        assert_eq!(
            unread_summary(&reply, 1, &names()),
            "unread: bob (2) 2 (type conversations, or history:id)"
        );
        let none = json!({"conversations": []});
        assert_eq!(
            conversation_list(&none, 1, &names()),
            "conversations: none yet"
        );
        assert_eq!(unread_summary(&none, 1, &names()), "no unread messages");
    }

    #[test]
    fn receipts_from_others_only() {
        let names = names();
        let direct = json!({"msgid": 18, "conv": "d:1:2", "id": 2, "upto": 57});
        assert_eq!(
            receipt(&direct, 1, &names).as_deref(),
            Some("bob (2) read up to #57")
        );
        let group = json!({"msgid": 18, "conv": "g:5", "id": 2, "upto": 9});
        assert_eq!(
            receipt(&group, 1, &names).as_deref(),
            Some("bob (2) read group 5 (team) up to #9")
        );
        let mine = json!({"msgid": 18, "conv": "d:1:2", "id": 1, "upto": 57});
        assert_eq!(receipt(&mine, 1, &names), None);
    }

    #[test]
    fn typing_in_a_chat_and_in_a_group() {
        let names = names();
        assert_eq!(
            typing(
                &json!({"msgid": 19, "conv": "d:1:2", "id": 2, "name": "bob"}),
                &names
            ),
            "bob is typing…"
        );
        assert_eq!(
            typing(
                &json!({"msgid": 19, "conv": "g:5", "groupid": 5, "id": 2, "name": "bob"}),
                &names
            ),
            "bob is typing in group 5 (team)…"
        );
        assert_eq!(
            typing(&json!({"msgid": 19, "id": 2}), &names),
            "bob (2) is typing…"
        );
    }

    #[test]
    fn own_chats_from_another_device() {
        let names = names();
        assert_eq!(
            own_chat_from_other_device(&frame(1, "alice", 2, 3, "hi"), &names),
            "2025-01-01 10:00:00 you (other device) → bob (2): hi"
        );
        let group = json!({"msgid": 10, "id": 1, "groupid": 5, "msg": "all", "time": "t"});
        assert_eq!(
            own_chat_from_other_device(&group, &names),
            "t you (other device) → group 5 (team): all"
        );
    }
}
