//! The inbox scripts against a real Redis (the one `just test` starts), each
//! test under a key prefix of its own.

use std::time::Duration;

use gateway::protocol::conversation::{self, Conversation};
use gateway::redis::{
    AppendTo, Appended, Claim, Dedup, Redis, RedisTarget, entry_tail,
    number::{NumberJob, partition},
    slot,
};
use shutdown::Shutdown;
use tokio::sync::mpsc;

fn redis_url() -> String {
    std::env::var("CLUSTERCHAT_TEST_REDIS_URL")
        .expect("CLUSTERCHAT_TEST_REDIS_URL: run with `just test`")
}

async fn cluster() -> Redis {
    cluster_with_prefix().await.0
}

async fn cluster_with_prefix() -> (Redis, String) {
    let prefix = format!("{}:", test_support::unique_name("inbox"));
    let (events, _) = mpsc::channel(16);
    let cluster = Redis::connect(&redis_url(), &prefix, events, Shutdown::new())
        .await
        .expect("redis");
    (cluster, prefix)
}

/// A command over a connection of our own (routed by key on a cluster).
async fn raw<T: redis::FromRedisValue>(command: redis::Cmd) -> T {
    match RedisTarget::parse(&redis_url()) {
        RedisTarget::Single(url) => {
            let mut conn = redis::Client::open(url)
                .expect("url")
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            command.query_async(&mut conn).await.expect("command")
        }
        RedisTarget::Cluster(nodes) => {
            let mut conn = redis::cluster::ClusterClient::new(nodes)
                .expect("nodes")
                .get_async_connection()
                .await
                .expect("connect");
            command.query_async(&mut conn).await.expect("command")
        }
    }
}

/// A history stream's chats, each by field name. A chat is written as
/// one field, `m` = "CONV SEQ MID FROM AT TP\nFRAME", and a call's chats
/// for one stream share an entry (the field once per chat): each comes
/// back here as the fields the history service reads from it (`op` =
/// "m", ...), in order. Entries of other forms come back as they are.
async fn stream_entries(key: &str) -> Vec<std::collections::HashMap<String, String>> {
    stream_chats(key).await.into_iter().flatten().collect()
}

/// The same, grouped by stream entry.
async fn stream_chats(key: &str) -> Vec<Vec<std::collections::HashMap<String, String>>> {
    let reply: Vec<(String, Vec<(String, String)>)> =
        raw(redis::cmd("XRANGE").arg(key).arg("-").arg("+").clone()).await;
    reply
        .into_iter()
        .map(|(_, fields)| {
            if !fields.iter().all(|(name, _)| name == "m") {
                return vec![fields.into_iter().collect()];
            }
            fields
                .iter()
                .map(|(_, packed)| {
                    let (header, frame) =
                        packed.split_once('\n').expect("a newline before the frame");
                    let parts: Vec<&str> = header.splitn(6, ' ').collect();
                    assert_eq!(parts.len(), 6, "conv seq mid from at tp: {header:?}");
                    ["conv", "seq", "mid", "from", "at", "tp"]
                        .into_iter()
                        .zip(parts)
                        .chain([("op", "m"), ("frame", frame)])
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect()
                })
                .collect()
        })
        .collect()
}

async fn append(cluster: &Redis, user: i64, mid: &str, text: &str, max: usize) -> Appended {
    append_with(cluster, user, mid, text, max, None).await
}

async fn append_with(
    cluster: &Redis,
    user: i64,
    mid: &str,
    text: &str,
    max: usize,
    dedup: Option<Duration>,
) -> Appended {
    let tail = entry_tail(mid, 7, 1, "", text.as_bytes());
    let to = [AppendTo {
        user,
        publish: false,
    }];
    cluster
        .append(&to, mid, &tail, max, dedup)
        .await
        .expect("append")[0]
}

fn seq(appended: Appended) -> u64 {
    match appended {
        Appended::Recorded { seq, .. } => seq,
        other => panic!("not recorded: {other:?}"),
    }
}

async fn texts_after(cluster: &Redis, user: i64, after: u64) -> Vec<String> {
    let page = cluster.read_inbox(user, after, 100).await.expect("read");
    page.entries
        .iter()
        .map(|e| String::from_utf8(e.frame.clone()).expect("utf8"))
        .collect()
}

