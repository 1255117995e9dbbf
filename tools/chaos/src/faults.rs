//! The fault scheduler: random faults, one or two at a time, each lasting
//! a few seconds to about 20 s, drawn from a seeded RNG. Each fault is a
//! task: inject, wait its time (or until the run ends), heal, wait until
//! the part is healthy again. At least one gateway is always up: a gateway
//! fault starts only while every other gateway but this one is up.
//!
//! The seed fixes the draws; which fault can start at a given moment also
//! depends on how fast earlier ones healed, so a rerun with the same seed
//! makes the same choices while timings agree.

use std::{
    collections::{HashMap, HashSet},
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use serde_json::json;
use tokio::{io::AsyncWriteExt as _, process::ChildStdin, sync::watch, time::Instant};

use crate::{
    client::now_ms,
    stack::{self, Backend, Stack},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    GatewayKill,
    GatewayTerm,
    GatewayStop,
    GatewayCut,
    RedisKill,
    RedisCut,
    MasterKill,
    HistoryKill,
    ClientVanish,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::GatewayKill => "gateway-kill-9",
            Self::GatewayTerm => "gateway-sigterm",
            Self::GatewayStop => "gateway-sigstop",
            Self::GatewayCut => "gateway-partition",
            Self::RedisKill => "redis-kill-9",
            Self::RedisCut => "redis-partition",
            Self::MasterKill => "redis-master-kill-9",
            Self::HistoryKill => "history-kill-9",
            Self::ClientVanish => "client-vanish",
        }
    }
}

/// The names `--without` takes.
pub fn kind_names() -> Vec<&'static str> {
    ALL.iter().map(|k| k.name()).collect()
}

const ALL: [Kind; 9] = [
    Kind::GatewayKill,
    Kind::GatewayTerm,
    Kind::GatewayStop,
    Kind::GatewayCut,
    Kind::RedisKill,
    Kind::RedisCut,
    Kind::MasterKill,
    Kind::HistoryKill,
    Kind::ClientVanish,
];

/// What the scheduler and its fault tasks share with the run.
pub struct Shared {
    pub stack: tokio::sync::Mutex<Stack>,
    /// The namespace of the run's probe host.
    pub ctl: String,
    /// Receivers of kind (b): their host names (= client names).
    pub vanishers: Vec<String>,
    pub stdins: tokio::sync::Mutex<HashMap<String, ChildStdin>>,
    /// Targets with a fault on them ("gateway-1", "redis", "history", "r3").
    busy: std::sync::Mutex<HashSet<String>>,
    active: AtomicUsize,
    log: std::sync::Mutex<std::fs::File>,
    ss_log: Option<std::path::PathBuf>,
    pub started_ms: u64,
    /// Fault kinds left out of this run (`--without`), by name.
    pub without: Vec<String>,
}

impl Shared {
    pub fn new(
        stack: Stack,
        ctl: String,
        vanishers: Vec<String>,
        stdins: HashMap<String, ChildStdin>,
        log: std::fs::File,
        ss_log: Option<std::path::PathBuf>,
        started_ms: u64,
    ) -> Self {
        Self {
            stack: tokio::sync::Mutex::new(stack),
            ctl,
            vanishers,
            stdins: tokio::sync::Mutex::new(stdins),
            busy: std::sync::Mutex::new(HashSet::new()),
            active: AtomicUsize::new(0),
            log: std::sync::Mutex::new(log),
            ss_log,
            started_ms,
            without: Vec::new(),
        }
    }

