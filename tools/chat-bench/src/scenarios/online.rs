//! Scenario 5, `online`: what logged-in users and their undelivered inbox
//! entries cost the gateways' resident memory and Redis's `used_memory`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use super::{PASSWORD, Target, chat_frame, drain, logged_in_clients};
use crate::{
    Args,
    client::Client,
    procs::{self, Watched},
};

/// Sum of `used_memory` (INFO memory) over the Redis instances in `addrs`.
async fn redis_used_memory(addrs: &[SocketAddr]) -> anyhow::Result<u64> {
    let mut total = 0;
    for addr in addrs {
        let client = redis::Client::open(format!("redis://{addr}"))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?;
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no used_memory in INFO of {addr}"))?;
    }
    Ok(total)
}

/// Resident memory of every watched gateway (`gateway-*`), summed.
fn gateways_rss_kib(watched: &[Watched]) -> u64 {
    watched
        .iter()
        .filter(|w| w.group() == "gateway")
        .filter_map(|w| procs::rss_kib(w.pid).ok())
        .sum()
}

/// Scenario 5: `online_users` users log in (spread over the nodes) as
/// clients that acknowledge but never do, then each is sent
/// `inbox_entries` chats, which stay in their inboxes undelivered (a chat
/// is trimmed only once acknowledged). Reads the gateways' resident memory
/// and Redis's `used_memory` (the `--redis-info` masters; replicas hold as
/// much again) before, after the logins and after the chats.
pub(crate) async fn online(args: &Args, prefix: &str) -> anyhow::Result<Value> {
    let users = args.online_users;
    let settle = || tokio::time::sleep(Duration::from_secs(1));
    settle().await;
    let redis_before = redis_used_memory(&args.redis_info).await?;
    let rss_before = gateways_rss_kib(&args.pids);
    // Registering and logging in hash a password each: eight at a time.
    let workers = 8.min(users.max(1));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let nodes = args.nodes.clone();
        let prefix = format!("{prefix}o{w}_");
        let count = users / workers + usize::from(w < users % workers);
        tasks.push(tokio::spawn(async move {
            logged_in_clients(&prefix, count, &nodes, w, true, None).await
        }));
    }
    let received = Arc::new(AtomicU64::new(0));
    let mut ids = Vec::with_capacity(users);
    for task in tasks {
        for (id, client) in task.await?? {
            ids.push(id);
            let received = received.clone();
            // They never acknowledge (the entries stay), but they ping: the
            // gateway closes a silent acknowledging client after 10 s, and
            // its inbox would then move to the offline store.
            let Client {
                mut reader,
                mut writer,
            } = client;
            tokio::spawn(async move {
                let mut ping = tokio::time::interval(Duration::from_secs(4));
                loop {
                    ping.tick().await;
                    let sent = async {
                        writer.write_all(b"{\"msgid\":13}\0").await?;
                        writer.flush().await
                    };
                    if sent.await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let message: Value = serde_json::from_str(line.trim_end()).unwrap_or_default();
                    if message["msg"].is_string() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    }
    settle().await;
    let redis_logged_in = redis_used_memory(&args.redis_info).await?;
    let rss_logged_in = gateways_rss_kib(&args.pids);

    let mut sender = Client::connect(args.nodes[0]).await?;
    let sender_id = sender
        .register(&format!("{prefix}osender"), PASSWORD)
        .await?;
    sender.login(sender_id, PASSWORD).await?;
    let pad = "x".repeat(args.size.saturating_sub(40));
    let mut sent = 0u64;
    for seq in 0..args.inbox_entries as u64 {
        for (i, &to) in ids.iter().enumerate() {
            let frame = chat_frame(sender_id, Target::User(to), 5, i, seq, &pad);
            sender.writer.write_all(frame.as_bytes()).await?;
            sender.writer.write_all(&[0]).await?;
            sent += 1;
        }
        sender.flush().await?;
    }
    drain(&received, sent).await;
    settle().await;
    let redis_entries = redis_used_memory(&args.redis_info).await?;
    let rss_entries = gateways_rss_kib(&args.pids);
    let per = |a: u64, b: u64, n: u64| (b as f64 - a as f64) / n.max(1) as f64;
    let entries = received.load(Ordering::Relaxed);
    Ok(json!({
        "users": ids.len(),
        "entries_sent": sent,
        "entries_delivered_unacknowledged": entries,
        "redis_instances": args.redis_info.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "redis_used_memory": {"before": redis_before, "logged_in": redis_logged_in, "with_entries": redis_entries},
        "gateways_rss_kib": {"before": rss_before, "logged_in": rss_logged_in, "with_entries": rss_entries},
        "redis_bytes_per_online_user": per(redis_before, redis_logged_in, ids.len() as u64),
        "redis_bytes_per_inbox_entry": per(redis_logged_in, redis_entries, sent),
        "gateway_bytes_per_online_user": per(rss_before, rss_logged_in, ids.len() as u64) * 1024.0,
    }))
}
