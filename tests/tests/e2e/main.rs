//! The end-to-end suites, one module each, in one test binary: every test binary links the
//! store and RocksDB, so one binary instead of twelve saves most of a warm build's link
//! time. `cargo test -p lodestone-tests -- watch::` runs one suite.

mod auth;
mod cluster;
mod concurrency;
mod etcdctl;
mod etcdctl_services;
mod flags;
mod kv_compat;
mod lease;
mod listeners;
mod maintenance;
mod membership;
mod quorum_loss;
mod robustness;
mod tls;
mod watch;
