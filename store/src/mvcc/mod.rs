//! MVCC: etcd's multi-version key-value model on a RocksDB instance.
//!
//! One store-wide revision (1 on an empty store) is bumped once per write request that
//! changes something; every key carries create/mod revision, version and lease; deletes are
//! tombstones; history stays until a compaction drops it.
//!
//! Column families of the state-machine instance:
//! - `kv`: revision key → encoded `mvccpb.KeyValue` (etcd's layout: the full history, the
//!   source of watch history and of HashKV),
//! - `index`: escaped user key ++ revision → 0 (put) or 1 (tombstone), for reads at a past
//!   revision,
//! - `latest`: user key → encoded `KeyValue` of live keys, so reads at the current revision
//!   are one ordered scan,
//! - `meta`: the [`Meta`] record, written in the same WriteBatch as every change, the
//!   active alarms, and the auth store (one record, `auth::AuthState`'s),
//! - `lease`: granted leases and the keys attached to each (see [`lease`]).
//!
//! This instance writes no RocksDB WAL: the Raft log is the source of truth and replays
//! whatever a crash took from the memtables, as etcd replays its WAL over bbolt. Every
//! flush, automatic or not, covers all column families at once (`atomic_flush`), so what
//! a restart finds on disk is always the state after some whole applied batch, its meta
//! record included. Writing each applied batch a second time, to a log nobody needs, cost
//! a quarter of a large apply (the `check perf` cleanup of 140,000 keys). [`Mvcc::sync`]
//! makes everything written so far durable (a flush); the state machine calls it before
//! the Raft log may be purged.

pub mod compaction;
pub mod history;
mod keys;
pub mod lease;
mod read;
mod write;

#[cfg(test)]
mod tests;

pub use keys::{KeyRange, Revision, decode_user_key, encode_user_key, index_key, revision_key};
pub use read::{RangeOutcome, ReadView};
pub use write::{WriteTxn, pending};

use std::path::Path;
use std::sync::{Arc, RwLock};

use prost::Message;
use rocksdb::{BlockBasedOptions, ColumnFamilyDescriptor, DB, FlushOptions, Options, WriteOptions};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

pub const CF_KV: &str = "kv";
pub const CF_INDEX: &str = "index";
pub const CF_LATEST: &str = "latest";
pub const CF_META: &str = "meta";
pub const CF_LEASE: &str = "lease";
/// Every column family of the state-machine instance, in a fixed order (snapshots rely on it).
pub const FAMILIES: [&str; 5] = [CF_KV, CF_INDEX, CF_LATEST, CF_META, CF_LEASE];
const META_KEY: &[u8] = b"meta";

/// The bookkeeping record stored with every applied batch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// Current store revision (1 on an empty store).
    pub revision: i64,
    /// Highest compacted revision (0 when never compacted).
    pub compacted: i64,
    /// State owned by the layer above (last applied log id, membership, member attributes);
    /// opaque here, but always written atomically with the data it describes.
    pub applied: Vec<u8>,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            revision: 1,
            compacted: 0,
            applied: Vec::new(),
        }
    }
}

/// The MVCC store. Cheap to share; the RocksDB handle can be swapped when a snapshot is
/// installed, so readers take a handle per operation.
pub struct Mvcc {
    db: RwLock<Arc<DB>>,
    /// Held shared while a read-only txn evaluates against the live database and
    /// exclusively while a batch is written, so such a txn sees one state.
    commit_lock: Arc<RwLock<()>>,
}

pub(crate) fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    opts.set_bytes_per_sync(1 << 20);
    // No WAL (see the module docs): a flush must then cover every family, or a crash
    // could keep one family's half of a batch and lose the other's.
    opts.set_atomic_flush(true);
    opts
}

/// How every write to this instance is made: to the memtables only (see the module docs).
pub(crate) fn unlogged() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.disable_wal(true);
    wo
}

