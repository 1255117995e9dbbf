//! The stack under test, each process in its host's namespace (`ip netns
//! exec`, which execs the binary: the child's pid is the server's, so
//! signals reach it): Redis (one server, or a cluster of three masters and
//! three replicas, a namespace per node), the core services (user, offline,
//! history) in `core`, and the gateways, each in its own namespace. The
//! services use the private MariaDB through its unix socket, which crosses
//! namespaces. Health is probed from the run's own host `ctl` on the
//! bridge.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

use crate::{
    client::{GATEWAY_ADMIN_PORT, GATEWAY_HTTP_PORT, GATEWAY_TCP_PORT},
    netns::Net,
};

pub const REDIS_PORT: u16 = 6379;
pub const CORE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const CTL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 250);
const USER_PORT: u16 = 50051;
const OFFLINE_PORT: u16 = 50052;
const HISTORY_PORT: u16 = 50053;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Single,
    Cluster,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Cluster => "cluster",
        }
    }

    pub fn gateways(self) -> usize {
        match self {
            Self::Single => 2,
            Self::Cluster => 3,
        }
    }

    /// The Redis hosts: (name, address).
    pub fn redis_hosts(self) -> Vec<(String, Ipv4Addr)> {
        match self {
            Self::Single => vec![("redis".into(), Ipv4Addr::new(198, 18, 0, 2))],
            Self::Cluster => (1..=6u8)
                .map(|i| (format!("redis{i}"), Ipv4Addr::new(198, 18, 0, 1 + i)))
                .collect(),
        }
    }
}

pub fn gateway_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 21 + u8::try_from(i).unwrap_or(0))
}

/// One server process of the stack.
pub struct Proc {
    pub name: String,
    pub host: String,
    ns: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns])
            .arg(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        // Nothing of the caller's telemetry or log settings: traces off.
        for (key, _) in std::env::vars() {
            if key.starts_with("OTEL_") || key.starts_with("CLUSTERCHAT_") {
                command.env_remove(key);
            }
        }
        command.env("RUST_LOG", "info");
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("start {}", self.name))?,
        );
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} ({})", self.name);
        Ok(())
    }

    /// kill -9, like a crash; waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Whether it has exited by itself (then it is forgotten).
    pub fn exited(&mut self) -> bool {
        match &mut self.child {
            None => true,
            Some(child) => match child.try_wait() {
                Ok(Some(_)) | Err(_) => {
                    self.child = None;
                    true
                }
                Ok(None) => false,
            },
        }
    }
}

/// What every process of one run shares.
pub struct Settings {
    pub backend: Backend,
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub mysql_socket: PathBuf,
    /// Database names start with this (`chaos_<tag>_user` ...).
    pub db_prefix: String,
    pub token: String,
}

pub struct Stack {
    pub net: Net,
    pub backend: Backend,
    pub redis: Vec<Proc>,
    pub services: Vec<Proc>,
    pub gateways: Vec<Proc>,
}

