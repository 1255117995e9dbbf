//! The node's subscriptions: sharded pub/sub, one connection per shard.
//!
//! A user's channel `{prefix}{u:ID}` hashes to the slot of its tag, like the
//! user's keys; SSUBSCRIBE on the master that owns the slot receives what
//! SPUBLISH sends there, and nothing else crosses shards. A single Redis is
//! the same with one shard that owns every slot (Redis 7 serves sharded
//! pub/sub outside cluster mode too).
//!
//! One task, the *coordinator*, knows which channels the node wants, where
//! each is subscribed (confirmed by Redis), and which are *pending*. One
//! task per shard holds its connection (plain RESP2, `resp.rs`), pings it
//! every 2 s and reports what it loses. A channel becomes pending when its
//! shard's connection drops or stops answering, when Redis ends it (a slot
//! moved away: `sunsubscribe`), or when the slot map (`CLUSTER SHARDS`,
//! read every second and at once after a failure) gives its slot to another
//! master. Pending channels are subscribed again every 250 ms on the slot's
//! current owner; once Redis confirmed, the user's session reads its stores
//! (whatever was published meanwhile is in its inbox or the offline store).
//! The node reports itself unhealthy while anything is pending.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use shutdown::Shutdown;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::{Notify, mpsc, oneshot, watch},
};

use super::{
    BusBacklog, BusEvent, RedisError,
    bus::{SubCommand, Topic, presence_events_pattern, topic_of_channel, user_of_presence_channel},
    resp::{self, Frame},
    slot::{self, Shard},
};

/// How often the subscriber connection is pinged, and how long an answer may take.
const SUBSCRIBER_PING: Duration = Duration::from_secs(2);

/// Credentials for the subscriber connections: (username, password).
pub(super) type Auth = Option<(Option<String>, String)>;

pub(super) struct Subscriber {
    /// The shards and the slots they own.
    pub topology: watch::Receiver<Arc<Vec<Shard>>>,
    /// Asks for the slot map to be read again now.
    pub refresh: Arc<Notify>,
    pub auth: Auth,
    pub prefix: String,
    pub commands: mpsc::UnboundedReceiver<SubCommand>,
    pub events: mpsc::Sender<BusEvent>,
    pub backlog: Arc<BusBacklog>,
    pub up: Arc<AtomicBool>,
    pub shutdown: Shutdown,
}

type Reply = oneshot::Sender<Result<(), RedisError>>;

enum ShardCmd {
    /// Subscribe; the login waiting for it, if any.
    Subscribe(String, Option<Reply>),
    Unsubscribe(String),
}

/// What a shard's task tells the coordinator.
enum Report {
    Placed {
        channel: String,
        shard: Arc<str>,
        result: Result<(), RedisError>,
        reply: Option<Reply>,
    },
    /// Redis ended a subscription (its slot moved away).
    Lost { shard: Arc<str>, channel: String },
    /// The connection is gone, with every subscription on it.
    Down(Arc<str>),
}

/// Where pushed messages go.
#[derive(Clone)]
struct Sink {
    events: mpsc::Sender<BusEvent>,
    backlog: Arc<BusBacklog>,
    /// `{prefix}`: channels are `{prefix}{u:ID}` and `{prefix}{h:N}:l:g:GID`.
    prefix: Arc<str>,
    control: Arc<str>,
}

struct Coordinator {
    sink: Sink,
    auth: Auth,
    refresh: Arc<Notify>,
    wanted: HashSet<String>,
    /// Channel → the shard where Redis confirmed it.
    placed: HashMap<String, Arc<str>>,
    pending: HashSet<String>,
    /// Pending channels whose subscribe is on its way.
    in_flight: HashSet<String>,
    /// Slot → the address of its master.
    owners: slot::Owners,
    /// How many masters `owners` names.
    masters: usize,
    shards: HashMap<Arc<str>, mpsc::UnboundedSender<ShardCmd>>,
    reports: mpsc::UnboundedSender<Report>,
    /// Users and groups whose subscription was restored, to read their
    /// stores.
    restored: Vec<Topic>,
}

