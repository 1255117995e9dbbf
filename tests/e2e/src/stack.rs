//! A whole stack of real processes: [`StackBuilder`] says what it holds and
//! starts it (private Redis, database proxy, the user, offline and history
//! services, the gateways, nginx, in that order); [`Stack`] is the running
//! stack, with what tests do to it (stop, kill, restart, freeze ...).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use test_support::{TcpProxy, assert_eventually, unique_name};
use tokio::process::Child;

use crate::{
    client::{Client, http_get},
    nginx::Nginx,
    process::{
        addr, log_dir, logged_addr, spawn, start_service, start_service_on, terminate,
        wait_for_log_line, web_dist,
    },
    redis::{PrivateRedis, RedisShape},
};

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
    nginx_status: bool,
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

    /// nginx with a `stub_status` listener too ([`Nginx::status`]), for
    /// the exporter (only when asked: every port picked free is a chance
    /// of a clash with another test's).
    pub fn with_nginx_status(mut self) -> Self {
        self.nginx = true;
        self.nginx_status = true;
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
        let redis = self.start_private_redis(&dir).await;
        let redis_url = redis.as_ref().map_or_else(
            || {
                std::env::var("CLUSTERCHAT_TEST_REDIS_URL")
                    .expect("CLUSTERCHAT_TEST_REDIS_URL: run with `just test`")
            },
            PrivateRedis::url,
        );
        let database_proxy = self.start_database_proxy().await;
        let shared = Shared {
            // The shared secret of this stack's services and gateways.
            internal_token: unique_name("e2e_internal_token"),
            database_proxy: database_proxy.as_ref().map(TcpProxy::addr),
            redis_url,
            otlp_endpoint: self.otlp_endpoint.clone(),
        };
        let mut stack = Stack::start_services(&shared, dir, redis, database_proxy).await;
        stack.gateways = (0..self.gateways)
            .map(|i| self.gateway(i, &shared, &stack))
            .collect();
        stack.start_gateways().await;
        if self.nginx {
            stack.start_nginx(self.tls, self.nginx_status).await;
        }
        stack
    }

    async fn start_private_redis(&self, dir: &Path) -> Option<PrivateRedis> {
        match self.private_redis {
            Some(shape) => Some(PrivateRedis::start(dir.to_path_buf(), shape).await),
            None => None,
        }
    }

    async fn start_database_proxy(&self) -> Option<TcpProxy> {
        if self.database_proxy {
            Some(TcpProxy::start(test_support::mysql_server_addr()).await)
        } else {
            None
        }
    }

    /// Gateway `i` of `stack` (whose services run), not started yet: its
    /// environment and log, and port 0 for each listener.
    fn gateway(&self, i: usize, shared: &Shared, stack: &Stack) -> Gateway {
        let (tcp, http) = (addr(0), addr(0));
        let mut env = vec![
            shared.token_env(),
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
                match (self.gateway_redis_url, &stack.redis) {
                    (Some(url), Some(redis)) => url(i, redis),
                    _ => shared.redis_url.clone(),
                },
            ),
            (
                "CLUSTERCHAT_GATEWAY_REDIS_PREFIX".into(),
                stack.prefix.clone(),
            ),
            (
                "CLUSTERCHAT_GATEWAY_USER_SERVICE".into(),
                format!("http://{}", stack.user_addr),
            ),
            (
                "CLUSTERCHAT_GATEWAY_OFFLINE_SERVICE".into(),
                format!("http://{}", stack.offline_addr),
            ),
            (
                "CLUSTERCHAT_GATEWAY_HISTORY_SERVICE".into(),
                format!("http://{}", stack.history_addr),
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
        env.extend(shared.otel(&format!("gateway-{}", i + 1)));
        let log = stack.dir.join(format!("gateway-{}.log", i + 1));
        Gateway {
            tcp,
            http,
            admin: addr(0),
            child: None,
            env,
            log,
        }
    }
}

/// What the services and gateways of one stack are all given: the internal
/// token, the databases (through the proxy, if any), the Redis, and where
/// to send spans.
struct Shared {
    internal_token: String,
    database_proxy: Option<SocketAddr>,
    redis_url: String,
    otlp_endpoint: Option<String>,
}

