//! The snapshot file: a consistent point-in-time copy of the state machine, written from a
//! RocksDB snapshot of an instance (a built checkpoint, when a member behind the purged log
//! needs it, or the live instance, for a client), streamed to that member, and loaded into a
//! fresh RocksDB instance on the receiver.
//!
//! Layout: `LODESNAP`, format version (u32 BE), snapshot meta (u32 BE length + bincode),
//! then records `cf (u8) | key len (u32 BE) | key | value len (u32 BE) | value`, an end mark
//! (0xFF), and the SHA-256 of everything before it. Lengths are bounded so a damaged or
//! hostile file cannot make the reader allocate without limit.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rocksdb::{DB, IteratorMode, WriteBatch};
use sha2::{Digest, Sha256};

use super::SnapshotMeta;
use crate::fsync::SyncPacer;
use crate::mvcc::{CF_META, FAMILIES};

const MAGIC: &[u8; 8] = b"LODESNAP";
const VERSION: u32 = 1;
const END: u8 = 0xFF;
const MAX_FIELD: u32 = 64 << 20;

/// A snapshot on disk, a checkpoint directory or a file (see `snapshot_files`): what
/// openraft hands around as `SnapshotData`.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A snapshot file being built, synced as its [`SyncPacer`] says.
struct TrickleFile {
    file: File,
    pacer: SyncPacer,
}

impl Write for TrickleFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        if self.pacer.wrote(n) {
            self.file.sync_data()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

struct HashingReader<R: Read> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Writes every column family of `db`, as seen by one RocksDB snapshot, to `path`
/// (fsynced), and returns the snapshot meta that `meta_of` makes of the store's meta record
/// in that same view.
pub fn write(
    db: &DB,
    path: &Path,
    meta_of: impl FnOnce(&crate::mvcc::Meta) -> std::io::Result<SnapshotMeta>,
) -> std::io::Result<SnapshotMeta> {
    let snap = db.snapshot();
    let meta_cf = db.cf_handle(CF_META).ok_or_else(|| bad("missing meta column family"))?;
    let raw_meta = snap
        .get_cf(&meta_cf, b"meta")
        .map_err(std::io::Error::other)?
        .unwrap_or_default();
    let store_meta = crate::mvcc::decode_meta(&raw_meta).map_err(|e| bad(e.to_string()))?;
    let meta = meta_of(&store_meta)?;
    // History a large DeleteRange wrote ahead of its batch is not state yet.
    let revision = store_meta.revision;

    let tmp = path.with_extension("tmp");
    let file = TrickleFile {
        file: File::create(&tmp)?,
        pacer: SyncPacer::default(),
    };
    let mut w = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hash: Sha256::new(),
    };
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_be_bytes())?;
    let m = bincode::serialize(&meta).map_err(std::io::Error::other)?;
    w.write_all(&(m.len() as u32).to_be_bytes())?;
    w.write_all(&m)?;
    for (i, name) in FAMILIES.iter().enumerate() {
        let cf = db
            .cf_handle(name)
            .ok_or_else(|| bad(format!("missing {name} column family")))?;
        for item in snap.iterator_cf(&cf, IteratorMode::Start) {
            let (k, v) = item.map_err(std::io::Error::other)?;
            if crate::mvcc::pending(name, &k, revision) {
                continue;
            }
            w.write_all(&[i as u8])?;
            w.write_all(&(k.len() as u32).to_be_bytes())?;
            w.write_all(&k)?;
            w.write_all(&(v.len() as u32).to_be_bytes())?;
            w.write_all(&v)?;
        }
    }
    w.write_all(&[END])?;
    let digest = w.hash.finalize_reset();
    let mut inner = w.inner;
    inner.write_all(&digest)?;
    let file = inner.into_inner().map_err(|e| e.into_error())?.file;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(meta)
}