pub(super) async fn run(mut this: Subscriber) {
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let control = format!("{}ctl", this.prefix);
    let mut c = Coordinator {
        sink: Sink {
            events: this.events.clone(),
            backlog: this.backlog.clone(),
            prefix: this.prefix.as_str().into(),
            control: control.clone().into(),
        },
        auth: this.auth.clone(),
        refresh: this.refresh.clone(),
        wanted: HashSet::from([control.clone()]),
        placed: HashMap::new(),
        pending: HashSet::from([control]),
        in_flight: HashSet::new(),
        owners: slot::owners(&this.topology.borrow_and_update()),
        masters: 0,
        shards: HashMap::new(),
        reports: reports_tx,
        restored: Vec::new(),
    };
    c.masters = {
        let masters: HashSet<&Arc<str>> = c.owners.iter().flatten().collect();
        masters.len()
    };
    c.connect_every_master();
    let mut retry = tokio::time::interval(Duration::from_millis(250));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = this.commands.recv() => {
                let Some(command) = command else { return };
                c.on_command(command);
            }
            Some(report) = reports.recv() => c.on_report(report),
            changed = this.topology.changed() => {
                if changed.is_err() {
                    return;
                }
                let shards = this.topology.borrow_and_update().clone();
                c.on_topology(&shards);
            }
            _ = retry.tick() => c.retry_pending(),
            _ = this.shutdown.requested() => return,
        }
        this.up.store(
            c.pending.is_empty() && c.in_flight.is_empty(),
            Ordering::Relaxed,
        );
        if !c.restored.is_empty() {
            let users = std::mem::take(&mut c.restored);
            tracing::info!(channels = users.len(), "redis subscriptions restored");
            if this.events.send(BusEvent::Resync(users)).await.is_err() {
                return;
            }
        }
    }
}

impl Coordinator {
    fn owner(&self, channel: &str) -> Option<Arc<str>> {
        self.owners[usize::from(slot::of_key(channel.as_bytes()))].clone()
    }

