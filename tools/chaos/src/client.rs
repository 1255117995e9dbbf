//! The chaos clients, each a process of its own in a network namespace of
//! its own (`chaos client ...`, started by the run with `ip netns exec`).
//! Every client writes what happened to it to a JSONL file (one event a
//! line, with the wall-clock time in ms and its client id): the checker's
//! only input. The run steers a client through its stdin (`go`, `stop`,
//! `vanish`, `back`, `final`; end of input: exit) and learns where it is
//! from its stdout (`ready`, `stopped`, `final-done`).
//!
//! Senders log in as devices (several sessions may coexist, so a reconnect
//! is never held back by the old session) and send one-to-one chats
//! (msgid 6) with a `cmid`, one at a time: a chat is retried with the same
//! `cmid` until the server says it is accepted (errno 0), so acceptance
//! order is sending order and a retry after an unclear reply is recorded
//! once. Every third chat of a sender goes to a group of two, the sender
//! and its receiver (msgid 9; group chats are written once, to the group's
//! log, and reach the receiver by its cursor there: a second path, checked
//! the same way). Receivers are of four kinds (see [`Kind`]).

use std::{
    collections::HashMap,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::{
    io::AsyncBufReadExt as _,
    sync::mpsc,
    time::{Instant, sleep},
};

use crate::conn::Conn;

/// The gateways' ports inside their namespaces (the same on every host).
pub const GATEWAY_TCP_PORT: u16 = 6000;
pub const GATEWAY_HTTP_PORT: u16 = 6080;
pub const GATEWAY_ADMIN_PORT: u16 = 7080;

/// How long a request may go unanswered before the connection counts as
/// dead (a frozen or cut-off gateway). Above the Redis Cluster failover
/// wait (6 s) plus a service call.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients that acknowledge ping this often and give up on a connection
/// silent for [`ACKING_SILENCE`] (the gateway answers every ping).
const PING_EVERY: Duration = Duration::from_secs(3);
const ACKING_SILENCE: Duration = Duration::from_secs(8);
/// A receiver of kind (a) closes its socket after this much silence.
const CLASSIC_SILENCE: Duration = Duration::from_secs(4);
/// A receiver of kind (b) gives up on a silent connection only after this
/// (a classic client with no timer of its own, bounded so a run ends).
const VANISHING_SILENCE: Duration = Duration::from_secs(30);
/// After `stop`, how long a sender keeps retrying the chat it is on.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// At `final`, how long a receiver keeps trying to log in once more, and
/// the quiet that ends its collection.
const FINAL_LOGIN_PATIENCE: Duration = Duration::from_secs(45);
const FINAL_QUIET: Duration = Duration::from_secs(3);

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Sends chats.
    Sender,
    /// (a) classic TCP, no acks; closes its socket after 4 s of silence and
    /// logs in again.
    ClassicReconnect,
    /// (b) classic TCP, no acks; the run takes its link down (no FIN, no
    /// RST) and brings it back; it then logs in again, retrying errno 2.
    ClassicVanish,
    /// (c) TCP device: logs in with `acks`, acknowledges, pings, resumes
    /// with `since`.
    Device,
    /// (d) WebSocket on `/ws`, acknowledging and resuming like a device.
    Websocket,
}

impl Kind {
    pub fn acks(self) -> bool {
        matches!(self, Self::Sender | Self::Device | Self::Websocket)
    }

