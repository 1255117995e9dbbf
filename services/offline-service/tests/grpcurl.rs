//! The real grpcurl binary against the running service, through reflection.

use offline_service::{Application, Config, config::TEST_INTERNAL_TOKEN};
use shutdown::Shutdown;
use test_support::run_grpcurl;

#[tokio::test]
async fn grpcurl_lists_stores_and_fetches_through_reflection() {
    let app = Application::build(Config::for_tests(&test_support::fresh_database_url(
        "offline",
    )))
    .await
    .expect("build");
    let addr = app.local_addr().to_string();
    let shutdown = Shutdown::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let (list, stored, fetched) = tokio::task::spawn_blocking(move || {
        let addr = addr.as_str();
        let authorization = format!("authorization: Bearer {TEST_INTERNAL_TOKEN}");
        (
            run_grpcurl(&["-plaintext", addr, "list"]),
            run_grpcurl(&[
                "-plaintext",
                "-H",
                &authorization,
                "-d",
                r#"{"receiver_id":7,"sender_id":3,"payload":"{\"msg\":\"hi 🙂\"}"}"#,
                addr,
                "clusterchat.offline.v1.OfflineService/Store",
            ]),
            run_grpcurl(&[
                "-plaintext",
                "-H",
                &authorization,
                "-d",
                r#"{"receiver_id":7}"#,
                addr,
                "clusterchat.offline.v1.OfflineService/Fetch",
            ]),
        )
    })
    .await
    .expect("grpcurl task");

    test_support::assert_lists_only(&list, "clusterchat.offline.v1.OfflineService");
    assert!(stored.contains("\"position\": \"1\""), "{stored}");
    assert!(fetched.contains("hi 🙂"), "{fetched}");
    shutdown.trigger();
}
