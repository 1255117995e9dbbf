//! The offline service over real gRPC against the real test MariaDB, one
//! fresh database per test.

use std::collections::BTreeSet;

use clusterchat_proto::offline::v1::{self as pb, offline_service_client::OfflineServiceClient};
use offline_service::{Application, Config, config::TEST_INTERNAL_TOKEN};
use shutdown::Shutdown;
use test_support::{TcpProxy, assert_eventually, fresh_database_url};
use tonic::{
    Code,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// Sends `authorization: Bearer <token>`, or nothing.
#[derive(Clone)]
struct Bearer(Option<&'static str>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = self.0 {
            let value = format!("Bearer {token}").parse().expect("ascii token");
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

type Client = OfflineServiceClient<InterceptedService<Channel, Bearer>>;

async fn client(addr: std::net::SocketAddr, token: Option<&'static str>) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    OfflineServiceClient::with_interceptor(channel, Bearer(token))
}

struct TestApp {
    client: Client,
    addr: std::net::SocketAddr,
    shutdown: Shutdown,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn spawn_app_with(config: Config) -> TestApp {
    telemetry::init_for_tests();
    let app = Application::build(config)
        .await
        .expect("build offline service");
    let addr = app.local_addr();
    let shutdown = Shutdown::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        client: client(addr, Some(TEST_INTERNAL_TOKEN)).await,
        addr,
        shutdown,
    }
}

async fn spawn_app() -> TestApp {
    spawn_app_with(Config::for_tests(&fresh_database_url("offline"))).await
}

fn store_req(receiver_id: i64, sender_id: i64, payload: &str) -> pb::StoreRequest {
    pb::StoreRequest {
        receiver_id,
        sender_id,
        client_msg_id: String::new(),
        payload: payload.into(),
        inbox_seq: 0,
    }
}

async fn store(client: &mut Client, receiver: i64, payload: &str) -> u64 {
    client
        .store(store_req(receiver, 1, payload))
        .await
        .expect("store")
        .into_inner()
        .position
}

async fn fetch(client: &mut Client, receiver: i64, after: u64, limit: u32) -> pb::FetchResponse {
    client
        .fetch(pb::FetchRequest {
            receiver_id: receiver,
            after,
            limit,
        })
        .await
        .expect("fetch")
        .into_inner()
}

async fn ack(client: &mut Client, receiver: i64, up_to: u64) -> u64 {
    client
        .ack(pb::AckRequest {
            receiver_id: receiver,
            up_to,
        })
        .await
        .expect("ack")
        .into_inner()
        .removed
}

fn payloads(reply: &pb::FetchResponse) -> Vec<&str> {
    reply.messages.iter().map(|m| m.payload.as_str()).collect()
}

#[tokio::test]
async fn store_fetch_ack_round_trip_keeps_order() {
    let mut app = spawn_app().await;
    let c = &mut app.client;
    let mut positions = Vec::new();
    for text in ["one", "two", "three"] {
        positions.push(store(c, 7, text).await);
    }
    store(c, 8, "for someone else").await;
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");

    let reply = fetch(c, 7, 0, 0).await;
    assert_eq!(payloads(&reply), ["one", "two", "three"]);
    assert!(!reply.more);
    assert!(
        reply
            .messages
            .iter()
            .all(|m| m.sender_id == 1 && m.stored_at_unix_ms > 0)
    );

    assert_eq!(
        ack(c, 7, positions[1]).await,
        2,
        "acks exactly the first two"
    );
    assert_eq!(payloads(&fetch(c, 7, 0, 0).await), ["three"]);
    assert_eq!(ack(c, 7, positions[2]).await, 1);
    assert!(fetch(c, 7, 0, 0).await.messages.is_empty());
    assert_eq!(payloads(&fetch(c, 8, 0, 0).await), ["for someone else"]);
}

#[tokio::test]
async fn fetch_pages_through_a_backlog() {
    let mut app = spawn_app().await;
    let c = &mut app.client;
    let sent: Vec<String> = (0..25).map(|i| format!("message {i}")).collect();
    for text in &sent {
        store(c, 3, text).await;
    }
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        let page = fetch(c, 3, after, 10).await;
        assert!(page.messages.len() <= 10);
        got.extend(page.messages.iter().map(|m| m.payload.clone()));
        after = page.messages.last().map_or(after, |m| m.position);
        if !page.more {
            break;
        }
    }
    assert_eq!(got, sent);
}

#[tokio::test]
async fn a_retried_store_with_a_client_id_does_not_duplicate() {
    let mut app = spawn_app().await;
    let c = &mut app.client;
    let with_id = |sender_id, id: &str, payload: &str| pb::StoreRequest {
        receiver_id: 5,
        sender_id,
        client_msg_id: id.into(),
        payload: payload.into(),
        inbox_seq: 0,
    };
    let first = c
        .store(with_id(1, "m-1", "hello"))
        .await
        .expect("store")
        .into_inner();
    let retry = c
        .store(with_id(1, "m-1", "hello"))
        .await
        .expect("retry")
        .into_inner();
    assert!(!first.duplicate);
    assert!(retry.duplicate);
    assert_eq!(first.position, retry.position);
    let other_sender = c
        .store(with_id(2, "m-1", "hi"))
        .await
        .expect("other sender")
        .into_inner();
    assert!(!other_sender.duplicate, "the key is per sender");
    assert_eq!(payloads(&fetch(c, 5, 0, 0).await), ["hello", "hi"]);
}

#[tokio::test]
async fn payloads_round_trip_byte_exact() {
    let mut app = spawn_app().await;
    let c = &mut app.client;
    let big_json = format!(
        r#"{{"msgid":6,"id":1,"name":"a","toid":2,"msg":"{}","time":"2026-11-25 10:00:00"}}"#,
        "é\\\"'🙂 ".repeat(6_000)
    );
    assert!(big_json.len() > 60_000, "{}", big_json.len());
    let texts = [
        "plain".to_owned(),
        "it's a \"quote\" and a backslash \\ and a nul \u{0} too".to_owned(),
        "中文 العربية עברית 🙂👍🏽 \u{1F9D1}\u{200D}\u{1F4BB}".to_owned(),
        "  trailing and leading spaces  ".to_owned(),
        "'; DELETE FROM offline_messages; --".to_owned(),
        big_json,
    ];
    for text in &texts {
        store(c, 11, text).await;
    }
    let reply = fetch(c, 11, 0, 0).await;
    let got: Vec<String> = reply.messages.into_iter().map(|m| m.payload).collect();
    assert_eq!(got, texts);
}

#[tokio::test]
async fn concurrent_stores_and_a_draining_reader_lose_and_duplicate_nothing() {
    let app = spawn_app().await;
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 60;
    let receiver = 42;

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut client = app.client.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                store(&mut client, receiver, &format!("{w}:{i}")).await;
            }
        }));
    }

    let mut reader = app.client.clone();
    let drain = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut idle_rounds = 0;
        while idle_rounds < 20 {
            let page = fetch(&mut reader, receiver, 0, 7).await;
            match page.messages.last() {
                Some(last) => {
                    idle_rounds = 0;
                    let up_to = last.position;
                    seen.extend(page.messages.iter().map(|m| m.payload.clone()));
                    ack(&mut reader, receiver, up_to).await;
                }
                None => {
                    idle_rounds += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
            }
        }
        seen
    });

    for w in writers {
        w.await.expect("writer");
    }
    let seen = drain.await.expect("reader");

    let expected: BTreeSet<String> = (0..WRITERS)
        .flat_map(|w| (0..PER_WRITER).map(move |i| format!("{w}:{i}")))
        .collect();
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), unique.len(), "a message was fetched twice");
    assert_eq!(unique, expected, "a message was lost");
    // Each writer's messages came out in the order that writer stored them.
    for w in 0..WRITERS {
        let order: Vec<usize> = seen
            .iter()
            .filter_map(|s| {
                s.strip_prefix(&format!("{w}:"))
                    .and_then(|i| i.parse().ok())
            })
            .collect();
        assert!(
            order.windows(2).all(|p| p[0] < p[1]),
            "writer {w} out of order"
        );
    }
    let mut client = app.client.clone();
    assert!(
        fetch(&mut client, receiver, 0, 0).await.messages.is_empty(),
        "messages left behind"
    );
}

