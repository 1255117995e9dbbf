//! The interactive client: the classic menu and commands, plus what the
//! classic client lacked: every command reports success or the server's
//! reason (it sends `seq`), friends show their online state, the connection
//! is re-established (and the session logged in again) when a node goes away.
//!
//! Conversations (the history additions): `history:` shows a conversation's
//! last messages and marks them read, `more` pages back, `conversations`
//! lists them with unread counts (a short summary follows the login), and
//! `read:` marks one read. The conversation last written to or looked at is
//! the current one: a message arriving in it is marked read as it prints.
//! Read receipts and typing notices print as one dim line each (typing at
//! most every 5 s per person); typing a `chat:ID:` line sends a typing notice.
//! Messages the user sent from another device print as `you (other device)`.
//!
//! Input is read on its own thread with rustyline (line editing, history);
//! messages print through rustyline's external printer, above the line being
//! typed, so they never garble it.

use std::{
    collections::HashMap,
    io::IsTerminal as _,
    sync::Arc,
    time::{Duration, Instant},
};

use rustyline::{Editor, ExternalPrinter as _, Helper, history::DefaultHistory};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{
    conn::{Connection, Deliveries, Endpoint},
    conv::Conv,
    display::{self, Names},
    typing::{Throttle, TypingWatcher},
};

const HELP: &str = "commands:
  help                          this list
  chat:friendid:message         send a message to a user
  addfriend:friendid            make friends
  creategroup:groupname:desc    create a group (prints its id)
  addgroup:groupid              join a group
  removefriend:friendid         end a friendship
  block:userid (unblock:userid) refuse (accept again) a user's messages
  leavegroup:groupid            leave a group
  members:groupid               a group's members, their roles and who is online
  renamegroup:groupid:name[:desc]  rename a group you created
  groupchat:groupid:message     send a message to a group
  history:friendid[:count]      the last messages with a user (marks them read)
  history:g:groupid[:count]     the last messages of a group
  history                       the last messages of the conversation you are in
  more                          earlier messages of the last history (or the next hits of a search)
  search:words                  find messages with every word (Chinese without spaces too)
  conversations (or list)       your conversations, newest first, with unread counts
  read:friendid (read:g:id)     mark a conversation read
  password:current:new          change your password (your other sessions end)
  logouteverywhere              end every session of yours, on every device
  loginout                      log out (back to the menu)
  quit                          leave";

/// Messages per history page unless the command says.
const HISTORY_PAGE: u32 = 20;

const MENU: &str = "1. login   2. register   3. quit";

type Printer = Box<dyn FnMut(String) + Send>;

fn printer<H: Helper>(editor: &mut Editor<H, DefaultHistory>) -> Printer {
    match editor.create_external_printer() {
        Ok(mut external) => Box::new(move |line| {
            let _ = external.print(format!("{line}\n"));
        }),
        Err(_) => Box::new(|line| println!("{line}")),
    }
}

enum State {
    Menu,
    LoginId,
    LoginPassword(i64),
    RegisterName,
    RegisterPassword(String),
    Chatting,
}

enum Pending {
    Login {
        id: i64,
        password: String,
    },
    /// Logging in again after a reconnect; the old session may still look
    /// online until its node's presence expires, so errno 2 is retried.
    Relogin {
        attempt: u32,
    },
    Register,
    Command(String),
    /// `password:`: the new password, kept for logging in again once the
    /// server took it.
    NewPassword(String),
    /// `members:`: print the group's members.
    Members,
    /// A page of search hits for `query` from `offset`.
    Search {
        query: String,
        offset: u32,
    },
    /// A history page; `earlier` for one asked with `more`.
    History {
        conv: Conv,
        earlier: bool,
    },
    /// The conversation list; the short unread summary after a login.
    Conversations {
        at_login: bool,
    },
    /// `read:`: the newest message of `conv` (a history page of one), to
    /// mark read up to it.
    ReadNewest(Conv),
    /// A read mark; `quiet` when the client set it itself (only a failure
    /// is shown).
    Read {
        conv: Conv,
        quiet: bool,
    },
}

struct Session {
    id: i64,
    password: String,
    names: Names,
    /// The conversation last written to or looked at: messages arriving in
    /// it are marked read.
    current: Option<Conv>,
    /// Where `more` continues: the conversation of the last history page
    /// and its oldest `cseq`, while there are earlier messages.
    earlier: Option<(Conv, u64)>,
    /// Where `more` continues a search instead (the last thing listed was
    /// a page of hits and more follow): the query and the next offset.
    next_hits: Option<(String, u32)>,
}

