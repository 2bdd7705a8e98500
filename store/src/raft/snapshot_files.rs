//! The member's snapshot files (`snapshots/*.snap`): which one is current, and how a file
//! becomes current. A `.snap` file only ever appears whole: files being written have scratch
//! names unique per transfer ([`SCRATCH_EXTENSIONS`]), are fsynced, and are renamed into
//! place by [`publish`], one at a time.

use std::path::{Path, PathBuf};

use super::SnapshotMeta;
use super::shared::Shared;
use super::snapshot;

/// Extensions of files still being written (see [`Shared::scratch_path`]); a crash leaves
/// them behind, and opening the state machine removes them.
pub const SCRATCH_EXTENSIONS: [&str; 4] = ["tmp", "part", "export", "build"];

pub(super) static SCRATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The newest snapshot file that is whole (its checksum verified), after removing the
/// leftovers of interrupted writes. A `.snap` file only ever appears by a rename of a
/// complete, fsynced file; one that fails verification anyway (damaged on disk) is removed
/// rather than served to a lagging member.
pub(super) fn latest_snapshot(dir: &Path) -> std::io::Result<Option<(SnapshotMeta, PathBuf)>> {
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

pub(super) fn snapshot_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(l) => format!("{:016x}-{:016x}.snap", l.committed_leader_id().term, l.index),
        None => "0000000000000000-0000000000000000.snap".into(),
    }
}

/// Keeps only `keep` among the snapshot files (files still being written have other
/// extensions and are left alone).
pub(super) fn prune_snapshots(dir: &Path, keep: &Path) {
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
pub(super) fn publish(shared: &Shared, meta: SnapshotMeta, scratch: &Path) -> std::io::Result<(SnapshotMeta, PathBuf)> {
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
