//! The read path: Range at the current or a past revision, with etcd's limit, count, sort
//! and revision-filter semantics. The same algorithm serves consistent snapshot reads
//! ([`ReadView`]) and reads inside a write transaction (which must see its own writes).

use rocksdb::{DB, Direction, IteratorMode, ReadOptions, SnapshotWithThreadMode};

use super::keys::{KeyRange, Revision, revision_key, split_index_key};
use super::{CF_INDEX, CF_KV, CF_LATEST, Meta, decode_kv};
use crate::error::{Result, StoreError};
use crate::proto::etcdserverpb::RangeRequest;
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::mvccpb::KeyValue;

/// Where a range reads from.
pub(crate) trait KvSource {
    fn current_revision(&self) -> i64;
    fn compacted_revision(&self) -> i64;
    /// Visits live keys of `range` at the current revision in ascending key order until the
    /// visitor returns false.
    fn scan_latest(&self, range: &KeyRange, f: &mut dyn FnMut(KeyValue) -> bool) -> Result<()>;
    /// Visits the keys of `range` live at revision `rev` (< current) in ascending key order.
    fn scan_at(&self, range: &KeyRange, rev: i64, f: &mut dyn FnMut(KeyValue) -> bool) -> Result<()>;
}

/// The result of a Range before it is wrapped in a response.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RangeOutcome {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

/// Checks a requested revision against the store's window: 0 (or less) means current.
pub(crate) fn check_revision(requested: i64, current: i64, compacted: i64) -> Result<i64> {
    let rev = if requested <= 0 { current } else { requested };
    if rev > current {
        return Err(StoreError::FutureRev);
    }
    if rev < compacted {
        return Err(StoreError::Compacted);
    }
    Ok(rev)
}

/// etcd's Range semantics over any source.
pub(crate) fn range(src: &dyn KvSource, req: &RangeRequest) -> Result<RangeOutcome> {
    let current = src.current_revision();
    let rev = check_revision(req.revision, current, src.compacted_revision())?;
    let kr = KeyRange::new(&req.key, &req.range_end);
    if kr.is_empty() {
        return Ok(RangeOutcome::default());
    }
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // Keys come out in ascending key order; only then can the fetch stop early.
    let presorted = !filtered && target == SortTarget::Key && order != SortOrder::Descend;
    let fetch_cap = if presorted && req.limit > 0 {
        req.limit as usize + 1
    } else {
        usize::MAX
    };

    let mut kvs = Vec::new();
    let mut count: i64 = 0;
    let mut visit = |kv: KeyValue| {
        count += 1;
        if !req.count_only && kvs.len() < fetch_cap {
            kvs.push(kv);
        }
        true
    };
    if rev == current {
        src.scan_latest(&kr, &mut visit)?;
    } else {
        src.scan_at(&kr, rev, &mut visit)?;
    }

    if req.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
    }
    if req.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
    }
    if req.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
    }
    if req.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
    }

    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    if order != SortOrder::None {
        fn key_of(target: SortTarget, kv: &KeyValue) -> SortKey<'_> {
            match target {
                SortTarget::Key => SortKey::Bytes(&kv.key),
                SortTarget::Version => SortKey::Int(kv.version),
                SortTarget::Create => SortKey::Int(kv.create_revision),
                SortTarget::Mod => SortKey::Int(kv.mod_revision),
                SortTarget::Value => SortKey::Bytes(&kv.value),
            }
        }
        match order {
            SortOrder::Descend => kvs.sort_by(|a, b| key_of(target, b).cmp(&key_of(target, a))),
            _ => kvs.sort_by(|a, b| key_of(target, a).cmp(&key_of(target, b))),
        }
    }

    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Default::default();
        }
    }
    Ok(RangeOutcome { kvs, more, count })
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum SortKey<'a> {
    Int(i64),
    Bytes(&'a [u8]),
}

/// A consistent point-in-time view of the store (a RocksDB snapshot).
pub struct ReadView {
    db: std::sync::Arc<DB>,
}

impl ReadView {
    pub(crate) fn new(db: std::sync::Arc<DB>) -> Result<ReadView> {
        Ok(ReadView { db })
    }

    /// Runs `f` against one snapshot of the store.
    pub fn with<T>(&self, f: impl FnOnce(&SnapshotSource<'_>) -> Result<T>) -> Result<T> {
        let snap = self.db.snapshot();
        let meta = read_meta_at(&self.db, &snap)?;
        let src = SnapshotSource {
            db: &self.db,
            snap,
            meta,
        };
        f(&src)
    }
}

/// The meta record as of `snap`.
pub(super) fn read_meta_at(db: &DB, snap: &SnapshotWithThreadMode<'_, DB>) -> Result<Meta> {
    super::decode_meta(
        &snap
            .get_cf(super::cf(db, super::CF_META)?, b"meta")?
            .unwrap_or_default(),
    )
}

/// A snapshot of the database plus the meta record as of that snapshot.
pub struct SnapshotSource<'a> {
    db: &'a DB,
    snap: SnapshotWithThreadMode<'a, DB>,
    meta: Meta,
}