/// Reads only the meta of a snapshot file.
pub fn read_meta(path: &Path) -> std::io::Result<SnapshotMeta> {
    let mut r = BufReader::new(File::open(path)?);
    read_header(&mut r)
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_field(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let n = read_u32(r)?;
    if n > MAX_FIELD {
        return Err(bad(format!("snapshot record of {n} bytes exceeds the limit")));
    }
    let mut v = vec![0u8; n as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn read_header(r: &mut impl Read) -> std::io::Result<SnapshotMeta> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(bad("not a Lodestone snapshot file"));
    }
    let v = read_u32(r)?;
    if v != VERSION {
        return Err(bad(format!("unsupported snapshot format version {v}")));
    }
    let m = read_field(r)?;
    bincode::deserialize(&m).map_err(|e| bad(format!("corrupt snapshot meta: {e}")))
}

/// Reads a snapshot file record by record (column family index, key, value), verifying its
/// checksum at the end; returns the snapshot's meta.
fn read_records(
    path: &Path,
    mut record: impl FnMut(usize, Vec<u8>, Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<SnapshotMeta> {
    let file = File::open(path)?;
    let mut r = HashingReader {
        inner: BufReader::with_capacity(1 << 20, file),
        hash: Sha256::new(),
    };
    let meta = read_header(&mut r)?;
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag)?;
        if tag[0] == END {
            break;
        }
        let family = tag[0] as usize;
        if family >= FAMILIES.len() {
            return Err(bad("unknown column family in snapshot"));
        }
        let k = read_field(&mut r)?;
        let v = read_field(&mut r)?;
        record(family, k, v)?;
    }
    let computed = r.hash.finalize_reset();
    let mut want = [0u8; 32];
    r.inner.read_exact(&mut want)?;
    if computed.as_slice() != want {
        return Err(bad("snapshot checksum mismatch"));
    }
    Ok(meta)
}

/// Loads a snapshot file into the (empty) database `db`, verifying its checksum. Returns
/// the snapshot's meta. Nothing is trusted until the checksum matched: the caller only
/// switches to `db` after this returns Ok.
pub fn load(path: &Path, db: &DB) -> std::io::Result<SnapshotMeta> {
    let mut handles = Vec::with_capacity(FAMILIES.len());
    for name in FAMILIES {
        handles.push(
            db.cf_handle(name)
                .ok_or_else(|| bad(format!("missing {name} column family")))?,
        );
    }
    let wo = crate::mvcc::unlogged();
    let mut batch = WriteBatch::default();
    let meta = read_records(path, |family, k, v| {
        batch.put_cf(handles[family], k, v);
        if batch.size_in_bytes() > 8 << 20 {
            db.write_opt(std::mem::take(&mut batch), &wo)
                .map_err(std::io::Error::other)?;
        }
        Ok(())
    })?;
    db.write_opt(batch, &wo).map_err(std::io::Error::other)?;
    // On disk before the caller switches to this instance (its writes are unlogged).
    crate::mvcc::flush_all(db).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(meta)
}

/// Reads a whole snapshot file and checks its structure and checksum; returns its meta.
pub fn verify(path: &Path) -> std::io::Result<SnapshotMeta> {
    read_records(path, |_, _, _| Ok(()))
}

/// fsyncs a directory so that renames inside it survive a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{CF_KV, Mvcc};
    use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest};

    /// History that a large DeleteRange wrote ahead of a batch that never committed (a crash
    /// between the two) is not state: a snapshot taken then is the snapshot of the committed
    /// state, byte for byte.
    #[test]
    fn a_snapshot_leaves_out_history_written_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mvcc::open(&dir.path().join("db")).unwrap();
        let mut t = m.write_txn().unwrap();
        for i in 0..1_500 {
            let key = format!("big/{i:05}/{}", "k".repeat(3_000));
            t.put(&PutRequest {
                key: key.into(),
                value: "v".into(),
                ..Default::default()
            })
            .unwrap();
        }
        t.commit(vec![]).unwrap();
        drop(t);
        let revision = m.meta().unwrap().revision;
        let snapshot = |name: &str| {
            let path = dir.path().join(name);
            write(&m.db(), &path, |_| Ok(SnapshotMeta::default())).unwrap();
            std::fs::read(path).unwrap()
        };
        let committed = snapshot("committed.snap");

        let mut t = m.write_txn().unwrap();
        t.delete_range(&DeleteRangeRequest {
            key: "big/".into(),
            range_end: "big0".into(),
            prev_kv: false,
        })
        .unwrap();
        drop(t);
        let db = m.db();
        let newest = db
            .iterator_cf(db.cf_handle(CF_KV).unwrap(), IteratorMode::End)
            .next()
            .unwrap()
            .unwrap();
        assert!(
            crate::mvcc::pending(CF_KV, &newest.0, revision),
            "history was written ahead"
        );

        assert!(
            committed == snapshot("with-pending.snap"),
            "the snapshot copied pending history"
        );
    }
}
