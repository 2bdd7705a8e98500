//! The write-ahead log: the Raft log and the vote in their own RocksDB instance
//! (`--wal-dir`).
//!
//! Durability contract with openraft: an append is reported flushed (`IOFlushed`) only after
//! the RocksDB WAL holding it has been fsynced, and a vote is saved only once synced.
//!
//! Group commit: every write is applied in submission order without sync (so entries are
//! readable as soon as `append` returns) and its completion goes to a **flusher thread**.
//! The flusher takes every completion queued so far, issues one `flush_wal(sync)` and
//! completes them all. While one fsync runs, further appends are written and queue up for
//! the next one: one fsync covers every entry appended meanwhile.
//!
//! A small append is written on the caller's task when nothing is queued ahead of it and
//! RocksDB can take it without waiting (`no_slowdown`: a memtable insert and a buffered WAL
//! write); everything else, and an append RocksDB would make wait (a write stall), goes
//! through a **writer thread** that keeps submission order. The inline path spares a small
//! append (the common case below heavy load) two thread hops on its way to the followers and
//! to its fsync; a large one is worth the hops, as the caller keeps working while it is
//! written. The commit record takes the same path: openraft applies committed entries only
//! once it is saved.
//!
//! Truncation and purge are written unsynced; the next synced write to the same WAL makes
//! them durable before anything that depends on them is acknowledged.
//!
//! The **tail**: the newest entries also stay in memory (bounded by count and size), because
//! almost every read of the log wants them: the leader sends each entry to every follower
//! just after appending it, and every member applies it just after it commits. Served from
//! the tail, those reads cost a clone of reference-counted buffers instead of a hop to a
//! blocking thread, a RocksDB seek and a decode. The tail only ever holds entries RocksDB
//! holds too: appends enter it after their write, truncation and purge leave it before
//! theirs.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::type_config::alias::{LogIdOf, VoteOf};
use rocksdb::{
    ColumnFamilyDescriptor, DB, DBRecoveryMode, Direction, ErrorKind, IteratorMode, Options, WriteBatch, WriteOptions,
};
use tokio::sync::oneshot;

use super::TypeConfig;
use super::shared::io_err;
use crate::metrics;

type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_IDENTITY: &[u8] = b"identity";

/// Appends up to this many encoded bytes may be written on the caller's task.
const INLINE_BYTES: usize = 32 << 10;

/// At most this many of the newest entries stay in memory...
const TAIL_ENTRIES: usize = 8192;
/// ...and at most this many bytes of them (their encoded size). Values are reference-counted
/// buffers that may share a larger receive buffer, so the count bound matters as much.
const TAIL_BYTES: usize = 32 << 20;

/// Makes the state machine durable through the given log index before the entries up to it
/// are purged.
pub type DurabilityBarrier = Arc<dyn Fn(u64) -> std::io::Result<()> + Send + Sync>;

enum Job {
    /// Write, answer `written` at once, complete `flushed` after the next fsync.
    Append {
        batch: WriteBatch,
        written: oneshot::Sender<std::io::Result<()>>,
        flushed: IOFlushed<TypeConfig>,
    },
    /// Write and answer only after the next fsync.
    Synced {
        batch: WriteBatch,
        done: oneshot::Sender<std::io::Result<()>>,
    },
    /// Write, answer at once; made durable by a later synced write.
    Plain {
        batch: WriteBatch,
        done: oneshot::Sender<std::io::Result<()>>,
    },
}

enum Waiter {
    Flushed(IOFlushed<TypeConfig>),
    Done(oneshot::Sender<std::io::Result<()>>),
}