    fn silence_limit(self) -> Duration {
        match self {
            Self::ClassicReconnect => CLASSIC_SILENCE,
            Self::ClassicVanish => VANISHING_SILENCE,
            Self::Sender | Self::Device | Self::Websocket => ACKING_SILENCE,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// This client's id in the run (s1, r1 ...).
    #[arg(long)]
    pub name: String,
    #[arg(long, value_enum)]
    pub kind: Kind,
    #[arg(long)]
    pub user: i64,
    #[arg(long)]
    pub password: String,
    /// Senders: the receiver's user id.
    #[arg(long, default_value_t = 0)]
    pub to: i64,
    /// Senders: the group they share with their receiver (0: none).
    #[arg(long, default_value_t = 0)]
    pub group: i64,
    /// Senders: chats per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// The gateways' addresses, its own first (the others when it is gone).
    #[arg(long, value_delimiter = ',', required = true)]
    pub gateways: Vec<IpAddr>,
    /// The JSONL event log.
    #[arg(long)]
    pub log: PathBuf,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The event log of one client.
struct Events {
    file: std::fs::File,
    client: String,
}

impl Events {
    fn open(path: &std::path::Path, client: &str) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        Ok(Self {
            file,
            client: client.to_owned(),
        })
    }

    fn log(&mut self, ev: &str, mut fields: Value) {
        if !fields.is_object() {
            fields = json!({});
        }
        fields["t"] = now_ms().into();
        fields["c"] = self.client.clone().into();
        fields["ev"] = ev.into();
        // One write per line (O_APPEND): the run reads these files while
        // the clients write them.
        let _ = self.file.write_all(format!("{fields}\n").as_bytes());
    }
}

/// Tells the run where this client is.
fn status(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Commands from the run, one per stdin line; `exit` at the end of input.
fn commands() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line.trim().to_owned()).is_err() {
                return;
            }
        }
        let _ = tx.send("exit".into());
    });
    rx
}

/// The cmid a chaos chat carries in its text ("chaos s3-17").
pub fn cmid_of(frame: &Value) -> Option<&str> {
    frame["msg"].as_str()?.strip_prefix("chaos ")
}

/// A chat frame as the receiver's event fields.
fn chat_fields(frame: &Value, via: &str) -> Option<Value> {
    if !matches!(frame["msgid"].as_i64(), Some(6 | 10)) {
        return None;
    }
    let cmid = cmid_of(frame)?;
    Some(json!({
        "from": frame["id"],
        "cmid": cmid,
        "rseq": frame.get("rseq"),
        "mid": frame.get("mid"),
        "conv": frame.get("conv"),
        "cseq": frame.get("cseq"),
        "via": via,
    }))
}

/// What a client holds across its connections.
struct Client {
    args: ClientArgs,
    events: Events,
    cmds: mpsc::UnboundedReceiver<String>,
    /// Requests' `seq` (senders).
    seq: i64,
    /// Clients that acknowledge: the highest `rseq` seen (what `since`
    /// resumes from) and the highest acknowledged.
    max_rseq: u64,
    acked: u64,
    /// The same per group ("g:GID"): the highest `cseq` of its log's
    /// entries seen, and acknowledged.
    max_cseq: HashMap<String, u64>,
    acked_cseq: HashMap<String, u64>,
    /// Commands seen while busy with something else.
    stop: bool,
    exit: bool,
    final_requested: bool,
}

/// Why a receiver's connection ended.
enum End {
    Reconnect,
    Vanished,
    Final,
    Exit,
}

pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let events = Events::open(&args.log, &args.name)?;
    let mut client = Client {
        args,
        events,
        cmds: commands(),
        seq: 0,
        max_rseq: 0,
        acked: 0,
        max_cseq: HashMap::new(),
        acked_cseq: HashMap::new(),
        stop: false,
        exit: false,
        final_requested: false,
    };
    client.events.log(
        "start",
        json!({"kind": client.args.kind, "user": client.args.user}),
    );
    if client.args.kind == Kind::Sender {
        client.sender().await;
    } else {
        client.receiver().await;
    }
    client.events.log("exit", json!({}));
    Ok(())
}

impl Client {
    fn kind(&self) -> Kind {
        self.args.kind
    }

    /// Takes in a command (from a select or a poll).
    fn note(&mut self, cmd: Option<String>) {
        match cmd.as_deref() {
            None | Some("exit") => self.exit = true,
            Some("stop") => self.stop = true,
            Some("final") => self.final_requested = true,
            Some(other) => self.events.log("command", json!({"cmd": other})),
        }
    }

    /// Sleeps `wait` unless a command comes first (returned).
    async fn pause(&mut self, wait: Duration) -> Option<String> {
        tokio::select! {
            () = sleep(wait) => None,
            cmd = self.cmds.recv() => Some(cmd.unwrap_or_else(|| "exit".into())),
        }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        let ip = self.args.gateways[i % self.args.gateways.len()];
        let port = if self.kind() == Kind::Websocket {
            GATEWAY_HTTP_PORT
        } else {
            GATEWAY_TCP_PORT
        };
        SocketAddr::new(ip, port)
    }

