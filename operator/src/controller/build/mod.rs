//! Pure builders: one function per owned Kubernetes object, from the cluster resource and the
//! decisions of the plan. Nothing here talks to the API server.

mod certificate;
mod config;
mod pdb;
mod service;
mod snapshot_job;
mod statefulset;

pub use certificate::{Side, certificate, certificate_resource, certificates};
pub use config::{BootstrapConfig, ClusterState, bootstrap_config_map};
pub use pdb::{pod_disruption_budget, quorum};
pub use service::{client_service, peer_service, service_account};
pub use snapshot_job::{SAVE_JOB_APP, SNAPSHOT_LABEL, snapshot_file, snapshot_job, snapshot_job_name};
pub use statefulset::statefulset;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::crd::LodestoneCluster;
use crate::names::labels;

/// Image repository used when the spec names only a version.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/lodestone-dev/lodestone";

/// Metadata of an owned object: name, namespace, labels and the controller owner reference, so
/// Kubernetes garbage-collects it with the cluster.
pub fn owned_meta(cluster: &LodestoneCluster, name: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: cluster.namespace(),
        labels: Some(labels(cluster, component)),
        owner_references: cluster.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// Image of the store containers.
pub fn image(cluster: &LodestoneCluster) -> String {
    cluster
        .spec
        .image
        .clone()
        .unwrap_or_else(|| format!("{DEFAULT_IMAGE_REPOSITORY}:{}", cluster.spec.version))
}

#[cfg(test)]
mod tests;