#[tokio::test]
async fn bounds_are_refused_with_clear_errors() {
    let mut config = Config::for_tests(&fresh_database_url("offline"));
    config.limits.max_message_bytes = 1000;
    config.limits.max_backlog = 3;
    let mut app = spawn_app_with(config).await;
    let c = &mut app.client;

    let too_big = c
        .store(store_req(9, 1, &"x".repeat(1001)))
        .await
        .expect_err("too big");
    assert_eq!(too_big.code(), Code::ResourceExhausted);
    assert_eq!(
        too_big.message(),
        "the message is 1001 bytes; at most 1000 bytes are accepted"
    );

    for i in 0..3 {
        store(c, 9, &format!("m{i}")).await;
    }
    let full = c
        .store(store_req(9, 1, "one too many"))
        .await
        .expect_err("backlog full");
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert!(
        full.message().contains("3 pending offline messages"),
        "{}",
        full.message()
    );
    assert_eq!(
        payloads(&fetch(c, 9, 0, 0).await),
        ["m0", "m1", "m2"],
        "nothing dropped or replaced"
    );

    // Reading frees room again.
    let last = fetch(c, 9, 0, 0)
        .await
        .messages
        .last()
        .expect("message")
        .position;
    ack(c, 9, last).await;
    store(c, 9, "room again").await;
}

