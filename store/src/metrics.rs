//! Prometheus metrics under etcd's names, so dashboards and alerts written for etcd work.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Registry, TextEncoder};

struct Metrics {
    registry: Registry,
    committed: IntGauge,
    applied: IntGauge,
    pending: IntGauge,
    failed: IntCounter,
    wal_fsync: Histogram,
    backend_commit: Histogram,
    leader_changes: IntCounter,
    has_leader: IntGauge,
    is_leader: IntGauge,
    db_size: IntGauge,
    db_in_use: IntGauge,
    revision: IntGauge,
    resident: IntGauge,
    read_rounds: IntCounter,
    snapshot_index: IntGauge,
    purged_index: IntGauge,
    linearizable_reads: IntCounter,
    leadership_rounds: IntCounter,
    leadership_checks: IntCounter,
    watch_storage_reads: IntCounter,
    forward_calls: IntCounter,
    forwarded_writes: IntCounter,
}

fn buckets() -> Vec<f64> {
    // etcd's disk histograms: 1 ms doubling up to ~8 s.
    prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets")
}

static M: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let gauge = |name: &str, help: &str| {
        let g = IntGauge::new(name, help).expect("valid metric");
        registry.register(Box::new(g.clone())).expect("register metric");
        g
    };
    let counter = |name: &str, help: &str| {
        let c = IntCounter::new(name, help).expect("valid metric");
        registry.register(Box::new(c.clone())).expect("register metric");
        c
    };
    let hist = |name: &str, help: &str| {
        let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets())).expect("valid metric");
        registry.register(Box::new(h.clone())).expect("register metric");
        h
    };
    Metrics {
        committed: gauge(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
        ),
        applied: gauge(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
        ),
        pending: gauge(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
        ),
        failed: counter(
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
        ),
        wal_fsync: hist(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
        ),
        backend_commit: hist(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
        ),
        leader_changes: counter(
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
        ),
        has_leader: gauge(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
        ),
        is_leader: gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        ),
        db_size: gauge(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
        ),
        db_in_use: gauge(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
        ),
        revision: gauge("etcd_debugging_mvcc_current_revision", "The current revision of store."),
        resident: gauge("process_resident_memory_bytes", "Resident memory size in bytes."),
        snapshot_index: gauge(
            "lodestone_raft_snapshot_index",
            "Last log index covered by the latest snapshot.",
        ),
        purged_index: gauge(
            "lodestone_raft_purged_index",
            "Highest log index purged from the write-ahead log.",
        ),
        read_rounds: counter(
            "lodestone_read_index_rounds_total",
            "ReadIndex rounds run; concurrent linearizable reads share one round.",
        ),
        linearizable_reads: counter(
            "lodestone_linearizable_reads_total",
            "Linearizable reads released by ReadIndex rounds.",
        ),
        leadership_rounds: counter(
            "lodestone_lease_leadership_rounds_total",
            "Rounds in which the leader confirmed its leadership with a quorum before answering lease renewals and TTL queries (or expiring leases); concurrent requests share one round.",
        ),
        leadership_checks: counter(
            "lodestone_lease_leadership_checks_total",
            "Lease renewals, TTL queries and expiry passes released by leadership rounds.",
        ),
        watch_storage_reads: counter(
            "lodestone_watch_storage_reads_total",
            "Watch catch-up rounds that read history from storage; caught-up streams share the watch cache instead.",
        ),
        forward_calls: counter(
            "lodestone_forward_calls_total",
            "Calls in which this follower forwarded writes to its leader; writes that arrive together share one call.",
        ),
        forwarded_writes: counter(
            "lodestone_forwarded_writes_total",
            "Writes this follower forwarded to its leader.",
        ),
        registry,
    }
});

pub fn observe_wal_fsync(d: Duration) {
    M.wal_fsync.observe(d.as_secs_f64());
}

pub fn observe_backend_commit(d: Duration) {
    M.backend_commit.observe(d.as_secs_f64());
}

pub fn proposals_applied(n: u64) {
    M.applied.add(n as i64);
}

pub fn proposal_failed() {
    M.failed.inc();
}

pub fn proposal_started() {
    M.pending.inc();
}

pub fn proposal_finished() {
    M.pending.dec();
}

/// One ReadIndex round that released `reads` waiting linearizable reads.
pub fn read_index_round(reads: usize) {
    M.read_rounds.inc();
    M.linearizable_reads.inc_by(reads as u64);
}

/// One leadership round that released `waiting` lease requests.
pub fn leadership_round(waiting: usize) {
    M.leadership_rounds.inc();
    M.leadership_checks.inc_by(waiting as u64);
}

/// One call that forwarded `writes` writes to the leader.
pub fn forward_call(writes: usize) {
    M.forward_calls.inc();
    M.forwarded_writes.inc_by(writes as u64);
}

pub fn watch_storage_read() {
    M.watch_storage_reads.inc();
}

pub fn leader_changed() {
    M.leader_changes.inc();
}

/// Raft-derived gauges, refreshed from openraft's metrics.
pub fn set_raft(committed: u64, has_leader: bool, is_leader: bool) {
    M.committed.set(committed as i64);
    M.has_leader.set(i64::from(has_leader));
    M.is_leader.set(i64::from(is_leader));
}

/// Snapshot and purge progress of the Raft log.
pub fn set_log_compaction(snapshot: u64, purged: u64) {
    M.snapshot_index.set(snapshot as i64);
    M.purged_index.set(purged as i64);
}

pub fn set_db(size: i64, in_use: i64, revision: i64) {
    M.db_size.set(size);
    M.db_in_use.set(in_use);
    M.revision.set(revision);
}

fn resident_bytes() -> i64 {
    // Second field of /proc/self/statm is resident pages.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<i64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// The text exposition of every metric.
pub fn render() -> String {
    M.resident.set(resident_bytes());
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&M.registry.gather(), &mut buf)
        .expect("encode metrics");
    String::from_utf8(buf).expect("metrics are utf-8")
}