#[tokio::test]
async fn sequences_grow_without_gaps_from_redis_clock_and_trims_keep_positions() {
    let cluster = cluster().await;
    let first = seq(append(&cluster, 1, "m1", "one", 100).await);
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64;
    assert!(
        first.abs_diff(now_micros) < 60_000_000,
        "starts at Redis's clock: {first}"
    );
    let second = seq(append(&cluster, 1, "m2", "two", 100).await);
    let third = seq(append(&cluster, 1, "m3", "three", 100).await);
    assert_eq!((second, third), (first + 1, first + 2));
    assert_eq!(texts_after(&cluster, 1, 0).await, ["one", "two", "three"]);
    assert_eq!(texts_after(&cluster, 1, first).await, ["two", "three"]);

    cluster.trim_delivered(&[(1, second)]).await.expect("trim");
    let page = cluster.read_inbox(1, 0, 100).await.expect("read");
    assert_eq!(page.delivered, second);
    assert_eq!(page.last_seq, third);
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].seq, third);
    // After a trim the position arithmetic still finds entries by sequence.
    let fourth = seq(append(&cluster, 1, "m4", "four", 100).await);
    assert_eq!(fourth, third + 1);
    assert_eq!(texts_after(&cluster, 1, third).await, ["four"]);
    cluster.trim_delivered(&[(1, fourth)]).await.expect("trim");
    assert!(texts_after(&cluster, 1, 0).await.is_empty());
    assert_eq!(
        seq(append(&cluster, 1, "m5", "five", 100).await),
        fourth + 1,
        "an emptied inbox keeps counting"
    );
}

/// What Redis holds after it restarted from older data, or after a replica
/// took over before it had the newest writes: a counter as it was a while
/// ago, marked with an epoch that has ended (here: no mark at all).
async fn roll_back(cluster: &Redis, counter: &str, to: u64) {
    let _: () = raw(redis::cmd("SET").arg(counter).arg(to).clone()).await;
    let mark = cluster.epoch_mark_key(slot::of_key(counter.as_bytes()));
    let _: () = raw(redis::cmd("DEL").arg(mark).clone()).await;
}

#[tokio::test]
async fn a_counter_that_went_back_jumps_above_every_number_it_gave() {
    let (cluster, prefix) = cluster_with_prefix().await;
    let user = 21;
    let a = seq(append(&cluster, user, "a", "a", 100).await);
    let b = seq(append(&cluster, user, "b", "b", 100).await);
    let c = seq(append(&cluster, user, "c", "c", 100).await);
    assert_eq!((b, c), (a + 1, a + 2));
    // b and c were delivered (a writer's cursor, a device's `since` are at
    // c), then lost with the counter.
    roll_back(&cluster, &format!("{prefix}{{u:{user}}}:n"), a).await;
    let inbox = format!("{prefix}{{u:{user}}}:in");
    let _: Vec<String> = raw(redis::cmd("RPOP").arg(&inbox).arg(2).clone()).await;

    let d = seq(append(&cluster, user, "d", "d", 100).await);
    assert!(
        d > c,
        "a new number is above every one given: {d} after {c}"
    );
    let e = seq(append(&cluster, user, "e", "e", 100).await);
    assert_eq!(e, d + 1, "then it counts on without gaps");
    // Reading and trimming find entries by number across the jump.
    assert_eq!(texts_after(&cluster, user, c).await, ["d", "e"]);
    assert_eq!(texts_after(&cluster, user, a).await, ["d", "e"]);
    assert_eq!(texts_after(&cluster, user, d).await, ["e"]);
    assert_eq!(texts_after(&cluster, user, 0).await, ["a", "d", "e"]);
    let page = cluster.read_inbox(user, c, 100).await.expect("read");
    assert_eq!((page.last_seq, page.complete), (e, true));
    cluster.trim_delivered(&[(user, c)]).await.expect("trim");
    assert_eq!(texts_after(&cluster, user, 0).await, ["d", "e"]);
    cluster.trim_delivered(&[(user, d)]).await.expect("trim");
    assert_eq!(texts_after(&cluster, user, 0).await, ["e"]);

    // Conversation numbers (history's `cseq`) too.
    let conv = Conversation::direct(21, 22);
    let first = cluster
        .number(number_job(&conv, "m1", 0, "x"))
        .await
        .expect("number");
    let second = cluster
        .number(number_job(&conv, "m2", 0, "y"))
        .await
        .expect("number");
    let stream = format!("{prefix}{{h:{}}}", partition(&conv.to_string()));
    roll_back(&cluster, &format!("{stream}:c:{conv}"), first).await;
    let third = cluster
        .number(number_job(&conv, "m3", 0, "z"))
        .await
        .expect("number");
    assert!(third > second, "{third} after {second}");
    let fourth = cluster
        .number(number_job(&conv, "m4", 0, "w"))
        .await
        .expect("number");
    assert_eq!(fourth, third + 1);
    assert_eq!(
        cluster.newest_in(&conv.to_string()).await.expect("newest"),
        fourth
    );
}

#[tokio::test]
async fn a_full_inbox_refuses_without_breaking_the_numbering() {
    let cluster = cluster().await;
    let a = seq(append(&cluster, 2, "a", "a", 2).await);
    let b = seq(append(&cluster, 2, "b", "b", 2).await);
    assert_eq!(append(&cluster, 2, "c", "c", 2).await, Appended::InboxFull);
    cluster.trim_delivered(&[(2, a)]).await.expect("trim");
    let d = seq(append(&cluster, 2, "d", "d", 2).await);
    assert_eq!(d, b + 1, "the refused one took no number");
    assert_eq!(texts_after(&cluster, 2, a).await, ["b", "d"]);
    assert_eq!(texts_after(&cluster, 2, b).await, ["d"]);
}