/// Flushes every column family's memtable, atomically, and waits: afterwards everything
/// written so far is on disk (RocksDB syncs the files and the manifest of a flush).
pub(crate) fn flush_all(db: &DB) -> Result<()> {
    let families = FAMILIES
        .into_iter()
        .map(|name| cf(db, name))
        .collect::<Result<Vec<_>>>()?;
    let mut fo = FlushOptions::default();
    fo.set_wait(true);
    db.flush_cfs_opt(&families, &fo)?;
    Ok(())
}

/// Options of one column family. `latest` is read with a point lookup by every Put (the
/// key's previous version), and for a new key that lookup finds nothing: a Bloom filter
/// answers it without reading a block of every file that could hold the key. The other
/// families are scanned by ranges, which a whole-key filter cannot help.
fn family_options(name: &str) -> Options {
    let mut opts = Options::default();
    if name == CF_LATEST {
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        // Keys missing from the memtable skip its skip list too.
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.05);
    }
    opts
}

fn descriptors() -> impl Iterator<Item = ColumnFamilyDescriptor> {
    FAMILIES
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, family_options(name)))
}

pub(crate) fn open_db(path: &Path) -> Result<DB> {
    Ok(DB::open_cf_descriptors(&db_options(), path, descriptors())?)
}

/// Opens an instance read-only: a checkpoint of one (see `raft::snapshot_files`), read to
/// make a snapshot file of it.
pub(crate) fn open_db_read_only(path: &Path) -> Result<DB> {
    Ok(DB::open_cf_descriptors_read_only(
        &Options::default(),
        path,
        descriptors(),
        false,
    )?)
}

impl Mvcc {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Mvcc> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Storage(format!("create {}: {e}", path.display())))?;
        let db = open_db(path)?;
        Ok(Mvcc {
            db: RwLock::new(Arc::new(db)),
            commit_lock: Arc::new(RwLock::new(())),
        })
    }

    /// The current RocksDB handle.
    pub fn db(&self) -> Arc<DB> {
        self.db.read().expect("mvcc handle lock").clone()
    }

    /// Replaces the RocksDB handle (after a snapshot was installed in place of the old data).
    pub(crate) fn swap_db(&self, db: DB) -> Arc<DB> {
        let mut g = self.db.write().expect("mvcc handle lock");
        std::mem::replace(&mut *g, Arc::new(db))
    }

    /// The meta record as stored.
    pub fn meta(&self) -> Result<Meta> {
        read_meta(&self.db())
    }

    /// A consistent read view at the latest applied state.
    pub fn read_view(&self) -> Result<ReadView> {
        ReadView::new(self.db())
    }

    /// Starts a write transaction covering one or more requests; see [`WriteTxn`].
    pub fn write_txn(&self) -> Result<WriteTxn> {
        let db = self.db();
        let meta = read_meta(&db)?;
        Ok(WriteTxn::new(db, meta, self.commit_lock.clone()))
    }

    /// Evaluates a transaction that writes nothing against one consistent state.
    pub fn read_only_txn(
        &self,
        req: &crate::proto::etcdserverpb::TxnRequest,
    ) -> Result<crate::proto::etcdserverpb::TxnResponse> {
        let _shared = self.commit_lock.read().expect("commit lock");
        let db = self.db();
        let meta = read_meta(&db)?;
        let mut txn = WriteTxn::new(db, meta, self.commit_lock.clone());
        let resp = txn.txn(req)?;
        debug_assert!(!txn.is_dirty(), "read-only txn wrote");
        Ok(resp)
    }

    /// Makes everything written so far durable (flushes the memtables; see the module docs).
    pub fn sync(&self) -> Result<()> {
        flush_all(&self.db())
    }

    /// `(dbSize, dbSizeInUse)` in bytes, as etcd's Status reports them.
    pub fn size(&self) -> (i64, i64) {
        let db = self.db();
        let mut total = 0u64;
        let mut live = 0u64;
        for name in FAMILIES {
            if let Some(cf) = db.cf_handle(name) {
                let sst = db
                    .property_int_value_cf(&cf, "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let mem = db
                    .property_int_value_cf(&cf, "rocksdb.size-all-mem-tables")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let est = db
                    .property_int_value_cf(&cf, "rocksdb.estimate-live-data-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                total += sst + mem;
                live += est + mem;
            }
        }
        (total as i64, live.min(total) as i64)
    }
}

const ALARMS_KEY: &[u8] = b"alarms";

impl Mvcc {
    /// The active alarms as last applied (an encoded `AlarmResponse`'s `alarms`).
    pub fn alarms(&self) -> Result<Vec<crate::proto::etcdserverpb::AlarmMember>> {
        let db = self.db();
        let cf = db
            .cf_handle(CF_META)
            .ok_or_else(|| StoreError::Storage("missing meta column family".into()))?;
        match db.get_cf(&cf, ALARMS_KEY)? {
            None => Ok(Vec::new()),
            Some(b) => crate::proto::etcdserverpb::AlarmResponse::decode(b.as_slice())
                .map(|r| r.alarms)
                .map_err(|e| StoreError::Storage(format!("corrupt alarm record: {e}"))),
        }
    }
}

impl WriteTxn {
    /// Stages the set of active alarms (written with the batch).
    pub fn set_alarms(&mut self, alarms: &[crate::proto::etcdserverpb::AlarmMember]) -> Result<()> {
        let enc = crate::proto::etcdserverpb::AlarmResponse {
            header: None,
            alarms: alarms.to_vec(),
        }
        .encode_to_vec();
        self.stage_raw(CF_META, ALARMS_KEY.to_vec(), enc);
        Ok(())
    }
}

const AUTH_KEY: &[u8] = b"auth";

impl Mvcc {
    /// The auth store's record as last applied (`None` when auth was never changed).
    pub fn auth_record(&self) -> Result<Option<crate::proto::lodestone::AuthStore>> {
        let db = self.db();
        match db.get_cf(cf(&db, CF_META)?, AUTH_KEY)? {
            None => Ok(None),
            Some(b) => crate::proto::lodestone::AuthStore::decode(b.as_slice())
                .map(Some)
                .map_err(|e| StoreError::Storage(format!("corrupt auth record: {e}"))),
        }
    }
}

impl WriteTxn {
    /// Stages the auth store's record (written with the batch).
    pub fn set_auth_record(&mut self, record: &crate::proto::lodestone::AuthStore) {
        self.stage_raw(CF_META, AUTH_KEY.to_vec(), record.encode_to_vec());
    }
}

/// A column family of the state-machine instance, or a storage error when it is missing.
pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| StoreError::Storage(format!("missing {name} column family")))
}

