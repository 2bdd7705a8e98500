//! The Raft state machine: applies committed commands to MVCC in batches, and builds and
//! installs snapshots.
//!
//! Every batch of committed entries openraft hands over becomes one MVCC [`WriteTxn`] and
//! one RocksDB write that also stores the last applied log id, the membership and member
//! attributes. Compactions and lease grants/revokes are the exceptions that split a batch:
//! they are committed on their own, so a compaction deletes exactly the same history on
//! every member and lease checks can read committed state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{Stream, TryStreamExt};
use openraft::EntryPayload;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::snapshot::{self, SnapshotFile};
use super::{CommandResult, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::error::StoreError;
use crate::lease::Lessor;
use crate::metrics;
use crate::mvcc::{Mvcc, WriteTxn};
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::{AlarmMember, AlarmRequest, AlarmResponse, AlarmType};
use crate::proto::lodestone::{self as pb, command::Kind, command_result::Kind as ResKind};

/// What a member published about itself (name and client URLs), keyed by member id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttributes {
    pub name: String,
    pub client_urls: Vec<String>,
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

/// Shared between openraft's state-machine task and the read path.
pub struct Shared {
    pub mvcc: Mvcc,
    /// Holds `db-<n>` instance directories and the `CURRENT_DB` pointer naming the live one.
    root: PathBuf,
    generation: Mutex<u64>,
    snap_dir: PathBuf,
    applied_tx: watch::Sender<u64>,
    revision_tx: watch::Sender<i64>,
    /// The compacted revision as of the last applied batch, set before `revision_tx` moves,
    /// so anyone woken by a new revision sees the compaction that came with it.
    compacted: AtomicI64,
    current: Mutex<Option<(SnapshotMeta, PathBuf)>>,
    members: Mutex<BTreeMap<u64, MemberAttributes>>,
    /// Lease deadlines, fed by applied grants and revokes.
    pub lessor: Lessor,
    alarms: Mutex<Vec<AlarmMember>>,
}

impl Shared {
    /// Index of the last applied log entry; changes as entries are applied.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
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
    pub fn export(&self, path: &Path) -> std::io::Result<SnapshotMeta> {
        let db = self.mvcc.db();
        snapshot::write(&db, path, |raw| {
            let m: crate::mvcc::Meta = if raw.is_empty() {
                crate::mvcc::Meta::default()
            } else {
                bincode::deserialize(raw).map_err(|e| io_err(format!("corrupt meta record: {e}")))?
            };
            let s = AppliedState::decode(&m.applied)?;
            Ok(SnapshotMeta {
                last_log_id: s.last_applied,
                last_membership: s.membership,
            })
        })
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

    /// Published member attributes as of the last applied batch.
    pub fn member_attributes(&self) -> BTreeMap<u64, MemberAttributes> {
        self.members.lock().expect("members lock").clone()
    }
}

/// openraft's handle on the state machine.
#[derive(Clone)]
pub struct StateMachine {
    pub shared: Arc<Shared>,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl StateMachine {
    /// Opens the state machine under `dir`: the RocksDB instance named by `dir/CURRENT_DB`
    /// (a `db-<n>` directory), and snapshot files in `dir/snapshots`. Instance directories a
    /// crash left behind (a half-loaded snapshot, an instance already replaced) are removed.
    pub fn open(dir: &Path) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let generation = match std::fs::read_to_string(dir.join(CURRENT_DB)) {
            Ok(s) => s
                .trim()
                .strip_prefix("db-")
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| io_err(format!("corrupt {} in {}", CURRENT_DB, dir.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_pointer(dir, 0)?;
                0
            }
            Err(e) => return Err(e),
        };
        let live = db_dir(dir, generation);
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            let is_instance = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("db-"));
            if is_instance && p.is_dir() && p != live {
                std::fs::remove_dir_all(&p)?;
            }
        }
        let snap_dir = dir.join("snapshots");
        std::fs::create_dir_all(&snap_dir)?;
        let mvcc = Mvcc::open(&live).map_err(io_err)?;
        let meta = mvcc.meta().map_err(io_err)?;
        let applied = AppliedState::decode(&meta.applied)?;
        let current = latest_snapshot(&snap_dir)?;
        let (applied_tx, _) = watch::channel(applied.last_applied.as_ref().map_or(0, |l| l.index));
        let (revision_tx, _) = watch::channel(meta.revision);
        let lessor = Lessor::default();
        lessor.reset(mvcc.leases().map_err(io_err)?, Instant::now());
        let alarms = Mutex::new(mvcc.alarms().map_err(io_err)?);
        Ok(StateMachine {
            shared: Arc::new(Shared {
                mvcc,
                root: dir.to_path_buf(),
                generation: Mutex::new(generation),
                snap_dir,
                applied_tx,
                revision_tx,
                compacted: AtomicI64::new(meta.compacted),
                current: Mutex::new(current),
                members: Mutex::new(applied.members),
                lessor,
                alarms,
            }),
        })
    }

    /// Makes everything applied so far durable.
    pub fn sync(&self) -> std::io::Result<()> {
        self.shared.mvcc.sync().map_err(io_err)
    }
}

const CURRENT_DB: &str = "CURRENT_DB";

fn db_dir(root: &Path, generation: u64) -> PathBuf {
    root.join(format!("db-{generation}"))
}

/// Points `CURRENT_DB` at instance `generation`, atomically and durably.
fn write_pointer(root: &Path, generation: u64) -> std::io::Result<()> {
    let tmp = root.join(format!("{CURRENT_DB}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, format!("db-{generation}\n").as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, root.join(CURRENT_DB))?;
    snapshot::sync_dir(root)
}

/// Extensions of files still being written (see [`Shared::scratch_path`]); a crash leaves
/// them behind, and opening the state machine removes them.
pub const SCRATCH_EXTENSIONS: [&str; 4] = ["tmp", "part", "export", "build"];

static SCRATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The newest snapshot file that is whole (its checksum verified), after removing the
/// leftovers of interrupted writes. A `.snap` file only ever appears by a rename of a
/// complete, fsynced file; one that fails verification anyway (damaged on disk) is removed
/// rather than served to a lagging member.
fn latest_snapshot(dir: &Path) -> std::io::Result<Option<(SnapshotMeta, PathBuf)>> {
    let mut candidates: Vec<(SnapshotMeta, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let ext = p.extension().and_then(|x| x.to_str()).unwrap_or_default();
        if ext != "snap" {
            if SCRATCH_EXTENSIONS.contains(&ext) {
                let _ = std::fs::remove_file(&p);
            }
            continue;
        }
        match snapshot::read_meta(&p) {
            Ok(m) => candidates.push((m, p)),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "removing unreadable snapshot file");
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    candidates.sort_by(|a, b| {
        b.0.last_log_id
            .partial_cmp(&a.0.last_log_id)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut best = None;
    for (meta, path) in candidates {
        if best.is_some() {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        match snapshot::verify(&path) {
            Ok(_) => best = Some((meta, path)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "removing damaged snapshot file");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(best)
}

fn snapshot_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(l) => format!("{:016x}-{:016x}.snap", l.committed_leader_id().term, l.index),
        None => "0000000000000000-0000000000000000.snap".into(),
    }
}

/// Keeps only `keep` among the snapshot files (files still being written have other
/// extensions and are left alone).
fn prune_snapshots(dir: &Path, keep: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p != keep && p.extension().and_then(|x| x.to_str()) == Some("snap") {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Makes a complete snapshot file (written and fsynced under a scratch name) the member's
/// current snapshot: renamed to its final name and the older files pruned, unless a newer
/// snapshot is current already (a build that started before an install finishes after it),
/// in which case the older file is dropped and the newer one stays. Builds and installs both
/// publish here, one at a time, so neither can delete the other's newer file, and a `.snap`
/// file only ever appears whole. Returns what is current.
fn publish(shared: &Shared, meta: SnapshotMeta, scratch: &Path) -> std::io::Result<(SnapshotMeta, PathBuf)> {
    let mut current = shared.current.lock().expect("snapshot lock");
    if let Some((cur_meta, cur_path)) = current.as_ref()
        && cur_meta.last_log_id > meta.last_log_id
    {
        let _ = std::fs::remove_file(scratch);
        return Ok((cur_meta.clone(), cur_path.clone()));
    }
    let path = shared.snap_dir.join(snapshot_name(&meta));
    std::fs::rename(scratch, &path)?;
    snapshot::sync_dir(&shared.snap_dir)?;
    prune_snapshots(&shared.snap_dir, &path);
    *current = Some((meta.clone(), path.clone()));
    Ok((meta, path))
}

/// A scratch copy of a complete file (fsynced by whoever wrote it): a hard link, or a copy
/// fsynced here when the link cannot be made.
fn scratch_copy(shared: &Shared, src: &Path) -> std::io::Result<PathBuf> {
    let tmp = shared.scratch_path("installing", "tmp");
    if std::fs::hard_link(src, &tmp).is_err() {
        let copied = std::fs::copy(src, &tmp).and_then(|_| std::fs::File::open(&tmp)?.sync_all());
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    Ok(tmp)
}

fn apply_error(e: StoreError) -> CommandResult {
    CommandResult(pb::CommandResult {
        kind: Some(ResKind::Error(pb::ApplyError {
            code: e.code(),
            message: e.to_string(),
        })),
    })
}

fn empty() -> CommandResult {
    CommandResult(pb::CommandResult {
        kind: Some(ResKind::Empty(pb::Empty {})),
    })
}

/// Applies one command; domain errors become results, storage errors abort the batch.
fn apply_command(
    txn: &mut WriteTxn,
    state: &mut AppliedState,
    alarms: &mut Vec<AlarmMember>,
    cmd: &pb::Command,
) -> Result<CommandResult, StoreError> {
    let has = |alarms: &[AlarmMember], t: AlarmType| alarms.iter().any(|a| a.alarm == t as i32);
    // With a CORRUPT alarm nothing changes any more; with NOSPACE, nothing that adds data.
    let refused = match &cmd.kind {
        Some(Kind::Put(_) | Kind::DeleteRange(_) | Kind::Txn(_) | Kind::Compaction(_) | Kind::LeaseGrant(_))
            if has(alarms, AlarmType::Corrupt) =>
        {
            Some(StoreError::Corrupt)
        }
        Some(Kind::Put(_) | Kind::LeaseGrant(_)) if has(alarms, AlarmType::Nospace) => Some(StoreError::NoSpace),
        Some(Kind::Txn(t)) if has(alarms, AlarmType::Nospace) && crate::validate::txn_has_put(t) => {
            Some(StoreError::NoSpace)
        }
        _ => None,
    };
    if let Some(e) = refused {
        return Ok(apply_error(e));
    }
    let res = match &cmd.kind {
        Some(Kind::Put(p)) => txn.put(p).map(ResKind::Put),
        Some(Kind::DeleteRange(d)) => txn.delete_range(d).map(ResKind::DeleteRange),
        Some(Kind::Txn(t)) => txn.txn(t).map(ResKind::Txn),
        Some(Kind::Compaction(c)) => txn.compact(c.revision).map(ResKind::Compaction),
        Some(Kind::LeaseGrant(g)) => txn.lease_grant(g).map(ResKind::LeaseGrant),
        Some(Kind::LeaseRevoke(r)) => txn.lease_revoke(r).map(ResKind::LeaseRevoke),
        Some(Kind::Alarm(a)) => apply_alarm(txn, alarms, a).map(ResKind::Alarm),
        Some(Kind::MemberAttributes(m)) => {
            state.members.insert(
                m.id,
                MemberAttributes {
                    name: m.name.clone(),
                    client_urls: m.client_urls.clone(),
                },
            );
            Ok(ResKind::Empty(pb::Empty {}))
        }
        None => Ok(ResKind::Empty(pb::Empty {})),
    };
    match res {
        Ok(kind) => Ok(CommandResult(pb::CommandResult { kind: Some(kind) })),
        Err(e @ (StoreError::Storage(_) | StoreError::Internal(_))) => Err(e),
        Err(e) => Ok(apply_error(e)),
    }
}

/// Activates or deactivates an alarm (replicated, so every member agrees on the set).
fn apply_alarm(
    txn: &mut WriteTxn,
    alarms: &mut Vec<AlarmMember>,
    a: &AlarmRequest,
) -> Result<AlarmResponse, StoreError> {
    let member = AlarmMember {
        member_id: a.member_id,
        alarm: a.alarm,
    };
    let mut resp = AlarmResponse::default();
    match AlarmAction::try_from(a.action).unwrap_or(AlarmAction::Get) {
        AlarmAction::Activate => {
            if a.alarm != AlarmType::None as i32 && !alarms.contains(&member) {
                alarms.push(member);
                txn.set_alarms(alarms)?;
                resp.alarms.push(member);
            }
        }
        AlarmAction::Deactivate => {
            if let Some(pos) = alarms.iter().position(|m| *m == member) {
                alarms.remove(pos);
                txn.set_alarms(alarms)?;
                resp.alarms.push(member);
            }
        }
        AlarmAction::Get => {
            resp.alarms = alarms
                .iter()
                .filter(|m| a.alarm == AlarmType::None as i32 || m.alarm == a.alarm)
                .cloned()
                .collect();
        }
    }
    Ok(resp)
}

type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;

/// Commands applied in a RocksDB write of their own (see the module docs).
fn applies_alone(cmd: &pb::Command) -> bool {
    matches!(
        cmd.kind,
        Some(Kind::Compaction(_) | Kind::LeaseGrant(_) | Kind::LeaseRevoke(_))
    )
}

/// A change the in-memory lease clock must learn once the batch is committed.
enum LeaseChange {
    Granted(i64, i64),
    Revoked(i64),
}

/// Applies a batch of committed entries in one RocksDB write (more around commands that
/// apply alone).
fn apply_batch(shared: &Shared, entries: &[Entry]) -> std::io::Result<(Vec<CommandResult>, u64, i64)> {
    let mut txn = shared.mvcc.write_txn().map_err(io_err)?;
    let mut state = AppliedState::decode(txn.applied())?;
    let mut results = Vec::with_capacity(entries.len());
    let mut lease_changes = Vec::new();
    let mut alarms = shared.alarms();
    for entry in entries {
        let r = match &entry.payload {
            EntryPayload::Blank => empty(),
            EntryPayload::Normal(cmd) if applies_alone(&cmd.0) => {
                if txn.is_dirty() {
                    txn.commit(state.encode()).map_err(io_err)?;
                }
                let r = apply_command(&mut txn, &mut state, &mut alarms, &cmd.0).map_err(io_err)?;
                match (&cmd.0.kind, &r.0.kind) {
                    (Some(Kind::LeaseGrant(g)), Some(ResKind::LeaseGrant(_))) => {
                        lease_changes.push(LeaseChange::Granted(g.id, g.ttl))
                    }
                    (Some(Kind::LeaseRevoke(v)), Some(ResKind::LeaseRevoke(_))) => {
                        lease_changes.push(LeaseChange::Revoked(v.id))
                    }
                    _ => {}
                }
                state.last_applied = Some(entry.log_id);
                txn.commit(state.encode()).map_err(io_err)?;
                r
            }
            EntryPayload::Normal(cmd) => apply_command(&mut txn, &mut state, &mut alarms, &cmd.0).map_err(io_err)?,
            EntryPayload::Membership(m) => {
                state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                empty()
            }
        };
        state.last_applied = Some(entry.log_id);
        results.push(r);
    }
    let start = Instant::now();
    txn.commit(state.encode()).map_err(io_err)?;
    metrics::observe_backend_commit(start.elapsed());
    *shared.members.lock().expect("members lock") = state.members;
    *shared.alarms.lock().expect("alarms lock") = alarms;
    let now = Instant::now();
    for c in lease_changes {
        match c {
            LeaseChange::Granted(id, ttl) => shared.lessor.granted(id, ttl, now),
            LeaseChange::Revoked(id) => shared.lessor.revoked(id),
        }
    }
    shared.compacted.store(txn.compacted(), Ordering::Release);
    let last = state.last_applied.as_ref().map_or(0, |l| l.index);
    Ok((results, last, txn.revision()))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), std::io::Error> {
        let shared = self.shared.clone();
        let meta = tokio::task::spawn_blocking(move || shared.mvcc.meta())
            .await
            .map_err(io_err)?
            .map_err(io_err)?;
        let s = AppliedState::decode(&meta.applied)?;
        Ok((s.last_applied, s.membership))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), std::io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>> + Unpin + openraft::OptionalSend,
    {
        let items: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        if items.is_empty() {
            return Ok(());
        }
        let (entries, responders): (Vec<Entry>, Vec<_>) = items.into_iter().unzip();
        let shared = self.shared.clone();
        let n = entries.len();
        let (results, last, revision) = tokio::task::spawn_blocking(move || apply_batch(&shared, &entries))
            .await
            .map_err(io_err)??;
        self.shared.applied_tx.send_replace(last);
        self.shared.revision_tx.send_replace(revision);
        metrics::proposals_applied(n as u64);
        for (responder, result) in responders.into_iter().zip(results) {
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> Result<(), std::io::Error> {
        let shared = self.shared.clone();
        let owned = meta.clone();
        let (last, revision, members) = tokio::task::spawn_blocking(move || install(&shared, &owned, &snapshot))
            .await
            .map_err(io_err)??;
        *self.shared.members.lock().expect("members lock") = members;
        tracing::info!(last_log_id = ?meta.last_log_id, revision, "installed snapshot");
        self.shared.applied_tx.send_replace(last);
        self.shared.revision_tx.send_replace(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        let cur = self.shared.current.lock().expect("snapshot lock").clone();
        Ok(cur.map(|(meta, path)| Snapshot {
            meta,
            snapshot: SnapshotFile { path },
        }))
    }
}

/// Replaces the state machine with a snapshot: load it into a new instance directory, then
/// switch the `CURRENT_DB` pointer to it (one atomic rename) and retire the old instance.
/// A crash before the switch leaves the old instance live; after it, the new one.
fn install(
    shared: &Shared,
    meta: &SnapshotMeta,
    file: &SnapshotFile,
) -> std::io::Result<(u64, i64, BTreeMap<u64, MemberAttributes>)> {
    let mut generation = shared.generation.lock().expect("generation lock");
    let next = *generation + 1;
    let next_dir = db_dir(&shared.root, next);
    if next_dir.exists() {
        std::fs::remove_dir_all(&next_dir)?;
    }
    let db = crate::mvcc::open_db(&next_dir).map_err(io_err)?;
    let file_meta = snapshot::load(&file.path, &db)?;
    if file_meta.last_log_id != meta.last_log_id {
        return Err(io_err("snapshot file does not match the snapshot meta"));
    }
    // Keep the received file as the current snapshot (it may serve other lagging members),
    // in place before the switch, so the snapshot never trails the live instance.
    let scratch = scratch_copy(shared, &file.path)?;
    publish(shared, meta.clone(), &scratch)?;
    write_pointer(&shared.root, next)?;
    let previous = shared.mvcc.swap_db(db);
    *generation = next;
    retire(previous, db_dir(&shared.root, next - 1));
    let m = shared.mvcc.meta().map_err(io_err)?;
    let s = AppliedState::decode(&m.applied)?;
    shared
        .lessor
        .reset(shared.mvcc.leases().map_err(io_err)?, Instant::now());
    *shared.alarms.lock().expect("alarms lock") = shared.mvcc.alarms().map_err(io_err)?;
    shared.compacted.store(m.compacted, Ordering::Release);
    Ok((s.last_applied.as_ref().map_or(0, |l| l.index), m.revision, s.members))
}

/// Removes a replaced instance once nothing reads it any more: reads and snapshot builds
/// still running on it finish first, however long they take. (A crash before that leaves a
/// directory that the next start removes.)
fn retire(previous: Arc<rocksdb::DB>, dir: PathBuf) {
    let retire = move || {
        while Arc::strong_count(&previous) > 1 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(previous);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "removing a replaced state machine instance");
        }
    };
    if let Err(e) = std::thread::Builder::new().name("retire-db".into()).spawn(retire) {
        tracing::warn!(error = %e, "cannot start the thread that removes a replaced instance; the next start removes it");
    }
}

/// Writes a snapshot file of the current state under a scratch name, for [`publish`].
fn build_file(shared: &Shared) -> std::io::Result<(SnapshotMeta, PathBuf)> {
    // The log may be purged up to this snapshot: make the state behind it durable.
    shared.mvcc.sync().map_err(io_err)?;
    let tmp = shared.scratch_path("building", "build");
    match shared.export(&tmp) {
        Ok(meta) => Ok((meta, tmp)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let shared = self.shared.clone();
        let (meta, path) = tokio::task::spawn_blocking(move || -> std::io::Result<(SnapshotMeta, PathBuf)> {
            let (meta, scratch) = build_file(&shared)?;
            publish(&shared, meta, &scratch)
        })
        .await
        .map_err(io_err)??;
        Ok(Snapshot {
            meta,
            snapshot: SnapshotFile { path },
        })
    }
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

    use super::*;
    use crate::proto::etcdserverpb::PutRequest;
    use crate::raft::Command;

    fn put(index: u64) -> Entry {
        let cmd = pb::Command {
            kind: Some(Kind::Put(PutRequest {
                key: format!("k{index}").into_bytes().into(),
                value: b"v".to_vec().into(),
                ..Default::default()
            })),
        };
        Entry::new_normal(openraft::testing::log_id::<TypeConfig>(1, 1, index), Command(cmd))
    }

    async fn apply(sm: &mut StateMachine, indexes: std::ops::RangeInclusive<u64>) {
        let items: Vec<Result<EntryResponder<TypeConfig>, std::io::Error>> =
            indexes.map(|i| Ok((put(i), None))).collect();
        sm.apply(futures::stream::iter(items)).await.unwrap();
    }

    fn snap_files(sm: &StateMachine) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(sm.shared.snapshot_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn index_of(meta: &SnapshotMeta) -> u64 {
        meta.last_log_id.as_ref().map_or(0, |l| l.index)
    }

    /// A build that started before an install and finishes after it neither deletes the
    /// newer installed snapshot nor becomes current, and fails nothing.
    #[tokio::test]
    async fn a_build_racing_an_install_keeps_the_newer_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut member = StateMachine::open(&dir.path().join("member")).unwrap();
        apply(&mut member, 1..=3).await;
        // The build reads its state (index 3) ...
        let (stale_meta, stale_scratch) = build_file(&member.shared).unwrap();
        assert_eq!(index_of(&stale_meta), 3);

        // ... a leader's newer snapshot (index 7) is installed meanwhile ...
        let mut leader = StateMachine::open(&dir.path().join("leader")).unwrap();
        apply(&mut leader, 1..=7).await;
        let sent = leader.build_snapshot().await.unwrap();
        let part = dir.path().join("received.part");
        std::fs::copy(&sent.snapshot.path, &part).unwrap();
        member
            .install_snapshot(&sent.meta, SnapshotFile { path: part.clone() })
            .await
            .unwrap();

        // ... and only then does the build publish its older file.
        let (meta, path) = publish(&member.shared, stale_meta, &stale_scratch).unwrap();
        assert_eq!(index_of(&meta), 7, "the installed snapshot stays current");
        assert!(path.exists());
        assert!(!stale_scratch.exists(), "the stale build's file is dropped");
        let current = member.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(index_of(&current.meta), 7);
        snapshot::verify(&current.snapshot.path).unwrap();
        assert_eq!(snap_files(&member), vec![snapshot_name(&current.meta)]);

        // A build now reflects the installed state and replaces it cleanly.
        let built = member.build_snapshot().await.unwrap();
        assert_eq!(index_of(&built.meta), 7);
        assert_eq!(snap_files(&member).len(), 1);
    }

    /// Whatever a crash left in the snapshot directory (a file still being received, built
    /// or installed, a damaged `.snap` with a readable header), a restart serves only a
    /// whole snapshot.
    #[tokio::test]
    async fn a_restart_serves_only_whole_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("member");
        let whole = {
            let mut sm = StateMachine::open(&root).unwrap();
            apply(&mut sm, 1..=3).await;
            let s = sm.build_snapshot().await.unwrap();
            let whole_bytes = std::fs::read(&s.snapshot.path).unwrap();
            apply(&mut sm, 4..=9).await;
            let newer = sm.build_snapshot().await.unwrap();
            let newer_bytes = std::fs::read(&newer.snapshot.path).unwrap();
            // The older snapshot whole, and the newer one cut short after its header (what
            // copying a received file in place used to leave behind on a crash or a full
            // disk).
            std::fs::write(&s.snapshot.path, &whole_bytes).unwrap();
            std::fs::write(&newer.snapshot.path, &newer_bytes[..newer_bytes.len() / 2]).unwrap();
            snapshot::read_meta(&newer.snapshot.path).expect("the damaged file's header is readable");
            for leftover in [
                "incoming-1-2-3.part",
                "building-1-4.build",
                "installing-1-5.tmp",
                "client-1-6.export",
            ] {
                std::fs::write(sm.shared.snapshot_dir().join(leftover), b"partial").unwrap();
            }
            s
        };
        let mut sm = StateMachine::open(&root).unwrap();
        let current = sm.get_current_snapshot().await.unwrap().expect("a snapshot");
        assert_eq!(
            index_of(&current.meta),
            3,
            "the whole snapshot, not the damaged newer one"
        );
        assert_eq!(current.snapshot.path, whole.snapshot.path);
        assert_eq!(snap_files(&sm), vec![snapshot_name(&whole.meta)]);
    }

    #[test]
    fn scratch_paths_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(dir.path()).unwrap();
        let a = sm.shared.scratch_path("incoming-1", "part");
        let b = sm.shared.scratch_path("incoming-1", "part");
        assert_ne!(a, b);
        assert_eq!(a.extension().unwrap(), "part");
    }
}
