//! The etcd Cluster service and the leader's side of membership changes.
//!
//! MemberList combines the Raft membership (ids, peer URLs, learners) with what each member
//! published about itself (name, client URLs). Changes are decided on the leader, one at a
//! time (followers forward them), and map onto openraft as `storage-and-raft.md` describes:
//! MemberAdd adds a learner (and, for a voter, promotes it through joint consensus),
//! MemberPromote checks that the learner is close enough to the leader's log (etcd's 90 %),
//! MemberRemove refuses to leave the cluster without a quorum of started voters, and
//! MemberUpdate replaces a member's peer URLs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::Instant as _;
use openraft::error::{ClientWriteError, RaftError};
use tonic::{Request, Response, Status};

use super::Server;
use crate::error::{Result, StoreError};
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use crate::proto::lodestone::{ApplyError, MemberChange, MemberChangeReply, member_change::Change};
use crate::raft::{MemberNode, NodeId, RaftMetrics};

/// etcd's `maxLearners`.
const MAX_LEARNERS: usize = 1;
/// etcd's `readyPercent`: a learner may be promoted once it holds this share of the log.
const PROMOTE_READY: f64 = 0.9;

pub struct ClusterService {
    pub server: Arc<Server>,
}

fn change_error(e: RaftError<crate::raft::TypeConfig, ClientWriteError<crate::raft::TypeConfig>>) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => StoreError::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => StoreError::Internal(e.to_string()),
        RaftError::APIError(e) => StoreError::Internal(e.to_string()),
        RaftError::Fatal(_) => StoreError::Stopped,
    }
}

/// A majority of `voters`.
fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

fn valid_url(u: &str) -> bool {
    crate::config::parse_url(u).is_ok()
}

impl Server {
    /// The membership as this member sees it, in etcd's shape.
    pub fn members(&self) -> Vec<Member> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let learners: BTreeSet<u64> = membership.learner_ids().collect();
        let attrs = self.sm.member_attributes();
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

    /// Runs a membership change on the leader, forwarding when this member is a follower.
    pub async fn change_membership(&self, change: Change) -> Result<MemberChangeReply> {
        let fut = async {
            loop {
                let leader = self.wait_leader().await?;
                let r = if leader == self.id {
                    self.change_membership_local(change.clone()).await
                } else {
                    self.forward_change(leader, change.clone()).await
                };
                match r {
                    Err(StoreError::NotLeader) => tokio::time::sleep(self.cfg.heartbeat()).await,
                    r => return r,
                }
            }
        };
        tokio::time::timeout(self.cfg.request_timeout() * 2, fut)
            .await
            .unwrap_or(Err(StoreError::Timeout))
    }

