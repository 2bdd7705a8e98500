//! etcd's Auth service (users, roles, permissions, Authenticate, enable/disable/status), and
//! [`who`]: the user a client request runs as, from its `token` metadata or the CN of its
//! verified client certificate. Every other service asks [`who`] and checks with the auth
//! state (reads, watches, admin RPCs) or hands the user to the log (writes, checked at apply).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::auth::AuthInfo;
use crate::error::StoreError;
use crate::member::Member;
use crate::member::auth::Credentials;
use crate::net::tls::ConnInfo;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::*;
use crate::proto::lodestone::{Command, command::Kind};

/// What a request presented: its `token` metadata, and the CN of the client certificate it
/// was accepted with (only verified certificates reach this far).
pub fn credentials<T>(req: &Request<T>) -> Credentials {
    let token = req
        .metadata()
        .get("token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let common_name = req
        .extensions()
        .get::<ConnInfo>()
        .and_then(|c| c.client_certs.as_ref())
        .and_then(|chain| chain.first())
        .and_then(|leaf| crate::net::tls::common_name(leaf));
    Credentials { token, common_name }
}

/// The user `req` runs as (anonymous with auth disabled); `InvalidAuthToken` for a token
/// this member does not know.
pub async fn who<T>(member: &Member, req: &Request<T>) -> Result<AuthInfo, Status> {
    member.who(&credentials(req)).await.map_err(Status::from)
}

/// Refuses `who` unless it holds the root role (with auth enabled).
pub fn admin(member: &Member, who: &AuthInfo) -> Result<(), Status> {
    member.auth().check_admin(who).map_err(Status::from)
}

/// Refuses anonymous requests (with auth enabled).
pub fn user(member: &Member, who: &AuthInfo) -> Result<(), Status> {
    member.auth().check_user(who).map_err(Status::from)
}

pub struct AuthService {
    pub member: Arc<Member>,
}

impl AuthService {
    fn header(&self) -> Option<ResponseHeader> {
        self.member.header(self.member.revision())
    }

    /// An auth change through the log; the admin check is made here (so a refused request
    /// costs no proposal, nor a password hash) and again at apply, where it decides.
    async fn change(&self, who: AuthInfo, kind: Kind) -> Result<Option<ResponseHeader>, Status> {
        admin(&self.member, &who)?;
        self.member
            .propose(Command {
                kind: Some(kind),
                auth: Some(who),
            })
            .await?;
        Ok(self.header())
    }

    /// An admin read of the auth store, linearizable.
    async fn admin_read<T>(&self, req: &Request<T>) -> Result<Arc<crate::auth::AuthState>, Status> {
        let who = who(&self.member, req).await?;
        self.member.linearizable_barrier().await?;
        admin(&self.member, &who)?;
        Ok(self.member.auth())
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(&self, request: Request<AuthEnableRequest>) -> Result<Response<AuthEnableResponse>, Status> {
        let who = who(&self.member, &request).await?;
        let header = self.change(who, Kind::AuthEnable(request.into_inner())).await?;
        tracing::info!("auth enabled");
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let who = who(&self.member, &request).await?;
        let header = self.change(who, Kind::AuthDisable(request.into_inner())).await?;
        tracing::info!("auth disabled");
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(&self, _request: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        self.member.linearizable_barrier().await?;
        let auth = self.member.auth();
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled: auth.enabled(),
            auth_revision: auth.revision(),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = request.into_inner();
        let token = self.member.authenticate(req.name, req.password).await?;
        Ok(Response::new(AuthenticateResponse {
            header: self.header(),
            token,
        }))
    }

    async fn user_add(&self, request: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        let who = who(&self.member, &request).await?;
        let mut req = request.into_inner();
        if req.name.is_empty() {
            return Err(StoreError::UserEmpty.into());
        }
        admin(&self.member, &who)?;
        // Only the hash travels; a hash a client sent is never trusted.
        let password = std::mem::take(&mut req.password);
        req.hashed_password = if req.options.is_some_and(|o| o.no_password) {
            String::new()
        } else {
            self.member.hash_password(password).await?
        };
        let header = self.change(who, Kind::UserAdd(req)).await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(&self, request: Request<AuthUserGetRequest>) -> Result<Response<AuthUserGetResponse>, Status> {
        let auth = self.admin_read(&request).await?;
        let roles = auth.user_get(&request.get_ref().name)?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn user_list(&self, request: Request<AuthUserListRequest>) -> Result<Response<AuthUserListResponse>, Status> {
        let auth = self.admin_read(&request).await?;
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users: auth.user_list(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let who = who(&self.member, &request).await?;
        let header = self.change(who, Kind::UserDelete(request.into_inner())).await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let who = who(&self.member, &request).await?;
        admin(&self.member, &who)?;
        let mut req = request.into_inner();
        let password = std::mem::take(&mut req.password);
        req.hashed_password = self.member.hash_password(password).await?;
        let header = self.change(who, Kind::UserChangePassword(req)).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let who = who(&self.member, &request).await?;
        let header = self.change(who, Kind::UserGrantRole(request.into_inner())).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let who = who(&self.member, &request).await?;
        let header = self.change(who, Kind::UserRevokeRole(request.into_inner())).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(&self, request: Request<AuthRoleAddRequest>) -> Result<Response<AuthRoleAddResponse>, Status> {
        let who = who(&self.member, &request).await?;
        let header = self.change(who, Kind::RoleAdd(request.into_inner())).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(&self, request: Request<AuthRoleGetRequest>) -> Result<Response<AuthRoleGetResponse>, Status> {
        let auth = self.admin_read(&request).await?;
        let perm = auth.role_get(&request.get_ref().role)?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(&self, request: Request<AuthRoleListRequest>) -> Result<Response<AuthRoleListResponse>, Status> {
        let auth = self.admin_read(&request).await?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles: auth.role_list(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let who = who(&self.member, &request).await?;
        let header = self.change(who, Kind::RoleDelete(request.into_inner())).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let who = who(&self.member, &request).await?;
        let header = self
            .change(who, Kind::RoleGrantPermission(request.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let who = who(&self.member, &request).await?;
        let header = self
            .change(who, Kind::RoleRevokePermission(request.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