#[tokio::test]
async fn invalid_requests_say_what_is_wrong() {
    let mut app = spawn_app().await;
    let c = &mut app.client;
    let cases = [
        (store_req(0, 1, "x"), "receiver_id"),
        (store_req(1, -5, "x"), "sender_id"),
        (store_req(1, 2, ""), "payload must not be empty"),
    ];
    for (request, needle) in cases {
        let status = c.store(request).await.expect_err(needle);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(needle), "{}", status.message());
    }
    let long_id = c
        .store(pb::StoreRequest {
            client_msg_id: "k".repeat(129),
            ..store_req(1, 2, "x")
        })
        .await
        .expect_err("long client id");
    assert_eq!(long_id.code(), Code::InvalidArgument);
    let bad_limit = c
        .fetch(pb::FetchRequest {
            receiver_id: 1,
            after: 0,
            limit: 5000,
        })
        .await
        .expect_err("limit");
    assert_eq!(bad_limit.code(), Code::InvalidArgument);

    let position = store(c, 1, "only one").await;
    let beyond = c
        .ack(pb::AckRequest {
            receiver_id: 1,
            up_to: position + 1,
        })
        .await
        .expect_err("ack beyond what was stored");
    assert_eq!(beyond.code(), Code::InvalidArgument);
    assert_eq!(
        payloads(&fetch(c, 1, 0, 0).await),
        ["only one"],
        "a refused ack removes nothing"
    );
    let never = c
        .ack(pb::AckRequest {
            receiver_id: 99,
            up_to: 1,
        })
        .await
        .expect_err("unknown receiver");
    assert_eq!(never.code(), Code::InvalidArgument);
    assert_eq!(ack(c, 99, 0).await, 0);
}

#[tokio::test]
async fn database_outage_is_unavailable_and_the_service_recovers() {
    let database_url = fresh_database_url("offline");
    let proxy = TcpProxy::start(test_support::mysql_server_addr()).await;
    let through_proxy = database_url.replace(
        &test_support::mysql_server_addr().to_string(),
        &proxy.addr().to_string(),
    );
    let mut app = spawn_app_with(Config::for_tests(&through_proxy)).await;
    let c = &mut app.client;
    store(c, 4, "before").await;

    proxy.cut();
    let status = c
        .store(store_req(4, 1, "during"))
        .await
        .expect_err("store while down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("unavailable"),
        "{}",
        status.message()
    );
    let status = c
        .fetch(pb::FetchRequest {
            receiver_id: 4,
            after: 0,
            limit: 0,
        })
        .await
        .expect_err("fetch while down");
    assert_eq!(status.code(), Code::Unavailable);

    proxy.restore();
    assert_eventually!(
        c.store(store_req(4, 1, "after")).await.is_ok(),
        test_support::PATIENCE,
        "the service did not recover after the database came back"
    );
    assert_eq!(payloads(&fetch(c, 4, 0, 0).await), ["before", "after"]);
}

