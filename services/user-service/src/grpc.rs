//! gRPC handlers: protobuf in, domain call, protobuf out. No decisions here.

use clusterchat_proto::user::v1 as pb;
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::{
    domain::{
        self, GROUP_PAGE_BYTES, GroupDescription, GroupId, GroupName, GroupPage, Password, UserId,
        UserName,
    },
    service::Users,
};

pub struct UserGrpc {
    users: Users,
}

impl UserGrpc {
    pub fn new(users: Users) -> pb::user_service_server::UserServiceServer<Self> {
        pb::user_service_server::UserServiceServer::new(Self { users })
            .max_decoding_message_size(grpc_server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(grpc_server::MAX_MESSAGE_BYTES)
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn user_to_pb(user: domain::User) -> pb::User {
    pb::User {
        id: user.id.get(),
        name: user.name,
    }
}

fn role_to_pb(role: domain::GroupRole) -> pb::GroupRole {
    match role {
        domain::GroupRole::Creator => pb::GroupRole::Creator,
        domain::GroupRole::Normal => pb::GroupRole::Normal,
    }
}

fn group_to_pb(group: domain::Group) -> pb::Group {
    pb::Group {
        id: group.id.get(),
        name: group.name,
        description: group.description,
        members: group
            .members
            .into_iter()
            .map(|m| pb::GroupMember {
                user: Some(user_to_pb(m.user)),
                role: role_to_pb(m.role).into(),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::user_service_server::UserService for UserGrpc {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Reply<pb::RegisterResponse> {
        let req = request.into_inner();
        let name = UserName::parse(&req.name)?;
        let password = Password::parse(req.password)?;
        let id = self.users.register(name, password).await?;
        Ok(Response::new(pb::RegisterResponse { id: id.get() }))
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Reply<pb::LoginResponse> {
        let req = request.into_inner();
        // An empty or oversized password cannot match anything: same answer
        // as a wrong one.
        let password =
            Password::parse(req.password).map_err(|_| crate::UserError::BadCredentials)?;
        if req.start_session {
            let (user, session) = self
                .users
                .login_with_session(req.id, password, &req.device)
                .await?;
            return Ok(Response::new(pb::LoginResponse {
                user: Some(user_to_pb(user)),
                token: session.token,
                expires_at_ms: session.expires_at_ms,
            }));
        }
        let user = self.users.login(req.id, password).await?;
        Ok(Response::new(pb::LoginResponse {
            user: Some(user_to_pb(user)),
            ..Default::default()
        }))
    }

    async fn resume_session(
        &self,
        request: Request<pb::ResumeSessionRequest>,
    ) -> Reply<pb::ResumeSessionResponse> {
        let (user, expires_at_ms) = self
            .users
            .resume_session(&request.into_inner().token)
            .await?;
        Ok(Response::new(pb::ResumeSessionResponse {
            user: Some(user_to_pb(user)),
            expires_at_ms,
        }))
    }

    async fn end_session(
        &self,
        request: Request<pb::EndSessionRequest>,
    ) -> Reply<pb::EndSessionResponse> {
        let ended = self.users.end_session(&request.into_inner().token).await?;
        Ok(Response::new(pb::EndSessionResponse { ended }))
    }

    async fn end_all_sessions(
        &self,
        request: Request<pb::EndAllSessionsRequest>,
    ) -> Reply<pb::EndAllSessionsResponse> {
        let user = UserId::parse(request.into_inner().user_id, "user_id")?;
        let ended = self.users.end_all_sessions(user).await?;
        Ok(Response::new(pb::EndAllSessionsResponse {
            ended: ended.try_into().unwrap_or(i32::MAX),
        }))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Reply<pb::ChangePasswordResponse> {
        let req = request.into_inner();
        let password =
            Password::parse(req.password).map_err(|_| crate::UserError::BadCredentials)?;
        let new_password = Password::parse(req.new_password).map_err(|e| match e {
            crate::UserError::InvalidArgument(m) => {
                crate::UserError::InvalidArgument(format!("new {m}"))
            }
            other => other,
        })?;
        let ended = self
            .users
            .change_password(req.id, password, new_password, &req.keep_token)
            .await?;
        Ok(Response::new(pb::ChangePasswordResponse {
            sessions_ended: ended.try_into().unwrap_or(i32::MAX),
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Reply<pb::ListSessionsResponse> {
        let user = UserId::parse(request.into_inner().user_id, "user_id")?;
        let sessions = self.users.sessions(user).await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions
                .into_iter()
                .map(|s| pb::Session {
                    device: s.device,
                    started_at_ms: s.started_at_ms,
                    expires_at_ms: s.expires_at_ms,
                })
                .collect(),
        }))
    }

    async fn get_user_by_name(
        &self,
        request: Request<pb::GetUserByNameRequest>,
    ) -> Reply<pb::GetUserByNameResponse> {
        let name = UserName::parse(&request.into_inner().name)?;
        let user = self.users.user_by_name(name).await?;
        Ok(Response::new(pb::GetUserByNameResponse {
            user: Some(user_to_pb(user)),
        }))
    }

    async fn get_users(
        &self,
        request: Request<pb::GetUsersRequest>,
    ) -> Reply<pb::GetUsersResponse> {
        let ids = request
            .into_inner()
            .ids
            .into_iter()
            .map(|id| UserId::parse(id, "ids"))
            .collect::<Result<Vec<_>, _>>()?;
        let users = self.users.users_by_ids(ids).await?;
        Ok(Response::new(pb::GetUsersResponse {
            users: users.into_iter().map(user_to_pb).collect(),
        }))
    }

    async fn add_friend(
        &self,
        request: Request<pb::AddFriendRequest>,
    ) -> Reply<pb::AddFriendResponse> {
        let req = request.into_inner();
        let user = UserId::parse(req.user_id, "user_id")?;
        let friend = UserId::parse(req.friend_id, "friend_id")?;
        let created = self.users.add_friend(user, friend).await?;
        Ok(Response::new(pb::AddFriendResponse { created }))
    }

    async fn list_friends(
        &self,
        request: Request<pb::ListFriendsRequest>,
    ) -> Reply<pb::ListFriendsResponse> {
        let user = UserId::parse(request.into_inner().user_id, "user_id")?;
        let friends = self.users.friends(user).await?;
        Ok(Response::new(pb::ListFriendsResponse {
            friends: friends.into_iter().map(user_to_pb).collect(),
        }))
    }

    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Reply<pb::CreateGroupResponse> {
        let req = request.into_inner();
        let creator = UserId::parse(req.creator_id, "creator_id")?;
        let name = GroupName::parse(&req.name)?;
        let description = GroupDescription::parse(&req.description)?;
        let group = self.users.create_group(creator, name, description).await?;
        Ok(Response::new(pb::CreateGroupResponse {
            group_id: group.get(),
        }))
    }

    async fn remove_friend(
        &self,
        request: Request<pb::RemoveFriendRequest>,
    ) -> Reply<pb::RemoveFriendResponse> {
        let req = request.into_inner();
        let user = UserId::parse(req.user_id, "user_id")?;
        let friend = UserId::parse(req.friend_id, "friend_id")?;
        let removed = self.users.remove_friend(user, friend).await?;
        Ok(Response::new(pb::RemoveFriendResponse { removed }))
    }

    async fn block(&self, request: Request<pb::BlockRequest>) -> Reply<pb::BlockResponse> {
        let req = request.into_inner();
        let user = UserId::parse(req.user_id, "user_id")?;
        let other = UserId::parse(req.blocked_id, "blocked_id")?;
        let changed = self.users.set_block(user, other, true).await?;
        Ok(Response::new(pb::BlockResponse { changed }))
    }

    async fn unblock(&self, request: Request<pb::BlockRequest>) -> Reply<pb::BlockResponse> {
        let req = request.into_inner();
        let user = UserId::parse(req.user_id, "user_id")?;
        let other = UserId::parse(req.blocked_id, "blocked_id")?;
        let changed = self.users.set_block(user, other, false).await?;
        Ok(Response::new(pb::BlockResponse { changed }))
    }

    async fn list_blocked(
        &self,
        request: Request<pb::ListBlockedRequest>,
    ) -> Reply<pb::ListBlockedResponse> {
        let user = UserId::parse(request.into_inner().user_id, "user_id")?;
        let blocked_ids = self.users.blocked(user).await?;
        Ok(Response::new(pb::ListBlockedResponse { blocked_ids }))
    }

    async fn rename_group(
        &self,
        request: Request<pb::RenameGroupRequest>,
    ) -> Reply<pb::RenameGroupResponse> {
        let req = request.into_inner();
        let group = GroupId::parse(req.group_id)?;
        let user = UserId::parse(req.user_id, "user_id")?;
        let name = GroupName::parse(&req.name)?;
        let description = GroupDescription::parse(&req.description)?;
        self.users
            .rename_group(group, user, name, description)
            .await?;
        Ok(Response::new(pb::RenameGroupResponse {}))
    }

    async fn join_group(
        &self,
        request: Request<pb::JoinGroupRequest>,
    ) -> Reply<pb::JoinGroupResponse> {
        let req = request.into_inner();
        let user = UserId::parse(req.user_id, "user_id")?;
        let group = GroupId::parse(req.group_id)?;
        let joined = self.users.join_group(user, group).await?;
        Ok(Response::new(pb::JoinGroupResponse { joined }))
    }

    async fn leave_group(
        &self,
        request: Request<pb::LeaveGroupRequest>,
    ) -> Reply<pb::LeaveGroupResponse> {
        let req = request.into_inner();
        let user = UserId::parse(req.user_id, "user_id")?;
        let group = GroupId::parse(req.group_id)?;
        let left = self.users.leave_group(user, group).await?;
        Ok(Response::new(pb::LeaveGroupResponse { left }))
    }

    async fn list_user_groups(
        &self,
        request: Request<pb::ListUserGroupsRequest>,
    ) -> Reply<pb::ListUserGroupsResponse> {
        let req = request.into_inner();
        let user = UserId::parse(req.user_id, "user_id")?;
        let page = GroupPage::parse(req.page_size, &req.page_token)?;
        let found = self.users.groups_of_user(user, page).await?;
        // The page also ends where its encoding would pass GROUP_PAGE_BYTES
        // (a transport bound, so it is decided here, on the encoded size).
        let mut more = found.more;
        let mut groups = Vec::with_capacity(found.groups.len());
        let mut bytes = 0;
        let mut last = None;
        for group in found.groups {
            let id = group.id;
            let group = group_to_pb(group);
            let size = group.encoded_len() + 8; // field tag and length
            if bytes + size > GROUP_PAGE_BYTES && !groups.is_empty() {
                more = true;
                break;
            }
            bytes += size;
            groups.push(group);
            last = Some(id);
        }
        let next_page_token = match last {
            Some(last) if more => GroupPage::token_after(last),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListUserGroupsResponse {
            groups,
            next_page_token,
        }))
    }

    async fn list_group_members(
        &self,
        request: Request<pb::ListGroupMembersRequest>,
    ) -> Reply<pb::ListGroupMembersResponse> {
        let group = GroupId::parse(request.into_inner().group_id)?;
        let members = self.users.group_member_ids(group).await?;
        Ok(Response::new(pb::ListGroupMembersResponse {
            member_ids: members.into_iter().map(UserId::get).collect(),
        }))
    }

    async fn list_memberships(
        &self,
        request: Request<pb::ListMembershipsRequest>,
    ) -> Reply<pb::ListMembershipsResponse> {
        let user = UserId::parse(request.into_inner().user_id, "user_id")?;
        let memberships = self.users.memberships(user).await?;
        Ok(Response::new(pb::ListMembershipsResponse {
            memberships: memberships
                .into_iter()
                .map(|m| pb::Membership {
                    group_id: m.group.get(),
                    joined_at_unix_ms: m.joined_at_unix_ms,
                })
                .collect(),
        }))
    }
}