    /// The task of a shard, started on first use.
    fn shard(&mut self, addr: &Arc<str>) -> &mpsc::UnboundedSender<ShardCmd> {
        self.shards.entry(addr.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_shard(
                addr.clone(),
                self.auth.clone(),
                rx,
                self.reports.clone(),
                self.sink.clone(),
            ));
            tx
        })
    }

    /// Sends a subscribe to the channel's shard; a failure comes back as a
    /// report like any other.
    fn subscribe(&mut self, channel: String, reply: Option<Reply>) {
        let Some(addr) = self.owner(&channel) else {
            self.refresh.notify_one();
            let error = RedisError::new("no redis master serves this user's slot right now");
            self.on_report(Report::Placed {
                channel,
                shard: "".into(),
                result: Err(error),
                reply,
            });
            return;
        };
        if let Err(mpsc::error::SendError(ShardCmd::Subscribe(channel, reply))) =
            self.shard(&addr).send(ShardCmd::Subscribe(channel, reply))
        {
            self.shards.remove(&addr);
            self.on_report(Report::Placed {
                channel,
                shard: addr,
                result: Err(RedisError::new("the shard's connection has stopped")),
                reply,
            });
        }
    }

    fn unsubscribe_at(&mut self, addr: &Arc<str>, channel: String) {
        if let Some(shard) = self.shards.get(addr) {
            let _ = shard.send(ShardCmd::Unsubscribe(channel));
        }
    }

    fn on_command(&mut self, command: SubCommand) {
        match command {
            SubCommand::Subscribe(channel, done) => {
                self.wanted.insert(channel.clone());
                self.subscribe(channel, Some(done));
            }
            SubCommand::Unsubscribe(channel) => {
                self.wanted.remove(&channel);
                self.pending.remove(&channel);
                if let Some(addr) = self.placed.remove(&channel) {
                    self.unsubscribe_at(&addr, channel);
                }
            }
        }
    }

    fn on_report(&mut self, report: Report) {
        match report {
            Report::Placed {
                channel,
                shard,
                result,
                reply,
            } => {
                let resubscribed = reply.is_none();
                if resubscribed {
                    self.in_flight.remove(&channel);
                }
                match result {
                    Ok(()) if self.wanted.contains(&channel) => {
                        if let Some(old) = self.placed.insert(channel.clone(), shard.clone())
                            && old != shard
                        {
                            self.unsubscribe_at(&old, channel.clone());
                        }
                        self.pending.remove(&channel);
                        if resubscribed
                            && let Some(topic) = topic_of_channel(&self.sink.prefix, &channel)
                        {
                            self.restored.push(topic);
                        }
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(()));
                        }
                    }
                    Ok(()) => {
                        // Left while it was on its way.
                        self.unsubscribe_at(&shard, channel);
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(()));
                        }
                    }
                    Err(e) => {
                        if e.0.starts_with("MOVED") || e.0.starts_with("ASK") {
                            self.refresh.notify_one();
                        }
                        match reply {
                            // A login: it fails ("unavailable") and is not wanted.
                            Some(reply) => {
                                if !self.placed.contains_key(&channel) {
                                    self.wanted.remove(&channel);
                                }
                                let _ = reply.send(Err(e));
                            }
                            None => {
                                tracing::debug!(error = %e, channel, "subscribing again failed; will retry");
                            }
                        }
                    }
                }
            }
            Report::Lost { shard, channel } => {
                if self.placed.get(&channel) == Some(&shard) {
                    tracing::info!(channel, %shard, "redis ended a subscription (its slot moved)");
                    self.placed.remove(&channel);
                    if self.wanted.contains(&channel) {
                        self.pending.insert(channel);
                    }
                    self.refresh.notify_one();
                }
            }
            Report::Down(shard) => {
                self.shards.remove(&shard);
                let lost: Vec<String> = self
                    .placed
                    .iter()
                    .filter(|(_, at)| **at == shard)
                    .map(|(channel, _)| channel.clone())
                    .collect();
                if !lost.is_empty() {
                    tracing::warn!(%shard, channels = lost.len(), "redis subscriber connection lost; subscribing again");
                }
                for channel in lost {
                    self.placed.remove(&channel);
                    self.pending.insert(channel);
                }
                self.refresh.notify_one();
            }
        }
    }

    /// The slot map changed: channels whose slot has a new owner move.
    fn on_topology(&mut self, shards: &[Shard]) {
        self.owners = slot::owners(shards);
        self.masters = shards.iter().filter(|s| s.master.is_some()).count();
        let moved: Vec<String> = self
            .placed
            .iter()
            .filter(|(channel, at)| self.owner(channel).as_ref() != Some(at))
            .map(|(channel, _)| channel.clone())
            .collect();
        // No SUNSUBSCRIBE to the old owner: a master that lost a slot ends
        // its subscriptions itself, and ours could cross its own
        // `sunsubscribe` and take the answer meant for another command.
        // (Were it still subscribed, a copy delivered twice is dropped by
        // sequence.)
        for channel in moved {
            self.placed.remove(&channel);
            self.pending.insert(channel);
        }
        // Connections to nodes that are no longer masters of anything.
        let masters: HashSet<&str> = shards.iter().filter_map(|s| s.master.as_deref()).collect();
        self.shards.retain(|addr, _| masters.contains(&**addr));
        self.connect_every_master();
    }

    /// A connection to every master, whether or not a channel of this node
    /// lives there: each hears its own keys expire (presence that ran out).
    fn connect_every_master(&mut self) {
        let masters: HashSet<Arc<str>> = self.owners.iter().flatten().cloned().collect();
        for master in masters {
            self.shard(&master);
        }
    }

    fn retry_pending(&mut self) {
        if self.shards.len() < self.masters {
            self.connect_every_master();
        }
        let channels: Vec<String> = self
            .pending
            .iter()
            .filter(|c| !self.in_flight.contains(*c))
            .cloned()
            .collect();
        for channel in channels {
            self.in_flight.insert(channel.clone());
            self.subscribe(channel, None);
        }
    }
}

