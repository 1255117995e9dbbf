//! One chaos run, start to end: the network, the stack, the users, the
//! clients; `go`; faults for SECONDS while the senders send; heal; stop
//! sending; drain; a last login of every receiver; tear down; check.
//!
//! Everything the run starts lives in its namespaces: when the run ends,
//! fails or is interrupted, the processes are killed (kill_on_drop) and the
//! namespaces deleted (the `Net` guard); a run killed with -9 leaves them
//! for the next run (or `chaos cleanup`) to remove.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::AsyncBufReadExt as _,
    process::{Child, Command},
    sync::{mpsc, watch},
    time::Instant,
};

use crate::{
    check::{self, ClientInfo, Manifest},
    client::{Kind, now_ms},
    faults::{self, Shared},
    netns::{self, Net},
    stack::{self, Backend, CORE, CTL, Settings, Stack, gateway_ip},
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// How long faults are injected while the senders send.
    #[arg(long, default_value_t = 120)]
    pub seconds: u64,
    #[arg(long, value_enum, default_value_t = Backend::Single)]
    pub backend: Backend,
    /// The fault scheduler's seed (printed; a random one when not given).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The private MariaDB's unix socket (it crosses namespaces).
    #[arg(long)]
    pub mysql_socket: PathBuf,
    /// Where the gateway and the services' binaries are.
    #[arg(long, default_value = "target/debug")]
    pub bin_dir: PathBuf,
    /// Runs go to OUT/<backend>-<time>-<pid>/.
    #[arg(long, default_value = ".stack/chaos")]
    pub out: PathBuf,
    /// Sender/receiver pairs (kinds in turn: classic that reconnects,
    /// classic that vanishes, device, WebSocket).
    #[arg(long, default_value_t = 8)]
    pub pairs: usize,
    /// Chats per second per sender.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Leaves a kind of fault out (repeatable), e.g. `redis-partition`.
    #[arg(long)]
    pub without: Vec<String>,
}

const RECEIVER_KINDS: [Kind; 4] = [
    Kind::ClassicReconnect,
    Kind::ClassicVanish,
    Kind::Device,
    Kind::Websocket,
];
const PASSWORD: &str = "chaos-pw";
/// How long receivers get to receive what is owed after the senders stop
/// (ends early once every accepted chat arrived).
const DRAIN: Duration = Duration::from_secs(40);
/// Setup, healing, draining and the last logins together take at most
/// this much more than SECONDS (they take about a minute).
const OVERHEAD_LIMIT_SECS: u64 = 600;