pub(crate) fn read_meta(db: &DB) -> Result<Meta> {
    let cf = db
        .cf_handle(CF_META)
        .ok_or_else(|| StoreError::Storage("missing meta column family".into()))?;
    match db.get_cf(&cf, META_KEY)? {
        None => Ok(Meta::default()),
        Some(b) => decode_meta(&b),
    }
}

/// The meta record from its stored bytes (empty: a store that applied nothing yet).
pub fn decode_meta(raw: &[u8]) -> Result<Meta> {
    if raw.is_empty() {
        return Ok(Meta::default());
    }
    bincode::deserialize(raw).map_err(|e| StoreError::Storage(format!("corrupt meta record: {e}")))
}

pub(crate) fn encode_meta(meta: &Meta) -> Vec<u8> {
    bincode::serialize(meta).expect("meta serializes")
}

pub(crate) fn decode_kv(b: &[u8]) -> Result<crate::proto::mvccpb::KeyValue> {
    crate::proto::mvccpb::KeyValue::decode(b).map_err(|e| StoreError::Storage(format!("corrupt key-value record: {e}")))
}

/// Just the lease of a stored `mvccpb.KeyValue`: its field 6. Decoding into this skips the
/// key and value without copying them, which matters when a delete visits many keys.
#[derive(Clone, PartialEq, prost::Message)]
struct LeaseOfKv {
    #[prost(int64, tag = "6")]
    lease: i64,
}

/// The lease a stored `mvccpb.KeyValue` is attached to (0 for none).
pub(crate) fn decode_lease(b: &[u8]) -> Result<i64> {
    LeaseOfKv::decode(b)
        .map(|l| l.lease)
        .map_err(|e| StoreError::Storage(format!("corrupt key-value record: {e}")))
}
