//! etcd's v3lock and v3election services, built on leases and revisions exactly as etcd's
//! client-side recipes are (so they interoperate with `etcdctl lock` / `elect` users):
//!
//! - a contender owns the key `<name>/<lease id in hex>`, created with its lease in a txn
//!   that keeps an existing key (a retry by the same session re-joins its place);
//! - contenders are ordered by create revision; the lowest one holds the lock or leads;
//! - a contender waits until every key of the prefix created before its own is gone
//!   (released, resigned, or deleted with an expired lease).
//!
//! Every wait starts from a linearizable read on this member and then follows the local
//! state machine revision by revision, so no deletion can be missed. A wait that does not
//! finish (the client canceled or timed out, the member lost its leader) deletes the
//! contender key it created, as etcd's recipes do, so an abandoned waiter never blocks the
//! contenders queued behind it until its lease expires.
//!
//! With auth enabled, a recipe needs the permissions its steps use: read and write on
//! `<name>/` to lock or campaign, read to watch a leader, write on its own key to unlock,
//! proclaim or resign; checked when the RPC arrives.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth::who;
use crate::auth::Access;
use crate::error::{Result, StoreError};
use crate::member::Member;
use crate::mvcc::RangeOutcome;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::response_op::Response as OpResponse;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
};
use crate::proto::lodestone::{Command, command::Kind, command_result::Kind as ResKind};
use crate::proto::mvccpb::KeyValue;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse,
};
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn contender_key(name: &[u8], lease: i64) -> (Vec<u8>, Vec<u8>) {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let mut key = prefix.clone();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    (prefix, key)
}

fn range_op(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(r)),
    }
}

fn single(key: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec().into(),
        ..Default::default()
    }
}

fn first_range(resp: &TxnResponse, i: usize) -> Option<KeyValue> {
    match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(OpResponse::ResponseRange(r)) => r.kvs.first().cloned(),
        _ => None,
    }
}

async fn txn(member: &Arc<Member>, t: TxnRequest) -> Result<TxnResponse> {
    let r = member
        .propose_write(Command {
            kind: Some(Kind::Txn(t)),
            auth: None,
        })
        .await?;
    match r.kind {
        Some(ResKind::Txn(t)) => Ok(t),
        _ => Err(StoreError::Internal("unexpected result for txn".into())),
    }
}

/// A Range on this member's state (after the caller's barrier), with the store revision
/// it was read at.
async fn local_range(member: &Member, req: RangeRequest) -> Result<(RangeOutcome, i64)> {
    let sm = member.state().clone();
    tokio::task::spawn_blocking(move || sm.mvcc.read_view()?.with(|v| Ok((v.range(&req)?, v.meta().revision))))
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
}

/// Creates (or re-joins) the contender key `<name>/<lease>` with `value`; returns it.
async fn join_queue(member: &Arc<Member>, name: &[u8], lease: i64, value: &[u8]) -> Result<KeyValue> {
    let (_, key) = contender_key(name, lease);
    let t = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key.clone().into(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            range_end: Default::default(),
        }],
        success: vec![
            RequestOp {
                request: Some(Op::RequestPut(PutRequest {
                    key: key.clone().into(),
                    value: value.to_vec().into(),
                    lease,
                    ..Default::default()
                })),
            },
            range_op(single(&key)),
        ],
        failure: vec![range_op(single(&key))],
    };
    let r = txn(member, t).await?;
    first_range(&r, if r.succeeded { 1 } else { 0 })
        .ok_or_else(|| StoreError::Internal("contender key vanished".into()))
}

/// Waits until no key of `prefix` was created before contender `me` (etcd's
/// `waitDeletes`). Fails with [`StoreError::SessionExpired`] as soon as `me` no longer
/// owns its key (its lease expired, someone deleted it, or an abandoned retry of the same
/// session withdrew it): such a wait can win nothing, and reporting the lock as held
/// would break mutual exclusion.
async fn wait_turn(member: &Member, prefix: &[u8], me: &KeyValue) -> Result<()> {
    member.linearizable_barrier().await?;
    let mut revision = member.state().revision();
    loop {
        revision.borrow_and_update();
        // The newest contender created no later than `me`, and (`more`) whether any
        // other is older. (`count` would not do: like etcd's, it ignores the revision
        // filters.)
        let upto_me = RangeRequest {
            key: prefix.to_vec().into(),
            range_end: prefix_end(prefix).into(),
            max_create_revision: me.create_revision,
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Create as i32,
            limit: 1,
            keys_only: true,
            ..Default::default()
        };
        let (found, _) = local_range(member, upto_me).await?;
        match found.kvs.first() {
            Some(kv) if kv.key == me.key && kv.create_revision == me.create_revision => {
                if !found.more {
                    return Ok(());
                }
            }
            _ => return Err(StoreError::SessionExpired),
        }
        tokio::select! {
            _ = member.shutdown().cancelled() => return Err(StoreError::Stopped),
            r = revision.changed() => if r.is_err() { return Err(StoreError::Stopped) },
        }
    }
}