#[tokio::test]
async fn a_retry_with_the_same_message_id_is_recorded_once() {
    let cluster = cluster().await;
    let ttl = Some(Duration::from_secs(60));
    let first = seq(append_with(&cluster, 3, "7-c1", "hi", 100, ttl).await);
    assert_eq!(
        append_with(&cluster, 3, "7-c1", "hi", 100, ttl).await,
        Appended::Duplicate { seq: first }
    );
    assert_eq!(texts_after(&cluster, 3, 0).await, ["hi"]);
}

#[tokio::test]
async fn a_retry_of_an_append_whose_reply_was_lost_is_recorded_once_without_a_client_id() {
    let cluster = cluster().await;
    // The first attempt landed (no client id: no dedup key), its reply was
    // lost; two more chats came after it; the retry finds it by id.
    let first = seq(append(&cluster, 5, "srv-1", "one", 100).await);
    seq(append(&cluster, 5, "srv-2", "two", 100).await);
    seq(append(&cluster, 5, "srv-3", "three", 100).await);
    let tail = entry_tail("srv-1", 7, 1, "", b"one");
    let to = [AppendTo {
        user: 5,
        publish: false,
    }];
    let retried = cluster
        .append_each(
            &to,
            "srv-1",
            &tail,
            100,
            Dedup::Retry(Duration::from_secs(60)),
        )
        .await
        .remove(0)
        .expect("append");
    assert_eq!(retried, Appended::Duplicate { seq: first });
    assert_eq!(texts_after(&cluster, 5, 0).await, ["one", "two", "three"]);
    // A retry of one that never landed records it.
    let tail = entry_tail("srv-4", 7, 1, "", b"four");
    let retried = cluster
        .append_each(
            &to,
            "srv-4",
            &tail,
            100,
            Dedup::Retry(Duration::from_secs(60)),
        )
        .await
        .remove(0)
        .expect("append");
    assert!(matches!(retried, Appended::Recorded { .. }), "{retried:?}");
    assert_eq!(
        texts_after(&cluster, 5, 0).await,
        ["one", "two", "three", "four"]
    );
}

#[tokio::test]
async fn an_inbox_is_bounded_by_bytes_as_well_as_by_count() {
    let cluster = cluster().await;
    cluster.set_budgets(100_000, 1 << 30);
    let big = "z".repeat(10_000);
    // Measured once a backlog of 32 waits: 32 of 10 KB are over 100 KB.
    let mut accepted = 0;
    let refused = loop {
        match append(&cluster, 6, &format!("b{accepted}"), &big, 10_000).await {
            Appended::Recorded { .. } => accepted += 1,
            other => break other,
        }
        assert!(accepted <= 32, "never refused");
    };
    assert_eq!(refused, Appended::InboxBytesFull);
    assert_eq!(accepted, 32);
    // Small ones are refused as well: the bytes are what is full.
    assert_eq!(
        append(&cluster, 6, "small", "s", 10_000).await,
        Appended::InboxBytesFull
    );
    // Delivered and trimmed: room again, and the numbering has no gap.
    let page = cluster.read_inbox(6, 0, 100).await.expect("read");
    let last = page.last_seq;
    cluster.trim_delivered(&[(6, last)]).await.expect("trim");
    assert_eq!(
        append(&cluster, 6, "after", "after", 10_000).await,
        Appended::Recorded {
            seq: last + 1,
            subscribers: None
        }
    );
}

#[tokio::test]
async fn a_history_stream_is_bounded_by_bytes() {
    let (cluster, prefix) = cluster_with_prefix().await;
    cluster.set_budgets(1 << 30, 128 * 1024);
    let conv = Conversation::direct(1, 2);
    let text = "h".repeat(2_000);
    for i in 0..640 {
        cluster
            .number(number_job(&conv, &format!("s{i}"), 0, &text))
            .await
            .expect("number");
    }
    let stream = format!("{prefix}{{h:{}}}", partition(&conv.to_string()));
    let kept = stream_entries(&stream).await.len();
    assert!(
        (1..=128).contains(&kept),
        "about 128 KB of 2 KB entries kept, not all 640: {kept}"
    );
}

#[tokio::test]
async fn moving_to_the_offline_store_trims_only_while_the_user_is_away() {
    let cluster = cluster().await;
    let s = seq(append(&cluster, 4, "x", "x", 100).await);
    let ttl = Duration::from_secs(30);
    assert!(
        cluster
            .claim_presence(4, "gw/1", false, (ttl, 16))
            .await
            .expect("claim")
            .is_held()
    );
    assert!(
        !cluster.trim_moved(4, s).await.expect("trim"),
        "online: the session reads its inbox itself"
    );
    assert_eq!(texts_after(&cluster, 4, 0).await, ["x"]);
    cluster.release_presence(4, "gw/1").await.expect("release");
    assert!(cluster.trim_moved(4, s).await.expect("trim"));
    assert!(texts_after(&cluster, 4, 0).await.is_empty());
    let page = cluster.read_inbox(4, 0, 10).await.expect("read");
    assert_eq!(page.delivered, 0, "moved is not delivered");
}

