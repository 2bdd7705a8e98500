//! `lodestone snapshot save`: a client of Maintenance.Snapshot that writes the stream to a
//! file, as `etcdctl snapshot save` does, then proves the file: its SHA-256 trailer checks and
//! it loads into a state machine, whose revision it reports. The operator's backup Jobs run
//! it and read its one line of JSON; `--retain` prunes older files of the same prefix.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::net::tls::{Dialer, Policy, Side};
use crate::proto::etcdserverpb::SnapshotRequest;
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::restore::{RestoreArgs, RestoreError};

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Where to write the snapshot file.
    pub file: PathBuf,
    /// Client URLs to ask, in order, until one streams a snapshot (etcdctl's --endpoints).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// After a successful save, keep only the newest N files in the file's directory whose
    /// names start with `--prefix` (the new file counts).
    #[arg(long, requires = "prefix")]
    pub retain: Option<usize>,
    /// The name prefix `--retain` prunes by.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Also write the JSON report to this file (a pod's `/dev/termination-log`, where the
    /// operator reads it).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// CA bundle that `https://` endpoints' certificates must be signed by (etcdctl's --cacert).
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Client certificate to present to `https://` endpoints (etcdctl's --cert).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's key (etcdctl's --key).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
}

/// What a saved file holds, printed as one line of JSON.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Saved {
    pub file: String,
    pub size: u64,
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
    /// The store revision the snapshot holds.
    pub revision: i64,
    /// Files deleted by `--retain`.
    pub pruned: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("no endpoint streamed a snapshot: {0}")]
    Unavailable(String),
    #[error(
        "{0} is an https:// endpoint: give --cacert (the CA its certificate is signed by), and --cert and --key if it checks client certificates"
    )]
    NoCa(String),
    #[error("TLS settings: {0}")]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("the snapshot file is not valid: {0}")]
    Invalid(#[from] RestoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Saves a snapshot from the first endpoint that streams one.
pub async fn save(args: &SaveArgs) -> Result<Saved, SaveError> {
    let part = args.file.with_extension("part");
    // The directory inside the volume may not exist yet.
    if let Some(dir) = args.file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let dialer = dialer(args)?;
    let mut errors = Vec::new();
    let mut saved = false;
    for endpoint in &args.endpoints {
        match stream_to(endpoint, &dialer, &part).await {
            Ok(()) => {
                saved = true;
                break;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                tracing::warn!(endpoint = %endpoint, error = %e, "snapshot failed; trying the next endpoint");
                errors.push(format!("{endpoint}: {e}"));
            }
        }
    }
    if !saved {
        return Err(SaveError::Unavailable(errors.join("; ")));
    }
    let checked = check(&part);
    let (size, sha256, revision) = match checked {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, &args.file)?;
    if let Some(dir) = args.file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    let pruned = match (args.retain, &args.prefix) {
        (Some(keep), Some(prefix)) => prune(&args.file, prefix, keep)?,
        _ => Vec::new(),
    };
    Ok(Saved {
        file: args.file.display().to_string(),
        size,
        sha256,
        revision,
        pruned,
    })
}

/// Plain TCP for `http://` endpoints; TLS checked against `--cacert` for `https://` ones (never
/// an unchecked server: a backup must come from the cluster it claims to).
fn dialer(args: &SaveArgs) -> Result<Dialer, SaveError> {
    let https = args.endpoints.iter().find(|e| crate::config::is_https(e));
    match (https, &args.cacert) {
        (None, _) => Ok(Dialer::plain()),
        (Some(endpoint), None) => Err(SaveError::NoCa(endpoint.clone())),
        (Some(_), Some(ca)) => {
            let side = Side {
                cert_file: args.cert.clone(),
                key_file: args.key.clone(),
                trusted_ca_file: Some(ca.clone()),
                ..Side::default()
            };
            let key_pair = args.cert.as_deref().zip(args.key.as_deref());
            Ok(Dialer::new(&side, &Policy::default(), key_pair)?)
        }
    }
}

async fn stream_to(endpoint: &str, dialer: &Dialer, part: &Path) -> Result<(), String> {
    let channel = crate::peer::client::channel(endpoint, dialer).map_err(|e| e.to_string())?;
    let mut client = MaintenanceClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut stream = client
        .snapshot(SnapshotRequest {})
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let mut f = std::fs::File::create(part).map_err(|e| e.to_string())?;
    let mut last_remaining = None;
    while let Some(msg) = stream.message().await.map_err(|s| s.message().to_string())? {
        f.write_all(&msg.blob).map_err(|e| e.to_string())?;
        last_remaining = Some(msg.remaining_bytes);
    }
    if last_remaining != Some(0) {
        return Err(format!("the stream ended early ({last_remaining:?} bytes remaining)"));
    }
    f.sync_all().map_err(|e| e.to_string())?;
    Ok(())
}

/// Size, SHA-256 and revision of a snapshot file, after checking its trailer and loading it.
pub fn check(file: &Path) -> Result<(u64, String, i64), SaveError> {
    crate::restore::verify_hash(file)?;
    // Loaded into a scratch data directory beside it, removed again.
    let scratch = file.with_extension("check");
    let _ = std::fs::remove_dir_all(&scratch);
    let restored = crate::restore::restore(&RestoreArgs {
        file: file.to_path_buf(),
        data_dir: Some(scratch.clone()),
        skip_hash_check: true,
        ..RestoreArgs::default()
    });
    let _ = std::fs::remove_dir_all(&scratch);
    let restored = restored?;
    let mut hash = Sha256::new();
    let mut f = std::fs::File::open(file)?;
    let size = std::io::copy(&mut f, &mut hash)?;
    Ok((size, hex(&hash.finalize()), restored.revision))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deletes all but the newest `keep` files named `prefix*` beside `file` (by name: the
/// operator's names carry the time).
fn prune(file: &Path, prefix: &str, keep: usize) -> std::io::Result<Vec<String>> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(prefix) && !n.ends_with(".part"))
        .collect();
    names.sort();
    let gone = names.len().saturating_sub(keep.max(1));
    let mut pruned = Vec::new();
    for name in names.into_iter().take(gone) {
        std::fs::remove_file(dir.join(&name))?;
        pruned.push(name);
    }
    Ok(pruned)
}
