//! The state machine's instance directories: `db-<n>` RocksDB instances under one root, the
//! live one named by the `CURRENT_DB` pointer file.
//!
//! Installing a snapshot loads it into the next instance and then switches the pointer with
//! one atomic rename, so a crash leaves either the old or the new instance live, never a
//! half-loaded one. Replaced instances are removed once nothing reads them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::shared::io_err;
use super::snapshot;

const CURRENT_DB: &str = "CURRENT_DB";

/// The directory of instance `generation` under `root`.
pub(super) fn db_dir(root: &Path, generation: u64) -> PathBuf {
    root.join(format!("db-{generation}"))
}

/// The live generation under `root` (0 and a new pointer on first use). Instance
/// directories a crash left behind (a half-loaded snapshot, an instance already replaced)
/// are removed.
pub(super) fn open(root: &Path) -> std::io::Result<u64> {
    let generation = match std::fs::read_to_string(root.join(CURRENT_DB)) {
        Ok(s) => s
            .trim()
            .strip_prefix("db-")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| io_err(format!("corrupt {} in {}", CURRENT_DB, root.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_pointer(root, 0)?;
            0
        }
        Err(e) => return Err(e),
    };
    let live = db_dir(root, generation);
    for e in std::fs::read_dir(root)? {
        let p = e?.path();
        let is_instance = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("db-"));
        if is_instance && p.is_dir() && p != live {
            std::fs::remove_dir_all(&p)?;
        }
    }
    Ok(generation)
}

/// Points `CURRENT_DB` at instance `generation`, atomically and durably.
pub(super) fn write_pointer(root: &Path, generation: u64) -> std::io::Result<()> {
    let tmp = root.join(format!("{CURRENT_DB}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, format!("db-{generation}\n").as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, root.join(CURRENT_DB))?;
    snapshot::sync_dir(root)
}

/// Removes a replaced instance once nothing reads it any more: reads and snapshot builds
/// still running on it finish first, however long they take. (A crash before that leaves a
/// directory that the next start removes.)
pub(super) fn retire(previous: Arc<rocksdb::DB>, dir: PathBuf) {
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
