//! The user service over real gRPC against the real test MariaDB, one fresh
//! database per test.

use std::net::SocketAddr;

use clusterchat_proto::user::v1::{self as pb, user_service_client::UserServiceClient};
use shutdown::Shutdown;
use sqlx::Row as _;
use test_support::{TcpProxy, assert_eventually, fresh_database_url};
use tonic::{
    Code,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use user_service::{Application, Config, config::TEST_INTERNAL_TOKEN};

/// Sends `authorization: Bearer <token>`, or nothing.
#[derive(Clone)]
struct Bearer(Option<String>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            let value = format!("Bearer {token}").parse().expect("ascii token");
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

type Client = UserServiceClient<InterceptedService<Channel, Bearer>>;

struct TestApp {
    client: Client,
    addr: SocketAddr,
    database_url: String,
    shutdown: Shutdown,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn spawn_app_with_config(database_url: String, config: Config) -> TestApp {
    telemetry::init_for_tests();
    let app = Application::build(config)
        .await
        .expect("build user service");
    let addr = app.local_addr();
    let shutdown = Shutdown::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        client: client(addr, Some(TEST_INTERNAL_TOKEN)).await,
        addr,
        database_url,
        shutdown,
    }
}

async fn client(addr: SocketAddr, token: Option<&str>) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    UserServiceClient::with_interceptor(channel, Bearer(token.map(str::to_owned)))
}

async fn spawn_app_with(database_url: String, connect_url: String) -> TestApp {
    spawn_app_with_config(database_url, Config::for_tests(&connect_url)).await
}

async fn spawn_app() -> TestApp {
    let url = fresh_database_url("user");
    spawn_app_with(url.clone(), url).await
}

/// A service with `adjust` applied to the test config.
async fn spawn_app_configured(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let url = fresh_database_url("user");
    let mut config = Config::for_tests(&url);
    adjust(&mut config);
    spawn_app_with_config(url, config).await
}

impl TestApp {
    async fn register(&mut self, name: &str, password: &str) -> Result<i64, tonic::Status> {
        self.client
            .register(pb::RegisterRequest {
                name: name.into(),
                password: password.into(),
            })
            .await
            .map(|r| r.into_inner().id)
    }

    async fn login(&mut self, id: i64, password: &str) -> Result<pb::User, tonic::Status> {
        self.client
            .login(pb::LoginRequest {
                id,
                password: password.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().user.expect("user in login reply"))
    }
}

#[tokio::test]
async fn register_then_login_returns_id_and_name() {
    let mut app = spawn_app().await;
    let id = app.register("alice", "wonderland").await.expect("register");
    assert!(id > 0);
    let user = app.login(id, "wonderland").await.expect("login");
    assert_eq!(
        user,
        pb::User {
            id,
            name: "alice".into()
        }
    );

    let second = app.register("bob", "builder").await.expect("register bob");
    assert_ne!(second, id);
}

#[tokio::test]
async fn wrong_password_unknown_id_and_negative_id_are_indistinguishable() {
    let mut app = spawn_app().await;
    let id = app.register("carol", "right").await.expect("register");
    let wrong_password = app.login(id, "wrong").await.expect_err("wrong password");
    let unknown_id = app.login(id + 1000, "right").await.expect_err("unknown id");
    let negative_id = app.login(-1, "").await.expect_err("id -1");
    for status in [&wrong_password, &unknown_id, &negative_id] {
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), wrong_password.message());
    }
    assert_eq!(wrong_password.message(), "id or password is invalid");
}

#[tokio::test]
async fn passwords_are_stored_only_as_argon2id_hashes() {
    let mut app = spawn_app().await;
    let id = app
        .register("dave", "plain-text-never")
        .await
        .expect("register");
    let pool = sqlx::MySqlPool::connect(&app.database_url)
        .await
        .expect("db");
    let row = sqlx::query("SELECT password_hash FROM users WHERE id = ?")
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("row");
    let hash: String = row.get(0);
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("plain-text-never"));
}