/// The current leader of election `name`: its oldest contender.
async fn election_leader(member: &Member, name: &[u8]) -> Result<(Option<KeyValue>, i64)> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let req = RangeRequest {
        key: prefix.clone().into(),
        range_end: prefix_end(&prefix).into(),
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        limit: 1,
        ..Default::default()
    };
    let (found, rev) = local_range(member, req).await?;
    Ok((found.kvs.into_iter().next(), rev))
}

/// A contender key whose wait has not finished. Dropped armed (the RPC was canceled, or
/// failed), it withdraws the key, but only the incarnation this wait created or joined: the
/// delete is guarded by the key's create revision.
struct Waiting {
    member: Arc<Member>,
    leader: Option<LeaderKey>,
}

impl Waiting {
    fn new(member: &Arc<Member>, name: &[u8], me: &KeyValue) -> Waiting {
        Waiting {
            member: member.clone(),
            leader: Some(LeaderKey {
                name: name.to_vec().into(),
                key: me.key.clone(),
                rev: me.create_revision,
                lease: me.lease,
            }),
        }
    }

    /// The wait finished: the key stays.
    fn done(mut self) {
        self.leader = None;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(leader) = self.leader.take() else { return };
        if self.member.shutdown().is_cancelled() {
            return;
        }
        let member = self.member.clone();
        // The handler's future is being dropped, so the delete runs on its own.
        tokio::spawn(async move {
            let del = RequestOp {
                request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                    key: leader.key.clone(),
                    ..Default::default()
                })),
            };
            if let Err(e) = txn(&member, guarded(&leader, del)).await {
                tracing::debug!(error = %e, "withdrawing an abandoned lock or campaign key");
            }
        });
    }
}

/// With auth enabled, a recipe on `name` needs `access` to every key under `name/` (where
/// contenders queue), or, given `key`, to that one key; checked before the recipe starts.
async fn check_recipe<T>(
    member: &Member,
    request: &Request<T>,
    name: &[u8],
    key: Option<&[u8]>,
    access: &[Access],
) -> Result<(), Status> {
    let who = who(member, request).await?;
    let auth = member.auth();
    for a in access {
        match key {
            Some(k) => auth.check_range(&who, k, &[], *a)?,
            None => {
                let (prefix, _) = contender_key(name, 0);
                auth.check_range(&who, &prefix, &prefix_end(&prefix), *a)?;
            }
        }
    }
    Ok(())
}

pub struct LockService {
    pub member: Arc<Member>,
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let s = &self.member;
        check_recipe(
            s,
            &request,
            &request.get_ref().name,
            None,
            &[Access::Read, Access::Write],
        )
        .await?;
        let req = request.into_inner();
        let me = join_queue(s, &req.name, req.lease, b"").await?;
        let waiting = Waiting::new(s, &req.name, &me);
        let (prefix, _) = contender_key(&req.name, req.lease);
        wait_turn(s, &prefix, &me).await?;
        waiting.done();
        Ok(Response::new(LockResponse {
            header: s.header(s.revision()),
            key: me.key,
        }))
    }

    async fn unlock(&self, request: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let s = &self.member;
        check_recipe(s, &request, b"", Some(&request.get_ref().key), &[Access::Write]).await?;
        let key = request.into_inner().key;
        let r = s
            .propose_write(Command {
                kind: Some(Kind::DeleteRange(DeleteRangeRequest {
                    key,
                    ..Default::default()
                })),
                auth: None,
            })
            .await?;
        let rev = match r.kind {
            Some(ResKind::DeleteRange(d)) => d.header.map_or(0, |h| h.revision),
            _ => s.revision(),
        };
        Ok(Response::new(UnlockResponse { header: s.header(rev) }))
    }
}