    /// Writes a line to a client's stdin.
    pub async fn tell(&self, client: &str, command: &str) {
        let mut stdins = self.stdins.lock().await;
        if let Some(stdin) = stdins.get_mut(client) {
            let _ = stdin.write_all(format!("{command}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }

    fn busy(&self) -> HashSet<String> {
        self.busy.lock().map(|b| b.clone()).unwrap_or_default()
    }

    fn set_busy(&self, target: &str, on: bool) {
        if let Ok(mut busy) = self.busy.lock() {
            if on {
                busy.insert(target.to_owned());
            } else {
                busy.remove(target);
            }
        }
    }

    /// Prints a fault's line (the time is the event's own, `t` or `heal`)
    /// and keeps the event in `faults.jsonl`.
    fn record(&self, event: serde_json::Value) {
        let at = if event["phase"] == "start" {
            &event["t"]
        } else {
            &event["heal"]
        };
        let rel = (at.as_u64().unwrap_or(0).saturating_sub(self.started_ms)) as f64 / 1000.0;
        let extra = match event["phase"].as_str() {
            Some("start") => format!(
                "for {:.1} s",
                event["planned_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
            ),
            _ => format!(
                "healed (healthy {:.1} s later)",
                (event["healthy"].as_u64().unwrap_or(0)).saturating_sub(at.as_u64().unwrap_or(0))
                    as f64
                    / 1000.0
            ),
        };
        let error = event["error"]
            .as_str()
            .map(|e| format!(" ERROR: {e}"))
            .unwrap_or_default();
        println!(
            "  [{rel:6.1} s] fault #{} {} {} {extra}{error}",
            event["fault"],
            event["kind"].as_str().unwrap_or(""),
            event["target"].as_str().unwrap_or("")
        );
        if let Ok(mut log) = self.log.lock() {
            let _ = writeln!(log, "{event}");
        }
    }

    /// What the gateways' TCP stacks hold (`ss -tnoi` in each gateway's
    /// namespace) into `logs/ss.log`: the evidence for a connection that
    /// stays open, retransmits, or lingers after a fault.
    pub async fn snapshot_sockets(&self, why: &str) {
        let namespaces: Vec<(String, String)> = {
            let stack = self.stack.lock().await;
            stack
                .gateways
                .iter()
                .map(|g| (g.name.clone(), stack.net.ns(&g.host)))
                .collect()
        };
        let mut text = format!("==== {} ({why})\n", now_ms());
        for (name, ns) in namespaces {
            let out = tokio::process::Command::new("ip")
                .args(["netns", "exec", &ns, "ss", "-tnoi", "state", "connected"])
                .output()
                .await;
            if let Ok(out) = out {
                text.push_str(&format!(
                    "--- {name}\n{}",
                    String::from_utf8_lossy(&out.stdout)
                ));
            }
        }
        if let Some(path) = &self.ss_log
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        {
            let _ = f.write_all(text.as_bytes());
        }
    }

    /// Waits until gateway `i` is healthy, starting it again whenever it
    /// exits meanwhile (a gateway that cannot reach Redis at start exits;
    /// a supervisor would start it again, and so does this).
    pub async fn keep_gateway_up(&self, i: usize, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            {
                let mut stack = self.stack.lock().await;
                let gateway = &mut stack.gateways[i];
                if gateway.exited() {
                    let name = gateway.name.clone();
                    gateway.spawn()?;
                    self.note_exit(&name, "exited while coming up; started again");
                }
            }
            if stack::probe(&self.ctl, stack::gateway_health(i), Some("/healthz")).await {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "gateway-{} not healthy within {patience:?}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A process that exited when no fault was on it: printed and kept in
    /// `logs/exits.log` (the checker shows them).
    pub fn note_exit(&self, name: &str, what: &str) {
        let rel = (now_ms().saturating_sub(self.started_ms)) as f64 / 1000.0;
        println!("  [{rel:6.1} s] {name} {what}");
        if let Some(dir) = self.ss_log.as_ref().and_then(|p| p.parent())
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("exits.log"))
        {
            let _ = writeln!(f, "{rel:.1} s: {name} {what}");
        }
    }

    /// Every second, starts again a process that exited with no fault on
    /// it (and says so): the run goes on as under a supervisor.
    pub async fn supervise(&self) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let busy = self.busy();
            let mut stack = self.stack.lock().await;
            let redis_busy = busy.contains("redis");
            let mut exited = Vec::new();
            for (i, g) in stack.gateways.iter_mut().enumerate() {
                if !busy.contains(&format!("gateway-{}", i + 1)) && g.exited() {
                    exited.push(g.name.clone());
                    let _ = g.spawn();
                }
            }
            for p in stack.services.iter_mut() {
                let key = if p.name == "history-service" {
                    "history"
                } else {
                    ""
                };
                if !busy.contains(key) && p.exited() {
                    exited.push(p.name.clone());
                    let _ = p.spawn();
                }
            }
            if !redis_busy {
                for p in stack.redis.iter_mut() {
                    if p.exited() {
                        exited.push(p.name.clone());
                        let _ = p.spawn();
                    }
                }
            }
            drop(stack);
            for name in exited {
                self.note_exit(&name, "exited with no fault on it; started again");
            }
        }
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

struct Fault {
    id: usize,
    kind: Kind,
    target: String,
    duration: Duration,
}

/// Starts faults until `until`, then lets the running ones heal (at once,
/// when `end` turns true). Returns how many faults were started.
pub async fn schedule(
    shared: Arc<Shared>,
    seed: u64,
    until: Instant,
    end: watch::Receiver<bool>,
) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut count = 0usize;
    let mut tasks = Vec::new();
    let mut next = Instant::now() + Duration::from_millis(rng.random_range(1000..3000));
    while Instant::now() < until {
        tokio::time::sleep_until(next.min(until)).await;
        if Instant::now() >= until {
            break;
        }
        let concurrency = if rng.random_bool(0.5) { 1 } else { 2 };
        if shared.active() < concurrency
            && let Some(fault) = pick(&shared, &mut rng, count + 1).await
        {
            count += 1;
            shared.set_busy(busy_key(&fault.target), true);
            shared.active.fetch_add(1, Ordering::SeqCst);
            let shared = Arc::clone(&shared);
            let end = end.clone();
            tasks.push(tokio::spawn(async move {
                run_fault(&shared, fault, end).await;
                shared.active.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        next = Instant::now() + Duration::from_millis(rng.random_range(1500..5000));
    }
    for task in tasks {
        let _ = task.await;
    }
    count
}

/// A fault that may start now, or None.
async fn pick(shared: &Shared, rng: &mut StdRng, id: usize) -> Option<Fault> {
    let busy = shared.busy();
    let (backend, gateways) = {
        let stack = shared.stack.lock().await;
        (stack.backend, stack.gateways.len())
    };
    let gateways_down = (1..=gateways)
        .filter(|i| busy.contains(&format!("gateway-{i}")))
        .count();
    let redis_free = !busy.contains("redis");
    // A cluster fault only on a cluster that is whole (a second one before
    // the first healed could take a shard's last copy or the majority).
    let cluster_whole = backend == Backend::Single || {
        let ips: Vec<_> = backend.redis_hosts().iter().map(|(_, ip)| *ip).collect();
        redis_free && stack::cluster_ready(&shared.ctl, &ips).await.is_ok()
    };
    let free_vanishers: Vec<&String> = shared
        .vanishers
        .iter()
        .filter(|v| !busy.contains(*v))
        .collect();
    let possible: Vec<Kind> = ALL
        .iter()
        .copied()
        .filter(|kind| !shared.without.iter().any(|w| w == kind.name()))
        .filter(|kind| match kind {
            Kind::GatewayKill | Kind::GatewayTerm | Kind::GatewayStop | Kind::GatewayCut => {
                gateways_down + 1 < gateways
            }
            Kind::RedisKill => backend == Backend::Single && redis_free,
            Kind::MasterKill => backend == Backend::Cluster && redis_free && cluster_whole,
            Kind::RedisCut => redis_free && cluster_whole,
            Kind::HistoryKill => !busy.contains("history"),
            Kind::ClientVanish => !free_vanishers.is_empty(),
        })
        .collect();
    if possible.is_empty() {
        return None;
    }
    let kind = possible[rng.random_range(0..possible.len())];
    let secs = |rng: &mut StdRng, lo: u64, hi: u64| {
        Duration::from_millis(rng.random_range(lo * 1000..=hi * 1000))
    };
    let (target, duration) = match kind {
        Kind::GatewayKill | Kind::GatewayTerm | Kind::GatewayStop | Kind::GatewayCut => {
            let up: Vec<usize> = (1..=gateways)
                .filter(|i| !busy.contains(&format!("gateway-{i}")))
                .collect();
            let i = up[rng.random_range(0..up.len())];
            let duration = match kind {
                Kind::GatewayStop => secs(rng, 12, 20),
                Kind::GatewayCut => secs(rng, 5, 20),
                _ => secs(rng, 1, 10),
            };
            (format!("gateway-{i}"), duration)
        }
        Kind::RedisKill | Kind::MasterKill | Kind::RedisCut => {
            ("redis".to_owned(), secs(rng, 3, 15))
        }
        Kind::HistoryKill => ("history".to_owned(), secs(rng, 2, 15)),
        Kind::ClientVanish => {
            let v = free_vanishers[rng.random_range(0..free_vanishers.len())].clone();
            (v, secs(rng, 5, 20))
        }
    };
    // Which node a Redis fault hits is drawn here too (from the live map).
    let target = match kind {
        Kind::MasterKill => {
            let ctl = &shared.ctl;
            let first = backend.redis_hosts()[0].1;
            let mut masters = stack::cluster_masters(ctl, first).await;
            masters.sort();
            if masters.is_empty() {
                return None;
            }
            let ip = masters[rng.random_range(0..masters.len())];
            let host = backend.redis_hosts().into_iter().find(|(_, a)| *a == ip)?.0;
            format!("redis:{host}")
        }
        Kind::RedisCut => {
            let hosts = backend.redis_hosts();
            format!("redis:{}", hosts[rng.random_range(0..hosts.len())].0)
        }
        Kind::RedisKill => "redis:redis".to_owned(),
        _ => target,
    };
    Some(Fault {
        id,
        kind,
        target,
        duration,
    })
}

/// The busy key of a target ("redis:redis3" → "redis").
fn busy_key(target: &str) -> &str {
    target.split(':').next().unwrap_or(target)
}

async fn run_fault(shared: &Shared, fault: Fault, mut end: watch::Receiver<bool>) {
    let key = busy_key(&fault.target).to_owned();
    let node = fault.target.split(':').nth(1).unwrap_or("").to_owned();
    let start = now_ms();
    let injected = inject(shared, &fault, &node).await;
    shared.record(json!({
        "fault": fault.id, "kind": fault.kind.name(), "target": fault.target, "phase": "start",
        "t": start, "planned_ms": fault.duration.as_millis() as u64, "ok": injected.is_ok(),
        "error": injected.as_ref().err().map(|e| format!("{e:#}")),
    }));
    if !*end.borrow() {
        tokio::select! {
            () = tokio::time::sleep(fault.duration) => {}
            _ = end.wait_for(|e| *e) => {}
        }
    }
    shared
        .snapshot_sockets(&format!(
            "fault #{} {} {} before healing",
            fault.id,
            fault.kind.name(),
            fault.target
        ))
        .await;
    let heal_at = now_ms();
    let healed = heal(shared, &fault, &node).await;
    shared
        .snapshot_sockets(&format!(
            "fault #{} {} {} healed",
            fault.id,
            fault.kind.name(),
            fault.target
        ))
        .await;
    shared.record(json!({
        "fault": fault.id, "kind": fault.kind.name(), "target": fault.target, "phase": "end",
        "t": start, "heal": heal_at, "healthy": now_ms(), "ok": healed.is_ok(),
        "error": healed.as_ref().err().map(|e| format!("{e:#}")),
    }));
    shared.set_busy(&key, false);
}

fn gateway_index(target: &str) -> usize {
    target
        .strip_prefix("gateway-")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1)
        - 1
}

async fn inject(shared: &Shared, fault: &Fault, node: &str) -> anyhow::Result<()> {
    match fault.kind {
        Kind::GatewayKill => {
            let mut stack = shared.stack.lock().await;
            stack.gateways[gateway_index(&fault.target)].kill().await;
        }
        Kind::GatewayTerm => {
            // Waits (lock released) for the drain: the other faults go on.
            let i = {
                let stack = shared.stack.lock().await;
                let i = gateway_index(&fault.target);
                stack.gateways[i].signal("TERM")?;
                i
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut stack = shared.stack.lock().await;
                if stack.gateways[i].exited() {
                    break;
                }
                if Instant::now() > deadline {
                    stack.gateways[i].kill().await;
                    anyhow::bail!("did not exit within 15 s of SIGTERM; killed");
                }
            }
        }
        Kind::GatewayStop => {
            let stack = shared.stack.lock().await;
            stack.gateways[gateway_index(&fault.target)].signal("STOP")?;
        }
        Kind::GatewayCut => {
            let stack = shared.stack.lock().await;
            let host = stack.gateways[gateway_index(&fault.target)].host.clone();
            stack.net.set_link(&host, false)?;
        }
        Kind::RedisKill | Kind::MasterKill => {
            let mut stack = shared.stack.lock().await;
            let p = stack
                .redis
                .iter_mut()
                .find(|p| p.host == node)
                .ok_or_else(|| anyhow::anyhow!("no redis {node}"))?;
            p.kill().await;
        }
        Kind::RedisCut => {
            let stack = shared.stack.lock().await;
            stack.net.set_link(node, false)?;
        }
        Kind::HistoryKill => {
            let mut stack = shared.stack.lock().await;
            stack.service("history-service").kill().await;
        }
        Kind::ClientVanish => {
            {
                let stack = shared.stack.lock().await;
                stack.net.set_link(&fault.target, false)?;
            }
            shared.tell(&fault.target, "vanish").await;
        }
    }
    Ok(())
}

async fn heal(shared: &Shared, fault: &Fault, node: &str) -> anyhow::Result<()> {
    let ctl = shared.ctl.clone();
    match fault.kind {
        Kind::GatewayKill | Kind::GatewayTerm | Kind::GatewayStop | Kind::GatewayCut => {
            let i = gateway_index(&fault.target);
            {
                let mut stack = shared.stack.lock().await;
                match fault.kind {
                    Kind::GatewayStop => stack.gateways[i].signal("CONT")?,
                    Kind::GatewayCut => {
                        let host = stack.gateways[i].host.clone();
                        stack.net.set_link(&host, true)?;
                    }
                    _ => {
                        stack.gateways[i].exited();
                        stack.gateways[i].spawn()?;
                    }
                }
            }
            shared.keep_gateway_up(i, Duration::from_secs(60)).await?;
        }
        Kind::RedisKill | Kind::MasterKill => {
            let (ip, backend) = {
                let mut stack = shared.stack.lock().await;
                let backend = stack.backend;
                let p = stack
                    .redis
                    .iter_mut()
                    .find(|p| p.host == node)
                    .ok_or_else(|| anyhow::anyhow!("no redis {node}"))?;
                p.spawn()?;
                let ip = backend
                    .redis_hosts()
                    .into_iter()
                    .find(|(h, _)| h == node)
                    .map(|(_, ip)| ip);
                (ip, backend)
            };
            wait_redis(&ctl, backend, ip).await?;
        }
        Kind::RedisCut => {
            let backend = {
                let stack = shared.stack.lock().await;
                stack.net.set_link(node, true)?;
                stack.backend
            };
            let ip = backend
                .redis_hosts()
                .into_iter()
                .find(|(h, _)| h == node)
                .map(|(_, ip)| ip);
            wait_redis(&ctl, backend, ip).await?;
        }
        Kind::HistoryKill => {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                {
                    let mut stack = shared.stack.lock().await;
                    let history = stack.service("history-service");
                    if history.exited() {
                        history.spawn()?;
                    }
                }
                if stack::probe(&ctl, stack::history_addr(), None).await {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "history service not up within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Kind::ClientVanish => {
            {
                let stack = shared.stack.lock().await;
                stack.net.set_link(&fault.target, true)?;
            }
            shared.tell(&fault.target, "back").await;
        }
    }
    Ok(())
}

/// Redis serves again: the node answers PING and, on a cluster, the
/// cluster is whole (the old master rejoined as a replica and synced).
async fn wait_redis(
    ctl: &str,
    backend: Backend,
    ip: Option<std::net::Ipv4Addr>,
) -> anyhow::Result<()> {
    let ip = ip.ok_or_else(|| anyhow::anyhow!("unknown redis node"))?;
    anyhow::ensure!(
        stack::eventually(Duration::from_secs(30), || async {
            stack::redis_cli(ctl, ip, &["ping"])
                .await
                .is_some_and(|o| o.contains("PONG"))
        })
        .await,
        "redis {ip} does not answer within 30 s"
    );
    if backend == Backend::Cluster {
        let ips: Vec<_> = backend.redis_hosts().iter().map(|(_, ip)| *ip).collect();
        let ok = stack::eventually(Duration::from_secs(60), || {
            let ips = ips.clone();
            async move { stack::cluster_ready(ctl, &ips).await.is_ok() }
        })
        .await;
        if !ok {
            let why = stack::cluster_ready(ctl, &ips)
                .await
                .err()
                .unwrap_or_default();
            anyhow::bail!("the cluster is not whole within 60 s: {why}");
        }
    }
    Ok(())
}
