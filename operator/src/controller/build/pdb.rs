//! The PodDisruptionBudget: voluntary evictions (node drains, cluster upgrades) never take
//! the cluster below a quorum of its voters.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::owned_meta;
use crate::crd::LodestoneCluster;
use crate::names::{Names, selector_labels};

/// A majority of `voters`: the members that must stay up for the cluster to commit.
pub fn quorum(voters: i32) -> i32 {
    voters / 2 + 1
}

/// The budget for a cluster of `voters` voting members: at least a quorum of them available.
/// (Every member is a voter while the operator does not add learners; once it does, the
/// selector must narrow to voters.)
pub fn pod_disruption_budget(cluster: &LodestoneCluster, names: &Names, voters: i32) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owned_meta(cluster, &names.cluster, "store"),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(quorum(voters))),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(cluster)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}
