//! Lodestone: a strongly consistent, replicated key-value store that speaks the etcd v3
//! gRPC API. See `ARCHITECTURE.md` at the repository root for the bird's-eye view.
//!
//! Layers, bottom up:
//! - [`mvcc`]: etcd's revisioned key-value model on RocksDB (the state machine's data).
//! - [`raft`]: consensus — the write-ahead log, the state machine, snapshots, peer transport.
//! - [`lease`]: the lease clock (expiry decided on the leader).
//! - [`validate`]: request checks made before proposing.
//! - [`server`]: the running member and its gRPC/HTTP services.
//! - [`restore`]: `lodestone snapshot restore`, a new cluster from a snapshot file.
//! - [`config`]: etcd-named flags; [`error`]: domain errors; [`metrics`]: Prometheus.

pub mod config;
pub mod error;
pub mod lease;
pub mod metrics;
pub mod mvcc;
pub mod proto;
pub mod raft;
pub mod restore;
pub mod server;
pub mod validate;
