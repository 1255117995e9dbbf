//! The real grpcurl binary against the running service, through server
//! reflection only: no .proto files are given to it.

use shutdown::Shutdown;
use test_support::run_grpcurl;
use user_service::{Application, Config, config::TEST_INTERNAL_TOKEN};

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_through_reflection() {
    let app = Application::build(Config::for_tests(&test_support::fresh_database_url("user")))
        .await
        .expect("build");
    let addr = app.local_addr().to_string();
    let shutdown = Shutdown::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let addr2 = addr.clone();
    let (list, describe, register, health, refused) = tokio::task::spawn_blocking(move || {
        let addr = addr2.as_str();
        let authorization = format!("authorization: Bearer {TEST_INTERNAL_TOKEN}");
        (
            run_grpcurl(&["-plaintext", addr, "list"]),
            run_grpcurl(&[
                "-plaintext",
                addr,
                "describe",
                "clusterchat.user.v1.UserService",
            ]),
            run_grpcurl(&[
                "-plaintext",
                "-H",
                &authorization,
                "-d",
                r#"{"name":"grpcurl-user","password":"secret"}"#,
                addr,
                "clusterchat.user.v1.UserService/Register",
            ]),
            run_grpcurl(&["-plaintext", addr, "grpc.health.v1.Health/Check"]),
            std::process::Command::new(test_support::grpcurl())
                .args([
                    "-plaintext",
                    "-d",
                    r#"{"name":"anonymous","password":"secret"}"#,
                    addr,
                    "clusterchat.user.v1.UserService/Register",
                ])
                .output()
                .expect("run grpcurl"),
        )
    })
    .await
    .expect("grpcurl task");

    test_support::assert_lists_only(&list, "clusterchat.user.v1.UserService");
    assert!(describe.contains("rpc Register"), "{describe}");
    assert!(describe.contains("rpc ListGroupMembers"), "{describe}");
    assert!(register.contains("\"id\""), "{register}");
    assert!(health.contains("SERVING"), "{health}");
    let refused_text = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{refused_text}");
    assert!(refused_text.contains("Unauthenticated"), "{refused_text}");
    assert!(
        refused_text.contains("missing bearer token"),
        "{refused_text}"
    );
    shutdown.trigger();
}
