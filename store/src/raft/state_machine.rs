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
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{Stream, TryStreamExt};
use openraft::EntryPayload;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use tokio::sync::watch;

use super::shared::io_err;
pub use super::shared::{AppliedState, Shared};
use super::snapshot::{self, SnapshotFile};
use super::snapshot_files::{checkpoint_meta, latest_snapshot, publish, remove, scratch_copy, snapshot_file};
use super::{CommandResult, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig, generations};
use crate::apply::{self, Applying, MemberAttributes};
use crate::auth::AuthState;
use crate::auth::tokens::SimpleTokens;
use crate::lease::Lessor;
use crate::metrics;
use crate::mvcc::Mvcc;
use crate::proto::lodestone::{command::Kind, command_result::Kind as ResKind};

/// A batch whose apply takes longer than this is logged (etcd's `warnApplyDuration`).
const SLOW_APPLY: std::time::Duration = std::time::Duration::from_millis(100);

/// openraft's handle on the state machine.
#[derive(Clone)]
pub struct StateMachine {
    pub shared: Arc<Shared>,
}

impl StateMachine {
    /// Opens the state machine under `dir`: the RocksDB instance named by `dir/CURRENT_DB`
    /// (a `db-<n>` directory), and snapshots in `dir/snapshots`. Instance directories a
    /// crash left behind (a half-loaded snapshot, an instance already replaced) are removed.
    pub fn open(dir: &Path) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let generation = generations::open(dir)?;
        let live = generations::db_dir(dir, generation);
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
        let auth = Mutex::new(Arc::new(AuthState::from_record(mvcc.auth_record().map_err(io_err)?)));
        Ok(StateMachine {
            shared: Arc::new(Shared {
                mvcc,
                root: dir.to_path_buf(),
                generation: Mutex::new(generation),
                snap_dir,
                applied_tx,
                // What was found on disk is not assumed durable: the first purge flushes.
                durable: AtomicU64::new(0),
                revision_tx,
                compacted: AtomicI64::new(meta.compacted),
                current: Mutex::new(current),
                members: Mutex::new(applied.members),
                lessor,
                alarms,
                auth,
                tokens: SimpleTokens::default(),
            }),
        })
    }

    /// Makes everything applied so far durable.
    pub fn sync(&self) -> std::io::Result<()> {
        self.shared.sync()
    }

    /// Makes everything applied through log entry `index` durable, flushing only if no
    /// flush since has (see [`Shared::sync_through`]).
    pub fn sync_through(&self, index: u64) -> std::io::Result<()> {
        self.shared.sync_through(index)
    }
}

type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;

/// A change the in-memory lease clock must learn once the batch is committed.
enum LeaseChange {
    Granted(i64, i64),
    Revoked(i64),
}

/// A batch applied to a [`WriteTxn`](crate::mvcc::WriteTxn) but not yet written: everything
/// it changes besides the MVCC data is published only once it is ([`Prepared::published`]).
struct Prepared {
    txn: crate::mvcc::WriteTxn,
    state: AppliedState,
    results: Vec<CommandResult>,
    lease_changes: Vec<LeaseChange>,
    alarms: Vec<crate::proto::etcdserverpb::AlarmMember>,
    auth: Arc<AuthState>,
}

/// What a written batch tells the caller: each entry's result, the last applied index and
/// the store revision.
type Outcome = (Vec<CommandResult>, u64, i64);

/// A batch of light commands is applied on the state machine's own task (see
/// [`StateMachine::apply`]) when it costs at most this many point operations
/// ([`apply::light_cost`]; at most this many entries, then)...
const INLINE_OPS: usize = 64;
/// ...and its commands at most this many bytes, which the batch copies into RocksDB's
/// memtables (a few large values take longer than many small ones).
const INLINE_BYTES: usize = 256 << 10;

