//! The etcd Cluster service. MemberList combines the Raft membership (ids, peer URLs,
//! learners) with what each member published about itself (name, client URLs). The
//! membership-changing RPCs answer Unimplemented for now.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Server;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{Member, MemberListRequest, MemberListResponse};

pub struct ClusterService {
    pub server: Arc<Server>,
}

impl ClusterService {
    pub fn members(&self) -> Vec<Member> {
        let m = self.server.metrics();
        let membership = m.membership_config.membership();
        let learners: Vec<u64> = membership.learner_ids().collect();
        let attrs = self.server.sm.member_attributes();
        membership
            .nodes()
            .map(|(id, node)| {
                let a = attrs.get(id);
                Member {
                    id: *id,
                    name: a.map(|a| a.name.clone()).unwrap_or_default(),
                    peer_ur_ls: node.peer_urls.clone(),
                    client_ur_ls: a.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: learners.contains(id),
                }
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(&self, request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        self.server.require_leader(&request)?;
        Ok(Response::new(MemberListResponse {
            header: self.server.header(self.server.revision()),
            members: self.members(),
        }))
    }
}
