//! The internal gRPC services, started as real processes, need the stack's
//! internal token on every data method, while `grpcurl list` and health
//! checks work without it. Spoken to with the real grpcurl.

use e2e::Stack;

/// grpcurl's exit status and everything it printed.
fn grpcurl(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(test_support::grpcurl())
        .args(args)
        .output()
        .expect("run grpcurl (set GRPCURL or put it on the PATH; `just test` does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn data_methods_need_the_token_while_list_and_health_do_not() {
    let stack = Stack::builder().gateways(0).start().await;
    let user = stack.user_addr.to_string();
    let offline = stack.offline_addr.to_string();
    let authorization = format!("authorization: Bearer {}", stack.internal_token);

    let results = tokio::task::spawn_blocking(move || {
        let register = r#"{"name":"grpcurl-e2e","password":"secret"}"#;
        let method = "clusterchat.user.v1.UserService/Register";
        vec![
            ("list", grpcurl(&["-plaintext", &user, "list"])),
            (
                "health",
                grpcurl(&["-plaintext", &user, "grpc.health.v1.Health/Check"]),
            ),
            (
                "no token",
                grpcurl(&["-plaintext", "-d", register, &user, method]),
            ),
            (
                "wrong token",
                grpcurl(&[
                    "-plaintext",
                    "-H",
                    "authorization: Bearer not-this-stacks-token-at-all",
                    "-d",
                    register,
                    &user,
                    method,
                ]),
            ),
            (
                "token",
                grpcurl(&[
                    "-plaintext",
                    "-H",
                    &authorization,
                    "-d",
                    register,
                    &user,
                    method,
                ]),
            ),
            ("offline list", grpcurl(&["-plaintext", &offline, "list"])),
            (
                "offline fetch, no token",
                grpcurl(&[
                    "-plaintext",
                    "-d",
                    r#"{"receiver_id":1}"#,
                    &offline,
                    "clusterchat.offline.v1.OfflineService/Fetch",
                ]),
            ),
            (
                "offline fetch, token",
                grpcurl(&[
                    "-plaintext",
                    "-H",
                    &authorization,
                    "-d",
                    r#"{"receiver_id":1}"#,
                    &offline,
                    "clusterchat.offline.v1.OfflineService/Fetch",
                ]),
            ),
        ]
    })
    .await
    .expect("grpcurl task");

    let logs = stack.logs();
    let get = |name: &str| {
        results
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r.clone())
            .expect("ran")
    };
    let (ok, list) = get("list");
    assert!(
        ok && list.contains("clusterchat.user.v1.UserService"),
        "{list} ({logs})"
    );
    let (ok, health) = get("health");
    assert!(ok && health.contains("SERVING"), "{health}");
    let (ok, refused) = get("no token");
    assert!(!ok, "{refused}");
    assert!(refused.contains("Unauthenticated"), "{refused}");
    assert!(refused.contains("missing bearer token"), "{refused}");
    let (ok, refused) = get("wrong token");
    assert!(!ok, "{refused}");
    assert!(refused.contains("Unauthenticated"), "{refused}");
    assert!(refused.contains("wrong bearer token"), "{refused}");
    let (ok, registered) = get("token");
    assert!(ok && registered.contains("\"id\""), "{registered}");
    let (ok, list) = get("offline list");
    assert!(
        ok && list.contains("clusterchat.offline.v1.OfflineService"),
        "{list}"
    );
    let (ok, refused) = get("offline fetch, no token");
    assert!(!ok && refused.contains("Unauthenticated"), "{refused}");
    let (ok, fetched) = get("offline fetch, token");
    assert!(ok, "{fetched}");
}

#[tokio::test]
async fn services_and_gateways_without_a_token_refuse_to_start() {
    for binary in ["user-service", "offline-service", "gateway"] {
        let output = tokio::process::Command::new(e2e::bin(binary))
            .env_remove("CLUSTERCHAT_INTERNAL_TOKEN")
            .env("CLUSTERCHAT_USER_LISTEN", "127.0.0.1:0")
            .env("CLUSTERCHAT_USER_METRICS_LISTEN", "off")
            .env("CLUSTERCHAT_OFFLINE_LISTEN", "127.0.0.1:0")
            .env("CLUSTERCHAT_OFFLINE_METRICS_LISTEN", "off")
            .env("CLUSTERCHAT_GATEWAY_TCP_LISTEN", "127.0.0.1:0")
            .env("CLUSTERCHAT_GATEWAY_HTTP_LISTEN", "127.0.0.1:0")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(std::time::Duration::from_secs(20), output)
            .await
            .unwrap_or_else(|_| panic!("{binary} started without a token"))
            .expect("run");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{binary}: {text}");
        assert!(
            text.contains("CLUSTERCHAT_INTERNAL_TOKEN must be set"),
            "{binary}: {text}"
        );
    }
}
