//! Measures the history service on a MariaDB and Redis of your choosing:
//! how fast the ingest drains the streams, and how fast GetHistory answers
//! on the table that results.
//!
//!   cargo run --release -p history-service --example history_load -- \
//!       DATABASE_URL REDIS_URL [MESSAGES] [CONVERSATIONS]
//!
//! e.g. `mysql://clusterchat:clusterchat@127.0.0.1:3309/history_load
//! redis://127.0.0.1:6481 1000000 20000`. It writes MESSAGES entries (chat
//! texts of 6 to 14 words, Chinese and English, drawn from a vocabulary
//! where a few words are common and most are rare; spread over
//! CONVERSATIONS 1:1 conversations) to the streams of a fresh key prefix
//! exactly as gateways do, starts the service, waits until every message is
//! stored (the ingest rate), then times GetHistory of 50 messages at random
//! places and SearchMessages (one word common, medium or rare; an English prefix;
//! two words), 200 of each, as a party to the conversations (p50/p99/max). The database is used as
//! given: run it on a fresh one. `CLUSTERCHAT_HISTORY_LANES` sets the
//! ingest's lanes (default 1), `CLUSTERCHAT_HISTORY_SEARCH=off` ingests
//! without the search index (and skips the searches). `HISTORY_LOAD_DB_PID`:
//! the database server's pid, to report its CPU per stored message over the
//! ingest as well. `just bench-search` runs it on a private MariaDB and Redis.

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

/// Characters the Chinese words are made of (two each).
const HANZI: &str = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双历越史商千片容研像找友孩站广改议形委早房音火际则首单据导影失拿网香似斯专石若兵弟谁校读志飞观争究包组造落视济喜离虽坏兴";
const ENGLISH: [&str; 40] = [
    "meeting", "tomorrow", "lunch", "project", "deadline", "coffee", "weekend", "review",
    "release", "customer", "design", "budget", "invoice", "holiday", "train", "airport", "report",
    "server", "database", "network", "kernel", "feature", "ticket", "sprint", "coffee", "dinner",
    "movie", "birthday", "doctor", "school", "football", "concert", "museum", "garden", "window",
    "camera", "bicycle", "guitar", "planet", "rocket",
];

/// A chat's text: 6 to 14 words, mostly Chinese, some English and numbers.
/// Word `k` of the vocabulary is drawn with probability falling with `k`
/// (the cube of a uniform number), so low words are common.
fn text_of(state: &mut u64) -> String {
    let hanzi: Vec<char> = HANZI.chars().collect();
    let words = 6 + next(state) % 9;
    let mut text = String::new();
    for _ in 0..words {
        let roll = next(state);
        if roll % 10 == 0 {
            let k = skewed(state, ENGLISH.len() as u64);
            text.push(' ');
            text.push_str(ENGLISH[k as usize]);
            text.push(' ');
        } else if roll % 23 == 0 {
            text.push_str(&(next(state) % 100_000).to_string());
        } else {
            let k = skewed(state, (hanzi.len() * hanzi.len()) as u64) as usize;
            text.push(hanzi[k / hanzi.len()]);
            text.push(hanzi[k % hanzi.len()]);
        }
    }
    text.trim().to_owned()
}

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A number below `n`, low ones far more often (u³ · n).
fn skewed(state: &mut u64, n: u64) -> u64 {
    let u = (next(state) % 1_000_000) as f64 / 1_000_000.0;
    ((u * u * u) * n as f64) as u64
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
    let mut words: u64 = 0x9e37_79b9_7f4a_7c15;
    let search = std::env::var("CLUSTERCHAT_HISTORY_SEARCH").map_or(true, |v| v != "off");
    let kinds = search_kinds();
    let mut holding = vec![0u64; kinds.len()];

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
                let text = text_of(&mut words);
                for ((_, query), count) in kinds.iter().zip(holding.iter_mut()) {
                    if query.split(' ').all(|w| text.contains(w)) {
                        *count += 1;
                    }
                }
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

    // A user service for group memberships (a search over all of a user's
    // conversations asks it; these users are in no group), its database
    // next to the history's.
    let users_url = format!("{}_users", database_url.trim_end_matches('/'));
    let users =
        user_service::Application::build(user_service::Config::for_tests(&users_url)).await?;
    let users_addr = users.local_addr();
    let users_shutdown = Shutdown::new();
    tokio::spawn(users.run_until_stopped(users_shutdown.clone()));
    let mut config = Config::for_tests(
        database_url,
        redis_url,
        &prefix,
        &format!("http://{users_addr}"),
    );
    config.mysql.max_connections = 16;
    config.metrics_listen = None;
    config.search.enabled = search;
    let index_only = {
        let mut config = config.clone();
        config.search.scan_rows = 0;
        config
    };
    println!("search index: {}", if search { "on" } else { "off" });
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
    shutdown_after_searches(
        search,
        (&mut client, conversations, written, &holding),
        shutdown,
        running,
    )
    .await?;
    if search {
        // The same searches asked of the index alone, as for a user whose
        // conversations hold more than CLUSTERCHAT_HISTORY_SEARCH_SCAN_ROWS.
        println!("again, every search answered by the index (SEARCH_SCAN_ROWS=0):");
        let app = Application::build(index_only).await?;
        let addr = app.local_addr();
        let shutdown = Shutdown::new();
        let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let mut client = HistoryServiceClient::with_interceptor(channel, Bearer);
        shutdown_after_searches(
            true,
            (&mut client, conversations, written, &holding),
            shutdown,
            running,
        )
        .await?;
    }
    users_shutdown.trigger();
    Ok(())
}

