//! The scenarios, one module each, and what they share: logging users in,
//! the receiver task that records latency samples, the chat frame that
//! carries its send time, and waiting for delivery to finish.

pub(crate) mod ceiling;
pub(crate) mod closed_loop;
pub(crate) mod group;
pub(crate) mod history_comparison;
pub(crate) mod idle;
pub(crate) mod logins;
pub(crate) mod one_to_one;
pub(crate) mod online;
pub(crate) mod presence;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use tokio_rustls::TlsConnector;

use crate::{
    client::Client,
    stats::{RunResult, Sample},
};

const PASSWORD: &str = "bench-password";

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Logs `count` fresh users in, user i on `nodes[(i + offset) % N]`
/// (through TLS with `tls`).
async fn logged_in_clients(
    prefix: &str,
    count: usize,
    nodes: &[SocketAddr],
    offset: usize,
    acks: bool,
    tls: Option<&TlsConnector>,
) -> anyhow::Result<Vec<(i64, Client)>> {
    let mut out = Vec::with_capacity(count);
    let mut setup = Client::connect_via(nodes[offset % nodes.len()], tls).await?;
    for i in 0..count {
        let id = setup.register(&format!("{prefix}{i}"), PASSWORD).await?;
        let mut client = Client::connect_via(nodes[(i + offset) % nodes.len()], tls).await?;
        client.login_as(id, PASSWORD, acks).await?;
        out.push((id, client));
    }
    Ok(out)
}

/// Reads chats from a receiver until stopped, recording samples; a
/// receiver that acknowledges (`acks`) does so every 100 ms, and pings
/// every 4 s: the gateway closes such a client when it has been silent for
/// its idle timeout (10 s), and between runs (while the history service
/// catches up) nothing else would be sent.
fn spawn_receiver(
    mut client: Client,
    acks: bool,
    samples: Arc<Mutex<Vec<Sample>>>,
    received: Arc<AtomicU64>,
) {
    tokio::spawn(async move {
        let mut shown = 0u64;
        let mut acked = 0u64;
        let mut last_ack = Instant::now();
        let mut ping = tokio::time::interval(Duration::from_secs(4));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Kept across a ping: read_until appends what it read before
        // another branch won, and is called again to go on.
        let mut line = Vec::new();
        loop {
            tokio::select! {
                read = client.reader.read_until(b'\n', &mut line) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return;
                    }
                }
                _ = ping.tick(), if acks => {
                    if client.send(&json!({"msgid": 13})).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
            let message: Value = serde_json::from_slice(line.trim_ascii_end()).unwrap_or_default();
            line.clear();
            if let Some(rseq) = message["rseq"].as_u64() {
                shown = shown.max(rseq);
                if shown > acked && last_ack.elapsed() >= Duration::from_millis(100) {
                    if client
                        .send(&json!({"msgid": 12, "ack": shown}))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    acked = shown;
                    last_ack = Instant::now();
                }
            }
            let Some(text) = message["msg"].as_str() else {
                continue;
            };
            let mut parts = text.splitn(5, ':');
            let (Some(run), Some(sender), Some(seq), Some(sent)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(run), Ok(sender), Ok(seq), Ok(sent)) = (
                run.parse(),
                sender.parse(),
                seq.parse(),
                sent.parse::<u64>(),
            ) else {
                continue;
            };
            let latency = now_nanos().saturating_sub(sent);
            samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((run, sender, seq, latency));
            received.fetch_add(1, Ordering::Relaxed);
        }
    });
}

#[derive(Clone, Copy)]
enum Target {
    User(i64),
    Group(i64),
}

/// A classic chat whose text carries (run, sender, seq, send time) for the
/// receiver to measure latency and loss.
fn chat_frame(from: i64, target: Target, run: u32, sender: usize, seq: u64, pad: &str) -> String {
    let (msgid, key, to) = match target {
        Target::User(id) => (6, "toid", id),
        Target::Group(id) => (10, "groupid", id),
    };
    format!(
        r#"{{"msgid":{msgid},"id":{from},"{key}":{to},"msg":"{run}:{sender}:{seq}:{}:{pad}","time":"2026-01-01 00:00:00"}}"#,
        now_nanos()
    )
}

/// Waits until `received` stops growing (2 s) or reaches `expected`.
/// A saturated sender fills its socket buffers, the gateway's and (through
/// a proxy, `--tls-nodes`) nginx's: on a Redis Cluster on two cores that is
/// about six minutes of chats at its saturation. So only a stall ends the
/// wait early, and 600 s at most (at 180 s the cluster's saturation run
/// reported some 200,000 chats "not delivered" that were on their way).
async fn drain(received: &AtomicU64, expected: u64) {
    let mut last = received.load(Ordering::Relaxed);
    let mut still = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = received.load(Ordering::Relaxed);
        if now >= expected {
            return;
        }
        if now != last {
            last = now;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_secs(2) {
            return;
        }
    }
}

/// Scenario 1 in both runs, and what the watched processes spent in each.
pub(crate) struct OneToOneRows {
    pub(crate) fixed: RunResult,
    pub(crate) saturated: RunResult,
    pub(crate) cpu_fixed: Value,
    pub(crate) cpu_saturated: Value,
    /// With `history`: the runs with the history service stopped and what
    /// the service did; `fixed` and `saturated` are then the median runs.
    pub(crate) history: Option<serde_json::Map<String, Value>>,
}
