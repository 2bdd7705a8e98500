//! Reading history for watchers: the changes made in a span of revisions, in revision
//! order, straight from the `kv` family (etcd's layout keeps every revision there until a
//! compaction drops it). Watchers catch up from here, so a slow watcher costs storage reads,
//! never memory that grows with its backlog.

use rocksdb::{DB, Direction, IteratorMode, ReadOptions, SnapshotWithThreadMode};

use super::compaction::kept_by_compaction;
use super::keys::{Revision, index_key, parse_revision_key, revision_key, split_index_key};
use super::read::read_meta_at;
use super::{CF_INDEX, CF_KV, CF_META, Mvcc, cf, decode_kv};
use crate::error::{Result, StoreError};
use crate::proto::mvccpb::KeyValue;

/// One change: a put (`deleted == false`, `kv` is the new version) or a delete (`kv` holds
/// only the key and the deletion revision, as etcd's DELETE events do).
#[derive(Debug, Clone)]
pub struct Change {
    pub rev: Revision,
    pub deleted: bool,
    pub kv: KeyValue,
    /// The version the change replaced, when asked for and still in history.
    pub prev: Option<KeyValue>,
}

/// The changes of revisions `from..=to`, read from one consistent view.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub changes: Vec<Change>,
    /// The store's compacted revision in that view: if `from` is below it, changes may be
    /// missing and the reader must not use them.
    pub compacted: i64,
    pub revision: i64,
}

fn corrupt_revision_key() -> StoreError {
    StoreError::Storage("corrupt revision key".into())
}

fn opts(snap: &SnapshotWithThreadMode<'_, DB>, upper: Option<Vec<u8>>) -> ReadOptions {
    let mut o = ReadOptions::default();
    o.set_snapshot(snap);
    if let Some(u) = upper {
        o.set_iterate_upper_bound(u);
    }
    o
}

impl Mvcc {
    /// The changes of revisions `from..=to` (`to` clamped to the current revision). With
    /// `with_prev`, each change also carries the version it replaced.
    pub fn history(&self, from: i64, to: i64, with_prev: bool) -> Result<History> {
        let db = self.db();
        let snap = db.snapshot();
        let meta = read_meta_at(&db, &snap)?;
        let to = to.min(meta.revision);
        let mut out = History {
            changes: Vec::new(),
            compacted: meta.compacted,
            revision: meta.revision,
        };
        if from > to || from < meta.compacted {
            return Ok(out);
        }
        let kcf = cf(&db, CF_KV)?;
        let start = revision_key(Revision::new(from.max(1), 0), false);
        let end = revision_key(Revision::new(to + 1, 0), false);
        for item in db.iterator_cf_opt(
            kcf,
            opts(&snap, Some(end)),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, v) = item?;
            let (rev, deleted) = parse_revision_key(&k).ok_or_else(corrupt_revision_key)?;
            if deleted && rev.main <= meta.compacted {
                // A tombstone at the compacted revision is dropped by the compaction, whether
                // or not it is physically gone yet.
                continue;
            }
            let kv = decode_kv(&v)?;
            out.changes.push(Change {
                rev,
                deleted,
                kv,
                prev: None,
            });
        }
        if with_prev {
            for c in &mut out.changes {
                c.prev = previous_version(&db, &snap, &c.kv.key, c.rev.main)?;
            }
        }
        Ok(out)
    }
}

/// The live version of `key` just before revision `rev`, if any and not compacted away.
fn previous_version(db: &DB, snap: &SnapshotWithThreadMode<'_, DB>, key: &[u8], rev: i64) -> Result<Option<KeyValue>> {
    let icf = cf(db, CF_INDEX)?;
    let seek = index_key(key, Revision::new(rev, 0));
    let own_prefix_len = seek.len() - 16;
    let mut it = db.iterator_cf_opt(icf, opts(snap, None), IteratorMode::From(&seek, Direction::Reverse));
    for item in it.by_ref() {
        let (k, v) = item?;
        let Some((prefix, r)) = split_index_key(&k) else {
            return Err(StoreError::Storage("corrupt index key".into()));
        };
        if prefix != &seek[..own_prefix_len] {
            return Ok(None);
        }
        if r.main >= rev {
            continue;
        }
        if v.first().copied() != Some(0) {
            return Ok(None);
        }
        return match snap.get_cf(cf(db, CF_KV)?, revision_key(r, false))? {
            Some(b) => Ok(Some(decode_kv(&b)?)),
            None => Ok(None),
        };
    }
    Ok(None)
}

/// What HashKV reports: a CRC-32C over the history up to a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    pub compacted: i64,
    pub revision: i64,
}

impl Mvcc {
    /// etcd's HashKV: CRC-32C (Castagnoli) over every retained revision key and record up to
    /// `rev` (0 = current), read from one consistent view. Members that applied the same
    /// history answer the same hash, whatever their batch boundaries.
    pub fn hash_kv(&self, rev: i64) -> Result<KvHash> {
        let db = self.db();
        let snap = db.snapshot();
        let meta = read_meta_at(&db, &snap)?;
        if rev > meta.revision {
            return Err(StoreError::FutureRev);
        }
        if rev > 0 && rev < meta.compacted {
            return Err(StoreError::Compacted);
        }
        let upto = if rev == 0 { meta.revision } else { rev };
        let end = revision_key(Revision::new(upto + 1, 0), false);
        let mut crc = 0u32;
        for item in db.iterator_cf_opt(cf(&db, CF_KV)?, opts(&snap, Some(end)), IteratorMode::Start) {
            let (k, v) = item?;
            let (rev, deleted) = parse_revision_key(&k).ok_or_else(corrupt_revision_key)?;
            if rev.main <= meta.compacted {
                // Only what the compaction keeps counts, removed from disk yet or not, so
                // every member hashes the same history.
                let key = decode_kv(&v)?.key;
                if deleted || !kept_by_compaction(&db, &snap, &key, rev, meta.compacted)? {
                    continue;
                }
            }
            crc = crc32c::crc32c_append(crc, &k);
            crc = crc32c::crc32c_append(crc, &v);
        }
        Ok(KvHash {
            hash: crc,
            compacted: meta.compacted,
            revision: meta.revision,
        })
    }

    /// etcd's Hash: CRC-32C over the whole key-value state (every family except the
    /// bookkeeping record, which also holds member-local Raft positions).
    pub fn hash_all(&self) -> Result<(u32, i64)> {
        let db = self.db();
        let snap = db.snapshot();
        let meta = read_meta_at(&db, &snap)?;
        let mut crc = 0u32;
        for name in super::FAMILIES {
            if name == CF_META {
                continue;
            }
            crc = crc32c::crc32c_append(crc, name.as_bytes());
            for item in db.iterator_cf_opt(cf(&db, name)?, opts(&snap, None), IteratorMode::Start) {
                let (k, v) = item?;
                if super::pending(name, &k, meta.revision) {
                    continue;
                }
                crc = crc32c::crc32c_append(crc, &k);
                crc = crc32c::crc32c_append(crc, &v);
            }
        }
        Ok((crc, meta.revision))
    }

    /// Defragment: flushes and rewrites every family so deleted and compacted data leaves
    /// the files. Online and crash-safe: RocksDB installs each compaction's output
    /// atomically, and nothing logical changes.
    pub fn defragment(&self) -> Result<()> {
        let db = self.db();
        // All families in one flush: one family flushed on its own would put on disk a
        // state that no whole batch ever had (the writes are unlogged; see the module docs).
        super::flush_all(&db)?;
        for name in super::FAMILIES {
            db.compact_range_cf(cf(&db, name)?, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }
}
