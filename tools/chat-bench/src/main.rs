//! `chat-bench`: measures a chat cluster on the work it exists for.
//!
//! It speaks only the classic messages (msgid 1-10) on the measured path, so
//! it can measure any server that speaks the classic protocol, given its
//! node addresses. Scenarios (`--scenarios`, all but `online` by default):
//! 1. `one-to-one`: one-to-one chat across nodes, pair i's sender on node
//!    i mod N and its receiver on node i+1 mod N: delivered messages/s and
//!    end-to-end latency at a fixed offered rate and at saturation, and how
//!    many were lost (sent, never delivered);
//! 2. `group`: group chat fan-out across nodes;
//! 3. `idle`: idle connections on one node: resident memory per connection;
//! 4. `logins`: logins per second;
//! 5. `online` (opt-in, runs first): logged-in users and undelivered inbox
//!    entries: what each costs the gateways' resident memory and Redis's
//!    `used_memory`.
//!
//! With `--tls-nodes` (TLS-terminating proxies, one in front of each of two
//! nodes) scenario 1 runs again through TLS (`tls`), as extra rows: the cost
//! of TLS.
//!
//! With `--history-redis` (and the history service's `/metrics` and pid),
//! two more (`history.rs`): 6. `history`: scenario 1 runs with the history
//! service running and again with it stopped (SIGSTOP), and reports the
//! difference, the service's lag and backlog while chat saturates the
//! cluster, and how fast it drains what piled up while it was stopped;
//! 7. `history-table`: a table of `--history-rows` messages (written to the
//! streams as gateways write them, ingested by the service) and
//! `GetHistory` of 50 on it over gRPC.
//!
//! With `--pids NAME=PID,...` it reads each process's CPU time around the
//! one-to-one runs and the logins (`procs.rs`): CPU-seconds per 100,000
//! delivered messages and per login, per process and per group of processes.
//!
//! The same run measures the ceiling, raw Redis PUBLISH → subscriber on this
//! machine (single Redis only), and reports the cross-node throughput as a
//! ratio of it. Results print as a Markdown table and are written as JSON
//! under `--out`.

mod client;
mod history;
mod procs;

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::{Parser, ValueEnum};
use client::Client;
use futures::StreamExt as _;
use history::History;
use procs::Watched;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::TcpSocket,
};
use tokio_rustls::TlsConnector;

#[derive(Parser, Clone)]
#[command(
    name = "chat-bench",
    about = "Load generator for classic-protocol chat clusters"
)]
struct Args {
    /// Node addresses (classic TCP), two or more. Pair i of the one-to-one
    /// rows has its sender on node i mod N and its receiver on node
    /// i+1 mod N, so every pair crosses nodes.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:6000,127.0.0.1:6002"
    )]
    nodes: Vec<SocketAddr>,
    /// TLS endpoints in front of the same two nodes (one each, e.g. nginx
    /// terminating TLS): the one-to-one rows run again through them.
    #[arg(long, value_delimiter = ',', requires = "ca")]
    tls_nodes: Vec<SocketAddr>,
    /// The CA (PEM) that signed the TLS endpoints' certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Redis of the cluster, for the ceiling measurement ("off" to skip; a
    /// Redis Cluster URL is skipped with a note).
    #[arg(long, default_value = "redis://127.0.0.1:6479")]
    redis: String,
    /// Pid of the process behind the first node, for memory per connection
    /// (default: the first `gateway-*` of `--pids`).
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Processes whose CPU time and memory to report, NAME=PID,... (e.g.
    /// gateway-1=..,redis-6521=..,user-service=..,mariadb=..). Names that
    /// differ only in a trailing -NUMBER are summed as a group.
    #[arg(long, value_delimiter = ',', value_parser = Watched::parse)]
    pids: Vec<Watched>,
    /// What to run (`history` and `history-table` need `--history-redis`,
    /// `--history-metrics` and the service's pid, and are skipped with a
    /// note without them).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "one-to-one,group,idle,logins,tls,history,history-table"
    )]
    scenarios: Vec<Scenario>,
    /// A name for this run, put in the output (e.g. "3 shards, 2 gateways").
    #[arg(long, default_value = "")]
    label: String,
    /// Redis instances (host:port, the masters) whose INFO memory the
    /// `online` scenario reads.
    #[arg(long, value_delimiter = ',')]
    redis_info: Vec<SocketAddr>,
    /// Users the `online` scenario logs in (spread over the nodes).
    #[arg(long, default_value_t = 500)]
    online_users: usize,
    /// Undelivered (unacknowledged) inbox entries the `online` scenario
    /// leaves per user.
    #[arg(long, default_value_t = 20)]
    inbox_entries: usize,
    /// Sender/receiver pairs for one-to-one chat.
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Offered messages per second for the fixed-rate run.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Bytes of text per chat message.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Members of the fan-out group.
    #[arg(long, default_value_t = 20)]
    group_members: usize,
    /// Idle connections opened on the first node.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Concurrent clients logging in and out.
    #[arg(long, default_value_t = 8)]
    login_clients: usize,
    /// Receivers log in as classic clients (no acknowledgements: the server
    /// writes each frame on its own and trims on write) instead of as
    /// clients that acknowledge every 100 ms.
    #[arg(long)]
    classic: bool,
    /// The Redis (single server) the gateways write the history streams
    /// to: enables the `history` and `history-table` scenarios.
    #[arg(long)]
    history_redis: Option<String>,
    /// The gateways' key prefix (the streams are `{prefix}{h:N}`).
    #[arg(long, default_value = "cc:")]
    history_prefix: String,
    /// The history service's metrics listener (host:port of `/metrics`).
    #[arg(long)]
    history_metrics: Option<SocketAddr>,
    /// The history service's pid, stopped (SIGSTOP) for the rows without it
    /// (default: `history-service` of `--pids`).
    #[arg(long)]
    history_pid: Option<u32>,
    /// The history service's gRPC endpoint, for `GetHistory` (e.g.
    /// http://127.0.0.1:50153).
    #[arg(long)]
    history_grpc: Option<String>,
    /// A file holding the internal token the history service wants.
    #[arg(long)]
    history_token_file: Option<PathBuf>,
    /// Messages the `history-table` scenario stores.
    #[arg(long, default_value_t = 1_000_000)]
    history_rows: u64,
    /// Conversations they are spread over.
    #[arg(long, default_value_t = 10_000)]
    history_conversations: u64,
    /// Rounds of the `history` comparison (running vs stopped), each about
    /// 4 runs of `--duration` plus the drain; medians are compared.
    #[arg(long, default_value_t = 1)]
    history_rounds: usize,
    /// `GetHistory` calls timed on the table.
    #[arg(long, default_value_t = 5000)]
    history_calls: usize,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    OneToOne,
    Group,
    Idle,
    Logins,
    Tls,
    Online,
    History,
    HistoryTable,
}

/// Run ids of scenario 1 with the history service stopped.
const HISTORY_STOPPED_RUN: u32 = 6;

const PASSWORD: &str = "bench-password";

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[derive(Default)]
struct Latencies(Vec<u64>);

