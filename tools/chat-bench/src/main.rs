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
//! 8. `closed-loop`: one pair across nodes, the sender waiting for the
//!    receiver before each next chat: a quiet conversation's latency and
//!    rate (what the classic C++ server is compared with);
//! 5. `online` (opt-in, runs first): logged-in users and undelivered inbox
//!    entries: what each costs the gateways' resident memory and Redis's
//!    `used_memory`.
//!
//! With `--tls-nodes` (TLS-terminating proxies, one in front of each of two
//! nodes) scenario 1 runs again through TLS (`tls`), as extra rows: the cost
//! of TLS.
//!
//! With `--history-redis` (and the history service's `/metrics` and pid),
//! two more (`history/`): 6. `history`: scenario 1 runs with the history
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
//! machine (on a Redis Cluster: SPUBLISH → subscriber on every master at
//! once), and reports the cross-node throughput as a ratio of it. Results print as a Markdown table and are written as JSON
//! under `--out`.

mod client;
mod history;
mod procs;
mod redis_calls;
mod report;
mod scenarios;
mod stats;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::{Parser, ValueEnum};
use history::History;
use procs::Watched;
use report::markdown;
use scenarios::{
    ceiling::{cluster_ceiling, redis_ceiling},
    closed_loop::closed_loop,
    group::group_fanout,
    idle::idle_memory,
    logins::logins,
    one_to_one::one_to_one_rows,
    online::online,
};
use serde_json::{Value, json};

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
    /// Redis of the cluster, for the ceiling measurement ("off" to skip;
    /// `redis+cluster://HOST:PORT,...`: the sharded ceiling over every
    /// master).
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
        default_value = "closed-loop,one-to-one,group,idle,logins,tls,history,history-table"
    )]
    scenarios: Vec<Scenario>,
    /// A name for this run, put in the output (e.g. "3 shards, 2 gateways").
    #[arg(long, default_value = "")]
    label: String,
    /// Redis instances (host:port): the `online` scenario reads their INFO
    /// memory (name the masters), the one-to-one rows their INFO
    /// commandstats (name masters and replicas: Redis calls per message).
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
    /// Online friends of the user whose login and logout the `presence`
    /// scenario times.
    #[arg(long, default_value_t = 1000)]
    presence_watchers: usize,
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
    ClosedLoop,
    Presence,
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

    // 8. one pair, closed loop: before the loaded runs (nothing else in
    // flight, no backlog in the history service).
    if runs(Scenario::ClosedLoop) {
        eprintln!("one pair, closed loop, for {} s ...", args.duration);
        let result = closed_loop(&args, &prefix).await?;
        report.insert(
            "closed_loop".into(),
            take_cpu(result, &mut cpu, "closed_loop"),
        );
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
            .fill_table(args.history_rows, conversations, args.size, &args.pids)
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
        report.insert(
            "group_fanout".into(),
            take_cpu(group, &mut cpu, "group_fanout"),
        );
    }

    // A presence change told to many watchers.
    if runs(Scenario::Presence) {
        eprintln!(
            "presence: a user with {} online friends logs in and out ...",
            args.presence_watchers
        );
        report.insert(
            "presence".into(),
            scenarios::presence::presence_fanout(&args, &prefix).await?,
        );
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
    if let Some(nodes) = args.redis.strip_prefix("redis+cluster://") {
        // PUBLISH is copied to every node of a cluster: the sharded path
        // (SPUBLISH on every master at once) is the ceiling there.
        eprintln!("redis cluster ceiling ...");
        let nodes: Vec<String> = nodes.split(',').map(str::to_owned).collect();
        let ceiling = cluster_ceiling(&nodes, args.size + 60, Duration::from_secs(3)).await?;
        report.insert(
            "redis_ceiling".into(),
            json!({"messages_per_sec": ceiling, "sharded": true, "cross_node_ratio": saturated_per_sec.map(|ours| ours / ceiling)}),
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

/// A scenario's result without its `cpu` (what the watched processes spent
/// in it), which goes to the report's CPU section under `name`.
fn take_cpu(mut result: Value, cpu: &mut serde_json::Map<String, Value>, name: &str) -> Value {
    if let Some(spent) = result.as_object_mut().and_then(|r| r.remove("cpu"))
        && !spent.is_null()
    {
        cpu.insert(name.into(), spent);
    }
    result
}