    /// Connects and logs in, its own gateway first, another when that one
    /// cannot be reached; retries until logged in or told something.
    /// `None`: a command came that ends the attempt (`exit`, or `vanish`
    /// returned through `vanish_cmd`).
    async fn connect_and_login(&mut self, patience: Option<Duration>) -> Option<(Conn, Value)> {
        let started = Instant::now();
        let mut gateway = 0usize;
        loop {
            if self.exit || patience.is_some_and(|p| started.elapsed() > p) {
                return None;
            }
            let addr = self.addr(gateway);
            let conn = if self.kind() == Kind::Websocket {
                Conn::ws(addr).await
            } else {
                Conn::tcp(addr).await
            };
            let wait = match conn {
                Err(e) => {
                    self.events.log(
                        "connect-failed",
                        json!({"gw": addr.to_string(), "why": format!("{e:#}")}),
                    );
                    gateway += 1;
                    Duration::from_millis(300)
                }
                Ok(mut conn) => match self.login(&mut conn).await {
                    Ok(ack) if ack["errno"] == 0 => {
                        self.events.log(
                            "login",
                            json!({"gw": addr.to_string(), "errno": 0, "since": self.max_rseq}),
                        );
                        return Some((conn, ack));
                    }
                    Ok(ack) => {
                        self.events.log("login", json!({"gw": addr.to_string(), "errno": ack["errno"], "errmsg": ack["errmsg"]}));
                        // errno 2: the old session still holds the user.
                        Duration::from_secs(1)
                    }
                    Err(e) => {
                        self.events.log(
                            "login-failed",
                            json!({"gw": addr.to_string(), "why": format!("{e:#}")}),
                        );
                        gateway += 1;
                        Duration::from_millis(300)
                    }
                },
            };
            if let Some(cmd) = self.pause(wait).await {
                if cmd == "vanish" {
                    // Cut while reconnecting: nothing to abandon; wait for the link.
                    self.events.log("vanish", json!({"connected": false}));
                    if !self.wait_for_back().await {
                        return None;
                    }
                } else {
                    self.note(Some(cmd));
                }
            }
        }
    }