#[tokio::test]
async fn duplicate_names_are_refused_whatever_their_case() {
    let mut app = spawn_app().await;
    app.register("Erin", "pw").await.expect("register");
    for name in ["Erin", "erin", "  ERIN  "] {
        let status = app.register(name, "pw2").await.expect_err("duplicate");
        assert_eq!(status.code(), Code::AlreadyExists, "{name}");
        assert!(
            status.message().contains("already taken"),
            "{}",
            status.message()
        );
    }
}

#[tokio::test]
async fn unicode_names_round_trip_byte_for_byte() {
    let mut app = spawn_app().await;
    let names = [
        "张伟",
        "Zoë 🙂",
        "😀",
        "محمد",
        "O'Brien\"; DROP TABLE users;--",
        "Ærøskøbing",
    ];
    let mut ids = Vec::new();
    for name in names {
        let id = app.register(name, "pässwörd 🔑").await.expect(name);
        let user = app.login(id, "pässwörd 🔑").await.expect("login");
        assert_eq!(user.name, name);
        let by_name = app
            .client
            .get_user_by_name(pb::GetUserByNameRequest { name: name.into() })
            .await
            .expect("by name")
            .into_inner()
            .user
            .expect("user");
        assert_eq!(by_name.id, id);
        ids.push(id);
    }
    let users = app
        .client
        .get_users(pb::GetUsersRequest { ids: ids.clone() })
        .await
        .expect("batch")
        .into_inner()
        .users;
    let got: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(got, names);
}

#[tokio::test]
async fn get_users_leaves_out_unknown_ids() {
    let mut app = spawn_app().await;
    let id = app.register("frank", "pw").await.expect("register");
    let users = app
        .client
        .get_users(pb::GetUsersRequest {
            ids: vec![id, id + 77],
        })
        .await
        .expect("batch")
        .into_inner()
        .users;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].id, id);
}