#[tokio::test]
async fn concurrent_appends_share_script_calls_and_stay_in_order_per_sender() {
    let cluster = cluster().await;
    let mut tasks = Vec::new();
    for sender in 0..20 {
        let cluster = cluster.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let user = 100 + (sender % 5);
                let text = format!("{sender}:{i}");
                seq(append(&cluster, user, &format!("{sender}-{i}"), &text, 10_000).await);
            }
        }));
    }
    for task in tasks {
        task.await.expect("appender");
    }
    for user in 100..105 {
        let page = cluster.read_inbox(user, 0, 1000).await.expect("read");
        assert_eq!(page.entries.len(), 100);
        for pair in page.entries.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1, "no gaps");
        }
        // Each sender's messages to this user are in the order it sent them.
        for sender in (0..20).filter(|s| 100 + s % 5 == user) {
            let mine: Vec<String> = page
                .entries
                .iter()
                .map(|e| String::from_utf8(e.frame.clone()).expect("utf8"))
                .filter(|t| t.starts_with(&format!("{sender}:")))
                .collect();
            let expected: Vec<String> = (0..25).map(|i| format!("{sender}:{i}")).collect();
            assert_eq!(mine, expected);
        }
    }
}

#[tokio::test]
async fn one_trim_call_serves_many_users() {
    let cluster = cluster().await;
    let mut marks = Vec::new();
    for user in 200..210 {
        let first = seq(append(&cluster, user, "a", "first", 100).await);
        seq(append(&cluster, user, "b", "second", 100).await);
        marks.push((user, first));
    }
    cluster.trim_delivered(&marks).await.expect("trim");
    for (user, first) in marks {
        assert_eq!(
            texts_after(&cluster, user, 0).await,
            ["second"],
            "user {user}"
        );
        let page = cluster.read_inbox(user, 0, 10).await.expect("read");
        assert_eq!(page.delivered, first);
    }
}

#[tokio::test]
async fn a_classic_session_holds_a_user_alone_and_devices_share_one() {
    let cluster = cluster().await;
    let ttl = Duration::from_secs(30);
    let claim = |user: i64, owner: &'static str, device: bool| {
        let cluster = cluster.clone();
        async move {
            cluster
                .claim_presence(user, owner, device, (ttl, 16))
                .await
                .expect("claim")
                .is_held()
        }
    };
    assert!(claim(5, "gw/1", true).await);
    assert!(claim(5, "gw/2", true).await, "a second device");
    assert!(
        !claim(5, "gw/3", false).await,
        "classic while devices are on"
    );
    assert_eq!(
        cluster
            .claim_presence(5, "gw/1", true, (ttl, 16))
            .await
            .expect("claim"),
        Claim::Held { others: 1 },
        "a device refreshes its own claim and learns of the other"
    );
    assert_eq!(cluster.online(&[5]).await.expect("online"), [true]);
    cluster.release_presence(5, "gw/1").await.expect("release");
    assert_eq!(
        cluster.online(&[5]).await.expect("online"),
        [true],
        "the other device is still on"
    );
    cluster.release_presence(5, "gw/2").await.expect("release");
    assert_eq!(cluster.online(&[5]).await.expect("online"), [false]);
    assert!(claim(5, "gw/3", false).await, "now classic may");
    assert!(
        !claim(5, "gw/4", false).await,
        "a second classic login may not"
    );
    assert!(!claim(5, "gw/1", true).await, "nor a device");
    // A claim that expired is no obstacle (a frozen or dead node's).
    assert!(
        cluster
            .claim_presence(6, "gw/9", false, (Duration::from_millis(50), 16))
            .await
            .expect("claim")
            .is_held()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(claim(6, "gw/1", true).await);
}

#[tokio::test]
async fn device_sessions_are_capped_and_a_refresh_keeps_its_place() {
    let cluster = cluster().await;
    let limits = (Duration::from_secs(30), 2);
    let claim = |owner: &'static str| {
        let cluster = cluster.clone();
        async move {
            cluster
                .claim_presence(7, owner, true, limits)
                .await
                .expect("claim")
        }
    };
    assert_eq!(claim("gw/1").await, Claim::Held { others: 0 });
    assert_eq!(claim("gw/2").await, Claim::Held { others: 1 });
    assert_eq!(claim("gw/3").await, Claim::TooManyDevices, "a third device");
    assert_eq!(
        claim("gw/1").await,
        Claim::Held { others: 1 },
        "a device on refreshes its own claim at the cap"
    );
    let refreshed = cluster
        .refresh_presence(&[(7, "gw/2".to_owned(), true)], limits)
        .await;
    assert_eq!(refreshed, [Some(Claim::Held { others: 1 })]);
    cluster.release_presence(7, "gw/1").await.expect("release");
    assert_eq!(
        claim("gw/3").await,
        Claim::Held { others: 1 },
        "a place freed"
    );
}

