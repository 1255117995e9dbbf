//! Fixtures for end-to-end tests: a whole clusterchat stack of real
//! processes (user, offline and history services, gateway nodes, optionally
//! nginx and a private Redis or Redis Cluster) on free loopback ports, and
//! clients that speak the classic protocol over TCP or WebSocket, and
//! (in [`browser`]) headless Chromium driving the web client.
//!
//! Every stack gets fresh databases and its own Redis key prefix, so tests
//! run side by side against the shared test MariaDB and Redis that
//! `just test` starts: a single Redis in its first run, a Redis Cluster in
//! its second (`CLUSTERCHAT_TEST_REDIS_URL`, `CLUSTERCHAT_TEST_REDIS_BACKEND`).
//! Processes are killed when the stack is dropped.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use test_support::{TcpProxy, unique_name};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    process::{Child, Command},
};

pub use test_support::{PATIENCE, assert_eventually};

pub mod browser;
pub mod otlp;
pub mod redis;

pub use redis::{ClusterMaster, PrivateRedis, RedisBackend, RedisShape, user_hash_tag};

/// How long a test waits for one expected message before failing.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(15);

/// The path of one of the workspace's binaries (`target/debug/NAME`).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("CLUSTERCHAT_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`just test` does)",
        path.display()
    );
    path
}

/// The built web client (`web/dist`, made by `just test` before the tests
/// run), when there is one: the gateways of every stack serve it.
pub fn web_dist() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web/dist");
    dir.join("index.html")
        .is_file()
        .then(|| dir.canonicalize().unwrap_or(dir))
}