    async fn login(&mut self, conn: &mut Conn) -> anyhow::Result<Value> {
        let mut request = json!({"msgid": 1, "id": self.args.user, "password": self.args.password});
        if self.kind().acks() {
            request["acks"] = true.into();
            if self.max_rseq > 0 {
                request["since"] = self.max_rseq.into();
            }
        }
        conn.send(&request).await?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match conn.recv_within(left).await? {
                None => anyhow::bail!("no login ack within {REPLY_TIMEOUT:?}"),
                Some(frame) if frame["msgid"] == 2 => return Ok(frame),
                Some(_) => {}
            }
        }
    }

    /// Logs what the login ack carried (`offlinemsg`: JSON texts).
    fn take_offline(&mut self, ack: &Value, via: &str) {
        let Some(entries) = ack["offlinemsg"].as_array() else {
            return;
        };
        for entry in entries {
            let frame = match entry {
                Value::String(text) => serde_json::from_str(text).unwrap_or(Value::Null),
                other => other.clone(),
            };
            self.take_chat(&frame, via);
        }
    }

    fn take_chat(&mut self, frame: &Value, via: &str) {
        if let Some(fields) = chat_fields(frame, via) {
            if let Some(rseq) = frame["rseq"].as_u64() {
                self.max_rseq = self.max_rseq.max(rseq);
            } else if let (Some(conv), Some(cseq)) =
                (frame["conv"].as_str(), frame["cseq"].as_u64())
                && conv.starts_with("g:")
            {
                let max = self.max_cseq.entry(conv.to_owned()).or_default();
                *max = (*max).max(cseq);
            }
            self.events.log("recv", fields);
        }
    }

    async fn ack(&mut self, conn: &mut Conn) -> anyhow::Result<()> {
        if self.kind().acks() && self.max_rseq > self.acked {
            conn.send(&json!({"msgid": 12, "ack": self.max_rseq}))
                .await?;
            self.acked = self.max_rseq;
        }
        if self.kind().acks() {
            for (conv, &cseq) in &self.max_cseq {
                let acked = self.acked_cseq.entry(conv.clone()).or_default();
                if cseq > *acked {
                    conn.send(&json!({"msgid": 12, "ack": cseq, "conv": conv}))
                        .await?;
                    *acked = cseq;
                }
            }
        }
        Ok(())
    }

    /// Waits for `back` after a vanish; false on exit.
    async fn wait_for_back(&mut self) -> bool {
        loop {
            match self.cmds.recv().await.as_deref() {
                Some("back") => {
                    self.events.log("back", json!({}));
                    return true;
                }
                None | Some("exit") => {
                    self.exit = true;
                    return false;
                }
                Some("final") => self.final_requested = true,
                Some(other) => self.events.log("command", json!({"cmd": other})),
            }
        }
    }

    // ------------------------------------------------------------ receivers

    async fn receiver(&mut self) {
        let mut ready = false;
        loop {
            if self.final_requested {
                self.final_login().await;
                return;
            }
            let Some((conn, ack)) = self.connect_and_login(None).await else {
                return;
            };
            self.take_offline(&ack, "login");
            if !ready {
                ready = true;
                status("ready");
            }
            match self.session(conn).await {
                End::Reconnect => {}
                End::Vanished => {
                    if !self.wait_for_back().await {
                        return;
                    }
                }
                End::Final => {
                    self.final_login().await;
                    return;
                }
                End::Exit => return,
            }
        }
    }

    async fn session(&mut self, mut conn: Conn) -> End {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_frame = Instant::now();
        let mut last_ping = Instant::now();
        loop {
            tokio::select! {
                frame = conn.recv() => match frame {
                    Ok(frame) => {
                        last_frame = Instant::now();
                        self.take_chat(&frame, "live");
                    }
                    Err(e) => {
                        self.events.log("conn-lost", json!({"why": format!("{e:#}")}));
                        return End::Reconnect;
                    }
                },
                _ = tick.tick() => {
                    let mut result = self.ack(&mut conn).await;
                    if self.kind().acks() && last_ping.elapsed() >= PING_EVERY {
                        last_ping = Instant::now();
                        result = result.and(conn.send(&json!({"msgid": 13})).await);
                    }
                    if let Err(e) = result {
                        self.events.log("conn-lost", json!({"why": format!("{e:#}")}));
                        return End::Reconnect;
                    }
                    if last_frame.elapsed() >= self.kind().silence_limit() {
                        // Dropping the connection closes it (FIN).
                        self.events.log("silence-close", json!({"silent_ms": last_frame.elapsed().as_millis() as u64}));
                        return End::Reconnect;
                    }
                }
                cmd = self.cmds.recv() => match cmd.as_deref() {
                    Some("vanish") => {
                        self.vanish(conn).await;
                        return End::Vanished;
                    }
                    Some("final") => return End::Final,
                    None | Some("exit") => return End::Exit,
                    Some(other) => self.events.log("command", json!({"cmd": other})),
                },
            }
        }
    }

    /// The link is down (the run took it down just before saying so): what
    /// the kernel already holds was acknowledged by this host's TCP before
    /// it vanished. It is read for the record as `window` (a vanished
    /// device would never show it), then the socket is dropped with a
    /// reset that cannot leave.
    async fn vanish(&mut self, mut conn: Conn) {
        self.events.log("vanish", json!({"connected": true}));
        while let Ok(Some(frame)) = conn.recv_within(Duration::from_millis(200)).await {
            if let Some(fields) = chat_fields(&frame, "window") {
                self.events.log("window", fields);
            }
        }
        conn.abandon();
    }

    /// Logs in once more (the old connection closed) and collects what
    /// waited, until quiet.
    async fn final_login(&mut self) {
        self.events.log("final-start", json!({}));
        let done = match self.connect_and_login(Some(FINAL_LOGIN_PATIENCE)).await {
            None => {
                self.events.log("final-login-failed", json!({}));
                false
            }
            Some((mut conn, ack)) => {
                self.take_offline(&ack, "final");
                let mut ok = true;
                loop {
                    match conn.recv_within(FINAL_QUIET).await {
                        Ok(Some(frame)) => {
                            self.take_chat(&frame, "final");
                            if self.ack(&mut conn).await.is_err() {
                                ok = false;
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            self.events
                                .log("conn-lost", json!({"why": format!("{e:#}")}));
                            ok = false;
                            break;
                        }
                    }
                }
                let _ = self.ack(&mut conn).await;
                ok
            }
        };
        self.events.log("final-done", json!({"ok": done}));
        status("final-done");
        while !self.exit {
            let cmd = self.cmds.recv().await;
            self.note(cmd);
        }
    }

    // ------------------------------------------------------------ senders

    async fn sender(&mut self) {
        let Some((conn, _)) = self.connect_and_login(None).await else {
            return;
        };
        let mut conn = Some(conn);
        status("ready");
        loop {
            let cmd = self.cmds.recv().await;
            match cmd.as_deref() {
                Some("go") => break,
                _ => self.note(cmd),
            }
            if self.exit {
                return;
            }
        }
        self.events.log("go", json!({}));
        let period = Duration::from_secs_f64(1.0 / self.args.rate.max(0.1));
        let mut next = Instant::now();
        let mut n = 0u64;
        while !self.stop && !self.exit {
            if let Some(cmd) = self
                .pause(next.saturating_duration_since(Instant::now()))
                .await
            {
                self.note(Some(cmd));
                continue;
            }
            n += 1;
            let cmid = format!("{}-{n}", self.args.name);
            let group = (self.args.group != 0 && n.is_multiple_of(3)).then_some(self.args.group);
            self.resolve(&cmid, group, &mut conn).await;
            next += period;
            // Behind (an outage): carry on at the rate, do not burst.
            if next + Duration::from_secs(1) < Instant::now() {
                next = Instant::now();
            }
        }
        self.events.log("stopped", json!({"sent": n}));
        status("stopped");
        while !self.exit {
            let cmd = self.cmds.recv().await;
            self.note(cmd);
        }
    }

    /// Sends chat `cmid` (to the receiver, or to `group`) until the server
    /// accepts it (retrying the same `cmid` after a refusal or an unclear
    /// end), or until the grace after `stop` runs out (`unresolved`).
    async fn resolve(&mut self, cmid: &str, group: Option<i64>, conn: &mut Option<Conn>) {
        let mut attempt = 0u32;
        let mut deadline: Option<Instant> = None;
        loop {
            if self.stop && deadline.is_none() {
                deadline = Some(Instant::now() + STOP_GRACE);
            }
            if self.exit || deadline.is_some_and(|d| Instant::now() > d) {
                self.events
                    .log("unresolved", json!({"cmid": cmid, "to": self.args.to}));
                return;
            }
            let mut current = match conn.take() {
                Some(c) => c,
                None => match self.connect_and_login(Some(STOP_GRACE)).await {
                    Some((c, _)) => c,
                    None => continue,
                },
            };
            attempt += 1;
            self.seq += 1;
            let seq = self.seq;
            let request = match group {
                None => json!({
                    "msgid": 6, "id": self.args.user, "name": self.args.name, "toid": self.args.to,
                    "msg": format!("chaos {cmid}"), "time": "chaos", "cmid": cmid, "seq": seq,
                }),
                Some(group) => json!({
                    "msgid": 10, "id": self.args.user, "name": self.args.name, "groupid": group,
                    "msg": format!("chaos {cmid}"), "time": "chaos", "cmid": cmid, "seq": seq,
                }),
            };
            let conv = if group.is_some() { "g" } else { "d" };
            self.events.log(
                "send",
                json!({"cmid": cmid, "to": self.args.to, "attempt": attempt}),
            );
            match self.reply(&mut current, &request, seq).await {
                Ok(reply) if reply["errno"] == 0 => {
                    self.events.log("accepted", json!({"cmid": cmid, "to": self.args.to, "conv": conv, "mid": reply["mid"], "cseq": reply["cseq"]}));
                    *conn = Some(current);
                    return;
                }
                Ok(reply) => {
                    self.events.log("refused", json!({"cmid": cmid, "to": self.args.to, "errno": reply["errno"], "errmsg": reply["errmsg"]}));
                    *conn = Some(current);
                    if let Some(cmd) = self.pause(Duration::from_millis(500)).await {
                        self.note(Some(cmd));
                    }
                }
                Err(e) => {
                    // The gateway died, froze or was cut off: reconnect and
                    // send the same cmid again.
                    self.events.log(
                        "unclear",
                        json!({"cmid": cmid, "to": self.args.to, "why": format!("{e:#}")}),
                    );
                }
            }
        }
    }

    /// Sends `request` and waits for the reply carrying `seq`, pinging
    /// meanwhile; an error when the connection breaks or stays silent.
    async fn reply(&mut self, conn: &mut Conn, request: &Value, seq: i64) -> anyhow::Result<Value> {
        conn.send(request).await?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut last_ping = Instant::now();
        loop {
            let now = Instant::now();
            anyhow::ensure!(now < deadline, "no reply within {REPLY_TIMEOUT:?}");
            let wait = deadline
                .min(last_ping + PING_EVERY)
                .saturating_duration_since(now);
            tokio::select! {
                frame = conn.recv_within(wait) => match frame? {
                    Some(frame) if frame["msgid"] == 11 && frame["seq"] == seq => return Ok(frame),
                    Some(_) | None => {}
                },
                cmd = self.cmds.recv() => {
                    let cmd = cmd.unwrap_or_else(|| "exit".into());
                    self.note(Some(cmd));
                    anyhow::ensure!(!self.exit, "told to exit");
                }
            }
            if last_ping.elapsed() >= PING_EVERY {
                last_ping = Instant::now();
                conn.send(&json!({"msgid": 13})).await?;
            }
        }
    }
}

