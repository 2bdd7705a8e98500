//! The write path: applies write requests (Put, DeleteRange, Txn, Compact) to a RocksDB
//! WriteBatch. Many requests share one batch; [`WriteTxn::commit`] writes the batch together
//! with the [`Meta`] record, so data and "how far we applied" never disagree.
//!
//! Requests later in a batch must see the writes of earlier ones before anything reaches
//! RocksDB, so the transaction keeps an overlay of changed keys and of this batch's history.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use rocksdb::{DB, ReadOptions, WriteBatch, WriteOptions};

use super::keys::{KeyRange, Revision, index_key, lease_attach_key, lease_record_key, revision_key};
use super::read::{self, KvSource, RangeOutcome, scan_at_db, scan_latest_db};
use super::{CF_INDEX, CF_KV, CF_LATEST, CF_LEASE, CF_META, Meta, cf, encode_meta};
use crate::error::{Result, StoreError};
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::etcdserverpb::{
    CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;

/// One change recorded in this batch's history overlay.
struct Change {
    rev: Revision,
    key: Vec<u8>,
    /// `None` for a delete.
    kv: Option<KeyValue>,
}

/// Which branch each (nested) txn takes, decided before any op runs, as etcd does.
struct TxnPath {
    succeeded: bool,
    nested: Vec<TxnPath>,
}

/// A batch of write requests applied on top of the stored state.
pub struct WriteTxn {
    pub(super) db: Arc<DB>,
    batch: WriteBatch,
    pub(super) meta: Meta,
    /// Store revision when the batch started: what RocksDB itself holds.
    base_rev: i64,
    /// Latest value of every key changed in this batch (`None` = deleted).
    overlay: BTreeMap<Vec<u8>, Option<KeyValue>>,
    history: Vec<Change>,
    /// Changes made so far by the request in progress.
    sub: i64,
    /// The request in progress's writes, staged until it succeeds, and how to undo its
    /// overlay changes if it fails: a failed request leaves no trace.
    pub(super) staged: Vec<Staged>,
    undo: Vec<(Vec<u8>, Option<Option<KeyValue>>)>,
    history_mark: usize,
    commit_lock: Arc<std::sync::RwLock<()>>,
}

pub(super) enum Staged {
    Put(&'static str, Vec<u8>, Vec<u8>),
    Delete(&'static str, Vec<u8>),
}

impl WriteTxn {
    pub(crate) fn new(db: Arc<DB>, meta: Meta, commit_lock: Arc<std::sync::RwLock<()>>) -> WriteTxn {
        let base_rev = meta.revision;
        WriteTxn {
            db,
            batch: WriteBatch::default(),
            meta,
            base_rev,
            overlay: BTreeMap::new(),
            history: Vec::new(),
            sub: 0,
            staged: Vec::new(),
            undo: Vec::new(),
            history_mark: 0,
            commit_lock,
        }
    }

    /// Adds a raw write to the batch (outside any request; used for the alarm record).
    pub(super) fn stage_raw(&mut self, cf_name: &'static str, key: Vec<u8>, value: Vec<u8>) {
        if let Some(h) = self.db.cf_handle(cf_name) {
            self.batch.put_cf(h, key, value);
        }
    }

    /// Current store revision, counting requests already applied in this batch.
    pub fn revision(&self) -> i64 {
        self.meta.revision
    }

    /// The caller's bookkeeping as last committed (see [`WriteTxn::commit`]).
    pub fn applied(&self) -> &[u8] {
        &self.meta.applied
    }

    pub fn compacted(&self) -> i64 {
        self.meta.compacted
    }

    /// True when the batch holds changes not yet written to RocksDB.
    pub fn is_dirty(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Writes the batch and the meta record (with `applied`, the caller's bookkeeping) to
    /// RocksDB in one atomic write. Not fsynced: see the module docs of `mvcc`.
    pub fn commit(&mut self, applied: Vec<u8>) -> Result<()> {
        debug_assert!(self.staged.is_empty(), "commit inside a request");
        self.meta.applied = applied;
        let meta_cf = cf(&self.db, CF_META)?;
        self.batch.put_cf(meta_cf, b"meta", encode_meta(&self.meta));
        let batch = std::mem::take(&mut self.batch);
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        {
            let _exclusive = self.commit_lock.write().expect("commit lock");
            self.db.write_opt(batch, &wo)?;
        }
        self.overlay.clear();
        self.history.clear();
        self.base_rev = self.meta.revision;
        Ok(())
    }

    // ---- per-request bookkeeping -------------------------------------------------------

    /// Runs one request: its writes reach the batch only if it succeeds, and the revision
    /// moves on only when it changed something.
    pub(super) fn request<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.sub = 0;
        self.staged.clear();
        self.undo.clear();
        self.history_mark = self.history.len();
        match f(self) {
            Ok(v) => {
                for op in std::mem::take(&mut self.staged) {
                    match op {
                        Staged::Put(name, k, v) => self.batch.put_cf(cf(&self.db, name)?, k, v),
                        Staged::Delete(name, k) => self.batch.delete_cf(cf(&self.db, name)?, k),
                    }
                }
                if self.sub > 0 {
                    self.meta.revision += 1;
                }
                self.sub = 0;
                Ok(v)
            }
            Err(e) => {
                self.staged.clear();
                for (k, prev) in std::mem::take(&mut self.undo).into_iter().rev() {
                    match prev {
                        Some(v) => self.overlay.insert(k, v),
                        None => self.overlay.remove(&k),
                    };
                }
                self.history.truncate(self.history_mark);
                self.sub = 0;
                Err(e)
            }
        }
    }

    fn set_overlay(&mut self, key: &[u8], kv: Option<KeyValue>) {
        let prev = self.overlay.insert(key.to_vec(), kv);
        self.undo.push((key.to_vec(), prev));
    }

    /// The revision the request in progress sees (its own writes included).
    fn view_rev(&self) -> i64 {
        self.meta.revision + i64::from(self.sub > 0)
    }

    pub(super) fn latest(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        let latest = cf(&self.db, CF_LATEST)?;
        match self.db.get_cf(latest, key)? {
            Some(b) => Ok(Some(super::decode_kv(&b)?)),
            None => Ok(None),
        }
    }

    fn put_key(&mut self, key: &[u8], value: bytes::Bytes, lease: i64) -> Result<Option<KeyValue>> {
        let prev = self.latest(key)?;
        let rev = Revision::new(self.meta.revision + 1, self.sub);
        let kv = KeyValue {
            key: bytes::Bytes::copy_from_slice(key),
            create_revision: prev.as_ref().map_or(rev.main, |p| p.create_revision),
            mod_revision: rev.main,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        let enc = kv.encode_to_vec();
        let prev_lease = prev.as_ref().map_or(0, |p| p.lease);
        if prev_lease != lease {
            if prev_lease != 0 {
                self.staged
                    .push(Staged::Delete(CF_LEASE, lease_attach_key(prev_lease, key)));
            }
            if lease != 0 {
                self.staged
                    .push(Staged::Put(CF_LEASE, lease_attach_key(lease, key), Vec::new()));
            }
        }
        self.staged
            .push(Staged::Put(CF_KV, revision_key(rev, false), enc.clone()));
        self.staged.push(Staged::Put(CF_INDEX, index_key(key, rev), vec![0u8]));
        self.staged.push(Staged::Put(CF_LATEST, key.to_vec(), enc));
        self.set_overlay(key, Some(kv.clone()));
        self.history.push(Change {
            rev,
            key: key.to_vec(),
            kv: Some(kv),
        });
        self.sub += 1;
        Ok(prev)
    }

    /// Deletes a live key; `lease` is the lease it was attached to (0 for none).
    pub(super) fn delete_key(&mut self, key: &[u8], lease: i64) -> Result<()> {
        if lease != 0 {
            self.staged.push(Staged::Delete(CF_LEASE, lease_attach_key(lease, key)));
        }
        let rev = Revision::new(self.meta.revision + 1, self.sub);
        // etcd's tombstone: the key with only its deletion revision set.
        let tomb = KeyValue {
            key: bytes::Bytes::copy_from_slice(key),
            mod_revision: rev.main,
            ..Default::default()
        };
        self.staged
            .push(Staged::Put(CF_KV, revision_key(rev, true), tomb.encode_to_vec()));
        self.staged.push(Staged::Put(CF_INDEX, index_key(key, rev), vec![1u8]));
        self.staged.push(Staged::Delete(CF_LATEST, key.to_vec()));
        self.set_overlay(key, None);
        self.history.push(Change {
            rev,
            key: key.to_vec(),
            kv: None,
        });
        self.sub += 1;
        Ok(())
    }

    fn live_in(&self, range: &KeyRange) -> Result<Vec<KeyValue>> {
        let mut out = Vec::new();
        self.scan_latest(range, &mut |kv| {
            out.push(kv);
            true
        })?;
        Ok(out)
    }

    pub(super) fn header(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision: self.view_rev(),
            ..Default::default()
        })
    }

    // ---- requests ----------------------------------------------------------------------

    /// Applies a Put as one request.
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse> {
        self.check_put(req)?;
        let mut resp = self.request(|t| t.exec_put(req))?;
        resp.header = Some(ResponseHeader {
            revision: self.meta.revision,
            ..Default::default()
        });
        Ok(resp)
    }

    /// Applies a DeleteRange as one request.
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let mut resp = self.request(|t| t.exec_delete(req))?;
        resp.header = Some(ResponseHeader {
            revision: self.meta.revision,
            ..Default::default()
        });
        Ok(resp)
    }

    /// Applies a Txn as one request: all its writes share one revision.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse> {
        let path = self.compare_path(req)?;
        self.check_txn(req, &path)?;
        let mut resp = self.request(|t| t.exec_txn(req, &path))?;
        resp.header = Some(ResponseHeader {
            revision: self.meta.revision,
            ..Default::default()
        });
        Ok(resp)
    }

    /// Compacts history below `rev` and drops it physically. The batch must be clean (the
    /// caller commits pending requests first) so that every member deletes exactly the same
    /// entries whatever its batch boundaries.
    pub fn compact(&mut self, rev: i64) -> Result<CompactionResponse> {
        if rev <= self.meta.compacted {
            return Err(StoreError::Compacted);
        }
        if rev > self.meta.revision {
            return Err(StoreError::FutureRev);
        }
        if self.is_dirty() {
            return Err(StoreError::Internal("compaction inside a dirty batch".into()));
        }
        // Only the compacted revision moves here; each member removes the history it made
        // unreachable in bounded background steps (`compaction`).
        self.meta.compacted = rev;
        Ok(CompactionResponse {
            header: Some(ResponseHeader {
                revision: self.meta.revision,
                ..Default::default()
            }),
        })
    }

    // ---- validation against the state before the request --------------------------------

    fn check_put(&self, req: &PutRequest) -> Result<()> {
        if (req.ignore_value || req.ignore_lease) && self.latest(&req.key)?.is_none() {
            return Err(StoreError::KeyNotFound);
        }
        if !req.ignore_lease && req.lease != 0 && !self.lease_exists(req.lease)? {
            return Err(StoreError::LeaseNotFound);
        }
        Ok(())
    }

    /// True when lease `id` is granted and not revoked. (Lease commands commit alone, so
    /// the committed state is current.)
    pub(super) fn lease_exists(&self, id: i64) -> Result<bool> {
        Ok(self.db.get_cf(cf(&self.db, CF_LEASE)?, lease_record_key(id))?.is_some())
    }

    fn check_range(&self, req: &RangeRequest) -> Result<()> {
        if req.revision > self.meta.revision {
            return Err(StoreError::FutureRev);
        }
        if req.revision > 0 && req.revision < self.meta.compacted {
            return Err(StoreError::Compacted);
        }
        Ok(())
    }

    fn check_txn(&self, req: &TxnRequest, path: &TxnPath) -> Result<()> {
        let ops = if path.succeeded { &req.success } else { &req.failure };
        let mut nested = path.nested.iter();
        for op in ops {
            match &op.request {
                Some(Request::RequestPut(p)) => self.check_put(p)?,
                Some(Request::RequestRange(r)) => self.check_range(r)?,
                Some(Request::RequestTxn(t)) => {
                    let p = nested
                        .next()
                        .ok_or_else(|| StoreError::Internal("txn path mismatch".into()))?;
                    self.check_txn(t, p)?;
                }
                Some(Request::RequestDeleteRange(_)) => {}
                None => return Err(StoreError::KeyNotFound),
            }
        }
        Ok(())
    }

    fn compare_path(&self, req: &TxnRequest) -> Result<TxnPath> {
        let mut succeeded = true;
        for c in &req.compare {
            if !self.compare(c)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &req.success } else { &req.failure };
        let mut nested = Vec::new();
        for op in ops {
            if let Some(Request::RequestTxn(t)) = &op.request {
                nested.push(self.compare_path(t)?);
            }
        }
        Ok(TxnPath { succeeded, nested })
    }

    fn compare(&self, c: &Compare) -> Result<bool> {
        let kr = KeyRange::new(&c.key, &c.range_end);
        let kvs = self.live_in(&kr)?;
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        if kvs.is_empty() {
            if target == CompareTarget::Value {
                return Ok(false);
            }
            return Ok(compare_kv(c, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
    }

    // ---- execution ------------------------------------------------------------------------

    fn exec_put(&mut self, req: &PutRequest) -> Result<PutResponse> {
        let existing = if req.ignore_value || req.ignore_lease {
            self.latest(&req.key)?
        } else {
            None
        };
        let value = if req.ignore_value {
            existing
                .as_ref()
                .map(|kv| kv.value.clone())
                .ok_or(StoreError::KeyNotFound)?
        } else {
            req.value.clone()
        };
        let lease = if req.ignore_lease {
            existing.as_ref().map(|kv| kv.lease).ok_or(StoreError::KeyNotFound)?
        } else {
            req.lease
        };
        let prev = self.put_key(&req.key, value, lease)?;
        Ok(PutResponse {
            header: self.header(),
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    fn exec_delete(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let kr = KeyRange::new(&req.key, &req.range_end);
        let victims = if kr.is_empty() { Vec::new() } else { self.live_in(&kr)? };
        for kv in &victims {
            self.delete_key(&kv.key, kv.lease)?;
        }
        Ok(DeleteRangeResponse {
            header: self.header(),
            deleted: victims.len() as i64,
            prev_kvs: if req.prev_kv { victims } else { Vec::new() },
        })
    }

    fn exec_range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let RangeOutcome { kvs, more, count } = read::range(self, req)?;
        Ok(RangeResponse {
            header: self.header(),
            kvs,
            more,
            count,
        })
    }

    fn exec_txn(&mut self, req: &TxnRequest, path: &TxnPath) -> Result<TxnResponse> {
        let ops: &[RequestOp] = if path.succeeded { &req.success } else { &req.failure };
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match &op.request {
                Some(Request::RequestRange(r)) => Response::ResponseRange(self.exec_range(r)?),
                Some(Request::RequestPut(p)) => Response::ResponsePut(self.exec_put(p)?),
                Some(Request::RequestDeleteRange(d)) => Response::ResponseDeleteRange(self.exec_delete(d)?),
                Some(Request::RequestTxn(t)) => {
                    let p = nested
                        .next()
                        .ok_or_else(|| StoreError::Internal("txn path mismatch".into()))?;
                    Response::ResponseTxn(self.exec_txn(t, p)?)
                }
                None => return Err(StoreError::KeyNotFound),
            };
            responses.push(ResponseOp { response: Some(resp) });
        }
        Ok(TxnResponse {
            header: self.header(),
            succeeded: path.succeeded,
            responses,
        })
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    let ord = match target {
        CompareTarget::Value => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_ref().cmp(want)
        }
        CompareTarget::Version => kv.version.cmp(&int_target(c, |t| matches!(t, TargetUnion::Version(_)))),
        CompareTarget::Create => kv
            .create_revision
            .cmp(&int_target(c, |t| matches!(t, TargetUnion::CreateRevision(_)))),
        CompareTarget::Mod => kv
            .mod_revision
            .cmp(&int_target(c, |t| matches!(t, TargetUnion::ModRevision(_)))),
        CompareTarget::Lease => kv.lease.cmp(&int_target(c, |t| matches!(t, TargetUnion::Lease(_)))),
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

/// The integer a compare holds for its target; an unset or mismatched union reads as 0.
fn int_target(c: &Compare, is_target: impl Fn(&TargetUnion) -> bool) -> i64 {
    match &c.target_union {
        Some(t) if is_target(t) => match t {
            TargetUnion::Version(v)
            | TargetUnion::CreateRevision(v)
            | TargetUnion::ModRevision(v)
            | TargetUnion::Lease(v) => *v,
            TargetUnion::Value(_) => 0,
        },
        _ => 0,
    }
}

impl KvSource for WriteTxn {
    fn current_revision(&self) -> i64 {
        self.view_rev()
    }

    fn compacted_revision(&self) -> i64 {
        self.meta.compacted
    }

    fn scan_latest(&self, range: &KeyRange, f: &mut dyn FnMut(KeyValue) -> bool) -> Result<()> {
        // Merge RocksDB's view (the batch's starting state) with this batch's overlay.
        let mut merged: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
        let overlay_hit = |k: &[u8]| self.overlay.contains_key(k);
        scan_latest_db(&self.db, bounded, range, &mut |kv| {
            if !overlay_hit(&kv.key) {
                merged.insert(kv.key.to_vec(), kv);
            }
            true
        })?;
        for (k, v) in &self.overlay {
            if let Some(kv) = v
                && range.contains(k)
            {
                merged.insert(k.clone(), kv.clone());
            }
        }
        for (_, kv) in merged {
            if !f(kv) {
                break;
            }
        }
        Ok(())
    }

    fn scan_at(&self, range: &KeyRange, rev: i64, f: &mut dyn FnMut(KeyValue) -> bool) -> Result<()> {
        if rev <= self.base_rev {
            return scan_at_db(&self.db, bounded, range, rev, f);
        }
        // A revision made inside this batch: RocksDB's latest state plus the batch history.
        let mut state: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
        scan_latest_db(&self.db, bounded, range, &mut |kv| {
            state.insert(kv.key.to_vec(), kv);
            true
        })?;
        for ch in self
            .history
            .iter()
            .filter(|c| c.rev.main <= rev && range.contains(&c.key))
        {
            match &ch.kv {
                Some(kv) => state.insert(ch.key.clone(), kv.clone()),
                None => state.remove(&ch.key),
            };
        }
        for (_, kv) in state {
            if !f(kv) {
                break;
            }
        }
        Ok(())
    }
}

fn bounded(upper: Option<Vec<u8>>) -> ReadOptions {
    let mut o = ReadOptions::default();
    if let Some(u) = upper {
        o.set_iterate_upper_bound(u);
    }
    o
}
