//! The etcd Cluster service: MemberList, and membership changes decided on the leader
//! (`member::membership`).
//!
//! MemberList combines the Raft membership (ids, peer URLs, learners) with what each member
//! published about itself (name, client URLs). With auth enabled, changes need the root
//! role and MemberList a user (etcd's GHSA-q8m4-xhhv-38mg).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{admin, user, who};
use crate::member::Member;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use crate::proto::lodestone::{MemberChangeReply, member_change::Change};

pub struct ClusterService {
    pub member: Arc<Member>,
}

impl ClusterService {
    async fn change<T>(&self, request: &Request<T>, change: Change) -> Result<MemberChangeReply, Status> {
        admin(&self.member, &who(&self.member, request).await?)?;
        // Answered once this member's own view holds the change (see
        // `Member::change_membership`), so a MemberList right after shows it.
        Ok(self.member.change_membership(change).await?)
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, request: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        let r = self.change(&request, Change::Add(request.get_ref().clone())).await?;
        Ok(Response::new(MemberAddResponse {
            header: self.member.header(self.member.revision()),
            member: r.member,
            members: r.members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let r = self.change(&request, Change::Remove(*request.get_ref())).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.member.header(self.member.revision()),
            members: r.members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let r = self.change(&request, Change::Update(request.get_ref().clone())).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.member.header(self.member.revision()),
            members: r.members,
        }))
    }

    async fn member_list(&self, request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        user(&self.member, &who(&self.member, &request).await?)?;
        Ok(Response::new(MemberListResponse {
            header: self.member.header(self.member.revision()),
            members: self.member.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let r = self.change(&request, Change::Promote(*request.get_ref())).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.member.header(self.member.revision()),
            members: r.members,
        }))
    }
}