pub async fn run(endpoint: Endpoint) -> anyhow::Result<()> {
    let mut editor = Editor::<TypingWatcher, DefaultHistory>::new()?;
    let (typing_tx, mut typing) = mpsc::unbounded_channel();
    editor.set_helper(Some(TypingWatcher::new(typing_tx)));
    let mut print = printer(&mut editor);
    let on_terminal = std::io::stdout().is_terminal();
    // Receipts and typing: one faint line, never in the way.
    let dim = move |line: String| {
        if on_terminal {
            format!("\x1b[2m{line}\x1b[0m")
        } else {
            line
        }
    };
    let mut shown_typing = Throttle::new(Duration::from_secs(5));
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        while let Ok(line) = editor.readline("> ") {
            let _ = editor.add_history_entry(line.as_str());
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut conn = connect(&endpoint, Arc::default(), &mut print).await?;
    let mut state = State::Menu;
    let mut session: Option<Session> = None;
    let mut pending: HashMap<i64, Pending> = HashMap::new();
    let mut seq = 0i64;
    print(MENU.into());

    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { return Ok(()) };
                let line = line.trim().to_owned();
                let mut next_seq = || { seq += 1; seq };
                match state {
                    State::Menu => match line.as_str() {
                        "1" => { print("user id:".into()); state = State::LoginId; }
                        "2" => { print("user name:".into()); state = State::RegisterName; }
                        "3" | "quit" => return Ok(()),
                        _ => print(format!("choose 1, 2 or 3\n{MENU}")),
                    },
                    State::LoginId => match line.parse::<i64>() {
                        Ok(id) => { print("password:".into()); state = State::LoginPassword(id); }
                        Err(_) => print("a user id is a number; user id:".into()),
                    },
                    State::LoginPassword(id) => {
                        let s = next_seq();
                        let mut request = conn.deliveries.login_request(id, &line);
                        request["presence"] = true.into();
                        request["seq"] = s.into();
                        conn.send(&request)?;
                        pending.insert(s, Pending::Login { id, password: line });
                        state = State::Menu;
                    }
                    State::RegisterName => { print("password:".into()); state = State::RegisterPassword(line); }
                    State::RegisterPassword(name) => {
                        let s = next_seq();
                        conn.send(&json!({"msgid": 4, "name": name, "password": line, "seq": s}))?;
                        pending.insert(s, Pending::Register);
                        state = State::Menu;
                    }
                    State::Chatting => {
                        let Some(me) = session.as_mut() else { state = State::Menu; continue };
                        match command(&line, me) {
                            Ok(Some((request, reply_to))) => {
                                let s = next_seq();
                                let mut request = request;
                                request["seq"] = s.into();
                                if matches!(request["msgid"].as_i64(), Some(6 | 10)) {
                                    request["cmid"] = format!("{:032x}", rand::random::<u128>()).into();
                                }
                                if let Some(conv) = conversation_of_request(&request, me.id) {
                                    me.current = Some(conv);
                                }
                                conn.send(&request)?;
                                if request["msgid"] == 3 {
                                    session = None;
                                    state = State::Menu;
                                    print(format!("logged out\n{MENU}"));
                                } else {
                                    pending.insert(s, reply_to);
                                }
                            }
                            Ok(None) => match line.as_str() {
                                "help" => print(HELP.into()),
                                "quit" => return Ok(()),
                                "" => {}
                                _ => print("unknown command; type help".into()),
                            },
                            Err(e) => print(format!("error: {e}")),
                        }
                    }
                }
            }
            target = typing.recv() => {
                // The editor saw a chat line being typed.
                if let (Some(target), State::Chatting) = (target, &state) {
                    send_quietly(&conn, &target.request());
                }
            }
            message = conn.incoming.recv() => {
                let Some(message) = message else {
                    print("connection lost; reconnecting ...".into());
                    pending.clear();
                    // The new connection resumes after what was shown.
                    let shown = conn.deliveries.clone();
                    conn = connect(&endpoint, shown, &mut print).await?;
                    if let Some(me) = &session {
                        seq += 1;
                        let mut request = conn.deliveries.login_request(me.id, &me.password);
                        request["presence"] = true.into();
                        request["seq"] = seq.into();
                        conn.send(&request)?;
                        pending.insert(seq, Pending::Relogin { attempt: 1 });
                    } else {
                        state = State::Menu;
                        print(MENU.into());
                    }
                    continue;
                };
                let reply_to = message["seq"].as_i64().and_then(|s| pending.remove(&s));
                match (reply_to, message["msgid"].as_i64()) {
                    (Some(Pending::Login { id, password }), _) => {
                        if message["errno"] == 0 {
                            let me = show_login(&message, id, password, &conn.deliveries, &mut print);
                            session = Some(me);
                            state = State::Chatting;
                            seq += 1;
                            send_quietly(&conn, &json!({"msgid": 17, "limit": 50, "seq": seq}));
                            pending.insert(seq, Pending::Conversations { at_login: true });
                        } else {
                            print(format!("login failed: {}\n{MENU}", message["errmsg"].as_str().unwrap_or("refused")));
                            state = State::Menu;
                        }
                    }
                    (Some(Pending::Relogin { attempt }), _) => {
                        let Some(me) = &session else { continue };
                        if message["errno"] == 0 {
                            print(format!("logged in again as {} ({})", message["name"].as_str().unwrap_or_default(), me.id));
                            for m in crate::offline_messages(&message) {
                                if conn.deliveries.first_time(&m) {
                                    print(format_chat(&m));
                                }
                            }
                        } else if message["errno"] == 2 && attempt < 60 {
                            if attempt == 1 {
                                print("waiting for the old session to expire ...".into());
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            seq += 1;
                            let mut request = conn.deliveries.login_request(me.id, &me.password);
                        request["presence"] = true.into();
                            request["seq"] = seq.into();
                            conn.send(&request)?;
                            pending.insert(seq, Pending::Relogin { attempt: attempt + 1 });
                        } else {
                            print(format!("could not log in again: {}\n{MENU}", message["errmsg"].as_str().unwrap_or("refused")));
                            session = None;
                            state = State::Menu;
                        }
                    }
                    (Some(Pending::Register), _) => {
                        if message["errno"] == 0 {
                            print(format!("registered: your user id is {}\n{MENU}", message["id"]));
                        } else {
                            print(format!("register failed: {}\n{MENU}", message["errmsg"].as_str().unwrap_or("name taken or invalid")));
                        }
                    }
                    (Some(Pending::Members), _) => {
                        if message["errno"] == 0 {
                            let mut out = format!("group {} ({}):", message["groupid"], message["groupname"].as_str().unwrap_or(""));
                            for m in message["members"].as_array().into_iter().flatten() {
                                out.push_str(&format!(
                                    "\n  {} ({}) {}{}",
                                    m["name"].as_str().unwrap_or("?"),
                                    m["id"],
                                    if m["online"] == true { "online" } else { "offline" },
                                    if m["role"] == "creator" { ", creator" } else { "" },
                                ));
                            }
                            print(out);
                        } else {
                            print(format!("members: error: {}", message["errmsg"].as_str().unwrap_or("failed")));
                        }
                    }
                    (Some(Pending::Search { query, offset }), _) => {
                        let Some(me) = session.as_mut() else { continue };
                        if message["errno"] != 0 {
                            print(format!("search: error: {}", reason(&message)));
                            continue;
                        }
                        if let Some(hits) = message["hits"].as_array() {
                            hits.iter().for_each(|f| me.names.learn(f));
                        }
                        print(display::search_hits(&message, &query, offset, me.id, &me.names));
                        let shown = message["hits"].as_array().map_or(0, Vec::len) as u32;
                        me.next_hits = (message["more"] == true).then(|| (query, offset + shown));
                        me.earlier = None;
                    }
                    (Some(Pending::NewPassword(new)), _) => {
                        if message["errno"] == 0 {
                            if let Some(me) = session.as_mut() {
                                me.password = new;
                            }
                            print("password changed; your other sessions were ended".into());
                        } else {
                            print(format!("change password: error: {}", message["errmsg"].as_str().unwrap_or("failed")));
                        }
                    }
                    (Some(Pending::Command(what)), _) => {
                        if message["errno"] == 0 {
                            match message["groupid"].as_i64() {
                                Some(group) => print(format!("{what}: ok, group id {group}")),
                                None => print(format!("{what}: ok")),
                            }
                        } else {
                            print(format!("{what}: error: {}", message["errmsg"].as_str().unwrap_or("failed")));
                        }
                    }
                    (Some(Pending::History { conv, earlier }), _) => {
                        let Some(me) = session.as_mut() else { continue };
                        if message["errno"] != 0 {
                            print(format!("history: error: {}", reason(&message)));
                            continue;
                        }
                        if let Some(frames) = message["messages"].as_array() {
                            frames.iter().for_each(|f| me.names.learn(f));
                        }
                        print(display::history_page(&message, me.id, &me.names, earlier));
                        let range = display::cseq_range(&message);
                        me.next_hits = None;
                        me.earlier = match range {
                            Some((oldest, _)) if message["more"] == true => Some((conv, oldest)),
                            _ => None,
                        };
                        // The newest page was on screen: it has been read.
                        if let (Some((_, newest)), false) = (range, earlier) {
                            seq += 1;
                            send_quietly(&conn, &read_request(conv, newest, seq));
                            pending.insert(seq, Pending::Read { conv, quiet: true });
                        }
                    }
                    (Some(Pending::Conversations { at_login }), _) => {
                        let Some(me) = session.as_mut() else { continue };
                        if message["errno"] != 0 {
                            if at_login {
                                print(dim(format!("(no conversation list: {})", reason(&message))));
                            } else {
                                print(format!("conversations: error: {}", reason(&message)));
                            }
                            continue;
                        }
                        if let Some(entries) = message["conversations"].as_array() {
                            entries.iter().for_each(|e| me.names.learn(&e["last"]));
                        }
                        if at_login {
                            print(dim(display::unread_summary(&message, me.id, &me.names)));
                        } else {
                            print(display::conversation_list(&message, me.id, &me.names));
                        }
                    }
                    (Some(Pending::ReadNewest(conv)), _) => {
                        let Some(me) = &session else { continue };
                        let who = me.names.conv(&conv, me.id);
                        if message["errno"] != 0 {
                            print(format!("read {who}: error: {}", reason(&message)));
                        } else if let Some((_, newest)) = display::cseq_range(&message) {
                            seq += 1;
                            send_quietly(&conn, &read_request(conv, newest, seq));
                            pending.insert(seq, Pending::Read { conv, quiet: false });
                        } else {
                            print(format!("read {who}: no messages"));
                        }
                    }
                    (Some(Pending::Read { conv, quiet }), _) => {
                        let Some(me) = &session else { continue };
                        let who = me.names.conv(&conv, me.id);
                        if message["errno"] != 0 {
                            print(format!("mark {who} read: error: {}", reason(&message)));
                        } else if !quiet {
                            print(format!(
                                "read {who}: ok, up to #{}, {} unread",
                                message["read"],
                                message["unread"].as_u64().unwrap_or(0)
                            ));
                        }
                    }
                    (None, Some(6 | 10)) => {
                        if !conn.deliveries.first_time(&message) {
                            continue;
                        }
                        let Some(me) = session.as_mut() else {
                            print(format_chat(&message));
                            continue;
                        };
                        me.names.learn(&message);
                        if message["id"].as_i64() == Some(me.id) {
                            print(display::own_chat_from_other_device(&message, &me.names));
                            continue;
                        }
                        print(format_chat(&message));
                        // On screen in the conversation the user is in: read.
                        let conv = Conv::of_chat(&message);
                        if let (Some(conv), Some(cseq)) = (conv, message["cseq"].as_u64())
                            && me.current == Some(conv)
                        {
                            seq += 1;
                            send_quietly(&conn, &read_request(conv, cseq, seq));
                            pending.insert(seq, Pending::Read { conv, quiet: true });
                        }
                    }
                    (None, Some(18)) => {
                        if let Some(me) = &session
                            && let Some(line) = display::receipt(&message, me.id, &me.names)
                        {
                            print(dim(line));
                        }
                    }
                    (None, Some(19)) => {
                        let Some(me) = session.as_mut() else { continue };
                        let typer = message["id"].as_i64();
                        if typer == Some(me.id) {
                            continue;
                        }
                        me.names.learn(&message);
                        let key = (message["conv"].as_str().unwrap_or_default().to_owned(), typer);
                        if shown_typing.allow(key, Instant::now()) {
                            print(dim(display::typing(&message, &me.names)));
                        }
                    }
                    // Ended from elsewhere (logged out everywhere, a new
                    // password): the server closes the connection next.
                    (None, Some(23)) => {
                        print(format!("{}\n{MENU}", message["reason"].as_str().unwrap_or("you were logged out")));
                        session = None;
                        state = State::Menu;
                    }
                    (None, Some(22)) => {
                        if let Some(me) = session.as_ref()
                            && let Some(line) = display::presence(&message, &me.names)
                        {
                            print(dim(line));
                        }
                    }
                    (None, Some(11)) => print(format!("error: {}", message["errmsg"].as_str().unwrap_or("?"))),
                    (None, Some(15)) => {
                        if let Some(me) = session.as_mut() {
                            print(format!("more of your roster:{}", roster(&message, &mut me.names)));
                        }
                    }
                    (None, _) => {}
                }
            }
        }
    }
}

