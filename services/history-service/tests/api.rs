//! The history service over real gRPC against the real test MariaDB and
//! Redis (one server or a Redis Cluster: whichever backend `just test` is
//! running), with a real user service for group memberships. Entries are
//! written to the streams exactly as a gateway writes them (the contract:
//! `XADD {PREFIX}{h:N} MAXLEN ~ 200000 * m "CONV SEQ MID FROM AT TP\nFRAME"`,
//! a retraction `* op x mid .. conv .. seq ..`; chats in the older fields,
//! `op m mid .. conv .. seq .. from .. at .. tp .. frame ..`, are read too:
//! `grpcurl.rs` and `redis_outage.rs` write those). Every test has its own
//! databases and key prefix.

use std::{net::SocketAddr, time::Duration};

use clusterchat_proto::{
    history::v1::{self as pb, history_service_client::HistoryServiceClient},
    user::v1::{self as user_pb, user_service_client::UserServiceClient},
};
use history_service::{
    Application, Config,
    config::TEST_INTERNAL_TOKEN,
    stream::{Connection, RedisTarget, partition_key},
};
use serde_json::json;
use shutdown::Shutdown;
use test_support::{PATIENCE, TcpProxy, assert_eventually, fresh_database_url, unique_name};
use tonic::{
    Code, Status,
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

type Client = HistoryServiceClient<InterceptedService<Channel, Bearer>>;
type Users = UserServiceClient<InterceptedService<Channel, Bearer>>;

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

fn redis_url() -> String {
    std::env::var("CLUSTERCHAT_TEST_REDIS_URL")
        .expect("CLUSTERCHAT_TEST_REDIS_URL: run with `just test`")
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as i64
}

/// The partition of a conversation: FNV-1a 32-bit of its id, mod 16 (what
/// the gateways compute).
fn partition(conv: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in conv.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % 16
}

/// A base for sequence numbers: what a new conversation's counter starts at.
const SEQ: u64 = 1_795_600_000_000_000;

/// A message as a gateway appends it to the history stream.
#[derive(Clone)]
struct Chat {
    conv: String,
    seq: u64,
    mid: String,
    from: i64,
    at_us: i64,
    text: String,
}

impl Chat {
    fn new(conv: &str, seq: u64, from: i64, text: &str) -> Self {
        Self {
            conv: conv.into(),
            seq,
            mid: format!("mid-{conv}-{seq}"),
            from,
            at_us: now_us(),
            text: text.into(),
        }
    }

    fn at(self, at_us: i64) -> Self {
        Self { at_us, ..self }
    }

    fn mid(self, mid: &str) -> Self {
        Self {
            mid: mid.into(),
            ..self
        }
    }

    fn frame(&self) -> String {
        let mut frame = json!({
            "id": self.from, "name": format!("user{}", self.from), "msg": self.text,
            "time": "2026-11-25 10:00:00", "conv": self.conv, "cseq": self.seq, "mid": self.mid,
        });
        if let Some(group) = self.conv.strip_prefix("g:") {
            frame["msgid"] = 10.into();
            frame["groupid"] = group.parse::<i64>().expect("group id").into();
        } else {
            frame["msgid"] = 6.into();
        }
        frame.to_string()
    }

    fn xadd(&self, prefix: &str) -> redis::Cmd {
        redis::cmd("XADD")
            .arg(partition_key(prefix, partition(&self.conv)))
            .arg("MAXLEN")
            .arg("~")
            .arg(200_000)
            .arg("*")
            .arg("m")
            .arg(format!(
                "{} {} {} {} {} 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n{}",
                self.conv,
                self.seq,
                self.mid,
                self.from,
                self.at_us,
                self.frame()
            ))
            .clone()
    }
}

/// A user service of the test's own, for group memberships.
struct UserService {
    addr: SocketAddr,
    client: Users,
    shutdown: Shutdown,
}

impl UserService {
    async fn start() -> Self {
        let config = user_service::Config::for_tests(&fresh_database_url("history_users"));
        let app = user_service::Application::build(config)
            .await
            .expect("build user service");
        let addr = app.local_addr();
        let shutdown = Shutdown::new();
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self {
            addr,
            client: UserServiceClient::with_interceptor(
                channel(addr).await,
                Bearer(Some(user_service::config::TEST_INTERNAL_TOKEN)),
            ),
            shutdown,
        }
    }

    async fn register(&mut self, name: &str) -> i64 {
        self.client
            .register(user_pb::RegisterRequest {
                name: name.into(),
                password: "pw".into(),
            })
            .await
            .expect("register")
            .into_inner()
            .id
    }

    async fn create_group(&mut self, creator: i64, name: &str) -> i64 {
        self.client
            .create_group(user_pb::CreateGroupRequest {
                creator_id: creator,
                name: name.into(),
                description: String::new(),
            })
            .await
            .expect("create group")
            .into_inner()
            .group_id
    }

    async fn join(&mut self, user_id: i64, group_id: i64) {
        self.client
            .join_group(user_pb::JoinGroupRequest { user_id, group_id })
            .await
            .expect("join");
    }

    /// When `user` joined `group`, in microseconds.
    async fn joined_at_us(&mut self, user_id: i64, group_id: i64) -> i64 {
        self.client
            .list_memberships(user_pb::ListMembershipsRequest { user_id })
            .await
            .expect("memberships")
            .into_inner()
            .memberships
            .iter()
            .find(|m| m.group_id == group_id)
            .expect("a member")
            .joined_at_unix_ms
            * 1000
    }
}

struct Running {
    client: Client,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), grpc_server::ServeError>>,
}

/// A user service, a history database and key prefix, and the history
/// service, which can be stopped and started again on the same ones.
struct Stack {
    users: UserService,
    prefix: String,
    database_url: String,
    redis: Connection,
    history: Option<Running>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.users.shutdown.trigger();
        if let Some(history) = &self.history {
            history.shutdown.trigger();
        }
    }
}

impl Stack {
    /// Everything but the history service.
    async fn new() -> Self {
        telemetry::init_for_tests();
        Self {
            users: UserService::start().await,
            prefix: format!("{}:", unique_name("history")),
            database_url: fresh_database_url("history"),
            redis: Connection::open(&RedisTarget::parse(&redis_url()))
                .await
                .expect("redis"),
            history: None,
        }
    }

    async fn started() -> Self {
        let mut stack = Self::new().await;
        stack.start().await;
        stack
    }

