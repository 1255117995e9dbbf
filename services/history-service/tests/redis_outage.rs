//! The ingest through a Redis that goes away and comes back: the service
//! keeps serving what it has, keeps retrying, and stores everything written
//! meanwhile once Redis is back. One Redis server behind a cuttable proxy
//! (a Redis Cluster advertises its nodes' own addresses, which no proxy in
//! front of one seed can cut), so this runs in the single-Redis test run.

use std::{net::SocketAddr, time::Duration};

use clusterchat_proto::history::v1::{self as pb, history_service_client::HistoryServiceClient};
use history_service::{
    Application, Config,
    config::TEST_INTERNAL_TOKEN,
    stream::{Connection, RedisTarget, partition_key},
};
use shutdown::Shutdown;
use test_support::{PATIENCE, TcpProxy, assert_eventually, fresh_database_url, unique_name};
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
            .expect("ascii token");
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// The single test Redis's address (`redis://HOST:PORT`).
fn redis_addr() -> SocketAddr {
    let url = std::env::var("CLUSTERCHAT_TEST_REDIS_URL")
        .expect("CLUSTERCHAT_TEST_REDIS_URL: run with `just test`");
    let RedisTarget::Single(url) = RedisTarget::parse(&url) else {
        panic!("this test needs the single-Redis run, not {url}")
    };
    url.trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn xadd(prefix: &str, seq: u64) -> redis::Cmd {
    // d:1:2 is in partition 10 (FNV-1a 32-bit of the id, mod 16).
    redis::cmd("XADD")
        .arg(partition_key(prefix, 10))
        .arg("*")
        .arg("op")
        .arg("m")
        .arg("mid")
        .arg(format!("m-{seq}"))
        .arg("conv")
        .arg("d:1:2")
        .arg("seq")
        .arg(seq)
        .arg("from")
        .arg(1)
        .arg("at")
        .arg(1_795_600_000_000_000u64)
        .arg("tp")
        .arg("")
        .arg("frame")
        .arg(format!(r#"{{"msgid":6,"msg":"{seq}"}}"#))
        .clone()
}

#[tokio::test]
async fn the_ingest_rides_out_a_redis_outage_and_catches_up() {
    telemetry::init_for_tests();
    let proxy = TcpProxy::start(redis_addr()).await;
    let prefix = format!("{}:", unique_name("history"));
    let config = Config::for_tests(
        &fresh_database_url("history"),
        &format!("redis://{}", proxy.addr()),
        &prefix,
        "http://127.0.0.1:1",
    );
    let app = Application::build(config).await.expect("build");
    let addr = app.local_addr();
    let shutdown = Shutdown::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = HistoryServiceClient::with_interceptor(channel, Bearer);
    let mut direct = Connection::open(&RedisTarget::Single(format!("redis://{}", redis_addr())))
        .await
        .expect("redis");
    let mut stored = async || {
        client
            .get_history(pb::GetHistoryRequest {
                user_id: 1,
                conversation: "d:1:2".into(),
                limit: 200,
                ..Default::default()
            })
            .await
            .expect("history (the database is up)")
            .into_inner()
            .messages
            .len()
    };

    let _: String = xadd(&prefix, 1)
        .query_async(&mut direct)
        .await
        .expect("xadd");
    assert_eventually!(
        stored().await == 1,
        PATIENCE,
        "the first message was not stored"
    );

    proxy.cut();
    for seq in 2..=100 {
        let _: String = xadd(&prefix, seq)
            .query_async(&mut direct)
            .await
            .expect("xadd");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stored().await, 1, "nothing can be read while Redis is away");
    assert!(
        !running.is_finished(),
        "the service must ride out the outage"
    );

    proxy.restore();
    assert_eventually!(
        stored().await == 100,
        PATIENCE,
        "what was written during the outage was not stored after it"
    );
    shutdown.trigger();
    running.await.expect("task").expect("serve");
}
