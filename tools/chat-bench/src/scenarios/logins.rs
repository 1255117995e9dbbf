//! Scenario 4, `logins`: concurrent clients logging in and out, logins per
//! second.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::PASSWORD;
use crate::{Args, client::Client};

pub(crate) async fn logins(args: &Args, prefix: &str) -> anyhow::Result<Value> {
    let mut setup = Client::connect(args.nodes[0]).await?;
    let mut ids = Vec::new();
    for i in 0..args.login_clients {
        ids.push(setup.register(&format!("{prefix}l{i}"), PASSWORD).await?);
    }
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let node = args.nodes[i % args.nodes.len()];
        let (done, count, failures) = (done.clone(), count.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut client) = Client::connect(node).await else {
                return;
            };
            let mut seq = 0;
            while !done.load(Ordering::Relaxed) {
                match client.login(id, PASSWORD).await {
                    Ok(_) => count.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                };
                seq += 1;
                // Logout with seq so the next login starts after it took effect.
                if client
                    .send(&json!({"msgid": 3, "id": id, "seq": seq}))
                    .await
                    .is_err()
                    || client.recv().await.is_err()
                {
                    return;
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    done.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(json!({
        "clients": args.login_clients,
        "logins": count.load(Ordering::Relaxed),
        "failures": failures.load(Ordering::Relaxed),
        "logins_per_sec": count.load(Ordering::Relaxed) as f64 / seconds,
    }))
}
