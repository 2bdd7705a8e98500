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

fn latest_snapshot(dir: &Path) -> std::io::Result<Option<(SnapshotMeta, PathBuf)>> {
    let mut best: Option<(SnapshotMeta, PathBuf)> = None;
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let ext = p.extension().and_then(|x| x.to_str());
        if ext != Some("snap") {
            // Leftovers of a snapshot build or receive that a crash interrupted.
            if matches!(ext, Some("tmp") | Some("part") | Some("export")) {
                let _ = std::fs::remove_file(&p);
            }
            continue;
        }
        match snapshot::read_meta(&p) {
            Ok(m) => {
                let newer = best.as_ref().is_none_or(|(b, _)| m.last_log_id > b.last_log_id);
                if newer {
                    best = Some((m, p));
                }
            }
            Err(e) => tracing::warn!(path = %p.display(), error = %e, "ignoring unreadable snapshot file"),
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

/// Keeps only `keep` among the snapshot files.
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
    // Keep the received file as the current snapshot (it may serve other lagging members).
    let kept = shared.snap_dir.join(snapshot_name(meta));
    if file.path != kept {
        std::fs::copy(&file.path, &kept)?;
        std::fs::File::open(&kept)?.sync_all()?;
        snapshot::sync_dir(&shared.snap_dir)?;
    }
    write_pointer(&shared.root, next)?;
    let previous = shared.mvcc.swap_db(db);
    *generation = next;
    // Let reads still running on the old instance finish before its files go away.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while Arc::strong_count(&previous) > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(previous);
    std::fs::remove_dir_all(db_dir(&shared.root, next - 1))?;
    prune_snapshots(&shared.snap_dir, &kept);
    *shared.current.lock().expect("snapshot lock") = Some((meta.clone(), kept));
    let m = shared.mvcc.meta().map_err(io_err)?;
    let s = AppliedState::decode(&m.applied)?;
    shared
        .lessor
        .reset(shared.mvcc.leases().map_err(io_err)?, Instant::now());
    *shared.alarms.lock().expect("alarms lock") = shared.mvcc.alarms().map_err(io_err)?;
    shared.compacted.store(m.compacted, Ordering::Release);
    Ok((s.last_applied.as_ref().map_or(0, |l| l.index), m.revision, s.members))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let shared = self.shared.clone();
        let (meta, path) = tokio::task::spawn_blocking(move || -> std::io::Result<(SnapshotMeta, PathBuf)> {
            // The log may be purged up to this snapshot: make the state behind it durable.
            shared.mvcc.sync().map_err(io_err)?;
            let tmp_name = shared.snap_dir.join("building.snap");
            let meta = shared.export(&tmp_name)?;
            let path = shared.snap_dir.join(snapshot_name(&meta));
            std::fs::rename(&tmp_name, &path)?;
            snapshot::sync_dir(&shared.snap_dir)?;
            prune_snapshots(&shared.snap_dir, &path);
            *shared.current.lock().expect("snapshot lock") = Some((meta.clone(), path.clone()));
            Ok((meta, path))
        })
        .await
        .map_err(io_err)??;
        Ok(Snapshot {
            meta,
            snapshot: SnapshotFile { path },
        })
    }
}
