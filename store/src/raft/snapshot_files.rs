//! The member's snapshots (`snapshots/`): which one is current, and how one becomes
//! current. A snapshot is one of two things, named for its last log entry:
//!
//! - `<term>-<index>.ckpt`, a RocksDB checkpoint of the state machine, which is what a build
//!   makes: the memtables are flushed and the instance's table files hard-linked, so a
//!   build costs a flush and a few links instead of writing the whole state out again.
//!   Most snapshots are never sent anywhere; they exist so that the log behind them can be
//!   purged.
//! - `<term>-<index>.snap`, a snapshot file (see [`snapshot`]): what a member received, or
//!   what a checkpoint was turned into the first time a lagging member needed it
//!   ([`snapshot_file`]), kept beside its checkpoint for the next one. Where no checkpoint
//!   can be made (a filesystem that refuses hard links with an error other than EXDEV or
//!   ENOTSUP, on which RocksDB would copy the files), a build writes this file directly,
//!   with a warning, at the cost of writing the whole state out.
//!
//! Either only ever appears whole: what is being written has a scratch name unique per
//! transfer or build ([`SCRATCH_EXTENSIONS`]), is synced, and is renamed into place by
//! [`publish`], one at a time. A checkpoint holds on to the table files it links, which the
//! live instance may since have compacted away: until the next build or install replaces
//! it, the disk may hold up to the state's size once more, and once more again for the
//! file made of it after a member needed one (the eager build this replaces always held
//! that file).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::SnapshotMeta;
use super::shared::{Shared, io_err, snapshot_meta_of};
use super::snapshot;

/// Extensions of files and directories still being written (see [`Shared::scratch_path`]);
/// a crash leaves them behind, and opening the state machine removes them.
pub const SCRATCH_EXTENSIONS: [&str; 5] = ["tmp", "part", "export", "build", "ckptbuild"];

/// The extension of a built snapshot, a checkpoint directory.
const CHECKPOINT: &str = "ckpt";
/// The extension of a snapshot file.
const FILE: &str = "snap";

pub(super) static SCRATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Removes a snapshot or a scratch leftover, file or directory.
pub(super) fn remove(path: &Path) {
    let _ = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
}

fn extension(path: &Path) -> &str {
    path.extension().and_then(|x| x.to_str()).unwrap_or_default()
}

/// The Raft position a checkpoint reflects, read from its own meta record (opening it
/// read-only, which also checks its manifest and that its files are all there).
pub(super) fn checkpoint_meta(dir: &Path) -> std::io::Result<SnapshotMeta> {
    let db = crate::mvcc::open_db_read_only(dir).map_err(io_err)?;
    snapshot_meta_of(&crate::mvcc::read_meta(&db).map_err(io_err)?)
}

/// A published checkpoint's position, checked against its name: a damaged manifest that
/// still opens would show an older state than the one the checkpoint was made at.
fn published_checkpoint_meta(dir: &Path) -> std::io::Result<SnapshotMeta> {
    let meta = checkpoint_meta(dir)?;
    let expected = snapshot_name(&meta);
    if dir.file_stem() != Path::new(&expected).file_stem() {
        return Err(io_err(format!("it holds the state of {expected}")));
    }
    Ok(meta)
}

/// The newest snapshot that is whole, after removing the leftovers of interrupted writes.
/// A snapshot only ever appears by a rename of a complete, synced one; one that fails
/// verification anyway (damaged on disk: a file's checksum, a checkpoint that does not open)
/// is removed rather than served to a lagging member.
pub(super) fn latest_snapshot(dir: &Path) -> std::io::Result<Option<(SnapshotMeta, PathBuf)>> {
    let mut candidates: Vec<(SnapshotMeta, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        match extension(&p) {
            FILE => match snapshot::read_meta(&p) {
                Ok(m) => candidates.push((m, p)),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "removing unreadable snapshot file");
                    remove(&p);
                }
            },
            CHECKPOINT => match published_checkpoint_meta(&p) {
                Ok(m) => candidates.push((m, p)),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "removing damaged snapshot checkpoint");
                    remove(&p);
                }
            },
            ext => {
                if SCRATCH_EXTENSIONS.contains(&ext) {
                    remove(&p);
                }
            }
        }
    }
    // Newest first; of a checkpoint and the file made of it, the checkpoint.
    candidates.sort_by(|a, b| {
        b.0.last_log_id
            .partial_cmp(&a.0.last_log_id)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| (extension(&a.1) != CHECKPOINT).cmp(&(extension(&b.1) != CHECKPOINT)))
    });
    let mut best: Option<(SnapshotMeta, PathBuf)> = None;
    for (meta, path) in candidates {
        if let Some((_, kept)) = &best {
            // The file made of the kept checkpoint stays, if it is whole: it is sent as is.
            let twin = kept.file_stem() == path.file_stem();
            if !twin || snapshot::verify(&path).is_err() {
                remove(&path);
            }
            continue;
        }
        let whole = match extension(&path) {
            FILE => snapshot::verify(&path).map(drop),
            _ => Ok(()),
        };
        match whole {
            Ok(()) => best = Some((meta, path)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "removing damaged snapshot file");
                remove(&path);
            }
        }
    }
    Ok(best)
}