impl Stack {
    pub fn new(net: Net, settings: &Settings) -> anyhow::Result<Self> {
        let backend = settings.backend;
        let redis_url = match backend {
            Backend::Single => format!("redis://{}:{REDIS_PORT}", backend.redis_hosts()[0].1),
            Backend::Cluster => {
                let seeds: Vec<String> = backend.redis_hosts()[..3]
                    .iter()
                    .map(|(_, ip)| format!("{ip}:{REDIS_PORT}"))
                    .collect();
                format!("redis+cluster://{}", seeds.join(","))
            }
        };
        let logs = settings.dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let mk = |name: &str,
                  host: &str,
                  program: PathBuf,
                  args: Vec<String>,
                  env: Vec<(String, String)>| Proc {
            name: name.to_owned(),
            host: host.to_owned(),
            ns: net.ns(host),
            program,
            args,
            env,
            log: logs.join(format!("{name}.log")),
            child: None,
        };
        let mut redis = Vec::new();
        for (host, ip) in backend.redis_hosts() {
            let dir = settings.dir.join("redis").join(&host);
            std::fs::create_dir_all(&dir)?;
            let mut args: Vec<String> = [
                "--port",
                &REDIS_PORT.to_string(),
                "--bind",
                &ip.to_string(),
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--maxmemory-policy",
                "noeviction",
                "--daemonize",
                "no",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            args.push("--dir".into());
            args.push(dir.display().to_string());
            if backend == Backend::Cluster {
                for a in [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ] {
                    args.push(a.into());
                }
            }
            redis.push(mk(&host, &host, "redis-server".into(), args, Vec::new()));
        }
        let token = (
            "CLUSTERCHAT_INTERNAL_TOKEN".to_owned(),
            settings.token.clone(),
        );
        let db = |name: &str| {
            format!(
                "mysql://root@localhost/{}_{name}?socket={}",
                settings.db_prefix,
                settings.mysql_socket.display()
            )
        };
        let e = |k: &str, v: String| (k.to_owned(), v);
        let bin = |name: &str| settings.bin_dir.join(name);
        let user_url = format!("http://{CORE}:{USER_PORT}");
        let services = vec![
            mk(
                "user-service",
                "core",
                bin("user-service"),
                Vec::new(),
                vec![
                    token.clone(),
                    e("CLUSTERCHAT_USER_LISTEN", format!("{CORE}:{USER_PORT}")),
                    e("CLUSTERCHAT_USER_METRICS_LISTEN", "127.0.0.1:9101".into()),
                    e("CLUSTERCHAT_USER_DATABASE_URL", db("user")),
                ],
            ),
            mk(
                "offline-service",
                "core",
                bin("offline-service"),
                Vec::new(),
                vec![
                    token.clone(),
                    e(
                        "CLUSTERCHAT_OFFLINE_LISTEN",
                        format!("{CORE}:{OFFLINE_PORT}"),
                    ),
                    e(
                        "CLUSTERCHAT_OFFLINE_METRICS_LISTEN",
                        "127.0.0.1:9102".into(),
                    ),
                    e("CLUSTERCHAT_OFFLINE_DATABASE_URL", db("offline")),
                ],
            ),
            mk(
                "history-service",
                "core",
                bin("history-service"),
                Vec::new(),
                vec![
                    token.clone(),
                    e(
                        "CLUSTERCHAT_HISTORY_LISTEN",
                        format!("{CORE}:{HISTORY_PORT}"),
                    ),
                    e(
                        "CLUSTERCHAT_HISTORY_METRICS_LISTEN",
                        "127.0.0.1:9103".into(),
                    ),
                    e("CLUSTERCHAT_HISTORY_DATABASE_URL", db("history")),
                    e("CLUSTERCHAT_HISTORY_REDIS_URL", redis_url.clone()),
                    e("CLUSTERCHAT_HISTORY_USER_SERVICE", user_url.clone()),
                    e("CLUSTERCHAT_HISTORY_CONSUMER", "chaos".into()),
                ],
            ),
        ];
        let gateways = (0..backend.gateways())
            .map(|i| {
                let ip = gateway_ip(i);
                mk(
                    &format!("gateway-{}", i + 1),
                    &format!("gw{}", i + 1),
                    bin("gateway"),
                    Vec::new(),
                    vec![
                        token.clone(),
                        e("CLUSTERCHAT_GATEWAY_NODE_ID", format!("gw-{}", i + 1)),
                        e(
                            "CLUSTERCHAT_GATEWAY_TCP_LISTEN",
                            format!("{ip}:{GATEWAY_TCP_PORT}"),
                        ),
                        e(
                            "CLUSTERCHAT_GATEWAY_HTTP_LISTEN",
                            format!("{ip}:{GATEWAY_HTTP_PORT}"),
                        ),
                        e(
                            "CLUSTERCHAT_GATEWAY_ADMIN_LISTEN",
                            format!("{ip}:{GATEWAY_ADMIN_PORT}"),
                        ),
                        e("CLUSTERCHAT_GATEWAY_REDIS_URL", redis_url.clone()),
                        e("CLUSTERCHAT_GATEWAY_USER_SERVICE", user_url.clone()),
                        e(
                            "CLUSTERCHAT_GATEWAY_OFFLINE_SERVICE",
                            format!("http://{CORE}:{OFFLINE_PORT}"),
                        ),
                        e(
                            "CLUSTERCHAT_GATEWAY_HISTORY_SERVICE",
                            format!("http://{CORE}:{HISTORY_PORT}"),
                        ),
                        // Every client has an address of its own, but reconnects
                        // come often: the internet's per-address limits raised,
                        // as on the dev stack.
                        e("CLUSTERCHAT_GATEWAY_LOGINS_PER_ADDRESS", "1000".into()),
                        e("CLUSTERCHAT_GATEWAY_REGISTERS_PER_ADDRESS", "1000".into()),
                        e("CLUSTERCHAT_GATEWAY_ANONYMOUS_PER_ADDRESS", "1000".into()),
                        e("CLUSTERCHAT_GATEWAY_DRAIN_TIMEOUT_MS", "5000".into()),
                    ],
                )
            })
            .collect();
        Ok(Self {
            net,
            backend,
            redis,
            services,
            gateways,
        })
    }

    pub fn service(&mut self, name: &str) -> &mut Proc {
        let i = self
            .services
            .iter()
            .position(|p| p.name == name)
            .unwrap_or(0);
        &mut self.services[i]
    }

    /// Stops everything (kill -9: the run is over, nothing to keep).
    pub async fn stop_all(&mut self) {
        for p in self
            .gateways
            .iter_mut()
            .chain(self.services.iter_mut())
            .chain(self.redis.iter_mut())
        {
            let _ = p.signal("CONT");
            p.kill().await;
        }
    }
}

// ---------------------------------------------------------------- probes from `ctl`

/// A probe from the run's host on the bridge: `ip netns exec ctl chaos probe`.
pub async fn probe(net_ns_ctl: &str, addr: SocketAddr, path: Option<&str>) -> bool {
    let Ok(exe) = std::env::current_exe() else {
        return false;
    };
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", net_ns_ctl])
        .arg(exe)
        .args(["probe", &addr.to_string()]);
    if let Some(path) = path {
        command.args(["--http", path]);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    matches!(
        tokio::time::timeout(Duration::from_secs(8), command.status()).await,
        Ok(Ok(status)) if status.success()
    )
}

/// `redis-cli -h IP ARGS` from `ctl`; its stdout, or None when it failed.
pub async fn redis_cli(ctl: &str, ip: Ipv4Addr, args: &[&str]) -> Option<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        Command::new("ip")
            .args([
                "netns",
                "exec",
                ctl,
                "redis-cli",
                "-h",
                &ip.to_string(),
                "-p",
                &REDIS_PORT.to_string(),
            ])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` every 200 ms for up to `patience`.
pub async fn eventually<F, Fut>(patience: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The cluster serves: every node answers `cluster_state:ok`, every
/// replica is linked to its master and every master has a replica linked.
/// `Err` says what is not right yet.
pub async fn cluster_ready(ctl: &str, ips: &[Ipv4Addr]) -> Result<(), String> {
    for ip in ips {
        let info = redis_cli(ctl, *ip, &["cluster", "info"])
            .await
            .ok_or_else(|| format!("{ip} does not answer"))?;
        if !info.contains("cluster_state:ok") {
            return Err(format!("{ip}: cluster state not ok"));
        }
        let replication = redis_cli(ctl, *ip, &["info", "replication"])
            .await
            .ok_or_else(|| format!("{ip} does not answer"))?;
        if replication.contains("role:slave") && !replication.contains("master_link_status:up") {
            return Err(format!("replica {ip} not linked to its master"));
        }
        if replication.contains("role:master") && replication.contains("connected_slaves:0") {
            return Err(format!("master {ip} has no replica linked"));
        }
    }
    Ok(())
}

/// The addresses of the masters serving slots, as `ip` sees them.
pub async fn cluster_masters(ctl: &str, ip: Ipv4Addr) -> Vec<Ipv4Addr> {
    let Some(nodes) = redis_cli(ctl, ip, &["cluster", "nodes"]).await else {
        return Vec::new();
    };
    nodes
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 8 && f[2].contains("master") && !f[2].contains("fail")
        })
        .filter_map(|l| {
            let addr = l.split_whitespace().nth(1)?;
            addr.split(':').next()?.parse().ok()
        })
        .collect()
}

/// Starts the Redis of the run and waits until it serves (a cluster is
/// created first).
pub async fn start_redis(stack: &mut Stack, ctl: &str, dir: &Path) -> anyhow::Result<()> {
    for p in &mut stack.redis {
        p.spawn()?;
    }
    let hosts = stack.backend.redis_hosts();
    for (host, ip) in &hosts {
        if !eventually(Duration::from_secs(30), || async {
            redis_cli(ctl, *ip, &["ping"])
                .await
                .is_some_and(|o| o.contains("PONG"))
        })
        .await
        {
            bail!(
                "redis {host} did not come up (see {})",
                dir.join("logs").display()
            );
        }
    }
    if stack.backend == Backend::Cluster {
        let mut args = vec![
            "netns".to_owned(),
            "exec".into(),
            ctl.to_owned(),
            "redis-cli".into(),
            "--cluster".into(),
            "create".into(),
        ];
        args.extend(hosts.iter().map(|(_, ip)| format!("{ip}:{REDIS_PORT}")));
        args.extend([
            "--cluster-replicas".into(),
            "1".into(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .await?;
        std::fs::write(dir.join("logs/redis-cluster-create.log"), &out.stdout)?;
        anyhow::ensure!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ips: Vec<Ipv4Addr> = hosts.iter().map(|(_, ip)| *ip).collect();
        let ok = eventually(Duration::from_secs(60), || {
            let ips = ips.clone();
            async move { cluster_ready(ctl, &ips).await.is_ok() }
        })
        .await;
        let last = cluster_ready(ctl, &ips).await.err().unwrap_or_default();
        anyhow::ensure!(ok, "the redis cluster did not become ready: {last}");
    }
    Ok(())
}

pub async fn start_services(stack: &mut Stack, ctl: &str) -> anyhow::Result<()> {
    for (name, port) in [
        ("user-service", USER_PORT),
        ("offline-service", OFFLINE_PORT),
        ("history-service", HISTORY_PORT),
    ] {
        stack.service(name).spawn()?;
        let addr = SocketAddr::from((CORE, port));
        anyhow::ensure!(
            eventually(Duration::from_secs(90), || probe(ctl, addr, None)).await,
            "{name} did not come up on {addr}"
        );
    }
    Ok(())
}

pub fn gateway_health(i: usize) -> SocketAddr {
    SocketAddr::from((gateway_ip(i), GATEWAY_ADMIN_PORT))
}

pub async fn gateway_healthy(ctl: &str, i: usize, patience: Duration) -> bool {
    eventually(patience, || probe(ctl, gateway_health(i), Some("/healthz"))).await
}

pub fn history_addr() -> SocketAddr {
    SocketAddr::from((CORE, HISTORY_PORT))
}