struct ClientProc {
    info: ClientInfo,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl ClientProc {
    async fn wait_for(&mut self, line: &str, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(l)) if l == line => return Ok(()),
                Ok(Some(_)) => {}
                Ok(None) => bail!("{} exited before saying {line}", self.info.name),
                Err(_) => bail!("{} did not say {line} within {patience:?}", self.info.name),
            }
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The run; returns whether the checker passed. Prints the summary line.
pub async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let names = faults::kind_names();
    if let Some(unknown) = args.without.iter().find(|w| !names.contains(&w.as_str())) {
        anyhow::bail!(
            "--without {unknown}: no such fault (faults: {})",
            names.join(", ")
        );
    }
    if !args.without.is_empty() {
        println!("left out of this run: {}", args.without.join(", "));
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let dir = args.out.join(format!(
        "{}-{}-{}",
        args.backend.name(),
        now_ms() / 1000,
        std::process::id()
    ));
    std::fs::create_dir_all(dir.join("clients"))?;
    let dir = dir.canonicalize()?;
    println!(
        "chaos: backend={} seconds={} seed={seed} (reproduce with --seed {seed}); run directory {}",
        args.backend.name(),
        args.seconds,
        dir.display()
    );
    // Every wait inside is bounded; this bounds the whole as well.
    let limit = Duration::from_secs(args.seconds + OVERHEAD_LIMIT_SECS);
    let result = tokio::select! {
        r = tokio::time::timeout(limit, body(&args, seed, &dir)) => {
            r.unwrap_or_else(|_| Err(anyhow::anyhow!("the run did not end within {limit:?}")))
        }
        _ = interrupted() => Err(anyhow::anyhow!("interrupted")),
    };
    // The body's processes and namespaces are gone by now (dropped);
    // anything a fault task still held goes with the runtime.
    dump_offline_store(&args.mysql_socket, &db_prefix(), &dir);
    drop_databases(&args.mysql_socket, &db_prefix());
    let could_not_run = match &result {
        Ok(()) => None,
        Err(e) => Some(format!("{e:#}")),
    };
    if dir.join("manifest.json").exists() {
        let outcome = check::check(&dir, could_not_run.as_deref())?;
        println!("logs and client histories: {}", dir.display());
        println!("{}", outcome.summary);
        Ok(outcome.pass)
    } else {
        println!("logs: {}", dir.display());
        println!(
            "chaos backend={} seconds={} seed={seed} -> COULD NOT RUN: {}",
            args.backend.name(),
            args.seconds,
            could_not_run.unwrap_or_default()
        );
        Ok(false)
    }
}

async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

fn db_prefix() -> String {
    format!("chaos_{}", std::process::id())
}

/// What the offline service still holds at the end, into
/// `offline_messages.tsv` (the checker says which lost chats are there).
fn dump_offline_store(socket: &Path, prefix: &str, dir: &Path) {
    let Ok(out) = std::fs::File::create(dir.join("offline_messages.tsv")) else {
        return;
    };
    let sql = format!(
        "SELECT COUNT(*) AS rows_left FROM {prefix}_offline.offline_messages; SELECT receiver_id, position, sender_id, client_msg_id, stored_at_ms, payload FROM {prefix}_offline.offline_messages ORDER BY receiver_id, position"
    );
    let _ = std::process::Command::new("mariadb")
        .args(["--no-defaults", "-uroot", "--batch", "-S"])
        .arg(socket)
        .args(["-e", &sql])
        .stdout(out)
        .stderr(Stdio::null())
        .status();
}

/// Every inbox Redis still holds at the end (`LRANGE` of each `*:in` key
/// on every node that answers), into `redis_inboxes.txt`.
async fn dump_redis_inboxes(shared: &Shared, dir: &Path) {
    let backend = shared.stack.lock().await.backend;
    let mut text = String::new();
    for (host, ip) in backend.redis_hosts() {
        let Some(keys) = stack::redis_cli(&shared.ctl, ip, &["--scan", "--pattern", "*:in"]).await
        else {
            text.push_str(&format!("==== {host}: no answer\n"));
            continue;
        };
        let size = stack::redis_cli(&shared.ctl, ip, &["dbsize"])
            .await
            .unwrap_or_default();
        text.push_str(&format!(
            "==== {host}: {} keys, {} inboxes\n",
            size.trim(),
            keys.lines().filter(|k| !k.is_empty()).count()
        ));
        for key in keys.lines().filter(|k| !k.is_empty()) {
            if let Some(entries) =
                stack::redis_cli(&shared.ctl, ip, &["lrange", key, "0", "-1"]).await
            {
                text.push_str(&format!("==== {host} {key}\n{entries}"));
            }
        }
    }
    let _ = std::fs::write(dir.join("redis_inboxes.txt"), text);
}

fn drop_databases(socket: &Path, prefix: &str) {
    let sql = ["user", "offline", "history"]
        .iter()
        .map(|d| format!("DROP DATABASE IF EXISTS {prefix}_{d};"))
        .collect::<String>();
    let _ = std::process::Command::new("mariadb")
        .args(["--no-defaults", "-uroot", "-S"])
        .arg(socket)
        .args(["-e", &sql])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

async fn body(args: &RunArgs, seed: u64, dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(is_root(), "needs root (network namespaces)");
    anyhow::ensure!(
        args.mysql_socket.exists(),
        "no MariaDB socket at {}",
        args.mysql_socket.display()
    );
    let bin_dir = args
        .bin_dir
        .canonicalize()
        .with_context(|| format!("{}", args.bin_dir.display()))?;
    for bin in [
        "gateway",
        "user-service",
        "offline-service",
        "history-service",
    ] {
        anyhow::ensure!(
            bin_dir.join(bin).exists(),
            "{} is missing: build it first",
            bin_dir.join(bin).display()
        );
    }
    let stale = netns::remove_stale();
    if stale > 0 {
        println!("removed {stale} namespaces of an earlier run that did not clean up");
    }
    let backend = args.backend;
    let gateways = backend.gateways();
    let pairs = args.pairs.max(1);

    // ---- the network
    let mut hosts: Vec<(String, Ipv4Addr)> = backend.redis_hosts();
    hosts.push(("core".into(), CORE));
    for i in 0..gateways {
        hosts.push((format!("gw{}", i + 1), gateway_ip(i)));
    }
    hosts.push(("ctl".into(), CTL));
    for i in 0..pairs {
        let i8 = u8::try_from(i).context("too many pairs")?;
        hosts.push((format!("s{}", i + 1), Ipv4Addr::new(198, 18, 0, 100 + i8)));
        hosts.push((format!("r{}", i + 1), Ipv4Addr::new(198, 18, 0, 160 + i8)));
    }
    let net = Net::create(&hosts)?;
    let ctl = net.ns("ctl");
    let settings = Settings {
        backend,
        dir: dir.to_path_buf(),
        bin_dir,
        mysql_socket: args.mysql_socket.clone(),
        db_prefix: db_prefix(),
        token: format!("chaos-internal-token-{seed:x}-{}", std::process::id()),
    };
    let mut stack = Stack::new(net, &settings)?;

    // ---- the stack
    println!(
        "starting redis ({}), the services and {gateways} gateways",
        backend.name()
    );
    stack::start_redis(&mut stack, &ctl, dir).await?;
    stack::start_services(&mut stack, &ctl).await?;
    for i in 0..gateways {
        stack.gateways[i].spawn()?;
    }
    for i in 0..gateways {
        anyhow::ensure!(
            stack::gateway_healthy(&ctl, i, Duration::from_secs(90)).await,
            "gateway-{} not healthy (see {})",
            i + 1,
            dir.join("logs").display()
        );
    }

    // ---- users and clients
    let exe = std::env::current_exe()?;
    let out = Command::new("ip")
        .args(["netns", "exec", &stack.net.ns("ctl")])
        .arg(&exe)
        .args([
            "register",
            "--gateway",
            &gateway_ip(0).to_string(),
            "--prefix",
        ])
        .arg(format!("chaos{}", std::process::id()))
        .args(["--count", &(2 * pairs).to_string(), "--password", PASSWORD])
        .stdin(Stdio::null())
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "registering users failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    #[derive(serde::Deserialize)]
    struct Registered {
        ids: Vec<i64>,
        groups: Vec<i64>,
    }
    let Registered { ids, groups } =
        serde_json::from_slice(&out.stdout).context("register's output")?;
    anyhow::ensure!(ids.len() == 2 * pairs, "registered {} users", ids.len());
    anyhow::ensure!(groups.len() == pairs, "created {} groups", groups.len());

    let mut infos = Vec::new();
    for i in 0..pairs {
        // Pairs 2k and 2k+1 share the sender's node; the even one's
        // receiver is on the next node, the odd one's on the same.
        let sender_gw = (i / 2) % gateways;
        let receiver_gw = if i % 2 == 0 {
            (sender_gw + 1) % gateways
        } else {
            sender_gw
        };
        let order = |home: usize| -> Vec<String> {
            (0..gateways)
                .map(|k| gateway_ip((home + k) % gateways).to_string())
                .collect()
        };
        let kind = RECEIVER_KINDS[(i / 2) % RECEIVER_KINDS.len()];
        infos.push(ClientInfo {
            name: format!("r{}", i + 1),
            kind,
            user: ids[2 * i + 1],
            to: 0,
            group: 0,
            gateways: order(receiver_gw),
        });
        infos.push(ClientInfo {
            name: format!("s{}", i + 1),
            kind: Kind::Sender,
            user: ids[2 * i],
            to: ids[2 * i + 1],
            group: groups[i],
            gateways: order(sender_gw),
        });
    }
    let mut clients: Vec<ClientProc> = Vec::new();
    let mut stdins = HashMap::new();
    for info in &infos {
        let (proc_, stdin) = spawn_client(&stack.net, &exe, info, args.rate, dir)?;
        stdins.insert(info.name.clone(), stdin);
        clients.push(proc_);
    }
    for c in clients.iter_mut() {
        c.wait_for("ready", Duration::from_secs(60)).await?;
    }
    for info in &infos {
        println!(
            "  {:<3} {:<17} user {:<4} {} {}",
            info.name,
            format!("{:?}", info.kind),
            info.user,
            if info.kind == Kind::Sender {
                format!("-> user {:<4}", info.to)
            } else {
                "          ".into()
            },
            info.gateways.first().map(String::as_str).unwrap_or("")
        );
    }

    // ---- go
    let go_ms = now_ms();
    let mut manifest = Manifest {
        backend: backend.name().into(),
        seconds: args.seconds,
        seed,
        started_ms: go_ms,
        go_ms,
        stop_ms: 0,
        faults: 0,
        clients: infos.clone(),
    };
    write_manifest(dir, &manifest)?;
    let vanishers: Vec<String> = infos
        .iter()
        .filter(|c| c.kind == Kind::ClassicVanish)
        .map(|c| c.name.clone())
        .collect();
    let faults_log = std::fs::File::create(dir.join("faults.jsonl"))?;
    let mut shared = Shared::new(
        stack,
        ctl.clone(),
        vanishers,
        stdins,
        faults_log,
        Some(dir.join("logs/ss.log")),
        go_ms,
    );
    shared.without = args.without.clone();
    let shared = Arc::new(shared);
    for c in infos.iter().filter(|c| c.kind == Kind::Sender) {
        shared.tell(&c.name, "go").await;
    }
    println!("sending, with faults, for {} s", args.seconds);
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let (end_tx, end_rx) = watch::channel(false);
    let scheduler = tokio::spawn(faults::schedule(Arc::clone(&shared), seed, until, end_rx));
    let supervisor = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move { shared.supervise().await })
    };
    let snapshots = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                shared.snapshot_sockets("every 5 s").await;
            }
        })
    };
    tokio::time::sleep_until(until).await;
    let _ = end_tx.send(true);
    println!("time is up: healing every fault");
    let count = match tokio::time::timeout(Duration::from_secs(180), scheduler).await {
        Ok(Ok(n)) => n,
        _ => bail!("the faults did not heal within 180 s"),
    };
    manifest.faults = count;
    snapshots.abort();
    supervisor.abort();
    heal_everything(&shared).await?;

    // ---- stop, drain, last login
    for c in infos.iter().filter(|c| c.kind == Kind::Sender) {
        shared.tell(&c.name, "stop").await;
    }
    for c in clients.iter_mut().filter(|c| c.info.kind == Kind::Sender) {
        c.wait_for("stopped", Duration::from_secs(60)).await?;
    }
    manifest.stop_ms = now_ms();
    write_manifest(dir, &manifest)?;
    let drain_started = Instant::now();
    loop {
        let (accepted, missing) = check::missing(dir)?;
        if missing == 0 || drain_started.elapsed() >= DRAIN {
            println!(
                "drained for {:.1} s: {missing} of {accepted} accepted chats not received yet",
                drain_started.elapsed().as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for c in infos.iter().filter(|c| c.kind != Kind::Sender) {
        shared.tell(&c.name, "final").await;
    }
    for c in clients.iter_mut().filter(|c| c.info.kind != Kind::Sender) {
        if let Err(e) = c.wait_for("final-done", Duration::from_secs(90)).await {
            println!("  {e:#}");
        }
    }

    // ---- tear down
    shared.stdins.lock().await.clear();
    for c in &mut clients {
        if tokio::time::timeout(Duration::from_secs(5), c.child.wait())
            .await
            .is_err()
        {
            let _ = c.child.kill().await;
        }
    }
    dump_redis_inboxes(&shared, dir).await;
    let mut stack = shared.stack.lock().await;
    stack.stop_all().await;
    stack.net.destroy();
    Ok(())
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(manifest)?,
    )?;
    Ok(())
}

fn spawn_client(
    net: &Net,
    exe: &Path,
    info: &ClientInfo,
    rate: f64,
    dir: &Path,
) -> anyhow::Result<(ClientProc, tokio::process::ChildStdin)> {
    let stderr = std::fs::File::create(dir.join("clients").join(format!("{}.stderr", info.name)))?;
    let kind = match info.kind {
        Kind::Sender => "sender",
        Kind::ClassicReconnect => "classic-reconnect",
        Kind::ClassicVanish => "classic-vanish",
        Kind::Device => "device",
        Kind::Websocket => "websocket",
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", &net.ns(&info.name)])
        .arg(exe)
        .args([
            "client",
            "--name",
            &info.name,
            "--kind",
            kind,
            "--user",
            &info.user.to_string(),
        ])
        .args([
            "--password",
            PASSWORD,
            "--to",
            &info.to.to_string(),
            "--group",
            &info.group.to_string(),
            "--rate",
            &rate.to_string(),
        ])
        .args(["--gateways", &info.gateways.join(",")])
        .arg("--log")
        .arg(dir.join("clients").join(format!("{}.jsonl", info.name)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start client {}", info.name))?;
    let stdin = child.stdin.take().context("client stdin")?;
    let stdout = child.stdout.take().context("client stdout")?;
    let (tx, lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((
        ClientProc {
            info: info.clone(),
            child,
            lines,
        },
        stdin,
    ))
}

/// After the last fault: every link up, every process running and healthy
/// (a fault whose heal failed is healed here, or the run cannot go on).
async fn heal_everything(shared: &Shared) -> anyhow::Result<()> {
    let ctl = shared.ctl.clone();
    let (backend, gateways) = {
        let mut stack = shared.stack.lock().await;
        stack.net.all_up();
        for p in stack.redis.iter_mut() {
            if p.exited() {
                p.spawn()?;
            }
        }
        let history = stack.service("history-service");
        if history.exited() {
            history.spawn()?;
        }
        for g in stack.gateways.iter_mut() {
            let _ = g.signal("CONT");
            if g.exited() {
                g.spawn()?;
            }
        }
        (stack.backend, stack.gateways.len())
    };
    let ips: Vec<Ipv4Addr> = backend.redis_hosts().iter().map(|(_, ip)| *ip).collect();
    if backend == Backend::Cluster {
        anyhow::ensure!(
            stack::eventually(Duration::from_secs(60), || {
                let ips = ips.clone();
                let ctl = ctl.clone();
                async move { stack::cluster_ready(&ctl, &ips).await.is_ok() }
            })
            .await,
            "the redis cluster is not whole after the faults"
        );
    }
    for i in 0..gateways {
        shared.keep_gateway_up(i, Duration::from_secs(60)).await?;
    }
    Ok(())
}
