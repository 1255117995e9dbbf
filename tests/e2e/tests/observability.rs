//! One trace per message across processes, collected by an OTLP receiver
//! inside the test; `/metrics` counters that move; the alert rules under
//! promtool; and every dashboard query against a real Prometheus.

use std::time::Duration;

use e2e::{
    Client, PATIENCE, Stack, assert_eventually, chat, http_get, metric_value, otlp::CollectedSpan,
    otlp::OtlpCollector,
};
use serde_json::Value;
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

/// A query string value, percent-encoded (RFC 3986 unreserved kept).
fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prometheus's answer to an instant query: (status, result).
async fn prometheus_query(prometheus: std::net::SocketAddr, query: &str) -> (String, Vec<Value>) {
    let path = format!("/api/v1/query?query={}", encode_query(query));
    let (_, body) = http_get(prometheus, &path)
        .await
        .expect("prometheus answers");
    let reply: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let status = reply["status"].as_str().unwrap_or("").to_owned();
    let result = reply["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if status != "success" {
        return (format!("{status}: {}", reply["error"]), result);
    }
    (status, result)
}

/// A child process of the test, stopped with it.
fn spawn(program: &str, args: &[String], log: &std::path::Path) -> tokio::process::Child {
    let log = std::fs::File::create(log).expect("log file");
    tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} (Debian's package; `just test` installs it): {e}"))
}

