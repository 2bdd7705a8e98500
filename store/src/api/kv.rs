//! The etcd KV service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Writes are validated here, before anything is proposed, then replicated; reads wait on
//! the linearizable barrier unless the client asked for `serializable`, and are served from
//! a consistent snapshot of the local state machine. With auth enabled, reads are checked
//! here after their barrier; writes carry their user into the log and are checked at apply.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::who;
use super::blocking;
use super::validate;
use crate::auth::{AuthInfo, requests};
use crate::error::StoreError;
use crate::member::Member;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::proto::lodestone::{Command, command::Kind, command_result::Kind as ResKind};

pub struct KvService {
    pub member: Arc<Member>,
}

fn unexpected(what: &str) -> Status {
    StoreError::Internal(format!("unexpected result for {what}")).into()
}

/// True when a txn (with everything nested) only reads.
fn is_read_only(t: &TxnRequest) -> bool {
    t.success.iter().chain(t.failure.iter()).all(|op| match &op.request {
        Some(Op::RequestRange(_)) | None => true,
        Some(Op::RequestTxn(n)) => is_read_only(n),
        _ => false,
    })
}

/// True when every range in a read-only txn asked for serializable reads.
fn all_serializable(t: &TxnRequest) -> bool {
    t.success.iter().chain(t.failure.iter()).all(|op| match &op.request {
        Some(Op::RequestRange(r)) => r.serializable,
        Some(Op::RequestTxn(n)) => all_serializable(n),
        _ => true,
    })
}

impl KvService {
    async fn write(&self, kind: Kind, who: AuthInfo) -> Result<ResKind, Status> {
        let cmd = Command {
            kind: Some(kind),
            auth: Some(who),
        };
        let r = self.member.propose_write(cmd).await?;
        r.kind.ok_or_else(|| unexpected("write"))
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let who = who(&self.member, &request).await?;
        let req = request.into_inner();
        validate::check_range(&req)?;
        if !req.serializable && self.member.is_learner() {
            return Err(StoreError::NotSupportedForLearner.into());
        }
        if req.serializable {
            self.member.serializable_barrier().await?;
        } else {
            self.member.linearizable_barrier().await?;
        }
        // After the barrier: a linearizable read sees every alarm and auth change committed
        // before it.
        self.member.check_corrupt()?;
        requests::check_range(&self.member.auth(), &who, &req)?;
        let sm = self.member.state().clone();
        let (out, rev) =
            blocking(move || sm.mvcc.read_view()?.with(|v| Ok((v.range(&req)?, v.meta().revision)))).await?;
        Ok(Response::new(RangeResponse {
            header: self.member.header(rev),
            kvs: out.kvs,
            more: out.more,
            count: out.count,
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let who = who(&self.member, &request).await?;
        let req = request.into_inner();
        validate::check_put(&req)?;
        match self.write(Kind::Put(req), who).await? {
            ResKind::Put(mut r) => {
                r.header = self.member.header(r.header.map_or(0, |h| h.revision));
                Ok(Response::new(r))
            }
            _ => Err(unexpected("put")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let who = who(&self.member, &request).await?;
        let req = request.into_inner();
        validate::check_delete(&req)?;
        match self.write(Kind::DeleteRange(req), who).await? {
            ResKind::DeleteRange(mut r) => {
                r.header = self.member.header(r.header.map_or(0, |h| h.revision));
                Ok(Response::new(r))
            }
            _ => Err(unexpected("delete range")),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let who = who(&self.member, &request).await?;
        let req = request.into_inner();
        validate::check_txn(&req, self.member.config().max_txn_ops)?;
        if is_read_only(&req) {
            if all_serializable(&req) {
                self.member.serializable_barrier().await?;
            } else {
                self.member.linearizable_barrier().await?;
            }
            self.member.check_corrupt()?;
            // Read-only: no put, so no lease to look up.
            requests::check_txn(&self.member.auth(), &who, &req, &mut |_| Ok(Vec::new()))?;
            let sm = self.member.state().clone();
            let mut r = blocking(move || sm.mvcc.read_only_txn(&req)).await?;
            r.header = self.member.header(r.header.map_or(0, |h| h.revision));
            return Ok(Response::new(r));
        }
        match self.write(Kind::Txn(req), who).await? {
            ResKind::Txn(mut r) => {
                r.header = self.member.header(r.header.map_or(0, |h| h.revision));
                Ok(Response::new(r))
            }
            _ => Err(unexpected("txn")),
        }
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let who = who(&self.member, &request).await?;
        let req = request.into_inner();
        let (revision, physical) = (req.revision, req.physical);
        match self.write(Kind::Compaction(req), who).await? {
            ResKind::Compaction(mut r) => {
                // Applying a compaction only moves the compacted revision; with `physical`
                // the answer waits until this member removed the history it dropped.
                if physical {
                    self.member.wait_compacted_physically(revision).await?;
                }
                r.header = self.member.header(r.header.map_or(0, |h| h.revision));
                Ok(Response::new(r))
            }
            _ => Err(unexpected("compaction")),
        }
    }
}
