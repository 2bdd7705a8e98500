//! The write path: applies write requests (Put, DeleteRange, Txn, Compact) to a RocksDB
//! WriteBatch. Many requests share one batch; [`WriteTxn::commit`] writes the batch together
//! with the [`Meta`] record, so data and "how far we applied" never disagree.
//!
//! Requests later in a batch must see the writes of earlier ones before anything reaches
//! RocksDB, so the transaction keeps an overlay of changed keys and of this batch's history.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use rocksdb::{DB, ReadOptions, WriteBatch};

use super::keys::{KeyRange, Revision, index_key, lease_attach_key, lease_record_key, revision_key};
use super::read::{self, KvSource, RangeOutcome, scan_at_db, scan_latest_db, scan_latest_raw};
use super::{CF_INDEX, CF_KV, CF_LATEST, CF_LEASE, CF_META, Meta, cf, decode_kv, decode_lease, encode_meta};
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
    /// Shared with the overlay and the stored record: one copy of the key per change.
    key: Bytes,
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
    /// Latest value of every key changed in this batch (`None` = deleted): always the
    /// key's last change in `history`, which is how a failed request's changes are undone.
    overlay: BTreeMap<Bytes, Option<KeyValue>>,
    history: Vec<Change>,
    /// Changes made so far by the request in progress.
    sub: i64,
    /// Whether the request in progress writes straight into the batch (it started the
    /// batch, so clearing the batch undoes it) or stages its writes in `staged` until it
    /// succeeds (it joined a batch holding other requests' writes). Either way a failed
    /// request leaves no trace, and a large request that starts its batch (a DeleteRange
    /// of many keys, say) is not held in memory twice.
    direct: bool,
    staged: Vec<Staged>,
    /// Whether the request in progress (a large DeleteRange alone in its batch) writes its
    /// history records to RocksDB ahead of the batch, in pieces: see [`WriteTxn::write_ahead`].
    ahead: bool,
    /// Where the request in progress's changes start in `history`.
    history_mark: usize,
    commit_lock: Arc<std::sync::RwLock<()>>,
}

/// Lower and upper bound of a key range, for `BTreeMap::range`.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Makes a stored key and its encoded record into what a scan's caller needs.
type DecodeLive = dyn Fn(&[u8], &[u8]) -> Result<KeyValue>;

