//! Lodestone: a strongly consistent, replicated key-value store that speaks the etcd v3
//! gRPC API. See `ARCHITECTURE.md` at the repository root for the bird's-eye view and the
//! layer rule these modules keep.
//!
//! Layers, bottom up (a module uses only those below it):
//! - [`config`], [`error`], [`metrics`], [`proto`], [`fsync`]: flags, domain errors,
//!   Prometheus, wire types, paced syncs of large files; used by every layer.
//! - [`mvcc`]: etcd's revisioned key-value model on RocksDB (the state machine's data);
//!   [`lease`]: lease deadlines (expiry decided on the leader's clock); [`auth`]: users,
//!   roles, permissions and tokens (etcd's Auth).
//! - [`apply`]: what each replicated command does to MVCC, with the alarm gates.
//! - [`peer`]: the peer transport: its envelope and connection cache (below consensus) and
//!   its service (above the member).
//! - [`raft`]: consensus: the write-ahead log, the state machine, snapshots, and the facade
//!   the member uses. The only module that names openraft.
//! - [`member`]: the running member: bootstrap, routing to the leader, proposals, reads,
//!   membership, leases, watch cache, compaction, corruption check.
//! - [`api`]: the client gRPC services and HTTP endpoints, thin adapters over the member.
//! - [`net`]: connection plumbing (the HTTP/2 `:authority` repair), independent of the rest.
//! - [`restore`]: `lodestone snapshot restore`, a new cluster from a snapshot file;
//!   [`backup`]: `lodestone snapshot save`, a checked snapshot file from a running cluster.

pub mod api;
pub mod apply;
pub mod auth;
pub mod backup;
pub mod config;
pub mod error;
pub mod fsync;
pub mod lease;
pub mod member;
pub mod metrics;
pub mod mvcc;
pub mod net;
pub mod peer;
pub mod proto;
pub mod raft;
pub mod restore;
