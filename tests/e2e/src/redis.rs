//! A Redis of the test's own, for tests that crash, restart, freeze or
//! reshard it: one `redis-server`, or a Redis Cluster of real `redis-server`
//! processes made by `redis-cli --cluster create`, on free loopback ports,
//! with their files under the stack's directory.
//!
//! Which one [`crate::StackBuilder::with_private_redis`] gets follows the
//! backend of the run ([`RedisBackend::of_this_run`]), so the tests that
//! break Redis break both kinds; the operations (kill, restart, signal,
//! command) apply to every node of a cluster. Tests about the cluster itself
//! (failover, resharding) ask for one with replicas:
//! [`crate::StackBuilder::with_private_redis_cluster`].

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    time::Instant,
};

use crate::{addr, free_port, wait_for_port};

/// How long a cluster may take to agree on itself again (made, restarted,
/// failed over, resharded).
const CLUSTER_PATIENCE: Duration = Duration::from_secs(60);

/// The Redis a run of the suite talks to: `CLUSTERCHAT_TEST_REDIS_BACKEND`,
/// which `just test` sets for each of its two runs (`single` when unset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisBackend {
    Single,
    Cluster,
}

impl RedisBackend {
    pub fn of_this_run() -> Self {
        match std::env::var("CLUSTERCHAT_TEST_REDIS_BACKEND").as_deref() {
            Err(_) | Ok("single") => Self::Single,
            Ok("cluster") => Self::Cluster,
            Ok(other) => panic!("CLUSTERCHAT_TEST_REDIS_BACKEND={other}: single or cluster"),
        }
    }
}

/// What a private Redis is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisShape {
    Single,
    /// `masters` masters with `replicas` replicas each.
    Cluster {
        masters: usize,
        replicas: usize,
    },
}

impl RedisShape {
    /// What a test that breaks "Redis" gets in this run: one server, or a
    /// cluster of three masters (no replicas: a restart or a freeze hits
    /// every node anyway).
    pub fn of_this_run() -> Self {
        match RedisBackend::of_this_run() {
            RedisBackend::Single => Self::Single,
            RedisBackend::Cluster => Self::Cluster {
                masters: 3,
                replicas: 0,
            },
        }
    }
}

/// A master of a private cluster serving slots, as `CLUSTER NODES` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMaster {
    pub id: String,
    pub port: u16,
    /// Inclusive ranges, ascending.
    pub slots: Vec<(u16, u16)>,
}

impl ClusterMaster {
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }

    /// How many of its slots are `slot` or lower: what `redis-cli --cluster
    /// reshard --cluster-from <this one>` must move for `slot` to go too (it
    /// moves a source's lowest slots first).
    pub fn slots_up_to(&self, slot: u16) -> usize {
        self.slots
            .iter()
            .filter(|&&(a, _)| a <= slot)
            .map(|&(a, b)| usize::from(b.min(slot) - a) + 1)
            .sum()
    }
}

/// The slot of user `id`'s keys and channel: the gateway tags them all `{u:ID}`.
pub fn user_hash_tag(id: i64) -> String {
    format!("{{u:{id}}}")
}

struct Node {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

pub struct PrivateRedis {
    shape: RedisShape,
    nodes: Vec<Node>,
    /// The stack's directory: redis-cli runs there (so `just test` can sweep
    /// one a killed test left behind).
    dir: PathBuf,
    /// A cluster's masters as made: the seed nodes of its URL.
    seeds: Vec<u16>,
}

impl PrivateRedis {
    pub async fn start(dir: PathBuf, shape: RedisShape) -> Self {
        let nodes = match shape {
            // As before clusters: the AOF right in the stack's directory.
            RedisShape::Single => vec![Node {
                port: free_port().await,
                dir: dir.clone(),
                child: None,
            }],
            RedisShape::Cluster { masters, replicas } => {
                free_cluster_ports(masters * (1 + replicas))
                    .await
                    .into_iter()
                    .map(|port| Node {
                        port,
                        dir: dir.join(format!("redis-{port}")),
                        child: None,
                    })
                    .collect()
            }
        };
        let mut redis = Self {
            shape,
            nodes,
            dir,
            seeds: Vec::new(),
        };
        for i in 0..redis.nodes.len() {
            redis.spawn_node(i);
        }
        for node in &redis.nodes {
            wait_for_port(node.port, "redis").await;
        }
        if let RedisShape::Cluster { replicas, .. } = shape {
            redis.create_cluster(replicas).await;
            redis.seeds = redis.masters().await.iter().map(|m| m.port).collect();
            redis.seeds.sort_unstable();
        }
        redis
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.shape, RedisShape::Cluster { .. })
    }

