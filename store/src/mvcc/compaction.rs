//! Physical compaction: removing the history a compaction made unreachable, in bounded
//! steps, after the compaction itself was applied.
//!
//! Applying a Compact only moves the compacted revision (one meta write, the same on every
//! member), so apply never holds a whole keyspace's worth of deletions in memory. Each
//! member then removes what the compaction dropped in the background: per user key, every
//! version at or below the compacted revision except the last one when it is a put. A step
//! scans at most a bounded number of index entries (finishing the user key it is in), and
//! writes its deletions together with its progress (the revision it works towards and the
//! index key to resume at), so a restart resumes where it stopped, and a snapshot carries
//! the progress along with the data.
//!
//! Until a step removed them, unreachable versions are still on disk but invisible: reads
//! below the compacted revision are refused, reads at or above it never pick them, history
//! for watchers starts at the compacted revision and skips a tombstone there (the
//! compaction drops it), and HashKV counts only what the compaction keeps, so members agree
//! on the hash however far each has got.

use rocksdb::{DB, IteratorMode, ReadOptions, SnapshotWithThreadMode, WriteBatch};
use serde::{Deserialize, Serialize};

use super::keys::{Revision, index_key, revision_key, split_index_key};
use super::{CF_INDEX, CF_KV, CF_META, Mvcc, cf, read_meta};
use crate::error::{Result, StoreError};

const PROGRESS_KEY: &[u8] = b"compaction";

/// How far physical compaction got (stored beside the meta record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Progress {
    /// Every version a compaction at this revision drops is gone.
    done: i64,
    /// The compacted revision the current pass works towards (above `done` while one runs).
    target: i64,
    /// The index key the current pass resumes at (empty: from the start).
    cursor: Vec<u8>,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do: history is removed up to this revision, the compacted one.
    Idle(i64),
    /// Removed part of it; more steps follow.
    More,
    /// The pass ended: history is removed up to this revision.
    Finished(i64),
}

fn read_progress(db: &DB) -> Result<Progress> {
    match db.get_cf(cf(db, CF_META)?, PROGRESS_KEY)? {
        None => Ok(Progress::default()),
        Some(b) => {
            bincode::deserialize(&b).map_err(|e| StoreError::Storage(format!("corrupt compaction progress: {e}")))
        }
    }
}

/// Whether the version of `key` at `rev` (a put, at or below `compacted`) survives a
/// compaction at `compacted`: only the newest version at or below it does.
pub(super) fn kept_by_compaction(
    db: &DB,
    snap: &SnapshotWithThreadMode<'_, DB>,
    key: &[u8],
    rev: Revision,
    compacted: i64,
) -> Result<bool> {
    let seek = index_key(key, Revision::new(compacted + 1, 0));
    let own = &seek[..seek.len() - 16];
    let mut opts = ReadOptions::default();
    opts.set_snapshot(snap);
    let mut it = db.iterator_cf_opt(
        cf(db, CF_INDEX)?,
        opts,
        IteratorMode::From(&seek, rocksdb::Direction::Reverse),
    );
    match it.next() {
        Some(item) => {
            let (k, _) = item?;
            Ok(split_index_key(&k).is_some_and(|(prefix, r)| prefix == own && r == rev))
        }
        None => Ok(false),
    }
}

impl Mvcc {
    /// The revision up to which compacted history has been removed from disk.
    pub fn compacted_physically(&self) -> Result<i64> {
        Ok(read_progress(&self.db())?.done)
    }

    /// One bounded step of physical compaction: scans at most `limit` index entries (more
    /// only to finish the user key it is in) and removes what the compaction dropped among
    /// them, in one write with the progress.
    pub fn compact_step(&self, limit: usize) -> Result<Step> {
        let db = self.db();
        let compacted = read_meta(&db)?.compacted;
        let mut p = read_progress(&db)?;
        if p.done >= compacted {
            return Ok(Step::Idle(p.done));
        }
        if p.target != compacted {
            // A new compaction (or the first): the entries already scanned may hold more
            // that it drops, so the pass starts over.
            p.target = compacted;
            p.cursor.clear();
        }
        let icf = cf(&db, CF_INDEX)?;
        let kcf = cf(&db, CF_KV)?;
        let mut batch = WriteBatch::default();
        // The current user key's versions at or below the target: (index key, revision, put).
        let mut group: Vec<(Vec<u8>, Revision, bool)> = Vec::new();
        let mut group_prefix: Vec<u8> = Vec::new();
        let mut drop_group = |group: &mut Vec<(Vec<u8>, Revision, bool)>| {
            let keep_last = group.last().is_some_and(|g| g.2);
            let n = group.len() - usize::from(keep_last);
            for (ikey, r, is_put) in group.drain(..n) {
                batch.delete_cf(icf, ikey);
                batch.delete_cf(kcf, revision_key(r, !is_put));
            }
            group.clear();
        };
        let mut resume_at = None;
        let entries = db.iterator_cf(icf, IteratorMode::From(&p.cursor, rocksdb::Direction::Forward));
        for (scanned, item) in entries.enumerate() {
            let (k, v) = item?;
            let (prefix, r) = split_index_key(&k).ok_or_else(|| StoreError::Storage("corrupt index key".into()))?;
            if prefix != group_prefix.as_slice() {
                drop_group(&mut group);
                if scanned >= limit {
                    resume_at = Some(k.to_vec());
                    break;
                }
                group_prefix = prefix.to_vec();
            }
            if r.main <= p.target {
                group.push((k.to_vec(), r, v.first().copied() == Some(0)));
            }
        }
        drop_group(&mut group);
        let step = match resume_at {
            Some(k) => {
                p.cursor = k;
                Step::More
            }
            None => {
                p.done = p.target;
                p.cursor.clear();
                Step::Finished(p.done)
            }
        };
        batch.put_cf(
            cf(&db, CF_META)?,
            PROGRESS_KEY,
            bincode::serialize(&p).expect("progress serializes"),
        );
        // Unlogged, like every state-machine write: a crash loses the step and its
        // progress together (one flush holds both or neither), and the pass redoes it.
        db.write_opt(batch, &super::unlogged())?;
        Ok(step)
    }
}