async fn connect(
    endpoint: &Endpoint,
    shown: Arc<Deliveries>,
    print: &mut Printer,
) -> anyhow::Result<Connection> {
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=30 {
        match Connection::resume(endpoint, shown.clone()).await {
            Ok(conn) => {
                print(format!("connected to {endpoint}"));
                return Ok(conn);
            }
            // A certificate that does not verify will not verify next time.
            Err(e) if e.is::<crate::tls::Refused>() => return Err(e),
            Err(e) => {
                if attempt == 1 {
                    print(format!("cannot reach {endpoint} ({e}); retrying ..."));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
            }
        }
    }
    anyhow::bail!("cannot reach {endpoint}")
}

/// `chat:2:hi` and friends → the request and what its reply answers.
fn command(line: &str, me: &Session) -> anyhow::Result<Option<(Value, Pending)>> {
    let (verb, rest) = line.split_once(':').unwrap_or((line, ""));
    let number = |s: &str, what: &str| {
        s.trim()
            .parse::<i64>()
            .map_err(|_| anyhow::anyhow!("{what} must be a number"))
    };
    let described = |request: Value, what: String| Some((request, Pending::Command(what)));
    let request = match verb {
        "chat" => {
            let (to, msg) = rest
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("usage: chat:friendid:message"))?;
            let to = number(to, "friendid")?;
            described(
                json!({"msgid": 6, "id": me.id, "toid": to, "msg": msg}),
                format!("message to {}", me.names.user(to)),
            )
        }
        "addfriend" => {
            let friend = number(rest, "friendid")?;
            described(
                json!({"msgid": 7, "id": me.id, "friendid": friend}),
                format!("add friend {friend}"),
            )
        }
        "creategroup" => {
            let (name, desc) = rest.split_once(':').unwrap_or((rest, ""));
            described(
                json!({"msgid": 8, "id": me.id, "groupname": name, "groupdesc": desc}),
                format!("create group {name:?}"),
            )
        }
        "password" => {
            let (current, new) = rest
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("usage: password:current:new"))?;
            Some((
                json!({"msgid": 24, "password": current, "new_password": new}),
                Pending::NewPassword(new.to_owned()),
            ))
        }
        "logouteverywhere" => described(json!({"msgid": 23}), "log out everywhere".into()),
        "block" | "unblock" => {
            let other = number(rest, "userid")?;
            described(
                json!({"msgid": if verb == "block" { 29 } else { 30 }, "userid": other}),
                format!("{verb} {}", me.names.user(other)),
            )
        }
        "removefriend" => {
            let friend = number(rest, "friendid")?;
            described(
                json!({"msgid": 25, "friendid": friend}),
                format!("remove friend {}", me.names.user(friend)),
            )
        }
        "leavegroup" => {
            let group = number(rest, "groupid")?;
            described(
                json!({"msgid": 26, "groupid": group}),
                format!("leave group {group}"),
            )
        }
        "members" => {
            let group = number(rest, "groupid")?;
            Some((json!({"msgid": 27, "groupid": group}), Pending::Members))
        }
        "renamegroup" => {
            let (group, name) = rest
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("usage: renamegroup:groupid:name[:desc]"))?;
            let group = number(group, "groupid")?;
            let mut request = json!({"msgid": 28, "groupid": group});
            match name.split_once(':') {
                Some((name, desc)) => {
                    request["groupname"] = name.into();
                    request["groupdesc"] = desc.into();
                }
                None => request["groupname"] = name.into(),
            }
            described(request, format!("rename group {group}"))
        }
        "addgroup" => {
            let group = number(rest, "groupid")?;
            described(
                json!({"msgid": 9, "id": me.id, "groupid": group}),
                format!("join group {group}"),
            )
        }
        "groupchat" => {
            let (group, msg) = rest
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("usage: groupchat:groupid:message"))?;
            let group = number(group, "groupid")?;
            described(
                json!({"msgid": 10, "id": me.id, "groupid": group, "msg": msg}),
                format!("message to group {group}"),
            )
        }
        "history" => {
            let (conv, limit) = if rest.is_empty() && !line.contains(':') {
                let conv = me.current.ok_or_else(|| {
                    anyhow::anyhow!("usage: history:friendid[:count] or history:g:groupid[:count]")
                })?;
                (conv, None)
            } else {
                conversation_arg(rest, me.id).map_err(|_| {
                    anyhow::anyhow!("usage: history:friendid[:count] or history:g:groupid[:count]")
                })?
            };
            Some((
                history_request(conv, me.id, limit.unwrap_or(HISTORY_PAGE), None),
                Pending::History {
                    conv,
                    earlier: false,
                },
            ))
        }
        "search" => {
            if rest.trim().is_empty() {
                anyhow::bail!("usage: search:words");
            }
            Some((
                search_request(rest, 0),
                Pending::Search {
                    query: rest.to_owned(),
                    offset: 0,
                },
            ))
        }
        "more" if rest.is_empty() && me.next_hits.is_some() => {
            let (query, offset) = me.next_hits.clone().expect("checked");
            Some((
                search_request(&query, offset),
                Pending::Search { query, offset },
            ))
        }
        "more" if rest.is_empty() => {
            let (conv, oldest) = me
                .earlier
                .ok_or_else(|| anyhow::anyhow!("no earlier messages to show (history:id first)"))?;
            Some((
                history_request(conv, me.id, HISTORY_PAGE, Some(oldest)),
                Pending::History {
                    conv,
                    earlier: true,
                },
            ))
        }
        "conversations" | "list" if rest.is_empty() => Some((
            json!({"msgid": 17, "limit": 50}),
            Pending::Conversations { at_login: false },
        )),
        "read" => {
            let conv = match conversation_arg(rest, me.id) {
                Ok((conv, None)) => conv,
                _ => anyhow::bail!("usage: read:friendid or read:g:groupid"),
            };
            // The newest message first: read marks name a message.
            Some((
                history_request(conv, me.id, 1, None),
                Pending::ReadNewest(conv),
            ))
        }
        "loginout" => described(json!({"msgid": 3, "id": me.id}), "log out".into()),
        _ => None,
    };
    Ok(request)
}

