//! A hostile network: clients that misbehave on purpose, each against the
//! limit meant for it. Every test checks three things: the misbehaving
//! client is refused with a reason (or cut off), other users keep chatting
//! meanwhile, and nothing accepted is lost.
//!
//! Tests that need a client address other than 127.0.0.1 play the load
//! balancer: the gateways trust PROXY headers from 127.0.0.1, as they trust
//! nginx in `just up`.

use std::time::{Duration, Instant};

use e2e::{Client, Stack, chat, rss_kib, texts};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// A classic client whose connection claims to come from `ip`.
async fn client_from(gateway: std::net::SocketAddr, ip: &str) -> Client {
    let mut client = Client::connect(gateway).await;
    client
        .send_raw(format!("PROXY TCP4 {ip} 127.0.0.1 40000 6000\r\n").as_bytes())
        .await;
    client
}

/// One chat from `from` to `to` and back to the test: how long it took.
async fn round_trip(from: &mut Client, from_id: i64, to: &mut Client, to_id: i64) -> Duration {
    let started = Instant::now();
    let text = format!("ping {}", rand_suffix());
    from.send(&chat(from_id, to_id, &text)).await;
    loop {
        let got = to.recv().await;
        if got["msg"] == text.as_str() {
            return started.elapsed();
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Whether the server closed `stream` within `within` (reading what it says).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> (bool, String) {
    let mut said = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (false, String::from_utf8_lossy(&said).into_owned()),
            Ok(Ok(0) | Err(_)) => return (true, String::from_utf8_lossy(&said).into_owned()),
            Ok(Ok(n)) => said.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_and_unfinished_requests_are_cut_off_while_others_chat() {
    let stack = Stack::builder()
        .gateways(1)
        .gateway_env("CLUSTERCHAT_GATEWAY_FRAME_DEADLINE_MS", "1000")
        .gateway_env("CLUSTERCHAT_GATEWAY_LOGIN_DEADLINE_MS", "3000")
        .start()
        .await;
    let gateway = stack.gateways[0].tcp;
    let (mut alice, a, mut bob, b) = stack.alice_and_bob(0, 0).await;

    // Twenty slowloris connections: a request begun and fed a byte at a time.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(gateway).await.expect("connect");
        s.write_all(br#"{"msgid":1,"id":"#).await.expect("write");
        slow.push(s);
    }
    // And one that connects and says nothing.
    let mut silent = TcpStream::connect(gateway).await.expect("connect");
    let started = Instant::now();
    let feeding = tokio::spawn(async move {
        let mut closed = Vec::new();
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for s in &mut slow {
                let _ = s.write_all(b"1").await;
            }
        }
        for s in &mut slow {
            closed.push(closed_within(s, Duration::from_secs(3)).await);
        }
        closed
    });
    // Meanwhile the node serves others as usual.
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        worst = worst.max(round_trip(&mut alice, a, &mut bob, b).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("slowest chat during the slowloris: {worst:?}");
    assert!(worst < Duration::from_secs(1), "chat stalled: {worst:?}");

    for (closed, said) in feeding.await.expect("feeder") {
        assert!(
            closed,
            "a request still unfinished after its deadline was not cut off"
        );
        assert!(
            said.contains("unfinished") && said.contains("\"errno\":1"),
            "the client is told why: {said}"
        );
    }
    let (closed, said) = closed_within(&mut silent, Duration::from_secs(6)).await;
    assert!(closed, "a connection that never logs in is closed");
    assert!(said.contains("no login within"), "and told why: {said}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before its deadline"
    );
    // The users who behaved are still connected and served.
    round_trip(&mut bob, b, &mut alice, a).await;
}

#[tokio::test]
async fn slow_websocket_handshakes_are_cut_off_while_others_connect() {
    let stack = Stack::builder()
        .gateways(1)
        .gateway_env("CLUSTERCHAT_GATEWAY_HANDSHAKE_TIMEOUT_MS", "1000")
        .start()
        .await;
    let http = stack.gateways[0].http;
    // Headers a line at a time, never finished; and a socket that sends nothing.
    let mut slow = TcpStream::connect(http).await.expect("connect");
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut silent = TcpStream::connect(http).await.expect("connect");
    let feeder = tokio::spawn(async move {
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            if slow
                .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return (true, Duration::ZERO);
            }
        }
        let started = Instant::now();
        let (closed, _) = closed_within(&mut slow, Duration::from_secs(3)).await;
        (closed, started.elapsed())
    });
    // A real WebSocket client connects and is served meanwhile.
    let mut ws = e2e::WsClient::connect(http).await;
    ws.send(&json!({"msgid": 4, "name": "wendy", "password": "pw", "seq": 1}))
        .await;
    let reply = ws.recv().await;
    assert_eq!(reply["errno"], 0, "{reply}");

    let (closed, _) = feeder.await.expect("feeder");
    assert!(
        closed,
        "headers trickled past the handshake timeout are cut off"
    );
    let (closed, _) = closed_within(&mut silent, Duration::from_secs(3)).await;
    assert!(closed, "a silent HTTP connection is cut off");
    // The public port serves chat only: health and metrics are elsewhere.
    let (status, _) = e2e::http_get(http, "/metrics").await.expect("answers");
    assert_eq!(status, 404, "metrics are not on the public port");
    let (status, body) = e2e::http_get(stack.gateways[0].admin, "/metrics")
        .await
        .expect("admin answers");
    assert_eq!(status, 200);
    assert!(body.contains("gateway_refused"), "refusals are counted");
}

#[tokio::test]
async fn unfinished_requests_share_one_budget_per_node() {
    let stack = Stack::builder()
        .gateways(1)
        .gateway_env("CLUSTERCHAT_GATEWAY_PARTIAL_BUDGET_BYTES", "100000")
        .start()
        .await;
    let gateway = stack.gateways[0].tcp;
    let half = |c: char| format!(r#"{{"msgid":4,"name":"{}"#, c.to_string().repeat(40_000));
    let mut first = Client::connect(gateway).await;
    first.send_raw(half('a').as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second = Client::connect(gateway).await;
    second.send_raw(half('b').as_bytes()).await;
    let refusal = second.recv().await;
    assert_eq!(refusal["errno"], 12, "{refusal}");
    assert!(
        refusal["errmsg"]
            .as_str()
            .is_some_and(|m| m.contains("unfinished requests")),
        "{refusal}"
    );
    assert!(second.is_closed(Duration::from_secs(2)).await);

    // The first one finishes its request and is answered; its bytes are
    // free again, so a new connection fits.
    first.send_raw(b"\",\"password\":\"pw\"}\0").await;
    let reply = first.recv().await;
    assert_eq!(reply["msgid"], 5, "answered: {reply}");
    let mut third = Client::connect(gateway).await;
    third.send_raw(half('c').as_bytes()).await;
    third.send_raw(b"\",\"password\":\"pw\"}\0").await;
    assert_eq!(third.recv().await["msgid"], 5);
}

#[tokio::test]
async fn a_login_flood_from_one_address_is_throttled_and_others_still_log_in() {
    let stack = Stack::builder()
        .gateways(2)
        .gateway_env("CLUSTERCHAT_GATEWAY_LOGINS_PER_ADDRESS", "5")
        .gateway_env("CLUSTERCHAT_GATEWAY_REGISTERS_PER_ADDRESS", "3")
        .start()
        .await;
    let (g1, g2) = (stack.gateways[0].tcp, stack.gateways[1].tcp);

    // Registrations: three per address per window, counted across nodes.
    let mut registrar = client_from(g1, "198.51.100.1").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(registrar.register(&format!("user{i}"), "pw").await);
    }
    let mut elsewhere = client_from(g2, "198.51.100.1").await;
    let refused = elsewhere
        .call(json!({"msgid": 4, "name": "one-more", "password": "pw"}), 1)
        .await;
    assert_eq!(refused["errno"], 1, "{refused}");
    assert!(
        refused["retry_after"].as_u64().is_some_and(|s| s >= 1),
        "{refused}"
    );
    assert!(
        refused["errmsg"]
            .as_str()
            .is_some_and(|m| m.contains("198.51.100.1")),
        "the client address reached the gateway: {refused}"
    );

    // Logins: a flood of guesses from one address, over both nodes.
    let mut flooder = client_from(g1, "203.0.113.7").await;
    let mut flooder2 = client_from(g2, "203.0.113.7").await;
    for i in 0..5 {
        let c = if i % 2 == 0 {
            &mut flooder
        } else {
            &mut flooder2
        };
        let reply = c.login(ids[i % 3], "guess").await;
        assert_eq!(reply["errmsg"], "id or password is invalid!", "{reply}");
    }
    let throttled = flooder.login(ids[0], "pw").await;
    assert_eq!(throttled["errno"], 7, "{throttled}");
    assert!(throttled["retry_after"].as_u64().is_some_and(|s| s >= 1));
    assert!(
        throttled["errmsg"]
            .as_str()
            .is_some_and(|m| m.contains("too many login attempts from 203.0.113.7")),
        "{throttled}"
    );
    // A real user elsewhere is not starved by it.
    let mut real = client_from(g2, "192.0.2.44").await;
    assert_eq!(real.login(ids[0], "pw").await["errno"], 0);
}

#[tokio::test]
async fn failed_logins_lock_the_account_for_a_while_whatever_the_address() {
    let stack = Stack::builder()
        .gateways(1)
        .gateway_env("CLUSTERCHAT_GATEWAY_LOGIN_FAILURES_PER_ACCOUNT", "3")
        .gateway_env("CLUSTERCHAT_GATEWAY_THROTTLE_WINDOW_MS", "3000")
        .start()
        .await;
    let gateway = stack.gateways[0].tcp;
    let mut setup = Client::connect(gateway).await;
    let victim = setup.register("victim", "right").await;
    let other = setup.register("other", "pw").await;
    for i in 0..3 {
        let mut guesser = client_from(gateway, &format!("203.0.113.{}", 10 + i)).await;
        assert_eq!(
            guesser.login(victim, "wrong").await["errmsg"],
            "id or password is invalid!"
        );
    }
    let mut owner = client_from(gateway, "192.0.2.1").await;
    let locked = owner.login(victim, "right").await;
    assert_eq!(
        locked["errno"], 7,
        "even the right password waits: {locked}"
    );
    let wait = locked["retry_after"].as_u64().expect("retry_after");
    assert!((1..=3).contains(&wait), "{locked}");
    assert!(
        locked["errmsg"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("failed logins for user {victim}"))),
        "{locked}"
    );
    // Other accounts are not affected.
    let mut neighbour = client_from(gateway, "192.0.2.2").await;
    assert_eq!(neighbour.login(other, "pw").await["errno"], 0);
    // After retry_after, the owner gets in.
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(200)).await;
    assert_eq!(owner.login(victim, "right").await["errno"], 0);
}

/// Keepalive for stacks whose receivers stop reading for as long as a test
/// sends (10-20 s, and more on a loaded machine). With the default (6 s)
/// the node's kernel ends a connection whose window stays shut for 12 s
/// (`TCP_USER_TIMEOUT` covers zero-window probes too): what was not sent
/// would wait for the next login, but these tests are about the same
/// session catching up.
const SLOW_READERS_KEEPALIVE_MS: &str = "120000";

/// Reads chats until `count` have come; each text's first 4 characters.
/// A stall is no progress for a minute, not one quiet period: while the
/// client did not read, the node's kernel probed its shut window less and
/// less often (the persist timer doubles), so once it reads the next bytes
/// may wait for the next probe (seen with `ss -tino` on a loaded machine:
/// 3.2 s, then 6.4 s, the gateway's writer waiting in its write).
async fn read_chats(client: &mut Client, count: usize, who: &str) -> Vec<String> {
    const STALLED: Duration = Duration::from_secs(60);
    let mut got = Vec::new();
    let mut progress = Instant::now();
    while got.len() < count {
        let chats = client.chats_until_quiet(Duration::from_secs(2)).await;
        if chats.is_empty() {
            assert!(
                progress.elapsed() < STALLED,
                "{who} stalled after {} messages",
                got.len()
            );
            continue;
        }
        progress = Instant::now();
        got.extend(texts(&chats).into_iter().map(|t| t[..4].to_owned()));
    }
    got
}

#[tokio::test]
async fn a_receiver_that_does_not_read_costs_bounded_memory_and_loses_nothing() {
    let stack = Stack::builder()
        .gateways(1)
        .gateway_env("CLUSTERCHAT_GATEWAY_OUTBOUND_BYTES", "1048576")
        // The gateway's memory is what this is about: 60 MB wait for Bob in
        // Redis, past the inbox's default 16 MiB budget (its own test is
        // a_receiver_that_never_acknowledges_is_bounded_by_bytes_...).
        .gateway_env("CLUSTERCHAT_GATEWAY_MAX_INBOX_BYTES", "134217728")
        .gateway_env(
            "CLUSTERCHAT_GATEWAY_TCP_KEEPALIVE_MS",
            SLOW_READERS_KEEPALIVE_MS,
        )
        .start()
        .await;
    let gateway = &stack.gateways[0];
    let pid = gateway.pid().expect("gateway pid");
    let (mut alice, a, bob, b) = stack.alice_and_bob(0, 0).await;
    let mut carol = Client::connect(gateway.tcp).await;
    let mut dave = Client::connect(gateway.tcp).await;
    let c = carol.register("carol", "pc").await;
    let d = dave.register("dave", "pd").await;
    carol.login_ok(c, "pc").await;
    dave.login_ok(d, "pd").await;
    round_trip(&mut carol, c, &mut dave, d).await;
    let before = rss_kib(pid);

    // Bob stops reading; Alice sends him 1000 messages of 60 KB (60 MB): a queue bounded by count alone would hold them all.
    const COUNT: usize = 1000;
    let big = "x".repeat(60_000);
    let mut worst = Duration::ZERO;
    for i in 0..COUNT {
        alice.send(&chat(a, b, &format!("{i:04} {big}"))).await;
        if i % 50 == 49 {
            worst = worst.max(round_trip(&mut carol, c, &mut dave, d).await);
        }
    }
    // Every one was accepted (a refusal would be an error reply to Alice,
    // msgid 11 with an errno: she sends without `seq`, so an accepted chat
    // gets no reply at all).
    let replies = alice.frames_until_quiet(Duration::from_millis(500)).await;
    assert!(replies.is_empty(), "no refusal: {replies:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    let grown_mib = after.saturating_sub(before) / 1024;
    eprintln!(
        "gateway RSS {before} KiB -> {after} KiB (+{grown_mib} MiB) with 60 MB waiting for a receiver that does not read; slowest other chat {worst:?}"
    );
    assert!(
        grown_mib < 32,
        "memory follows what a slow receiver is sent: +{grown_mib} MiB"
    );
    assert!(worst < Duration::from_secs(1), "others stalled: {worst:?}");
    let (_, metrics) = e2e::http_get(gateway.admin, "/metrics")
        .await
        .expect("metrics");
    let overflowed = metrics
        .lines()
        .find(|l| {
            l.starts_with("clusterchat_gateway_overflowed_deliveries_total{queue=\"session\"}")
        })
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        overflowed > 0,
        "the byte bound left deliveries in the inbox"
    );

    // Bob reads again: every message, in order, once.
    let mut bob = bob;
    let got = read_chats(&mut bob, COUNT, "bob").await;
    let expected: Vec<String> = (0..COUNT).map(|i| format!("{i:04}")).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn the_real_client_address_reaches_the_gateway_through_nginx() {
    let stack = Stack::builder().gateways(1).with_nginx().start().await;
    let nginx = stack.nginx.as_ref().expect("nginx").tcp;
    let mut client = Client::connect(nginx).await;
    let id = client.register("traveller", "pw").await;
    client.login_ok(id, "pw").await;
    // nginx's side of its connection to the gateway has a port of its own;
    // the gateway names the client's.
    let me = client.local_addr();
    // The line is written just after the ack.
    let mut logins = Vec::new();
    for _ in 0..50 {
        let logs = stack.all_logs();
        logins = logs
            .lines()
            .filter(|l| l.contains("logged in"))
            .map(str::to_owned)
            .collect();
        if !logins.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        logins.iter().any(|l| l.contains(&me.to_string())),
        "the gateway names {me} (not nginx's end) in {logins:?}"
    );
}

#[tokio::test]
async fn a_proxy_header_from_an_untrusted_address_is_not_believed() {
    let stack = Stack::builder()
        .gateways(1)
        .gateway_env("CLUSTERCHAT_GATEWAY_TRUSTED_PROXIES", "")
        .start()
        .await;
    let mut liar = client_from(stack.gateways[0].tcp, "10.9.9.9").await;
    let reply = liar.recv().await;
    assert_eq!(reply["errno"], 1, "the header is just bad bytes: {reply}");
    let id = liar.register("liar", "pw").await;
    liar.login_ok(id, "pw").await;
    let logs = stack.all_logs();
    assert!(
        !logs.contains("10.9.9.9"),
        "the claimed address is not used"
    );
}

#[tokio::test]
async fn a_group_chat_is_charged_per_receiver_and_still_delivered() {
    // 10 requests a second, bursts of 10; a receiver costs one request.
    let stack = Stack::builder()
        .gateways(1)
        .gateway_env("CLUSTERCHAT_GATEWAY_RATE_PER_SEC", "10")
        .gateway_env("CLUSTERCHAT_GATEWAY_RATE_BURST", "10")
        .gateway_env("CLUSTERCHAT_GATEWAY_FANOUT_PER_TOKEN", "1")
        .start()
        .await;
    let gateway = stack.gateways[0].tcp;
    let mut owner = Client::connect(gateway).await;
    let o = owner.register("owner", "pw").await;
    owner.login_ok(o, "pw").await;
    let group = owner
        .call(
            json!({"msgid": 8, "id": o, "groupname": "g", "groupdesc": "d"}),
            1,
        )
        .await["groupid"]
        .as_i64()
        .expect("groupid");
    let mut members = Vec::new();
    for i in 0..5 {
        let mut m = Client::connect(gateway).await;
        let id = m.register(&format!("m{i}"), "pw").await;
        m.login_ok(id, "pw").await;
        assert_eq!(
            m.call(json!({"msgid": 9, "id": id, "groupid": group}), 1)
                .await["errno"],
            0
        );
        members.push(m);
    }
    // Five group chats to five receivers: 5 + 5 × 5 = 30 requests' worth,
    // 20 past the burst: two seconds at 10 a second. Paced, not refused.
    let started = Instant::now();
    for i in 0..5 {
        let reply = owner
            .call(e2e::group_chat(o, group, &format!("g{i}")), 10 + i)
            .await;
        assert_eq!(reply["errno"], 0, "{reply}");
    }
    let took = started.elapsed();
    eprintln!("five group chats to five members took {took:?}");
    assert!(
        took >= Duration::from_millis(1500),
        "the fan-out was not charged: {took:?}"
    );
    for m in &mut members {
        let chats = m.chats_until_quiet(Duration::from_millis(500)).await;
        assert_eq!(texts(&chats), ["g0", "g1", "g2", "g3", "g4"]);
    }
}

#[tokio::test]
async fn one_address_cannot_hold_the_node_with_connections_that_never_log_in() {
    let stack = Stack::builder()
        .gateways(1)
        .gateway_env("CLUSTERCHAT_GATEWAY_ANONYMOUS_PER_ADDRESS", "3")
        .start()
        .await;
    let gateway = stack.gateways[0].tcp;
    let mut setup = Client::connect(gateway).await;
    let id = setup.register("patient", "pw").await;
    drop(setup);

    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut c = client_from(gateway, "203.0.113.5").await;
        c.expect_silence(Duration::from_millis(100)).await;
        idle.push(c);
    }
    let mut fourth = client_from(gateway, "203.0.113.5").await;
    let refused = fourth.recv().await;
    assert_eq!(refused["errno"], 12, "{refused}");
    assert!(
        refused["errmsg"]
            .as_str()
            .is_some_and(|m| m.contains("203.0.113.5 has 3 connections")),
        "{refused}"
    );
    assert!(fourth.is_closed(Duration::from_secs(2)).await);
    // Other addresses are not affected.
    let mut other = client_from(gateway, "192.0.2.9").await;
    other.expect_silence(Duration::from_millis(100)).await;
    // One of the three logs in: its place is free for another.
    idle[0].login_ok(id, "pw").await;
    let mut fifth = client_from(gateway, "203.0.113.5").await;
    fifth.expect_silence(Duration::from_millis(300)).await;
    assert!(fifth.register("second", "pw").await > id, "served");
}

#[tokio::test]
async fn a_client_that_half_closes_through_nginx_still_gets_its_reply() {
    // `printf '...\0' | nc -q1 127.0.0.1 8000`, as the README shows.
    let stack = Stack::builder().gateways(1).with_nginx().start().await;
    let nginx = stack.nginx.as_ref().expect("nginx").tcp;
    let mut stream = TcpStream::connect(nginx).await.expect("connect");
    stream
        .write_all(b"{\"msgid\":4,\"name\":\"halfway\",\"password\":\"pw\",\"seq\":1}\0")
        .await
        .expect("write");
    stream.shutdown().await.expect("half-close");
    let (closed, said) = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(closed);
    assert!(
        said.contains(r#""errno":0"#) && said.contains(r#""msgid":5"#),
        "{said:?}"
    );
}

#[tokio::test]
async fn a_steady_stream_whose_reads_split_requests_is_not_cut_off() {
    // Each request ends in the next write, so part of one is always
    // buffered; but no request takes longer than the deadline.
    let stack = Stack::builder()
        .gateways(1)
        .gateway_env("CLUSTERCHAT_GATEWAY_FRAME_DEADLINE_MS", "1000")
        .start()
        .await;
    let mut client = Client::connect(stack.gateways[0].tcp).await;
    client.send_raw(br#"{"msgid":13,"seq":0"#).await;
    for i in 1..=12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        client
            .send_raw(format!(r#"}}{{"msgid":13,"seq":{i}"#).as_bytes())
            .await;
        let pong = client.recv().await;
        assert_eq!(pong, json!({"msgid": 14, "seq": i - 1}), "after {i} writes");
    }
}

/// A user's device sessions are capped across the cluster
/// (`CLUSTERCHAT_GATEWAY_MAX_DEVICES`): one more device login, on either
/// node, is refused with errno 6 and says why, while chats sent meanwhile
/// keep reaching the devices that are on; a logout frees a place.
#[tokio::test]
async fn device_logins_past_the_cap_are_refused_with_a_reason_while_chats_go_on() {
    let stack = Stack::builder()
        .gateways(2)
        .gateway_env("CLUSTERCHAT_GATEWAY_MAX_DEVICES", "2")
        .start()
        .await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let a = alice.register("alice", "pa").await;
    alice.login_ok(a, "pa").await;
    let mut setup = Client::connect(stack.gateways[1].tcp).await;
    let b = setup.register("bob", "pb").await;
    drop(setup);

    let mut phone = Client::connect(stack.gateways[0].tcp).await;
    let ack = phone.login_acking(b, "pb", None).await;
    assert_eq!(ack["errno"], 0, "first device: {ack}");
    let mut laptop = Client::connect(stack.gateways[1].tcp).await;
    let ack = laptop.login_acking(b, "pb", None).await;
    assert_eq!(ack["errno"], 0, "second device: {ack}");

    // Alice keeps sending while a third and a fourth device try, one on
    // each node.
    let mut sent = Vec::new();
    for (i, node) in [0usize, 1].into_iter().enumerate() {
        let text = format!("during refusal {i}");
        alice.send(&chat(a, b, &text)).await;
        sent.push(text);
        let mut tablet = Client::connect(stack.gateways[node].tcp).await;
        let refused = tablet.login_acking(b, "pb", None).await;
        assert_eq!(
            refused["errno"], 6,
            "a third device on node {node}: {refused}"
        );
        let why = refused["errmsg"].as_str().unwrap_or_default();
        assert!(
            why.contains("2 devices") && why.contains("log out"),
            "the refusal says why: {why}"
        );
    }
    // Both devices on get every chat, in order.
    for device in [&mut phone, &mut laptop] {
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let frame = device.recv().await;
            if frame["msgid"] == 6 {
                got.push(frame["msg"].as_str().unwrap_or_default().to_owned());
            }
        }
        assert_eq!(got, sent);
    }

    // A logout frees a place at once.
    phone.send(&json!({"msgid": 3, "id": b})).await;
    let mut tablet = Client::connect(stack.gateways[1].tcp).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ack = tablet.login_acking(b, "pb", None).await;
        if ack["errno"] == 0 {
            break;
        }
        assert!(
            ack["errno"] == 6 && Instant::now() < deadline,
            "after a logout a device may log in: {ack}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A device that never acknowledges keeps everything in its inbox: the
/// inbox's budget in bytes (`CLUSTERCHAT_GATEWAY_MAX_INBOX_BYTES`) stops it
/// long before its count would, with a refusal that says so; once the
/// device acknowledges, chats are taken again.
#[tokio::test]
async fn a_receiver_that_never_acknowledges_is_bounded_by_bytes_and_the_sender_is_told() {
    let stack = Stack::builder()
        .gateways(2)
        .gateway_env("CLUSTERCHAT_GATEWAY_MAX_INBOX_BYTES", "1048576")
        .start()
        .await;
    let mut alice = Client::connect(stack.gateways[0].tcp).await;
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    let a = alice.register("alice", "pa").await;
    let b = bob.register("bob", "pb").await;
    alice.login_ok(a, "pa").await;
    assert_eq!(bob.login_acking(b, "pb", None).await["errno"], 0);
    let big = "q".repeat(60_000);
    let mut accepted = 0;
    let refusal = loop {
        let reply = alice
            .call(chat(a, b, &format!("{accepted} {big}")), 1)
            .await;
        if reply["errno"] != 0 {
            break reply;
        }
        accepted += 1;
        assert!(
            accepted <= 40,
            "60 KB chats past a 1 MiB budget were all taken"
        );
        if accepted % 10 == 0 {
            bob.send(&json!({"msgid": 13})).await;
        }
    };
    assert_eq!(refusal["errno"], 13, "{refusal}");
    let why = refusal["errmsg"].as_str().unwrap_or_default();
    assert!(why.contains("bytes"), "the refusal says why: {why}");
    assert!(accepted < 40, "stopped by bytes, not by the 10,000 count");
    // Bob reads and acknowledges all of it; Alice's chats are taken again.
    let mut last = 0;
    let mut got = 0;
    while got < accepted {
        let m = bob.recv().await;
        if m["msgid"] == 6 {
            got += 1;
            last = m["rseq"].as_u64().expect("rseq");
        }
    }
    bob.send(&json!({"msgid": 12, "ack": last})).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = alice.call(chat(a, b, "room again"), 2).await;
        if reply["errno"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Many slow receivers on one node: all their live queues together are
/// bounded by the node's budget (`CLUSTERCHAT_GATEWAY_OUTBOUND_NODE_BYTES`),
/// not only each by its own; what does not fit waits in the inboxes, and
/// every message reaches every receiver once, in order, when they read.
#[tokio::test]
async fn slow_receivers_together_stay_within_the_nodes_queue_budget_and_lose_nothing() {
    let stack = Stack::builder()
        .gateways(1)
        .gateway_env("CLUSTERCHAT_GATEWAY_OUTBOUND_NODE_BYTES", "1048576")
        .gateway_env(
            "CLUSTERCHAT_GATEWAY_TCP_KEEPALIVE_MS",
            SLOW_READERS_KEEPALIVE_MS,
        )
        .start()
        .await;
    let gateway = &stack.gateways[0];
    let mut alice = Client::connect(gateway.tcp).await;
    let a = alice.register("alice", "pa").await;
    alice.login_ok(a, "pa").await;
    // Four receivers that stop reading.
    let mut receivers = Vec::new();
    for i in 0..4 {
        let mut r = Client::connect(gateway.tcp).await;
        let id = r.register(&format!("slow{i}"), "ps").await;
        r.login_ok(id, "ps").await;
        receivers.push((r, id));
    }
    // 200 chats of 30 KB to each (24 MB in all): each queue alone (4 MiB
    // by default) would take 4 MiB of them, the node 1 MiB in all.
    const COUNT: usize = 200;
    let big = "y".repeat(30_000);
    for i in 0..COUNT {
        for (_, id) in &receivers {
            alice.send(&chat(a, *id, &format!("{i:04} {big}"))).await;
        }
    }
    let replies = alice.frames_until_quiet(Duration::from_millis(500)).await;
    assert!(replies.is_empty(), "no refusal: {replies:?}");
    let (_, metrics) = e2e::http_get(gateway.admin, "/metrics")
        .await
        .expect("metrics");
    let overflowed = metrics
        .lines()
        .find(|l| l.starts_with("clusterchat_gateway_overflowed_deliveries_total{queue=\"node\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        overflowed > 0,
        "the node's budget left deliveries in the inboxes:\n{metrics}"
    );
    let expected: Vec<String> = (0..COUNT).map(|i| format!("{i:04}")).collect();
    for (mut r, id) in receivers {
        let got = read_chats(&mut r, COUNT, &format!("user {id}")).await;
        assert_eq!(got, expected, "user {id}: every message once, in order");
    }
}
