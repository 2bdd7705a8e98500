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
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot file (from `etcdctl snapshot save`).
    pub file: PathBuf,
    /// Human-readable name of the member this data directory is for.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory to create [default: ./<name>.lodestone].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Path to the dedicated write-ahead log directory [default: <data-dir>/member/wal].
    #[arg(long)]
    pub wal_dir: Option<PathBuf>,
    /// The new cluster, `name=peerURL,...` [default: <name>=<initial-advertise-peer-urls>].
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Initial cluster token of the new cluster.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// This member's peer URLs.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Restore a file without the trailing SHA-256 (e.g. copied out of a data directory).
    #[arg(long)]
    pub skip_hash_check: bool,
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
fn verify_hash(path: &Path) -> Result<(), RestoreError> {
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

/// Restores `args.file` into a new data directory; returns the member's data directory.
pub fn restore(args: &RestoreArgs) -> Result<PathBuf, RestoreError> {
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
    if data_dir.exists() {
        return Err(RestoreError::DataDirExists(data_dir));
    }
    if cfg.wal_dir.is_some() && cfg.wal_dir().exists() {
        return Err(RestoreError::WalDirExists(cfg.wal_dir()));
    }
    if !args.skip_hash_check {
        verify_hash(&args.file)?;
    }

    let sm_dir = cfg.state_machine_dir();
    let result = (|| -> Result<(), RestoreError> {
        std::fs::create_dir_all(&sm_dir)?;
        {
            let db = crate::mvcc::open_db(&sm_dir.join("db-0")).map_err(|e| std::io::Error::other(e.to_string()))?;
            crate::raft::snapshot::load(&args.file, &db)?;
            // Forget the old cluster: Raft position, membership, attributes, alarms.
            let meta_cf = db
                .cf_handle(crate::mvcc::CF_META)
                .ok_or_else(|| std::io::Error::other("missing meta column family"))?;
            let raw = db
                .get_cf(&meta_cf, b"meta")
                .map_err(std::io::Error::other)?
                .unwrap_or_default();
            let mut meta: crate::mvcc::Meta = if raw.is_empty() {
                crate::mvcc::Meta::default()
            } else {
                bincode::deserialize(&raw).map_err(std::io::Error::other)?
            };
            meta.applied = AppliedState::default().encode();
            let mut batch = rocksdb::WriteBatch::default();
            batch.put_cf(&meta_cf, b"meta", crate::mvcc::encode_meta(&meta));
            batch.delete_cf(&meta_cf, b"alarms");
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(true);
            db.write_opt(batch, &wo).map_err(std::io::Error::other)?;
            db.flush().map_err(std::io::Error::other)?;
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
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&data_dir);
        return Err(e);
    }
    Ok(data_dir)
}