/// `2`, `2:50`, `g:5`, `g:5:50` → the conversation and the count, if given.
fn conversation_arg(arg: &str, me: i64) -> anyhow::Result<(Conv, Option<u32>)> {
    let (conv, count) = match arg.split(':').collect::<Vec<_>>()[..] {
        ["g", group] => (Conv::Group(group.trim().parse()?), None),
        ["g", group, count] => (Conv::Group(group.trim().parse()?), Some(count)),
        [peer] => (Conv::direct(me, peer.trim().parse()?), None),
        [peer, count] => (Conv::direct(me, peer.trim().parse()?), Some(count)),
        _ => anyhow::bail!("not a conversation: {arg:?}"),
    };
    let count = count
        .map(|c| c.trim().parse::<u32>())
        .transpose()?
        .filter(|c| *c > 0);
    Ok((conv, count))
}

/// Search hits per page.
const SEARCH_PAGE: u32 = 10;

/// A search request (msgid 31): a page of hits from `offset`.
fn search_request(query: &str, offset: u32) -> Value {
    json!({"msgid": 31, "q": query, "limit": SEARCH_PAGE, "offset": offset})
}

/// A history request (msgid 16): the newest `limit` messages, or the
/// `limit` just before `before`.
fn history_request(conv: Conv, me: i64, limit: u32, before: Option<u64>) -> Value {
    let mut request = conv.target_fields(me);
    request["msgid"] = 16.into();
    request["limit"] = limit.into();
    if let Some(before) = before {
        request["before"] = before.into();
    }
    request
}

