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
    publish_until(&client, "PUBLISH", &channel, &body, started, duration).await?;
    let last = settled(&received).await;
    reader.abort();
    Ok(last as f64 / started.elapsed().as_secs_f64())
}

/// Two publishers pipelining `command` (PUBLISH or SPUBLISH) 100 at a time
/// to `channel` until `duration` after `started`.
async fn publish_until(
    client: &redis::Client,
    command: &'static str,
    channel: &str,
    body: &str,
    started: Instant,
    duration: Duration,
) -> anyhow::Result<()> {
    let mut publishers = Vec::new();
    for _ in 0..2 {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let (channel, body) = (channel.to_owned(), body.to_owned());
        publishers.push(tokio::spawn(async move {
            while started.elapsed() < duration {
                let mut pipe = redis::pipe();
                for _ in 0..100 {
                    pipe.cmd(command).arg(&channel).arg(&body).ignore();
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
    Ok(())
}

/// The counter once it has stopped moving (the subscriber caught up).
async fn settled(counter: &AtomicU64) -> u64 {
    let mut last = counter.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = counter.load(Ordering::Relaxed);
        if now == last {
            return last;
        }
        last = now;
    }
}

/// The same on a Redis Cluster: raw SPUBLISH → one SSUBSCRIBEd subscriber
/// on every master at once (a channel in a slot each master owns, published
/// to that master directly), summed. `nodes`: `host:port` of any nodes;
/// the masters come from `CLUSTER NODES`.
pub(crate) async fn cluster_ceiling(
    nodes: &[String],
    payload: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let seed = nodes
        .first()
        .ok_or_else(|| anyhow::anyhow!("no cluster node given"))?;
    let mut conn = redis::Client::open(format!("redis://{seed}"))?
        .get_multiplexed_async_connection()
        .await?;
    let listing: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await?;
    let masters = masters_of(&listing);
    anyhow::ensure!(!masters.is_empty(), "CLUSTER NODES lists no master");
    let stamp = now_nanos();
    let mut channels = Vec::new();
    for (address, ranges) in &masters {
        let mut found = None;
        for i in 0..100_000u32 {
            let name = format!("bench:ceiling:{stamp}:{i}");
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&name)
                .query_async(&mut conn)
                .await?;
            if ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)) {
                found = Some(name);
                break;
            }
        }
        let name = found.ok_or_else(|| anyhow::anyhow!("no channel found for {address}"))?;
        channels.push((address.clone(), name));
    }
    let body = "x".repeat(payload);
    let started = Instant::now();
    let runs = channels.into_iter().map(|(address, channel)| {
        let body = body.clone();
        async move { shard_ceiling(&address, &channel, &body, started, duration).await }
    });
    let received: u64 = futures::future::try_join_all(runs).await?.into_iter().sum();
    Ok(received as f64 / started.elapsed().as_secs_f64())
}

/// Messages one master's subscriber got from two pipelining publishers.
async fn shard_ceiling(
    address: &str,
    channel: &str,
    body: &str,
    started: Instant,
    duration: Duration,
) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // The subscriber speaks RESP itself: every push of this channel and
    // payload has the same length, so bytes read tell messages received.
    let mut subscriber = tokio::net::TcpStream::connect(address).await?;
    let subscribe = format!(
        "*2\r\n$10\r\nSSUBSCRIBE\r\n${}\r\n{channel}\r\n",
        channel.len()
    );
    subscriber.write_all(subscribe.as_bytes()).await?;
    let confirm = format!(
        "*3\r\n$10\r\nssubscribe\r\n${}\r\n{channel}\r\n:1\r\n",
        channel.len()
    );
    let mut skip = vec![0; confirm.len()];
    subscriber.read_exact(&mut skip).await?;
    anyhow::ensure!(
        skip == confirm.as_bytes(),
        "unexpected SSUBSCRIBE reply from {address}"
    );
    let push = format!(
        "*3\r\n$8\r\nsmessage\r\n${}\r\n{channel}\r\n${}\r\n{body}\r\n",
        channel.len(),
        body.len()
    )
    .len() as u64;
    let bytes = Arc::new(AtomicU64::new(0));
    let counter = bytes.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0; 1 << 16];
        while let Ok(n) = subscriber.read(&mut buf).await {
            if n == 0 {
                break;
            }
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    let client = redis::Client::open(format!("redis://{address}"))?;
    publish_until(&client, "SPUBLISH", channel, body, started, duration).await?;
    let last = settled(&bytes).await;
    reader.abort();
    Ok(last / push)
}

/// Masters (`host:port`) and their slot ranges, from `CLUSTER NODES`.
fn masters_of(listing: &str) -> Vec<(String, Vec<(u16, u16)>)> {
    listing
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                return None;
            }
            let address = fields[1].split('@').next()?.to_owned();
            let ranges: Vec<(u16, u16)> = fields[8..]
                .iter()
                .filter(|r| !r.starts_with('['))
                .filter_map(|r| match r.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => r.parse().ok().map(|s| (s, s)),
                })
                .collect();
            (!ranges.is_empty()).then_some((address, ranges))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::masters_of;

    #[test]
    fn masters_and_their_slots_from_a_cluster_listing() {
        let listing = "\
a1 127.0.0.1:6511@16511 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:6512@16512 master - 0 0 2 connected 5461-10922 [5000->-a1]
c3 127.0.0.1:6513@16513 master - 0 0 3 connected 10923-16383 7
d4 127.0.0.1:6514@16514 slave a1 0 0 1 connected
e5 127.0.0.1:6515@16515 master,fail - 0 0 4 connected
";
        assert_eq!(
            masters_of(listing),
            vec![
                ("127.0.0.1:6511".to_owned(), vec![(0, 5460)]),
                ("127.0.0.1:6512".to_owned(), vec![(5461, 10922)]),
                ("127.0.0.1:6513".to_owned(), vec![(10923, 16383), (7, 7)]),
            ]
        );
    }
}
