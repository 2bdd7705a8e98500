//! `lodestone snapshot restore`: turns a file written by `etcdctl snapshot save` (or any
//! Maintenance.Snapshot client) into the data directory of a member of a *new* cluster, in
//! the shape of `etcdutl snapshot restore`.
//!
//! The restored state machine keeps every key, revision, compaction point and lease of the
//! image, and forgets the old cluster: its Raft position, membership, published member
//! attributes and alarms. The write-ahead log stays empty, so the member bootstraps the new
//! cluster from `--initial-cluster` when it first starts; every restored member applies the
//! same first membership entry on top of the same data, so their histories (and HashKV)
//! agree.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::raft::state_machine::{AppliedState, StateMachine};

/// `lodestone snapshot ...`: offline tools for snapshot files.
#[derive(Debug, Parser)]
#[command(name = "lodestone snapshot", version)]
pub struct SnapshotCli {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Restores a snapshot file into a new data directory for a member of a new cluster.
    Restore(RestoreArgs),
    /// Saves a snapshot of a running cluster into a file (Maintenance.Snapshot), checks it
    /// and prints what it holds as JSON.
    Save(crate::backup::SaveArgs),
}

/// The flags read the member's own `LODESTONE_*` variables too, so a pod's init container can
/// restore with the environment its member starts with.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot file (from `etcdctl snapshot save`).
    pub file: PathBuf,
    /// Human-readable name of the member this data directory is for.
    #[arg(long, env = "LODESTONE_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory to create [default: ./<name>.lodestone].
    #[arg(long, env = "LODESTONE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Path to the dedicated write-ahead log directory [default: <data-dir>/member/wal].
    #[arg(long, env = "LODESTONE_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// The new cluster, `name=peerURL,...` [default: <name>=<initial-advertise-peer-urls>].
    #[arg(long, env = "LODESTONE_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster token of the new cluster.
    #[arg(long, env = "LODESTONE_INITIAL_CLUSTER_TOKEN", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// This member's peer URLs.
    #[arg(
        long,
        env = "LODESTONE_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Restore a file without the trailing SHA-256 (e.g. copied out of a data directory).
    #[arg(long)]
    pub skip_hash_check: bool,
    /// Do nothing, successfully, when the data directory exists already or
    /// `--initial-cluster-state` is `existing`: a member restarting, or joining later, must not
    /// be restored (for init containers).
    #[arg(long)]
    pub only_if_new: bool,
    /// With `--only-if-new`: whether this member founds a new cluster.
    #[arg(long, env = "LODESTONE_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
}

impl Default for RestoreArgs {
    /// The command line's defaults, with no file.
    fn default() -> Self {
        Self {
            file: PathBuf::new(),
            name: "default".into(),
            data_dir: None,
            wal_dir: None,
            initial_cluster: None,
            initial_cluster_token: "etcd-cluster".into(),
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            skip_hash_check: false,
            only_if_new: false,
            initial_cluster_state: "new".into(),
        }
    }
}