    async fn forward_change(&self, leader: NodeId, change: Change) -> Result<MemberChangeReply> {
        let mut client = self.peer(leader).await?;
        let req = MemberChange {
            cluster_id: self.cluster_id(),
            change: Some(change),
        };
        match client.change_membership(req).await {
            Ok(r) => {
                let r = r.into_inner();
                match r.error {
                    Some(e) => Err(StoreError::from_code(e.code, &e.message)),
                    None => Ok(r),
                }
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition => Err(StoreError::NotLeader),
            Err(_) => Err(StoreError::LeaderChanged),
        }
    }

    /// The leader's side: one change at a time.
    pub async fn change_membership_local(&self, change: Change) -> Result<MemberChangeReply> {
        let _one_at_a_time = self.membership_lock.lock().await;
        let m = self.metrics();
        if m.current_leader != Some(self.id) {
            return Err(StoreError::NotLeader);
        }
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners: BTreeSet<u64> = membership.learner_ids().collect();
        let nodes: BTreeMap<u64, MemberNode> = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let url_taken = |urls: &[String], except: Option<u64>| {
            nodes
                .iter()
                .any(|(id, n)| Some(*id) != except && n.peer_urls.iter().any(|u| urls.contains(u)))
        };
        let mut added = None;
        match change {
            Change::Add(MemberAddRequest { peer_ur_ls, is_learner }) => {
                if peer_ur_ls.is_empty() || !peer_ur_ls.iter().all(|u| valid_url(u)) {
                    return Err(StoreError::MemberBadUrls);
                }
                if url_taken(&peer_ur_ls, None) {
                    return Err(StoreError::PeerUrlExist);
                }
                if is_learner && learners.len() >= MAX_LEARNERS {
                    return Err(StoreError::TooManyLearners);
                }
                if !is_learner {
                    // Adding an unstarted voter must leave a quorum of started voters; like
                    // etcd, a one-member cluster may grow to two (restoring a cluster).
                    let active = self.active_voters(&m, &voters);
                    let one_to_two = voters.len() == 1 && active == 1;
                    if !one_to_two && active < quorum(voters.len() + 1) {
                        return Err(StoreError::MemberNotEnoughStarted);
                    }
                }
                // A fresh id: hashed from the URLs, the cluster token and the time, so a
                // re-added member never reuses an old identity.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let id = crate::config::member_id(&peer_ur_ls, &format!("{}/{now}", self.cfg.initial_cluster_token));
                if nodes.contains_key(&id) {
                    return Err(StoreError::MemberExist);
                }
                let node = MemberNode {
                    name: String::new(),
                    peer_urls: peer_ur_ls.clone(),
                };
                self.raft.add_learner(id, node, false).await.map_err(change_error)?;
                if !is_learner {
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                        .await
                        .map_err(change_error)?;
                }
                tracing::info!(member = %format!("{id:x}"), ?peer_ur_ls, is_learner, "member added");
                added = Some(Member {
                    id,
                    name: String::new(),
                    peer_ur_ls,
                    client_ur_ls: Vec::new(),
                    is_learner,
                });
            }
            Change::Promote(MemberPromoteRequest { id }) => {
                if voters.contains(&id) {
                    return Err(StoreError::MemberNotLearner);
                }
                if !learners.contains(&id) {
                    return Err(StoreError::MemberNotFound);
                }
                let leader_last = m.last_log_index.unwrap_or(0);
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map_or(0, |l| l.index);
                if (matched as f64) < leader_last as f64 * PROMOTE_READY {
                    return Err(StoreError::LearnerNotReady);
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(change_error)?;
                tracing::info!(member = %format!("{id:x}"), "learner promoted");
            }
            Change::Remove(MemberRemoveRequest { id }) => {
                if !nodes.contains_key(&id) {
                    return Err(StoreError::MemberNotFound);
                }
                if learners.contains(&id) {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                        .map_err(change_error)?;
                } else {
                    let rest: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != id).collect();
                    if rest.is_empty() || self.active_voters(&m, &rest) < quorum(rest.len()) {
                        return Err(StoreError::MemberNotEnoughStarted);
                    }
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                        .map_err(change_error)?;
                }
                tracing::info!(member = %format!("{id:x}"), "member removed");
            }
            Change::Update(MemberUpdateRequest { id, peer_ur_ls }) => {
                let Some(old) = nodes.get(&id) else {
                    return Err(StoreError::MemberNotFound);
                };
                if peer_ur_ls.is_empty() || !peer_ur_ls.iter().all(|u| valid_url(u)) {
                    return Err(StoreError::MemberBadUrls);
                }
                if url_taken(&peer_ur_ls, Some(id)) {
                    return Err(StoreError::PeerUrlExist);
                }
                let node = MemberNode {
                    name: old.name.clone(),
                    peer_urls: peer_ur_ls.clone(),
                };
                self.raft
                    .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, node)])), false)
                    .await
                    .map_err(change_error)?;
                tracing::info!(member = %format!("{id:x}"), ?peer_ur_ls, "member peer URLs updated");
            }
        }
        Ok(MemberChangeReply {
            member: added,
            members: self.members(),
            error: None,
        })
    }

    /// How many of `voters` are running as far as the leader can tell from its metrics `m`:
    /// itself, and every voter that acknowledged replication within two election timeouts.
    pub(super) fn active_voters<'a>(&self, m: &RaftMetrics, voters: impl IntoIterator<Item = &'a u64>) -> usize {
        let window = self.cfg.election() * 2;
        voters
            .into_iter()
            .filter(|v| {
                **v == self.id
                    || m.heartbeat
                        .as_ref()
                        .and_then(|h| h.get(*v).cloned().flatten())
                        .is_some_and(|t| t.elapsed() < window)
            })
            .count()
    }
}

impl ClusterService {
    async fn change(&self, change: Change) -> Result<MemberChangeReply, Status> {
        let r = self.server.change_membership(change).await?;
        // Let this member's own view catch up, so a MemberList right after shows the change.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.server.linearizable_barrier()).await;
        Ok(r)
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, request: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        let r = self.change(Change::Add(request.into_inner())).await?;
        Ok(Response::new(MemberAddResponse {
            header: self.server.header(self.server.revision()),
            member: r.member,
            members: r.members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let r = self.change(Change::Remove(request.into_inner())).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.server.header(self.server.revision()),
            members: r.members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let r = self.change(Change::Update(request.into_inner())).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.server.header(self.server.revision()),
            members: r.members,
        }))
    }

    async fn member_list(&self, _request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: self.server.header(self.server.revision()),
            members: self.server.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let r = self.change(Change::Promote(request.into_inner())).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.server.header(self.server.revision()),
            members: r.members,
        }))
    }
}

/// The reply a leader sends a forwarding follower when it refuses a change.
pub(crate) fn refused(e: StoreError) -> MemberChangeReply {
    MemberChangeReply {
        member: None,
        members: Vec::new(),
        error: Some(ApplyError {
            code: e.code(),
            message: e.to_string(),
        }),
    }
}