impl Latencies {
    fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let index = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[index] as f64 / 1e6
    }

    fn summary(&mut self) -> Value {
        json!({
            "p50_ms": self.percentile_ms(0.50),
            "p90_ms": self.percentile_ms(0.90),
            "p99_ms": self.percentile_ms(0.99),
            "max_ms": self.percentile_ms(1.0),
        })
    }
}

/// One received chat: (run, sender, seq, latency ns).
type Sample = (u32, u32, u64, u64);

/// Logs `count` fresh users in, user i on `nodes[(i + offset) % N]`
/// (through TLS with `tls`).
async fn logged_in_clients(
    prefix: &str,
    count: usize,
    nodes: &[SocketAddr],
    offset: usize,
    acks: bool,
    tls: Option<&TlsConnector>,
) -> anyhow::Result<Vec<(i64, Client)>> {
    let mut out = Vec::with_capacity(count);
    let mut setup = Client::connect_via(nodes[offset % nodes.len()], tls).await?;
    for i in 0..count {
        let id = setup.register(&format!("{prefix}{i}"), PASSWORD).await?;
        let mut client = Client::connect_via(nodes[(i + offset) % nodes.len()], tls).await?;
        client.login_as(id, PASSWORD, acks).await?;
        out.push((id, client));
    }
    Ok(out)
}

/// Reads chats from a receiver until stopped, recording samples; a
/// receiver that acknowledges (`acks`) does so every 100 ms, and pings
/// every 4 s: the gateway closes such a client when it has been silent for
/// its idle timeout (10 s), and between runs (while the history service
/// catches up) nothing else would be sent.
fn spawn_receiver(
    mut client: Client,
    acks: bool,
    samples: Arc<Mutex<Vec<Sample>>>,
    received: Arc<AtomicU64>,
) {
    tokio::spawn(async move {
        let mut shown = 0u64;
        let mut acked = 0u64;
        let mut last_ack = Instant::now();
        let mut ping = tokio::time::interval(Duration::from_secs(4));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Kept across a ping: read_until appends what it read before
        // another branch won, and is called again to go on.
        let mut line = Vec::new();
        loop {
            tokio::select! {
                read = client.reader.read_until(b'\n', &mut line) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return;
                    }
                }
                _ = ping.tick(), if acks => {
                    if client.send(&json!({"msgid": 13})).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
            let message: Value = serde_json::from_slice(line.trim_ascii_end()).unwrap_or_default();
            line.clear();
            if let Some(rseq) = message["rseq"].as_u64() {
                shown = shown.max(rseq);
                if shown > acked && last_ack.elapsed() >= Duration::from_millis(100) {
                    if client
                        .send(&json!({"msgid": 12, "ack": shown}))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    acked = shown;
                    last_ack = Instant::now();
                }
            }
            let Some(text) = message["msg"].as_str() else {
                continue;
            };
            let mut parts = text.splitn(5, ':');
            let (Some(run), Some(sender), Some(seq), Some(sent)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(run), Ok(sender), Ok(seq), Ok(sent)) = (
                run.parse(),
                sender.parse(),
                seq.parse(),
                sent.parse::<u64>(),
            ) else {
                continue;
            };
            let latency = now_nanos().saturating_sub(sent);
            samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((run, sender, seq, latency));
            received.fetch_add(1, Ordering::Relaxed);
        }
    });
}

#[derive(Clone, Copy)]
enum Target {
    User(i64),
    Group(i64),
}

/// A classic chat whose text carries (run, sender, seq, send time) for the
/// receiver to measure latency and loss.
fn chat_frame(from: i64, target: Target, run: u32, sender: usize, seq: u64, pad: &str) -> String {
    let (msgid, key, to) = match target {
        Target::User(id) => (6, "toid", id),
        Target::Group(id) => (10, "groupid", id),
    };
    format!(
        r#"{{"msgid":{msgid},"id":{from},"{key}":{to},"msg":"{run}:{sender}:{seq}:{}:{pad}","time":"2026-01-01 00:00:00"}}"#,
        now_nanos()
    )
}

struct RunResult {
    sent: u64,
    delivered: u64,
    lost: u64,
    duplicates: u64,
    seconds: f64,
    latencies: Latencies,
}

impl RunResult {
    fn json(&mut self) -> Value {
        json!({
            "sent": self.sent,
            "delivered": self.delivered,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "delivered_per_sec": self.delivered as f64 / self.seconds,
            "latency": self.latencies.summary(),
        })
    }
}

/// Waits until `received` stops growing (2 s) or reaches `expected`.
/// Through a proxy (`--tls-nodes`) a saturated sender fills two socket
/// buffers and nginx's, so what is still arriving may take a while: only a
/// stall ends the wait early, and 180 s at most.
async fn drain(received: &AtomicU64, expected: u64) {
    let mut last = received.load(Ordering::Relaxed);
    let mut still = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = received.load(Ordering::Relaxed);
        if now >= expected {
            return;
        }
        if now != last {
            last = now;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_secs(2) {
            return;
        }
    }
}

fn tally(
    run: u32,
    samples: &Mutex<Vec<Sample>>,
    sent: u64,
    expected_per_message: u64,
    first_sent: Instant,
    last_seen: Instant,
) -> RunResult {
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner());
    let mut unique = HashSet::new();
    let mut latencies = Latencies::default();
    let mut total = 0u64;
    let mut dup = 0u64;
    for &(r, sender, seq, latency) in samples.iter() {
        if r != run {
            continue;
        }
        total += 1;
        if expected_per_message == 1 && !unique.insert((sender, seq)) {
            dup += 1;
        }
        latencies.0.push(latency);
    }
    let expected = sent * expected_per_message;
    RunResult {
        sent,
        delivered: total - dup,
        lost: expected.saturating_sub(total - dup),
        duplicates: dup,
        seconds: last_seen
            .duration_since(first_sent)
            .as_secs_f64()
            .max(0.001),
        latencies,
    }
}