impl SnapshotSource<'_> {
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// etcd Range at this snapshot.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeOutcome> {
        range(self, req)
    }

    fn opts(&self, upper: Option<Vec<u8>>) -> ReadOptions {
        let mut o = ReadOptions::default();
        o.set_snapshot(&self.snap);
        if let Some(u) = upper {
            o.set_iterate_upper_bound(u);
        }
        o
    }
}

impl KvSource for SnapshotSource<'_> {
    fn current_revision(&self) -> i64 {
        self.meta.revision
    }
    fn compacted_revision(&self) -> i64 {
        self.meta.compacted
    }
    fn scan_latest(&self, range: &KeyRange, f: &mut dyn FnMut(KeyValue) -> bool) -> Result<()> {
        scan_latest_db(self.db, |upper| self.opts(upper), range, f)
    }
    fn scan_at(&self, range: &KeyRange, rev: i64, f: &mut dyn FnMut(KeyValue) -> bool) -> Result<()> {
        scan_at_db(self.db, |upper| self.opts(upper), range, rev, f)
    }
}

/// Scans the `latest` family over `range`.
pub(crate) fn scan_latest_db(
    db: &DB,
    opts: impl Fn(Option<Vec<u8>>) -> ReadOptions,
    range: &KeyRange,
    f: &mut dyn FnMut(KeyValue) -> bool,
) -> Result<()> {
    scan_latest_raw(db, opts, range, &mut |_, v| Ok(f(decode_kv(v)?)))
}

/// Visits a stored key and its encoded record; answers whether to go on.
pub(crate) type RawVisit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// Scans the `latest` family over `range` as stored: each live key with its encoded record,
/// in key order, until `f` answers false. For callers that need less than the whole record.
pub(crate) fn scan_latest_raw(
    db: &DB,
    opts: impl Fn(Option<Vec<u8>>) -> ReadOptions,
    range: &KeyRange,
    f: &mut RawVisit<'_>,
) -> Result<()> {
    let cf = db
        .cf_handle(CF_LATEST)
        .ok_or_else(|| StoreError::Storage("missing latest column family".into()))?;
    match range {
        KeyRange::Single(k) => {
            if let Some(v) = db.get_cf_opt(&cf, k, &opts(None))? {
                f(k, &v)?;
            }
        }
        KeyRange::Span { start, end } => {
            let it = db.iterator_cf_opt(&cf, opts(end.clone()), IteratorMode::From(start, Direction::Forward));
            for item in it {
                let (k, v) = item?;
                if !f(&k, &v)? {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// A key's newest revision at or below the read revision, and whether it is a put.
type Visible = (Revision, bool);

/// Scans the `index` family over `range` and yields each key's version live at `rev`.
pub(crate) fn scan_at_db(
    db: &DB,
    opts: impl Fn(Option<Vec<u8>>) -> ReadOptions,
    range: &KeyRange,
    rev: i64,
    f: &mut dyn FnMut(KeyValue) -> bool,
) -> Result<()> {
    let icf = db
        .cf_handle(CF_INDEX)
        .ok_or_else(|| StoreError::Storage("missing index column family".into()))?;
    let kcf = db
        .cf_handle(CF_KV)
        .ok_or_else(|| StoreError::Storage("missing kv column family".into()))?;
    let (lo, hi) = range.index_bounds();
    let it = db.iterator_cf_opt(&icf, opts(hi), IteratorMode::From(&lo, Direction::Forward));
    // Per encoded user key: the newest revision at or below `rev`, and whether it is a put.
    let mut group: Option<(Vec<u8>, Option<Visible>)> = None;
    let emit = |best: Option<Visible>, f: &mut dyn FnMut(KeyValue) -> bool| -> Result<bool> {
        if let Some((r, true)) = best {
            let v = db
                .get_cf_opt(&kcf, revision_key(r, false), &opts(None))?
                .ok_or_else(|| StoreError::Storage(format!("index points at missing revision {}_{}", r.main, r.sub)))?;
            return Ok(f(decode_kv(&v)?));
        }
        Ok(true)
    };
    for item in it {
        let (k, v) = item?;
        let (prefix, r) = split_index_key(&k).ok_or_else(|| StoreError::Storage("corrupt index key".into()))?;
        let same = group.as_ref().is_some_and(|(p, _)| p.as_slice() == prefix);
        if !same {
            if let Some((_, best)) = group.take()
                && !emit(best, f)?
            {
                return Ok(());
            }
            group = Some((prefix.to_vec(), None));
        }
        if r.main <= rev {
            let is_put = v.first().copied() == Some(0);
            if let Some((_, best)) = group.as_mut() {
                *best = Some((r, is_put));
            }
        }
    }
    if let Some((_, best)) = group.take() {
        emit(best, f)?;
    }
    Ok(())
}