// ---------------------------------------------------------------- setup and probes

/// Registers `count` users through the gateway at `gateway`, and a group
/// for each pair (users 2i and 2i+1: the first creates it, the second
/// joins); prints `{"ids": [...], "groups": [...]}`.
pub async fn register(
    gateway: IpAddr,
    prefix: &str,
    count: usize,
    password: &str,
) -> anyhow::Result<()> {
    let mut conn = Conn::tcp(SocketAddr::new(gateway, GATEWAY_TCP_PORT)).await?;
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let seq = i64::try_from(i).unwrap_or(0) + 1;
        conn.send(
            &json!({"msgid": 4, "name": format!("{prefix}-{i}"), "password": password, "seq": seq}),
        )
        .await?;
        loop {
            let frame = conn
                .recv_within(REPLY_TIMEOUT)
                .await?
                .context("no register ack")?;
            if frame["msgid"] == 5 {
                let id = frame["id"]
                    .as_i64()
                    .with_context(|| format!("register failed: {frame}"))?;
                ids.push(id);
                break;
            }
        }
    }
    let addr = SocketAddr::new(gateway, GATEWAY_TCP_PORT);
    let mut groups = Vec::with_capacity(count / 2);
    for (n, pair) in ids.chunks_exact(2).enumerate() {
        let created = as_user(
            addr,
            pair[0],
            password,
            json!({"msgid": 8, "groupname": format!("{prefix}-g{n}"), "groupdesc": ""}),
        )
        .await?;
        let group = created["groupid"]
            .as_i64()
            .with_context(|| format!("create group failed: {created}"))?;
        as_user(
            addr,
            pair[1],
            password,
            json!({"msgid": 9, "groupid": group}),
        )
        .await?;
        groups.push(group);
    }
    status(&serde_json::to_string(
        &json!({"ids": ids, "groups": groups}),
    )?);
    Ok(())
}

