//! The real grpcurl binary against the running service, through reflection:
//! the calls the README shows.

use std::time::Duration;

use history_service::{
    Application, Config,
    config::TEST_INTERNAL_TOKEN,
    stream::{Connection, RedisTarget, partition_key},
};
use shutdown::Shutdown;
use test_support::{PATIENCE, fresh_database_url, run_grpcurl, unique_name};

#[tokio::test]
async fn grpcurl_lists_reads_history_conversations_marks_read_and_searches_through_reflection() {
    let users = user_service::Application::build(user_service::Config::for_tests(
        &fresh_database_url("history_users"),
    ))
    .await
    .expect("build user service");
    let users_addr = users.local_addr();
    let shutdown = Shutdown::new();
    tokio::spawn(users.run_until_stopped(shutdown.clone()));

    let redis_url = std::env::var("CLUSTERCHAT_TEST_REDIS_URL")
        .expect("CLUSTERCHAT_TEST_REDIS_URL: run with `just test`");
    let prefix = format!("{}:", unique_name("history"));
    let app = Application::build(Config::for_tests(
        &fresh_database_url("history"),
        &redis_url,
        &prefix,
        &format!("http://{users_addr}"),
    ))
    .await
    .expect("build");
    let addr = app.local_addr().to_string();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));

    // One chat from 3 to 17, as a gateway appends it (d:3:17 is in
    // partition 6: FNV-1a 32-bit of the id, mod 16).
    let mut redis = Connection::open(&RedisTarget::parse(&redis_url))
        .await
        .expect("redis");
    let _: String = redis::cmd("XADD")
        .arg(partition_key(&prefix, 6))
        .arg("*")
        .arg("op").arg("m").arg("mid").arg("m-1").arg("conv").arg("d:3:17")
        .arg("seq").arg(1_795_600_000_000_000u64).arg("from").arg(3)
        .arg("at").arg(1_795_600_000_000_000u64).arg("tp").arg("")
        .arg("frame")
        .arg(r#"{"msgid":6,"id":3,"name":"alice","toid":17,"msg":"hi 🙂","conv":"d:3:17","cseq":1795600000000000,"mid":"m-1"}"#)
        .query_async(&mut redis)
        .await
        .expect("xadd");

    let call = |method: &'static str, body: &'static str| {
        let addr = addr.clone();
        move || {
            let authorization = format!("authorization: Bearer {TEST_INTERNAL_TOKEN}");
            run_grpcurl(&[
                "-plaintext",
                "-H",
                &authorization,
                "-d",
                body,
                &addr,
                &format!("clusterchat.history.v1.HistoryService/{method}"),
            ])
        }
    };
    let history = call("GetHistory", r#"{"user_id":17,"conversation":"d:3:17"}"#);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let page = loop {
        let page = tokio::task::spawn_blocking(history.clone())
            .await
            .expect("grpcurl");
        if page.contains("hi 🙂") || tokio::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(page.contains("\"text\": \"hi 🙂\""), "{page}");
    assert!(page.contains("\"seq\": \"1795600000000000\""), "{page}");

    let list_addr = addr.clone();
    let list =
        tokio::task::spawn_blocking(move || run_grpcurl(&["-plaintext", &list_addr, "list"]))
            .await
            .expect("grpcurl");
    test_support::assert_lists_only(&list, "clusterchat.history.v1.HistoryService");
    let conversations = tokio::task::spawn_blocking(call("ListConversations", r#"{"user_id":17}"#))
        .await
        .expect("grpcurl");
    assert!(
        conversations.contains("\"peerId\": \"3\""),
        "{conversations}"
    );
    assert!(conversations.contains("\"unread\": 1"), "{conversations}");
    let marked = tokio::task::spawn_blocking(call(
        "MarkRead",
        r#"{"user_id":17,"conversation":"d:3:17","up_to_seq":1795600000000000}"#,
    ))
    .await
    .expect("grpcurl");
    assert!(
        marked.contains("\"readSeq\": \"1795600000000000\""),
        "{marked}"
    );
    let found =
        tokio::task::spawn_blocking(call("SearchMessages", r#"{"user_id":17,"query":"HI"}"#))
            .await
            .expect("grpcurl");
    assert!(found.contains("\"text\": \"hi 🙂\""), "{found}");
    // [0, 2): proto3 JSON leaves the 0 out.
    assert!(found.contains("\"end\": 2"), "{found}");
    shutdown.trigger();
}
