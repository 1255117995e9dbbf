//! The stack's child processes: the workspace's binaries, spawning them with
//! their logs, learning the addresses they bound from those logs, waiting
//! for ports, and stopping them again.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use test_support::{assert_eventually, unique_name};
use tokio::{
    net::{TcpListener, TcpStream},
    process::{Child, Command},
};

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

pub(crate) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub(crate) async fn wait_for_port(port: u16, what: &str) {
    assert_eventually!(
        TcpStream::connect(addr(port)).await.is_ok(),
        Duration::from_secs(60),
        "{what} did not open port {port}"
    );
}

/// Waits until the process logs a line containing `needle` and returns it
/// (colours stripped). Processes bind port 0 and log the addresses they got,
/// so parallel tests never race for ports.
pub(crate) async fn wait_for_log_line(
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
pub(crate) fn logged_addr(line: &str, key: &str) -> SocketAddr {
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
pub(crate) async fn start_service(
    binary: &str,
    prefix: &str,
    env: Vec<(String, String)>,
    log: PathBuf,
) -> (Child, SocketAddr, SocketAddr) {
    start_service_on(binary, prefix, env, log, addr(0)).await
}

/// Starts a gRPC service listening on `listen` (port 0: a free one); returns
/// it with its gRPC and metrics addresses. Appends to `log`.
pub(crate) async fn start_service_on(
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

pub(crate) fn log_dir() -> PathBuf {
    let dir = std::env::temp_dir()
        .join("clusterchat-e2e")
        .join(unique_name("stack"));
    std::fs::create_dir_all(&dir).expect("log dir");
    dir
}

pub(crate) fn spawn(binary: &str, env: &[(String, String)], log: PathBuf) -> Child {
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

/// Sends SIGTERM and waits (at most 30 s) for the process to exit.
pub(crate) async fn terminate(mut child: Child) -> std::process::ExitStatus {
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