/// Scenario 1 at a fixed offered rate (`Some(rate)`) or as fast as the
/// senders can write (`None`).
async fn one_to_one(
    senders: Vec<(i64, Client)>,
    receiver_ids: &[i64],
    samples: &Arc<Mutex<Vec<Sample>>>,
    received: &Arc<AtomicU64>,
    run: u32,
    rate: Option<u64>,
    args: &Args,
) -> anyhow::Result<(Vec<(i64, Client)>, RunResult)> {
    let pad = "x".repeat(args.size.saturating_sub(40));
    let duration = Duration::from_secs(args.duration);
    let before = received.load(Ordering::Relaxed);
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let pairs = senders.len();
    for (i, (id, mut client)) in senders.into_iter().enumerate() {
        let to = receiver_ids[i];
        let pad = pad.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            match rate {
                Some(rate) => {
                    let every = Duration::from_secs_f64(pairs as f64 / rate as f64);
                    let mut ticker = tokio::time::interval(every);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    while started.elapsed() < duration {
                        ticker.tick().await;
                        let frame = chat_frame(id, Target::User(to), run, i, seq, &pad);
                        if client.writer.write_all(frame.as_bytes()).await.is_err()
                            || client.writer.write_all(&[0]).await.is_err()
                            || client.flush().await.is_err()
                        {
                            break;
                        }
                        seq += 1;
                    }
                }
                None => {
                    'sending: while started.elapsed() < duration {
                        for _ in 0..32 {
                            let frame = chat_frame(id, Target::User(to), run, i, seq, &pad);
                            if client.writer.write_all(frame.as_bytes()).await.is_err()
                                || client.writer.write_all(&[0]).await.is_err()
                            {
                                break 'sending;
                            }
                            seq += 1;
                        }
                        if client.flush().await.is_err() {
                            break;
                        }
                    }
                    let _ = client.flush().await;
                }
            }
            sent.fetch_add(seq, Ordering::Relaxed);
            (id, client)
        }));
    }
    let mut senders = Vec::with_capacity(tasks.len());
    for task in tasks {
        senders.push(task.await?);
    }
    let sent = sent.load(Ordering::Relaxed);
    drain(received, before + sent).await;
    let last = Instant::now();
    let mut result = tally(run, samples, sent, 1, started, last);
    // Throughput over the sending window plus what was still in flight.
    result.seconds = (last - started)
        .as_secs_f64()
        .min(result.seconds)
        .max(0.001);
    Ok((senders, result))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.nodes.len() >= 2,
        "give two or more node addresses: --nodes A,B[,C...]"
    );
    anyhow::ensure!(
        args.tls_nodes.is_empty() || args.tls_nodes.len() == 2,
        "give two TLS addresses, one per node: --tls-nodes A,B"
    );
    let runs = |s: Scenario| args.scenarios.contains(&s);
    let tls = args.ca.as_deref().map(client::tls_connector).transpose()?;
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let prefix = format!("b{run_id}_");
    let mut report = serde_json::Map::new();
    report.insert("label".into(), json!(args.label));
    report.insert(
        "nodes".into(),
        json!(
            args.nodes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        ),
    );
    report.insert("node_count".into(), json!(args.nodes.len()));
    report.insert("started_unix".into(), json!(run_id));
    report.insert(
        "machine".into(),
        json!({"cores": std::thread::available_parallelism().map_or(0, |n| n.get())}),
    );
    let mut cpu = serde_json::Map::new();
    if !args.pids.is_empty() {
        let (ticks, source) = procs::clock_ticks();
        cpu.insert(
            "clock_ticks_per_sec".into(),
            json!({"value": ticks, "source": source}),
        );
        cpu.insert(
            "watched".into(),
            args.pids
                .iter()
                .map(|w| (w.name.clone(), json!(w.pid)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        );
    }

    // 5. what online users and their undelivered entries cost: first, so
    // the gateways' resident memory is not what the other runs left behind.
    if runs(Scenario::Online) {
        eprintln!(
            "{} online users, {} undelivered entries each ...",
            args.online_users, args.inbox_entries
        );
        report.insert("online".into(), online(&args, &prefix).await?);
    }

    // 6, 7: the history service, when it can be reached.
    let mut history_report = serde_json::Map::new();
    let history = if runs(Scenario::History) || runs(Scenario::HistoryTable) {
        match connect_history(&args).await {
            Ok(history) => Some(Arc::new(history)),
            Err(why) => {
                eprintln!("history scenarios skipped: {why:#}");
                history_report.insert("skipped".into(), json!(format!("{why:#}")));
                None
            }
        }
    } else {
        None
    };

    // 1. one-to-one across nodes (6: with the history service running and stopped).
    let mut saturated_per_sec = None;
    if runs(Scenario::OneToOne) || runs(Scenario::History) {
        eprintln!(
            "setting up {} pairs over {} nodes ...",
            args.pairs,
            args.nodes.len()
        );
        let compare = history.as_ref().filter(|_| runs(Scenario::History));
        let mut rows =
            one_to_one_rows(&args, &prefix, &args.nodes, None, 1, &args.pids, compare).await?;
        saturated_per_sec = Some(rows.saturated.delivered as f64 / rows.saturated.seconds);
        if let Some(rows) = rows.history.take() {
            history_report.extend(rows);
        }
        report.insert(
            "one_to_one_fixed_rate".into(),
            json!({"offered_per_sec": args.rate, "result": rows.fixed.json()}),
        );
        report.insert("one_to_one_saturation".into(), rows.saturated.json());
        if !args.pids.is_empty() {
            cpu.insert("one_to_one_fixed_rate".into(), rows.cpu_fixed);
            cpu.insert("one_to_one_saturation".into(), rows.cpu_saturated);
        }
    }

    // 7. a large table: filled through the streams, then GetHistory. Next
    // to 6, so the runs after it find the service caught up.
    if let (true, Some(history)) = (runs(Scenario::HistoryTable), &history) {
        eprintln!(
            "history table: {} messages over {} conversations through the streams ...",
            args.history_rows, args.history_conversations
        );
        let conversations = args
            .history_conversations
            .clamp(1, args.history_rows.max(1));
        let mut table = history
            .fill_table(args.history_rows, conversations, args.size)
            .await?;
        table["table_rows"] = json!(history.stored_rows().await.ok());
        eprintln!("GetHistory of 50, {} calls ...", args.history_calls);
        table["get_history"] = history
            .time_get_history(
                conversations,
                args.history_rows.div_ceil(conversations),
                args.history_calls,
                50,
            )
            .await?;
        history_report.insert("table".into(), table);
    }

    // 2. group fan-out across nodes.
    if runs(Scenario::Group) {
        eprintln!("group fan-out with {} members ...", args.group_members);
        let group = group_fanout(&args, &prefix).await?;
        report.insert("group_fanout".into(), group);
    }

    // 3. idle connections on node 1.
    let gateway_pid = args.gateway_pid.or_else(|| {
        args.pids
            .iter()
            .find(|w| w.group() == "gateway")
            .map(|w| w.pid)
    });
    if let (true, Some(pid)) = (runs(Scenario::Idle), gateway_pid) {
        eprintln!("opening {} idle connections ...", args.idle);
        report.insert(
            "idle_connections".into(),
            idle_memory(args.nodes[0], pid, args.idle).await?,
        );
    }

    // 4. logins per second.
    if runs(Scenario::Logins) {
        eprintln!("logins for {} s ...", args.duration);
        let before = procs::snapshot(&args.pids);
        let logins = logins(&args, &prefix).await?;
        if !args.pids.is_empty() {
            let count = logins["logins"].as_u64().unwrap_or(0);
            cpu.insert(
                "logins".into(),
                procs::spent(&args.pids, &before, count, 1.0, "login (and logout)"),
            );
        }
        report.insert("logins".into(), logins);
    }

    // The ceiling: raw Redis publish → subscriber, on a single Redis;
    // before the TLS rows, whose messages the history service is still
    // storing for minutes after them.
    if args.redis.starts_with("redis+cluster://") || args.redis.contains(',') {
        report.insert(
            "redis_ceiling".into(),
            json!({"skipped": "a Redis Cluster: PUBLISH is copied to every node of a cluster, so one channel's ceiling says nothing about the sharded (SPUBLISH) path"}),
        );
    } else if args.redis != "off" {
        eprintln!("redis ceiling ...");
        let ceiling = redis_ceiling(&args.redis, args.size + 60, Duration::from_secs(3)).await?;
        report.insert(
            "redis_ceiling".into(),
            json!({"messages_per_sec": ceiling, "cross_node_ratio": saturated_per_sec.map(|ours| ours / ceiling)}),
        );
    }

    // 1 again, through TLS.
    if let (true, Some(tls), &[first, second]) = (runs(Scenario::Tls), &tls, &args.tls_nodes[..]) {
        eprintln!("one-to-one through TLS ({first} -> {second}) ...");
        let mut rows = one_to_one_rows(
            &args,
            &format!("{prefix}t"),
            &[first, second],
            Some(tls),
            4,
            &[],
            None,
        )
        .await?;
        report.insert(
            "tls_nodes".into(),
            json!([first.to_string(), second.to_string()]),
        );
        report.insert(
            "one_to_one_tls_fixed_rate".into(),
            json!({"offered_per_sec": args.rate, "result": rows.fixed.json()}),
        );
        report.insert("one_to_one_tls_saturation".into(), rows.saturated.json());
    }

    if !history_report.is_empty() {
        report.insert("history".into(), history_report.into());
    }

    if !cpu.is_empty() {
        report.insert("cpu".into(), cpu.into());
    }
    report.insert(
        "receivers".into(),
        (if args.classic {
            "classic"
        } else {
            "acknowledging"
        })
        .into(),
    );
    let report = Value::Object(report);
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join(format!("bench-{run_id}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    std::fs::write(
        args.out.join("latest.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let table = markdown(&report, &args);
    std::fs::write(args.out.join("latest.md"), &table)?;
    println!("{table}");
    eprintln!("results: {}", path.display());
    Ok(())
}

/// The history service of `--history-*` (and its pid from `--pids`).
async fn connect_history(args: &Args) -> anyhow::Result<History> {
    let redis = args
        .history_redis
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("no --history-redis"))?;
    anyhow::ensure!(
        !redis.starts_with("redis+cluster://") && !redis.contains(','),
        "--history-redis is a Redis Cluster; the history scenarios read a single Redis"
    );
    let metrics = args
        .history_metrics
        .ok_or_else(|| anyhow::anyhow!("no --history-metrics"))?;
    let pid = args
        .history_pid
        .or_else(|| {
            args.pids
                .iter()
                .find(|w| w.name == "history-service")
                .map(|w| w.pid)
        })
        .ok_or_else(|| anyhow::anyhow!("no --history-pid (nor history-service=PID in --pids)"))?;
    History::connect(
        redis,
        &args.history_prefix,
        metrics,
        pid,
        args.history_grpc.clone(),
        args.history_token_file.as_deref(),
    )
    .await
}

/// Scenario 1 in both runs, and what the watched processes spent in each.
struct OneToOneRows {
    fixed: RunResult,
    saturated: RunResult,
    cpu_fixed: Value,
    cpu_saturated: Value,
    /// With `history`: the runs with the history service stopped and what
    /// the service did; `fixed` and `saturated` are then the median runs.
    history: Option<serde_json::Map<String, Value>>,
}

/// One round of the `history` comparison (see [`one_to_one_rows`]).
struct HistoryRound {
    fixed: RunResult,
    cpu_fixed: Value,
    during_fixed: Value,
    fixed_stopped: RunResult,
    saturated_stopped: RunResult,
    drain: Value,
    saturated: RunResult,
    cpu_saturated: Value,
    during_saturation: Value,
}

/// Logged-in senders and receivers of scenario 1, reused from run to run.
struct Pairs {
    senders: Vec<(i64, Client)>,
    receiver_ids: Vec<i64>,
    samples: Arc<Mutex<Vec<Sample>>>,
    received: Arc<AtomicU64>,
}

impl Pairs {
    /// `pairs` senders and receivers, pair i's sender on `nodes[i % N]` and
    /// its receiver on `nodes[(i + 1) % N]`.
    async fn log_in(
        args: &Args,
        prefix: &str,
        nodes: &[SocketAddr],
        tls: Option<&TlsConnector>,
    ) -> anyhow::Result<Self> {
        let senders =
            logged_in_clients(&format!("{prefix}s"), args.pairs, nodes, 0, false, tls).await?;
        let receivers = logged_in_clients(
            &format!("{prefix}r"),
            args.pairs,
            nodes,
            1,
            !args.classic,
            tls,
        )
        .await?;
        let receiver_ids: Vec<i64> = receivers.iter().map(|(id, _)| *id).collect();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(AtomicU64::new(0));
        for (_, client) in receivers {
            spawn_receiver(client, !args.classic, samples.clone(), received.clone());
        }
        Ok(Self {
            senders,
            receiver_ids,
            samples,
            received,
        })
    }

    /// One run at `rate` (`None`: saturation).
    async fn run(&mut self, args: &Args, run: u32, rate: Option<u64>) -> anyhow::Result<RunResult> {
        match rate {
            Some(rate) => eprintln!("one-to-one at {rate} msg/s for {} s ...", args.duration),
            None => eprintln!("one-to-one at saturation for {} s ...", args.duration),
        }
        let senders = std::mem::take(&mut self.senders);
        let (senders, result) = one_to_one(
            senders,
            &self.receiver_ids,
            &self.samples,
            &self.received,
            run,
            rate,
            args,
        )
        .await?;
        self.senders = senders;
        Ok(result)
    }
}

/// Scenario 1: at the fixed rate (run `run`) and at saturation (`run + 1`).
/// With `history`, `--history-rounds` rounds of: fixed rate with the
/// history service running, then stopped; saturation stopped, then (after
/// it drained what piled up) running. So neither side always goes first;
/// the medians are compared.
async fn one_to_one_rows(
    args: &Args,
    prefix: &str,
    nodes: &[SocketAddr],
    tls: Option<&TlsConnector>,
    run: u32,
    watched: &[Watched],
    history: Option<&Arc<History>>,
) -> anyhow::Result<OneToOneRows> {
    let mut pairs = Pairs::log_in(args, prefix, nodes, tls).await?;
    let spent = |before: &procs::Snapshot, result: &RunResult| {
        procs::spent(watched, before, result.delivered, 1e5, "100k delivered")
    };
    let Some(history) = history else {
        let before = procs::snapshot(watched);
        let fixed = pairs.run(args, run, Some(args.rate)).await?;
        let cpu_fixed = spent(&before, &fixed);
        let before = procs::snapshot(watched);
        let saturated = pairs.run(args, run + 1, None).await?;
        let cpu_saturated = spent(&before, &saturated);
        return Ok(OneToOneRows {
            fixed,
            saturated,
            cpu_fixed,
            cpu_saturated,
            history: None,
        });
    };

    let mut rounds = Vec::new();
    for round in 1..=args.history_rounds.max(1) {
        eprintln!(
            "history round {round} of {}: service running",
            args.history_rounds.max(1)
        );
        let sampler = history.sample().await?;
        let before = procs::snapshot(watched);
        let fixed = pairs.run(args, run, Some(args.rate)).await?;
        let cpu_fixed = spent(&before, &fixed);
        let during_fixed = sampler.finish(fixed.delivered).await?;

        eprintln!("history service stopped (SIGSTOP):");
        let paused = history.pause().await?;
        let fixed_stopped = pairs
            .run(args, HISTORY_STOPPED_RUN, Some(args.rate))
            .await?;
        let saturated_stopped = pairs.run(args, HISTORY_STOPPED_RUN + 1, None).await?;
        eprintln!("history service let go on (SIGCONT); draining what piled up ...");
        let drain = paused.resume_and_drain(history).await?;

        eprintln!("history service running:");
        let sampler = history.sample().await?;
        let before = procs::snapshot(watched);
        let saturated = pairs.run(args, run + 1, None).await?;
        let cpu_saturated = spent(&before, &saturated);
        eprintln!("waiting for the history service to catch up ...");
        let during_saturation = sampler.finish(saturated.delivered).await?;
        rounds.push(HistoryRound {
            fixed,
            cpu_fixed,
            during_fixed,
            fixed_stopped,
            saturated_stopped,
            drain,
            saturated,
            cpu_saturated,
            during_saturation,
        });
    }
    Ok(history_comparison(args, rounds))
}

/// The median of each side over the rounds, and every round in the JSON.
/// The rows of the Markdown table are the median runs (by p99 at the
/// offered rate, by throughput at saturation).
fn history_comparison(args: &Args, mut rounds: Vec<HistoryRound>) -> OneToOneRows {
    let per_sec = |r: &RunResult| r.delivered as f64 / r.seconds;
    // Index of the median by `key` (the lower middle of an even count).
    let median = |keys: Vec<f64>| {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
        order[(order.len() - 1) / 2]
    };
    let p99s = |rounds: &mut [HistoryRound], stopped: bool| -> Vec<f64> {
        rounds
            .iter_mut()
            .map(|r| {
                let run = if stopped {
                    &mut r.fixed_stopped
                } else {
                    &mut r.fixed
                };
                run.latencies.percentile_ms(0.99)
            })
            .collect()
    };
    let (p99_running, p99_stopped) = (p99s(&mut rounds, false), p99s(&mut rounds, true));
    let saturation_running: Vec<f64> = rounds.iter().map(|r| per_sec(&r.saturated)).collect();
    let saturation_stopped: Vec<f64> = rounds
        .iter()
        .map(|r| per_sec(&r.saturated_stopped))
        .collect();
    let (fixed_at, fixed_stopped_at) = (median(p99_running.clone()), median(p99_stopped.clone()));
    let (saturated_at, saturated_stopped_at) = (
        median(saturation_running.clone()),
        median(saturation_stopped.clone()),
    );
    let side = |values: &[f64], at: usize| json!({"median": values[at], "rounds": values});
    let difference = |running: f64, stopped: f64| (running - stopped) / stopped * 100.0;

    let mut out = serde_json::Map::new();
    out.insert(
        "comparison".into(),
        json!({
            "rounds": rounds.len(),
            "order": "each round: fixed rate running, fixed rate stopped, saturation stopped, (drain), saturation running",
            "saturation_per_sec": {
                "running": side(&saturation_running, saturated_at),
                "stopped": side(&saturation_stopped, saturated_stopped_at),
                "difference_pct": difference(saturation_running[saturated_at], saturation_stopped[saturated_stopped_at]),
            },
            "p99_ms_at_offered_rate": {
                "offered_per_sec": args.rate,
                "running": side(&p99_running, fixed_at),
                "stopped": side(&p99_stopped, fixed_stopped_at),
                "difference_pct": difference(p99_running[fixed_at], p99_stopped[fixed_stopped_at]),
            },
            "target": "within 10 %",
        }),
    );
    out.insert(
        "one_to_one_fixed_rate_stopped".into(),
        json!({"offered_per_sec": args.rate, "result": rounds[fixed_stopped_at].fixed_stopped.json()}),
    );
    out.insert(
        "one_to_one_saturation_stopped".into(),
        rounds[saturated_stopped_at].saturated_stopped.json(),
    );
    // The lag of the median saturation run (every round's is in `rounds`).
    out.insert(
        "during_saturation".into(),
        rounds[saturated_at].during_saturation.clone(),
    );
    out.insert(
        "during_fixed_rate".into(),
        rounds[fixed_at].during_fixed.clone(),
    );
    out.insert(
        "drain_after_stopped_runs".into(),
        rounds[saturated_stopped_at].drain.clone(),
    );
    let all: Vec<Value> = rounds
        .iter_mut()
        .map(|r| {
            json!({
                "fixed_rate_running": r.fixed.json(),
                "fixed_rate_stopped": r.fixed_stopped.json(),
                "saturation_stopped": r.saturated_stopped.json(),
                "drain_after_stopped_runs": r.drain,
                "saturation_running": r.saturated.json(),
                "during_fixed_rate": r.during_fixed,
                "during_saturation": r.during_saturation,
            })
        })
        .collect();
    out.insert("rounds".into(), all.into());
    let (mut fixed, mut saturated) = (None, None);
    for (i, round) in rounds.into_iter().enumerate() {
        if i == fixed_at {
            fixed = Some((round.fixed, round.cpu_fixed));
        }
        if i == saturated_at {
            saturated = Some((round.saturated, round.cpu_saturated));
        }
    }
    let ((fixed, cpu_fixed), (saturated, cpu_saturated)) = (
        fixed.expect("the median is one of the rounds"),
        saturated.expect("the median is one of the rounds"),
    );
    OneToOneRows {
        fixed,
        saturated,
        cpu_fixed,
        cpu_saturated,
        history: Some(out),
    }
}

async fn group_fanout(args: &Args, prefix: &str) -> anyhow::Result<Value> {
    let members = args.group_members.max(2);
    let mut creator = Client::connect(args.nodes[0]).await?;
    let creator_id = creator.register(&format!("{prefix}g0"), PASSWORD).await?;
    creator.login(creator_id, PASSWORD).await?;
    creator.send(&json!({"msgid": 8, "id": creator_id, "groupname": format!("{prefix}group"), "groupdesc": "bench", "seq": 1})).await?;
    let created = creator.recv().await?;
    let group = created["groupid"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("create group: {created}"))?;
    let samples = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(AtomicU64::new(0));
    for i in 1..members {
        let node = args.nodes[i % args.nodes.len()];
        let mut setup = Client::connect(node).await?;
        let id = setup.register(&format!("{prefix}g{i}"), PASSWORD).await?;
        let mut member = Client::connect(node).await?;
        member.login(id, PASSWORD).await?;
        member
            .send(&json!({"msgid": 9, "id": id, "groupid": group, "seq": 2}))
            .await?;
        member.recv().await?;
        spawn_receiver(member, false, samples.clone(), received.clone());
    }
    let receivers = (members - 1) as u64;
    let rate = (args.rate / receivers).max(1);
    let pad = "x".repeat(args.size.saturating_sub(40));
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut seq = 0u64;
    while started.elapsed() < Duration::from_secs(args.duration) {
        ticker.tick().await;
        creator
            .queue(&serde_json::from_str(&chat_frame(
                creator_id,
                Target::Group(group),
                3,
                0,
                seq,
                &pad,
            ))?)
            .await?;
        creator.flush().await?;
        seq += 1;
    }
    drain(&received, seq * receivers).await;
    let mut result = tally(3, &samples, seq, receivers, started, Instant::now());
    Ok(json!({"members": members, "messages_per_sec_offered": rate, "result": result.json()}))
}

/// The soft RLIMIT_NOFILE of this process, as /proc reports it.
fn open_file_limit() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

async fn idle_memory(node: SocketAddr, pid: u32, count: usize) -> anyhow::Result<Value> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procs::rss_kib(pid)?;
    // Keep some descriptors for everything else this process does.
    let limit = open_file_limit();
    let requested = count;
    let count = limit
        .parse::<usize>()
        .map_or(count, |l| count.min(l.saturating_sub(512)));
    let mut open = Vec::with_capacity(count);
    let mut failed = (count < requested).then(|| format!("the open-file limit ({limit})"));
    for i in 0..count {
        // Spread over 127.0.0.x so more than one port range is available.
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i / 20_000) as u8));
        let socket = match TcpSocket::new_v4() {
            Ok(socket) => socket,
            Err(e) => {
                failed = Some(format!(
                    "{e} (this process's open-file limit: {})",
                    open_file_limit()
                ));
                break;
            }
        };
        if let Err(e) = socket.bind(SocketAddr::new(source, 0)) {
            failed = Some(e.to_string());
            break;
        }
        match socket.connect(node).await {
            Ok(stream) => open.push(stream),
            Err(e) => {
                failed = Some(format!(
                    "{e} (this process's open-file limit: {})",
                    open_file_limit()
                ));
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = procs::rss_kib(pid)?;
    let opened = open.len();
    drop(open);
    let per_connection = (after.saturating_sub(before)) as f64 * 1024.0 / opened.max(1) as f64;
    Ok(json!({
        "requested": requested,
        "opened": opened,
        "stopped_by": failed,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_connection": per_connection,
    }))
}

async fn logins(args: &Args, prefix: &str) -> anyhow::Result<Value> {
    let mut setup = Client::connect(args.nodes[0]).await?;
    let mut ids = Vec::new();
    for i in 0..args.login_clients {
        ids.push(setup.register(&format!("{prefix}l{i}"), PASSWORD).await?);
    }
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let node = args.nodes[i % args.nodes.len()];
        let (done, count, failures) = (done.clone(), count.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut client) = Client::connect(node).await else {
                return;
            };
            let mut seq = 0;
            while !done.load(Ordering::Relaxed) {
                match client.login(id, PASSWORD).await {
                    Ok(_) => count.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                };
                seq += 1;
                // Logout with seq so the next login starts after it took effect.
                if client
                    .send(&json!({"msgid": 3, "id": id, "seq": seq}))
                    .await
                    .is_err()
                    || client.recv().await.is_err()
                {
                    return;
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    done.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(json!({
        "clients": args.login_clients,
        "logins": count.load(Ordering::Relaxed),
        "failures": failures.load(Ordering::Relaxed),
        "logins_per_sec": count.load(Ordering::Relaxed) as f64 / seconds,
    }))
}

/// Sum of `used_memory` (INFO memory) over the Redis instances in `addrs`.
async fn redis_used_memory(addrs: &[SocketAddr]) -> anyhow::Result<u64> {
    let mut total = 0;
    for addr in addrs {
        let client = redis::Client::open(format!("redis://{addr}"))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?;
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no used_memory in INFO of {addr}"))?;
    }
    Ok(total)
}

/// Resident memory of every watched gateway (`gateway-*`), summed.
fn gateways_rss_kib(watched: &[Watched]) -> u64 {
    watched
        .iter()
        .filter(|w| w.group() == "gateway")
        .filter_map(|w| procs::rss_kib(w.pid).ok())
        .sum()
}

/// Scenario 5: `online_users` users log in (spread over the nodes) as
/// clients that acknowledge but never do, then each is sent
/// `inbox_entries` chats, which stay in their inboxes undelivered (a chat
/// is trimmed only once acknowledged). Reads the gateways' resident memory
/// and Redis's `used_memory` (the `--redis-info` masters; replicas hold as
/// much again) before, after the logins and after the chats.
async fn online(args: &Args, prefix: &str) -> anyhow::Result<Value> {
    let users = args.online_users;
    let settle = || tokio::time::sleep(Duration::from_secs(1));
    settle().await;
    let redis_before = redis_used_memory(&args.redis_info).await?;
    let rss_before = gateways_rss_kib(&args.pids);
    // Registering and logging in hash a password each: eight at a time.
    let workers = 8.min(users.max(1));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let nodes = args.nodes.clone();
        let prefix = format!("{prefix}o{w}_");
        let count = users / workers + usize::from(w < users % workers);
        tasks.push(tokio::spawn(async move {
            logged_in_clients(&prefix, count, &nodes, w, true, None).await
        }));
    }
    let received = Arc::new(AtomicU64::new(0));
    let mut ids = Vec::with_capacity(users);
    for task in tasks {
        for (id, client) in task.await?? {
            ids.push(id);
            let received = received.clone();
            // They never acknowledge (the entries stay), but they ping: the
            // gateway closes a silent acknowledging client after 10 s, and
            // its inbox would then move to the offline store.
            let Client {
                mut reader,
                mut writer,
            } = client;
            tokio::spawn(async move {
                let mut ping = tokio::time::interval(Duration::from_secs(4));
                loop {
                    ping.tick().await;
                    let sent = async {
                        writer.write_all(b"{\"msgid\":13}\0").await?;
                        writer.flush().await
                    };
                    if sent.await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let message: Value = serde_json::from_str(line.trim_end()).unwrap_or_default();
                    if message["msg"].is_string() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    }
    settle().await;
    let redis_logged_in = redis_used_memory(&args.redis_info).await?;
    let rss_logged_in = gateways_rss_kib(&args.pids);

    let mut sender = Client::connect(args.nodes[0]).await?;
    let sender_id = sender
        .register(&format!("{prefix}osender"), PASSWORD)
        .await?;
    sender.login(sender_id, PASSWORD).await?;
    let pad = "x".repeat(args.size.saturating_sub(40));
    let mut sent = 0u64;
    for seq in 0..args.inbox_entries as u64 {
        for (i, &to) in ids.iter().enumerate() {
            let frame = chat_frame(sender_id, Target::User(to), 5, i, seq, &pad);
            sender.writer.write_all(frame.as_bytes()).await?;
            sender.writer.write_all(&[0]).await?;
            sent += 1;
        }
        sender.flush().await?;
    }
    drain(&received, sent).await;
    settle().await;
    let redis_entries = redis_used_memory(&args.redis_info).await?;
    let rss_entries = gateways_rss_kib(&args.pids);
    let per = |a: u64, b: u64, n: u64| (b as f64 - a as f64) / n.max(1) as f64;
    let entries = received.load(Ordering::Relaxed);
    Ok(json!({
        "users": ids.len(),
        "entries_sent": sent,
        "entries_delivered_unacknowledged": entries,
        "redis_instances": args.redis_info.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "redis_used_memory": {"before": redis_before, "logged_in": redis_logged_in, "with_entries": redis_entries},
        "gateways_rss_kib": {"before": rss_before, "logged_in": rss_logged_in, "with_entries": rss_entries},
        "redis_bytes_per_online_user": per(redis_before, redis_logged_in, ids.len() as u64),
        "redis_bytes_per_inbox_entry": per(redis_logged_in, redis_entries, sent),
        "gateway_bytes_per_online_user": per(rss_before, rss_logged_in, ids.len() as u64) * 1024.0,
    }))
}

/// Raw PUBLISH → one subscriber throughput, pipelined, with payloads of the
/// size our messages have on the bus.
async fn redis_ceiling(url: &str, payload: usize, duration: Duration) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let channel = format!("bench:ceiling:{}", now_nanos());
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&channel).await?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        let mut stream = pubsub.on_message();
        while stream.next().await.is_some() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let body = "x".repeat(payload);
    let started = Instant::now();
    let mut publishers = Vec::new();
    for _ in 0..2 {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let (channel, body) = (channel.clone(), body.clone());
        publishers.push(tokio::spawn(async move {
            while started.elapsed() < duration {
                let mut pipe = redis::pipe();
                for _ in 0..100 {
                    pipe.cmd("PUBLISH").arg(&channel).arg(&body).ignore();
                }
                if pipe.query_async::<()>(&mut conn).await.is_err() {
                    break;
                }
            }
        }));
    }
    for p in publishers {
        let _ = p.await;
    }
    let mut last = received.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = received.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    reader.abort();
    Ok(last as f64 / started.elapsed().as_secs_f64())
}

fn markdown(report: &Value, args: &Args) -> String {
    let n = |v: &Value| {
        v.as_f64().map_or_else(
            || "-".to_owned(),
            |f| {
                if f >= 100.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.2}")
                }
            },
        )
    };
    let mut out = String::new();
    if !args.label.is_empty() {
        out.push_str(&format!("**{}**\n\n", args.label));
    }
    out.push_str(
        "| scenario | delivered/s | p50 ms | p90 ms | p99 ms | max ms | sent | lost |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (label, result) in [
        (
            format!("one-to-one cross-node, offered {}/s", args.rate),
            &report["one_to_one_fixed_rate"]["result"],
        ),
        (
            format!(
                "one-to-one cross-node, saturation ({} receivers)",
                report["receivers"].as_str().unwrap_or("?")
            ),
            &report["one_to_one_saturation"],
        ),
        (
            format!(
                "one-to-one cross-node, offered {}/s, history service stopped",
                args.rate
            ),
            &report["history"]["one_to_one_fixed_rate_stopped"]["result"],
        ),
        (
            "one-to-one cross-node, saturation, history service stopped".to_owned(),
            &report["history"]["one_to_one_saturation_stopped"],
        ),
        (
            format!("group fan-out, {} members", args.group_members),
            &report["group_fanout"]["result"],
        ),
        (
            format!("one-to-one cross-node over TLS, offered {}/s", args.rate),
            &report["one_to_one_tls_fixed_rate"]["result"],
        ),
        (
            "one-to-one cross-node over TLS, saturation".to_owned(),
            &report["one_to_one_tls_saturation"],
        ),
    ] {
        if result.is_null() {
            continue;
        }
        let l = &result["latency"];
        out.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} |\n",
            n(&result["delivered_per_sec"]),
            n(&l["p50_ms"]),
            n(&l["p90_ms"]),
            n(&l["p99_ms"]),
            n(&l["max_ms"]),
            result["sent"],
            result["lost"]
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "- {} nodes; pair i: sender on node i mod {0}, receiver on node i+1 mod {0}\n",
        args.nodes.len()
    ));
    if let Some(tls) = report.get("tls_nodes") {
        out.push_str(&format!(
            "- over TLS: senders through {}, receivers through {} (TLS terminated in front of each node)\n",
            tls[0].as_str().unwrap_or("?"),
            tls[1].as_str().unwrap_or("?")
        ));
    }
    if let Some(idle) = report.get("idle_connections") {
        out.push_str(&format!(
            "- idle connections on one node: {} of {} opened{}, {} bytes resident each\n",
            idle["opened"],
            idle["requested"],
            idle["stopped_by"]
                .as_str()
                .map(|s| format!(" (stopped by: {s})"))
                .unwrap_or_default(),
            n(&idle["bytes_per_connection"])
        ));
    }
    if let Some(logins) = report.get("logins") {
        out.push_str(&format!(
            "- logins: {} per second ({} clients)\n",
            n(&logins["logins_per_sec"]),
            logins["clients"]
        ));
    }
    if let Some(online) = report.get("online") {
        out.push_str(&format!(
            "- online: {} users logged in: {} bytes of Redis used_memory and {} bytes of gateway resident memory each; {} undelivered inbox entries: {} bytes of Redis used_memory each (masters only)\n",
            online["users"],
            n(&online["redis_bytes_per_online_user"]),
            n(&online["gateway_bytes_per_online_user"]),
            online["entries_sent"],
            n(&online["redis_bytes_per_inbox_entry"]),
        ));
    }
    if let Some(ceiling) = report.get("redis_ceiling") {
        match (ceiling["skipped"].as_str(), ceiling["cross_node_ratio"].as_f64()) {
            (Some(why), _) => {
                out.push_str(&format!("- raw Redis ceiling not measured: {why}\n"));
            }
            (None, Some(ratio)) => out.push_str(&format!(
                "- raw Redis publish→subscriber ceiling: {} msg/s; cross-node saturation is {:.0} % of it\n",
                n(&ceiling["messages_per_sec"]),
                ratio * 100.0
            )),
            (None, None) => out.push_str(&format!(
                "- raw Redis publish→subscriber ceiling: {} msg/s\n",
                n(&ceiling["messages_per_sec"]),
            )),
        }
    }
    if let Some(history) = report.get("history") {
        out.push_str(&history_markdown(history));
    }
    // Only runs that sample CPU time (one-to-one, logins) fill the table.
    if let Some(cpu) = report.get("cpu").filter(|cpu| {
        ["one_to_one_fixed_rate", "one_to_one_saturation", "logins"]
            .iter()
            .any(|run| !cpu[run].is_null())
    }) {
        out.push_str(&cpu_markdown(cpu));
    }
    out
}

/// The history service's rows (issue 12's targets): what it costs chat,
/// its lag under load, its ingest capacity, GetHistory on a large table.
fn history_markdown(history: &Value) -> String {
    let mut out = String::from("\nHistory service:\n\n");
    if let Some(why) = history["skipped"].as_str() {
        out.push_str(&format!("- not measured: {why}\n"));
        return out;
    }
    let f = |v: &Value, digits: usize| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |f| format!("{f:.digits$}"))
    };
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "-",
    };
    out.push_str("| history | measured | target | |\n|---|---|---|---|\n");
    // "median (round 1, round 2, ...)" of one side.
    let side = |v: &Value, digits: usize| {
        let rounds: Vec<String> = v["rounds"]
            .as_array()
            .map(|r| r.iter().map(|x| f(x, digits)).collect())
            .unwrap_or_default();
        if rounds.len() > 1 {
            format!("{} ({})", f(&v["median"], digits), rounds.join(", "))
        } else {
            f(&v["median"], digits)
        }
    };
    let c = &history["comparison"];
    if !c.is_null() {
        let rounds = c["rounds"].as_u64().unwrap_or(1);
        let s = &c["saturation_per_sec"];
        let d = s["difference_pct"].as_f64();
        out.push_str(&format!(
            "| cross-node saturation msg/s, running vs stopped{} | {} vs {} ({:+.1} %) | within 10 % | {} |\n",
            if rounds > 1 { format!(", median of {rounds} (each)") } else { String::new() },
            side(&s["running"], 0),
            side(&s["stopped"], 0),
            d.unwrap_or(f64::NAN),
            verdict(d.map(|d| d >= -10.0)),
        ));
        let p = &c["p99_ms_at_offered_rate"];
        let d = p["difference_pct"].as_f64();
        out.push_str(&format!(
            "| p99 ms at {}/s, running vs stopped{} | {} vs {} ({:+.1} %) | within 10 % | {} |\n",
            p["offered_per_sec"],
            if rounds > 1 {
                format!(", median of {rounds} (each)")
            } else {
                String::new()
            },
            side(&p["running"], 2),
            side(&p["stopped"], 2),
            d.unwrap_or(f64::NAN),
            verdict(d.map(|d| d <= 10.0)),
        ));
    }
    for (label, key) in [
        ("during the saturation run", "during_saturation"),
        ("during the offered-rate run", "during_fixed_rate"),
    ] {
        let r = &history[key];
        if r.is_null() {
            continue;
        }
        out.push_str(&format!(
            "| ingest {label}: max lag / max backlog | {} ms / {} entries (service's gauge: {} ms) | | |\n",
            f(&r["max_lag_ms"], 0),
            f(&r["max_backlog_entries"], 0),
            f(&r["max_service_lag_gauge_ms"], 0),
        ));
        out.push_str(&format!(
            "| ingest {label}: backlog at its end, 0 after | {} entries, {} s | | |\n",
            r["backlog_at_end"]["entries"],
            f(&r["caught_up_after_end_seconds"], 1),
        ));
        out.push_str(&format!(
            "| ingest {label}: stored/s during it / until caught up | {} / {} ({} delivered/s) | | |\n",
            f(&r["stored_per_sec_during_run"], 0),
            f(&r["stored_per_sec_until_caught_up"], 0),
            f(&(r["delivered"].as_f64().unwrap_or(f64::NAN) / r["run_seconds"].as_f64().unwrap_or(f64::NAN)).into(), 0),
        ));
    }
    let capacity = |label: String, d: &Value, out: &mut String| {
        let rate = d["stored_per_sec"].as_f64();
        let trimmed = d["trimmed_unread"].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "| ingest capacity: {label} | {} msg/s ({} stored in {} s{}) | ≥ 20,000 msg/s | {} |\n",
            f(&d["stored_per_sec"], 0),
            d["stored"],
            f(&d["seconds"], 1),
            if trimmed > 0 {
                format!(
                    "; {trimmed} of {} entries were trimmed unread by the gateways' MAXLEN",
                    d["backlog_entries"]
                )
            } else {
                String::new()
            },
            verdict(rate.map(|r| r >= 20_000.0)),
        ));
    };
    if !history["drain_after_stopped_runs"].is_null() {
        capacity(
            "backlog of the runs it was stopped for, drained".to_owned(),
            &history["drain_after_stopped_runs"],
            &mut out,
        );
    }
    let t = &history["table"];
    if !t.is_null() {
        capacity(
            format!("{} entries written while stopped, drained", t["rows"]),
            &t["drain"],
            &mut out,
        );
        let g = &t["get_history"];
        let p99 = g["latency"]["p99_ms"].as_f64();
        out.push_str(&format!(
            "| GetHistory({}), {} calls on {} rows ({} pages short): p50 / p99 / max | {} / {} / {} ms | p99 ≤ 5 ms | {} |\n",
            g["limit"],
            g["calls"],
            t["table_rows"],
            g["pages_shorter_than_limit"],
            f(&g["latency"]["p50_ms"], 2),
            f(&g["latency"]["p99_ms"], 2),
            f(&g["latency"]["max_ms"], 2),
            verdict(p99.map(|p| p <= 5.0)),
        ));
    }
    out
}

