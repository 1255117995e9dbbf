//! Scenario `closed-loop`: one pair across nodes, the sender waiting for
//! the receiver before its next chat. Its rate is one chat's whole path
//! (sender → gateway → Redis → the other gateway → receiver) with nothing
//! else in flight: the latency a quiet conversation sees, and what the
//! classic C++ server is compared with. The receiver is a classic client
//! (no acknowledgements), as the classic client is.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use super::{PASSWORD, Target, chat_frame};
use crate::{Args, client::Client, procs, stats::Latencies};

/// Chats sent before measuring (connections, caches and buffers warm).
const WARM_UP: u64 = 200;

pub(crate) async fn closed_loop(args: &Args, prefix: &str) -> anyhow::Result<Value> {
    let (from, to) = (args.nodes[0], args.nodes[1 % args.nodes.len()]);
    let mut setup = Client::connect(from).await?;
    let sender_id = setup.register(&format!("{prefix}c0"), PASSWORD).await?;
    let receiver_id = setup.register(&format!("{prefix}c1"), PASSWORD).await?;
    let mut sender = Client::connect(from).await?;
    sender.login(sender_id, PASSWORD).await?;
    let mut receiver = Client::connect(to).await?;
    receiver.login(receiver_id, PASSWORD).await?;
    let pad = "x".repeat(args.size.saturating_sub(40));
    let mut pair = Pair {
        sender,
        receiver,
        sender_id,
        receiver_id,
        pad,
        line: Vec::new(),
    };
    for seq in 0..WARM_UP {
        pair.one(seq).await?;
    }
    let duration = Duration::from_secs(args.duration);
    let before = procs::snapshot(&args.pids);
    let started = Instant::now();
    let mut latencies = Latencies::default();
    let mut seq = WARM_UP;
    while started.elapsed() < duration {
        let took = pair.one(seq).await?;
        latencies
            .0
            .push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        seq += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let count = seq - WARM_UP;
    let cpu = if args.pids.is_empty() {
        Value::Null
    } else {
        procs::spent(&args.pids, &before, count, 100_000.0, "100k messages")
    };
    // A chat the receiver does not get within 10 s ends the run with an
    // error, so every chat counted here was delivered.
    Ok(json!({
        "sent": count,
        "delivered": count,
        "lost": 0,
        "delivered_per_sec": count as f64 / seconds,
        "latency": latencies.summary(),
        "cpu": cpu,
    }))
}

struct Pair {
    sender: Client,
    receiver: Client,
    sender_id: i64,
    receiver_id: i64,
    pad: String,
    line: Vec<u8>,
}

impl Pair {
    /// One chat, from its write until the receiver has read it.
    async fn one(&mut self, seq: u64) -> anyhow::Result<Duration> {
        let frame = chat_frame(
            self.sender_id,
            Target::User(self.receiver_id),
            5,
            0,
            seq,
            &self.pad,
        );
        let started = Instant::now();
        self.sender.writer.write_all(frame.as_bytes()).await?;
        self.sender.writer.write_all(&[0]).await?;
        self.sender.flush().await?;
        let wanted = format!("\"5:0:{seq}:");
        loop {
            self.line.clear();
            let read = tokio::time::timeout(
                Duration::from_secs(10),
                self.receiver.reader.read_until(b'\n', &mut self.line),
            )
            .await??;
            anyhow::ensure!(read > 0, "the receiver's connection closed");
            if self
                .line
                .windows(wanted.len())
                .any(|w| w == wanted.as_bytes())
            {
                return Ok(started.elapsed());
            }
        }
    }
}
