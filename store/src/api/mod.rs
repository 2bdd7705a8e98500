//! The client API: etcd's v3 gRPC services and HTTP endpoints on the client URLs, as thin
//! adapters: decode → validate → call the member → encode.
//!
//! - [`kv`], [`watch`], [`lease`], [`cluster`], [`maintenance`], [`auth`]: etcd's v3
//!   services ([`auth::who`]: the user each request runs as);
//!   [`concurrency`]: etcd's v3lock and v3election services (its recipes over KV and leases).
//! - [`validate`]: request checks made before anything is proposed.
//! - [`guard`]: require-leader and learner checks in front of every RPC.
//! - [`limits`]: oversized messages answer `ResourceExhausted` as grpc-go does.
//! - [`status`]: the one mapping from domain errors to etcd's gRPC codes and messages.
//! - [`http`]: `/health`, `/version`, `/metrics`, `/livez`, `/readyz`.
//! - [`serve`]: binds the listeners, runs a member behind them, and shuts down in order.

pub mod auth;
pub mod cluster;
pub mod concurrency;
pub mod guard;
pub mod http;
pub mod kv;
pub mod lease;
pub mod limits;
pub mod maintenance;
pub mod serve;
pub mod status;
pub mod validate;
pub mod watch;

use tonic::Status;

use crate::error::StoreError;

/// Runs storage work (reads, hashes, defragmentation) off the async runtime and answers
/// its error as a gRPC status.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, StoreError> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::from)
}