/// CPU and memory of the watched processes: per 100k delivered messages in
/// the one-to-one runs, per login in the logins run.
fn cpu_markdown(cpu: &Value) -> String {
    let f = |v: &Value, digits: usize| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |f| format!("{f:.digits$}"))
    };
    let mut out = format!(
        "\nCPU (clock ticks: {}/s, {}):\n\n| process | CPU s per 100k msgs, offered rate | cores busy | CPU s per 100k msgs, saturation | cores busy | CPU ms per login | RSS MiB |\n|---|---|---|---|---|---|---|\n",
        cpu["clock_ticks_per_sec"]["value"],
        cpu["clock_ticks_per_sec"]["source"].as_str().unwrap_or("?"),
    );
    let (fixed, saturated, logins) = (
        &cpu["one_to_one_fixed_rate"],
        &cpu["one_to_one_saturation"],
        &cpu["logins"],
    );
    let mut names: Vec<(String, &str)> = Vec::new();
    if let Some(watched) = cpu["watched"].as_object() {
        names.extend(watched.keys().map(|k| (k.clone(), "processes")));
    }
    for run in [fixed, saturated, logins] {
        if let Some(groups) = run["groups"].as_object() {
            for (name, g) in groups {
                let entry = (name.clone(), "groups");
                if g["processes"].as_u64().unwrap_or(0) > 1 && !names.contains(&entry) {
                    names.push(entry);
                }
            }
        }
    }
    for (name, kind) in names {
        let row = |run: &Value| run[kind][&name].clone();
        let rss = [saturated, logins, fixed]
            .iter()
            .find_map(|run| row(run)["rss_kib"].as_f64());
        let label = if kind == "groups" {
            format!("**all {name}**")
        } else {
            name.clone()
        };
        out.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {} | {} |\n",
            f(&row(fixed)["cpu_seconds_per_unit"], 3),
            f(&row(fixed)["cores_busy"], 2),
            f(&row(saturated)["cpu_seconds_per_unit"], 3),
            f(&row(saturated)["cores_busy"], 2),
            row(logins)["cpu_seconds_per_unit"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |s| format!("{:.2}", s * 1000.0)),
            rss.map_or_else(|| "-".to_owned(), |k| format!("{:.1}", k / 1024.0)),
        ));
    }
    out
}