pub(super) fn snapshot_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(l) => format!("{:016x}-{:016x}.snap", l.committed_leader_id().term, l.index),
        None => "0000000000000000-0000000000000000.snap".into(),
    }
}

/// Keeps only `keep` among the snapshots, with the file made of it when `keep` is a
/// checkpoint (what is still being written has other extensions and is left alone).
pub(super) fn prune_snapshots(dir: &Path, keep: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.file_stem() != keep.file_stem() && [FILE, CHECKPOINT].contains(&extension(&p)) {
                remove(&p);
            }
        }
    }
}

/// Makes a complete snapshot (a file or a checkpoint, written and synced under a scratch
/// name) the member's current one: renamed to its final name and the older ones pruned,
/// unless a newer snapshot is current already (a build that started before an install
/// finishes after it), in which case the older one is dropped and the newer one stays.
/// Builds and installs both publish here, one at a time, so neither can delete the other's
/// newer snapshot, and a snapshot only ever appears whole. Returns what is current.
pub(super) fn publish(shared: &Shared, meta: SnapshotMeta, scratch: &Path) -> std::io::Result<(SnapshotMeta, PathBuf)> {
    let mut current = shared.current.lock().expect("snapshot lock");
    if let Some((cur_meta, cur_path)) = current.as_ref()
        && cur_meta.last_log_id > meta.last_log_id
    {
        remove(scratch);
        return Ok((cur_meta.clone(), cur_path.clone()));
    }
    let name = shared.snap_dir.join(snapshot_name(&meta));
    let path = if scratch.is_dir() {
        name.with_extension(CHECKPOINT)
    } else {
        name
    };
    if path.exists() {
        // The same position again (a second build with nothing applied since): the same
        // state, already in place.
        remove(scratch);
    } else {
        std::fs::rename(scratch, &path)?;
        snapshot::sync_dir(&shared.snap_dir)?;
    }
    prune_snapshots(&shared.snap_dir, &path);
    *current = Some((meta.clone(), path.clone()));
    Ok((meta, path))
}

/// The snapshot at `path` as one file, for sending to a member: a snapshot file is itself;
/// a checkpoint is written out into the file beside it the first time one is asked for,
/// and that file serves every later transfer of it. One checkpoint is written out at a
/// time, so two members catching up at once cost one export. Blocking.
pub(crate) fn snapshot_file(path: &Path) -> std::io::Result<PathBuf> {
    if extension(path) != CHECKPOINT {
        return Ok(path.to_path_buf());
    }
    static EXPORTING: Mutex<()> = Mutex::new(());
    let _one = EXPORTING.lock().unwrap_or_else(|e| e.into_inner());
    let file = path.with_extension(FILE);
    if file.exists() {
        return Ok(file);
    }
    let db = crate::mvcc::open_db_read_only(path).map_err(io_err)?;
    snapshot::write(&db, &file, snapshot_meta_of)?;
    drop(db);
    if !path.exists() {
        // A newer snapshot replaced this one meanwhile: leave nothing of it behind.
        remove(&file);
        return Err(io_err(
            "the snapshot was replaced by a newer one while it was written out",
        ));
    }
    Ok(file)
}

/// A scratch copy of a complete file (fsynced by whoever wrote it): a hard link, or a copy
/// fsynced here when the link cannot be made.
pub(super) fn scratch_copy(shared: &Shared, src: &Path) -> std::io::Result<PathBuf> {
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
