//! Prometheus metrics of the operator, served on `/metrics`.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::Error;
use crate::crd::LodestoneClusterStatus;
use crate::names::Names;

pub struct Metrics {
    registry: Registry,
    reconciliations: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    /// 1 while this replica holds the leader-election lease.
    pub leader: IntGauge,
    cluster_available: IntGaugeVec,
    cluster_members: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new("lodestone_operator_reconciliations_total", "Reconciles run, by result"),
            &["result"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "lodestone_operator_reconcile_errors_total",
                "Failed reconciles, by error",
            ),
            &["error"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "lodestone_operator_reconcile_duration_seconds",
                "Time one reconcile took",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &[],
        )
        .expect("valid metric");
        let leader = IntGauge::new("lodestone_operator_leader", "1 while this replica leads").expect("valid metric");
        let cluster_available = IntGaugeVec::new(
            Opts::new(
                "lodestone_operator_cluster_available",
                "1 while the cluster has a leader (quorum)",
            ),
            &["namespace", "cluster"],
        )
        .expect("valid metric");
        let cluster_members = IntGaugeVec::new(
            Opts::new("lodestone_operator_cluster_members", "Members by role and health"),
            &["namespace", "cluster", "role", "healthy"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(reconciliations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(leader.clone()),
            Box::new(cluster_available.clone()),
            Box::new(cluster_members.clone()),
        ] {
            registry.register(collector).expect("metric registered once");
        }
        Self {
            registry,
            reconciliations,
            failures,
            duration,
            leader,
            cluster_available,
            cluster_members,
        }
    }

    pub fn observe_reconcile(&self, took: Duration, error: Option<&Error>) {
        self.duration.with_label_values::<&str>(&[]).observe(took.as_secs_f64());
        match error {
            None => self.reconciliations.with_label_values(&["success"]).inc(),
            Some(err) => {
                self.reconciliations.with_label_values(&["error"]).inc();
                self.failures.with_label_values(&[err.metric_label()]).inc();
            }
        }
    }

    pub fn observe_cluster(&self, names: &Names, status: &LodestoneClusterStatus) {
        let available = status
            .conditions
            .iter()
            .any(|c| c.type_ == crate::controller::plan::condition::AVAILABLE && c.status == "True");
        self.cluster_available
            .with_label_values(&[names.namespace.as_str(), names.cluster.as_str()])
            .set(i64::from(available));
        for role in ["leader", "follower", "learner"] {
            for healthy in [true, false] {
                let count = status
                    .members
                    .iter()
                    .filter(|m| m.role == role && m.healthy == healthy)
                    .count();
                self.cluster_members
                    .with_label_values(&[
                        names.namespace.as_str(),
                        names.cluster.as_str(),
                        role,
                        if healthy { "true" } else { "false" },
                    ])
                    .set(count as i64);
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
