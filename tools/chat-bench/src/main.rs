//! `chat-bench`: measures a chat cluster on the work it exists for.
//!
//! It speaks only the classic messages (msgid 1-10) on the measured path, so
//! it can measure any server that speaks the classic protocol, given its
//! node addresses. Scenarios:
//! 1. one-to-one chat, senders on the first node and receivers on the second:
//!    delivered messages/s and end-to-end latency at a fixed offered rate and
//!    at saturation, and how many were lost (sent, never delivered);
//! 2. group chat fan-out across nodes;
//! 3. idle connections on one node: resident memory per connection;
//! 4. logins per second.
//!
//! With `--tls-nodes` (TLS-terminating proxies, one in front of each node)
//! scenario 1 runs again through TLS, as extra rows: the cost of TLS.
//!
//! The same run measures the ceiling, raw Redis PUBLISH → subscriber on this
//! machine, and reports the cross-node throughput as a ratio of it. Results
//! print as a Markdown table and are written as JSON under `--out`.

mod client;

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

use clap::Parser;
use client::Client;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt as _, net::TcpSocket};
use tokio_rustls::TlsConnector;

#[derive(Parser, Clone)]
#[command(
    name = "chat-bench",
    about = "Load generator for classic-protocol chat clusters"
)]
struct Args {
    /// Node addresses (classic TCP); senders use the first, receivers the second.
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
    /// Redis of the cluster, for the ceiling measurement ("off" to skip).
    #[arg(long, default_value = "redis://127.0.0.1:6479")]
    redis: String,
    /// Pid of the process behind the first node, for memory per connection.
    #[arg(long)]
    gateway_pid: Option<u32>,
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
    /// Where the JSON results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

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

/// Logs `count` fresh users in on `node` (through TLS with `tls`).
async fn logged_in_clients(
    prefix: &str,
    count: usize,
    node: SocketAddr,
    acks: bool,
    tls: Option<&TlsConnector>,
) -> anyhow::Result<Vec<(i64, Client)>> {
    let mut out = Vec::with_capacity(count);
    let mut setup = Client::connect_via(node, tls).await?;
    for i in 0..count {
        let id = setup.register(&format!("{prefix}{i}"), PASSWORD).await?;
        let mut client = Client::connect_via(node, tls).await?;
        client.login_as(id, PASSWORD, acks).await?;
        out.push((id, client));
    }
    Ok(out)
}

/// Reads chats from a receiver until stopped, recording samples; a
/// receiver that acknowledges does so every 100 ms.
fn spawn_receiver(mut client: Client, samples: Arc<Mutex<Vec<Sample>>>, received: Arc<AtomicU64>) {
    tokio::spawn(async move {
        let mut shown = 0u64;
        let mut acked = 0u64;
        let mut last_ack = Instant::now();
        while let Ok(message) = client.recv().await {
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
        "give two node addresses: --nodes A,B"
    );
    anyhow::ensure!(
        args.tls_nodes.is_empty() || args.tls_nodes.len() == 2,
        "give two TLS addresses, one per node: --tls-nodes A,B"
    );
    let tls = args.ca.as_deref().map(client::tls_connector).transpose()?;
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let prefix = format!("b{run_id}_");
    let mut report = serde_json::Map::new();
    report.insert(
        "nodes".into(),
        json!(
            args.nodes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        ),
    );
    report.insert("started_unix".into(), json!(run_id));
    report.insert(
        "machine".into(),
        json!({"cores": std::thread::available_parallelism().map_or(0, |n| n.get())}),
    );
    eprintln!("setting up {} pairs ...", args.pairs);

    // 1. one-to-one across nodes.
    let (mut fixed, mut saturated) =
        one_to_one_rows(&args, &prefix, [args.nodes[0], args.nodes[1]], None, 1).await?;
    report.insert(
        "one_to_one_fixed_rate".into(),
        json!({"offered_per_sec": args.rate, "result": fixed.json()}),
    );
    report.insert("one_to_one_saturation".into(), saturated.json());

    // 2. group fan-out across nodes.
    eprintln!("group fan-out with {} members ...", args.group_members);
    let group = group_fanout(&args, &prefix).await?;
    report.insert("group_fanout".into(), group);

    // 3. idle connections: memory per connection.
    if let Some(pid) = args.gateway_pid {
        eprintln!("opening {} idle connections ...", args.idle);
        report.insert(
            "idle_connections".into(),
            idle_memory(args.nodes[0], pid, args.idle).await?,
        );
    }

    // 4. logins per second.
    eprintln!("logins for {} s ...", args.duration);
    report.insert("logins".into(), logins(&args, &prefix).await?);

    // 1 again, through TLS.
    if let (Some(tls), &[first, second]) = (&tls, &args.tls_nodes[..]) {
        eprintln!("one-to-one through TLS ({first} -> {second}) ...");
        let (mut fixed, mut saturated) =
            one_to_one_rows(&args, &format!("{prefix}t"), [first, second], Some(tls), 4).await?;
        report.insert(
            "tls_nodes".into(),
            json!([first.to_string(), second.to_string()]),
        );
        report.insert(
            "one_to_one_tls_fixed_rate".into(),
            json!({"offered_per_sec": args.rate, "result": fixed.json()}),
        );
        report.insert("one_to_one_tls_saturation".into(), saturated.json());
    }

    // The ceiling: raw Redis publish → subscriber.
    if args.redis != "off" {
        eprintln!("redis ceiling ...");
        let ceiling = redis_ceiling(&args.redis, args.size + 60, Duration::from_secs(3)).await?;
        let ours = saturated.delivered as f64 / saturated.seconds;
        report.insert(
            "redis_ceiling".into(),
            json!({"messages_per_sec": ceiling, "cross_node_ratio": ours / ceiling}),
        );
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

/// Scenario 1: `pairs` senders on `nodes[0]`, their receivers on
/// `nodes[1]`, at the fixed rate (run `run`) and at saturation (`run + 1`).
async fn one_to_one_rows(
    args: &Args,
    prefix: &str,
    nodes: [SocketAddr; 2],
    tls: Option<&TlsConnector>,
    run: u32,
) -> anyhow::Result<(RunResult, RunResult)> {
    let senders =
        logged_in_clients(&format!("{prefix}s"), args.pairs, nodes[0], false, tls).await?;
    let receivers = logged_in_clients(
        &format!("{prefix}r"),
        args.pairs,
        nodes[1],
        !args.classic,
        tls,
    )
    .await?;
    let receiver_ids: Vec<i64> = receivers.iter().map(|(id, _)| *id).collect();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(AtomicU64::new(0));
    for (_, client) in receivers {
        spawn_receiver(client, samples.clone(), received.clone());
    }
    eprintln!(
        "one-to-one at {} msg/s for {} s ...",
        args.rate, args.duration
    );
    let (senders, fixed) = one_to_one(
        senders,
        &receiver_ids,
        &samples,
        &received,
        run,
        Some(args.rate),
        args,
    )
    .await?;
    eprintln!("one-to-one at saturation for {} s ...", args.duration);
    let (_, saturated) = one_to_one(
        senders,
        &receiver_ids,
        &samples,
        &received,
        run + 1,
        None,
        args,
    )
    .await?;
    Ok((fixed, saturated))
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
        spawn_receiver(member, samples.clone(), received.clone());
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

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))
}

async fn idle_memory(node: SocketAddr, pid: u32, count: usize) -> anyhow::Result<Value> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
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
    let after = rss_kib(pid)?;
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
    let mut out = String::from(
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
    out.push_str(&format!(
        "- logins: {} per second ({} clients)\n",
        n(&report["logins"]["logins_per_sec"]),
        report["logins"]["clients"]
    ));
    if let Some(ceiling) = report.get("redis_ceiling") {
        out.push_str(&format!(
            "- raw Redis publish→subscriber ceiling: {} msg/s; cross-node saturation is {:.0} % of it\n",
            n(&ceiling["messages_per_sec"]),
            ceiling["cross_node_ratio"].as_f64().unwrap_or(0.0) * 100.0
        ));
    }
    out
}
