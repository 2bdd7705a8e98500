//! The Lodestone operator: runs Lodestone clusters on Kubernetes.
//!
//! Layout:
//! - [`crd`]: the `LodestoneCluster` and `LodestoneSnapshot` resources and their CRD YAML.
//! - [`controller`]: the reconcile pipeline, observe → plan → apply → status, and the pure
//!   object builders under `controller::build`.
//! - [`names`]: the names, ports and labels of a cluster's objects (the builders, the observe
//!   step and the member probe agree on them here).
//! - [`platform`]: the seam every Kubernetes side effect goes through, and its real
//!   implementation over the API server.
//! - [`members`]: what the members say about themselves, and the membership changes asked of
//!   them, through the etcd API.
//! - [`leader`]: leader election over a Lease, so several replicas can run.
//! - [`http`] and [`metrics`]: health endpoints and Prometheus metrics.
//! - [`error`]: the crate's error type.

pub mod controller;
pub mod crd;
pub mod error;
pub mod http;
pub mod leader;
pub mod members;
pub mod metrics;
pub mod names;
pub mod platform;

#[cfg(test)]
mod fixtures;

pub use error::Error;