#[tokio::test]
async fn friendship_is_mutual_and_idempotent() {
    let mut app = spawn_app().await;
    let a = app.register("gina", "pw").await.expect("a");
    let b = app.register("hank", "pw").await.expect("b");
    let c = app.register("ivan", "pw").await.expect("c");

    let first = app
        .client
        .add_friend(pb::AddFriendRequest {
            user_id: a,
            friend_id: b,
        })
        .await
        .expect("add");
    assert!(first.into_inner().created);
    let again = app
        .client
        .add_friend(pb::AddFriendRequest {
            user_id: b,
            friend_id: a,
        })
        .await
        .expect("again");
    assert!(
        !again.into_inner().created,
        "the reverse direction already exists"
    );
    app.client
        .add_friend(pb::AddFriendRequest {
            user_id: a,
            friend_id: c,
        })
        .await
        .expect("add c");

    let friends_of = |id| pb::ListFriendsRequest { user_id: id };
    let of_a = app
        .client
        .list_friends(friends_of(a))
        .await
        .expect("list a")
        .into_inner()
        .friends;
    assert_eq!(of_a.iter().map(|u| u.id).collect::<Vec<_>>(), vec![b, c]);
    let of_b = app
        .client
        .list_friends(friends_of(b))
        .await
        .expect("list b")
        .into_inner()
        .friends;
    assert_eq!(
        of_b,
        vec![pb::User {
            id: a,
            name: "gina".into()
        }]
    );

    let unknown = app
        .client
        .add_friend(pb::AddFriendRequest {
            user_id: a,
            friend_id: c + 500,
        })
        .await
        .expect_err("unknown friend");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(
        unknown.message().contains("does not exist"),
        "{}",
        unknown.message()
    );

    let myself = app
        .client
        .add_friend(pb::AddFriendRequest {
            user_id: a,
            friend_id: a,
        })
        .await
        .expect_err("self");
    assert_eq!(myself.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn groups_have_a_creator_and_normal_members() {
    let mut app = spawn_app().await;
    let creator = app.register("judy", "pw").await.expect("creator");
    let member = app.register("kim", "pw").await.expect("member");

    let group_id = app
        .client
        .create_group(pb::CreateGroupRequest {
            creator_id: creator,
            name: "rustaceans 🦀".into(),
            description: "we like 'quotes' and \"more\"".into(),
        })
        .await
        .expect("create")
        .into_inner()
        .group_id;

    let join = |user_id| pb::JoinGroupRequest { user_id, group_id };
    assert!(
        app.client
            .join_group(join(member))
            .await
            .expect("join")
            .into_inner()
            .joined
    );
    assert!(
        !app.client
            .join_group(join(member))
            .await
            .expect("join again")
            .into_inner()
            .joined
    );
    assert!(
        !app.client
            .join_group(join(creator))
            .await
            .expect("creator joins")
            .into_inner()
            .joined
    );

    let groups = app
        .client
        .list_user_groups(pb::ListUserGroupsRequest {
            user_id: member,
            ..Default::default()
        })
        .await
        .expect("groups")
        .into_inner()
        .groups;
    assert_eq!(groups.len(), 1);
    let group = &groups[0];
    assert_eq!((group.id, group.name.as_str()), (group_id, "rustaceans 🦀"));
    assert_eq!(group.description, "we like 'quotes' and \"more\"");
    let roles: Vec<(i64, &str, pb::GroupRole)> = group
        .members
        .iter()
        .map(|m| {
            let u = m.user.as_ref().expect("member user");
            (u.id, u.name.as_str(), m.role())
        })
        .collect();
    assert_eq!(
        roles,
        vec![
            (creator, "judy", pb::GroupRole::Creator),
            (member, "kim", pb::GroupRole::Normal)
        ]
    );

    let members = app
        .client
        .list_group_members(pb::ListGroupMembersRequest { group_id })
        .await
        .expect("members")
        .into_inner()
        .member_ids;
    assert_eq!(members, vec![creator, member]);

    let duplicate = app
        .client
        .create_group(pb::CreateGroupRequest {
            creator_id: member,
            name: "RUSTACEANS 🦀".into(),
            description: String::new(),
        })
        .await
        .expect_err("duplicate group");
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    let creator_leaves = app
        .client
        .leave_group(pb::LeaveGroupRequest {
            user_id: creator,
            group_id,
        })
        .await
        .expect_err("creator leaves");
    assert_eq!(creator_leaves.code(), Code::FailedPrecondition);
    let left = app
        .client
        .leave_group(pb::LeaveGroupRequest {
            user_id: member,
            group_id,
        })
        .await
        .expect("leave");
    assert!(left.into_inner().left);
    let members = app
        .client
        .list_group_members(pb::ListGroupMembersRequest { group_id })
        .await
        .expect("members")
        .into_inner()
        .member_ids;
    assert_eq!(members, vec![creator]);

    let unknown = app
        .client
        .join_group(pb::JoinGroupRequest {
            user_id: member,
            group_id: group_id + 99,
        })
        .await
        .expect_err("unknown group");
    assert_eq!(unknown.code(), Code::NotFound);
    let unknown = app
        .client
        .list_group_members(pb::ListGroupMembersRequest {
            group_id: group_id + 99,
        })
        .await
        .expect_err("unknown group");
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn memberships_list_each_group_with_its_join_time() {
    let mut app = spawn_app().await;
    let creator = app.register("lena", "pw").await.expect("creator");
    let member = app.register("milo", "pw").await.expect("member");
    let loner = app.register("nora", "pw").await.expect("loner");
    let before = unix_ms() - 1000;
    let mut groups = Vec::new();
    for name in ["first", "second"] {
        groups.push(create_group(&mut app, creator, name).await.expect("group"));
    }
    app.client
        .join_group(pb::JoinGroupRequest {
            user_id: member,
            group_id: groups[1],
        })
        .await
        .expect("join");
    let after = unix_ms() + 1000;
    let memberships = |user_id| {
        let mut client = app.client.clone();
        async move {
            client
                .list_memberships(pb::ListMembershipsRequest { user_id })
                .await
                .map(|r| r.into_inner().memberships)
        }
    };

    let of_creator = memberships(creator).await.expect("creator's");
    assert_eq!(
        of_creator.iter().map(|m| m.group_id).collect::<Vec<_>>(),
        groups,
        "in group id order"
    );
    let of_member = memberships(member).await.expect("member's");
    assert_eq!(of_member.len(), 1);
    assert_eq!(of_member[0].group_id, groups[1]);
    for m in of_creator.iter().chain(&of_member) {
        assert!(
            (before..=after).contains(&m.joined_at_unix_ms),
            "joined at {} ms, not between {before} and {after}",
            m.joined_at_unix_ms
        );
    }

    // The join time is the row's own, to the millisecond.
    let stored: i64 = sqlx::query(
        "SELECT CAST(UNIX_TIMESTAMP(joined_at) * 1000 AS SIGNED) FROM group_members \
         WHERE group_id = ? AND user_id = ?",
    )
    .bind(groups[1])
    .bind(member)
    .fetch_one(
        &sqlx::MySqlPool::connect(&app.database_url)
            .await
            .expect("db"),
    )
    .await
    .expect("row")
    .get(0);
    assert_eq!(of_member[0].joined_at_unix_ms, stored);

    assert!(memberships(loner).await.expect("none").is_empty());
    assert!(
        memberships(loner + 1000).await.expect("unknown").is_empty(),
        "an unknown user is in no group"
    );
    let invalid = memberships(0).await.expect_err("id 0");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(
        invalid.message().contains("user_id"),
        "{}",
        invalid.message()
    );
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

#[tokio::test]
async fn every_invalid_input_is_refused_with_a_reason() {
    let mut app = spawn_app().await;
    let id = app.register("leo", "pw").await.expect("register");

    let long_name = "n".repeat(33);
    for (name, password, needle) in [
        ("", "pw", "must not be empty"),
        ("   ", "pw", "must not be empty"),
        (long_name.as_str(), "pw", "at most 32"),
        ("bad\u{7}name", "pw", "control characters"),
        ("mallory", "", "password must not be empty"),
    ] {
        let status = app.register(name, password).await.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name:?}");
        assert!(
            status.message().contains(needle),
            "{name:?}: {}",
            status.message()
        );
    }
    let huge_password = "p".repeat(300);
    assert_eq!(
        app.register("mallory", &huge_password)
            .await
            .expect_err("long pw")
            .code(),
        Code::InvalidArgument
    );

    let bad_ids = app
        .client
        .add_friend(pb::AddFriendRequest {
            user_id: 0,
            friend_id: id,
        })
        .await
        .expect_err("zero");
    assert_eq!(bad_ids.code(), Code::InvalidArgument);
    assert!(
        bad_ids.message().contains("user_id"),
        "{}",
        bad_ids.message()
    );
    let bad_group = app
        .client
        .join_group(pb::JoinGroupRequest {
            user_id: id,
            group_id: -4,
        })
        .await
        .expect_err("neg");
    assert_eq!(bad_group.code(), Code::InvalidArgument);
    let bad_batch = app
        .client
        .get_users(pb::GetUsersRequest { ids: vec![1, -2] })
        .await
        .expect_err("neg id");
    assert_eq!(bad_batch.code(), Code::InvalidArgument);
    let empty_group = app
        .client
        .create_group(pb::CreateGroupRequest {
            creator_id: id,
            name: String::new(),
            description: String::new(),
        })
        .await
        .expect_err("empty group name");
    assert_eq!(empty_group.code(), Code::InvalidArgument);
    let long_desc = app
        .client
        .create_group(pb::CreateGroupRequest {
            creator_id: id,
            name: "g".into(),
            description: "d".repeat(513),
        })
        .await
        .expect_err("long description");
    assert_eq!(long_desc.code(), Code::InvalidArgument);
    let ghost_creator = app
        .client
        .create_group(pb::CreateGroupRequest {
            creator_id: id + 40,
            name: "g".into(),
            description: String::new(),
        })
        .await
        .expect_err("unknown creator");
    assert_eq!(ghost_creator.code(), Code::NotFound);
    let by_name = app
        .client
        .get_user_by_name(pb::GetUserByNameRequest {
            name: "nobody".into(),
        })
        .await
        .expect_err("unknown name");
    assert_eq!(by_name.code(), Code::NotFound);
}

#[tokio::test]
async fn database_outage_is_unavailable_and_the_service_recovers() {
    let database_url = fresh_database_url("user");
    let proxy = TcpProxy::start(test_support::mysql_server_addr()).await;
    let through_proxy = database_url.replace(
        &test_support::mysql_server_addr().to_string(),
        &proxy.addr().to_string(),
    );
    let mut app = spawn_app_with(database_url, through_proxy).await;
    let id = app.register("nina", "pw").await.expect("register while up");

    proxy.cut();
    let status = app.login(id, "pw").await.expect_err("login while down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("unavailable"),
        "{}",
        status.message()
    );
    let status = app
        .register("oscar", "pw")
        .await
        .expect_err("register while down");
    assert_eq!(status.code(), Code::Unavailable);

    proxy.restore();
    assert_eventually!(
        app.login(id, "pw").await.is_ok(),
        test_support::PATIENCE,
        "the service did not recover after the database came back"
    );
    app.register("oscar", "pw")
        .await
        .expect("register after recovery");
}

#[tokio::test]
async fn data_methods_need_the_internal_token() {
    let app = spawn_app().await;
    let register = pb::RegisterRequest {
        name: "anonymous".into(),
        password: "pw".into(),
    };
    let mut anonymous = client(app.addr, None).await;
    let missing = anonymous
        .register(register.clone())
        .await
        .expect_err("no token");
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    assert!(
        missing.message().starts_with("missing bearer token"),
        "{}",
        missing.message()
    );
    let mut impostor = client(app.addr, Some("not-the-token-of-this-cluster")).await;
    let wrong = impostor
        .list_friends(pb::ListFriendsRequest { user_id: 1 })
        .await
        .expect_err("wrong token");
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    assert!(
        wrong.message().starts_with("wrong bearer token"),
        "{}",
        wrong.message()
    );
    let prefix = &TEST_INTERNAL_TOKEN[..TEST_INTERNAL_TOKEN.len() - 1];
    let mut almost = client(app.addr, Some(prefix)).await;
    assert_eq!(
        almost
            .register(register.clone())
            .await
            .expect_err("prefix of the token")
            .code(),
        Code::Unauthenticated
    );
    // Nothing was done by the refused calls.
    let mut app = app;
    app.client
        .get_user_by_name(pb::GetUserByNameRequest {
            name: "anonymous".into(),
        })
        .await
        .expect_err("not registered");
    app.register("anonymous", "pw")
        .await
        .expect("with the token");
}

#[tokio::test]
async fn health_is_open_without_a_token() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let app = spawn_app().await;
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    for service in ["", "clusterchat.user.v1.UserService"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service:?} without a token: {e:?}"))
            .into_inner();
        assert_eq!(reply.status, 1, "SERVING for {service:?}");
    }
}

/// Registers `n` users named `prefix0..` with password "pw".
async fn register_many(app: &mut TestApp, prefix: &str, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            app.register(&format!("{prefix}{i}"), "pw")
                .await
                .expect("register"),
        );
    }
    ids
}

