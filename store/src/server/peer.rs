//! The server side of the peer transport: openraft RPCs, streamed snapshots, writes
//! forwarded by followers, and ReadIndex for follower reads.

use std::sync::Arc;

use futures::StreamExt;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use super::Server;
use crate::proto::lodestone::peer_server::Peer;
use crate::proto::lodestone::{
    ApplyError, ClusterInfoRequest, ClusterView, Command, CommandResult, LeaseAnswer, LeaseQuery, MemberChange,
    MemberChangeReply, RaftEnvelope, RaftReply, ReadIndexReply, ReadIndexRequest, SnapshotChunk, command_result::Kind,
};
use crate::raft::snapshot::SnapshotFile;
use crate::raft::{Snapshot, SnapshotMeta, TypeConfig, Vote};

pub struct PeerService {
    pub server: Arc<Server>,
}

impl PeerService {
    /// Refuses messages for another cluster or another member.
    fn open<T: serde::de::DeserializeOwned>(&self, env: &RaftEnvelope) -> Result<T, Status> {
        let cid = self.server.cluster_id();
        if env.cluster_id != 0 && cid != 0 && env.cluster_id != cid {
            return Err(Status::failed_precondition(format!(
                "message for cluster {:x}, this member belongs to cluster {cid:x}",
                env.cluster_id
            )));
        }
        if env.to != self.server.id {
            return Err(Status::failed_precondition(format!(
                "message for member {:x} reached member {:x}",
                env.to, self.server.id
            )));
        }
        bincode::deserialize(&env.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
    }
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Response<RaftReply>, Status> {
    Ok(Response::new(RaftReply {
        payload: bincode::serialize(v)
            .map_err(|e| Status::internal(e.to_string()))?
            .into(),
    }))
}

fn stopped(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft stopped: {e}"))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftReply>, Status> {
        let req: AppendEntriesRequest<TypeConfig> = self.open(request.get_ref())?;
        let resp = self.server.raft.append_entries(req).await.map_err(stopped)?;
        reply(&resp)
    }

    async fn vote(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftReply>, Status> {
        let req: VoteRequest<TypeConfig> = self.open(request.get_ref())?;
        // A candidate missing from our membership whose log ends at or before the entry that
        // dropped it was removed (a new member would know a later membership): tell it.
        let from = request.get_ref().from;
        let m = self.server.metrics();
        let stored = m.membership_config.clone();
        if let Some(at) = stored.log_id()
            && stored.membership().get_node(&from).is_none()
            && req.last_log_id.as_ref().is_none_or(|l| l.index <= at.index)
        {
            return Err(Status::failed_precondition(crate::raft::network::MEMBER_REMOVED));
        }
        let resp = self.server.raft.vote(req).await.map_err(stopped)?;
        reply(&resp)
    }

    async fn transfer_leader(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftReply>, Status> {
        let req: TransferLeaderRequest<TypeConfig> = self.open(request.get_ref())?;
        let resp = self.server.raft.handle_transfer_leader(req).await.map_err(stopped)?;
        reply(&resp)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let env = first
            .envelope
            .ok_or_else(|| Status::invalid_argument("snapshot stream without header"))?;
        let (vote, meta): (Vote, SnapshotMeta) = self.open(&env)?;
        // One file per transfer: a retried transfer from the same leader never writes into
        // the file of one still running.
        let path = self.server.sm.scratch_path(&format!("incoming-{:x}", env.from), "part");
        let received = async {
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                file.write_all(&chunk.data)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                if chunk.done {
                    return file.sync_all().await.map_err(|e| Status::internal(e.to_string()));
                }
            }
            Err(Status::aborted("snapshot stream ended early"))
        }
        .await;
        if let Err(e) = received {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        let snapshot = Snapshot {
            meta,
            snapshot: SnapshotFile { path: path.clone() },
        };
        let resp = self.server.raft.install_full_snapshot(vote, snapshot).await;
        let _ = tokio::fs::remove_file(&path).await;
        reply(&resp.map_err(stopped)?)
    }

    async fn propose(&self, request: Request<Command>) -> Result<Response<CommandResult>, Status> {
        let r = match self.server.propose_local(request.into_inner()).await {
            Ok(r) => r,
            Err(e) => CommandResult {
                kind: Some(Kind::Error(ApplyError {
                    code: e.code(),
                    message: e.to_string(),
                })),
            },
        };
        Ok(Response::new(r))
    }

    async fn read_index(&self, request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexReply>, Status> {
        let cid = request.get_ref().cluster_id;
        if cid != 0 && cid != self.server.cluster_id() {
            return Err(Status::failed_precondition("read index request from another cluster"));
        }
        match self.server.local_read_index().await {
            Ok(read_index) => Ok(Response::new(ReadIndexReply { read_index })),
            Err(crate::error::StoreError::NotLeader) => Err(Status::failed_precondition("etcdserver: not leader")),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn lease(&self, request: Request<LeaseQuery>) -> Result<Response<LeaseAnswer>, Status> {
        let cid = request.get_ref().cluster_id;
        if cid != 0 && cid != self.server.cluster_id() {
            return Err(Status::failed_precondition("lease query from another cluster"));
        }
        match self.server.lease_query_local(request.get_ref()).await {
            Ok(a) => Ok(Response::new(a)),
            Err(crate::error::StoreError::NotLeader) => Err(Status::failed_precondition("etcdserver: not leader")),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn change_membership(&self, request: Request<MemberChange>) -> Result<Response<MemberChangeReply>, Status> {
        let req = request.into_inner();
        if req.cluster_id != 0 && req.cluster_id != self.server.cluster_id() {
            return Err(Status::failed_precondition("membership change from another cluster"));
        }
        let change = req
            .change
            .ok_or_else(|| Status::invalid_argument("membership change without a change"))?;
        match self.server.change_membership_local(change).await {
            Ok(r) => Ok(Response::new(r)),
            Err(crate::error::StoreError::NotLeader) => Err(Status::failed_precondition("etcdserver: not leader")),
            Err(e) => Ok(Response::new(super::cluster::refused(e))),
        }
    }

    async fn cluster_info(&self, _request: Request<ClusterInfoRequest>) -> Result<Response<ClusterView>, Status> {
        Ok(Response::new(ClusterView {
            cluster_id: self.server.cluster_id(),
            members: self.server.members(),
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<crate::proto::etcdserverpb::HashKvRequest>,
    ) -> Result<Response<crate::proto::etcdserverpb::HashKvResponse>, Status> {
        let rev = request.get_ref().revision;
        let h = self.server.hash_kv_at(rev).await.map_err(Status::from)?;
        Ok(Response::new(crate::proto::etcdserverpb::HashKvResponse {
            header: self.server.header(h.revision),
            hash: h.hash,
            compact_revision: h.compacted,
        }))
    }
}