/// The newest entries of the log, consecutive, each with its encoded size; empty or ending at
/// the last entry RocksDB holds.
#[derive(Default)]
struct Tail {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Tail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    /// Adds entries just written after the last one, dropping the oldest beyond the bounds.
    fn extend(&mut self, appended: Vec<(Entry, usize)>) {
        let Some((first, _)) = appended.first() else {
            return;
        };
        // Entries that do not continue the tail start a new one (openraft truncates or purges
        // before it appends out of sequence, so this is a guard, not a path).
        if self.last_index().is_some_and(|l| l + 1 != first.log_id.index) {
            self.clear();
        }
        for (e, size) in appended {
            self.bytes += size;
            self.entries.push_back((e, size));
        }
        while self.entries.len() > TAIL_ENTRIES || self.bytes > TAIL_BYTES {
            let Some((_, size)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= size;
        }
    }

    /// Forgets entries from `index` on.
    fn truncate_from(&mut self, index: u64) {
        while self.last_index().is_some_and(|l| l >= index) {
            let (_, size) = self.entries.pop_back().expect("non-empty");
            self.bytes -= size;
        }
    }

    /// Forgets entries up to and including `index`.
    fn purge_to(&mut self, index: u64) {
        while self.first_index().is_some_and(|f| f <= index) {
            let (_, size) = self.entries.pop_front().expect("non-empty");
            self.bytes -= size;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Entries `start..end` (`end` `None`: to the last), if the tail holds all of them.
    fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.last_index()?;
        let end = end.unwrap_or(last + 1);
        if end <= start {
            // Nothing lies there (past the end when `end` was open): as RocksDB would answer.
            return Some(Vec::new());
        }
        if start < first || end > last + 1 {
            return None;
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(self.entries.range(from..to).map(|(e, _)| e.clone()).collect())
    }
}

/// The ways into the writer and flusher threads (`None` once closed).
struct Queues {
    jobs: std_mpsc::Sender<Job>,
    flusher: std_mpsc::Sender<Waiter>,
}

struct Inner {
    db: Arc<DB>,
    tail: Mutex<Tail>,
    queues: Mutex<Option<Queues>>,
    /// Jobs sent to the writer thread that it has not finished: an append may be written
    /// inline only when this is zero, so it never overtakes one.
    queued: Arc<AtomicUsize>,
    /// `(last_purged, last_log_id)` as openraft must see them.
    state: Mutex<(Option<LogId>, Option<LogId>)>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    barrier: Mutex<Option<DurabilityBarrier>>,
}

impl Inner {
    /// Stops the writer and flusher threads after they finish queued work.
    fn stop(&self) {
        // Also from `drop`, where a panic would abort: a poisoned lock still holds what to stop.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner).take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Inner {
    /// The last handle is gone: stop the threads, whose handles on the database are the
    /// last ones, so RocksDB closes here and not while the process exits (its static state
    /// torn down under a database still open aborts the process).
    fn drop(&mut self) {
        self.stop();
    }
}

/// The RocksDB-backed Raft log store. Clones share one instance.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

fn idx_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> std::io::Result<T> {
    bincode::deserialize(b).map_err(|e| io_err(format!("corrupt {what} in the write-ahead log: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("raft types serialize")
}

impl LogStore {
    /// Opens (or creates) the log under `dir` and starts its writer and flusher threads.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Every acknowledged entry was fsynced, so a torn tail can only hold unacknowledged
        // writes: drop it. Corruption anywhere else refuses to open.
        opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
        opts.set_max_background_jobs(2);
        let mut log_cf = Options::default();
        // Entries are purged soon after they are applied; a large memtable keeps most of them
        // from ever reaching an SST file.
        log_cf.set_write_buffer_size(64 << 20);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOG, log_cf),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
        ];
        let db = Arc::new(DB::open_cf_descriptors(&opts, dir, cfs).map_err(io_err)?);

        let last_purged: Option<LogId> = {
            let cf = db.cf_handle(CF_META).expect("meta cf");
            db.get_cf(&cf, KEY_PURGED)
                .map_err(io_err)?
                .map(|b| decode(&b, "purge record"))
                .transpose()?
        };
        let last_entry: Option<LogId> = {
            let cf = db.cf_handle(CF_LOG).expect("log cf");
            let mut it = db.iterator_cf(&cf, IteratorMode::End);
            match it.next() {
                Some(item) => {
                    let (_, v) = item.map_err(io_err)?;
                    let e: Entry = decode(&v, "log entry")?;
                    Some(e.log_id)
                }
                None => None,
            }
        };
        let last_log = last_entry.or(last_purged);

        let (tx, rx) = std_mpsc::channel::<Job>();
        let (ftx, frx) = std_mpsc::channel::<Waiter>();
        let wdb = db.clone();
        let queued = Arc::new(AtomicUsize::new(0));
        let (wq, wftx) = (queued.clone(), ftx.clone());
        let writer = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer_loop(wdb, rx, wftx, wq))?;
        let fdb = db.clone();
        let flusher = std::thread::Builder::new()
            .name("wal-fsync".into())
            .spawn(move || flusher_loop(fdb, frx))?;

        Ok(LogStore {
            inner: Arc::new(Inner {
                db,
                tail: Mutex::new(Tail::default()),
                queues: Mutex::new(Some(Queues { jobs: tx, flusher: ftx })),
                queued,
                state: Mutex::new((last_purged, last_log)),
                threads: Mutex::new(vec![writer, flusher]),
                barrier: Mutex::new(None),
            }),
        })
    }

    /// Installs the hook that makes the state machine durable before a purge.
    pub fn set_durability_barrier(&self, barrier: DurabilityBarrier) {
        *self.inner.barrier.lock().expect("barrier lock") = Some(barrier);
    }

    /// `(cluster id, member id)` recorded when this member first joined a cluster.
    pub fn identity(&self) -> std::io::Result<Option<(u64, u64)>> {
        self.read_meta(KEY_IDENTITY, "member identity")
    }

    /// Records the cluster and member ids durably, before the member ever votes or appends.
    pub async fn save_identity(&self, cluster_id: u64, member_id: u64) -> std::io::Result<()> {
        let cf = self.inner.db.cf_handle(CF_META).expect("meta cf");
        let mut b = WriteBatch::default();
        b.put_cf(&cf, KEY_IDENTITY, encode(&(cluster_id, member_id)));
        self.submit_synced(b).await
    }

    /// The commit index saved before the last stop (0 if none): serializable reads wait until
    /// the state machine is back there.
    pub fn saved_commit_index(&self) -> std::io::Result<u64> {
        let committed: Option<LogId> = self.read_meta(KEY_COMMITTED, "commit record")?;
        Ok(committed.map_or(0, |c| c.index))
    }

    /// True when the log holds no vote and no entries: a member that never ran.
    pub fn is_pristine(&self) -> std::io::Result<bool> {
        let vote: Option<Vote> = self.read_meta(KEY_VOTE, "vote")?;
        let state = self.inner.state.lock().expect("state lock");
        Ok(vote.is_none() && state.1.is_none())
    }

    /// Stops the writer and flusher threads after they finish queued work.
    pub fn close(&self) {
        self.inner.stop();
    }

    fn send(&self, job: Job) -> std::io::Result<()> {
        let guard = self.inner.queues.lock().expect("queues lock");
        let queues = guard.as_ref().ok_or_else(|| io_err("write-ahead log is closed"))?;
        self.inner.queued.fetch_add(1, Ordering::AcqRel);
        queues.jobs.send(job).map_err(|_| {
            self.inner.queued.fetch_sub(1, Ordering::AcqRel);
            io_err("write-ahead log writer stopped")
        })
    }

    /// Writes a batch of `bytes` on the calling task if nothing is queued ahead and RocksDB
    /// takes it without waiting; `false` when it must go through the writer thread instead.
    fn write_inline(&self, bytes: usize, batch: impl FnOnce() -> WriteBatch) -> std::io::Result<bool> {
        if bytes > INLINE_BYTES || self.inner.queued.load(Ordering::Acquire) != 0 {
            return Ok(false);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        wo.set_no_slowdown(true);
        match self.inner.db.write_opt(batch(), &wo) {
            Ok(()) => Ok(true),
            // A write stall: RocksDB would have made the caller wait; the writer thread will.
            Err(e) if e.kind() == ErrorKind::Incomplete => Ok(false),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Hands an append written inline to the flusher for its fsync.
    fn await_fsync(&self, flushed: IOFlushed<TypeConfig>) -> std::io::Result<()> {
        let guard = self.inner.queues.lock().expect("queues lock");
        let unsent = match guard.as_ref() {
            Some(queues) => match queues.flusher.send(Waiter::Flushed(flushed)) {
                Ok(()) => return Ok(()),
                Err(std_mpsc::SendError(waiter)) => waiter,
            },
            None => Waiter::Flushed(flushed),
        };
        const STOPPED: &str = "write-ahead log flusher stopped";
        if let Waiter::Flushed(cb) = unsent {
            cb.io_completed(Err(io_err(STOPPED)));
        }
        Err(io_err(STOPPED))
    }

    fn log_batch(&self, records: &[(u64, Vec<u8>)]) -> WriteBatch {
        let cf = self.inner.db.cf_handle(CF_LOG).expect("log cf");
        let mut batch = WriteBatch::default();
        for (index, bytes) in records {
            batch.put_cf(&cf, idx_key(*index), bytes);
        }
        batch
    }

    async fn submit_synced(&self, batch: WriteBatch) -> std::io::Result<()> {
        let (done, rx) = oneshot::channel();
        self.send(Job::Synced { batch, done })?;
        rx.await.map_err(|_| io_err("write-ahead log writer stopped"))?
    }

    async fn submit_plain(&self, batch: WriteBatch) -> std::io::Result<()> {
        let (done, rx) = oneshot::channel();
        self.send(Job::Plain { batch, done })?;
        rx.await.map_err(|_| io_err("write-ahead log writer stopped"))?
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8], what: &str) -> std::io::Result<Option<T>> {
        let db = &self.inner.db;
        let cf = db.cf_handle(CF_META).expect("meta cf");
        db.get_cf(cf, key)
            .map_err(io_err)?
            .map(|b| decode(&b, what))
            .transpose()
    }

    fn read_range(&self, start: u64, end: Option<u64>) -> std::io::Result<Vec<Entry>> {
        let db = &self.inner.db;
        let cf = db.cf_handle(CF_LOG).expect("log cf");
        let mut out = Vec::new();
        for item in db.iterator_cf(&cf, IteratorMode::From(&idx_key(start), Direction::Forward)) {
            let (k, v) = item.map_err(io_err)?;
            let idx = u64::from_be_bytes(k[..8].try_into().map_err(io_err)?);
            if end.is_some_and(|e| idx >= e) {
                break;
            }
            out.push(decode::<Entry>(&v, "log entry")?);
        }
        Ok(out)
    }
}

fn writer_loop(db: Arc<DB>, rx: std_mpsc::Receiver<Job>, flusher: std_mpsc::Sender<Waiter>, queued: Arc<AtomicUsize>) {
    let mut wo = WriteOptions::default();
    wo.set_sync(false);
    while let Ok(job) = rx.recv() {
        // Counted down on every way out of this iteration, after the completion is handed on.
        let _done = CountDown(&queued);
        match job {
            Job::Append {
                batch,
                written,
                flushed,
            } => match db.write_opt(batch, &wo) {
                Ok(()) => {
                    let _ = written.send(Ok(()));
                    let _ = flusher.send(Waiter::Flushed(flushed));
                }
                Err(e) => {
                    let _ = written.send(Err(io_err(&e)));
                    flushed.io_completed(Err(io_err(e)));
                }
            },
            Job::Synced { batch, done } => match db.write_opt(batch, &wo) {
                Ok(()) => {
                    let _ = flusher.send(Waiter::Done(done));
                }
                Err(e) => {
                    let _ = done.send(Err(io_err(e)));
                }
            },
            Job::Plain { batch, done } => {
                let _ = done.send(db.write_opt(batch, &wo).map_err(io_err));
            }
        }
    }
}

struct CountDown<'a>(&'a AtomicUsize);

impl Drop for CountDown<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn flusher_loop(db: Arc<DB>, rx: std_mpsc::Receiver<Waiter>) {
    while let Ok(first) = rx.recv() {
        let mut waiters = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiters.push(more);
        }
        let start = Instant::now();
        let result = db.flush_wal(true);
        metrics::observe_wal_fsync(start.elapsed());
        for w in waiters {
            let r = result.as_ref().map(|_| ()).map_err(io_err);
            match w {
                Waiter::Flushed(cb) => cb.io_completed(r),
                Waiter::Done(tx) => {
                    let _ = tx.send(r);
                }
            }
        }
    }
}

fn range_to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => Some(e + 1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        let (start, end) = range_to_bounds(&range);
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        if let Some(entries) = self.inner.tail.lock().expect("tail lock").get(start, end) {
            return Ok(entries);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_range(start, end))
            .await
            .map_err(io_err)?
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_meta(KEY_VOTE, "vote"))
            .await
            .map_err(io_err)?
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        let (last_purged_log_id, last_log_id) = *self.inner.state.lock().expect("state lock");
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        let cf = self.inner.db.cf_handle(CF_META).expect("meta cf");
        let mut b = WriteBatch::default();
        b.put_cf(&cf, KEY_VOTE, encode(vote));
        self.submit_synced(b).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        // openraft applies what it committed only after this returns: the record is small,
        // so it is written on this task when it can be, sparing the hop to the writer.
        let record = || {
            let cf = self.inner.db.cf_handle(CF_META).expect("meta cf");
            let mut b = WriteBatch::default();
            match committed {
                Some(c) => b.put_cf(&cf, KEY_COMMITTED, encode(&c)),
                None => b.delete_cf(&cf, KEY_COMMITTED),
            }
            b
        };
        if self.write_inline(0, record)? {
            return Ok(());
        }
        self.submit_plain(record()).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_meta(KEY_COMMITTED, "commit record"))
            .await
            .map_err(io_err)?
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        let mut appended = Vec::new();
        for e in entries {
            let bytes = encode(&e);
            let size = bytes.len();
            records.push((e.log_id.index, bytes));
            appended.push((e, size));
        }
        let Some(last) = appended.last().map(|(e, _)| e.log_id) else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        let bytes = records.iter().map(|(_, b)| b.len()).sum();
        match self.write_inline(bytes, || self.log_batch(&records)) {
            Ok(true) => self.await_fsync(callback)?,
            Ok(false) => {
                let (written, rx) = oneshot::channel();
                self.send(Job::Append {
                    batch: self.log_batch(&records),
                    written,
                    flushed: callback,
                })?;
                rx.await.map_err(|_| io_err("write-ahead log writer stopped"))??;
            }
            Err(e) => {
                callback.io_completed(Err(io_err(&e)));
                return Err(e);
            }
        }
        self.inner.tail.lock().expect("tail lock").extend(appended);
        self.inner.state.lock().expect("state lock").1 = Some(last);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last_log_id.as_ref().map_or(0, |l| l.index + 1);
        let cf = self.inner.db.cf_handle(CF_LOG).expect("log cf");
        let mut b = WriteBatch::default();
        // delete_range excludes its end; u64::MAX is never a real index.
        b.delete_range_cf(&cf, idx_key(from), idx_key(u64::MAX));
        self.inner.tail.lock().expect("tail lock").truncate_from(from);
        self.submit_plain(b).await?;
        let mut st = self.inner.state.lock().expect("state lock");
        st.1 = match (last_log_id, st.1.take()) {
            // Truncating after a point past the end leaves the end where it was.
            (Some(keep), Some(cur)) if cur.index <= keep.index => Some(cur),
            (Some(keep), _) => Some(keep),
            (None, _) => st.0,
        };
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        // Never drop entries the state machine has not made durable: after a power loss they
        // would be needed to rebuild it. (openraft waits for this call before it goes on, so
        // the barrier must be cheap when it can be: the snapshot that allows this purge
        // usually flushed the state already.)
        let barrier = self.inner.barrier.lock().expect("barrier lock").clone();
        if let Some(barrier) = barrier {
            let upto = log_id.index;
            tokio::task::spawn_blocking(move || barrier(upto))
                .await
                .map_err(io_err)??;
        }
        let db = &self.inner.db;
        let meta = db.cf_handle(CF_META).expect("meta cf");
        let log = db.cf_handle(CF_LOG).expect("log cf");
        let mut b = WriteBatch::default();
        b.put_cf(&meta, KEY_PURGED, encode(&log_id));
        b.delete_range_cf(&log, idx_key(0), idx_key(log_id.index + 1));
        self.inner.tail.lock().expect("tail lock").purge_to(log_id.index);
        self.submit_plain(b).await?;
        let mut st = self.inner.state.lock().expect("state lock");
        if st.1.as_ref().is_none_or(|l| l.index < log_id.index) {
            st.1 = Some(log_id);
        }
        st.0 = Some(log_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::entry::RaftEntry;

    fn entry(index: u64) -> (Entry, usize) {
        (
            Entry::new_blank(openraft::testing::log_id::<TypeConfig>(1, 1, index)),
            100,
        )
    }

    fn tail_of(range: std::ops::RangeInclusive<u64>) -> Tail {
        let mut t = Tail::default();
        t.extend(range.map(entry).collect());
        t
    }

    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn the_tail_answers_only_ranges_it_holds_whole() {
        let t = tail_of(5..=9);
        assert_eq!(indexes(t.get(5, Some(10))), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(t.get(7, None)), Some(vec![7, 8, 9]));
        assert_eq!(indexes(t.get(6, Some(8))), Some(vec![6, 7]));
        assert_eq!(indexes(t.get(10, None)), Some(vec![]), "just past the end: nothing");
        assert_eq!(indexes(t.get(20, None)), Some(vec![]), "far past the end: nothing");
        assert_eq!(indexes(t.get(4, Some(8))), None, "starts before the tail: RocksDB");
        assert_eq!(indexes(t.get(8, Some(11))), None, "ends past the tail: RocksDB");
        assert_eq!(
            indexes(Tail::default().get(1, None)),
            None,
            "an empty tail knows nothing"
        );
    }

    #[test]
    fn truncation_and_purge_leave_the_tail_before_they_reach_rocksdb() {
        let mut t = tail_of(1..=10);
        t.truncate_from(8);
        assert_eq!(indexes(t.get(1, None)), Some((1..=7).collect()));
        assert_eq!(t.bytes, 700);
        t.purge_to(3);
        assert_eq!(indexes(t.get(4, None)), Some(vec![4, 5, 6, 7]));
        assert_eq!(indexes(t.get(3, None)), None);
        t.purge_to(100);
        assert_eq!((t.entries.len(), t.bytes), (0, 0));
        // After a purge past the end (a snapshot installed), appends start a new tail.
        t.extend(vec![entry(101)]);
        assert_eq!(indexes(t.get(101, None)), Some(vec![101]));
    }

    /// RocksDB locks its directory while open: a log whose last handle is gone reopens at
    /// once only if dropping the handle closed the database (not some time later, when the
    /// threads holding it notice, or never before the process exits).
    #[tokio::test]
    async fn dropping_the_last_handle_closes_the_log() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..5 {
            let log = LogStore::open(dir.path()).unwrap();
            let reader = log.clone();
            log.save_identity(1, 2).await.unwrap();
            drop(reader);
            drop(log);
            LogStore::open(dir.path()).unwrap_or_else(|e| panic!("round {round}: reopening: {e}"));
        }
    }

    #[test]
    fn entries_out_of_sequence_start_a_new_tail() {
        let mut t = tail_of(1..=3);
        t.extend(vec![entry(7), entry(8)]);
        assert_eq!(indexes(t.get(7, None)), Some(vec![7, 8]));
        assert_eq!(indexes(t.get(3, None)), None);
        assert_eq!(t.bytes, 200);
    }

    #[test]
    fn the_tail_keeps_only_the_newest_within_its_bounds() {
        let mut t = Tail::default();
        t.extend((1..=(TAIL_ENTRIES as u64 + 10)).map(entry).collect());
        assert_eq!(t.entries.len(), TAIL_ENTRIES);
        assert_eq!(t.first_index(), Some(11));
        let mut t = Tail::default();
        let big = |i| (entry(i).0, TAIL_BYTES / 2);
        t.extend(vec![big(1), big(2), big(3)]);
        assert_eq!(
            (t.first_index(), t.last_index(), t.bytes),
            (Some(2), Some(3), TAIL_BYTES)
        );
        // One entry larger than the whole bound leaves the tail empty rather than over it.
        t.extend(vec![(entry(4).0, TAIL_BYTES + 1)]);
        assert_eq!((t.entries.len(), t.bytes), (0, 0));
        t.extend(vec![entry(5)]);
        assert_eq!(indexes(t.get(5, None)), Some(vec![5]));
    }
}