async fn create_group(app: &mut TestApp, creator: i64, name: &str) -> Result<i64, tonic::Status> {
    app.client
        .create_group(pb::CreateGroupRequest {
            creator_id: creator,
            name: name.into(),
            description: String::new(),
        })
        .await
        .map(|r| r.into_inner().group_id)
}

/// Sends every join at once (each on its own clone of the client, all in
/// flight together) and returns the results in order.
async fn join_all_at_once(
    app: &TestApp,
    joins: Vec<(i64, i64)>,
) -> Vec<Result<bool, tonic::Status>> {
    let calls = joins.into_iter().map(|(user_id, group_id)| {
        let mut client = app.client.clone();
        tokio::spawn(async move {
            client
                .join_group(pb::JoinGroupRequest { user_id, group_id })
                .await
                .map(|r| r.into_inner().joined)
        })
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("join task"))
        .collect()
}

#[tokio::test]
async fn a_full_group_refuses_joins_even_when_they_race() {
    let mut app = spawn_app_configured(|c| c.limits.max_group_members = 5).await;
    let users = register_many(&mut app, "racer", 12).await;
    let group = create_group(&mut app, users[0], "crowded")
        .await
        .expect("create");

    let results = join_all_at_once(&app, users[1..].iter().map(|&u| (u, group)).collect()).await;
    let joined = results.iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(
        joined, 4,
        "the creator and 4 joiners fill 5 places: {results:?}"
    );
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert_eq!(
            refused.message(),
            format!("group {group} is full (5 members)")
        );
    }
    let members = app
        .client
        .list_group_members(pb::ListGroupMembersRequest { group_id: group })
        .await
        .expect("members")
        .into_inner()
        .member_ids;
    assert_eq!(members.len(), 5, "{members:?}");

    // A member joining again is still just "already a member", not "full".
    let member = members[1];
    assert_eq!(
        join_all_at_once(&app, vec![(member, group)]).await[0]
            .as_ref()
            .ok(),
        Some(&false)
    );
    // Leaving makes room for exactly one more.
    app.client
        .leave_group(pb::LeaveGroupRequest {
            user_id: member,
            group_id: group,
        })
        .await
        .expect("leave");
    let outsiders: Vec<(i64, i64)> = users
        .iter()
        .filter(|u| !members.contains(u))
        .map(|&u| (u, group))
        .collect();
    let again = join_all_at_once(&app, outsiders).await;
    assert_eq!(
        again.iter().filter(|r| matches!(r, Ok(true))).count(),
        1,
        "{again:?}"
    );
}