    fn config(&self) -> Config {
        Config::for_tests(
            &self.database_url,
            &redis_url(),
            &self.prefix,
            &format!("http://{}", self.users.addr),
        )
    }

    async fn start(&mut self) {
        self.start_with(self.config()).await;
    }

    async fn start_with(&mut self, config: Config) {
        assert!(self.history.is_none(), "already running");
        let app = Application::build(config)
            .await
            .expect("build history service");
        let addr = app.local_addr();
        let metrics = app.metrics_addr();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        self.history = Some(Running {
            client: HistoryServiceClient::with_interceptor(
                channel(addr).await,
                Bearer(Some(TEST_INTERNAL_TOKEN)),
            ),
            addr,
            metrics,
            shutdown,
            task,
        });
    }

    /// Stops the history service and waits until it has.
    async fn stop(&mut self) {
        let running = self.history.take().expect("running");
        running.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(30), running.task)
            .await
            .expect("stops in time")
            .expect("task")
            .expect("serve");
    }

    fn client(&mut self) -> Client {
        self.history.as_ref().expect("running").client.clone()
    }

    async fn redis<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> T {
        cmd.query_async(&mut self.redis).await.expect("redis")
    }

    /// Appends chats of one conversation in one pipeline.
    async fn append(&mut self, chats: &[Chat]) {
        for chunk in chats.chunks(500) {
            let mut pipe = redis::pipe();
            for chat in chunk {
                pipe.add_command(chat.xadd(&self.prefix)).ignore();
            }
            let () = pipe.query_async(&mut self.redis).await.expect("xadd");
        }
    }

    async fn retract(&mut self, conv: &str, seq: u64, mid: &str) {
        let cmd = redis::cmd("XADD")
            .arg(partition_key(&self.prefix, partition(conv)))
            .arg("MAXLEN")
            .arg("~")
            .arg(200_000)
            .arg("*")
            .arg("op")
            .arg("x")
            .arg("mid")
            .arg(mid)
            .arg("conv")
            .arg(conv)
            .arg("seq")
            .arg(seq)
            .clone();
        let _: String = self.redis(&cmd).await;
    }

    async fn history(
        &mut self,
        user_id: i64,
        conversation: &str,
        before_seq: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<pb::GetHistoryResponse, Status> {
        self.client()
            .get_history(pb::GetHistoryRequest {
                user_id,
                conversation: conversation.into(),
                before_seq,
                after_seq,
                limit,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn search(
        &mut self,
        user_id: i64,
        query: &str,
        conversation: &str,
        limit: u32,
        offset: u32,
    ) -> Result<pb::SearchMessagesResponse, Status> {
        self.client()
            .search_messages(pb::SearchMessagesRequest {
                user_id,
                query: query.into(),
                conversation: conversation.into(),
                limit,
                offset,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn newest(&mut self, user_id: i64, conversation: &str) -> Vec<pb::HistoryMessage> {
        self.history(user_id, conversation, 0, 0, 200)
            .await
            .expect("history")
            .messages
    }

    /// Waits until the message with `mid` is stored (it is among the
    /// newest 200 of its conversation, as `user` sees it).
    async fn wait_for(&mut self, user_id: i64, conversation: &str, mid: &str) {
        assert_eventually!(
            self.newest(user_id, conversation)
                .await
                .iter()
                .any(|m| m.mid == mid),
            PATIENCE,
            "{mid} was not stored in {conversation}"
        );
    }

    async fn conversations(&mut self, user_id: i64) -> Vec<pb::Conversation> {
        self.client()
            .list_conversations(pb::ListConversationsRequest { user_id, limit: 0 })
            .await
            .expect("list conversations")
            .into_inner()
            .conversations
    }

    async fn mark_read(
        &mut self,
        user_id: i64,
        conversation: &str,
        up_to_seq: u64,
    ) -> Result<pb::MarkReadResponse, Status> {
        self.client()
            .mark_read(pb::MarkReadRequest {
                user_id,
                conversation: conversation.into(),
                up_to_seq,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Entries in the stream of `conv`'s partition.
    async fn stream_length(&mut self, conv: &str) -> u64 {
        let key = partition_key(&self.prefix, partition(conv));
        self.redis(redis::cmd("XLEN").arg(key)).await
    }

    /// Entries of `conv`'s partition delivered to a consumer and not acknowledged.
    async fn pending(&mut self, conv: &str) -> u64 {
        let key = partition_key(&self.prefix, partition(conv));
        let summary: redis::Value = self
            .redis(redis::cmd("XPENDING").arg(key).arg("history"))
            .await;
        match summary {
            redis::Value::Array(parts) => match parts.first() {
                Some(redis::Value::Int(n)) => *n as u64,
                _ => 0,
            },
            _ => 0,
        }
    }

    async fn metrics_text(&self) -> String {
        let addr = self
            .history
            .as_ref()
            .and_then(|h| h.metrics)
            .expect("metrics listener");
        http_get(addr, "/metrics").await
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    response
}

fn seqs(messages: &[pb::HistoryMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

fn texts(messages: &[pb::HistoryMessage]) -> Vec<&str> {
    messages.iter().map(|m| m.text.as_str()).collect()
}

fn hit_texts(found: &pb::SearchMessagesResponse) -> Vec<&str> {
    found
        .hits
        .iter()
        .map(|h| h.message.as_ref().map_or("", |m| m.text.as_str()))
        .collect()
}

fn sorted(mut texts: Vec<&str>) -> Vec<&str> {
    texts.sort_unstable();
    texts
}

/// Small scopes are read (`LIKE` over the user's conversations).
#[tokio::test]
async fn search_by_reading_finds_chinese_and_words_where_the_user_may_read_ranked_paged_and_highlighted()
 {
    let mut stack = Stack::new().await;
    stack.start().await;
    search_scenario(stack).await;
}

/// The same through the index (as for users whose conversations hold more
/// than `SEARCH_SCAN_ROWS` messages).
#[tokio::test]
async fn search_by_the_index_finds_chinese_and_prefixes_where_the_user_may_read_ranked_paged_and_highlighted()
 {
    let mut stack = Stack::new().await;
    let mut config = stack.config();
    config.search.scan_rows = 0;
    stack.start_with(config).await;
    search_scenario(stack).await;
}

async fn search_scenario(mut stack: Stack) {
    let alice = stack.users.register("alice").await;
    let bob = stack.users.register("bob").await;
    let carol = stack.users.register("carol").await;
    let group = stack.users.create_group(alice, "park club").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    stack.users.join(bob, group).await;
    let joined = stack.users.joined_at_us(bob, group).await;
    let (lo, hi) = (alice.min(bob), alice.max(bob));
    let ab = format!("d:{lo}:{hi}");
    let ac = format!("d:{}:{}", alice.min(carol), alice.max(carol));
    let g = format!("g:{group}");

    let direct = [
        Chat::new(&ab, SEQ + 1, alice, "今天天气很好，我们去公园吧"),
        Chat::new(&ab, SEQ + 2, bob, "Meeting tomorrow at the PARK"),
        Chat::new(&ab, SEQ + 3, alice, "lunch?"),
        Chat::new(&ab, SEQ + 4, bob, "公园，公园，还是公园"),
        Chat::new(&ab, SEQ + 5, alice, "retracted 公园"),
    ];
    let grouped = [
        Chat::new(&g, SEQ + 1, alice, "公园 before bob joined").at(joined - 20_000),
        Chat::new(&g, SEQ + 2, alice, "公园 after bob joined").at(joined + 1),
    ];
    let carols = [Chat::new(&ac, SEQ + 1, carol, "公园 with carol only")];
    stack.append(&direct).await;
    stack.append(&grouped).await;
    stack.append(&carols).await;
    stack.wait_for(alice, &ab, &direct[4].mid).await;
    stack.wait_for(alice, &g, &grouped[1].mid).await;
    stack.wait_for(alice, &ac, &carols[0].mid).await;
    stack.retract(&ab, SEQ + 5, &direct[4].mid).await;
    assert_eventually!(
        stack.newest(alice, &ab).await.len() == 4,
        PATIENCE,
        "the retraction was not processed"
    );

    // Chinese without spaces is found by a run of its characters; bob sees
    // his 1:1 conversation and the group from his join, not carol's nor
    // what was retracted; the message saying it three times comes first.
    let found = stack.search(bob, "公园", "", 0, 0).await.expect("search");
    assert_eq!(
        sorted(hit_texts(&found)),
        sorted(vec![
            "今天天气很好，我们去公园吧",
            "公园，公园，还是公园",
            "公园 after bob joined",
        ]),
    );
    assert_eq!(hit_texts(&found)[0], "公园，公园，还是公园");
    assert!(!found.more);
    let hit = found
        .hits
        .iter()
        .find(|h| {
            h.message
                .as_ref()
                .is_some_and(|m| m.seq == SEQ + 1 && m.conversation == ab)
        })
        .expect("the first message");
    let marks: Vec<(u32, u32)> = hit.highlights.iter().map(|h| (h.start, h.end)).collect();
    assert_eq!(marks, [(10, 12)], "公园 in 今天天气很好，我们去公园吧");
    let message = hit.message.as_ref().expect("message");
    assert_eq!(
        (message.sender_id, message.mid.as_str()),
        (alice, direct[0].mid.as_str())
    );
    assert!(message.frame.contains("今天天气很好"), "{}", message.frame);

    // Alice sees all four of hers (she joined the group first).
    let all = stack.search(alice, "公园", "", 0, 0).await.expect("search");
    assert_eq!(all.hits.len(), 5, "{:?}", hit_texts(&all));

    // Every word is required; a Latin word finds the words it begins, in
    // any case, highlighted where it is.
    let both = stack
        .search(bob, "天气 公园", "", 0, 0)
        .await
        .expect("search");
    assert_eq!(hit_texts(&both), ["今天天气很好，我们去公园吧"]);
    let prefix = stack
        .search(bob, "meet park", "", 0, 0)
        .await
        .expect("search");
    assert_eq!(hit_texts(&prefix), ["Meeting tomorrow at the PARK"]);
    let marks: Vec<(u32, u32)> = prefix.hits[0]
        .highlights
        .iter()
        .map(|h| (h.start, h.end))
        .collect();
    assert_eq!(marks, [(0, 4), (24, 28)]);
    // Operators are text: a quote or a minus finds nothing, fails nothing.
    let odd = stack
        .search(bob, "\"-公园 +(", "", 0, 0)
        .await
        .expect("search");
    assert!(odd.hits.is_empty());

    // Pages: one at a time, each hit once.
    let mut seen = Vec::new();
    for offset in 0..3 {
        let page = stack
            .search(bob, "公园", "", 1, offset)
            .await
            .expect("page");
        assert_eq!(page.hits.len(), 1);
        assert_eq!(page.more, offset < 2, "page {offset}");
        seen.push(hit_texts(&page)[0].to_owned());
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 3);

    // One conversation only; one he may not read is refused.
    let in_group = stack.search(bob, "公园", &g, 0, 0).await.expect("search");
    assert_eq!(hit_texts(&in_group), ["公园 after bob joined"]);
    let denied = stack
        .search(bob, "公园", &ac, 0, 0)
        .await
        .expect_err("not his");
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Carol finds only her own.
    let carols = stack.search(carol, "公园", "", 0, 0).await.expect("search");
    assert_eq!(hit_texts(&carols), ["公园 with carol only"]);

    // Bad queries say why.
    let empty = stack.search(bob, "  ", "", 0, 0).await.expect_err("empty");
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(empty.message().contains("empty"), "{}", empty.message());
    let long = stack
        .search(bob, &"公".repeat(300), "", 0, 0)
        .await
        .expect_err("long");
    assert_eq!(long.code(), Code::InvalidArgument);
    assert!(long.message().contains("at most 200"), "{}", long.message());
}

#[tokio::test]
async fn history_pages_back_and_forth_through_thousands_without_gap_or_duplicate() {
    let mut stack = Stack::started().await;
    let conv = "d:11:12";
    // A few gaps, as a lost counter or a retraction leaves them.
    let numbers: Vec<u64> = (0..3000u64).map(|i| SEQ + i + i / 1000).collect();
    let chats: Vec<Chat> = numbers
        .iter()
        .enumerate()
        .map(|(i, &seq)| {
            Chat::new(
                conv,
                seq,
                if i % 2 == 0 { 11 } else { 12 },
                &format!("message {i}"),
            )
        })
        .collect();
    stack.append(&chats).await;
    let last = chats.last().expect("chats").mid.clone();
    stack.wait_for(11, conv, &last).await;

    // The newest page, then back to the start, a page of 137 at a time.
    let newest = stack.history(12, conv, 0, 0, 137).await.expect("newest");
    assert_eq!(seqs(&newest.messages), numbers[numbers.len() - 137..]);
    assert!(newest.more);
    let mut backwards = newest.messages.clone();
    let mut more = newest.more;
    while more {
        let before = backwards[0].seq;
        let page = stack.history(12, conv, before, 0, 137).await.expect("page");
        assert!(!page.messages.is_empty() && page.messages.len() <= 137);
        assert!(page.messages.last().expect("some").seq < before);
        more = page.more;
        backwards.splice(0..0, page.messages);
    }
    assert_eq!(
        seqs(&backwards),
        numbers,
        "backwards: every message once, in order"
    );

    // Forward from before the first, the largest pages allowed.
    let mut forwards: Vec<pb::HistoryMessage> = Vec::new();
    let mut after = SEQ - 1;
    loop {
        let page = stack.history(11, conv, 0, after, 1000).await.expect("page");
        assert!(page.messages.len() <= 200, "a page holds at most 200");
        assert!(page.messages.first().expect("some").seq > after);
        after = page.messages.last().expect("some").seq;
        forwards.extend(page.messages);
        if !page.more {
            break;
        }
    }
    assert_eq!(
        seqs(&forwards),
        numbers,
        "forwards: every message once, in order"
    );
    assert_eq!(forwards, backwards);

    // What a message carries.
    let first = &forwards[0];
    assert_eq!(first.conversation, conv);
    assert_eq!(first.mid, chats[0].mid);
    assert_eq!(first.sender_id, 11);
    assert_eq!(first.sent_at_micros, chats[0].at_us);
    assert_eq!(first.text, "message 0");
    assert_eq!(first.frame, chats[0].frame());
    let frame: serde_json::Value = serde_json::from_str(&first.frame).expect("json frame");
    assert_eq!(frame["cseq"], SEQ);

    // Nothing after the newest, nothing before the oldest; 0 means 50.
    let end = stack
        .history(11, conv, 0, *numbers.last().expect("some"), 0)
        .await
        .expect("end");
    assert!(end.messages.is_empty() && !end.more);
    let start = stack.history(11, conv, SEQ, 0, 0).await.expect("start");
    assert!(start.messages.is_empty() && !start.more);
    assert_eq!(
        stack
            .history(11, conv, 0, 0, 0)
            .await
            .expect("default")
            .messages
            .len(),
        50
    );

    // Acknowledged entries are trimmed from the stream.
    assert_eventually!(
        stack.stream_length(conv).await == 0,
        PATIENCE,
        "the stream keeps acknowledged entries"
    );
    assert_eq!(stack.pending(conv).await, 0);
    let metrics = stack.metrics_text().await;
    assert!(
        metrics.contains("clusterchat_history_ingested_messages_total 3000"),
        "{metrics}"
    );
    assert!(
        metrics.contains("clusterchat_history_ingest_lag_ms"),
        "{metrics}"
    );
}

#[tokio::test]
async fn redelivered_entries_and_repeated_mids_are_stored_once() {
    let mut stack = Stack::started().await;
    let conv = "d:21:22";
    let first = Chat::new(conv, SEQ + 1, 21, "once");
    // The same entry twice (a redelivery), the same mid under another
    // number (a retried chat numbered again), another mid under the same
    // number (cannot happen; the first stays).
    stack.append(&[first.clone(), first.clone()]).await;
    stack
        .append(&[Chat::new(conv, SEQ + 2, 21, "again").mid(&first.mid)])
        .await;
    stack
        .append(&[Chat::new(conv, SEQ + 1, 22, "impostor").mid("other")])
        .await;
    let marker = Chat::new(conv, SEQ + 3, 22, "after");
    stack.append(std::slice::from_ref(&marker)).await;
    stack.wait_for(21, conv, &marker.mid).await;

    let messages = stack.newest(21, conv).await;
    assert_eq!(texts(&messages), ["once", "after"]);
    assert_eq!(seqs(&messages), [SEQ + 1, SEQ + 3]);
    let metrics = stack.metrics_text().await;
    assert!(
        metrics.contains("clusterchat_history_duplicate_messages_total 3"),
        "{metrics}"
    );
}

/// Whatever a chat holds (quotes, backslashes, control characters, text
/// outside the BMP) is stored and read back byte for byte.
#[tokio::test]
async fn any_text_and_mid_is_stored_byte_for_byte() {
    let mut stack = Stack::started().await;
    let conv = "d:23:24";
    let texts_sent = [
        "it's a quote: ' and two: ''",
        "backslashes \\ \\' \\\" and a \"double\"",
        "'); DROP TABLE history_messages; --",
        "群聊消息 😀 𝄞 ñ",
        "control \u{1} \u{1a} \u{0} tab\tnew\nline",
        "",
    ];
    let chats: Vec<Chat> = texts_sent
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let seq = SEQ + i as u64;
            Chat::new(conv, seq, 23, text).mid(&format!("o'brien\\{i}\"x"))
        })
        .collect();
    stack.append(&chats).await;
    let last = chats.last().expect("chats").mid.clone();
    stack.wait_for(23, conv, &last).await;

    let messages = stack.newest(24, conv).await;
    assert_eq!(texts(&messages), texts_sent);
    for (stored, sent) in messages.iter().zip(&chats) {
        assert_eq!(stored.mid, sent.mid);
        assert_eq!(stored.frame, sent.frame());
    }
}

#[tokio::test]
async fn a_retraction_deletes_its_message_and_wins_when_it_comes_first() {
    let mut stack = Stack::new().await;
    let creator = stack.users.register("creator").await;
    let group = stack.users.create_group(creator, "retractions").await;
    let conv = &format!("g:{group}");
    // Every message here was sent after the creator joined.
    let later = stack.users.joined_at_us(creator, group).await + 1_000_000;

    // Both in one batch (the service is not running yet): never stored.
    let same_batch = Chat::new(conv, SEQ + 1, creator, "refused in the same batch").at(later);
    stack.append(std::slice::from_ref(&same_batch)).await;
    stack.retract(conv, SEQ + 1, &same_batch.mid).await;
    stack.start().await;

    let stored_first = Chat::new(conv, SEQ + 2, creator, "stored, then retracted").at(later);
    let marker = Chat::new(conv, SEQ + 3, creator, "marker").at(later);
    stack.append(&[stored_first.clone(), marker.clone()]).await;
    stack.wait_for(creator, conv, &marker.mid).await;
    assert_eq!(
        texts(&stack.newest(creator, conv).await),
        ["stored, then retracted", "marker"]
    );
    stack.retract(conv, SEQ + 2, &stored_first.mid).await;
    assert_eventually!(
        texts(&stack.newest(creator, conv).await) == ["marker"],
        PATIENCE,
        "the retracted message is still there"
    );

    // The retraction is processed before its message is (re)delivered.
    let late = Chat::new(conv, SEQ + 4, creator, "retracted before it came").at(later);
    stack.retract(conv, SEQ + 4, &late.mid).await;
    let marker2 = Chat::new(conv, SEQ + 5, creator, "marker 2").at(later);
    stack.append(std::slice::from_ref(&marker2)).await;
    stack.wait_for(creator, conv, &marker2.mid).await;
    let marker3 = Chat::new(conv, SEQ + 6, creator, "marker 3").at(later);
    stack.append(&[late, marker3.clone()]).await;
    stack.wait_for(creator, conv, &marker3.mid).await;
    assert_eq!(
        texts(&stack.newest(creator, conv).await),
        ["marker", "marker 2", "marker 3"]
    );
    let metrics = stack.metrics_text().await;
    assert!(
        metrics.contains("clusterchat_history_retracted_messages_total 3"),
        "{metrics}"
    );
}

/// The entries of a chat refused altogether and retried with its client id
/// (issue 20, hole 2): its first number, that number's retraction, and the
/// retry under a new number, with the same mid.
#[derive(Clone, Copy, Debug)]
enum Retried {
    First,
    Retract,
    Retry,
}

impl Stack {
    /// Writes `step` of the retried chat of `conv` to the stream, as a
    /// gateway does.
    async fn retried(&mut self, conv: &str, step: Retried) {
        let mid = format!("retried-{conv}");
        match step {
            Retried::First => {
                let first = Chat::new(conv, SEQ + 1, 41, "retried").mid(&mid);
                self.append(&[first]).await;
            }
            Retried::Retract => self.retract(conv, SEQ + 1, &mid).await,
            Retried::Retry => {
                let retry = Chat::new(conv, SEQ + 2, 41, "retried").mid(&mid);
                self.append(&[retry]).await;
            }
        }
    }

    /// Waits until everything written to `conv` before is processed: a
    /// marker after it is stored.
    async fn settle(&mut self, conv: &str, marker: u64) {
        let marker = Chat::new(conv, SEQ + 10 + marker, 42, "marker");
        self.append(std::slice::from_ref(&marker)).await;
        self.wait_for(41, conv, &marker.mid).await;
    }

    /// The retried chat of `conv` as history holds it: (seq, text) of each
    /// message with its mid.
    async fn retried_chat(&mut self, conv: &str) -> Vec<(u64, String)> {
        let mid = format!("retried-{conv}");
        self.newest(41, conv)
            .await
            .iter()
            .filter(|m| m.mid == mid)
            .map(|m| (m.seq, m.frame.clone()))
            .collect()
    }
}

#[tokio::test]
async fn a_retracted_chat_retried_under_a_new_number_is_stored_once_in_any_order() {
    use Retried::{First, Retract, Retry};
    let mut stack = Stack::new().await;
    // The order a stream has (first, retraction, retry) and every other
    // one: entries read again after a crash, or taken over from another
    // consumer, come after later ones.
    let orders = [
        [First, Retract, Retry],
        [First, Retry, Retract],
        [Retry, First, Retract],
        [Retry, Retract, First],
        [Retract, First, Retry],
        [Retract, Retry, First],
    ];
    let conv = |batching: usize, order: usize| format!("d:41:{}", 100 + batching * 10 + order);
    // All three in one batch (the service is not running yet).
    for (i, order) in orders.iter().enumerate() {
        for &step in order {
            stack.retried(&conv(0, i), step).await;
        }
    }
    stack.start().await;
    // Each in a batch of its own.
    for (i, order) in orders.iter().enumerate() {
        for (n, &step) in order.iter().enumerate() {
            stack.retried(&conv(1, i), step).await;
            stack.settle(&conv(1, i), n as u64).await;
        }
    }
    for batching in 0..2 {
        for (i, order) in orders.iter().enumerate() {
            let conv = conv(batching, i);
            stack.settle(&conv, 9).await;
            let stored = stack.retried_chat(&conv).await;
            assert_eq!(
                stored.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
                [SEQ + 2],
                "{order:?} in {}: once, under the retry's number: {stored:?}",
                ["one batch", "separate batches"][batching],
            );
            let frame: serde_json::Value =
                serde_json::from_str(&stored[0].1).expect("the frame is JSON");
            assert_eq!(frame["msg"], "retried");
        }
    }

    // A retraction still removes a chat that is never retried, and a
    // retraction of another number of a stored mid leaves it.
    let never = "d:41:200";
    stack.retried(never, First).await;
    stack.settle(never, 0).await;
    stack.retried(never, Retract).await;
    stack.settle(never, 1).await;
    assert_eq!(stack.retried_chat(never).await, []);
    let kept = "d:41:201";
    stack.retried(kept, Retry).await;
    stack.retried(kept, Retract).await;
    stack.settle(kept, 0).await;
    assert_eq!(
        stack
            .retried_chat(kept)
            .await
            .iter()
            .map(|(seq, _)| *seq)
            .collect::<Vec<_>>(),
        [SEQ + 2]
    );
}

#[tokio::test]
async fn conversations_are_newest_first_with_unread_counts_and_read_marks() {
    let mut stack = Stack::started().await;
    let (me, bob, carol) = (41, 42, 43);
    let older = now_us() - 60_000_000;
    let bob_chat: Vec<Chat> = (0..5)
        .map(|i| {
            let from = if i == 2 { me } else { bob };
            Chat::new("d:41:42", SEQ + i, from, &format!("bob {i}")).at(older + i as i64)
        })
        .collect();
    let carol_chat: Vec<Chat> = (0..3)
        .map(|i| {
            Chat::new("d:41:43", SEQ + 100 + i, carol, &format!("carol {i}"))
                .at(older + 1000 + i as i64)
        })
        .collect();
    stack.append(&bob_chat).await;
    stack.append(&carol_chat).await;
    stack.wait_for(me, "d:41:42", &bob_chat[4].mid).await;
    stack.wait_for(me, "d:41:43", &carol_chat[2].mid).await;

    let list = stack.conversations(me).await;
    let names: Vec<&str> = list.iter().map(|c| c.conversation.as_str()).collect();
    assert_eq!(names, ["d:41:43", "d:41:42"], "newest last message first");
    assert_eq!((list[0].peer_id, list[0].group_id), (carol, 0));
    assert_eq!(list[0].last.as_ref().expect("last").text, "carol 2");
    assert_eq!(
        (list[0].read_seq, list[0].unread, list[0].peer_read_seq),
        (0, 3, 0)
    );
    assert_eq!(list[1].peer_id, bob);
    assert_eq!(list[1].unread, 4, "my own message is not unread");

    // Marks go up only.
    let read = stack.mark_read(me, "d:41:42", SEQ + 1).await.expect("mark");
    assert_eq!((read.read_seq, read.unread), (SEQ + 1, 2));
    let lower = stack.mark_read(me, "d:41:42", SEQ).await.expect("lower");
    assert_eq!(
        (lower.read_seq, lower.unread),
        (SEQ + 1, 2),
        "never lowered"
    );
    let newest = stack
        .mark_read(me, "d:41:42", SEQ + 4)
        .await
        .expect("newest");
    assert_eq!((newest.read_seq, newest.unread), (SEQ + 4, 0));
    let nothing = stack.mark_read(bob, "d:41:42", 0).await.expect("zero");
    assert_eq!(
        (nothing.read_seq, nothing.unread),
        (0, 1),
        "bob has not read mine"
    );
    stack
        .mark_read(bob, "d:41:42", SEQ + 3)
        .await
        .expect("bob reads");

    let list = stack.conversations(me).await;
    assert_eq!(
        (list[1].read_seq, list[1].unread, list[1].peer_read_seq),
        (SEQ + 4, 0, SEQ + 3)
    );
    let bobs = stack.conversations(bob).await;
    assert_eq!(bobs.len(), 1);
    assert_eq!(
        (bobs[0].peer_id, bobs[0].read_seq, bobs[0].peer_read_seq),
        (me, SEQ + 3, SEQ + 4)
    );
    assert_eq!(bobs[0].unread, 0);

    // A new message moves its conversation to the top and is unread.
    let new = Chat::new("d:41:42", SEQ + 5, bob, "bob again");
    stack.append(std::slice::from_ref(&new)).await;
    stack.wait_for(me, "d:41:42", &new.mid).await;
    let list = stack.conversations(me).await;
    assert_eq!(list[0].conversation, "d:41:42");
    assert_eq!(list[0].unread, 1);
    assert_eq!(list[0].last.as_ref().expect("last").mid, new.mid);

    assert!(stack.conversations(99).await.is_empty());
    let one = stack
        .client()
        .list_conversations(pb::ListConversationsRequest {
            user_id: me,
            limit: 1,
        })
        .await
        .expect("limit 1")
        .into_inner()
        .conversations;
    assert_eq!(one.len(), 1);
}

#[tokio::test]
async fn unread_counts_stop_at_a_thousand() {
    let mut stack = Stack::started().await;
    let chats: Vec<Chat> = (0..1005)
        .map(|i| Chat::new("d:51:52", SEQ + i, 52, "hi"))
        .collect();
    stack.append(&chats).await;
    stack.wait_for(51, "d:51:52", &chats[1004].mid).await;
    assert_eq!(stack.conversations(51).await[0].unread, 1000);
    let read = stack.mark_read(51, "d:51:52", SEQ + 9).await.expect("mark");
    assert_eq!(read.unread, 995);
}

#[tokio::test]
async fn group_members_see_history_from_their_join_time() {
    let mut stack = Stack::started().await;
    let alice = stack.users.register("alice").await;
    let bob = stack.users.register("bob").await;
    let carol = stack.users.register("carol").await;
    let group = stack.users.create_group(alice, "since joining").await;
    let conv = format!("g:{group}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    stack.users.join(bob, group).await;
    let joined = stack.users.joined_at_us(bob, group).await;
    let alice_joined = stack.users.joined_at_us(alice, group).await;
    assert!(alice_joined < joined);

    let before: Vec<Chat> = (0..3)
        .map(|i| {
            Chat::new(&conv, SEQ + i, alice, &format!("before {i}")).at(joined - 30_000 + i as i64)
        })
        .collect();
    let after: Vec<Chat> = (3..6)
        .map(|i| {
            let from = if i == 4 { bob } else { alice };
            Chat::new(&conv, SEQ + i, from, &format!("after {i}")).at(joined + i as i64)
        })
        .collect();
    stack.append(&before).await;
    stack.append(&after).await;
    stack.wait_for(alice, &conv, &after[2].mid).await;

    assert_eq!(
        texts(&stack.newest(alice, &conv).await),
        [
            "before 0", "before 1", "before 2", "after 3", "after 4", "after 5"
        ]
    );
    let bobs = stack.newest(bob, &conv).await;
    assert_eq!(texts(&bobs), ["after 3", "after 4", "after 5"]);
    // Paging back from what bob sees ends at his join time.
    let back = stack
        .history(bob, &conv, SEQ + 4, 0, 10)
        .await
        .expect("back");
    assert_eq!(texts(&back.messages), ["after 3"]);
    assert!(!back.more, "nothing before his join time is his");
    let forward = stack
        .history(bob, &conv, 0, SEQ - 1, 2)
        .await
        .expect("forward");
    assert_eq!(texts(&forward.messages), ["after 3", "after 4"]);
    assert!(forward.more);

    let list = stack.conversations(bob).await;
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].group_id, list[0].peer_id, list[0].peer_read_seq),
        (group, 0, 0)
    );
    assert_eq!(list[0].unread, 2, "alice's two after he joined");
    assert_eq!(stack.conversations(alice).await[0].unread, 1, "bob's one");
    let read = stack.mark_read(bob, &conv, SEQ + 3).await.expect("mark");
    assert_eq!((read.read_seq, read.unread), (SEQ + 3, 1));

    let denied = stack
        .history(carol, &conv, 0, 0, 0)
        .await
        .expect_err("carol");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("not a member of group"),
        "{}",
        denied.message()
    );
    let denied = stack.mark_read(carol, &conv, SEQ).await.expect_err("carol");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(stack.conversations(carol).await.is_empty());

    // Joining later shows what was sent since (after the membership cache expires).
    stack.users.join(carol, group).await;
    assert_eventually!(
        stack
            .history(carol, &conv, 0, 0, 0)
            .await
            .is_ok_and(|p| p.messages.is_empty()),
        PATIENCE,
        "carol, who joined after everything was sent, sees nothing"
    );
}

#[tokio::test]
async fn a_late_joiner_sees_from_their_join_time_over_many_seconds_of_history() {
    // The join-time lookup goes through the group's time marks (10 s of
    // sending time each): messages over two minutes, some buckets empty.
    // The first message after the join (1 µs after it, in the join's
    // bucket) is stored a batch after the one that follows it (2 µs): its
    // lower number must lower the bucket's mark, or bob would not see it.
    let mut stack = Stack::started().await;
    let alice = stack.users.register("alice").await;
    let bob = stack.users.register("bob").await;
    let group = stack.users.create_group(alice, "a minute of history").await;
    let conv = format!("g:{group}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    stack.users.join(bob, group).await;
    let joined = stack.users.joined_at_us(bob, group).await;
    // Sent at, in µs after the join; all before it are in earlier buckets.
    let offsets: [i64; 8] = [
        -61_000_000,
        -35_000_000,
        -25_000_000,
        -11_000_000,
        1,
        2,
        31_000_000,
        64_000_000,
    ];
    let chats: Vec<Chat> = offsets
        .iter()
        .enumerate()
        .map(|(i, at)| Chat::new(&conv, SEQ + i as u64, alice, &format!("{i}")).at(joined + at))
        .collect();
    let (late, rest): (Vec<Chat>, Vec<Chat>) =
        chats.into_iter().partition(|c| c.at_us == joined + 1);
    stack.append(&rest).await;
    stack
        .wait_for(alice, &conv, &rest.last().expect("some").mid)
        .await;
    stack.append(&late).await;
    stack.wait_for(alice, &conv, &late[0].mid).await;

    // Alice created the group 50 ms before bob joined: the same four.
    assert_eq!(
        texts(&stack.newest(alice, &conv).await),
        ["4", "5", "6", "7"]
    );
    assert_eq!(texts(&stack.newest(bob, &conv).await), ["4", "5", "6", "7"]);
    let back = stack
        .history(bob, &conv, SEQ + 6, 0, 10)
        .await
        .expect("back");
    assert_eq!(texts(&back.messages), ["4", "5"]);
    assert!(!back.more, "nothing before his join time is his");
}

#[tokio::test]
async fn non_parties_are_denied_and_bad_requests_say_why() {
    let mut stack = Stack::started().await;
    let chat = Chat::new("d:61:62", SEQ, 61, "private");
    stack.append(std::slice::from_ref(&chat)).await;
    stack.wait_for(62, "d:61:62", &chat.mid).await;

    let denied = stack.history(63, "d:61:62", 0, 0, 0).await.expect_err("63");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied
            .message()
            .contains("user 63 is not a party to conversation d:61:62"),
        "{}",
        denied.message()
    );
    let denied = stack.mark_read(63, "d:61:62", SEQ).await.expect_err("63");
    assert_eq!(denied.code(), Code::PermissionDenied);

    for (user, conv, before, after, expected) in [
        (61, "d:62:61", 0, 0, "ascending"),
        (61, "x:1", 0, 0, "must start with d: or g:"),
        (61, "d:61:62", 5, 6, "cannot both be set"),
        (0, "d:61:62", 0, 0, "user_id must be a positive user id"),
    ] {
        let status = stack
            .history(user, conv, before, after, 0)
            .await
            .expect_err(conv);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{}", status.message());
    }
}

#[tokio::test]
async fn data_methods_need_the_internal_token() {
    let stack = Stack::started().await;
    let addr = stack.history.as_ref().expect("running").addr;
    let request = || pb::GetHistoryRequest {
        user_id: 1,
        conversation: "d:1:2".into(),
        ..Default::default()
    };
    for (token, expected) in [
        (None, "missing bearer token"),
        (Some("not-the-token-of-this-cluster"), "wrong bearer token"),
    ] {
        let mut client = HistoryServiceClient::with_interceptor(channel(addr).await, Bearer(token));
        let status = client.get_history(request()).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().starts_with(expected),
            "{}",
            status.message()
        );
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(addr).await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: history_service::startup::SERVICE_NAME.into(),
        })
        .await
        .expect("health is open")
        .into_inner();
    assert_eq!(serving.status, 1, "SERVING");
}

#[tokio::test]
async fn the_service_catches_up_on_what_was_written_while_it_was_stopped() {
    let mut stack = Stack::started().await;
    let conv = "d:71:72";
    let first: Vec<Chat> = (0..100)
        .map(|i| Chat::new(conv, SEQ + i, 71, &format!("m {i}")))
        .collect();
    stack.append(&first).await;
    stack.wait_for(71, conv, &first[99].mid).await;

    stack.stop().await;
    let while_down: Vec<Chat> = (100..1100)
        .map(|i| Chat::new(conv, SEQ + i, 72, &format!("m {i}")))
        .collect();
    stack.append(&while_down).await;
    assert!(stack.stream_length(conv).await >= 1000);

    stack.start().await;
    stack.wait_for(71, conv, &while_down[999].mid).await;
    let mut all = Vec::new();
    let mut after = SEQ - 1;
    loop {
        let page = stack.history(72, conv, 0, after, 200).await.expect("page");
        after = page.messages.last().map_or(after, |m| m.seq);
        all.extend(page.messages);
        if !page.more {
            break;
        }
    }
    assert_eq!(seqs(&all), (0..1100).map(|i| SEQ + i).collect::<Vec<_>>());
    assert_eventually!(
        stack.stream_length(conv).await == 0,
        PATIENCE,
        "acknowledged entries are trimmed"
    );
}

#[tokio::test]
async fn every_partition_is_read_by_one_lane_whatever_their_number() {
    // One conversation in each of the 16 partitions.
    let mut convs: Vec<(String, i64)> = Vec::new();
    for (a, b) in (1..200).flat_map(|a| (a + 1..a + 200).map(move |b| (a, b))) {
        let conv = format!("d:{a}:{b}");
        if !convs.iter().any(|(c, _)| partition(c) == partition(&conv)) {
            convs.push((conv, a));
        }
    }
    assert_eq!(convs.len(), 16, "a conversation in every partition");
    for lanes in [1, 3, 16] {
        let mut stack = Stack::new().await;
        let mut config = stack.config();
        config.ingest.lanes = lanes;
        stack.start_with(config).await;
        let chats: Vec<Chat> = convs
            .iter()
            .map(|(conv, from)| Chat::new(conv, SEQ + 1, *from, &format!("{lanes} lanes")))
            .collect();
        for chat in &chats {
            stack.append(std::slice::from_ref(chat)).await;
        }
        for ((conv, from), chat) in convs.iter().zip(&chats) {
            stack.wait_for(*from, conv, &chat.mid).await;
            assert_eq!(
                texts(&stack.newest(*from, conv).await),
                [format!("{lanes} lanes")],
                "{conv}, {lanes} lanes"
            );
        }
        stack.stop().await;
    }
}

#[tokio::test]
async fn entries_read_but_never_acknowledged_are_read_again_at_start() {
    let mut stack = Stack::new().await;
    let conv = "d:81:82";
    let key = partition_key(&stack.prefix, partition(conv));
    let _: () = stack
        .redis(
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&key)
                .arg("history")
                .arg("0")
                .arg("MKSTREAM"),
        )
        .await;
    let mine: Vec<Chat> = (0..10)
        .map(|i| Chat::new(conv, SEQ + i, 81, &format!("mine {i}")))
        .collect();
    stack.append(&mine).await;
    // A history service read them and died before storing them: pending
    // for its consumer name, never delivered again by `>`.
    let _: redis::Value = stack
        .redis(
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("history")
                .arg("history-1")
                .arg("COUNT")
                .arg(100)
                .arg("STREAMS")
                .arg(&key)
                .arg(">"),
        )
        .await;
    // Another consumer (a pod that is gone for good) held these.
    let theirs: Vec<Chat> = (10..15)
        .map(|i| Chat::new(conv, SEQ + i, 82, &format!("theirs {i}")))
        .collect();
    stack.append(&theirs).await;
    let _: redis::Value = stack
        .redis(
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("history")
                .arg("gone-pod")
                .arg("COUNT")
                .arg(100)
                .arg("STREAMS")
                .arg(&key)
                .arg(">"),
        )
        .await;
    assert_eq!(stack.pending(conv).await, 15);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut config = stack.config();
    config.ingest.consumer = "history-1".into();
    config.ingest.claim_idle = Duration::from_millis(200);
    stack.start_with(config).await;
    stack.wait_for(81, conv, &theirs[4].mid).await;
    let stored = stack.newest(81, conv).await;
    assert_eq!(seqs(&stored), (0..15).map(|i| SEQ + i).collect::<Vec<_>>());
    assert_eventually!(
        stack.pending(conv).await == 0,
        PATIENCE,
        "entries stay pending after they were stored"
    );
}

#[tokio::test]
async fn malformed_entries_are_skipped_and_acknowledged() {
    let mut stack = Stack::started().await;
    let conv = "d:91:92";
    let key = partition_key(&stack.prefix, partition(conv));
    let _: String = stack
        .redis(
            redis::cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("op")
                .arg("m")
                .arg("mid")
                .arg("bad")
                .arg("conv")
                .arg("d:92:91")
                .arg("seq")
                .arg(1),
        )
        .await;
    let good = Chat::new(conv, SEQ, 91, "good");
    stack.append(std::slice::from_ref(&good)).await;
    stack.wait_for(91, conv, &good.mid).await;
    assert_eventually!(
        stack.pending(conv).await == 0,
        PATIENCE,
        "the bad entry stays pending"
    );
    let metrics = stack.metrics_text().await;
    assert!(
        metrics.contains("clusterchat_history_malformed_entries_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_database_outage_holds_the_batch_and_loses_nothing() {
    let mut stack = Stack::new().await;
    let proxy = TcpProxy::start(test_support::mysql_server_addr()).await;
    let mut config = stack.config();
    config.mysql = mysql_pool::MySqlSettings::for_tests(&stack.database_url.replace(
        &test_support::mysql_server_addr().to_string(),
        &proxy.addr().to_string(),
    ));
    stack.start_with(config).await;
    let conv = "d:101:102";
    let before = Chat::new(conv, SEQ, 101, "before");
    stack.append(std::slice::from_ref(&before)).await;
    stack.wait_for(101, conv, &before.mid).await;

    proxy.cut();
    let during: Vec<Chat> = (1..200)
        .map(|i| Chat::new(conv, SEQ + i, 102, "during"))
        .collect();
    stack.append(&during).await;
    let status = stack
        .history(101, conv, 0, 0, 0)
        .await
        .expect_err("database down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("unavailable"),
        "{}",
        status.message()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        stack.pending(conv).await > 0,
        "nothing is acknowledged before it is stored"
    );

    proxy.restore();
    stack.wait_for(101, conv, &during[198].mid).await;
    assert_eq!(stack.newest(101, conv).await.len(), 200);
    assert_eventually!(
        stack.pending(conv).await == 0,
        PATIENCE,
        "acknowledged after the outage"
    );
}

#[tokio::test]
async fn retention_deletes_messages_older_than_its_days() {
    let mut stack = Stack::new().await;
    let mut config = stack.config();
    config.retention.days = 2;
    config.retention.interval = Duration::from_millis(200);
    stack.start_with(config).await;
    let conv = "d:111:112";
    let day = 86_400_000_000;
    let old = Chat::new(conv, SEQ, 111, "three days old").at(now_us() - 3 * day);
    let recent = Chat::new(conv, SEQ + 1, 111, "a day old").at(now_us() - day);
    let new = Chat::new(conv, SEQ + 2, 112, "new");
    stack.append(&[old, recent, new.clone()]).await;
    stack.wait_for(111, conv, &new.mid).await;
    assert_eventually!(
        texts(&stack.newest(111, conv).await) == ["a day old", "new"],
        PATIENCE,
        "the old message was not expired"
    );
}

#[tokio::test]
async fn the_user_service_down_makes_group_requests_unavailable_not_denied() {
    let mut stack = Stack::new().await;
    let mut config = stack.config();
    config.user_service = "http://127.0.0.1:1".into();
    stack.start_with(config).await;
    let status = stack
        .history(1, "g:1", 0, 0, 0)
        .await
        .expect_err("no user service");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("user service"),
        "{}",
        status.message()
    );
    // 1:1 conversations do not need it.
    assert!(
        stack
            .history(1, "d:1:2", 0, 0, 0)
            .await
            .expect("1:1")
            .messages
            .is_empty()
    );
}