/// A read mark (msgid 18) up to `cseq`, with `seq`.
fn read_request(conv: Conv, upto: u64, seq: i64) -> Value {
    json!({"msgid": 18, "conv": conv.to_string(), "upto": upto, "seq": seq})
}

/// The conversation a request writes to or looks at, if any.
fn conversation_of_request(request: &Value, me: i64) -> Option<Conv> {
    match request["msgid"].as_i64()? {
        6 | 10 | 16 => {
            if let Some(group) = request["groupid"].as_i64() {
                Some(Conv::Group(group))
            } else {
                Some(Conv::direct(me, request["toid"].as_i64()?))
            }
        }
        _ => None,
    }
}

/// Sends what the client adds on its own (read marks, typing, the list
/// after a login). A connection that is gone is noticed where it is read,
/// which reconnects, so failing here must not end the client.
fn send_quietly(conn: &Connection, request: &Value) {
    let _ = conn.send(request);
}

/// The server's reason in an error reply.
fn reason(reply: &Value) -> String {
    let errmsg = reply["errmsg"].as_str().unwrap_or("refused");
    format!("{errmsg} (errno {})", reply["errno"])
}

fn format_chat(message: &Value) -> String {
    let text = |key: &str| {
        message[key]
            .as_str()
            .map_or_else(|| message[key].to_string(), str::to_owned)
    };
    let line = format!(
        "{} [{}]{} said: {}",
        text("time"),
        message["id"],
        text("name"),
        text("msg")
    );
    if message["msgid"] == 10 {
        format!("group[{}] {line}", message["groupid"])
    } else {
        line
    }
}

