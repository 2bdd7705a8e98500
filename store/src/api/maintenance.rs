//! The etcd Maintenance service: Status, Alarm, Defragment, Hash, HashKV, Snapshot and
//! MoveLeader. Most of these are about this member (Status, Defragment, Hash, Snapshot);
//! alarms are replicated so every member refuses the same requests. With auth enabled,
//! Status is open (health checks use it), listing alarms needs a user, and everything else
//! the root role.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth::{admin, user, who};
use super::blocking;
use crate::error::StoreError;
use crate::member::Member;
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse,
};
use crate::proto::lodestone::{self as pb, command_result::Kind as ResKind};

/// The etcd API version Lodestone answers to. Kubernetes reads it to enable features, so it
/// names the newest etcd whose behaviour Lodestone fully provides.
pub const ETCD_API_VERSION: &str = "3.4.0";

/// etcd streams snapshots in 32 KiB pieces.
const SNAPSHOT_CHUNK: usize = 32 * 1024;
/// `etcdctl snapshot save` accepts a file only if its payload is a whole number of these
/// (bbolt pages), followed by the payload's SHA-256.
const SNAPSHOT_ALIGN: u64 = 512;

pub struct MaintenanceService {
    pub member: Arc<Member>,
}

/// How etcd prints an alarm in `Status.errors`.
fn alarm_text(a: &AlarmMember) -> String {
    let name = AlarmType::try_from(a.alarm).map_or("UNKNOWN", |t| t.as_str_name());
    format!("memberID:{} alarm:{}", a.member_id, name)
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

impl MaintenanceService {
    /// Streams `path` as etcd does: the payload zero-padded to a multiple of 512 bytes, then
    /// the SHA-256 of the padded payload as the last message. The file is removed afterwards.
    async fn stream_file(
        path: std::path::PathBuf,
        tx: mpsc::Sender<Result<SnapshotResponse, Status>>,
    ) -> std::io::Result<()> {
        let mut f = tokio::fs::File::open(&path).await?;
        let len = f.metadata().await?.len();
        // Unlinking now keeps the open file readable and leaves nothing behind on any exit.
        let _ = tokio::fs::remove_file(&path).await;
        let padded = len.div_ceil(SNAPSHOT_ALIGN) * SNAPSHOT_ALIGN;
        let total = padded + 32;
        let mut sent = 0u64;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; SNAPSHOT_CHUNK];
        while sent < padded {
            let want = ((padded - sent) as usize).min(SNAPSHOT_CHUNK);
            let mut filled = 0;
            while filled < want && sent + (filled as u64) < len {
                let n = f.read(&mut buf[filled..want]).await?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            // Past the end of the file: padding.
            buf[filled..want].fill(0);
            hash.update(&buf[..want]);
            sent += want as u64;
            let msg = SnapshotResponse {
                header: None,
                remaining_bytes: total - sent,
                blob: buf[..want].to_vec().into(),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return Ok(());
            }
        }
        let _ = tx
            .send(Ok(SnapshotResponse {
                header: None,
                remaining_bytes: 0,
                blob: hash.finalize().to_vec().into(),
            }))
            .await;
        Ok(())
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let s = &self.member;
        let who = who(s, &request).await?;
        let req = request.into_inner();
        if AlarmAction::try_from(req.action) == Ok(AlarmAction::Get) {
            s.linearizable_barrier().await?;
            user(s, &who)?;
            let alarms = s
                .state()
                .alarms()
                .into_iter()
                .filter(|a| req.alarm == AlarmType::None as i32 || a.alarm == req.alarm)
                .collect();
            return Ok(Response::new(AlarmResponse {
                header: s.header(s.revision()),
                alarms,
            }));
        }
        admin(s, &who)?;
        let r = s
            .propose(pb::Command {
                kind: Some(pb::command::Kind::Alarm(req)),
                auth: Some(who),
            })
            .await?;
        match r.kind {
            Some(ResKind::Alarm(mut a)) => {
                a.header = s.header(s.revision());
                Ok(Response::new(a))
            }
            _ => Err(StoreError::Internal("unexpected result for alarm".into()).into()),
        }
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let s = &self.member;
        let m = s.status();
        let member = s.clone();
        let (db_size, in_use) = tokio::task::spawn_blocking(move || member.db_size())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut errors = Vec::new();
        if m.leader.is_none() {
            errors.push(StoreError::NoLeader.to_string());
        }
        errors.extend(s.state().alarms().iter().map(alarm_text));
        let is_learner = s.is_learner();
        Ok(Response::new(StatusResponse {
            header: s.header(s.revision()),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: m.leader.unwrap_or(0),
            raft_index: m.committed,
            raft_term: m.term,
            raft_applied_index: m.applied,
            errors,
            db_size_in_use: in_use,
            is_learner,
        }))
    }

    async fn defragment(&self, request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        let s = &self.member;
        admin(s, &who(s, &request).await?)?;
        let sm = s.state().clone();
        let started = std::time::Instant::now();
        blocking(move || sm.mvcc.defragment()).await?;
        tracing::info!(took = ?started.elapsed(), "defragmented the state machine");
        // The size changed: report the new one at once.
        s.forget_db_size();
        Ok(Response::new(DefragmentResponse {
            header: s.header(s.revision()),
        }))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let s = &self.member;
        admin(s, &who(s, &request).await?)?;
        let sm = s.state().clone();
        let (hash, rev) = blocking(move || sm.mvcc.hash_all()).await?;
        Ok(Response::new(HashResponse {
            header: s.header(rev),
            hash,
        }))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let s = &self.member;
        admin(s, &who(s, &request).await?)?;
        let rev = request.get_ref().revision;
        let sm = s.state().clone();
        let h = blocking(move || sm.mvcc.hash_kv(rev)).await?;
        Ok(Response::new(HashKvResponse {
            header: s.header(h.revision),
            hash: h.hash,
            compact_revision: h.compacted,
        }))
    }

    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        admin(&self.member, &who(&self.member, &request).await?)?;
        let (path, index) = self.member.export_snapshot().await?;
        tracing::info!(index, "streaming a snapshot to a client");
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            if let Err(e) = MaintenanceService::stream_file(path.clone(), tx.clone()).await {
                let _ = tx.send(Err(Status::internal(format!("snapshot: {e}")))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(&self, request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        let s = &self.member;
        admin(s, &who(s, &request).await?)?;
        let target = request.get_ref().target_id;
        s.move_leader(target).await?;
        tracing::info!(to = %format!("{target:x}"), "leadership moved");
        Ok(Response::new(MoveLeaderResponse {
            header: s.header(s.revision()),
        }))
    }
}
