//! Fixtures shared by clusterchat's service and end-to-end tests.
//!
//! Tests run against the private MariaDB and Redis that `just test` starts
//! (`deploy/dev/stack.sh`); they find them through `CLUSTERCHAT_TEST_*`
//! variables. A test that cannot find them fails with a message saying so:
//! nothing here skips a test.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `just test`, which starts the test MariaDB and Redis")
    })
}

/// `mysql://user:password@host:port` of the test MariaDB (no database part).
pub fn mysql_server_url() -> String {
    required_env("CLUSTERCHAT_TEST_MYSQL_URL")
}

/// A URL for a database nobody else uses; the service under test creates it.
pub fn fresh_database_url(prefix: &str) -> String {
    format!("{}/{}", mysql_server_url(), unique_name(prefix))
}

/// `prefix_` followed by 12 random lowercase letters and digits.
pub fn unique_name(prefix: &str) -> String {
    use rand::Rng;
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(12)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect();
    format!("{prefix}_{suffix}")
}

/// The host:port of the test MariaDB, for tests that put a proxy in front.
pub fn mysql_server_addr() -> SocketAddr {
    let url = mysql_server_url();
    let host_port = url.rsplit('@').next().unwrap_or(&url).trim_end_matches('/');
    host_port.parse().unwrap_or_else(|e| {
        panic!("CLUSTERCHAT_TEST_MYSQL_URL must end in an ip:port ({host_port:?}): {e}")
    })
}

/// The grpcurl binary: `$GRPCURL`, or `grpcurl` on the PATH.
pub fn grpcurl() -> String {
    std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".to_owned())
}

/// Runs grpcurl with `args` and returns its output; fails the test if it fails.
pub fn run_grpcurl(args: &[&str]) -> String {
    let output = std::process::Command::new(grpcurl())
        .args(args)
        .output()
        .expect("run grpcurl (set GRPCURL or put it on the PATH; `just test` does)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Asserts that `grpcurl list`'s output names `own` and, besides it, only
/// health and reflection: a port's reflection describes what that port
/// serves, not every contract of the project.
pub fn assert_lists_only(list: &str, own: &str) {
    let listed: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(listed.contains(&own), "{own} is not listed: {listed:?}");
    assert!(
        listed.contains(&"grpc.health.v1.Health"),
        "health is not listed: {listed:?}"
    );
    for name in &listed {
        assert!(
            *name == own
                || *name == "grpc.health.v1.Health"
                || name.starts_with("grpc.reflection."),
            "{name} is listed on {own}'s port: {listed:?}"
        );
    }
}

/// Polls `$cond` until it holds, failing the test after `$timeout`.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $timeout:expr, $($msg:tt)+) => {{
        let deadline = ::tokio::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            if ::tokio::time::Instant::now() >= deadline {
                panic!($($msg)+);
            }
            ::tokio::time::sleep(::std::time::Duration::from_millis(50)).await;
        }
    }};
}

/// A TCP proxy in front of a real server that a test can cut and restore,
/// to see what a service does when its dependency goes away and comes back.
/// While cut, open connections are dropped and new ones are closed at once,
/// which is what a client sees of a crashed server.
pub struct TcpProxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    _task: Arc<tokio::task::JoinHandle<()>>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (up, up_rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            let mut links = JoinSet::new();
            let mut state = up_rx.clone();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        if !*state.borrow() {
                            drop(client);
                            continue;
                        }
                        links.spawn(async move {
                            if let Ok(mut server) = TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                    changed = state.changed() => {
                        if changed.is_err() { break; }
                        if !*state.borrow() {
                            links.abort_all();
                        }
                    }
                    Some(_) = links.join_next(), if !links.is_empty() => {}
                }
            }
        });
        Self {
            addr,
            up,
            _task: Arc::new(task),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn cut(&self) {
        let _ = self.up.send(false);
    }

    pub fn restore(&self) {
        let _ = self.up.send(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self._task.abort();
    }
}

/// Generous bound for "eventually" in tests running on a loaded 2-core box.
pub const PATIENCE: Duration = Duration::from_secs(20);