#[tokio::test]
async fn one_refresh_renews_many_sessions_and_answers_each() {
    let cluster = cluster().await;
    let limits = (Duration::from_secs(30), 16);
    // More sessions than one script call takes (256), over many slots.
    let mut claims: Vec<(i64, String, bool)> = (1000..1600)
        .map(|user| (user, format!("gw/{user}"), true))
        .collect();
    // Taken by a classic session elsewhere meanwhile: refused.
    cluster
        .claim_presence(2000, "gw/other", false, limits)
        .await
        .expect("claim");
    claims.push((2000, "gw/mine".to_owned(), true));
    // A device beside another device: held, with one other.
    cluster
        .claim_presence(2001, "gw/phone", true, limits)
        .await
        .expect("claim");
    claims.push((2001, "gw/laptop".to_owned(), true));
    let refreshed = cluster.refresh_presence(&claims, limits).await;
    assert_eq!(refreshed.len(), claims.len());
    assert!(
        refreshed[..600]
            .iter()
            .all(|r| *r == Some(Claim::Held { others: 0 })),
        "every session re-created and held"
    );
    assert_eq!(refreshed[600], Some(Claim::Refused));
    assert_eq!(refreshed[601], Some(Claim::Held { others: 1 }));
    let users: Vec<i64> = (1000..1600).collect();
    assert!(
        cluster
            .online(&users)
            .await
            .expect("online")
            .iter()
            .all(|o| *o)
    );
}

fn number_job(conv: &Conversation, mid: &str, ttl: u64, text: &str) -> NumberJob {
    let frame = format!(r#"{{"id":1,"msg":"{text}","msgid":6,"toid":2}}"#);
    NumberJob {
        conversation: conv.to_string(),
        mid: mid.to_owned(),
        ttl,
        sender: 1,
        micros: 42,
        traceparent: String::new(),
        head: conversation::numbered_head(frame.as_bytes(), conv).expect("an object"),
        log: 0,
        reply: tokio::sync::oneshot::channel().0,
    }
}

#[tokio::test]
async fn chats_are_numbered_per_conversation_and_recorded_for_history() {
    let (cluster, prefix) = cluster_with_prefix().await;
    let conv = Conversation::direct(2, 1);
    let other = Conversation::Group(7);
    let first = cluster
        .number(number_job(&conv, "m1", 0, "a"))
        .await
        .expect("number");
    let second = cluster
        .number(number_job(&conv, "m2", 60, "b"))
        .await
        .expect("number");
    let again = cluster
        .number(number_job(&conv, "m2", 60, "b"))
        .await
        .expect("number");
    let elsewhere = cluster
        .number(number_job(&other, "m3", 0, "c"))
        .await
        .expect("number");
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64;
    assert!(
        first > now_micros - 60_000_000 && first <= now_micros,
        "a new conversation starts at Redis's clock: {first}"
    );
    assert_eq!(second, first + 1, "then one by one");
    assert_eq!(again, second, "a retried chat keeps its number");
    assert_ne!(
        elsewhere,
        second + 1,
        "each conversation has its own counter"
    );

    let key = format!("{prefix}{{h:{}}}", partition(&conv.to_string()));
    let entries = stream_entries(&key).await;
    assert_eq!(
        entries.len(),
        2,
        "the retry is not recorded twice: {entries:?}"
    );
    assert_eq!(entries[0]["op"], "m");
    assert_eq!(entries[0]["mid"], "m1");
    assert_eq!(entries[0]["conv"], "d:1:2");
    assert_eq!(entries[0]["seq"], first.to_string());
    assert_eq!(entries[0]["from"], "1");
    assert_eq!(entries[0]["at"], "42");
    let frame: serde_json::Value =
        serde_json::from_str(&entries[1]["frame"]).expect("the frame is JSON");
    assert_eq!(frame["cseq"], second);
    assert_eq!(frame["conv"], "d:1:2");
    assert_eq!(frame["msg"], "b");

    cluster.retract("d:1:2", "m2", second).await;
    let entries = stream_entries(&key).await;
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[2]["op"], "x");
    assert_eq!(entries[2]["mid"], "m2");
}

