//! The ceiling: raw Redis PUBLISH → subscriber throughput on this machine,
//! which the cross-node saturation is reported as a ratio of.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;

use super::now_nanos;

/// Raw PUBLISH → one subscriber throughput, pipelined, with payloads of the
/// size our messages have on the bus.
pub(crate) async fn redis_ceiling(
    url: &str,
    payload: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let channel = format!("bench:ceiling:{}", now_nanos());
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&channel).await?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        let mut stream = pubsub.on_message();
        while stream.next().await.is_some() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let body = "x".repeat(payload);
    let started = Instant::now();
    let mut publishers = Vec::new();
    for _ in 0..2 {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let (channel, body) = (channel.clone(), body.clone());
        publishers.push(tokio::spawn(async move {
            while started.elapsed() < duration {
                let mut pipe = redis::pipe();
                for _ in 0..100 {
                    pipe.cmd("PUBLISH").arg(&channel).arg(&body).ignore();
                }
                if pipe.query_async::<()>(&mut conn).await.is_err() {
                    break;
                }
            }
        }));
    }
    for p in publishers {
        let _ = p.await;
    }
    let mut last = received.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = received.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    reader.abort();
    Ok(last as f64 / started.elapsed().as_secs_f64())
}
