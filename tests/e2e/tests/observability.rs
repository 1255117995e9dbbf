//! One trace per message across processes, collected by an OTLP receiver
//! inside the test; and `/metrics` counters that move.

use std::time::Duration;

use e2e::{
    Client, PATIENCE, Stack, assert_eventually, chat, http_get, metric_value, otlp::CollectedSpan,
    otlp::OtlpCollector,
};
use tokio::time::Instant;

/// Waits until `find` picks something out of the collected spans.
async fn eventually<T>(
    collector: &OtlpCollector,
    what: &str,
    find: impl Fn(&[CollectedSpan]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let spans = collector.spans();
        if let Some(found) = find(&spans) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {what}; spans: {:#?}",
            summary(&spans)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn summary(spans: &[CollectedSpan]) -> Vec<String> {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} trace={:02x?}",
                s.service,
                s.name,
                &s.trace_id[..4.min(s.trace_id.len())]
            )
        })
        .collect()
}

fn find<'a>(
    spans: &'a [CollectedSpan],
    service: &str,
    name: &str,
    trace: Option<&[u8]>,
) -> Option<&'a CollectedSpan> {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name && trace.is_none_or(|t| s.trace_id == t))
}

fn assert_no_text(spans: &[CollectedSpan], secret: &str) {
    for span in spans {
        for (key, value) in &span.attributes {
            assert!(
                !value.contains(secret),
                "span {} attribute {key} carries message text",
                span.name
            );
        }
    }
}

#[tokio::test]
async fn a_cross_node_chat_is_one_trace_from_gateway_to_gateway() {
    let collector = OtlpCollector::start().await;
    let stack = Stack::builder()
        .gateways(2)
        .otlp(collector.endpoint())
        .start()
        .await;
    let (mut alice, a, mut bob, b) = stack.alice_and_bob(0, 1).await;
    let secret = "the secret text of a cross-node chat";
    alice.send(&chat(a, b, secret)).await;
    assert_eq!(bob.recv().await["msg"], secret);

    let (request, publish, deliver) =
        eventually(&collector, "chat → publish → deliver", |spans| {
            let deliver = find(spans, "gateway-2", "chat.deliver", None)?;
            let publish = spans
                .iter()
                .find(|s| s.service == "gateway-1" && s.span_id == deliver.parent_span_id)?;
            let request = spans
                .iter()
                .find(|s| s.service == "gateway-1" && s.span_id == publish.parent_span_id)?;
            Some((request.clone(), publish.clone(), deliver.clone()))
        })
        .await;
    assert_eq!(request.name, "chat");
    assert_eq!(publish.name, "redis.append");
    assert_eq!(
        request.trace_id, deliver.trace_id,
        "one trace id across both gateway processes"
    );
    assert_eq!(publish.trace_id, deliver.trace_id);
    // The history write happens later, in another process, in the same trace.
    let store = eventually(
        &collector,
        "the history write in the chat's trace",
        |spans| {
            find(
                spans,
                "history-service",
                "history.store",
                Some(&request.trace_id),
            )
            .cloned()
        },
    )
    .await;
    assert!(
        !store.parent_span_id.is_empty(),
        "it follows from the chat's span"
    );
    assert_no_text(&collector.spans(), secret);
}

#[tokio::test]
async fn a_chat_to_an_offline_user_traces_into_the_offline_service_and_its_sql() {
    let collector = OtlpCollector::start().await;
    let stack = Stack::builder()
        .gateways(1)
        .otlp(collector.endpoint())
        .start()
        .await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let a = alice.register("alice", "pa").await;
    let c = alice.register("carol", "pc").await;
    alice.login_ok(a, "pa").await;
    let secret = "a message for carol who is away";
    assert_eq!(alice.call(chat(a, c, secret), 1).await["errno"], 0);

    // The message is moved from carol's inbox to the offline store in the
    // background, in a span of the chat's trace.
    let (server, sql, client, root) = eventually(
        &collector,
        "offline Store server span with its SQL, its gateway client span and the chat",
        |spans| {
            let server = find(
                spans,
                "offline-service",
                "clusterchat.offline.v1.OfflineService/Store",
                None,
            )?;
            let sql = find(
                spans,
                "offline-service",
                "sql.store",
                Some(&server.trace_id),
            )?;
            let client = spans
                .iter()
                .find(|s| s.service == "gateway-1" && s.span_id == server.parent_span_id)?;
            let root = spans.iter().find(|s| {
                s.trace_id == server.trace_id && s.service == "gateway-1" && s.name == "chat"
            })?;
            Some((server.clone(), sql.clone(), client.clone(), root.clone()))
        },
    )
    .await;
    let spans = collector.spans();
    assert_eq!(server.trace_id, root.trace_id);
    assert_eq!(client.trace_id, root.trace_id);
    assert_eq!(sql.trace_id, root.trace_id);
    assert_no_text(&spans, secret);
}