fn show_login(
    ack: &Value,
    id: i64,
    password: String,
    shown: &Deliveries,
    print: &mut Printer,
) -> Session {
    let name = ack["name"].as_str().unwrap_or_default().to_owned();
    let mut names = Names::default();
    let mut out = format!("logged in as {name} ({id})");
    out.push_str(&roster(ack, &mut names));
    if ack["roster_more"] == true {
        out.push_str("\n(more friends and groups follow)");
    }
    let offline: Vec<Value> = crate::offline_messages(ack)
        .into_iter()
        .filter(|m| shown.first_time(m))
        .collect();
    if !offline.is_empty() {
        out.push_str(&format!("\noffline messages ({}):", offline.len()));
        for m in &offline {
            out.push_str(&format!("\n  {}", format_chat(m)));
        }
    }
    out.push_str("\ntype help for commands");
    print(out);
    Session {
        id,
        password,
        names,
        current: None,
        earlier: None,
        next_hits: None,
    }
}

/// The friends and groups of a login ack or a roster page (msgid 15), for
/// the screen; friends' and groups' names go into `names`.
fn roster(message: &Value, names: &mut Names) -> String {
    let mut out = String::new();
    let friends = crate::json_strings(&message["friends"]);
    out.push_str(&format!("\nfriends ({}):", friends.len()));
    for f in &friends {
        let fid = f["id"].as_i64().unwrap_or_default();
        let fname = f["name"].as_str().unwrap_or_default();
        names.users.insert(fid, fname.to_owned());
        out.push_str(&format!(
            "\n  {fid} {fname} ({})",
            f["state"].as_str().unwrap_or("?")
        ));
    }
    let groups = crate::json_strings(&message["groups"]);
    out.push_str(&format!("\ngroups ({}):", groups.len()));
    for g in &groups {
        if let (Some(gid), Some(gname)) = (g["id"].as_i64(), g["groupname"].as_str()) {
            names.groups.insert(gid, gname.to_owned());
        }
        out.push_str(&format!(
            "\n  {} {} — {}",
            g["id"],
            g["groupname"].as_str().unwrap_or_default(),
            g["groupdesc"].as_str().unwrap_or_default()
        ));
        let members: Vec<String> = crate::json_strings(&g["users"])
            .iter()
            .map(|u| {
                format!(
                    "{} {} [{}, {}]",
                    u["id"],
                    u["name"].as_str().unwrap_or_default(),
                    u["role"].as_str().unwrap_or_default(),
                    u["state"].as_str().unwrap_or_default()
                )
            })
            .collect();
        for m in members {
            out.push_str(&format!("\n      {m}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Session {
        Session {
            id: 1,
            password: "pa".into(),
            names: Names::default(),
            current: None,
            earlier: None,
            next_hits: None,
        }
    }

    fn parsed(line: &str, me: &Session) -> (Value, Pending) {
        command(line, me)
            .expect("parses")
            .unwrap_or_else(|| panic!("{line:?} is a command"))
    }

    #[test]
    fn conversation_arguments() {
        assert_eq!(
            conversation_arg("2", 1).expect("ok"),
            (Conv::direct(1, 2), None)
        );
        assert_eq!(
            conversation_arg("2:50", 1).expect("ok"),
            (Conv::direct(1, 2), Some(50))
        );
        assert_eq!(
            conversation_arg("g:5", 1).expect("ok"),
            (Conv::Group(5), None)
        );
        assert_eq!(
            conversation_arg("g:5:10", 1).expect("ok"),
            (Conv::Group(5), Some(10))
        );
        assert_eq!(
            conversation_arg("2:0", 1).expect("ok"),
            (Conv::direct(1, 2), None),
            "0 means the default"
        );
        for bad in ["", "x", "2:x", "g:", "g:x", "2:3:4", "g:5:6:7", "2:-1"] {
            assert!(conversation_arg(bad, 1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn search_and_more_hits() {
        let mut me = alice();
        let (request, reply_to) = parsed("search:北京 meet", &me);
        assert_eq!(
            request,
            json!({"msgid": 31, "q": "北京 meet", "limit": 10, "offset": 0})
        );
        assert!(matches!(reply_to, Pending::Search { offset: 0, .. }));
        assert!(command("search:", &me).is_err());
        me.next_hits = Some(("北京".into(), 10));
        let (request, _) = parsed("more", &me);
        assert_eq!(request["offset"], 10);
        assert_eq!(request["q"], "北京");
    }

    #[test]
    fn history_and_more() {
        let mut me = alice();
        let (request, reply_to) = parsed("history:2", &me);
        assert_eq!(
            request,
            json!({"msgid": 16, "toid": 2, "limit": HISTORY_PAGE})
        );
        assert!(matches!(reply_to, Pending::History { earlier: false, .. }));
        let (request, _) = parsed("history:g:5:50", &me);
        assert_eq!(request, json!({"msgid": 16, "groupid": 5, "limit": 50}));
        assert!(command("history:", &me).is_err());
        assert!(command("history", &me).is_err(), "no current conversation");
        assert!(command("more", &me).is_err(), "no history yet");

        me.current = Some(Conv::Group(5));
        let (request, _) = parsed("history", &me);
        assert_eq!(request["groupid"], 5, "the current conversation");

        me.earlier = Some((Conv::direct(1, 2), 40));
        let (request, reply_to) = parsed("more", &me);
        assert_eq!(
            request,
            json!({"msgid": 16, "toid": 2, "limit": HISTORY_PAGE, "before": 40})
        );
        assert!(matches!(reply_to, Pending::History { earlier: true, .. }));
    }

    #[test]
    fn conversations_and_read() {
        let me = alice();
        for line in ["conversations", "list"] {
            let (request, reply_to) = parsed(line, &me);
            assert_eq!(request["msgid"], 17);
            assert!(matches!(
                reply_to,
                Pending::Conversations { at_login: false }
            ));
        }
        let (request, reply_to) = parsed("read:2", &me);
        assert_eq!(request, json!({"msgid": 16, "toid": 2, "limit": 1}));
        assert!(matches!(reply_to, Pending::ReadNewest(c) if c == Conv::direct(1, 2)));
        assert!(command("read:2:5", &me).is_err());
        assert_eq!(
            read_request(Conv::direct(2, 1), 7, 3),
            json!({"msgid": 18, "conv": "d:1:2", "upto": 7, "seq": 3})
        );
    }

    #[test]
    fn the_conversation_a_request_is_in() {
        let chat = json!({"msgid": 6, "id": 1, "toid": 2, "msg": "hi"});
        assert_eq!(conversation_of_request(&chat, 1), Some(Conv::direct(1, 2)));
        let group = json!({"msgid": 10, "id": 1, "groupid": 5, "msg": "hi"});
        assert_eq!(conversation_of_request(&group, 1), Some(Conv::Group(5)));
        let history = json!({"msgid": 16, "toid": 3, "limit": 20});
        assert_eq!(
            conversation_of_request(&history, 1),
            Some(Conv::direct(1, 3))
        );
        let friend = json!({"msgid": 7, "id": 1, "friendid": 2});
        assert_eq!(conversation_of_request(&friend, 1), None);
    }

    #[test]
    fn classic_commands_still_parse() {
        let me = alice();
        let (request, _) = parsed("chat:2:hi: there", &me);
        assert_eq!(
            request,
            json!({"msgid": 6, "id": 1, "toid": 2, "msg": "hi: there"})
        );
        assert!(command("help", &me).expect("ok").is_none());
        assert!(command("chat:x:hi", &me).is_err());
    }

    #[test]
    fn server_reasons() {
        let refused = json!({"errno": 5, "errmsg": "user 9 does not exist", "msgid": 11});
        assert_eq!(reason(&refused), "user 9 does not exist (errno 5)");
    }
}
