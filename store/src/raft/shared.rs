//! The state machine's state shared with the read path: the MVCC store, the applied index
//! and revision (as watch channels), alarms, the auth store and simple tokens, published
//! member attributes, the lease clock's deadlines, and the member's snapshot directory.
//!
//! openraft's state-machine task writes it (`state_machine`); the member reads it. The
//! Raft bookkeeping stored with every applied batch ([`AppliedState`]) lives here too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::snapshot;
use super::snapshot_files::{SCRATCH, SCRATCH_EXTENSIONS};
use super::{LogId, SnapshotMeta, StoredMembership};
use crate::apply::MemberAttributes;
use crate::auth::AuthState;
use crate::auth::tokens::SimpleTokens;
use crate::lease::Lessor;
use crate::mvcc::Mvcc;
use crate::proto::etcdserverpb::{AlarmMember, AlarmType};

pub(super) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Raft bookkeeping stored inside the MVCC meta record (atomically with the data).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub members: BTreeMap<u64, MemberAttributes>,
}

impl AppliedState {
    pub fn decode(b: &[u8]) -> std::io::Result<AppliedState> {
        if b.is_empty() {
            return Ok(AppliedState::default());
        }
        bincode::deserialize(b).map_err(|e| std::io::Error::other(format!("corrupt applied state: {e}")))
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("applied state serializes")
    }
}

/// The Raft position a store's meta record says its data reflects.
pub(super) fn snapshot_meta_of(m: &crate::mvcc::Meta) -> std::io::Result<SnapshotMeta> {
    let s = AppliedState::decode(&m.applied)?;
    Ok(SnapshotMeta {
        last_log_id: s.last_applied,
        last_membership: s.membership,
    })
}

/// Shared between openraft's state-machine task and the read path.
pub struct Shared {
    pub mvcc: Mvcc,
    /// Holds `db-<n>` instance directories and the `CURRENT_DB` pointer naming the live one.
    pub(super) root: PathBuf,
    pub(super) generation: Mutex<u64>,
    pub(super) snap_dir: PathBuf,
    pub(super) applied_tx: watch::Sender<u64>,
    /// Index of an applied entry known to be on disk with everything before it (0 when not
    /// known): each flush records the applied index it covered. It lets the log's purge skip
    /// a flush that an earlier one (the snapshot build's) already made.
    pub(super) durable: AtomicU64,
    pub(super) revision_tx: watch::Sender<i64>,
    /// The compacted revision as of the last applied batch, set before `revision_tx` moves,
    /// so anyone woken by a new revision sees the compaction that came with it.
    pub(super) compacted: AtomicI64,
    /// The member's current snapshot: a checkpoint it built, or a file it received.
    pub(super) current: Mutex<Option<(SnapshotMeta, PathBuf)>>,
    pub(super) members: Mutex<BTreeMap<u64, MemberAttributes>>,
    /// Lease deadlines, fed by applied grants and revokes.
    pub lessor: Lessor,
    pub(super) alarms: Mutex<Vec<AlarmMember>>,
    /// The auth store as of the last applied batch (replaced whole on change).
    pub(super) auth: Mutex<Arc<AuthState>>,
    /// The simple tokens this member learned from applied Authenticate commands.
    pub tokens: SimpleTokens,
}

impl Shared {
    /// Index of the last applied log entry; changes as entries are applied.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// Makes everything applied so far durable (flushes the memtables), and remembers up to
    /// which entry it did.
    pub fn sync(&self) -> std::io::Result<()> {
        // Published only after its batch was written: the flush below covers it.
        let covered = *self.applied_tx.borrow();
        self.mvcc.sync().map_err(io_err)?;
        self.durable.fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }

    /// Makes the state durable through log entry `index`: nothing to do when a flush since
    /// it was applied has already done so (the purge after a snapshot, whose build flushed),
    /// a flush otherwise.
    pub fn sync_through(&self, index: u64) -> std::io::Result<()> {
        if self.durable.load(Ordering::Acquire) >= index {
            return Ok(());
        }
        self.sync()
    }

    /// Store revision after the last applied batch.
    pub fn revision(&self) -> watch::Receiver<i64> {
        self.revision_tx.subscribe()
    }

    /// The compacted revision as of the last applied batch (in memory, no storage read).
    pub fn compacted(&self) -> i64 {
        self.compacted.load(Ordering::Acquire)
    }

    /// Where snapshot files live (received ones are written here too).
    pub fn snapshot_dir(&self) -> &Path {
        &self.snap_dir
    }

    /// A fresh path in the snapshot directory for a file being written (a received
    /// snapshot, a build, a client export): unique within this process, so concurrent
    /// transfers never share a file, and named with an extension that neither counts as a
    /// snapshot nor survives a restart (`ext` is one of [`SCRATCH_EXTENSIONS`]).
    pub fn scratch_path(&self, what: &str, ext: &str) -> PathBuf {
        debug_assert!(SCRATCH_EXTENSIONS.contains(&ext));
        let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
        self.snap_dir.join(format!("{what}-{}-{n}.{ext}", std::process::id()))
    }

    /// Writes a consistent image of the state machine to `path` (the snapshot file format)
    /// and returns the Raft position it reflects.
    pub(super) fn export(&self, path: &Path) -> std::io::Result<SnapshotMeta> {
        let db = self.mvcc.db();
        snapshot::write(&db, path, snapshot_meta_of)
    }

    /// Writes a consistent image of the state machine to `path` for a client (the snapshot
    /// file format) and returns the log index it reflects.
    pub fn export_for_client(&self, path: &Path) -> std::io::Result<u64> {
        let meta = self.export(path)?;
        Ok(meta.last_log_id.as_ref().map_or(0, |l| l.index))
    }

    /// Active alarms as of the last applied batch.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.alarms.lock().expect("alarms lock").clone()
    }

    /// True when an alarm of this type is active on any member.
    pub fn alarm_active(&self, t: AlarmType) -> bool {
        self.alarms
            .lock()
            .expect("alarms lock")
            .iter()
            .any(|a| a.alarm == t as i32)
    }

    /// The auth store as of the last applied batch.
    pub fn auth(&self) -> Arc<AuthState> {
        self.auth.lock().expect("auth lock").clone()
    }

    /// Published member attributes as of the last applied batch.
    pub fn member_attributes(&self) -> BTreeMap<u64, MemberAttributes> {
        self.members.lock().expect("members lock").clone()
    }
}