#[tokio::test]
async fn login_is_one_trace_through_the_user_service_and_sql() {
    let collector = OtlpCollector::start().await;
    let stack = Stack::builder()
        .gateways(1)
        .otlp(collector.endpoint())
        .start()
        .await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let a = alice.register("alice", "a password nobody may see").await;
    alice.login_ok(a, "a password nobody may see").await;

    let (root, server) = eventually(&collector, "login → user service Login", |spans| {
        let root = find(spans, "gateway-1", "login", None)?;
        let server = find(
            spans,
            "user-service",
            "clusterchat.user.v1.UserService/Login",
            Some(&root.trace_id),
        )?;
        find(
            spans,
            "user-service",
            "sql.credentials",
            Some(&root.trace_id),
        )?;
        Some((root.clone(), server.clone()))
    })
    .await;
    assert_eq!(root.trace_id, server.trace_id);
    assert_no_text(&collector.spans(), "a password nobody may see");
}

#[tokio::test]
async fn metrics_counters_move() {
    let stack = Stack::builder().gateways(2).start().await;
    let scrape = |addr| async move {
        let (status, body) = http_get(addr, "/metrics").await.expect("scrape");
        assert_eq!(status, 200);
        body
    };
    let before = scrape(stack.gateways[0].admin).await;
    let (mut alice, a, mut bob, b) = stack.alice_and_bob(0, 1).await;
    for i in 0..3 {
        alice.send(&chat(a, b, &format!("m{i}"))).await;
        bob.recv().await;
    }
    let c = alice.register("carol", "pc").await;
    assert_eq!(alice.call(chat(a, c, "offline"), 1).await["errno"], 0);
    assert_eq!(
        alice.call(serde_json::json!({"msgid": 42}), 2).await["errno"],
        1
    );

    let after = scrape(stack.gateways[0].admin).await;
    // What the GatewayUnhealthy alert watches: green now.
    assert_eq!(
        metric_value(&after, "clusterchat_gateway_healthy", ""),
        1.0,
        "{after}"
    );
    let delta = |name: &str, labels: &str| {
        metric_value(&after, name, labels) - metric_value(&before, name, labels)
    };
    assert_eq!(
        delta("clusterchat_gateway_requests_total", "kind=\"chat\""),
        4.0,
        "{after}"
    );
    assert_eq!(
        delta("clusterchat_gateway_deliveries_total", "route=\"remote\""),
        3.0
    );
    assert_eq!(
        delta("clusterchat_gateway_deliveries_total", "route=\"offline\""),
        1.0
    );
    assert_eq!(
        delta("clusterchat_gateway_errors_total", "errno=\"1\""),
        1.0
    );
    assert_eq!(
        metric_value(&after, "clusterchat_gateway_online_users", ""),
        1.0
    );
    assert_eq!(
        metric_value(
            &after,
            "clusterchat_gateway_connections",
            "transport=\"tcp\""
        ),
        1.0
    );

    let node2 = scrape(stack.gateways[1].admin).await;
    assert!(
        metric_value(
            &node2,
            "clusterchat_gateway_delivery_latency_seconds_count",
            "path=\"remote\""
        ) >= 3.0,
        "{node2}"
    );

    let users = scrape(stack.user_metrics).await;
    assert!(
        metric_value(
            &users,
            "clusterchat_grpc_server_requests_total",
            "UserService/Login\",code=\"0\""
        ) >= 2.0,
        "{users}"
    );
    // The message for offline carol is moved from her inbox to the offline
    // store in the background.
    assert_eventually!(
        metric_value(
            &scrape(stack.offline_metrics).await,
            "clusterchat_grpc_server_requests_total",
            "OfflineService/Store\",code=\"0\""
        ) >= 1.0,
        PATIENCE,
        "the offline service stored carol's message"
    );
}

#[tokio::test]
async fn with_no_collector_running_everything_works_and_logs_stay_quiet() {
    // A port nothing listens on: every export attempt fails.
    let nowhere = format!("http://127.0.0.1:{}", e2e::free_port().await);
    let stack = Stack::builder().gateways(2).otlp(nowhere).start().await;
    let (mut alice, a, mut bob, b) = stack.alice_and_bob(0, 1).await;
    for i in 0..200 {
        alice.send(&chat(a, b, &format!("m{i}"))).await;
    }
    for i in 0..200 {
        assert_eq!(bob.recv().await["msg"], format!("m{i}"));
    }
    // Several export intervals (100 ms each) have passed and failed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let logs = stack.all_logs();
    let noisy: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert!(
        noisy.is_empty(),
        "export failures must not fill the logs: {noisy:#?}"
    );
}

/// The Prometheus config (with its alert rules) is valid, and each alert
/// fires on what should fire it and not before (`promtool test rules`
/// with deploy/observability/alerts_test.yml): Debian's promtool, which
/// `just test` installs.
#[test]
fn the_prometheus_config_and_alert_rules_pass_promtool() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/observability");
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    for args in [
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool (Debian's prometheus package; `just test` installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