/// Logs in as `user` on a connection of its own, makes one request (its
/// `id` set to the user) and returns the reply, which must say errno 0.
async fn as_user(
    addr: SocketAddr,
    user: i64,
    password: &str,
    mut request: Value,
) -> anyhow::Result<Value> {
    let mut conn = Conn::tcp(addr).await?;
    conn.send(&json!({"msgid": 1, "id": user, "password": password, "seq": 1}))
        .await?;
    request["id"] = user.into();
    request["seq"] = 2.into();
    let mut sent = false;
    loop {
        let frame = conn.recv_within(REPLY_TIMEOUT).await?.context("no reply")?;
        if frame["seq"] == 1 && !sent {
            anyhow::ensure!(frame["errno"] == 0, "login failed: {frame}");
            conn.send(&request).await?;
            sent = true;
        } else if frame["seq"] == 2 {
            anyhow::ensure!(frame["errno"] == 0, "{request} failed: {frame}");
            return Ok(frame);
        }
    }
}

/// Exits 0 when `addr` accepts a connection (and, with `path`, answers an
/// HTTP GET of it with 200).
pub async fn probe(addr: SocketAddr, path: Option<&str>) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .context("connect timed out")??;
    if let Some(path) = path {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut response))
            .await
            .context("no answer")??;
        let text = String::from_utf8_lossy(&response);
        anyhow::ensure!(
            text.starts_with("HTTP/1.1 200"),
            "not 200: {}",
            text.lines().next().unwrap_or("")
        );
    }
    Ok(())
}
