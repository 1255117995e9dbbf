//! The interactive client: the classic menu and commands, plus what the
//! classic client lacked: every command reports success or the server's
//! reason (it sends `seq`), friends show their online state, the connection
//! is re-established (and the session logged in again) when a node goes away.
//!
//! Input is read on its own thread with rustyline (line editing, history);
//! messages print through rustyline's external printer, above the line being
//! typed, so they never garble it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use rustyline::{DefaultEditor, ExternalPrinter as _};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::conn::{Connection, Deliveries, Endpoint};

const HELP: &str = "commands:
  help                          this list
  chat:friendid:message         send a message to a user
  addfriend:friendid            make friends
  creategroup:groupname:desc    create a group (prints its id)
  addgroup:groupid              join a group
  groupchat:groupid:message     send a message to a group
  loginout                      log out (back to the menu)
  quit                          leave";

const MENU: &str = "1. login   2. register   3. quit";

type Printer = Box<dyn FnMut(String) + Send>;

fn printer(editor: &mut DefaultEditor) -> Printer {
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
}

struct Session {
    id: i64,
    password: String,
    names: HashMap<i64, String>,
}

pub async fn run(endpoint: Endpoint) -> anyhow::Result<()> {
    let mut editor = DefaultEditor::new()?;
    let mut print = printer(&mut editor);
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
                        let Some(me) = session.as_ref() else { state = State::Menu; continue };
                        match command(&line, me) {
                            Ok(Some((request, description))) => {
                                let s = next_seq();
                                let mut request = request;
                                request["seq"] = s.into();
                                if matches!(request["msgid"].as_i64(), Some(6 | 10)) {
                                    request["cmid"] = format!("{:032x}", rand::random::<u128>()).into();
                                }
                                conn.send(&request)?;
                                if request["msgid"] == 3 {
                                    session = None;
                                    state = State::Menu;
                                    print(format!("logged out\n{MENU}"));
                                } else {
                                    pending.insert(s, Pending::Command(description));
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
                    (None, Some(6 | 10)) => {
                        if conn.deliveries.first_time(&message) {
                            print(format_chat(&message));
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

/// `chat:2:hi` and friends → the request and how to describe it.
fn command(line: &str, me: &Session) -> anyhow::Result<Option<(Value, String)>> {
    let (verb, rest) = line.split_once(':').unwrap_or((line, ""));
    let number = |s: &str, what: &str| {
        s.trim()
            .parse::<i64>()
            .map_err(|_| anyhow::anyhow!("{what} must be a number"))
    };
    let name_of = |id: i64| {
        me.names
            .get(&id)
            .map_or_else(|| format!("user {id}"), |n| format!("{n} ({id})"))
    };
    let request = match verb {
        "chat" => {
            let (to, msg) = rest
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("usage: chat:friendid:message"))?;
            let to = number(to, "friendid")?;
            (
                json!({"msgid": 6, "id": me.id, "toid": to, "msg": msg}),
                format!("message to {}", name_of(to)),
            )
        }
        "addfriend" => {
            let friend = number(rest, "friendid")?;
            (
                json!({"msgid": 7, "id": me.id, "friendid": friend}),
                format!("add friend {friend}"),
            )
        }
        "creategroup" => {
            let (name, desc) = rest.split_once(':').unwrap_or((rest, ""));
            (
                json!({"msgid": 8, "id": me.id, "groupname": name, "groupdesc": desc}),
                format!("create group {name:?}"),
            )
        }
        "addgroup" => {
            let group = number(rest, "groupid")?;
            (
                json!({"msgid": 9, "id": me.id, "groupid": group}),
                format!("join group {group}"),
            )
        }
        "groupchat" => {
            let (group, msg) = rest
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("usage: groupchat:groupid:message"))?;
            let group = number(group, "groupid")?;
            (
                json!({"msgid": 10, "id": me.id, "groupid": group, "msg": msg}),
                format!("message to group {group}"),
            )
        }
        "loginout" => (json!({"msgid": 3, "id": me.id}), "log out".into()),
        _ => return Ok(None),
    };
    Ok(Some(request))
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
    let mut names = HashMap::new();
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
    }
}

/// The friends and groups of a login ack or a roster page (msgid 15), for
/// the screen; friends' names go into `names`.
fn roster(message: &Value, names: &mut HashMap<i64, String>) -> String {
    let mut out = String::new();
    let friends = crate::json_strings(&message["friends"]);
    out.push_str(&format!("\nfriends ({}):", friends.len()));
    for f in &friends {
        let fid = f["id"].as_i64().unwrap_or_default();
        let fname = f["name"].as_str().unwrap_or_default();
        names.insert(fid, fname.to_owned());
        out.push_str(&format!(
            "\n  {fid} {fname} ({})",
            f["state"].as_str().unwrap_or("?")
        ));
    }
    let groups = crate::json_strings(&message["groups"]);
    out.push_str(&format!("\ngroups ({}):", groups.len()));
    for g in &groups {
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