    /// What the gateways are given: `redis://` or `redis+cluster://` with the
    /// masters as made for seeds.
    pub fn url(&self) -> String {
        if self.is_cluster() {
            self.cluster_url(&self.seeds)
        } else {
            format!("redis://127.0.0.1:{}", self.nodes[0].port)
        }
    }

    /// A `redis+cluster://` URL with these seed nodes.
    pub fn cluster_url(&self, ports: &[u16]) -> String {
        let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Every node's port (a cluster's masters first as made, then replicas).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The masters as made (the seed nodes of [`PrivateRedis::url`]).
    pub fn seed_ports(&self) -> &[u16] {
        &self.seeds
    }

    fn spawn_node(&mut self, i: usize) {
        let cluster = self.is_cluster();
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            return;
        }
        std::fs::create_dir_all(&node.dir).expect("redis dir");
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &node.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--maxmemory-policy",
                "noeviction",
            ])
            .arg("--dir")
            .arg(&node.dir);
        if cluster {
            // As `just up cluster` runs them: a master silent for 2 s is
            // failed over to its replica.
            command
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
                .arg("--logfile")
                .arg(node.dir.join("redis.log"));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (installed by `just test`)");
        node.child = Some(child);
    }

    /// Starts every node that is not running (on its port, from its
    /// append-only file and, in a cluster, its nodes.conf) and waits until
    /// it serves: a cluster until every node says `cluster_state:ok`.
    pub async fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.spawn_node(i);
        }
        for node in &self.nodes {
            wait_for_port(node.port, "redis").await;
        }
        if self.is_cluster() {
            self.wait_until_serving().await;
        }
    }

    /// Kills every node (-9) and starts them again on the same ports.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.start_all().await;
    }

    /// kill -9 every node, like a crash.
    pub async fn kill(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill().await;
            }
        }
    }

    /// Sends a signal (`STOP`, `CONT` ...) to every running node.
    pub fn signal(&self, signal: &str) {
        for node in &self.nodes {
            let pid = node
                .child
                .as_ref()
                .and_then(Child::id)
                .expect("redis running");
            let status = std::process::Command::new("kill")
                .args([format!("-{signal}"), pid.to_string()])
                .status()
                .expect("kill");
            assert!(status.success(), "kill -{signal} {pid}");
        }
    }

    /// Sends one command (RESP) to every running node (`CLIENT KILL TYPE
    /// pubsub` must cut the subscribers of every shard) and returns the first
    /// line of the first node's reply.
    pub async fn command(&self, args: &[&str]) -> String {
        let mut first = None;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let reply = tokio::time::timeout(Duration::from_secs(10), raw_command(node.port, args))
                .await
                .unwrap_or_else(|_| panic!("redis {} did not answer {args:?}", node.port));
            first.get_or_insert(reply);
        }
        first.expect("a running redis")
    }

    /// Copies every node's data as it is now (its append-only file, rewritten
    /// first), for [`PrivateRedis::restore_snapshot`].
    pub async fn snapshot(&self) {
        for node in &self.nodes {
            let _ = raw_command(node.port, &["BGREWRITEAOF"]).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let info = self
                    .cli_on(node.port, &["INFO", "persistence"])
                    .await
                    .unwrap_or_default();
                if info.contains("aof_rewrite_in_progress:0")
                    && info.contains("aof_rewrite_scheduled:0")
                {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "AOF rewrite: {info}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let snapshot = node.dir.join("snapshot");
            let _ = std::fs::remove_dir_all(&snapshot);
            copy_dir(&node.dir.join("appendonlydir"), &snapshot);
        }
    }

    /// kill -9 every node and start it again from the data of the last
    /// [`PrivateRedis::snapshot`]: Redis after a crash that lost its newest
    /// writes (a power loss, a disk restored from a backup).
    pub async fn restore_snapshot(&mut self) {
        self.kill().await;
        for node in &self.nodes {
            let aof = node.dir.join("appendonlydir");
            std::fs::remove_dir_all(&aof).expect("remove the append-only files");
            copy_dir(&node.dir.join("snapshot"), &aof);
        }
        self.start_all().await;
    }

    // ------------------------------------------------------------ cluster

    /// kill -9 one node of a cluster.
    pub async fn kill_node(&mut self, port: u16) {
        let node = self.node_mut(port);
        let mut child = node.child.take().expect("node running");
        child.kill().await.expect("kill -9 redis");
    }

    /// Starts a killed node again (it rejoins from its nodes.conf: a failed
    /// over master comes back as a replica).
    pub async fn start_node(&mut self, port: u16) {
        let i = self
            .nodes
            .iter()
            .position(|n| n.port == port)
            .expect("a node");
        self.spawn_node(i);
        wait_for_port(port, "redis").await;
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    fn running_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    async fn create_cluster(&self, replicas: usize) {
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend([
            "--cluster-replicas".to_owned(),
            replicas.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = self.redis_cli(&args).await;
        assert!(ok, "redis-cli --cluster create failed:\n{out}");
        self.wait_until_serving().await;
    }

    /// Waits until every running node says `cluster_state:ok`, they all see
    /// the same running master serving each slot, and every running replica
    /// is linked to its master: after a create, a restart, a failover or a
    /// reshard, the cluster serves every slot again.
    pub async fn wait_until_serving(&self) {
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        loop {
            let problem = self.why_not_serving().await;
            let Some(problem) = problem else { return };
            assert!(
                Instant::now() < deadline,
                "redis cluster not serving after {CLUSTER_PATIENCE:?}: {problem}\n{}",
                self.cluster_nodes().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn why_not_serving(&self) -> Option<String> {
        let running = self.running_ports();
        let mut maps = Vec::new();
        for &port in &running {
            let info = self.cli_on(port, &["CLUSTER", "INFO"]).await?;
            if !info.contains("cluster_state:ok") {
                return Some(format!("{port}: {}", info.lines().next().unwrap_or("")));
            }
            let replication = self.cli_on(port, &["INFO", "replication"]).await?;
            if replication.contains("role:slave") && !replication.contains("master_link_status:up")
            {
                return Some(format!("replica {port} not linked to its master"));
            }
            let nodes = self.cli_on(port, &["CLUSTER", "NODES"]).await?;
            let mut map = parse_masters(&nodes);
            map.sort_by_key(|m| m.port);
            if let Some(dead) = map.iter().find(|m| !running.contains(&m.port)) {
                return Some(format!("{port} sees slots on the dead {}", dead.port));
            }
            maps.push(map);
        }
        if maps.windows(2).any(|w| w[0] != w[1]) {
            return Some("nodes do not agree about the slots yet".into());
        }
        None
    }

    /// `CLUSTER NODES` as some running node sees it.
    pub async fn cluster_nodes(&self) -> String {
        for port in self.running_ports() {
            if let Some(nodes) = self.cli_on(port, &["CLUSTER", "NODES"]).await {
                return nodes;
            }
        }
        panic!("no running cluster node answers")
    }

    /// The masters serving slots, as some running node sees them.
    pub async fn masters(&self) -> Vec<ClusterMaster> {
        parse_masters(&self.cluster_nodes().await)
    }

    /// The slot of a key (`CLUSTER KEYSLOT`).
    pub async fn keyslot(&self, key: &str) -> u16 {
        for port in self.running_ports() {
            if let Some(slot) = self.cli_on(port, &["CLUSTER", "KEYSLOT", key]).await {
                return slot.trim().parse().expect("a slot");
            }
        }
        panic!("no running cluster node answers")
    }

    /// The master that serves user `id`'s slot now.
    pub async fn owner_of_user(&self, id: i64) -> ClusterMaster {
        let slot = self.keyslot(&user_hash_tag(id)).await;
        self.masters()
            .await
            .into_iter()
            .find(|m| m.owns(slot))
            .unwrap_or_else(|| panic!("nobody serves slot {slot}"))
    }

    /// Moves `slots` slots (the lowest first) from one master to another
    /// with `redis-cli --cluster reshard`, while whatever runs keeps running,
    /// then waits until every node agrees. redis-cli refuses to start while
    /// the nodes still disagree after an earlier change: it is asked again.
    pub async fn reshard(&self, from: &ClusterMaster, to: &ClusterMaster, slots: usize) {
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        let slots = slots.to_string();
        loop {
            self.wait_until_serving().await;
            let entry = format!("127.0.0.1:{}", to.port);
            let (ok, out) = self
                .redis_cli(&[
                    "--cluster",
                    "reshard",
                    &entry,
                    "--cluster-from",
                    &from.id,
                    "--cluster-to",
                    &to.id,
                    "--cluster-slots",
                    &slots,
                    "--cluster-yes",
                ])
                .await;
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline && out.contains("Please fix your cluster problems"),
                "redis-cli --cluster reshard failed:\n{out}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.wait_until_serving().await;
    }

    /// One redis-cli command on one node: its output, or None when the node
    /// does not answer within 5 s (dead, frozen).
    async fn cli_on(&self, port: u16, args: &[&str]) -> Option<String> {
        let port = port.to_string();
        let mut all = vec!["-p", &port];
        all.extend_from_slice(args);
        let out = run_redis_cli(&self.dir, &all, Duration::from_secs(5)).await?;
        let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// redis-cli with these arguments (at most 2 minutes): success and output.
    async fn redis_cli(&self, args: &[&str]) -> (bool, String) {
        let out = run_redis_cli(&self.dir, args, Duration::from_secs(120))
            .await
            .unwrap_or_else(|| panic!("redis-cli {args:?} did not end within 2 minutes"));
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

async fn run_redis_cli(dir: &Path, args: &[&str], limit: Duration) -> Option<std::process::Output> {
    let out = Command::new("redis-cli")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(limit, out)
        .await
        .ok()
        .map(|out| out.expect("redis-cli (installed by `just test`)"))
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create a directory");
    for entry in std::fs::read_dir(from).expect("read a directory") {
        let entry = entry.expect("a directory entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy a file");
    }
}

/// Sends one command (RESP) and returns the first line of the reply.
async fn raw_command(port: u16, args: &[&str]) -> String {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let mut stream = TcpStream::connect(addr(port)).await.expect("redis");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .await
        .expect("reply");
    line.trim_end().to_owned()
}

/// The masters serving slots in a `CLUSTER NODES` reply, ports ascending.
fn parse_masters(nodes: &str) -> Vec<ClusterMaster> {
    let mut masters: Vec<ClusterMaster> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                return None;
            }
            let port = fields[1]
                .split(['@', ','])
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            // Ranges "a-b" or single slots "a"; "[a->-id]" and "[a-<-id]"
            // are slots on their way out or in, still served from here.
            let slots: Vec<(u16, u16)> = fields
                .get(8..)
                .unwrap_or_default()
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            (!slots.is_empty()).then(|| ClusterMaster {
                id: fields[0].to_owned(),
                port,
                slots,
            })
        })
        .collect();
    masters.sort_by_key(|m| m.port);
    masters
}

/// `n` free ports below 55535 whose cluster bus port (+10000) is free too;
/// all of them held until every one is found, so no two collide.
async fn free_cluster_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    let mut held = Vec::new();
    for _ in 0..10_000 {
        if ports.len() == n {
            return ports;
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        if port >= 55535 {
            continue;
        }
        let Ok(bus) = TcpListener::bind(addr(port + 10_000)).await else {
            continue;
        };
        held.push(listener);
        held.push(bus);
        ports.push(port);
    }
    panic!("no {n} free ports with free bus ports")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_and_their_slots_from_cluster_nodes() {
        let nodes = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-99 200 [300->-b2]
b2 127.0.0.1:7002@17002 master - 0 0 2 connected 100-199 201-16383
c3 127.0.0.1:7003@17003 slave a1 0 0 1 connected
d4 127.0.0.1:7004@17004 master,fail - 0 0 3 disconnected
";
        let masters = parse_masters(nodes);
        assert_eq!(masters.len(), 2);
        assert_eq!(masters[0].id, "a1");
        assert_eq!(masters[0].port, 7001);
        assert_eq!(masters[0].slots, [(0, 99), (200, 200)]);
        assert!(masters[1].owns(150) && !masters[1].owns(200));
        assert_eq!(masters[0].slots_up_to(0), 1);
        assert_eq!(masters[0].slots_up_to(150), 100);
        assert_eq!(masters[0].slots_up_to(200), 101);
        assert_eq!(masters[1].slots_up_to(201), 101);
    }
}