#[tokio::test]
async fn a_retracted_chat_retried_with_its_client_id_is_numbered_and_recorded_afresh() {
    // Issue 20, hole 2: a chat refused altogether is retracted; the client
    // retries it with the same cmid (so the same mid). The retry must reach
    // history: a new number and an `op=m` entry of its own.
    let (cluster, prefix) = cluster_with_prefix().await;
    let conv = Conversation::direct(4, 3);
    let name = conv.to_string();
    let first = cluster
        .number(number_job(&conv, "r1", 60, "refused, then retried"))
        .await
        .expect("number");
    cluster.retract(&name, "r1", first).await;
    let retried = cluster
        .number(number_job(&conv, "r1", 60, "refused, then retried"))
        .await
        .expect("number");
    assert_eq!(
        retried,
        first + 1,
        "the retry of a retracted chat is numbered afresh"
    );
    let again = cluster
        .number(number_job(&conv, "r1", 60, "refused, then retried"))
        .await
        .expect("number");
    assert_eq!(again, retried, "and a retry of the retry keeps that number");
    // A retraction of the first number arriving late (another attempt of
    // the same chat refused) leaves the retry's number standing.
    cluster.retract(&name, "r1", first).await;
    let late = cluster
        .number(number_job(&conv, "r1", 60, "refused, then retried"))
        .await
        .expect("number");
    assert_eq!(late, retried);

    let key = format!("{prefix}{{h:{}}}", partition(&name));
    let entries = stream_entries(&key).await;
    let ops: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["op"].as_str(), e["seq"].as_str()))
        .collect();
    let (first, retried) = (first.to_string(), retried.to_string());
    assert_eq!(
        ops,
        [
            ("m", first.as_str()),
            ("x", first.as_str()),
            ("m", retried.as_str()),
            ("x", first.as_str()),
        ],
        "{entries:?}"
    );
    assert!(entries.iter().all(|e| e["mid"] == "r1"));
    let frame: serde_json::Value =
        serde_json::from_str(&entries[2]["frame"]).expect("the frame is JSON");
    assert_eq!(
        frame["cseq"].to_string(),
        retried,
        "the frame carries the new number"
    );

    // A chat without a client id has no dedup key; its retraction is the
    // entry alone.
    let plain = cluster
        .number(number_job(&conv, "r2", 0, "no client id"))
        .await
        .expect("number");
    cluster.retract(&name, "r2", plain).await;
    let entries = stream_entries(&key).await;
    assert_eq!(entries.len(), 6);
    assert_eq!(entries[5]["op"], "x");
    assert_eq!(entries[5]["seq"], plain.to_string());
}

/// On a single Redis in one script call; on a cluster in the appender's
/// batch, numbered first in the conversation's shard.
#[tokio::test]
async fn a_chat_is_numbered_in_the_batch_that_appends_it() {
    let (cluster, prefix) = cluster_with_prefix().await;
    let conv = Conversation::direct(11, 12);
    let frame = r#"{"id":11,"msg":"hi","msgid":6,"toid":12}"#;
    let head = conversation::numbered_head(frame.as_bytes(), &conv).expect("an object");
    let tail = entry_tail("n1", 11, 42, "", &head);
    let frame_at = tail.len() - head.len();
    let numbering = gateway::redis::Numbering {
        conversation: conv.to_string(),
        ttl: 60,
        sender: 11,
        micros: 42,
        traceparent: String::new(),
        head_at: frame_at,
    };
    let to = [12, 13].map(|user| AppendTo {
        user,
        publish: false,
    });
    let dedup = Dedup::Key(Duration::from_secs(60));
    let (cseq, results) = cluster
        .number_and_append(&to, "n1", &tail, numbering.clone(), 100, dedup)
        .await;
    let cseq = cseq.expect("numbered");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(Appended::Recorded { .. }))),
        "{results:?}"
    );
    // The receivers' entries carry the frame with its number.
    let numbered = String::from_utf8(conversation::complete(&head, cseq)).expect("utf8");
    assert_eq!(
        texts_after(&cluster, 12, 0).await,
        std::slice::from_ref(&numbered)
    );
    assert_eq!(
        texts_after(&cluster, 13, 0).await,
        std::slice::from_ref(&numbered)
    );
    // So does history's entry.
    let key = format!("{prefix}{{h:{}}}", partition(&conv.to_string()));
    let entries = stream_entries(&key).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["seq"], cseq.to_string());
    assert_eq!(entries[0]["frame"], numbered);
    // A retry (same client id): the same number, recorded once everywhere.
    let (again, results) = cluster
        .number_and_append(&to, "n1", &tail, numbering.clone(), 100, dedup)
        .await;
    assert_eq!(again, Some(cseq));
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(Appended::Duplicate { .. }))),
        "{results:?}"
    );
    assert_eq!(stream_entries(&key).await.len(), 1);
    assert_eq!(texts_after(&cluster, 12, 0).await.len(), 1);
    // The next chat of the conversation is the next number; a plain append
    // in the same batch is not numbered.
    let (next, _) = cluster
        .number_and_append(&to[..1], "n2", &tail, numbering, 100, Dedup::None)
        .await;
    assert_eq!(next, Some(cseq + 1));
    assert!(matches!(
        append(&cluster, 12, "n3", "plain", 100).await,
        Appended::Recorded { .. }
    ));
    assert_eq!(stream_entries(&key).await.len(), 2);
    assert_eq!(texts_after(&cluster, 12, 0).await.len(), 3);
}