impl Shared {
    fn token_env(&self) -> (String, String) {
        (
            "CLUSTERCHAT_INTERNAL_TOKEN".to_owned(),
            self.internal_token.clone(),
        )
    }

    /// A fresh database named after `name`, through the proxy if any.
    fn db_url(&self, name: &str) -> String {
        let url = test_support::fresh_database_url(name);
        match &self.database_proxy {
            Some(proxy) => url.replace(
                &test_support::mysql_server_addr().to_string(),
                &proxy.to_string(),
            ),
            None => url,
        }
    }

    fn otel(&self, service: &str) -> Vec<(String, String)> {
        match &self.otlp_endpoint {
            Some(endpoint) => vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()),
                ("OTEL_SERVICE_NAME".into(), service.into()),
                ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            ],
            None => Vec::new(),
        }
    }
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
    /// The Redis key prefix of this stack's gateways and history service.
    prefix: String,
    dir: PathBuf,
}

impl Stack {
    /// Starts the user, offline and history services, in that order: a
    /// stack with no gateways yet.
    async fn start_services(
        shared: &Shared,
        dir: PathBuf,
        redis: Option<PrivateRedis>,
        database_proxy: Option<TcpProxy>,
    ) -> Self {
        let user_database_url = shared.db_url("e2e_user");
        let mut user_env = vec![
            shared.token_env(),
            (
                "CLUSTERCHAT_USER_DATABASE_URL".into(),
                user_database_url.clone(),
            ),
            (
                "CLUSTERCHAT_USER_DB_ACQUIRE_TIMEOUT_MS".into(),
                "1000".into(),
            ),
        ];
        user_env.extend(shared.otel("user-service"));
        let mut offline_env = vec![
            shared.token_env(),
            (
                "CLUSTERCHAT_OFFLINE_DATABASE_URL".into(),
                shared.db_url("e2e_offline"),
            ),
            (
                "CLUSTERCHAT_OFFLINE_DB_ACQUIRE_TIMEOUT_MS".into(),
                "1000".into(),
            ),
        ];
        offline_env.extend(shared.otel("offline-service"));
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
            shared.token_env(),
            (
                "CLUSTERCHAT_HISTORY_DATABASE_URL".into(),
                shared.db_url("e2e_history"),
            ),
            (
                "CLUSTERCHAT_HISTORY_DB_ACQUIRE_TIMEOUT_MS".into(),
                "1000".into(),
            ),
            (
                "CLUSTERCHAT_HISTORY_REDIS_URL".into(),
                shared.redis_url.clone(),
            ),
            ("CLUSTERCHAT_HISTORY_REDIS_PREFIX".into(), prefix.clone()),
            (
                "CLUSTERCHAT_HISTORY_USER_SERVICE".into(),
                format!("http://{user_addr}"),
            ),
            ("CLUSTERCHAT_HISTORY_CONSUMER".into(), "e2e-history".into()),
        ];
        history_env.extend(shared.otel("history-service"));
        let history_log = dir.join("history-service.log");
        let (history, history_addr, history_metrics) = start_service(
            "history-service",
            "CLUSTERCHAT_HISTORY",
            history_env.clone(),
            history_log.clone(),
        )
        .await;
        Stack {
            user_addr,
            offline_addr,
            history_addr,
            internal_token: shared.internal_token.clone(),
            user_database_url,
            user_metrics,
            offline_metrics,
            history_metrics,
            gateways: Vec::new(),
            nginx: None,
            redis,
            database_proxy,
            user: Some(user),
            offline: Some(offline),
            history: Some(history),
            history_env,
            history_log,
            prefix,
            dir,
        }
    }

    /// Starts every gateway, one after the other.
    async fn start_gateways(&mut self) {
        for i in 0..self.gateways.len() {
            self.start_gateway(i).await;
        }
    }

    async fn start_nginx(&mut self, with_tls: bool, with_status: bool) {
        self.nginx = Some(Nginx::start(&self.dir, &self.gateways, with_tls, with_status).await);
    }

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

    /// Copies the private Redis's data as it is now.
    pub async fn snapshot_redis(&mut self) {
        self.private_redis().snapshot().await;
    }

    /// kill -9 the private Redis and start it from the last snapshot.
    pub async fn restore_redis_snapshot(&mut self) {
        self.private_redis().restore_snapshot().await;
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
}