type Client =
    HistoryServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// The searches (when `search`), then the service stopped.
async fn shutdown_after_searches(
    search: bool,
    (client, conversations, written, holding): (&mut Client, u64, u64, &[u64]),
    shutdown: Shutdown,
    running: tokio::task::JoinHandle<Result<(), grpc_server::ServeError>>,
) -> anyhow::Result<()> {
    if search {
        search_latencies(client, conversations, written, holding).await?;
    }
    shutdown.trigger();
    running.await??;
    Ok(())
}

/// Searches timed per kind.
const SEARCHES: u64 = 200;

/// What the searches look for: one word common, medium or rare in the
/// vocabulary's draw, an English prefix, two words at once.
fn search_kinds() -> Vec<(&'static str, String)> {
    let hanzi: Vec<char> = HANZI.chars().collect();
    let word = |k: usize| -> String {
        [hanzi[k / hanzi.len()], hanzi[k % hanzi.len()]]
            .iter()
            .collect()
    };
    vec![
        ("common word (vocabulary rank 0)", word(0)),
        ("medium word (rank 40)", word(40)),
        ("rare word (rank 5000)", word(5000)),
        ("English prefix", "meet".to_owned()),
        (
            "two words (ranks 3, 200)",
            format!("{} {}", word(3), word(200)),
        ),
    ]
}

/// SearchMessages as a party to conversations at random, SEARCHES per kind;
/// `holding[i]`: how many of all messages hold kind i's words.
async fn search_latencies(
    client: &mut Client,
    conversations: u64,
    written: u64,
    holding: &[u64],
) -> anyhow::Result<()> {
    let mut state: u64 = 0x1234_5678_9abc_def1;
    for ((kind, query), holding) in search_kinds().into_iter().zip(holding) {
        let mut latencies = Vec::new();
        let mut found = 0usize;
        for _ in 0..SEARCHES {
            let c = next(&mut state) % conversations;
            let started = Instant::now();
            let page = client
                .search_messages(pb::SearchMessagesRequest {
                    user_id: parties(c).0 as i64,
                    query: query.clone(),
                    conversation: String::new(),
                    limit: 20,
                    offset: 0,
                })
                .await?
                .into_inner();
            latencies.push(started.elapsed());
            found += page.hits.len();
        }
        latencies.sort();
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        println!(
            "SearchMessages {kind} {query:?} (in {holding} of {written} messages), {} calls ({:.1} hits each): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            latencies.len(),
            found as f64 / latencies.len() as f64,
            at(0.5).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            latencies.last().expect("some").as_secs_f64() * 1e3,
        );
    }
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