#[tokio::test]
async fn a_user_in_as_many_groups_as_allowed_cannot_create_or_join_more() {
    let mut app = spawn_app_configured(|c| c.limits.max_groups_per_user = 3).await;
    let users = register_many(&mut app, "joiner", 3).await;
    let (subject, owner_a, owner_b) = (users[0], users[1], users[2]);
    let mut groups = Vec::new();
    for (owner, name) in [(owner_a, "a1"), (owner_a, "a2"), (owner_a, "a3")] {
        groups.push(create_group(&mut app, owner, name).await.expect("create"));
    }
    for (owner, name) in [(owner_b, "b1"), (owner_b, "b2"), (owner_b, "b3")] {
        groups.push(create_group(&mut app, owner, name).await.expect("create"));
    }
    let fourth = create_group(&mut app, owner_a, "a4")
        .await
        .expect_err("4th group");
    assert_eq!(fourth.code(), Code::ResourceExhausted);
    let expected = format!("user {owner_a} is already in 3 groups, the most allowed");
    assert_eq!(fourth.message(), expected);

    let results = join_all_at_once(&app, groups.iter().map(|&g| (subject, g)).collect()).await;
    assert_eq!(
        results.iter().filter(|r| matches!(r, Ok(true))).count(),
        3,
        "{results:?}"
    );
    let expected = format!("user {subject} is already in 3 groups, the most allowed");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert_eq!(refused.message(), expected);
    }
    let create = create_group(&mut app, subject, "mine")
        .await
        .expect_err("over the cap");
    assert_eq!(create.code(), Code::ResourceExhausted);
    let all = list_all_groups(&mut app.client, subject, 0).await;
    assert_eq!(all.len(), 3);
}