/// Every query of the Grafana dashboard
/// (deploy/observability/grafana/dashboards/clusterchat.json), asked of a
/// real Prometheus (Debian's) that scrapes a real stack (two gateways,
/// nginx, the three services) and Debian's Redis, MariaDB and nginx
/// exporters, as `just observe` runs them: each query runs, and every
/// metric it names has series. A renamed metric or a typo in a panel
/// fails here, not on an operator's screen.
#[tokio::test]
async fn every_dashboard_query_runs_on_prometheus_and_every_metric_it_names_exists() {
    let stack = Stack::builder()
        .gateways(2)
        .with_nginx_status()
        .start()
        .await;
    let nginx = stack.nginx.as_ref().expect("nginx");
    let dir = std::env::temp_dir().join(test_support::unique_name("observe"));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = || async { std::net::SocketAddr::from(([127, 0, 0, 1], e2e::free_port().await)) };
    let (mysqld_exporter, nginx_exporter, prometheus) = (port().await, port().await, port().await);

    // Redis: an exporter per server (a cluster's: per master, as an
    // operator runs them, so every node's keys are seen).
    let redis_url = std::env::var("CLUSTERCHAT_TEST_REDIS_URL").expect("just test");
    let redis_servers: Vec<String> = match redis_url.strip_prefix("redis+cluster://") {
        Some(nodes) => nodes.split(',').map(|n| format!("redis://{n}")).collect(),
        None => vec![redis_url.clone()],
    };
    let mut redis_exporters = Vec::new();
    let mut _redis = Vec::new();
    for (i, server) in redis_servers.iter().enumerate() {
        let listen = port().await;
        redis_exporters.push(listen);
        _redis.push(spawn(
            "prometheus-redis-exporter",
            &[
                "-redis.addr".into(),
                server.clone(),
                "-web.listen-address".into(),
                listen.to_string(),
                "-check-keys".into(),
                "*:in".into(),
            ],
            &dir.join(format!("redis-{i}.log")),
        ));
    }
    // MariaDB: the test server's account, in a my.cnf.
    let server = test_support::mysql_server_url();
    let rest = server.strip_prefix("mysql://").expect("mysql://");
    let (credentials, host) = rest.rsplit_once('@').expect("user@host");
    let (user, password) = credentials.split_once(':').expect("user:password");
    let (host, mysql_port) = host.split_once(':').expect("host:port");
    let cnf = dir.join("my.cnf");
    std::fs::write(
        &cnf,
        format!("[client]\nuser={user}\npassword={password}\nhost={host}\nport={mysql_port}\n"),
    )
    .expect("my.cnf");
    let _mysqld = spawn(
        "prometheus-mysqld-exporter",
        &[
            format!("--config.my-cnf={}", cnf.display()),
            format!("--web.listen-address={mysqld_exporter}"),
        ],
        &dir.join("mysqld.log"),
    );
    let _nginx = spawn(
        "prometheus-nginx-exporter",
        &[
            "-nginx.scrape-uri".into(),
            format!(
                "http://{}/stub_status",
                nginx.status.expect("with_nginx_status")
            ),
            "-web.listen-address".into(),
            nginx_exporter.to_string(),
        ],
        &dir.join("nginx.log"),
    );
    // Prometheus, with the job names of deploy/observability/prometheus.yml.
    let targets = |addrs: &[std::net::SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let gateways: Vec<_> = stack.gateways.iter().map(|g| g.admin).collect();
    let jobs = [
        ("gateway", targets(&gateways)),
        ("user-service", targets(&[stack.user_metrics])),
        ("offline-service", targets(&[stack.offline_metrics])),
        ("history-service", targets(&[stack.history_metrics])),
        ("redis", targets(&redis_exporters)),
        ("mariadb", targets(&[mysqld_exporter])),
        ("nginx", targets(&[nginx_exporter])),
    ];
    let mut config = String::from("global:\n  scrape_interval: 1s\nscrape_configs:\n");
    for (job, targets) in &jobs {
        config.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: [{targets}]\n"
        ));
    }
    std::fs::write(dir.join("prometheus.yml"), config).expect("config");
    let _prometheus = spawn(
        "prometheus",
        &[
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={prometheus}"),
        ],
        &dir.join("prometheus.log"),
    );

    // Chat while Prometheus scrapes: rates need two samples; dave, a device
    // that never acknowledges (but pings), keeps entries in his inbox.
    let (mut alice, a, mut bob, b) = stack.alice_and_bob(0, 1).await;
    // A request the gateway refuses (the dashboard's client errors).
    assert_eq!(
        alice.call(serde_json::json!({"msgid": 42}), 1).await["errno"],
        1
    );
    let d = alice.register("dave", "pd").await;
    let mut dave = Client::connect(stack.gateways[1].tcp).await;
    assert_eq!(dave.login_acking(d, "pd", None).await["errno"], 0);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../deploy/observability/grafana/dashboards/clusterchat.json"),
        )
        .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(queries.len() >= 20, "{queries:?}");
    let mut names: Vec<String> = Vec::new();
    for query in &queries {
        let mut rest = query.as_str();
        while let Some(at) = ["clusterchat_", "redis_", "mysql_", "nginx_"]
            .iter()
            .filter_map(|p| rest.find(p))
            .min()
        {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }

    let deadline = Instant::now() + 3 * PATIENCE;
    let mut i = 0;
    let missing = loop {
        i += 1;
        alice.send(&chat(a, b, &format!("m{i}"))).await;
        bob.recv().await;
        alice.send(&chat(a, d, &format!("to dave {i}"))).await;
        dave.send(&serde_json::json!({"msgid": 13})).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, up) = prometheus_query(prometheus, "up == 1").await;
        let mut missing = Vec::new();
        let want = gateways.len() + 5 + redis_exporters.len();
        if up.len() < want {
            missing.push(format!("{} of {want} targets up", up.len()));
        }
        for name in &names {
            let (status, found) =
                prometheus_query(prometheus, &format!("count({{__name__=\"{name}\"}})")).await;
            if status != "success" || found.is_empty() {
                missing.push(name.clone());
            }
        }
        // Rates over [1m] need two samples of each.
        let (_, chats) = prometheus_query(
            prometheus,
            "sum(rate(clusterchat_gateway_requests_total{kind=~\"chat|group_chat\"}[1m])) > 0",
        )
        .await;
        if chats.is_empty() {
            missing.push("a rate of chats".into());
        }
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
    };
    let keys = std::process::Command::new("redis-cli")
        .args([
            "-u",
            redis_url
                .split(',')
                .next()
                .unwrap_or("")
                .replace("redis+cluster", "redis")
                .as_str(),
            "KEYS",
            "*",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        missing.is_empty(),
        "no series for {missing:?} (logs in {}); keys: {keys}",
        dir.display()
    );
    for query in &queries {
        let (status, _) = prometheus_query(prometheus, query).await;
        assert_eq!(status, "success", "{query}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