/// One write of a request, to a column family.
pub(super) enum Staged {
    Put(&'static str, Vec<u8>, Vec<u8>),
    Delete(&'static str, Vec<u8>),
    /// Every key from the first up to (not including) the second.
    DeleteRange(&'static str, Vec<u8>, Vec<u8>),
}

/// From this many keys on, a DeleteRange drops the keys' latest records with one RocksDB
/// range deletion instead of one deletion each. The history (a tombstone revision and an
/// index entry per key) is still written key by key, as etcd's is; only the third write per
/// key goes, which for a `check perf` cleanup of 180,000 keys is 46 MB less to log and to
/// insert into the memtable. Below this, point deletions keep the column free of range
/// tombstones that every later read would have to consult.
const RANGE_DELETION_MIN_KEYS: usize = 1_000;

/// Size of the pieces a large DeleteRange writes its history in ([`WriteTxn::write_ahead`]),
/// and the room one more key's records may take past it.
const AHEAD_PIECE_BYTES: usize = 4 << 20;
const AHEAD_PIECE_SLACK: usize = 64 << 10;

/// Whether a stored record is history written ahead of its batch by a large DeleteRange
/// (see [`WriteTxn::write_ahead`]): a `kv` or `index` record above the store `revision`
/// as the same view's meta record gives it. Such records are not part of the state yet;
/// whatever copies or hashes all records leaves them out.
pub fn pending(family: &str, key: &[u8], revision: i64) -> bool {
    let rev = match family {
        CF_KV => super::keys::parse_revision_key(key).map(|(r, _)| r),
        CF_INDEX => super::keys::split_index_key(key).map(|(_, r)| r),
        _ => None,
    };
    rev.is_some_and(|r| r.main > revision)
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
            direct: false,
            staged: Vec::new(),
            ahead: false,
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
    /// RocksDB in one atomic write, to the memtables only: see the module docs of `mvcc`.
    /// Waits while a read-only txn evaluates (see [`super::Mvcc::read_only_txn`]).
    pub fn commit(&mut self, applied: Vec<u8>) -> Result<()> {
        let lock = self.commit_lock.clone();
        let _exclusive = lock.write().expect("commit lock");
        self.write_batch(applied)
    }

    /// [`WriteTxn::commit`] if no read-only txn is evaluating; otherwise `false`, and
    /// nothing was done (for a caller that must not wait, such as an async task).
    pub fn try_commit(&mut self, applied: Vec<u8>) -> Result<bool> {
        let lock = self.commit_lock.clone();
        let _exclusive = match lock.try_write() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
            Err(std::sync::TryLockError::Poisoned(e)) => panic!("commit lock: {e}"),
        };
        self.write_batch(applied)?;
        Ok(true)
    }

    /// The write of [`WriteTxn::commit`], under the exclusive commit lock.
    fn write_batch(&mut self, applied: Vec<u8>) -> Result<()> {
        debug_assert!(self.staged.is_empty(), "commit inside a request");
        self.meta.applied = applied;
        let meta_cf = cf(&self.db, CF_META)?;
        self.batch.put_cf(meta_cf, b"meta", encode_meta(&self.meta));
        let batch = std::mem::take(&mut self.batch);
        self.db.write_opt(batch, &super::unlogged())?;
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
        self.direct = self.batch.is_empty();
        self.history_mark = self.history.len();
        let outcome = f(self);
        let outcome = match outcome {
            Ok(v) => self.write_staged().map(|()| v),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(v) => {
                if self.sub > 0 {
                    self.meta.revision += 1;
                }
                self.sub = 0;
                self.direct = false;
                self.ahead = false;
                Ok(v)
            }
            Err(e) => {
                if self.direct {
                    self.batch.clear();
                }
                self.staged.clear();
                self.undo_overlay();
                self.sub = 0;
                self.direct = false;
                // Pieces written ahead stay, unseen (above the revision) until the next
                // request at this revision overwrites them: only if that request writes as
                // many records. It would not, so a failure after writing ahead (storage
                // errors only: the request's victims were known) must fail the apply.
                if std::mem::take(&mut self.ahead) {
                    return Err(StoreError::Storage(format!(
                        "a DeleteRange failed after writing its history ahead: {e}"
                    )));
                }
                Err(e)
            }
        }
    }

    /// Adds one write of the request in progress: to the batch at once, or to `staged`.
    pub(super) fn write(&mut self, op: Staged) -> Result<()> {
        if !self.direct {
            self.staged.push(op);
            return Ok(());
        }
        if self.ahead {
            return self.write_ahead(op);
        }
        self.add_to_batch(op)
    }

    /// A write of a large DeleteRange alone in its batch. Its history records (a tombstone
    /// and an index entry per key, each carrying the key: 600 bytes a key for 256-byte keys)
    /// go to RocksDB in pieces of [`AHEAD_PIECE_BYTES`] while the keys are visited, and
    /// everything else (the `latest` deletion, lease detachments) waits for the batch, which
    /// commits with the meta record as always. One batch of it all grew to 100 MB for the
    /// `check perf` cleanup, and filling that much fresh memory was most of the apply's time.
    ///
    /// The records written ahead are at the revision the batch will commit (meta's plus
    /// one), which nothing reads until the meta record says the store reached it: reads and
    /// watch history stop at the meta revision, and snapshots and hashes leave records above
    /// it out ([`pending`]). A crash that keeps some pieces but not the batch leaves them
    /// for the replay of the same entry, which visits the same keys (`latest` did not
    /// change) and writes the same records at the same revisions over them.
    fn write_ahead(&mut self, op: Staged) -> Result<()> {
        match op {
            Staged::Put(name, ..) if name == CF_KV || name == CF_INDEX => {
                self.add_to_batch(op)?;
                if self.batch.size_in_bytes() >= AHEAD_PIECE_BYTES {
                    let piece = std::mem::replace(
                        &mut self.batch,
                        WriteBatch::with_capacity_bytes(AHEAD_PIECE_BYTES + AHEAD_PIECE_SLACK),
                    );
                    self.db.write_opt(piece, &super::unlogged())?;
                }
                Ok(())
            }
            other => {
                self.staged.push(other);
                Ok(())
            }
        }
    }

    /// Moves a succeeded request's staged writes into the batch, in order.
    fn write_staged(&mut self) -> Result<()> {
        for op in std::mem::take(&mut self.staged) {
            self.add_to_batch(op)?;
        }
        Ok(())
    }

    fn add_to_batch(&mut self, op: Staged) -> Result<()> {
        match op {
            Staged::Put(name, k, v) => self.batch.put_cf(cf(&self.db, name)?, k, v),
            Staged::Delete(name, k) => self.batch.delete_cf(cf(&self.db, name)?, k),
            Staged::DeleteRange(name, from, to) => self.batch.delete_range_cf(cf(&self.db, name)?, from, to),
        }
        Ok(())
    }

    /// Forgets the failed request's changes: each key it touched gets back its last change
    /// from earlier in the batch, or leaves the overlay if it had none.
    fn undo_overlay(&mut self) {
        let failed = self.history.split_off(self.history_mark);
        let touched: HashSet<&Bytes> = failed.iter().map(|c| &c.key).collect();
        let mut before: HashMap<&Bytes, &Option<KeyValue>> = HashMap::new();
        for c in self.history.iter().filter(|c| touched.contains(&c.key)) {
            before.insert(&c.key, &c.kv);
        }
        for key in touched {
            match before.get(key) {
                Some(kv) => self.overlay.insert(key.clone(), (*kv).clone()),
                None => self.overlay.remove(key),
            };
        }
    }

    /// Records a change of the request in progress in the overlay and the history.
    fn record(&mut self, rev: Revision, key: Bytes, kv: Option<KeyValue>) {
        self.overlay.insert(key.clone(), kv.clone());
        self.history.push(Change { rev, key, kv });
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

    fn put_key(&mut self, key: &Bytes, value: Bytes, lease: i64) -> Result<Option<KeyValue>> {
        let prev = self.latest(key)?;
        let rev = Revision::new(self.meta.revision + 1, self.sub);
        let kv = KeyValue {
            key: key.clone(),
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
                self.write(Staged::Delete(CF_LEASE, lease_attach_key(prev_lease, key)))?;
            }
            if lease != 0 {
                self.write(Staged::Put(CF_LEASE, lease_attach_key(lease, key), Vec::new()))?;
            }
        }
        self.write(Staged::Put(CF_KV, revision_key(rev, false), enc.clone()))?;
        self.write(Staged::Put(CF_INDEX, index_key(key, rev), vec![0u8]))?;
        self.write(Staged::Put(CF_LATEST, key.to_vec(), enc))?;
        self.record(rev, key.clone(), Some(kv));
        self.sub += 1;
        Ok(prev)
    }

    /// Deletes a live key; `lease` is the lease it was attached to (0 for none).
    pub(super) fn delete_key(&mut self, key: &Bytes, lease: i64) -> Result<()> {
        self.delete_key_history(key, lease)?;
        self.write(Staged::Delete(CF_LATEST, key.to_vec()))
    }

    /// [`WriteTxn::delete_key`] but for the key's latest record, which the caller drops
    /// (with a range deletion covering many keys).
    fn delete_key_history(&mut self, key: &Bytes, lease: i64) -> Result<()> {
        if lease != 0 {
            self.write(Staged::Delete(CF_LEASE, lease_attach_key(lease, key)))?;
        }
        let rev = Revision::new(self.meta.revision + 1, self.sub);
        // etcd's tombstone: the key with only its deletion revision set.
        let tomb = KeyValue {
            key: key.clone(),
            mod_revision: rev.main,
            ..Default::default()
        };
        self.write(Staged::Put(CF_KV, revision_key(rev, true), tomb.encode_to_vec()))?;
        self.write(Staged::Put(CF_INDEX, index_key(key, rev), vec![1u8]))?;
        self.record(rev, key.clone(), None);
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

    /// The live keys in `range` with their leases only (no values): what a delete without
    /// `prev_kv` needs, at a fraction of the copying when it covers many keys.
    fn live_keys_in(&self, range: &KeyRange) -> Result<Vec<KeyValue>> {
        let mut out = Vec::new();
        let key_and_lease = |k: &[u8], v: &[u8]| {
            Ok(KeyValue {
                key: bytes::Bytes::copy_from_slice(k),
                lease: decode_lease(v)?,
                ..Default::default()
            })
        };
        self.scan_live(range, &key_and_lease, &mut |kv| {
            out.push(kv);
            true
        })?;
        Ok(out)
    }

    /// This batch's changes to keys in `range`, in key order (`None` = deleted).
    fn overlay_in(&self, range: &KeyRange) -> impl Iterator<Item = (&Bytes, &Option<KeyValue>)> {
        let bounds: Option<KeyBounds<'_>> = match range {
            KeyRange::Single(k) => Some((Bound::Included(k), Bound::Included(k))),
            KeyRange::Span { start, end: Some(end) } if end <= start => None,
            KeyRange::Span { start, end } => Some((
                Bound::Included(start),
                end.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
            )),
        };
        bounds.map(|b| self.overlay.range::<[u8], _>(b)).into_iter().flatten()
    }

    /// The live keys in `range` as this batch sees them, in key order: RocksDB's state (as
    /// the batch started) merged with the batch's overlay, which wins where both hold a key.
    /// `decode` makes a stored record into what the caller needs (all of it, or less);
    /// overlay entries are passed whole. Stops when `f` answers false.
    fn scan_live(&self, range: &KeyRange, decode: &DecodeLive, f: &mut dyn FnMut(KeyValue) -> bool) -> Result<()> {
        let mut changed = self.overlay_in(range).peekable();
        let mut stopped = false;
        scan_latest_raw(&self.db, bounded, range, &mut |k, v| {
            // The batch's changes to keys sorting up to this stored one come first; a change
            // to this very key replaces the stored record.
            while let Some((ck, cv)) = changed.next_if(|(ck, _)| ck.as_ref() <= k) {
                if let Some(kv) = cv
                    && !f(kv.clone())
                {
                    stopped = true;
                    return Ok(false);
                }
                if ck.as_ref() == k {
                    return Ok(true);
                }
            }
            if !f(decode(k, v)?) {
                stopped = true;
                return Ok(false);
            }
            Ok(true)
        })?;
        if !stopped {
            for kv in changed.filter_map(|(_, cv)| cv.as_ref()) {
                if !f(kv.clone()) {
                    break;
                }
            }
        }
        Ok(())
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
        let victims = if kr.is_empty() {
            Vec::new()
        } else if req.prev_kv {
            self.live_in(&kr)?
        } else {
            self.live_keys_in(&kr)?
        };
        match (victims.first(), victims.last()) {
            (Some(first), Some(last)) if victims.len() >= RANGE_DELETION_MIN_KEYS => {
                // Alone in its batch: its history goes to RocksDB ahead, in pieces.
                self.ahead = self.direct;
                for kv in &victims {
                    self.delete_key_history(&kv.key, kv.lease)?;
                }
                // Every key between the first and the last victim is in the range, and every
                // live one among them is a victim: the deletion covers exactly the victims
                // (and keys deleted already).
                let mut past_last = last.key.to_vec();
                past_last.push(0);
                self.write(Staged::DeleteRange(CF_LATEST, first.key.to_vec(), past_last))?;
            }
            _ => {
                for kv in &victims {
                    self.delete_key(&kv.key, kv.lease)?;
                }
            }
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
        self.scan_live(range, &|_, v| decode_kv(v), f)
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
                Some(kv) => state.insert(ch.key.to_vec(), kv.clone()),
                None => state.remove(ch.key.as_ref()),
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
