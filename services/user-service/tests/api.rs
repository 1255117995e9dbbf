//! The user service over real gRPC against the real test MariaDB, one fresh
//! database per test.

use clusterchat_proto::user::v1::{self as pb, user_service_client::UserServiceClient};
use shutdown::Shutdown;
use sqlx::Row as _;
use test_support::{TcpProxy, assert_eventually, fresh_database_url};
use tonic::{Code, transport::Channel};
use user_service::{Application, Config};

struct TestApp {
    client: UserServiceClient<Channel>,
    database_url: String,
    shutdown: Shutdown,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn spawn_app_with(database_url: String, connect_url: String) -> TestApp {
    telemetry::init_for_tests();
    let app = Application::build(Config::for_tests(&connect_url))
        .await
        .expect("build user service");
    let addr = app.local_addr();
    let shutdown = Shutdown::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = UserServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    TestApp {
        client,
        database_url,
        shutdown,
    }
}

async fn spawn_app() -> TestApp {
    let url = fresh_database_url("user");
    spawn_app_with(url.clone(), url).await
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
        .list_user_groups(pb::ListUserGroupsRequest { user_id: member })
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
