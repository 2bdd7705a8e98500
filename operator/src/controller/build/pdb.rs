//! The PodDisruptionBudget: voluntary evictions take at most one member down at a time.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::owned_meta;
use crate::crd::LodestoneCluster;
use crate::names::{Names, selector_labels};

pub fn pod_disruption_budget(cluster: &LodestoneCluster, names: &Names) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owned_meta(cluster, &names.cluster, "store"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(cluster)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}