/// What a shard's connection waits an answer for, in order.
enum Waiting {
    /// The keyspace notifications of presence keys.
    KeyEvents,
    Subscribe(String, Option<Reply>),
    Unsubscribe(String),
    Ping,
}

/// Holds one shard's connection until it fails; then fails what waits and
/// reports the shard down.
async fn run_shard(
    addr: Arc<str>,
    auth: Auth,
    mut commands: mpsc::UnboundedReceiver<ShardCmd>,
    reports: mpsc::UnboundedSender<Report>,
    sink: Sink,
) {
    let mut waiting = VecDeque::new();
    let why = match connect(&addr, &auth).await {
        Ok(stream) => {
            serve_shard(&addr, stream, &mut commands, &reports, &sink, &mut waiting).await
        }
        Err(e) => e,
    };
    tracing::warn!(shard = %addr, error = %why, "redis subscriber connection ended");
    commands.close();
    while let Ok(command) = commands.try_recv() {
        if let ShardCmd::Subscribe(channel, reply) = command {
            waiting.push_back(Waiting::Subscribe(channel, reply));
        }
    }
    for waiter in waiting {
        if let Waiting::Subscribe(channel, reply) = waiter {
            let _ = reports.send(Report::Placed {
                channel,
                shard: addr.clone(),
                result: Err(RedisError::new(why.0.clone())),
                reply,
            });
        }
    }
    let _ = reports.send(Report::Down(addr));
}