/// A restored data directory.
#[derive(Debug)]
pub struct Restored {
    pub data_dir: PathBuf,
    /// The store revision it holds.
    pub revision: i64,
    /// False when `--only-if-new` found nothing to do.
    pub restored: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("data-dir {0:?} exists; restore only creates a new data directory")]
    DataDirExists(PathBuf),
    #[error("wal-dir {0:?} exists; restore only creates a new write-ahead log directory")]
    WalDirExists(PathBuf),
    #[error(
        "snapshot file {0:?} has no valid SHA-256 trailer ({1}); it may be truncated or corrupt \
         (use --skip-hash-check for a file that never had one)"
    )]
    BadHash(PathBuf, String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Checks etcd's trailer: the payload is a whole number of 512-byte pages followed by its
/// SHA-256.
pub(crate) fn verify_hash(path: &Path) -> Result<(), RestoreError> {
    use std::io::Read;
    let bad = |why: String| RestoreError::BadHash(path.to_path_buf(), why);
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len < 32 || (len - 32) % 512 != 0 {
        return Err(bad(format!("size {len} is not a multiple of 512 plus 32")));
    }
    let mut hash = Sha256::new();
    let mut left = len - 32;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.read_exact(&mut buf[..n])?;
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    let mut want = [0u8; 32];
    f.read_exact(&mut want)?;
    if hash.finalize().as_slice() != want {
        return Err(bad("checksum mismatch".into()));
    }
    Ok(())
}

/// Restores `args.file` into a new data directory.
pub fn restore(args: &RestoreArgs) -> Result<Restored, RestoreError> {
    // Validate the cluster flags exactly as a starting member would.
    let mut flags = vec![
        "lodestone".to_string(),
        "--name".into(),
        args.name.clone(),
        "--initial-cluster-token".into(),
        args.initial_cluster_token.clone(),
        "--initial-advertise-peer-urls".into(),
        args.initial_advertise_peer_urls.join(","),
    ];
    if let Some(c) = &args.initial_cluster {
        flags.extend(["--initial-cluster".into(), c.clone()]);
    }
    if let Some(d) = &args.data_dir {
        flags.extend(["--data-dir".into(), d.display().to_string()]);
    }
    if let Some(w) = &args.wal_dir {
        flags.extend(["--wal-dir".into(), w.display().to_string()]);
    }
    let cfg = Config::try_parse_from(flags).map_err(|e| std::io::Error::other(e.to_string()))?;
    let members = cfg.initial_members()?;
    cfg.self_member(&members)?;

    let data_dir = cfg.data_dir();
    if args.only_if_new && (args.initial_cluster_state == "existing" || pristine(&data_dir)? == Some(false)) {
        tracing::info!(data_dir = %data_dir.display(), state = %args.initial_cluster_state, "nothing to restore: the member has data or joins an existing cluster");
        return Ok(Restored {
            data_dir,
            revision: 0,
            restored: false,
        });
    }
    if pristine(&data_dir)? == Some(false) {
        return Err(RestoreError::DataDirExists(data_dir));
    }
    if cfg.wal_dir.is_some() && pristine(&cfg.wal_dir())? == Some(false) {
        return Err(RestoreError::WalDirExists(cfg.wal_dir()));
    }
    if !args.skip_hash_check {
        verify_hash(&args.file)?;
    }

    let sm_dir = cfg.state_machine_dir();
    let result = (|| -> Result<i64, RestoreError> {
        std::fs::create_dir_all(&sm_dir)?;
        {
            let db = crate::mvcc::open_db(&sm_dir.join("db-0")).map_err(|e| std::io::Error::other(e.to_string()))?;
            crate::raft::snapshot::load(&args.file, &db)?;
            // Forget the old cluster: Raft position, membership, attributes, alarms.
            let mut meta = crate::mvcc::read_meta(&db).map_err(|e| std::io::Error::other(e.to_string()))?;
            let meta_cf = db
                .cf_handle(crate::mvcc::CF_META)
                .ok_or_else(|| std::io::Error::other("missing meta column family"))?;
            meta.applied = AppliedState::default().encode();
            let mut batch = rocksdb::WriteBatch::default();
            batch.put_cf(&meta_cf, b"meta", crate::mvcc::encode_meta(&meta));
            batch.delete_cf(&meta_cf, b"alarms");
            db.write_opt(batch, &crate::mvcc::unlogged())
                .map_err(std::io::Error::other)?;
            crate::mvcc::flush_all(&db).map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        // Opening it writes the CURRENT_DB pointer and checks the result reads back.
        let sm = StateMachine::open(&sm_dir)?;
        let meta = sm
            .shared
            .mvcc
            .meta()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        tracing::info!(
            revision = meta.revision,
            compacted = meta.compacted,
            "restored state machine"
        );
        Ok(meta.revision)
    })();
    match result {
        Ok(revision) => Ok(Restored {
            data_dir,
            revision,
            restored: true,
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&data_dir);
            Err(e)
        }
    }
}

/// Whether a data directory is absent or empty (`None`: absent). A volume's mount point
/// exists, empty, before the member ever ran (some file systems add `lost+found`).
fn pristine(dir: &Path) -> std::io::Result<Option<bool>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(Some(
            entries.filter_map(|e| e.ok()).all(|e| e.file_name() == "lost+found"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