pub struct ElectionService {
    pub member: Arc<Member>,
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

fn leader_key(l: Option<LeaderKey>) -> Result<LeaderKey, Status> {
    l.ok_or_else(|| StoreError::MissingLeaderKey.into())
}

/// A txn that runs `op` only while `leader` still owns its key at its revision.
fn guarded(leader: &LeaderKey, op: RequestOp) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: leader.key.clone(),
            target_union: Some(TargetUnion::CreateRevision(leader.rev)),
            range_end: Default::default(),
        }],
        success: vec![op],
        failure: Vec::new(),
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, request: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let s = &self.member;
        check_recipe(
            s,
            &request,
            &request.get_ref().name,
            None,
            &[Access::Read, Access::Write],
        )
        .await?;
        let req = request.into_inner();
        let mut me = join_queue(s, &req.name, req.lease, &req.value).await?;
        let waiting = Waiting::new(s, &req.name, &me);
        if me.value != req.value {
            // Re-joining with a new value: proclaim it in place.
            let put = RequestOp {
                request: Some(Op::RequestPut(PutRequest {
                    key: me.key.clone(),
                    value: req.value.clone(),
                    lease: req.lease,
                    ..Default::default()
                })),
            };
            let l = LeaderKey {
                name: req.name.clone(),
                key: me.key.clone(),
                rev: me.create_revision,
                lease: req.lease,
            };
            txn(s, guarded(&l, put)).await?;
            me.value = req.value.clone();
        }
        let (prefix, _) = contender_key(&req.name, req.lease);
        wait_turn(s, &prefix, &me).await?;
        waiting.done();
        Ok(Response::new(CampaignResponse {
            header: s.header(s.revision()),
            leader: Some(LeaderKey {
                name: req.name,
                key: me.key,
                rev: me.create_revision,
                lease: req.lease,
            }),
        }))
    }

    async fn proclaim(&self, request: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let s = &self.member;
        if let Some(l) = &request.get_ref().leader {
            check_recipe(s, &request, b"", Some(&l.key), &[Access::Write]).await?;
        }
        let req = request.into_inner();
        let leader = leader_key(req.leader)?;
        let put = RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: leader.key.clone(),
                value: req.value,
                lease: leader.lease,
                ..Default::default()
            })),
        };
        let r = txn(s, guarded(&leader, put)).await?;
        if !r.succeeded {
            return Err(StoreError::ElectionNotLeader.into());
        }
        Ok(Response::new(ProclaimResponse {
            header: s.header(r.header.map_or(0, |h| h.revision)),
        }))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let s = &self.member;
        s.linearizable_barrier().await?;
        check_recipe(s, &request, &request.get_ref().name, None, &[Access::Read]).await?;
        let (kv, rev) = election_leader(s, &request.get_ref().name).await?;
        let kv = kv.ok_or(StoreError::ElectionNoLeader)?;
        Ok(Response::new(LeaderResponse {
            header: s.header(rev),
            kv: Some(kv),
        }))
    }

    async fn observe(&self, request: Request<LeaderRequest>) -> Result<Response<ObserveStream>, Status> {
        let s = self.member.clone();
        s.linearizable_barrier().await?;
        check_recipe(&s, &request, &request.get_ref().name, None, &[Access::Read]).await?;
        let name = request.into_inner().name;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut revision = s.state().revision();
            // The last leader value sent: (key, mod revision).
            let mut last: Option<(bytes::Bytes, i64)> = None;
            loop {
                revision.borrow_and_update();
                match election_leader(&s, &name).await {
                    Ok((Some(kv), rev)) => {
                        let seen = (kv.key.clone(), kv.mod_revision);
                        if last.as_ref() != Some(&seen) {
                            last = Some(seen);
                            let r = LeaderResponse {
                                header: s.header(rev),
                                kv: Some(kv),
                            };
                            if tx.send(Ok(r)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok((None, _)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
                tokio::select! {
                    _ = s.shutdown().cancelled() => return,
                    _ = tx.closed() => return,
                    r = revision.changed() => if r.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let s = &self.member;
        if let Some(l) = &request.get_ref().leader {
            check_recipe(s, &request, b"", Some(&l.key), &[Access::Write]).await?;
        }
        let leader = leader_key(request.into_inner().leader)?;
        let del = RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: leader.key.clone(),
                ..Default::default()
            })),
        };
        let r = txn(s, guarded(&leader, del)).await?;
        Ok(Response::new(ResignResponse {
            header: s.header(r.header.map_or(0, |h| h.revision)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefix_ends() {
        let (p, k) = contender_key(b"job", 0x2a);
        assert_eq!(p, b"job/");
        assert_eq!(k, b"job/2a");
        assert_eq!(prefix_end(b"job/"), b"job0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
