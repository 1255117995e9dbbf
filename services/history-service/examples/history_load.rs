//! Measures the history service on a MariaDB and Redis of your choosing:
//! how fast the ingest drains the streams, and how fast GetHistory answers
//! on the table that results.
//!
//!   cargo run --release -p history-service --example history_load -- \
//!       DATABASE_URL REDIS_URL [MESSAGES] [CONVERSATIONS]
//!
//! e.g. `mysql://clusterchat:clusterchat@127.0.0.1:3309/history_load
//! redis://127.0.0.1:6481 1000000 20000`. It writes MESSAGES entries (100-byte
//! texts, spread over CONVERSATIONS 1:1 conversations) to the streams of a
//! fresh key prefix exactly as gateways do, starts the service, waits until
//! every message is stored (the ingest rate), then times GetHistory of 50
//! messages at random places (p50/p99/max). The database is used as given:
//! run it on a fresh one. `CLUSTERCHAT_HISTORY_LANES` sets the ingest's
//! lanes (default 1). `HISTORY_LOAD_DB_PID`: the database server's pid, to
//! report its CPU per stored message over the ingest as well.

use std::time::{Duration, Instant};

use clusterchat_proto::history::v1::{self as pb, history_service_client::HistoryServiceClient};
use history_service::{
    Application, Config,
    config::TEST_INTERNAL_TOKEN,
    stream::{Connection, RedisTarget, partition_key},
};
use shutdown::Shutdown;
use tonic::{service::Interceptor, transport::Channel};

#[derive(Clone)]
struct Bearer;

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let value = format!("Bearer {TEST_INTERNAL_TOKEN}")
            .parse()
            .expect("ascii");
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

fn partition(conv: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in conv.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % 16
}

const SEQ: u64 = 1_795_600_000_000_000;

/// The conversation of index `i`: users `i + 1` and a partner spread by a
/// multiplicative hash. (Pairs like `2i+1, 2i+2` fall in a quarter of the
/// partitions: FNV-1a's low bits follow the low bits of each byte.)
fn parties(i: u64) -> (u64, u64) {
    let a = i + 1;
    (a, a + 1 + i.wrapping_mul(2_654_435_761) % 99_991)
}

fn conv_of(i: u64) -> String {
    let (a, b) = parties(i);
    format!("d:{a}:{b}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_for_tests();
    let args: Vec<String> = std::env::args().collect();
    let (Some(database_url), Some(redis_url)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: history_load DATABASE_URL REDIS_URL [MESSAGES] [CONVERSATIONS]");
    };
    let messages: u64 = args.get(3).map_or(Ok(1_000_000), |s| s.parse())?;
    let conversations: u64 = args.get(4).map_or(Ok(20_000), |s| s.parse())?;
    let per_conversation = messages.div_ceil(conversations);
    let prefix = format!("load{}:", std::process::id());
    let text = "x".repeat(100);

    // The streams, as gateways write them (MAXLEN high enough to keep all).
    let mut redis = Connection::open(&RedisTarget::parse(redis_url)).await?;
    let started = Instant::now();
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as i64;
    let mut written = 0u64;
    for round in 0..per_conversation {
        for chunk_start in (0..conversations).step_by(1000) {
            let mut pipe = redis::pipe();
            for c in chunk_start..(chunk_start + 1000).min(conversations) {
                if written >= messages {
                    break;
                }
                let conv = conv_of(c);
                let seq = SEQ + round;
                let mid = format!("{c}-{round}");
                let (a, b) = parties(c);
                let (from, to) = if round % 2 == 0 { (a, b) } else { (b, a) };
                let frame = format!(
                    r#"{{"msgid":6,"id":{from},"name":"u{from}","toid":{to},"msg":"{text}","time":"2026-11-25 10:00:00","conv":"{conv}","cseq":{seq},"mid":"{mid}"}}"#
                );
                pipe.cmd("XADD")
                    .arg(partition_key(&prefix, partition(&conv)))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(10_000_000)
                    .arg("*")
                    // One field, as the gateways write a chat.
                    .arg("m")
                    .arg(format!(
                        "{conv} {seq} {mid} {from} {} \n{frame}",
                        at + (round * conversations + c) as i64
                    ))
                    .ignore();
                written += 1;
            }
            let () = pipe.query_async(&mut redis).await?;
        }
    }
    println!(
        "wrote {written} entries ({conversations} conversations) in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut config = Config::for_tests(database_url, redis_url, &prefix, "http://127.0.0.1:1");
    config.mysql.max_connections = 16;
    config.metrics_listen = None;
    // The ingest's lanes (CLUSTERCHAT_HISTORY_LANES, as the service reads it).
    if let Ok(lanes) = std::env::var("CLUSTERCHAT_HISTORY_LANES") {
        config.ingest.lanes = lanes.parse()?;
    }
    println!("ingest lanes: {}", config.ingest.lanes);
    let app = Application::build(config).await?;
    let addr = app.local_addr();
    let shutdown = Shutdown::new();
    let started = Instant::now();
    let cpu_before = own_cpu_seconds();
    let db_pid = std::env::var("HISTORY_LOAD_DB_PID").ok();
    let db_before = db_pid.as_deref().map(cpu_seconds_of);
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = HistoryServiceClient::with_interceptor(channel, Bearer);

    // Drained when the service has stored every message (its own counter,
    // read in this process).
    let _ = &mut client;
    loop {
        let stored = telemetry::metrics::encode()
            .lines()
            .find_map(|l| l.strip_prefix("clusterchat_history_ingested_messages_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if stored as u64 >= written {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let cpu = own_cpu_seconds() - cpu_before;
    println!(
        "ingested {written} messages in {took:.1} s: {:.0} messages/s; the service's CPU {:.1} us per message",
        written as f64 / took,
        cpu * 1e6 / written as f64
    );
    if let (Some(pid), Some(before)) = (db_pid.as_deref(), db_before) {
        println!(
            "the database server's CPU over the ingest: {:.1} us per message",
            (cpu_seconds_of(pid) - before) * 1e6 / written as f64
        );
    }

    for line in telemetry::metrics::encode().lines() {
        if line.starts_with("clusterchat_history_ingest_batch")
            && (line.contains("_sum") || line.contains("_count"))
        {
            println!("{line}");
        }
    }

    // GetHistory of 50 at random places (newest pages and pages before a
    // seq), right after the ingest and again once the database has settled.
    for round in ["right after the ingest", "10 s later"] {
        if round != "right after the ingest" {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let mut latencies = Vec::new();
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..5000u64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let c = state % conversations;
            let before = if i % 2 == 0 {
                0
            } else {
                SEQ + 1 + state % per_conversation
            };
            let started = Instant::now();
            let page = client
                .get_history(pb::GetHistoryRequest {
                    user_id: parties(c).0 as i64,
                    conversation: conv_of(c),
                    before_seq: before,
                    after_seq: 0,
                    limit: 50,
                })
                .await?
                .into_inner();
            latencies.push(started.elapsed());
            assert!(!page.messages.is_empty());
        }
        latencies.sort();
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        println!(
            "GetHistory(limit 50) {round}, {} calls on {written} rows: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            latencies.len(),
            at(0.5).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            latencies.last().expect("some").as_secs_f64() * 1e3,
        );
    }
    shutdown.trigger();
    running.await??;
    Ok(())
}

/// CPU (user + system) this process has used, from /proc (0 elsewhere).
fn own_cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

/// CPU (user + system) process `pid` ("self": this one) has used.
fn cpu_seconds_of(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime, stime
    // are the 14th and 15th of the line.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}
