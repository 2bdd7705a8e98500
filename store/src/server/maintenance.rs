//! The etcd Maintenance service. Status reports this member's view; the remaining RPCs
//! (Alarm, Defragment, Hash, HashKV, Snapshot, MoveLeader) answer Unimplemented for now.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Server;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{StatusRequest, StatusResponse};

/// The etcd API version Lodestone answers to. Kubernetes reads it to enable features, so it
/// names the newest etcd whose behaviour Lodestone fully provides.
pub const ETCD_API_VERSION: &str = "3.4.0";

pub struct MaintenanceService {
    pub server: Arc<Server>,
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let s = &self.server;
        s.require_leader(&request)?;
        let m = s.metrics();
        let sm = s.sm.clone();
        let (db_size, in_use) = tokio::task::spawn_blocking(move || sm.mvcc.size())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut errors = Vec::new();
        if m.current_leader.is_none() {
            errors.push(crate::error::StoreError::NoLeader.to_string());
        }
        let is_learner = m.membership_config.membership().learner_ids().any(|id| id == s.id);
        Ok(Response::new(StatusResponse {
            header: s.header(s.revision()),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.cluster_committed.as_ref().map_or(0, |c| c.index),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.as_ref().map_or(0, |c| c.index),
            errors,
            db_size_in_use: in_use,
            is_learner,
        }))
    }
}
