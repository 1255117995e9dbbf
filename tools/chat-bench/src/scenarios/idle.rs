//! Scenario 3, `idle`: idle connections on one node, and the resident
//! memory each costs its process.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::net::TcpSocket;

use crate::procs;

/// The soft RLIMIT_NOFILE of this process, as /proc reports it.
fn open_file_limit() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

pub(crate) async fn idle_memory(node: SocketAddr, pid: u32, count: usize) -> anyhow::Result<Value> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procs::rss_kib(pid)?;
    // Keep some descriptors for everything else this process does.
    let limit = open_file_limit();
    let requested = count;
    let count = limit
        .parse::<usize>()
        .map_or(count, |l| count.min(l.saturating_sub(512)));
    let mut open = Vec::with_capacity(count);
    let mut failed = (count < requested).then(|| format!("the open-file limit ({limit})"));
    for i in 0..count {
        // Spread over 127.0.0.x so more than one port range is available.
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i / 20_000) as u8));
        let socket = match TcpSocket::new_v4() {
            Ok(socket) => socket,
            Err(e) => {
                failed = Some(format!(
                    "{e} (this process's open-file limit: {})",
                    open_file_limit()
                ));
                break;
            }
        };
        if let Err(e) = socket.bind(SocketAddr::new(source, 0)) {
            failed = Some(e.to_string());
            break;
        }
        match socket.connect(node).await {
            Ok(stream) => open.push(stream),
            Err(e) => {
                failed = Some(format!(
                    "{e} (this process's open-file limit: {})",
                    open_file_limit()
                ));
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = procs::rss_kib(pid)?;
    let opened = open.len();
    drop(open);
    let per_connection = (after.saturating_sub(before)) as f64 * 1024.0 / opened.max(1) as f64;
    Ok(json!({
        "requested": requested,
        "opened": opened,
        "stopped_by": failed,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_connection": per_connection,
    }))
}