#[tokio::test]
async fn pages_are_bounded_in_bytes_too() {
    let mut config = Config::for_tests(&fresh_database_url("offline"));
    config.limits.max_page_bytes = 2500;
    let mut app = spawn_app_with(config).await;
    let c = &mut app.client;
    let sent: Vec<String> = (0..5).map(|i| format!("{i}{}", "x".repeat(999))).collect();
    for text in &sent {
        store(c, 6, text).await;
    }
    let page = fetch(c, 6, 0, 0).await;
    assert_eq!(
        page.messages.len(),
        2,
        "two 1000-byte messages fit in 2500 bytes"
    );
    assert!(page.more);
    let mut got: Vec<String> = page.messages.iter().map(|m| m.payload.clone()).collect();
    let mut after = page.messages.last().expect("last").position;
    loop {
        let page = fetch(c, 6, after, 0).await;
        got.extend(page.messages.iter().map(|m| m.payload.clone()));
        after = page.messages.last().map_or(after, |m| m.position);
        if !page.more {
            break;
        }
    }
    assert_eq!(got, sent);

    // A single message larger than the page bound still comes out, alone.
    let mut config = Config::for_tests(&fresh_database_url("offline"));
    config.limits.max_page_bytes = 10;
    let mut app = spawn_app_with(config).await;
    store(&mut app.client, 1, "longer than ten bytes").await;
    store(&mut app.client, 1, "and another").await;
    let page = fetch(&mut app.client, 1, 0, 0).await;
    assert_eq!(payloads(&page), ["longer than ten bytes"]);
    assert!(page.more);
}

#[tokio::test]
async fn inbox_sequence_and_client_id_come_back_with_the_message() {
    let mut app = spawn_app().await;
    let c = &mut app.client;
    c.store(pb::StoreRequest {
        client_msg_id: "m-7".into(),
        inbox_seq: 1_795_600_000_000_042,
        ..store_req(9, 2, "moved from an inbox")
    })
    .await
    .expect("stored");
    c.store(store_req(9, 2, "never in an inbox"))
        .await
        .expect("stored");
    let page = c
        .fetch(pb::FetchRequest {
            receiver_id: 9,
            after: 0,
            limit: 10,
        })
        .await
        .expect("fetch")
        .into_inner();
    let got: Vec<(&str, &str, u64)> = page
        .messages
        .iter()
        .map(|m| (m.payload.as_str(), m.client_msg_id.as_str(), m.inbox_seq))
        .collect();
    assert_eq!(
        got,
        [
            ("moved from an inbox", "m-7", 1_795_600_000_000_042),
            ("never in an inbox", "", 0)
        ]
    );
}

#[tokio::test]
async fn fetch_and_ack_of_anyone_need_the_internal_token() {
    let mut app = spawn_app().await;
    store(&mut app.client, 9, "private").await;
    for (token, needle) in [
        (None, "missing bearer token"),
        (Some("someone-elses-token-0123456789"), "wrong bearer token"),
    ] {
        let mut stranger = client(app.addr, token).await;
        let fetched = stranger
            .fetch(pb::FetchRequest {
                receiver_id: 9,
                after: 0,
                limit: 0,
            })
            .await
            .expect_err("fetch without the token");
        let acked = stranger
            .ack(pb::AckRequest {
                receiver_id: 9,
                up_to: u64::MAX,
            })
            .await
            .expect_err("ack without the token");
        for status in [fetched, acked] {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert!(status.message().starts_with(needle), "{}", status.message());
        }
    }
    assert_eq!(
        payloads(&fetch(&mut app.client, 9, 0, 0).await),
        ["private"]
    );
}