/// Evaluates every entry of a batch into one write, committing only around commands that
/// apply alone.
fn prepare(shared: &Shared, entries: &[Entry]) -> std::io::Result<Prepared> {
    let mut txn = shared.mvcc.write_txn().map_err(io_err)?;
    let mut state = AppliedState::decode(txn.applied())?;
    let mut results = Vec::with_capacity(entries.len());
    let mut lease_changes = Vec::new();
    let mut alarms = shared.alarms();
    let mut auth = shared.auth();
    for entry in entries {
        let r = match &entry.payload {
            EntryPayload::Blank => CommandResult(apply::empty()),
            EntryPayload::Normal(cmd) if apply::applies_alone(&cmd.0, auth.enabled()) => {
                if txn.is_dirty() {
                    txn.commit(state.encode()).map_err(io_err)?;
                }
                let applying = Applying {
                    members: &mut state.members,
                    alarms: &mut alarms,
                    auth: &mut auth,
                    tokens: &shared.tokens,
                };
                let r = apply::apply_command(&mut txn, applying, &cmd.0).map_err(io_err)?;
                match (&cmd.0.kind, &r.kind) {
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
                CommandResult(r)
            }
            EntryPayload::Normal(cmd) => {
                let applying = Applying {
                    members: &mut state.members,
                    alarms: &mut alarms,
                    auth: &mut auth,
                    tokens: &shared.tokens,
                };
                CommandResult(apply::apply_command(&mut txn, applying, &cmd.0).map_err(io_err)?)
            }
            EntryPayload::Membership(m) => {
                state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                CommandResult(apply::empty())
            }
        };
        state.last_applied = Some(entry.log_id);
        results.push(r);
    }
    Ok(Prepared {
        txn,
        state,
        results,
        lease_changes,
        alarms,
        auth,
    })
}

impl Prepared {
    /// Writes the batch (waiting for a read-only txn that evaluates) and publishes it.
    fn commit(mut self, shared: &Shared) -> std::io::Result<Outcome> {
        let start = Instant::now();
        self.txn.commit(self.state.encode()).map_err(io_err)?;
        metrics::observe_backend_commit(start.elapsed());
        Ok(self.published(shared))
    }

    /// [`Prepared::commit`] unless a read-only txn evaluates: then the batch comes back
    /// unwritten, for a caller that must not wait.
    fn try_commit(mut self, shared: &Shared) -> std::io::Result<Result<Outcome, Prepared>> {
        let start = Instant::now();
        if !self.txn.try_commit(self.state.encode()).map_err(io_err)? {
            return Ok(Err(self));
        }
        metrics::observe_backend_commit(start.elapsed());
        Ok(Ok(self.published(shared)))
    }

    /// Publishes what the written batch changed besides the MVCC data.
    fn published(self, shared: &Shared) -> Outcome {
        *shared.members.lock().expect("members lock") = self.state.members;
        *shared.alarms.lock().expect("alarms lock") = self.alarms;
        *shared.auth.lock().expect("auth lock") = self.auth;
        let now = Instant::now();
        for c in self.lease_changes {
            match c {
                LeaseChange::Granted(id, ttl) => shared.lessor.granted(id, ttl, now),
                LeaseChange::Revoked(id) => shared.lessor.revoked(id),
            }
        }
        shared.compacted.store(self.txn.compacted(), Ordering::Release);
        let last = self.state.last_applied.as_ref().map_or(0, |l| l.index);
        (self.results, last, self.txn.revision())
    }
}

/// A small batch of light commands (see [`apply::light_cost`]) costs less to apply than the
/// two thread hand-offs of a blocking thread; it is applied on the state machine's task.
/// The budget bounds how long the task holds its worker thread. Measured under put with 64
/// clients (three members and the clients sharing 2 cores): a batch of 40 to 64 small puts
/// applied inline in 0.75 ms at the median, and moving such batches here from the blocking
/// thread raised throughput by about 15% (CPU per write -15%).
fn applies_inline(shared: &Shared, entries: &[Entry]) -> bool {
    use prost::Message;
    if entries.len() > INLINE_OPS {
        return false;
    }
    let auth_enabled = shared.auth().enabled();
    let (mut ops, mut bytes) = (0, 0);
    for e in entries {
        if let EntryPayload::Normal(cmd) = &e.payload {
            match apply::light_cost(&cmd.0, auth_enabled) {
                Some(n) => ops += n,
                None => return false,
            }
            bytes += cmd.0.encoded_len();
            if ops > INLINE_OPS || bytes > INLINE_BYTES {
                return false;
            }
        }
    }
    true
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
        // Each responder keeps its entry's log index, which its answer carries.
        let (entries, responders): (Vec<Entry>, Vec<_>) = items
            .into_iter()
            .map(|(entry, responder)| {
                let index = entry.log_id.index;
                (entry, (responder, index))
            })
            .unzip();
        let shared = self.shared.clone();
        let n = entries.len();
        let start = Instant::now();
        let (results, last, revision) = if applies_inline(&shared, &entries) {
            // The batch's write must not wait for a read-only txn on this task: if one is
            // evaluating, the prepared batch is written on a blocking thread instead.
            match prepare(&shared, &entries)?.try_commit(&shared)? {
                Ok(outcome) => outcome,
                Err(unwritten) => tokio::task::spawn_blocking(move || unwritten.commit(&shared))
                    .await
                    .map_err(io_err)??,
            }
        } else {
            tokio::task::spawn_blocking(move || prepare(&shared, &entries)?.commit(&shared))
                .await
                .map_err(io_err)??
        };
        let took = start.elapsed();
        if took > SLOW_APPLY {
            // etcd's warning for the same thing: every request behind this batch waited.
            tracing::warn!(?took, expected = ?SLOW_APPLY, entries = n, last_index = last, "apply request took too long");
        }
        self.shared.applied_tx.send_replace(last);
        self.shared.revision_tx.send_replace(revision);
        metrics::proposals_applied(n as u64);
        for ((responder, index), mut result) in responders.into_iter().zip(results) {
            if let Some(r) = responder {
                result.0.log_index = index;
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
    let next_dir = generations::db_dir(&shared.root, next);
    if next_dir.exists() {
        std::fs::remove_dir_all(&next_dir)?;
    }
    // What a leader sends is a file; a built checkpoint handed over directly (as openraft's
    // storage tests do) is written out first.
    let path = snapshot_file(&file.path)?;
    let db = crate::mvcc::open_db(&next_dir).map_err(io_err)?;
    let file_meta = snapshot::load(&path, &db)?;
    if file_meta.last_log_id != meta.last_log_id {
        return Err(io_err("snapshot file does not match the snapshot meta"));
    }
    // Keep the received file as the current snapshot (it may serve other lagging members),
    // in place before the switch, so the snapshot never trails the live instance.
    let scratch = scratch_copy(shared, &path)?;
    publish(shared, meta.clone(), &scratch)?;
    generations::write_pointer(&shared.root, next)?;
    let previous = shared.mvcc.swap_db(db);
    *generation = next;
    generations::retire(previous, generations::db_dir(&shared.root, next - 1));
    let m = shared.mvcc.meta().map_err(io_err)?;
    let s = AppliedState::decode(&m.applied)?;
    shared
        .lessor
        .reset(shared.mvcc.leases().map_err(io_err)?, Instant::now());
    *shared.alarms.lock().expect("alarms lock") = shared.mvcc.alarms().map_err(io_err)?;
    *shared.auth.lock().expect("auth lock") =
        Arc::new(AuthState::from_record(shared.mvcc.auth_record().map_err(io_err)?));
    shared.compacted.store(m.compacted, Ordering::Release);
    Ok((s.last_applied.as_ref().map_or(0, |l| l.index), m.revision, s.members))
}

/// Makes a snapshot of the current state under a scratch name, for [`publish`]: a
/// checkpoint, or, where none can be made, the whole file at once.
fn build(shared: &Shared) -> std::io::Result<(SnapshotMeta, PathBuf)> {
    // The log may be purged up to this snapshot: make the state behind it durable (and
    // remember so, for the purge's own barrier).
    shared.sync()?;
    build_checkpoint(shared).or_else(|e| {
        // A checkpoint links the table files: a filesystem that refuses hard links with
        // anything but EXDEV or ENOTSUP (on which RocksDB copies) fails it. The member must
        // still make snapshots, or its log would grow without end.
        tracing::warn!(
            error = %e,
            "cannot make a checkpoint of the state (does the filesystem under --data-dir refuse hard links?); writing the whole snapshot file at each build instead"
        );
        build_file(shared)
    })
}

/// Makes a checkpoint of the current state under a scratch name; see
/// [`super::snapshot_files`] for why a build is a checkpoint and not a file.
fn build_checkpoint(shared: &Shared) -> std::io::Result<(SnapshotMeta, PathBuf)> {
    let tmp = shared.scratch_path("building", "ckptbuild");
    let made = (|| {
        let db = shared.mvcc.db();
        // With the WAL off, the checkpoint flushes the memtables first (all families at
        // one point, as every flush here is atomic), so it holds everything applied.
        rocksdb::checkpoint::Checkpoint::new(&db)
            .and_then(|c| c.create_checkpoint(&tmp))
            .map_err(io_err)?;
        checkpoint_meta(&tmp)
    })();
    match made {
        Ok(meta) => Ok((meta, tmp)),
        Err(e) => {
            remove(&tmp);
            Err(e)
        }
    }
}

/// Writes the current state into a snapshot file under a scratch name: the build where
/// no checkpoint can be made.
fn build_file(shared: &Shared) -> std::io::Result<(SnapshotMeta, PathBuf)> {
    let tmp = shared.scratch_path("building", "build");
    match shared.export(&tmp) {
        Ok(meta) => Ok((meta, tmp)),
        Err(e) => {
            remove(&tmp);
            Err(e)
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let shared = self.shared.clone();
        let (meta, path) = tokio::task::spawn_blocking(move || -> std::io::Result<(SnapshotMeta, PathBuf)> {
            let (meta, scratch) = build(&shared)?;
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
    use crate::proto::lodestone as pb;
    use crate::raft::Command;
    use crate::raft::snapshot_files::snapshot_name;

    fn put(index: u64) -> Entry {
        put_sized(index, 1)
    }

    fn put_sized(index: u64, value: usize) -> Entry {
        let cmd = pb::Command {
            kind: Some(Kind::Put(PutRequest {
                key: format!("k{index}").into_bytes().into(),
                value: vec![b'v'; value].into(),
                ..Default::default()
            })),
            auth: None,
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

    /// A batch is applied inline up to its budget of point operations and command bytes;
    /// past either, or with one command that is not light, it takes the blocking thread.
    #[test]
    fn inline_batches_are_bounded_by_operations_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(&dir.path().join("member")).unwrap();
        let puts = |n: u64, value: usize| (1..=n).map(|i| put_sized(i, value)).collect::<Vec<_>>();
        assert!(applies_inline(&sm.shared, &puts(INLINE_OPS as u64, 1)));
        assert!(
            !applies_inline(&sm.shared, &puts(INLINE_OPS as u64 + 1, 1)),
            "one put too many"
        );
        assert!(applies_inline(&sm.shared, &puts(2, INLINE_BYTES / 4)));
        assert!(
            !applies_inline(&sm.shared, &puts(2, INLINE_BYTES / 2)),
            "two large values"
        );
        let blank = Entry::new_blank(openraft::testing::log_id::<TypeConfig>(1, 1, 100));
        let mut batch = puts(INLINE_OPS as u64 - 1, 1);
        batch.push(blank);
        assert!(applies_inline(&sm.shared, &batch), "a blank entry costs nothing");
        let range_delete = pb::Command {
            kind: Some(Kind::DeleteRange(crate::proto::etcdserverpb::DeleteRangeRequest {
                key: b"a".to_vec().into(),
                range_end: b"b".to_vec().into(),
                ..Default::default()
            })),
            auth: None,
        };
        let mut batch = puts(1, 1);
        batch.push(Entry::new_normal(
            openraft::testing::log_id::<TypeConfig>(1, 1, 2),
            Command(range_delete),
        ));
        assert!(!applies_inline(&sm.shared, &batch), "a range delete is not light");
    }

    /// Entries written to the `kv` family's active memtable: 0 right after a flush.
    fn unflushed(sm: &StateMachine) -> u64 {
        let db = sm.shared.mvcc.db();
        let cf = db.cf_handle(crate::mvcc::CF_KV).unwrap();
        db.property_int_value_cf(&cf, "rocksdb.num-entries-active-mem-table")
            .unwrap()
            .unwrap()
    }

    /// The purge's barrier flushes only what no flush has covered yet: after a snapshot
    /// build (which flushes), purging up to it writes nothing; purging past what is on disk
    /// flushes. openraft waits for the purge, so a needless flush stalls every write.
    #[tokio::test]
    async fn the_purge_barrier_flushes_only_when_needed() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(&dir.path().join("member")).unwrap();
        apply(&mut sm, 1..=5).await;
        assert!(unflushed(&sm) > 0);
        sm.sync_through(3).unwrap();
        assert_eq!(unflushed(&sm), 0, "nothing known durable yet: flushed");

        apply(&mut sm, 6..=8).await;
        let pending = unflushed(&sm);
        assert!(pending > 0);
        sm.sync_through(5).unwrap();
        assert_eq!(unflushed(&sm), pending, "entry 5 was flushed already: nothing to do");
        sm.sync_through(7).unwrap();
        assert_eq!(unflushed(&sm), 0, "entry 7 was not on disk: flushed");

        apply(&mut sm, 9..=12).await;
        let snap = sm.build_snapshot().await.unwrap();
        assert_eq!(index_of(&snap.meta), 12);
        apply(&mut sm, 13..=14).await;
        let pending = unflushed(&sm);
        assert!(pending > 0);
        sm.sync_through(12).unwrap();
        assert_eq!(unflushed(&sm), pending, "the snapshot build flushed through its index");
    }

    /// The auth store is state-machine state: a member that catches up by snapshot gets the
    /// users, roles and enabled flag the leader applied, and keeps them across a reopen.
    #[tokio::test]
    async fn the_auth_store_travels_in_snapshots() {
        use crate::proto::etcdserverpb::{AuthEnableRequest, AuthUserAddRequest, AuthUserGrantRoleRequest};

        let dir = tempfile::tempdir().unwrap();
        let mut leader = StateMachine::open(&dir.path().join("leader")).unwrap();
        let entry = |index: u64, kind: Kind| {
            let cmd = pb::Command {
                kind: Some(kind),
                auth: None,
            };
            Ok((
                Entry::new_normal(openraft::testing::log_id::<TypeConfig>(1, 1, index), Command(cmd)),
                None,
            ))
        };
        let items: Vec<Result<EntryResponder<TypeConfig>, std::io::Error>> = vec![
            entry(
                1,
                Kind::UserAdd(AuthUserAddRequest {
                    name: "root".into(),
                    hashed_password: "hash".into(),
                    ..Default::default()
                }),
            ),
            entry(
                2,
                Kind::UserGrantRole(AuthUserGrantRoleRequest {
                    user: "root".into(),
                    role: "root".into(),
                }),
            ),
            entry(3, Kind::AuthEnable(AuthEnableRequest {})),
        ];
        leader.apply(futures::stream::iter(items)).await.unwrap();
        let applied = leader.shared.auth();
        assert!(applied.enabled());
        let sent = leader.build_snapshot().await.unwrap();

        let root = dir.path().join("member");
        {
            let mut member = StateMachine::open(&root).unwrap();
            assert!(!member.shared.auth().enabled());
            let part = dir.path().join("received.part");
            std::fs::copy(snapshot_file(&sent.snapshot.path).unwrap(), &part).unwrap();
            member
                .install_snapshot(&sent.meta, SnapshotFile { path: part })
                .await
                .unwrap();
            assert_eq!(*member.shared.auth(), *applied);
            member.sync().unwrap();
        }
        // A restart is a new process, after the old one removed the instance it replaced (or
        // died, leaving it to `open`). In one process, reopening while the retiring thread
        // still closes and removes `db-0` would race it for the directory.
        let replaced = root.join("db-0");
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while replaced.exists() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!replaced.exists(), "the replaced instance was never removed");
        let reopened = StateMachine::open(&root).unwrap();
        assert_eq!(*reopened.shared.auth(), *applied, "read back from storage");
        assert_eq!(reopened.shared.auth().password_hash("root").unwrap(), "hash");
    }

    /// A build that started before an install and finishes after it neither deletes the
    /// newer installed snapshot nor becomes current, and fails nothing.
    #[tokio::test]
    async fn a_build_racing_an_install_keeps_the_newer_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut member = StateMachine::open(&dir.path().join("member")).unwrap();
        apply(&mut member, 1..=3).await;
        // The build reads its state (index 3) ...
        let (stale_meta, stale_scratch) = build_checkpoint(&member.shared).unwrap();
        assert_eq!(index_of(&stale_meta), 3);

        // ... a leader's newer snapshot (index 7) is installed meanwhile ...
        let mut leader = StateMachine::open(&dir.path().join("leader")).unwrap();
        apply(&mut leader, 1..=7).await;
        let sent = leader.build_snapshot().await.unwrap();
        let part = dir.path().join("received.part");
        std::fs::copy(snapshot_file(&sent.snapshot.path).unwrap(), &part).unwrap();
        member
            .install_snapshot(&sent.meta, SnapshotFile { path: part.clone() })
            .await
            .unwrap();

        // ... and only then does the build publish its older file.
        let (meta, path) = publish(&member.shared, stale_meta, &stale_scratch).unwrap();
        assert_eq!(index_of(&meta), 7, "the installed snapshot stays current");
        assert!(path.exists());
        assert!(!stale_scratch.exists(), "the stale build's checkpoint is dropped");
        let current = member.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(index_of(&current.meta), 7);
        snapshot::verify(&current.snapshot.path).unwrap();
        assert_eq!(snap_files(&member), vec![snapshot_name(&current.meta)]);

        // A build now reflects the installed state, as a checkpoint beside the received
        // file of the same position, which serves as the file made of it.
        let built = member.build_snapshot().await.unwrap();
        assert_eq!(index_of(&built.meta), 7);
        let name = snapshot_name(&built.meta);
        let stem = name.strip_suffix(".snap").unwrap();
        assert_eq!(snap_files(&member), vec![format!("{stem}.ckpt"), name]);
        assert_eq!(snapshot_file(&built.snapshot.path).unwrap(), current.snapshot.path);
    }

    /// A build writes no snapshot file: it is a checkpoint, made into a file the first time
    /// a member needs one, and that file serves every later transfer. The file loads into a
    /// fresh member with the state the checkpoint was taken at, and the next build prunes
    /// both.
    #[tokio::test]
    async fn a_build_is_a_checkpoint_made_into_a_file_only_when_needed() {
        let dir = tempfile::tempdir().unwrap();
        let mut leader = StateMachine::open(&dir.path().join("leader")).unwrap();
        apply(&mut leader, 1..=5).await;
        let built = leader.build_snapshot().await.unwrap();
        assert_eq!(index_of(&built.meta), 5);
        assert_eq!(built.snapshot.path.extension().unwrap(), "ckpt");
        let name = snapshot_name(&built.meta);
        let stem = name.strip_suffix(".snap").unwrap().to_string();
        assert_eq!(snap_files(&leader), vec![format!("{stem}.ckpt")], "no file yet");
        // Applied after the build: not in the checkpoint.
        apply(&mut leader, 6..=8).await;

        let file = snapshot_file(&built.snapshot.path).unwrap();
        assert_eq!(file.file_name().unwrap().to_str().unwrap(), name);
        assert_eq!(snapshot::verify(&file).unwrap().last_log_id, built.meta.last_log_id);
        let written = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(snapshot_file(&built.snapshot.path).unwrap(), file);
        assert_eq!(
            std::fs::metadata(&file).unwrap().modified().unwrap(),
            written,
            "written out once"
        );

        let mut member = StateMachine::open(&dir.path().join("member")).unwrap();
        let part = dir.path().join("received.part");
        std::fs::copy(&file, &part).unwrap();
        member
            .install_snapshot(&built.meta, SnapshotFile { path: part })
            .await
            .unwrap();
        assert_eq!(*member.shared.applied().borrow(), 5);
        assert_eq!(*member.shared.revision().borrow(), 6, "five puts on revision 1");

        let next = leader.build_snapshot().await.unwrap();
        assert_eq!(index_of(&next.meta), 8);
        let next_name = snapshot_name(&next.meta);
        let next_stem = next_name.strip_suffix(".snap").unwrap();
        assert_eq!(
            snap_files(&leader),
            vec![format!("{next_stem}.ckpt")],
            "the older pair pruned"
        );
    }

    /// Whatever a crash left in the snapshot directory (a file still being received,
    /// installed or written out, a checkpoint still being made, a damaged checkpoint, a
    /// damaged `.snap` with a readable header), a restart serves only a whole snapshot.
    #[tokio::test]
    async fn a_restart_serves_only_whole_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("member");
        let whole = {
            let mut sm = StateMachine::open(&root).unwrap();
            apply(&mut sm, 1..=3).await;
            let s = sm.build_snapshot().await.unwrap();
            let whole_file = snapshot_file(&s.snapshot.path).unwrap();
            let whole_bytes = std::fs::read(&whole_file).unwrap();
            apply(&mut sm, 4..=9).await;
            let newer = sm.build_snapshot().await.unwrap();
            let newer_file = snapshot_file(&newer.snapshot.path).unwrap();
            let newer_bytes = std::fs::read(&newer_file).unwrap();
            // The older snapshot as a whole file, the newer checkpoint without its CURRENT
            // file, and the file made of it cut short after its header (what copying a
            // received file in place used to leave behind on a crash or a full disk).
            std::fs::write(&whole_file, &whole_bytes).unwrap();
            std::fs::remove_file(newer.snapshot.path.join("CURRENT")).unwrap();
            std::fs::write(&newer_file, &newer_bytes[..newer_bytes.len() / 2]).unwrap();
            snapshot::read_meta(&newer_file).expect("the damaged file's header is readable");
            for leftover in [
                "incoming-1-2-3.part",
                "building-1-4.build",
                "installing-1-5.tmp",
                "client-1-6.export",
            ] {
                std::fs::write(sm.shared.snapshot_dir().join(leftover), b"partial").unwrap();
            }
            let half_made = sm.shared.snapshot_dir().join("building-1-7.ckptbuild");
            std::fs::create_dir(&half_made).unwrap();
            std::fs::write(half_made.join("000001.sst"), b"partial").unwrap();
            (s.meta, whole_file)
        };
        let mut sm = StateMachine::open(&root).unwrap();
        let current = sm.get_current_snapshot().await.unwrap().expect("a snapshot");
        assert_eq!(
            index_of(&current.meta),
            3,
            "the whole snapshot, not the damaged newer one"
        );
        assert_eq!(current.snapshot.path, whole.1);
        assert_eq!(snap_files(&sm), vec![snapshot_name(&whole.0)]);
    }

    /// A damaged file made of a whole checkpoint is removed at a restart (it would be sent
    /// as is); the checkpoint stays current and makes the file again when asked.
    #[tokio::test]
    async fn a_restart_drops_a_damaged_file_made_of_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("member");
        let (meta, file) = {
            let mut sm = StateMachine::open(&root).unwrap();
            apply(&mut sm, 1..=4).await;
            let s = sm.build_snapshot().await.unwrap();
            let file = snapshot_file(&s.snapshot.path).unwrap();
            let bytes = std::fs::read(&file).unwrap();
            std::fs::write(&file, &bytes[..bytes.len() - 1]).unwrap();
            (s.meta, file)
        };
        let mut sm = StateMachine::open(&root).unwrap();
        let current = sm.get_current_snapshot().await.unwrap().expect("a snapshot");
        assert_eq!(current.meta.last_log_id, meta.last_log_id);
        assert_eq!(current.snapshot.path.extension().unwrap(), "ckpt");
        assert!(!file.exists(), "the damaged file was removed");
        assert_eq!(snapshot_file(&current.snapshot.path).unwrap(), file);
        snapshot::verify(&file).unwrap();
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
