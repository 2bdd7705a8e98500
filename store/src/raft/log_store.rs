//! The write-ahead log: the Raft log and the vote in their own RocksDB instance
//! (`--wal-dir`).
//!
//! Durability contract with openraft: an append is reported flushed (`IOFlushed`) only after
//! the RocksDB WAL holding it has been fsynced, and a vote is saved only once synced.
//!
//! Group commit: a **writer thread** applies every write in submission order without sync
//! (so entries are readable as soon as `append` returns) and hands the completion to a
//! **flusher thread**. The flusher takes every completion queued so far, issues one
//! `flush_wal(sync)` and completes them all. While one fsync runs, further appends are
//! written and queue up for the next one: one fsync covers every entry appended meanwhile.
//!
//! Truncation and purge are written unsynced; the next synced write to the same WAL makes
//! them durable before anything that depends on them is acknowledged.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::type_config::alias::{LogIdOf, VoteOf};
use rocksdb::{ColumnFamilyDescriptor, DB, DBRecoveryMode, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use tokio::sync::oneshot;

use super::TypeConfig;
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

/// Makes the state machine durable before log entries it was built from are purged.
pub type DurabilityBarrier = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

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

struct Inner {
    db: Arc<DB>,
    jobs: Mutex<Option<std_mpsc::Sender<Job>>>,
    /// `(last_purged, last_log_id)` as openraft must see them.
    state: Mutex<(Option<LogId>, Option<LogId>)>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    barrier: Mutex<Option<DurabilityBarrier>>,
}

/// The RocksDB-backed Raft log store. Clones share one instance.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
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
        let writer = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer_loop(wdb, rx, ftx))?;
        let fdb = db.clone();
        let flusher = std::thread::Builder::new()
            .name("wal-fsync".into())
            .spawn(move || flusher_loop(fdb, frx))?;

        Ok(LogStore {
            inner: Arc::new(Inner {
                db,
                jobs: Mutex::new(Some(tx)),
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
        self.inner.jobs.lock().expect("jobs lock").take();
        let threads = std::mem::take(&mut *self.inner.threads.lock().expect("threads lock"));
        for t in threads {
            let _ = t.join();
        }
    }

    fn send(&self, job: Job) -> std::io::Result<()> {
        let guard = self.inner.jobs.lock().expect("jobs lock");
        let tx = guard.as_ref().ok_or_else(|| io_err("write-ahead log is closed"))?;
        tx.send(job).map_err(|_| io_err("write-ahead log writer stopped"))
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

fn writer_loop(db: Arc<DB>, rx: std_mpsc::Receiver<Job>, flusher: std_mpsc::Sender<Waiter>) {
    let mut wo = WriteOptions::default();
    wo.set_sync(false);
    while let Ok(job) = rx.recv() {
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
        let cf = self.inner.db.cf_handle(CF_META).expect("meta cf");
        let mut b = WriteBatch::default();
        match committed {
            Some(c) => b.put_cf(&cf, KEY_COMMITTED, encode(&c)),
            None => b.delete_cf(&cf, KEY_COMMITTED),
        }
        self.submit_plain(b).await
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
        let cf = self.inner.db.cf_handle(CF_LOG).expect("log cf");
        let mut batch = WriteBatch::default();
        let mut last = None;
        for e in entries {
            batch.put_cf(&cf, idx_key(e.log_id.index), encode(&e));
            last = Some(e.log_id);
        }
        let Some(last) = last else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        let (written, rx) = oneshot::channel();
        self.send(Job::Append {
            batch,
            written,
            flushed: callback,
        })?;
        rx.await.map_err(|_| io_err("write-ahead log writer stopped"))??;
        self.inner.state.lock().expect("state lock").1 = Some(last);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last_log_id.as_ref().map_or(0, |l| l.index + 1);
        let cf = self.inner.db.cf_handle(CF_LOG).expect("log cf");
        let mut b = WriteBatch::default();
        // delete_range excludes its end; u64::MAX is never a real index.
        b.delete_range_cf(&cf, idx_key(from), idx_key(u64::MAX));
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
        // would be needed to rebuild it.
        let barrier = self.inner.barrier.lock().expect("barrier lock").clone();
        if let Some(barrier) = barrier {
            tokio::task::spawn_blocking(move || barrier()).await.map_err(io_err)??;
        }
        let db = &self.inner.db;
        let meta = db.cf_handle(CF_META).expect("meta cf");
        let log = db.cf_handle(CF_LOG).expect("log cf");
        let mut b = WriteBatch::default();
        b.put_cf(&meta, KEY_PURGED, encode(&log_id));
        b.delete_range_cf(&log, idx_key(0), idx_key(log_id.index + 1));
        self.submit_plain(b).await?;
        let mut st = self.inner.state.lock().expect("state lock");
        if st.1.as_ref().is_none_or(|l| l.index < log_id.index) {
            st.1 = Some(log_id);
        }
        st.0 = Some(log_id);
        Ok(())
    }
}
