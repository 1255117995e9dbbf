//! `chat`: the clusterchat terminal client.
//!
//! Interactive by default (the classic client's menu and commands, with line
//! editing and history; incoming messages print above the line being typed).
//! The subcommands are for scripts: each prints JSON lines and exits with a
//! non-zero status when the server refuses (the refusal, with `errno` and
//! `errmsg`, is the line printed). Chats are sent without `time`: the server
//! stamps them.

mod conn;
mod conv;
mod display;
mod interactive;
mod tls;
mod typing;

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use conn::{Connection, Endpoint};
use conv::Conv;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "chat", about = "clusterchat terminal client", version)]
struct Cli {
    /// Classic TCP address of a gateway or of nginx in front of them
    /// [default: 127.0.0.1:8000, with --tls 127.0.0.1:8443].
    #[arg(long, global = true)]
    addr: Option<String>,
    /// Classic TCP over TLS (nginx terminates it).
    #[arg(long, global = true)]
    tls: bool,
    /// Use WebSocket instead, e.g. ws://127.0.0.1:8080/ws or wss://127.0.0.1:8444/ws.
    #[arg(long, global = true)]
    ws: Option<String>,
    /// Trust only this CA (PEM) for TLS, instead of the system roots and the
    /// dev stack's .stack/dev/tls/ca.pem.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Create an account; prints {"id":N}.
    Register {
        #[arg(long)]
        name: String,
        #[arg(long)]
        password: String,
    },
    /// Log in, send one message to a user (--to) or group (--group), print the reply.
    Send {
        #[arg(long)]
        id: i64,
        #[arg(long)]
        password: String,
        #[arg(long, conflicts_with = "group", required_unless_present = "group")]
        to: Option<i64>,
        #[arg(long)]
        group: Option<i64>,
        #[arg(long)]
        msg: String,
    },
    /// Log in and print every message received as a JSON line (offline ones first).
    Listen {
        #[arg(long)]
        id: i64,
        #[arg(long)]
        password: String,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<usize>,
        /// Exit after this many seconds without a message.
        #[arg(long)]
        idle_timeout: Option<u64>,
    },
    /// Log in and print a conversation's messages, one JSON line each (the
    /// chat frames, oldest first, with `conv`, `cseq` and `mid`), then
    /// {"conv":..,"more":bool} (`more`: earlier messages exist, or with
    /// --after later ones).
    History {
        #[arg(long)]
        id: i64,
        #[arg(long)]
        password: String,
        /// The other user of a 1:1 conversation.
        #[arg(long, conflicts_with = "group", required_unless_present = "group")]
        to: Option<i64>,
        #[arg(long)]
        group: Option<i64>,
        /// How many messages (the server's default is 50, its most 200).
        #[arg(long)]
        limit: Option<u32>,
        /// The messages just before this conversation sequence number
        /// (page back with the first `cseq` printed).
        #[arg(long, conflicts_with = "after")]
        before: Option<u64>,
        /// The messages just after this conversation sequence number.
        #[arg(long)]
        after: Option<u64>,
    },
    /// Log in and print your conversations, newest first, one JSON line each:
    /// {"conv","peer" or "groupid","last","read","unread","peer_read"}.
    Conversations {
        #[arg(long)]
        id: i64,
        #[arg(long)]
        password: String,
        /// How many (the server's default is 50, its most 200).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Log in and mark a conversation read up to a sequence number; prints
    /// the reply ({"read":CSEQ,"unread":N,...}).
    Read {
        #[arg(long)]
        id: i64,
        #[arg(long)]
        password: String,
        #[arg(long, conflicts_with = "group", required_unless_present = "group")]
        to: Option<i64>,
        #[arg(long)]
        group: Option<i64>,
        /// The conversation sequence number (`cseq`) read up to.
        #[arg(long)]
        upto: u64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let result = match endpoint(&cli) {
        Ok(endpoint) => match cli.command {
            None => interactive::run(endpoint).await,
            Some(command) => scripted(endpoint, command).await,
        },
        Err(e) => Err(e),
    };
    // The message and its causes on one line, whatever RUST_BACKTRACE says.
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn endpoint(cli: &Cli) -> anyhow::Result<Endpoint> {
    let tls_config = || tls::client_config(cli.ca.as_deref());
    Ok(match &cli.ws {
        Some(url) => {
            let secure = url.starts_with("wss://");
            anyhow::ensure!(
                !cli.tls,
                "--tls is for classic TCP; for WebSocket over TLS give a wss:// URL"
            );
            anyhow::ensure!(
                secure || cli.ca.is_none(),
                "--ca is for TLS: give a wss:// URL"
            );
            Endpoint::Ws {
                url: url.clone(),
                tls: secure.then(tls_config).transpose()?,
            }
        }
        None => {
            anyhow::ensure!(cli.tls || cli.ca.is_none(), "--ca is for TLS: add --tls");
            let default = if cli.tls {
                "127.0.0.1:8443"
            } else {
                "127.0.0.1:8000"
            };
            Endpoint::Tcp {
                addr: cli.addr.clone().unwrap_or_else(|| default.to_owned()),
                tls: cli.tls.then(tls_config).transpose()?,
            }
        }
    })
}

fn print_json(value: &Value) {
    println!("{value}");
}

/// A refused request ends the command: its reply (with the server's `errno`
/// and `errmsg`) is printed and the exit status is 1.
fn exit_if_refused(reply: &Value) {
    if reply["errno"] != 0 {
        print_json(reply);
        std::process::exit(1);
    }
}

/// The conversation of `--to` or `--group`, for user `id`.
fn conversation(id: i64, to: Option<i64>, group: Option<i64>) -> anyhow::Result<Conv> {
    match (to, group) {
        (_, Some(group)) => Ok(Conv::Group(group)),
        (Some(to), None) => Ok(Conv::direct(id, to)),
        (None, None) => anyhow::bail!("give --to or --group"),
    }
}

/// Parses a classic list of JSON texts in strings (`friends`, `groups`,
/// `users`, `offlinemsg`).
pub fn json_strings(list: &Value) -> Vec<Value> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|s| serde_json::from_str(s.as_str()?).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The messages that waited for the user, from a login ack.
pub fn offline_messages(ack: &Value) -> Vec<Value> {
    json_strings(&ack["offlinemsg"])
}

async fn login(
    conn: &mut Connection,
    id: i64,
    password: &str,
    mut other: impl FnMut(Value),
) -> anyhow::Result<Value> {
    // A session of the same user that just ended (the previous command of a
    // script) may take a moment to be released: wait for it, briefly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let ack = loop {
        let request = conn.deliveries.login_request(id, password);
        let ack = conn.call(request, 1, &mut other).await?;
        if ack["errno"] != 2 || tokio::time::Instant::now() >= deadline {
            break ack;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if ack["errno"] != 0 {
        anyhow::bail!(
            "login failed: {}",
            ack["errmsg"].as_str().unwrap_or("refused")
        );
    }
    Ok(ack)
}

async fn scripted(endpoint: Endpoint, command: Command) -> anyhow::Result<()> {
    let mut conn = Connection::open(&endpoint).await?;
    match command {
        Command::Register { name, password } => {
            let ack = conn
                .call(
                    json!({"msgid": 4, "name": name, "password": password}),
                    1,
                    |_| {},
                )
                .await?;
            if ack["errno"] != 0 {
                anyhow::bail!(
                    "register failed: {}",
                    ack["errmsg"].as_str().unwrap_or("refused")
                );
            }
            print_json(&json!({"id": ack["id"]}));
        }
        Command::Send {
            id,
            password,
            to,
            group,
            msg,
        } => {
            login(&mut conn, id, &password, |_| {}).await?;
            // One client message id for this message and every retry of it.
            let cmid = format!("{:032x}", rand::random::<u128>());
            let request = match (to, group) {
                (_, Some(group)) => {
                    json!({"msgid": 10, "id": id, "groupid": group, "msg": msg, "cmid": cmid})
                }
                (Some(to), None) => {
                    json!({"msgid": 6, "id": id, "toid": to, "msg": msg, "cmid": cmid})
                }
                (None, None) => anyhow::bail!("give --to or --group"),
            };
            let reply = conn.call(request, 2, |_| {}).await?;
            print_json(&reply);
            if reply["errno"] != 0 {
                std::process::exit(1);
            }
        }
        Command::Listen {
            id,
            password,
            count,
            idle_timeout,
        } => {
            let mut seen = 0usize;
            let done = |seen: usize| count.is_some_and(|c| seen >= c);
            let ack = login(&mut conn, id, &password, |_| {}).await?;
            // For scripts: from here on, messages to this user arrive.
            eprintln!("listening as user {id}");
            for message in offline_messages(&ack) {
                if conn.deliveries.first_time(&message) {
                    print_json(&message);
                    seen += 1;
                }
            }
            while !done(seen) {
                let next = conn.incoming.recv();
                let message = match idle_timeout {
                    Some(secs) => match tokio::time::timeout(Duration::from_secs(secs), next).await
                    {
                        Ok(m) => m,
                        Err(_) => break,
                    },
                    None => next.await,
                };
                let Some(message) = message else {
                    anyhow::bail!("the server closed the connection");
                };
                let is_chat = matches!(message["msgid"].as_i64(), Some(6 | 10));
                if is_chat && !conn.deliveries.first_time(&message) {
                    continue;
                }
                if message["msgid"] == 14 {
                    continue;
                }
                print_json(&message);
                seen += 1;
            }
            conn.acknowledge_all(2).await?;
        }
        // These read what the server keeps and show nothing live, so they
        // acknowledge nothing: the user's undelivered messages stay for the
        // devices that show them.
        Command::History {
            id,
            password,
            to,
            group,
            limit,
            before,
            after,
        } => {
            let conv = conversation(id, to, group)?;
            login(&mut conn, id, &password, |_| {}).await?;
            let mut request = conv.target_fields(id);
            request["msgid"] = 16.into();
            if let Some(limit) = limit {
                request["limit"] = limit.into();
            }
            if let Some(before) = before {
                request["before"] = before.into();
            }
            if let Some(after) = after {
                request["after"] = after.into();
            }
            let reply = conn.call(request, 2, |_| {}).await?;
            exit_if_refused(&reply);
            for message in reply["messages"].as_array().into_iter().flatten() {
                print_json(message);
            }
            print_json(&json!({"conv": reply["conv"], "more": reply["more"] == true}));
        }
        Command::Conversations {
            id,
            password,
            limit,
        } => {
            login(&mut conn, id, &password, |_| {}).await?;
            let mut request = json!({"msgid": 17});
            if let Some(limit) = limit {
                request["limit"] = limit.into();
            }
            let reply = conn.call(request, 2, |_| {}).await?;
            exit_if_refused(&reply);
            for entry in reply["conversations"].as_array().into_iter().flatten() {
                print_json(entry);
            }
        }
        Command::Read {
            id,
            password,
            to,
            group,
            upto,
        } => {
            let conv = conversation(id, to, group)?;
            login(&mut conn, id, &password, |_| {}).await?;
            let request = json!({"msgid": 18, "conv": conv.to_string(), "upto": upto});
            let reply = conn.call(request, 2, |_| {}).await?;
            exit_if_refused(&reply);
            print_json(&reply);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("chat").chain(args.split_whitespace()))
    }

    #[test]
    fn history_takes_a_user_or_a_group_and_one_direction() {
        let cli = parse("history --id 1 --password pw --to 2 --limit 50 --before 9").expect("ok");
        assert!(matches!(
            cli.command,
            Some(Command::History {
                to: Some(2),
                group: None,
                limit: Some(50),
                before: Some(9),
                after: None,
                ..
            })
        ));
        assert!(parse("history --id 1 --password pw --group 5").is_ok());
        assert!(
            parse("history --id 1 --password pw").is_err(),
            "whose history?"
        );
        assert!(parse("history --id 1 --password pw --to 2 --group 5").is_err());
        assert!(parse("history --id 1 --password pw --to 2 --before 3 --after 1").is_err());
    }

    #[test]
    fn read_needs_a_sequence_number() {
        assert!(parse("read --id 1 --password pw --to 2 --upto 7").is_ok());
        assert!(parse("read --id 1 --password pw --to 2").is_err());
        assert!(parse("conversations --id 1 --password pw").is_ok());
    }

    #[test]
    fn conversation_of_the_flags() {
        assert_eq!(
            conversation(2, Some(1), None).expect("ok").to_string(),
            "d:1:2"
        );
        assert_eq!(
            conversation(2, None, Some(5)).expect("ok").to_string(),
            "g:5"
        );
        assert!(conversation(2, None, None).is_err());
    }
}