async fn connect(addr: &str, auth: &Auth) -> Result<TcpStream, RedisError> {
    let mut stream = tokio::time::timeout(SUBSCRIBER_PING, TcpStream::connect(addr))
        .await
        .map_err(|_| RedisError::new(format!("connecting to {addr} timed out")))?
        .map_err(|e| RedisError::new(format!("cannot connect to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    if let Some((user, password)) = auth {
        let command = match user {
            Some(user) => resp::command(&[b"AUTH", user.as_bytes(), password.as_bytes()]),
            None => resp::command(&[b"AUTH", password.as_bytes()]),
        };
        stream
            .write_all(&command)
            .await
            .map_err(|e| RedisError::new(e.to_string()))?;
        let mut buf = Vec::new();
        let frame = tokio::time::timeout(SUBSCRIBER_PING, read_frame(&mut stream, &mut buf))
            .await
            .map_err(|_| RedisError::new("AUTH timed out"))??;
        if let Frame::Error(e) = frame {
            return Err(RedisError::new(format!("AUTH refused: {e}")));
        }
    }
    if let Err(why) = enable_expired_events(&mut stream).await {
        tracing::warn!(shard = %addr, error = %why, "Redis does not tell expired keys (set notify-keyspace-events to include K and x): a user whose node dies is shown online to their friends until they reload");
    }
    Ok(stream)
}

/// Makes Redis publish keyspace events of expired keys (what
/// [`presence_events_pattern`] listens to) if it does not yet:
/// `notify-keyspace-events` gets `K` and `x` added to what it has. A Redis
/// that refuses CONFIG (a managed service) must be set so by its operator.
async fn enable_expired_events(stream: &mut TcpStream) -> Result<(), RedisError> {
    let mut buf = Vec::new();
    let mut ask = async |command: &[&[u8]]| -> Result<Frame, RedisError> {
        stream
            .write_all(&resp::command(command))
            .await
            .map_err(|e| RedisError::new(e.to_string()))?;
        let frame = tokio::time::timeout(SUBSCRIBER_PING, read_frame(stream, &mut buf))
            .await
            .map_err(|_| RedisError::new("CONFIG timed out"))??;
        match frame {
            Frame::Error(e) => Err(RedisError::new(e)),
            frame => Ok(frame),
        }
    };
    let current = match ask(&[b"CONFIG", b"GET", b"notify-keyspace-events"]).await? {
        Frame::Array(Some(items)) => items.get(1).and_then(Frame::text).unwrap_or("").to_owned(),
        _ => String::new(),
    };
    let wanted = with_expired_events(&current);
    if wanted != current {
        ask(&[
            b"CONFIG",
            b"SET",
            b"notify-keyspace-events",
            wanted.as_bytes(),
        ])
        .await?;
    }
    Ok(())
}

/// `flags` with `K` (keyspace notifications) and `x` (expired) added where
/// missing (`A` already includes `x`).
fn with_expired_events(flags: &str) -> String {
    let mut wanted = flags.to_owned();
    if !wanted.contains('K') {
        wanted.push('K');
    }
    if !wanted.contains('x') && !wanted.contains('A') {
        wanted.push('x');
    }
    wanted
}

async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Frame, RedisError> {
    loop {
        if let Some((frame, used)) =
            resp::parse(buf).map_err(|_| RedisError::new("malformed reply"))?
        {
            buf.drain(..used);
            return Ok(frame);
        }
        if stream
            .read_buf(buf)
            .await
            .map_err(|e| RedisError::new(e.to_string()))?
            == 0
        {
            return Err(RedisError::new("connection closed"));
        }
    }
}

/// Runs the connection; returns why it ended.
async fn serve_shard(
    addr: &Arc<str>,
    stream: TcpStream,
    commands: &mut mpsc::UnboundedReceiver<ShardCmd>,
    reports: &mpsc::UnboundedSender<Report>,
    sink: &Sink,
    waiting: &mut VecDeque<Waiting>,
) -> RedisError {
    let (mut reader, mut writer) = stream.into_split();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut ping = tokio::time::interval(SUBSCRIBER_PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping_sent: Option<Instant> = None;
    let pattern = presence_events_pattern(&sink.prefix);
    let mut first = Some(resp::command(&[b"PSUBSCRIBE", pattern.as_bytes()]));
    waiting.push_back(Waiting::KeyEvents);
    loop {
        let out = if let Some(first) = first.take() {
            first
        } else {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else {
                        return RedisError::new("no longer needed");
                    };
                    match command {
                        ShardCmd::Subscribe(channel, reply) => {
                            let out = resp::command(&[b"SSUBSCRIBE", channel.as_bytes()]);
                            waiting.push_back(Waiting::Subscribe(channel, reply));
                            out
                        }
                        ShardCmd::Unsubscribe(channel) => {
                            let out = resp::command(&[b"SUNSUBSCRIBE", channel.as_bytes()]);
                            waiting.push_back(Waiting::Unsubscribe(channel));
                            out
                        }
                    }
                }
                read = reader.read_buf(&mut buf) => {
                    match read {
                        Ok(0) => return RedisError::new("connection closed"),
                        Err(e) => return RedisError::new(e.to_string()),
                        Ok(_) => {}
                    }
                    let mut at = 0;
                    loop {
                        match resp::parse(&buf[at..]) {
                            Ok(Some((frame, used))) => {
                                at += used;
                                if let Err(why) = on_frame(addr, frame, waiting, reports, sink, &mut ping_sent) {
                                    return why;
                                }
                            }
                            Ok(None) => break,
                            Err(resp::Malformed) => return RedisError::new("malformed reply"),
                        }
                    }
                    buf.drain(..at);
                    continue;
                }
                _ = ping.tick() => {
                    if ping_sent.is_some_and(|sent| sent.elapsed() >= SUBSCRIBER_PING * 2) {
                        return RedisError::new("does not answer PING");
                    }
                    if ping_sent.is_some() {
                        continue;
                    }
                    ping_sent = Some(Instant::now());
                    waiting.push_back(Waiting::Ping);
                    resp::command(&[b"PING"])
                }
            }
        };
        match tokio::time::timeout(SUBSCRIBER_PING * 2, writer.write_all(&out)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return RedisError::new(e.to_string()),
            Err(_) => return RedisError::new("writing timed out"),
        }
    }
}

/// One frame from a shard: a pushed message, or the answer to the oldest
/// command waiting. Err ends the connection.
fn on_frame(
    addr: &Arc<str>,
    frame: Frame,
    waiting: &mut VecDeque<Waiting>,
    reports: &mpsc::UnboundedSender<Report>,
    sink: &Sink,
    ping_sent: &mut Option<Instant>,
) -> Result<(), RedisError> {
    let stopped = || RedisError::new("the node stopped listening");
    match frame {
        Frame::Array(Some(items)) => {
            let mut items = items.into_iter();
            let kind = items.next();
            let kind = kind.as_ref().and_then(Frame::text).unwrap_or("");
            let channel = items.next();
            let channel = channel
                .as_ref()
                .and_then(Frame::text)
                .unwrap_or("")
                .to_owned();
            match kind {
                "smessage" | "message" => {
                    let Some(Frame::Bulk(Some(payload))) = items.next() else {
                        return Ok(());
                    };
                    if let Some(topic) = topic_of_channel(&sink.prefix, &channel) {
                        sink.backlog
                            .offer(&sink.events, topic, payload)
                            .map_err(|()| stopped())?;
                    } else if channel == *sink.control {
                        match sink.events.try_send(BusEvent::Control(payload)) {
                            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                            Err(mpsc::error::TrySendError::Closed(_)) => return Err(stopped()),
                        }
                    }
                }
                // A presence key's event: `channel` is the pattern.
                "pmessage" => {
                    let key_channel = items.next();
                    let event = items.next();
                    let user = key_channel
                        .as_ref()
                        .and_then(Frame::text)
                        .and_then(|c| user_of_presence_channel(&sink.prefix, c));
                    if let (Some(user), Some("expired")) =
                        (user, event.as_ref().and_then(Frame::text))
                    {
                        match sink.events.try_send(BusEvent::PresenceExpired(user)) {
                            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                            Err(mpsc::error::TrySendError::Closed(_)) => return Err(stopped()),
                        }
                    }
                }
                "psubscribe" => {
                    if matches!(waiting.front(), Some(Waiting::KeyEvents)) {
                        waiting.pop_front();
                    }
                }
                "ssubscribe" => {
                    if matches!(waiting.front(), Some(Waiting::Subscribe(c, _)) if *c == channel)
                        && let Some(Waiting::Subscribe(channel, reply)) = waiting.pop_front()
                    {
                        let _ = reports.send(Report::Placed {
                            channel,
                            shard: addr.clone(),
                            result: Ok(()),
                            reply,
                        });
                    }
                }
                "sunsubscribe" => {
                    if matches!(waiting.front(), Some(Waiting::Unsubscribe(c)) if *c == channel) {
                        waiting.pop_front();
                    } else {
                        let _ = reports.send(Report::Lost {
                            shard: addr.clone(),
                            channel,
                        });
                    }
                }
                "pong" => answered_ping(waiting, ping_sent),
                _ => {}
            }
        }
        Frame::Simple(s) if s.eq_ignore_ascii_case("PONG") => answered_ping(waiting, ping_sent),
        Frame::Error(e) => match waiting.pop_front() {
            Some(Waiting::Subscribe(channel, reply)) => {
                let _ = reports.send(Report::Placed {
                    channel,
                    shard: addr.clone(),
                    result: Err(RedisError::new(e)),
                    reply,
                });
            }
            Some(Waiting::Ping) => *ping_sent = None,
            Some(Waiting::KeyEvents) => {
                tracing::warn!(shard = %addr, error = e, "cannot listen for expired presence; a user whose node dies is shown online until their watchers reload")
            }
            Some(Waiting::Unsubscribe(_)) | None => {}
        },
        _ => {}
    }
    Ok(())
}

fn answered_ping(waiting: &mut VecDeque<Waiting>, ping_sent: &mut Option<Instant>) {
    if matches!(waiting.front(), Some(Waiting::Ping)) {
        waiting.pop_front();
    }
    *ping_sent = None;
}