/// Runs the `chat` binary with `args` (at most 30 s): whether it succeeded,
/// its stdout and its stderr.
pub async fn run_chat(args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(bin("chat"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chat ends in time")
    .expect("run chat");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A free port on 127.0.0.1 (bound and released; fine for tests).
pub async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn wait_for_port(port: u16, what: &str) {
    assert_eventually!(
        TcpStream::connect(addr(port)).await.is_ok(),
        Duration::from_secs(60),
        "{what} did not open port {port}"
    );
}

/// Waits until the process logs a line containing `needle` and returns it
/// (colours stripped). Processes bind port 0 and log the addresses they got,
/// so parallel tests never race for ports.
async fn wait_for_log_line(
    child: &mut Child,
    log: &std::path::Path,
    needle: &str,
    what: &str,
) -> String {
    wait_for_log_line_after(child, log, 0, needle, what).await
}

/// [`wait_for_log_line`] in what the log holds past its first `skip` bytes
/// (a restarted process appends to the log of its earlier run).
async fn wait_for_log_line_after(
    child: &mut Child,
    log: &std::path::Path,
    skip: usize,
    needle: &str,
    what: &str,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let bytes = std::fs::read(log).unwrap_or_default();
        let text = strip_ansi(&String::from_utf8_lossy(
            bytes.get(skip..).unwrap_or_default(),
        ));
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during start-up ({status}):\n{text}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not start within 60 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address after `key=` in a log line (`Some(...)` unwrapped).
fn logged_addr(line: &str, key: &str) -> SocketAddr {
    let value = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"));
    let value = value.trim_start_matches("Some(").trim_end_matches(')');
    value
        .parse()
        .unwrap_or_else(|e| panic!("{key}={value}: {e}"))
}

/// Starts a gRPC service on port 0; returns it with its gRPC and metrics addresses.
async fn start_service(
    binary: &str,
    prefix: &str,
    env: Vec<(String, String)>,
    log: PathBuf,
) -> (Child, SocketAddr, SocketAddr) {
    start_service_on(binary, prefix, env, log, addr(0)).await
}

/// Starts a gRPC service listening on `listen` (port 0: a free one); returns
/// it with its gRPC and metrics addresses. Appends to `log`.
async fn start_service_on(
    binary: &str,
    prefix: &str,
    mut env: Vec<(String, String)>,
    log: PathBuf,
    listen: SocketAddr,
) -> (Child, SocketAddr, SocketAddr) {
    env.push((format!("{prefix}_LISTEN"), listen.to_string()));
    env.push((format!("{prefix}_METRICS_LISTEN"), "127.0.0.1:0".into()));
    let skip = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
    let mut child = spawn_appending(binary, &env, log.clone());
    let line = wait_for_log_line_after(&mut child, &log, skip, "service listening", binary).await;
    (
        child,
        logged_addr(&line, "addr"),
        logged_addr(&line, "metrics"),
    )
}

fn log_dir() -> PathBuf {
    let dir = std::env::temp_dir()
        .join("clusterchat-e2e")
        .join(unique_name("stack"));
    std::fs::create_dir_all(&dir).expect("log dir");
    dir
}

fn spawn(binary: &str, env: &[(String, String)], log: PathBuf) -> Child {
    let out = std::fs::File::create(&log).expect("log file");
    spawn_logging_to(binary, env, out)
}

/// [`spawn`], appending to `log` (a restart keeps the earlier run's lines).
fn spawn_appending(binary: &str, env: &[(String, String)], log: PathBuf) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log file");
    spawn_logging_to(binary, env, out)
}

fn spawn_logging_to(binary: &str, env: &[(String, String)], out: std::fs::File) -> Child {
    let err = out.try_clone().expect("log file");
    Command::new(bin(binary))
        .envs(env.iter().cloned())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {binary}: {e}"))
}

pub struct Gateway {
    pub tcp: SocketAddr,
    /// The public WebSocket port (`/ws`).
    pub http: SocketAddr,
    /// `/healthz` and `/metrics`.
    pub admin: SocketAddr,
    child: Option<Child>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Gateway {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
}

#[derive(Default)]
pub struct StackBuilder {
    gateways: usize,
    nginx: bool,
    tls: bool,
    private_redis: Option<RedisShape>,
    gateway_redis_url: Option<fn(usize, &PrivateRedis) -> String>,
    database_proxy: bool,
    gateway_env: Vec<(String, String)>,
    otlp_endpoint: Option<String>,
}

impl StackBuilder {
    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    pub fn with_nginx(mut self) -> Self {
        self.nginx = true;
        self
    }

    /// nginx with TLS listeners too (a CA and certificate made for this
    /// stack by deploy/dev/tls-certs.sh): [`Nginx::tls`].
    pub fn with_tls(mut self) -> Self {
        self.nginx = true;
        self.tls = true;
        self
    }

    /// A Redis of the stack's own, for tests that kill, restart or freeze
    /// it: one server, or a cluster of three masters when the run is on
    /// Redis Cluster ([`RedisShape::of_this_run`]).
    pub fn with_private_redis(mut self) -> Self {
        self.private_redis = Some(RedisShape::of_this_run());
        self
    }

    /// A Redis Cluster of the stack's own, three masters with a replica
    /// each, whatever the run's backend: for failover and resharding.
    pub fn with_private_redis_cluster(self) -> Self {
        self.with_private_redis_shaped(RedisShape::Cluster {
            masters: 3,
            replicas: 1,
        })
    }

    /// A private Redis of exactly this shape, whatever the run's backend.
    pub fn with_private_redis_shaped(mut self, shape: RedisShape) -> Self {
        self.private_redis = Some(shape);
        self
    }

    /// Gateway `i` is given `url(i, &private_redis)` as its Redis URL (e.g.
    /// seed lists with an unreachable node), not the private Redis's own.
    pub fn gateway_redis_url(mut self, url: fn(usize, &PrivateRedis) -> String) -> Self {
        self.gateway_redis_url = Some(url);
        self
    }

    /// Puts a cuttable proxy between the services and MariaDB.
    pub fn with_database_proxy(mut self) -> Self {
        self.database_proxy = true;
        self
    }

    /// Every process exports its spans to `endpoint`, quickly.
    pub fn otlp(mut self, endpoint: String) -> Self {
        self.otlp_endpoint = Some(endpoint);
        self
    }

    pub fn gateway_env(mut self, key: &str, value: &str) -> Self {
        self.gateway_env.push((key.into(), value.into()));
        self
    }

    pub async fn start(self) -> Stack {
        let dir = log_dir();
        let redis = match self.private_redis {
            Some(shape) => Some(PrivateRedis::start(dir.clone(), shape).await),
            None => None,
        };
        let redis_url = redis.as_ref().map_or_else(
            || {
                std::env::var("CLUSTERCHAT_TEST_REDIS_URL")
                    .expect("CLUSTERCHAT_TEST_REDIS_URL: run with `just test`")
            },
            PrivateRedis::url,
        );
        let database_proxy = if self.database_proxy {
            Some(TcpProxy::start(test_support::mysql_server_addr()).await)
        } else {
            None
        };
        let db_url = |name: &str| {
            let url = test_support::fresh_database_url(name);
            match &database_proxy {
                Some(proxy) => url.replace(
                    &test_support::mysql_server_addr().to_string(),
                    &proxy.addr().to_string(),
                ),
                None => url,
            }
        };

        let otel = |service: &str| -> Vec<(String, String)> {
            match &self.otlp_endpoint {
                Some(endpoint) => vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()),
                    ("OTEL_SERVICE_NAME".into(), service.into()),
                    ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
                ],
                None => Vec::new(),
            }
        };
        // The shared secret of this stack's services and gateways.
        let internal_token = unique_name("e2e_internal_token");
        let token_env = || {
            (
                "CLUSTERCHAT_INTERNAL_TOKEN".to_owned(),
                internal_token.clone(),
            )
        };
        let user_database_url = db_url("e2e_user");
        let mut user_env = vec![
            token_env(),
            (
                "CLUSTERCHAT_USER_DATABASE_URL".into(),
                user_database_url.clone(),
            ),
            (
                "CLUSTERCHAT_USER_DB_ACQUIRE_TIMEOUT_MS".into(),
                "1000".into(),
            ),
        ];
        user_env.extend(otel("user-service"));
        let mut offline_env = vec![
            token_env(),
            (
                "CLUSTERCHAT_OFFLINE_DATABASE_URL".into(),
                db_url("e2e_offline"),
            ),
            (
                "CLUSTERCHAT_OFFLINE_DB_ACQUIRE_TIMEOUT_MS".into(),
                "1000".into(),
            ),
        ];
        offline_env.extend(otel("offline-service"));
        let (user, user_addr, user_metrics) = start_service(
            "user-service",
            "CLUSTERCHAT_USER",
            user_env,
            dir.join("user-service.log"),
        )
        .await;
        let (offline, offline_addr, offline_metrics) = start_service(
            "offline-service",
            "CLUSTERCHAT_OFFLINE",
            offline_env,
            dir.join("offline-service.log"),
        )
        .await;

        let prefix = format!("{}:", unique_name("e2e"));
        // The history service reads the gateways' streams: the same Redis
        // (single or cluster) and key prefix.
        let mut history_env = vec![
            token_env(),
            (
                "CLUSTERCHAT_HISTORY_DATABASE_URL".into(),
                db_url("e2e_history"),
            ),
            (
                "CLUSTERCHAT_HISTORY_DB_ACQUIRE_TIMEOUT_MS".into(),
                "1000".into(),
            ),
            ("CLUSTERCHAT_HISTORY_REDIS_URL".into(), redis_url.clone()),
            ("CLUSTERCHAT_HISTORY_REDIS_PREFIX".into(), prefix.clone()),
            (
                "CLUSTERCHAT_HISTORY_USER_SERVICE".into(),
                format!("http://{user_addr}"),
            ),
            ("CLUSTERCHAT_HISTORY_CONSUMER".into(), "e2e-history".into()),
        ];
        history_env.extend(otel("history-service"));
        let history_log = dir.join("history-service.log");
        let (history, history_addr, history_metrics) = start_service(
            "history-service",
            "CLUSTERCHAT_HISTORY",
            history_env.clone(),
            history_log.clone(),
        )
        .await;
        let mut gateways = Vec::new();
        for i in 0..self.gateways {
            let (tcp, http) = (addr(0), addr(0));
            let mut env = vec![
                token_env(),
                (
                    "CLUSTERCHAT_GATEWAY_NODE_ID".into(),
                    format!("gw-{}", i + 1),
                ),
                ("CLUSTERCHAT_GATEWAY_TCP_LISTEN".into(), tcp.to_string()),
                ("CLUSTERCHAT_GATEWAY_HTTP_LISTEN".into(), http.to_string()),
                (
                    "CLUSTERCHAT_GATEWAY_ADMIN_LISTEN".into(),
                    addr(0).to_string(),
                ),
                // nginx (and tests that play a proxy) send PROXY headers.
                (
                    "CLUSTERCHAT_GATEWAY_TRUSTED_PROXIES".into(),
                    "127.0.0.1".into(),
                ),
                // Every test connects from 127.0.0.1, many at once: the
                // per-address throttles are tested on stacks of their own.
                (
                    "CLUSTERCHAT_GATEWAY_LOGINS_PER_ADDRESS".into(),
                    "1000000".into(),
                ),
                (
                    "CLUSTERCHAT_GATEWAY_REGISTERS_PER_ADDRESS".into(),
                    "1000000".into(),
                ),
                (
                    "CLUSTERCHAT_GATEWAY_ANONYMOUS_PER_ADDRESS".into(),
                    "1000000".into(),
                ),
                (
                    "CLUSTERCHAT_GATEWAY_REDIS_URL".into(),
                    match (self.gateway_redis_url, &redis) {
                        (Some(url), Some(redis)) => url(i, redis),
                        _ => redis_url.clone(),
                    },
                ),
                ("CLUSTERCHAT_GATEWAY_REDIS_PREFIX".into(), prefix.clone()),
                (
                    "CLUSTERCHAT_GATEWAY_USER_SERVICE".into(),
                    format!("http://{user_addr}"),
                ),
                (
                    "CLUSTERCHAT_GATEWAY_OFFLINE_SERVICE".into(),
                    format!("http://{offline_addr}"),
                ),
                (
                    "CLUSTERCHAT_GATEWAY_HISTORY_SERVICE".into(),
                    format!("http://{history_addr}"),
                ),
            ];
            // The web client at / (the browser tests load it through nginx).
            if let Some(web) = web_dist() {
                env.push((
                    "CLUSTERCHAT_GATEWAY_WEB_DIR".into(),
                    web.display().to_string(),
                ));
            }
            env.extend(self.gateway_env.iter().cloned());
            env.extend(otel(&format!("gateway-{}", i + 1)));
            let log = dir.join(format!("gateway-{}.log", i + 1));
            gateways.push(Gateway {
                tcp,
                http,
                admin: addr(0),
                child: None,
                env,
                log,
            });
        }
        let mut stack = Stack {
            user_addr,
            offline_addr,
            history_addr,
            internal_token,
            user_database_url,
            user_metrics,
            offline_metrics,
            history_metrics,
            gateways,
            nginx: None,
            redis,
            database_proxy,
            user: Some(user),
            offline: Some(offline),
            history: Some(history),
            history_env,
            history_log,
            dir,
        };
        for i in 0..stack.gateways.len() {
            stack.start_gateway(i).await;
        }
        if self.nginx {
            stack.start_nginx(self.tls).await;
        }
        stack
    }
}

pub struct Nginx {
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    /// TLS listeners, for a stack built `with_tls`.
    pub tls: Option<NginxTls>,
    _child: Child,
}

pub struct Stack {
    /// gRPC of the user, offline and history services, which need
    /// `authorization: Bearer <internal_token>` on data methods. The history
    /// service keeps its address across [`Stack::start_history`].
    pub user_addr: SocketAddr,
    pub offline_addr: SocketAddr,
    pub history_addr: SocketAddr,
    pub internal_token: String,
    /// The user service's database (for tests that set up in bulk).
    pub user_database_url: String,
    /// `/metrics` of the user, offline and history services (the history
    /// service's changes when it is restarted).
    pub user_metrics: SocketAddr,
    pub offline_metrics: SocketAddr,
    pub history_metrics: SocketAddr,
    pub gateways: Vec<Gateway>,
    pub nginx: Option<Nginx>,
    redis: Option<PrivateRedis>,
    database_proxy: Option<TcpProxy>,
    user: Option<Child>,
    offline: Option<Child>,
    history: Option<Child>,
    history_env: Vec<(String, String)>,
    history_log: PathBuf,
    dir: PathBuf,
}

impl Stack {
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// Where the processes' logs are, for a failing test's message.
    pub fn logs(&self) -> String {
        self.dir.display().to_string()
    }

    /// Everything the processes of this stack logged so far.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "log") {
                    out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    /// Starts (or restarts) gateway `i` on fresh ports and waits until healthy.
    pub async fn start_gateway(&mut self, i: usize) {
        let gateway = &mut self.gateways[i];
        let mut child = spawn("gateway", &gateway.env, gateway.log.clone());
        let line = wait_for_log_line(
            &mut child,
            &gateway.log,
            "gateway listening",
            &format!("gateway {}", i + 1),
        )
        .await;
        gateway.tcp = logged_addr(&line, "tcp");
        gateway.http = logged_addr(&line, "http");
        gateway.admin = logged_addr(&line, "admin");
        let admin = gateway.admin;
        assert_eventually!(
            http_get(admin, "/healthz")
                .await
                .is_some_and(|(status, _)| status == 200),
            Duration::from_secs(60),
            "gateway {} not healthy at {admin}",
            i + 1
        );
        gateway.child = Some(child);
    }

    /// The usual cast: "alice" (password "pa") logged in on node `alice_node`
    /// and "bob" ("pb") on node `bob_node`, with their ids.
    pub async fn alice_and_bob(
        &self,
        alice_node: usize,
        bob_node: usize,
    ) -> (Client, i64, Client, i64) {
        let mut alice = Client::connect(self.gateways[alice_node].tcp).await;
        let mut bob = Client::connect(self.gateways[bob_node].tcp).await;
        let a = alice.register("alice", "pa").await;
        let b = bob.register("bob", "pb").await;
        alice.login_ok(a, "pa").await;
        bob.login_ok(b, "pb").await;
        (alice, a, bob, b)
    }

    /// SIGKILL: no chance to clean up, like a crashed machine.
    pub async fn kill_gateway(&mut self, i: usize) {
        if let Some(mut child) = self.gateways[i].child.take() {
            child.kill().await.expect("kill -9 gateway");
        }
    }

    /// SIGTERM to gateway `i`, then waits for it to exit.
    pub async fn terminate_gateway(&mut self, i: usize) -> std::process::ExitStatus {
        terminate(self.gateways[i].child.take().expect("gateway running")).await
    }

    /// SIGTERM to the user service (`"user"`), the offline service
    /// (`"offline"`) or the history service (`"history"`).
    pub async fn terminate_service(&mut self, which: &str) -> std::process::ExitStatus {
        let child = match which {
            "user" => self.user.take(),
            "offline" => self.offline.take(),
            "history" => self.history.take(),
            other => panic!("no service {other}"),
        };
        terminate(child.expect("service running")).await
    }

    /// The history service's gRPC address (the same after a restart).
    pub fn history_addr(&self) -> SocketAddr {
        self.history_addr
    }

    /// SIGTERM to the history service; waits until it has exited.
    pub async fn stop_history(&mut self) -> std::process::ExitStatus {
        self.terminate_service("history").await
    }

    /// SIGKILL to the history service: no chance to acknowledge what it
    /// read, like a crash.
    pub async fn kill_history(&mut self) {
        if let Some(mut child) = self.history.take() {
            child.kill().await.expect("kill -9 history service");
        }
    }

    /// Starts the history service again (after [`Stack::stop_history`] or
    /// [`Stack::kill_history`]) on its earlier address, so the gateways
    /// find it; it catches up from the streams. Its log goes on in the
    /// same file.
    pub async fn start_history(&mut self) {
        assert!(self.history.is_none(), "the history service is running");
        let (child, addr, metrics) = start_service_on(
            "history-service",
            "CLUSTERCHAT_HISTORY",
            self.history_env.clone(),
            self.history_log.clone(),
            self.history_addr,
        )
        .await;
        assert_eq!(addr, self.history_addr);
        self.history_metrics = metrics;
        self.history = Some(child);
    }

    /// Sends a signal to the history service: `STOP` freezes it (a history
    /// service that is slow or hung), `CONT` lets it go on.
    pub fn signal_history(&self, signal: &str) {
        let pid = self
            .history
            .as_ref()
            .and_then(Child::id)
            .expect("history service running");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub async fn restart_redis(&mut self) {
        self.private_redis().restart().await;
    }

    /// kill -9 the private Redis; [`Stack::start_redis`] brings it back
    /// from its append-only file.
    pub async fn kill_redis(&mut self) {
        self.private_redis().kill().await;
    }

    pub async fn start_redis(&mut self) {
        self.private_redis().start_all().await;
    }

    /// Sends a signal (`STOP`, `CONT` ...) to the private Redis (every node).
    pub fn signal_redis(&mut self, signal: &str) {
        self.private_redis().signal(signal);
    }

    /// One command to the private Redis, every node of a cluster (e.g.
    /// `CLIENT KILL TYPE pubsub`); the first node's reply.
    pub async fn redis_command(&mut self, args: &[&str]) -> String {
        self.private_redis().command(args).await
    }

    /// The stack's private Redis or Redis Cluster (for cluster operations:
    /// [`PrivateRedis::owner_of_user`], [`PrivateRedis::kill_node`],
    /// [`PrivateRedis::reshard`] ...).
    pub fn private_redis(&mut self) -> &mut PrivateRedis {
        self.redis
            .as_mut()
            .expect("stack built with_private_redis or with_private_redis_cluster")
    }

    /// Sends a signal (`STOP`, `CONT` ...) to gateway `i`.
    pub fn signal_gateway(&self, i: usize, signal: &str) {
        let pid = self.gateways[i].pid().expect("gateway running");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub fn cut_database(&self) {
        self.database_proxy
            .as_ref()
            .expect("stack built with_database_proxy")
            .cut();
    }

    pub fn restore_database(&self) {
        self.database_proxy
            .as_ref()
            .expect("stack built with_database_proxy")
            .restore();
    }

    async fn start_nginx(&mut self, with_tls: bool) {
        let tcp = addr(free_port().await);
        let ws = addr(free_port().await);
        let tls = if with_tls {
            Some(NginxTls::make(&self.dir.join("tls")).await)
        } else {
            None
        };
        let servers = |f: fn(&Gateway) -> SocketAddr| {
            self.gateways
                .iter()
                .map(|g| format!("        server {} max_fails=3 fail_timeout=30s;\n", f(g)))
                .collect::<String>()
        };
        let dir = self.dir.join("nginx");
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let conf = format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             master_process off;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             stream {{\n    proxy_protocol on;\n    proxy_half_close on;\n    upstream chat_tcp {{\n{tcp_servers}    }}\n    upstream chat_ws {{\n{ws_servers}    }}\n\
             \x20   server {{ listen {tcp} so_keepalive=6s:2s:3; proxy_pass chat_tcp; tcp_nodelay on; proxy_connect_timeout 2s; proxy_socket_keepalive on; proxy_timeout 1h; }}\n\
             \x20   server {{ listen {ws} so_keepalive=6s:2s:3; proxy_pass chat_ws; tcp_nodelay on; proxy_connect_timeout 2s; proxy_socket_keepalive on; proxy_timeout 30s; }}\n{tls_servers}}}\n",
            tls_servers = tls.as_ref().map(NginxTls::servers).unwrap_or_default(),
            dir = dir.display(),
            tcp_servers = servers(|g| g.tcp),
            ws_servers = servers(|g| g.http),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx (installed by `just test`)");
        wait_for_port(tcp.port(), "nginx").await;
        if let Some(tls) = &tls {
            wait_for_port(tls.tcp.port(), "nginx (TLS)").await;
        }
        self.nginx = Some(Nginx {
            tcp,
            ws,
            tls,
            _child: child,
        });
    }
}

/// nginx's TLS listeners in front of the same upstreams as the plain ones
/// (deploy/nginx/nginx.conf's TLS settings), and the CA that signed their
/// certificate (SAN IP:127.0.0.1, DNS:localhost).
pub struct NginxTls {
    /// Classic TCP over TLS.
    pub tcp: SocketAddr,
    /// WebSocket over TLS: `wss://{ws}/ws`.
    pub ws: SocketAddr,
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl NginxTls {
    async fn make(dir: &std::path::Path) -> Self {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/dev/tls-certs.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(dir)
            .output()
            .await
            .expect("run tls-certs.sh");
        assert!(
            out.status.success(),
            "tls-certs.sh failed (openssl is installed by `just test`): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            tcp: addr(free_port().await),
            ws: addr(free_port().await),
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }

    fn servers(&self) -> String {
        format!(
            "    ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;\n\
             \x20   ssl_session_cache shared:chat_tls:1m; ssl_handshake_timeout 10s;\n\
             \x20   server {{ listen {tcp} ssl so_keepalive=6s:2s:3; proxy_pass chat_tcp; tcp_nodelay on; proxy_connect_timeout 2s; proxy_socket_keepalive on; proxy_timeout 1h; }}\n\
             \x20   server {{ listen {ws} ssl so_keepalive=6s:2s:3; proxy_pass chat_ws; tcp_nodelay on; proxy_connect_timeout 2s; proxy_socket_keepalive on; proxy_timeout 30s; }}\n",
            cert = self.cert.display(),
            key = self.key.display(),
            tcp = self.tcp,
            ws = self.ws,
        )
    }
}

/// Sends SIGTERM and waits (at most 30 s) for the process to exit.
async fn terminate(mut child: Child) -> std::process::ExitStatus {
    let pid = child.id().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait")
}

/// A minimal HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(5), http_get_inner(addr, path))
        .await
        .ok()
        .flatten()
}

async fn http_get_inner(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut response)
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A classic client over TCP: requests end with NUL, replies with a newline.
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let (read, writer) = stream.into_split();
        Self {
            reader: BufReader::new(read),
            writer,
        }
    }

    /// This end's address (what a proxy in between sees as the client).
    pub fn local_addr(&self) -> SocketAddr {
        self.reader.get_ref().local_addr().expect("local addr")
    }

    pub async fn send(&mut self, request: &Value) {
        let mut bytes = request.to_string().into_bytes();
        bytes.push(0);
        self.send_raw(&bytes).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("send");
    }

    /// The next line from the server, exactly as sent (without the newline).
    pub async fn recv_line(&mut self) -> String {
        self.try_recv_line(RECV_TIMEOUT)
            .await
            .expect("a message from the server in time")
    }

    pub async fn try_recv_line(&mut self, timeout: Duration) -> Option<String> {
        let mut line = String::new();
        match tokio::time::timeout(timeout, self.reader.read_line(&mut line)).await {
            Ok(Ok(0)) => None,
            Ok(Ok(_)) => Some(line.trim_end_matches('\n').to_owned()),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    pub async fn recv(&mut self) -> Value {
        let line = self.recv_line().await;
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("server sent invalid JSON {line:?}: {e}"))
    }

    /// Asserts nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(line) = self.try_recv_line(quiet).await {
            panic!("expected nothing, got {line}");
        }
    }

    /// True once the server closed the connection.
    pub async fn is_closed(&mut self, timeout: Duration) -> bool {
        let mut line = String::new();
        matches!(
            tokio::time::timeout(timeout, self.reader.read_line(&mut line)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    pub async fn register(&mut self, name: &str, password: &str) -> i64 {
        self.send(&json!({"msgid": 4, "name": name, "password": password}))
            .await;
        let ack = self.recv().await;
        assert_eq!(ack["errno"], 0, "register {name}: {ack}");
        ack["id"].as_i64().expect("id")
    }

    pub async fn login(&mut self, id: i64, password: &str) -> Value {
        self.send(&json!({"msgid": 1, "id": id, "password": password}))
            .await;
        self.recv().await
    }

    pub async fn login_ok(&mut self, id: i64, password: &str) -> Value {
        let ack = self.login(id, password).await;
        assert_eq!(ack["errno"], 0, "login {id}: {ack}");
        ack
    }

    /// Logs in as a client that acknowledges (`acks`, and `since` when given).
    pub async fn login_acking(&mut self, id: i64, password: &str, since: Option<u64>) -> Value {
        let mut request = json!({"msgid": 1, "id": id, "password": password, "acks": true});
        if let Some(since) = since {
            request["since"] = since.into();
        }
        self.send(&request).await;
        self.recv().await
    }

    /// Logs in, retrying while the account is still held elsewhere (errno
    /// 2) for at most `within`; panics after that.
    pub async fn login_within(&mut self, id: i64, password: &str, within: Duration) -> Value {
        let started = tokio::time::Instant::now();
        loop {
            let ack = self.login(id, password).await;
            if ack["errno"] == 0 {
                return ack;
            }
            assert_eq!(ack["errno"], 2, "{ack}");
            assert!(
                started.elapsed() < within,
                "user {id} still locked out after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Chat frames (msgid 6 or 10) until nothing arrives for `quiet`.
    pub async fn chats_until_quiet(&mut self, quiet: Duration) -> Vec<Value> {
        let mut got = Vec::new();
        while let Some(line) = self.try_recv_line(quiet).await {
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("server sent invalid JSON {line:?}: {e}"));
            if matches!(value["msgid"].as_i64(), Some(6 | 10)) {
                got.push(value);
            }
        }
        got
    }

    /// Closes the connection with a reset, as a crashed or vanished client
    /// does: nothing more is read or written.
    pub fn reset(self) {
        let stream = self
            .reader
            .into_inner()
            .reunite(self.writer)
            .expect("halves of one stream");
        let _ = socket_linger_zero(&stream);
    }

    /// Sends a request with a `seq` and returns the reply carrying it.
    pub async fn call(&mut self, mut request: Value, seq: i64) -> Value {
        request["seq"] = seq.into();
        self.send(&request).await;
        loop {
            let reply = self.recv().await;
            if reply["seq"] == seq {
                return reply;
            }
        }
    }
}

fn socket_linger_zero(stream: &TcpStream) -> std::io::Result<()> {
    #[allow(deprecated)]
    stream.set_linger(Some(Duration::ZERO))
}

/// A login ack's (or roster page's) `friends` or `groups`: JSON objects
/// inside strings, parsed.
pub fn parse_list(ack: &Value, field: &str) -> Vec<Value> {
    ack[field]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|s| {
                    serde_json::from_str(s.as_str().expect("entries are JSON text in strings"))
                        .expect("json text")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// The `msg` of each chat.
pub fn texts(chats: &[Value]) -> Vec<String> {
    chats
        .iter()
        .map(|m| m["msg"].as_str().expect("msg").to_owned())
        .collect()
}

/// The messages a login ack carried (`offlinemsg`), parsed.
pub fn offline_messages(ack: &Value) -> Vec<Value> {
    ack["offlinemsg"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|s| serde_json::from_str(s.as_str().expect("string")).expect("json"))
                .collect()
        })
        .unwrap_or_default()
}

/// `first` then `then`, where `then` may repeat the end of `first`: at-least-once
/// delivery to a classic client whose node died right after writing.
pub fn joined_at_least_once(first: &[String], then: &[String]) -> Vec<String> {
    let overlap = (0..=first.len().min(then.len()))
        .rev()
        .find(|&k| first[first.len() - k..] == then[..k])
        .unwrap_or(0);
    first.iter().chain(&then[overlap..]).cloned().collect()
}

/// A chat object as a classic client sends it.
pub fn chat(from: i64, to: i64, text: &str) -> Value {
    json!({"msgid": 6, "id": from, "name": "whoever", "toid": to, "msg": text, "time": "2026-11-25 10:00:00"})
}

pub fn group_chat(from: i64, group: i64, text: &str) -> Value {
    json!({"msgid": 10, "id": from, "name": "whoever", "groupid": group, "msg": text, "time": "2026-11-25 10:00:00"})
}

/// A client over WebSocket: one JSON message per text frame.
pub struct WsClient {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("ws connect");
        Self { socket }
    }

    pub async fn send(&mut self, request: &Value) {
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::text(
                request.to_string(),
            ))
            .await
            .expect("ws send");
    }

    /// True once the server closed the connection (reading what remains).
    pub async fn is_closed(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_))) => return true,
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(RECV_TIMEOUT, self.socket.next())
                .await
                .expect("a ws message in time")
                .expect("ws open")
                .expect("ws message");
            if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                return serde_json::from_str(text.as_str()).expect("json");
            }
        }
    }
}