#[tokio::test]
async fn logins_beyond_the_hash_queue_are_refused_at_once() {
    let mut app = spawn_app_configured(|c| {
        c.hash_concurrency = 1;
        c.max_hash_queue = 1;
    })
    .await;
    let id = app.register("hasty", "pw").await.expect("register");
    let logins = (0..24).map(|_| {
        let mut client = app.client.clone();
        tokio::spawn(async move {
            client
                .login(pb::LoginRequest {
                    id,
                    password: "pw".into(),
                    ..Default::default()
                })
                .await
        })
    });
    let results: Vec<_> = futures::future::join_all(logins)
        .await
        .into_iter()
        .map(|r| r.expect("login task"))
        .collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let busy: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        ok >= 2,
        "one hashing and one waiting get through: {results:?}"
    );
    assert!(!busy.is_empty(), "24 at once with room for 2: {results:?}");
    for status in busy {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(
            status.message(),
            "busy: too many logins at once, retry shortly"
        );
    }
    // Once the burst is over, logins work again.
    app.login(id, "pw").await.expect("login after the burst");
}

/// Every group of `user`, page by page (`page_size` 0: the server's choice),
/// with the client's default 4 MiB decode limit.
async fn list_all_groups(client: &mut Client, user_id: i64, page_size: i32) -> Vec<pb::Group> {
    let mut groups = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_user_groups(pb::ListUserGroupsRequest {
                user_id,
                page_size,
                page_token,
            })
            .await
            .expect("a page of groups")
            .into_inner();
        groups.extend(page.groups);
        if page.next_page_token.is_empty() {
            return groups;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn a_user_in_groups_larger_than_one_reply_pages_through_them_all() {
    const GROUPS: i64 = 120;
    const USERS: i64 = 1000;
    let mut app = spawn_app().await;
    let subject = app.register("subject", "pw").await.expect("register");
    // Bulk rows straight into the database: a thousand users with 32-character
    // names, each in 120 groups (120,000 members in all, about 5 MB
    // encoded; one reply of them all is more than a client can decode).
    let pool = sqlx::MySqlPool::connect(&app.database_url)
        .await
        .expect("db");
    for chunk in (0..USERS - 1).collect::<Vec<_>>().chunks(500) {
        let mut query =
            sqlx::QueryBuilder::new("INSERT INTO users (name, name_key, password_hash) ");
        query.push_values(chunk, |mut row, i| {
            let name = format!("member-{i:025}");
            row.push_bind(name.clone()).push_bind(name).push_bind("x");
        });
        query.build().execute(&pool).await.expect("users");
    }
    let mut query =
        sqlx::QueryBuilder::new("INSERT INTO chat_groups (name, name_key, description) ");
    query.push_values(0..GROUPS, |mut row, i| {
        let name = format!("group {i}");
        row.push_bind(name.clone()).push_bind(name).push_bind("big");
    });
    query.build().execute(&pool).await.expect("groups");
    sqlx::query(
        "INSERT INTO group_members (group_id, user_id, role) \
         SELECT g.id, u.id, 'normal' FROM chat_groups g CROSS JOIN users u",
    )
    .execute(&pool)
    .await
    .expect("members");

    let first = app
        .client
        .list_user_groups(pb::ListUserGroupsRequest {
            user_id: subject,
            ..Default::default()
        })
        .await
        .expect("a caller that does not page gets the first page")
        .into_inner();
    assert!(!first.next_page_token.is_empty(), "more than one page");
    assert_eq!(
        first.groups.len(),
        50,
        "a page ends at 50,000 members (GROUP_PAGE_MEMBERS)"
    );

    let groups = list_all_groups(&mut app.client, subject, 0).await;
    let ids: Vec<i64> = groups.iter().map(|g| g.id).collect();
    assert_eq!(ids.len() as i64, GROUPS, "every group once");
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in id order, no repeats"
    );
    assert!(groups.iter().all(|g| g.members.len() as i64 == USERS));
    let total: usize = groups.iter().map(prost::Message::encoded_len).sum();
    assert!(
        total > 4 * 1024 * 1024,
        "the test needs more than one reply's worth: {total}"
    );

    // Small pages hold exactly what was asked for.
    let mut client = app.client.clone();
    let page = client
        .list_user_groups(pb::ListUserGroupsRequest {
            user_id: subject,
            page_size: 7,
            page_token: String::new(),
        })
        .await
        .expect("page of 7")
        .into_inner();
    assert_eq!(page.groups.len(), 7);
    let paged_by_7 = list_all_groups(&mut client, subject, 7).await;
    assert_eq!(paged_by_7.iter().map(|g| g.id).collect::<Vec<_>>(), ids);

    let bad = client
        .list_user_groups(pb::ListUserGroupsRequest {
            user_id: subject,
            page_size: 7,
            page_token: "garbage".into(),
        })
        .await
        .expect_err("a token this service did not give");
    assert_eq!(bad.code(), Code::InvalidArgument);

    // Names of 32 four-byte characters: now bytes end a page before members do.
    sqlx::query("UPDATE users SET name = CONCAT(LPAD(id, 5, '0'), REPEAT('🦀', 27))")
        .execute(&pool)
        .await
        .expect("long names");
    let first = client
        .list_user_groups(pb::ListUserGroupsRequest {
            user_id: subject,
            ..Default::default()
        })
        .await
        .expect("first page of long names")
        .into_inner();
    assert!(first.groups.len() < 50, "{}", first.groups.len());
    assert!(prost::Message::encoded_len(&first) <= 3 * 1024 * 1024 + 1024);
    let long = list_all_groups(&mut client, subject, 0).await;
    assert_eq!(long.iter().map(|g| g.id).collect::<Vec<_>>(), ids);
    assert!(long.iter().all(|g| g.members.len() as i64 == USERS));
}

#[tokio::test]
async fn a_session_token_logs_in_until_it_is_ended_and_a_new_password_ends_the_others() {
    let mut app = spawn_app().await;
    let id = app.register("sam", "first-pw").await.expect("register");
    let start = |device: &str| pb::LoginRequest {
        id,
        password: "first-pw".into(),
        start_session: true,
        device: device.into(),
    };
    let laptop = app
        .client
        .login(start("laptop"))
        .await
        .expect("login")
        .into_inner();
    let phone = app
        .client
        .login(start(" phone\n"))
        .await
        .expect("login")
        .into_inner();
    assert!(laptop.token.starts_with("ccs_"), "{}", laptop.token);
    assert_ne!(laptop.token, phone.token);
    assert!(laptop.expires_at_ms > 0);
    // Only its hash is stored.
    let pool = sqlx::MySqlPool::connect(&app.database_url)
        .await
        .expect("db");
    let stored: Vec<Vec<u8>> = sqlx::query("SELECT token_hash FROM user_sessions")
        .fetch_all(&pool)
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored.len(), 2);
    assert!(
        stored
            .iter()
            .all(|h| h.len() == 32 && !laptop.token.as_bytes().windows(32).any(|w| w == &h[..]))
    );

    let resume = |token: &str| pb::ResumeSessionRequest {
        token: token.into(),
    };
    let resumed = app
        .client
        .resume_session(resume(&laptop.token))
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(resumed.user.expect("user").id, id);
    assert!(resumed.expires_at_ms >= laptop.expires_at_ms);
    let listed = app
        .client
        .list_sessions(pb::ListSessionsRequest { user_id: id })
        .await
        .expect("list")
        .into_inner()
        .sessions;
    let mut devices: Vec<&str> = listed.iter().map(|s| s.device.as_str()).collect();
    devices.sort();
    assert_eq!(devices, ["laptop", "phone"]);

    // A garbled or unknown token is refused with a reason.
    for bad in [
        "",
        "nonsense",
        "ccs_0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let refused = app.client.resume_session(resume(bad)).await.expect_err(bad);
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert!(
            refused.message().contains("session has ended or expired"),
            "{}",
            refused.message()
        );
    }

    // A new password ends every session but the one that asked.
    let wrong = app
        .client
        .change_password(pb::ChangePasswordRequest {
            id,
            password: "not-it".into(),
            new_password: "second-pw".into(),
            keep_token: laptop.token.clone(),
        })
        .await
        .expect_err("the current password is needed");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let changed = app
        .client
        .change_password(pb::ChangePasswordRequest {
            id,
            password: "first-pw".into(),
            new_password: "second-pw".into(),
            keep_token: laptop.token.clone(),
        })
        .await
        .expect("change")
        .into_inner();
    assert_eq!(changed.sessions_ended, 1);
    assert!(
        app.client
            .resume_session(resume(&phone.token))
            .await
            .is_err()
    );
    assert!(
        app.client
            .resume_session(resume(&laptop.token))
            .await
            .is_ok()
    );
    assert!(app.login(id, "first-pw").await.is_err());
    app.login(id, "second-pw").await.expect("the new password");

    // Logout ends one; log out everywhere ends the rest.
    let ended = app
        .client
        .end_session(pb::EndSessionRequest {
            token: laptop.token.clone(),
        })
        .await
        .expect("end")
        .into_inner();
    assert!(ended.ended);
    assert!(
        app.client
            .resume_session(resume(&laptop.token))
            .await
            .is_err()
    );
    let again = |d: &str| pb::LoginRequest {
        password: "second-pw".into(),
        ..start(d)
    };
    let a = app
        .client
        .login(again("a"))
        .await
        .expect("login")
        .into_inner();
    let b = app
        .client
        .login(again("b"))
        .await
        .expect("login")
        .into_inner();
    let all = app
        .client
        .end_all_sessions(pb::EndAllSessionsRequest { user_id: id })
        .await
        .expect("end all")
        .into_inner();
    assert_eq!(all.ended, 2);
    for token in [&a.token, &b.token] {
        assert!(app.client.resume_session(resume(token)).await.is_err());
    }
}
