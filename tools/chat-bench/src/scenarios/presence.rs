//! Scenario `presence`: what a presence change costs (issue 22). One user
//! with `--presence-watchers` online friends (1,000 by default, spread over
//! the nodes, each logged in as a device that asked for presence) logs in
//! and then out: how long until every watcher was told (msgid 22), and the
//! Redis calls and CPU of the two changes.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use serde_json::{Value, json};

use super::PASSWORD;
use crate::{Args, client::Client, procs, redis_calls};

/// How long all the watchers may take to be told, before the run says so.
const PATIENCE: Duration = Duration::from_secs(60);

pub(crate) async fn presence_fanout(args: &Args, prefix: &str) -> anyhow::Result<Value> {
    let watchers = args.presence_watchers.max(1);
    let mut setup = Client::connect(args.nodes[0]).await?;
    let star = setup.register(&format!("{prefix}p0"), PASSWORD).await?;

    // Each watcher: registered, logged in (asking for presence), the star's
    // friend, then left to a task that notes when it heard the star come
    // and go, and pings (a device that says nothing is closed after the
    // idle timeout, and setting up a thousand takes longer than that). A
    // few at a time: registering and logging in hash passwords.
    let heard: Arc<Mutex<(Vec<Instant>, Vec<Instant>)>> = Arc::default();
    let set_up: Vec<anyhow::Result<()>> = futures::stream::iter(1..=watchers)
        .map(|i| {
            let node = args.nodes[i % args.nodes.len()];
            let name = format!("{prefix}p{i}");
            let heard = heard.clone();
            async move {
                let mut c = Client::connect(node).await?;
                let id = c.register(&name, PASSWORD).await?;
                c.send(&json!({"msgid": 1, "id": id, "password": PASSWORD, "acks": true, "presence": true}))
                    .await?;
                let ack = c.recv().await?;
                anyhow::ensure!(ack["errno"] == 0, "login {id}: {ack}");
                c.send(&json!({"msgid": 7, "friendid": star, "seq": 1})).await?;
                loop {
                    let reply = c.recv().await?;
                    if reply["seq"] == 1 {
                        anyhow::ensure!(reply["errno"] == 0, "add friend: {reply}");
                        break;
                    }
                }
                tokio::spawn(watch(c, star, heard));
                Ok(())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for done in set_up {
        done?;
    }

    let calls_before = redis_calls::snapshot(&args.redis_info).await;
    let cpu_before = procs::snapshot(&args.pids);
    let mut me = Client::connect(args.nodes[0]).await?;
    let login_at = Instant::now();
    me.send(&json!({"msgid": 1, "id": star, "password": PASSWORD, "acks": true, "presence": true}))
        .await?;
    let ack = me.recv().await?;
    anyhow::ensure!(ack["errno"] == 0, "the star's login: {ack}");
    let login_ms = login_at.elapsed().as_secs_f64() * 1000.0;
    let online = wait_for(&heard, watchers, |h| h.0.len()).await;
    let logout_at = Instant::now();
    me.send(&json!({"msgid": 3, "id": star})).await?;
    let offline = wait_for(&heard, watchers, |h| h.1.len()).await;

    let cpu = if args.pids.is_empty() {
        Value::Null
    } else {
        procs::spent(&args.pids, &cpu_before, 2, 1.0, "presence change")
    };
    let calls = match (calls_before, redis_calls::snapshot(&args.redis_info).await) {
        (Some(before), Some(now)) => redis_calls::per_unit(&before, &now, 2),
        _ => Value::Null,
    };
    let heard = heard.lock().unwrap_or_else(|p| p.into_inner());
    Ok(json!({
        "watchers": watchers,
        "login_ack_ms": login_ms,
        "online": arrivals(&heard.0, login_at, online),
        "offline": arrivals(&heard.1, logout_at, offline),
        "cpu_per_change": cpu,
        "redis_calls_per_change": calls,
    }))
}

/// One watcher: notes when it hears the star come online and go offline;
/// pings every 5 s of silence.
async fn watch(mut client: Client, star: i64, heard: Arc<Mutex<(Vec<Instant>, Vec<Instant>)>>) {
    loop {
        let frame = match tokio::time::timeout(Duration::from_secs(5), client.recv()).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => return,
            Err(_) => {
                if client.send(&json!({"msgid": 13})).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if frame["msgid"] == 22 && frame["id"] == star {
            let mut heard = heard.lock().unwrap_or_else(|p| p.into_inner());
            if frame["online"] == true {
                heard.0.push(Instant::now());
            } else {
                heard.1.push(Instant::now());
            }
        }
    }
}

/// Waits until `count` of `heard` reaches `want` (or the patience ends).
async fn wait_for(
    heard: &Mutex<(Vec<Instant>, Vec<Instant>)>,
    want: usize,
    count: impl Fn(&(Vec<Instant>, Vec<Instant>)) -> usize,
) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if count(&heard.lock().unwrap_or_else(|p| p.into_inner())) >= want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// How long after `from` the watchers heard it: p50, p99, the last.
fn arrivals(at: &[Instant], from: Instant, complete: bool) -> Value {
    let mut ms: Vec<f64> = at
        .iter()
        .map(|t| t.saturating_duration_since(from).as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        ms.get(((ms.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
    };
    json!({"told": ms.len(), "all_told": complete, "p50_ms": pick(0.5), "p99_ms": pick(0.99), "last_ms": ms.last()})
}
