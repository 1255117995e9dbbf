//! Settings of a gateway node, from `CLUSTERCHAT_GATEWAY_*` variables.

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use env_config::{ConfigError, millis_or, var_or};

#[derive(Debug, Clone)]
pub struct Limits {
    /// `..._MAX_CONNECTIONS`: client connections this node holds at once.
    pub max_connections: usize,
    /// `..._MAX_FRAME_BYTES`: the largest request (one JSON value) accepted.
    pub max_frame_bytes: usize,
    /// `..._RATE_PER_SEC` and `..._RATE_BURST`: requests per connection; a
    /// connection that sends faster is paced (not read until its turn).
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// `..._OUTBOUND_QUEUE`: live messages queued for one client; beyond
    /// it the writer reads them from the inbox when it catches up.
    pub outbound_queue: usize,
    /// `..._MAX_INBOX`: undelivered messages one user may have in Redis;
    /// beyond it a send to that user is refused (errno 13).
    pub max_inbox: usize,
    /// `..._MAX_INBOX_BYTES`: the bytes those may take in Redis (measured
    /// once 32 wait); beyond it a send to that user is refused (errno 13).
    pub max_inbox_bytes: u64,
    /// `..._STREAM_MAX_BYTES`: the bytes one of the 16 history streams may
    /// take in Redis; beyond it its oldest entries go (read long before by
    /// the history service, unless it is down).
    pub stream_max_bytes: u64,
    /// `..._OUTBOUND_BYTES`: bytes of live messages queued for one client;
    /// beyond it (as beyond the count) the writer reads them from the inbox
    /// when the client catches up.
    pub outbound_bytes: usize,
    /// `..._OUTBOUND_NODE_BYTES`: live messages queued for all of a node's
    /// clients together; past it a delivery waits in the inbox, as it does
    /// past one client's bound.
    pub outbound_node_bytes: usize,
    /// `..._PARTIAL_BUDGET_BYTES`: bytes this node holds, over all TCP
    /// connections, for requests that have not arrived whole; a connection
    /// that would go past it is refused and closed.
    pub partial_budget_bytes: usize,
    /// `..._FANOUT_PER_TOKEN`: a group chat costs the sender one request of
    /// its rate per this many receivers (at least one).
    pub fanout_per_token: u32,
    /// Login and register throttles, counted in Redis for the whole cluster
    /// per window (`..._THROTTLE_WINDOW_MS`): login attempts per client
    /// address (`..._LOGINS_PER_ADDRESS`), registrations per address
    /// (`..._REGISTERS_PER_ADDRESS`), failed logins per account
    /// (`..._LOGIN_FAILURES_PER_ACCOUNT`).
    pub throttle_window: Duration,
    pub logins_per_address: u32,
    pub registers_per_address: u32,
    pub login_failures_per_account: u32,
    /// `..._ANONYMOUS_PER_ADDRESS`: connections from one client address
    /// that have not logged in, per node; one more is refused (errno 12).
    pub anonymous_per_address: u32,
    /// `..._MAX_DEVICES`: device sessions (logins with `acks`) one user may
    /// hold at once, across the cluster; one more is refused (errno 6). It
    /// also bounds what one user's presence refresh costs Redis.
    pub max_devices: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_frame_bytes: 64 * 1024,
            rate_per_sec: 200,
            rate_burst: 400,
            outbound_queue: 1024,
            max_inbox: 10_000,
            max_inbox_bytes: crate::redis::DEFAULT_INBOX_BYTES,
            stream_max_bytes: crate::redis::DEFAULT_STREAM_BYTES,
            outbound_bytes: 4 * 1024 * 1024,
            outbound_node_bytes: 256 * 1024 * 1024,
            partial_budget_bytes: 64 * 1024 * 1024,
            fanout_per_token: 10,
            throttle_window: Duration::from_secs(60),
            logins_per_address: 60,
            registers_per_address: 20,
            login_failures_per_account: 10,
            anonymous_per_address: 64,
            max_devices: 16,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `CLUSTERCHAT_GATEWAY_NODE_ID`: names this node in presence records and logs.
    pub node_id: String,
    /// `CLUSTERCHAT_GATEWAY_TCP_LISTEN`, default `127.0.0.1:6000`.
    pub tcp_listen: SocketAddr,
    /// `CLUSTERCHAT_GATEWAY_HTTP_LISTEN` (WebSocket `/ws`), default `127.0.0.1:6080`.
    pub http_listen: SocketAddr,
    /// `CLUSTERCHAT_GATEWAY_ADMIN_LISTEN` (`/healthz`, `/metrics`), default
    /// `127.0.0.1:7080`: for operators and probes, never exposed to clients.
    pub admin_listen: SocketAddr,
    /// `CLUSTERCHAT_GATEWAY_TRUSTED_PROXIES`: comma-separated addresses (the
    /// load balancers) whose PROXY protocol header (v1 or v2) names the real
    /// client. Empty: no header is believed.
    pub trusted_proxies: AddressList,
    /// `CLUSTERCHAT_GATEWAY_WEB_DIR`: the built web client (`web/dist`),
    /// served at `/` on the HTTP port. Unset: `/` says how to build it.
    pub web_dir: Option<std::path::PathBuf>,
    /// `CLUSTERCHAT_GATEWAY_LOGIN_DEADLINE_MS`: a connection must log in
    /// within this long of opening (or of logging out), else it is closed.
    /// Two minutes, like sshd's LoginGraceTime: the classic client connects
    /// before its user types an id and a password.
    pub login_deadline: Duration,
    /// `CLUSTERCHAT_GATEWAY_FRAME_DEADLINE_MS`: a request that has started
    /// to arrive must be complete within this long, else the connection is
    /// told so and closed.
    pub frame_deadline: Duration,
    /// `CLUSTERCHAT_GATEWAY_HANDSHAKE_TIMEOUT_MS`: the whole of a WebSocket
    /// handshake (PROXY header, HTTP headers, upgrade) and the wait for a
    /// PROXY header on TCP.
    pub handshake_timeout: Duration,
    /// `CLUSTERCHAT_GATEWAY_REDIS_URL`: `redis://HOST:PORT` for a single
    /// Redis; `redis+cluster://HOST:PORT[,HOST:PORT...]` (or several URLs
    /// separated by commas) for a Redis Cluster.
    pub redis_url: String,
    /// `CLUSTERCHAT_GATEWAY_REDIS_FAILOVER_WAIT_MS` (Redis Cluster only): how
    /// long a chat keeps trying its shard before it is stored with the
    /// offline service. Covering the cluster's failover time (about twice
    /// `cluster-node-timeout`) keeps a sender's chats in order across one.
    pub redis_failover_wait: Duration,
    /// `CLUSTERCHAT_GATEWAY_REDIS_PREFIX`: namespaces every key and channel, so
    /// several clusters (or test runs) can share one Redis.
    pub redis_prefix: String,
    /// `CLUSTERCHAT_GATEWAY_USER_SERVICE`, `..._OFFLINE_SERVICE` and
    /// `..._HISTORY_SERVICE`: gRPC URLs.
    pub user_service: String,
    pub offline_service: String,
    pub history_service: String,
    /// `CLUSTERCHAT_INTERNAL_TOKEN` (required): sent to both services as
    /// `authorization: Bearer <token>` on every call.
    pub internal_token: env_config::Secret,
    /// `CLUSTERCHAT_GATEWAY_RPC_TIMEOUT_MS`.
    pub rpc_timeout: Duration,
    /// `CLUSTERCHAT_GATEWAY_PRESENCE_TTL_MS`: how long a node that died keeps
    /// its users "online". Refreshed every third of it.
    pub presence_ttl: Duration,
    /// `CLUSTERCHAT_GATEWAY_GROUP_CACHE_TTL_MS`: the longest a group's member
    /// list is trusted without asking the user service again (changes made
    /// through any gateway invalidate it at once).
    pub group_cache_ttl: Duration,
    /// `CLUSTERCHAT_GATEWAY_OFFLINE_BATCH`: offline messages per page handed over.
    pub offline_batch: u32,
    /// `CLUSTERCHAT_GATEWAY_DRAIN_TIMEOUT_MS`: how long SIGTERM waits for sessions to close.
    pub drain_timeout: Duration,
    /// `CLUSTERCHAT_GATEWAY_IDLE_TIMEOUT_MS`: a WebSocket, or a client that
    /// acknowledges, silent this long is closed (WebSockets are pinged every
    /// quarter of it; such clients ping on their own). Classic TCP clients
    /// rely on TCP keepalive.
    pub idle_timeout: Duration,
    /// `CLUSTERCHAT_GATEWAY_TCP_KEEPALIVE_MS`: idle time before TCP keepalive
    /// probes (then 3 probes a third of it apart).
    pub tcp_keepalive: Duration,
    /// `CLUSTERCHAT_GATEWAY_DEDUP_TTL_MS`: how long a client message id
    /// (`cmid`) is remembered per receiver, so a retried send is recorded once.
    pub dedup_ttl: Duration,
    pub limits: Limits,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let tcp_listen: SocketAddr = var_or(
            "CLUSTERCHAT_GATEWAY_TCP_LISTEN",
            ([127, 0, 0, 1], 6000).into(),
        )?;
        let defaults = Limits::default();
        let redis_prefix: String = var_or("CLUSTERCHAT_GATEWAY_REDIS_PREFIX", "cc:".to_owned())?;
        if redis_prefix.contains(['{', '}']) {
            // The user's hash tag `{u:ID}` must be the key's first braces.
            return Err(ConfigError::Invalid {
                name: "CLUSTERCHAT_GATEWAY_REDIS_PREFIX".into(),
                value: redis_prefix,
                reason: "must not contain { or } (keys carry a Redis Cluster hash tag after it)"
                    .into(),
            });
        }
        Ok(Self {
            node_id: var_or(
                "CLUSTERCHAT_GATEWAY_NODE_ID",
                format!("gw-{}", tcp_listen.port()),
            )?,
            tcp_listen,
            http_listen: var_or(
                "CLUSTERCHAT_GATEWAY_HTTP_LISTEN",
                ([127, 0, 0, 1], 6080).into(),
            )?,
            admin_listen: var_or(
                "CLUSTERCHAT_GATEWAY_ADMIN_LISTEN",
                ([127, 0, 0, 1], 7080).into(),
            )?,
            web_dir: env_config::optional_or::<String>("CLUSTERCHAT_GATEWAY_WEB_DIR", None)?
                .filter(|d| !d.is_empty())
                .map(std::path::PathBuf::from),
            trusted_proxies: var_or(
                "CLUSTERCHAT_GATEWAY_TRUSTED_PROXIES",
                AddressList::default(),
            )?,
            login_deadline: millis_or(
                "CLUSTERCHAT_GATEWAY_LOGIN_DEADLINE_MS",
                Duration::from_secs(120),
            )?,
            frame_deadline: millis_or(
                "CLUSTERCHAT_GATEWAY_FRAME_DEADLINE_MS",
                Duration::from_secs(10),
            )?,
            handshake_timeout: millis_or(
                "CLUSTERCHAT_GATEWAY_HANDSHAKE_TIMEOUT_MS",
                Duration::from_secs(10),
            )?,
            redis_url: var_or(
                "CLUSTERCHAT_GATEWAY_REDIS_URL",
                "redis://127.0.0.1:6479".to_owned(),
            )?,
            redis_prefix,
            redis_failover_wait: millis_or(
                "CLUSTERCHAT_GATEWAY_REDIS_FAILOVER_WAIT_MS",
                Duration::from_secs(6),
            )?,
            user_service: var_or(
                "CLUSTERCHAT_GATEWAY_USER_SERVICE",
                "http://127.0.0.1:50051".to_owned(),
            )?,
            offline_service: var_or(
                "CLUSTERCHAT_GATEWAY_OFFLINE_SERVICE",
                "http://127.0.0.1:50052".to_owned(),
            )?,
            history_service: var_or(
                "CLUSTERCHAT_GATEWAY_HISTORY_SERVICE",
                "http://127.0.0.1:50053".to_owned(),
            )?,
            internal_token: env_config::internal_token()?,
            rpc_timeout: millis_or("CLUSTERCHAT_GATEWAY_RPC_TIMEOUT_MS", Duration::from_secs(5))?,
            presence_ttl: millis_or(
                "CLUSTERCHAT_GATEWAY_PRESENCE_TTL_MS",
                Duration::from_secs(10),
            )?,
            group_cache_ttl: millis_or(
                "CLUSTERCHAT_GATEWAY_GROUP_CACHE_TTL_MS",
                Duration::from_secs(30),
            )?,
            offline_batch: var_or("CLUSTERCHAT_GATEWAY_OFFLINE_BATCH", 500)?,
            drain_timeout: millis_or(
                "CLUSTERCHAT_GATEWAY_DRAIN_TIMEOUT_MS",
                Duration::from_secs(10),
            )?,
            idle_timeout: millis_or(
                "CLUSTERCHAT_GATEWAY_IDLE_TIMEOUT_MS",
                Duration::from_secs(10),
            )?
            .max(Duration::from_millis(300)),
            tcp_keepalive: millis_or(
                "CLUSTERCHAT_GATEWAY_TCP_KEEPALIVE_MS",
                Duration::from_secs(6),
            )?
            .max(Duration::from_secs(1)),
            dedup_ttl: millis_or(
                "CLUSTERCHAT_GATEWAY_DEDUP_TTL_MS",
                Duration::from_secs(3600),
            )?,
            limits: Limits {
                max_connections: var_or(
                    "CLUSTERCHAT_GATEWAY_MAX_CONNECTIONS",
                    defaults.max_connections,
                )?,
                max_frame_bytes: var_or(
                    "CLUSTERCHAT_GATEWAY_MAX_FRAME_BYTES",
                    defaults.max_frame_bytes,
                )?,
                rate_per_sec: var_or("CLUSTERCHAT_GATEWAY_RATE_PER_SEC", defaults.rate_per_sec)?,
                rate_burst: var_or("CLUSTERCHAT_GATEWAY_RATE_BURST", defaults.rate_burst)?,
                outbound_queue: var_or(
                    "CLUSTERCHAT_GATEWAY_OUTBOUND_QUEUE",
                    defaults.outbound_queue,
                )?,
                max_inbox: var_or("CLUSTERCHAT_GATEWAY_MAX_INBOX", defaults.max_inbox)?,
                max_inbox_bytes: var_or(
                    "CLUSTERCHAT_GATEWAY_MAX_INBOX_BYTES",
                    defaults.max_inbox_bytes,
                )?,
                stream_max_bytes: var_or(
                    "CLUSTERCHAT_GATEWAY_STREAM_MAX_BYTES",
                    defaults.stream_max_bytes,
                )?,
                outbound_bytes: var_or(
                    "CLUSTERCHAT_GATEWAY_OUTBOUND_BYTES",
                    defaults.outbound_bytes,
                )?,
                outbound_node_bytes: var_or(
                    "CLUSTERCHAT_GATEWAY_OUTBOUND_NODE_BYTES",
                    defaults.outbound_node_bytes,
                )?,
                partial_budget_bytes: var_or(
                    "CLUSTERCHAT_GATEWAY_PARTIAL_BUDGET_BYTES",
                    defaults.partial_budget_bytes,
                )?,
                fanout_per_token: var_or(
                    "CLUSTERCHAT_GATEWAY_FANOUT_PER_TOKEN",
                    defaults.fanout_per_token,
                )?
                .max(1),
                throttle_window: millis_or(
                    "CLUSTERCHAT_GATEWAY_THROTTLE_WINDOW_MS",
                    defaults.throttle_window,
                )?
                .max(Duration::from_millis(100)),
                logins_per_address: var_or(
                    "CLUSTERCHAT_GATEWAY_LOGINS_PER_ADDRESS",
                    defaults.logins_per_address,
                )?,
                registers_per_address: var_or(
                    "CLUSTERCHAT_GATEWAY_REGISTERS_PER_ADDRESS",
                    defaults.registers_per_address,
                )?,
                login_failures_per_account: var_or(
                    "CLUSTERCHAT_GATEWAY_LOGIN_FAILURES_PER_ACCOUNT",
                    defaults.login_failures_per_account,
                )?,
                anonymous_per_address: var_or(
                    "CLUSTERCHAT_GATEWAY_ANONYMOUS_PER_ADDRESS",
                    defaults.anonymous_per_address,
                )?
                .max(1),
                max_devices: var_or("CLUSTERCHAT_GATEWAY_MAX_DEVICES", defaults.max_devices)?
                    .max(1),
            },
        })
    }
}

/// A comma-separated list of IP addresses.
#[derive(Debug, Clone, Default)]
pub struct AddressList(pub Vec<IpAddr>);

impl AddressList {
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.0.iter().any(|a| a.to_canonical() == addr)
    }
}

impl FromStr for AddressList {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}