/// A burst (one unit of the appender) to one receiver goes as one run:
/// one numbering per chat, one push for the run, one history entry. Past
/// the inbox's limit the rest of the run is refused, the numbering keeps
/// no gap, and the run's chats are in history in order.
#[tokio::test]
async fn a_burst_is_one_run_refused_from_where_the_inbox_is_full() {
    let (cluster, prefix) = cluster_with_prefix().await;
    let conv = Conversation::direct(21, 22);
    let frames: Vec<String> = (0..6)
        .map(|i| format!(r#"{{"id":21,"msg":"b{i}","msgid":6,"toid":22}}"#))
        .collect();
    let heads: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| conversation::numbered_head(f.as_bytes(), &conv).expect("an object"))
        .collect();
    let mids: Vec<String> = (0..6).map(|i| format!("b{i}")).collect();
    let tails: Vec<Vec<u8>> = (0..6)
        .map(|i| entry_tail(&mids[i], 21, 42, "", &heads[i]))
        .collect();
    let chats: Vec<gateway::redis::UnitChat<'_>> = (0..6)
        .map(|i| gateway::redis::UnitChat {
            mid: &mids[i],
            tail: &tails[i],
            numbering: gateway::redis::Numbering {
                conversation: conv.to_string(),
                ttl: 0,
                sender: 21,
                micros: 42,
                traceparent: String::new(),
                head_at: tails[i].len() - heads[i].len(),
            },
            dedup: Dedup::None,
        })
        .collect();
    let to = AppendTo {
        user: 22,
        publish: false,
    };
    // Room for four.
    let results = cluster.number_and_append_unit(to, chats, 4).await;
    let cseqs: Vec<u64> = results.iter().map(|(c, _)| c.expect("numbered")).collect();
    assert!(cseqs.windows(2).all(|w| w[1] == w[0] + 1), "{cseqs:?}");
    let outcomes: Vec<Appended> = results
        .into_iter()
        .map(|(_, r)| r.expect("answered"))
        .collect();
    let seqs: Vec<u64> = outcomes[..4].iter().map(|a| seq(*a)).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(outcomes[4..], [Appended::InboxFull, Appended::InboxFull]);
    let texts = texts_after(&cluster, 22, 0).await;
    let expected: Vec<String> = (0..4)
        .map(|i| String::from_utf8(conversation::complete(&heads[i], cseqs[i])).expect("utf8"))
        .collect();
    assert_eq!(texts, expected);
    // The refused ones took no number: the next is the one after the run's.
    cluster
        .trim_delivered(&[(22, seqs[3])])
        .await
        .expect("trim");
    assert_eq!(
        seq(append(&cluster, 22, "after", "after", 4).await),
        seqs[3] + 1
    );
    // History: the six numbered chats, in one entry, in order.
    let key = format!("{prefix}{{h:{}}}", partition(&conv.to_string()));
    let entries = stream_chats(&key).await;
    assert_eq!(entries.len(), 1, "one entry for the run");
    let in_history: Vec<&str> = entries[0].iter().map(|c| c["mid"].as_str()).collect();
    assert_eq!(
        in_history,
        mids.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

/// Script calls that recorded chats in this process so far.
fn script_calls() -> u64 {
    let m = gateway::metrics::metrics();
    ["append", "number", "deliver"]
        .iter()
        .map(|s| {
            m.script_calls
                .get_or_create(&gateway::metrics::label("script", s))
                .get()
        })
        .sum()
}

/// How many masters serve the slots (1 on a single Redis).
async fn masters() -> u64 {
    match RedisTarget::parse(&redis_url()) {
        RedisTarget::Single(_) => 1,
        RedisTarget::Cluster(_) => {
            let nodes: String = raw(redis::cmd("CLUSTER").arg("NODES").clone()).await;
            nodes
                .lines()
                .filter(|l| l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8)
                .count() as u64
        }
    }
}

#[tokio::test]
async fn a_batch_costs_one_script_call_per_shard_and_keeps_each_slots_epoch() {
    // Sixty receivers are sixty slots on a cluster; their appends go in one
    // call per shard, not one per slot.
    let (cluster, prefix) = cluster_with_prefix().await;
    let masters = masters().await;
    let sharded = matches!(RedisTarget::parse(&redis_url()), RedisTarget::Cluster(_));
    let users: Vec<i64> = (300..360).collect();
    let to: Vec<AppendTo> = users
        .iter()
        .map(|&user| AppendTo {
            user,
            publish: false,
        })
        .collect();
    // Once first: a node that lacks the scripts is sent them (a second
    // call), which a long-running gateway does once per node.
    let tail = entry_tail("b0", 7, 1, "", b"warm-up");
    cluster
        .append(&to, "b0", &tail, 100, None)
        .await
        .expect("append");
    let tail = entry_tail("b1", 7, 1, "", b"first");
    let before = script_calls();
    let first = cluster
        .append(&to, "b1", &tail, 100, None)
        .await
        .expect("append");
    let calls = script_calls() - before;
    assert!(
        calls >= 1 && calls <= masters,
        "{calls} script calls for {} receivers on {masters} shard(s)",
        users.len()
    );
    let first: Vec<u64> = first.into_iter().map(seq).collect();

    // Two receivers' counters go back (their slots lost data): in a call
    // shared with the others, each slot's epoch mark is judged on its own.
    for &user in &users[..2] {
        roll_back(&cluster, &format!("{prefix}{{u:{user}}}:n"), 5).await;
    }
    // A single Redis has one mark for all: every counter jumps there.
    let marked_back: Vec<u16> = users[..2]
        .iter()
        .map(|&u| if sharded { slot::of_user(u) } else { 0 })
        .collect();
    let tail = entry_tail("b2", 7, 1, "", b"second");
    let second = cluster
        .append(&to, "b2", &tail, 100, None)
        .await
        .expect("append");
    for (k, (&user, appended)) in users.iter().zip(second).enumerate() {
        let s = seq(appended);
        let own_mark = if sharded { slot::of_user(user) } else { 0 };
        if marked_back.contains(&own_mark) {
            assert!(s > first[k], "user {user}: {s} jumped above {}", first[k]);
        } else {
            assert_eq!(s, first[k] + 1, "user {user}: no jump without a rollback");
        }
        assert_eq!(texts_after(&cluster, user, 0).await.len(), 3, "user {user}");
    }

    // Chats of forty conversations (all sixteen history partitions) sent at
    // once: far fewer numbering calls than partitions.
    let before = script_calls();
    let numbered = futures::future::join_all((0..40).map(|g| {
        let cluster = cluster.clone();
        async move {
            let conv = Conversation::Group(10_000 + g);
            cluster
                .number(number_job(&conv, &format!("g{g}"), 0, "hi"))
                .await
        }
    }))
    .await;
    assert!(numbered.iter().all(|n| n.is_ok()), "{numbered:?}");
    let calls = script_calls() - before;
    assert!(
        calls <= 2 * masters,
        "{calls} numbering calls for 40 chats on {masters} shard(s)"
    );
}

#[tokio::test]
async fn a_group_chat_is_logged_once_and_members_cursors_only_rise() {
    let cluster = cluster().await;
    let group = 41;
    let conv = Conversation::Group(group);
    let job = |mid: &str, text: &str| NumberJob {
        log: 100,
        ..number_job(&conv, mid, 60, text)
    };
    let first = cluster.number(job("g1", "one")).await.expect("number");
    let second = cluster.number(job("g2", "two")).await.expect("number");
    // A retry (a reply lost): the first number, no second log entry.
    let again = cluster.number(job("g2", "two")).await.expect("number");
    assert_eq!(again, second);
    // Numbered without a log: history only.
    let direct = cluster
        .number(number_job(&conv, "g3", 60, "three"))
        .await
        .expect("number");

    let page = cluster.read_group_log(group, 0, 10).await.expect("read");
    assert!(page.complete);
    let logged: Vec<(u64, &str, i64)> = page
        .entries
        .iter()
        .map(|e| (e.seq, e.mid.as_str(), e.sender_id))
        .collect();
    assert_eq!(logged, [(first, "g1", 1), (second, "g2", 1)]);
    let frame = String::from_utf8(page.entries[1].frame.clone()).expect("utf-8");
    assert!(
        frame.contains(r#""msg":"two""#) && frame.contains(&format!(r#""cseq":{second}"#)),
        "the numbered frame: {frame}"
    );
    let after = cluster
        .read_group_log(group, first, 10)
        .await
        .expect("read");
    assert_eq!(after.entries.len(), 1, "after a cursor, only what follows");
    let short = cluster.read_group_log(group, 0, 1).await.expect("read");
    assert!(!short.complete, "a full page may have more after it");
    assert!(direct > second);

    // Cursors: absent until set; raised in batches; never lowered.
    let user = 9_001;
    assert_eq!(
        cluster
            .group_cursors(user, &[group, 42])
            .await
            .expect("cursors"),
        [None, None]
    );
    cluster
        .set_group_cursor(user, group, first)
        .await
        .expect("set");
    cluster
        .raise_group_cursors(&[(user, group, second), (user, 42, 5), (9_002, group, 3)])
        .await
        .expect("raise");
    cluster
        .raise_group_cursors(&[(user, group, first)])
        .await
        .expect("raise");
    assert_eq!(
        cluster
            .group_cursors(user, &[group, 42])
            .await
            .expect("cursors"),
        [Some(second), Some(5)]
    );
    assert_eq!(
        cluster
            .group_cursors(9_002, &[group])
            .await
            .expect("cursors"),
        [Some(3)]
    );
}
