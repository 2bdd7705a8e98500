//! The Job that saves one `LodestoneSnapshot`: `lodestone snapshot save` from the members'
//! client URLs into the destination claim, its JSON report left as the pod's termination
//! message for the operator to read. With client TLS it mounts the cluster's client TLS
//! Secret, the operator's own client identity.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::image;
use super::statefulset::{container_security, pod_security, secret_volume, snapshot_path};
use crate::crd::{LodestoneCluster, LodestoneSnapshot};
use crate::names::{CLIENT_TLS_DIR, Names, labels};

/// Where the destination claim is mounted in the Job's pod.
const SNAPSHOTS_DIR: &str = "/var/lib/lodestone/snapshots";

/// `app.kubernetes.io/name` of the save Jobs (the members' is `lodestone`).
pub const SAVE_JOB_APP: &str = "lodestone-snapshot";
/// Names the snapshot a save Job belongs to.
pub const SNAPSHOT_LABEL: &str = "lodestone.dev/snapshot";

/// The Job's name for a snapshot.
pub fn snapshot_job_name(snapshot: &LodestoneSnapshot) -> String {
    format!("{}-save", snapshot.name_any())
}

/// The snapshot file's name: the snapshot's, so scheduled ones sort by time.
pub fn snapshot_file(snapshot: &LodestoneSnapshot) -> String {
    format!("{}.db", snapshot.name_any())
}

/// The labels of a save Job and its pod. Not the members' selector labels: a Job's pod must
/// not count as a member for the Services, the PDB or the operator's own observation.
fn job_labels(cluster: &LodestoneCluster, snapshot: &LodestoneSnapshot) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = labels(cluster, "snapshot");
    labels.insert("app.kubernetes.io/name".into(), SAVE_JOB_APP.into());
    labels.insert(SNAPSHOT_LABEL.into(), snapshot.name_any());
    labels
}

/// The Job saving `snapshot` of `cluster` from `endpoints` (client URLs, tried in order).
/// `retain`: keep only that many files of the prefix after saving (scheduled snapshots).
pub fn snapshot_job(
    cluster: &LodestoneCluster,
    snapshot: &LodestoneSnapshot,
    endpoints: &[String],
    retain: Option<(i32, &str)>,
) -> Job {
    let pvc = &snapshot.spec.destination.pvc;
    let mut args = vec![
        "snapshot".to_string(),
        "save".to_string(),
        snapshot_path(SNAPSHOTS_DIR, pvc.path.as_deref(), &snapshot_file(snapshot)),
        "--endpoints".to_string(),
        endpoints.join(","),
        "--report".to_string(),
        "/dev/termination-log".to_string(),
    ];
    // With client TLS, the Job checks the members against the cluster's CA and presents the
    // client certificate of the same Secret the operator uses.
    let names = Names::of(cluster);
    let mut volume_mounts = vec![VolumeMount {
        name: "snapshots".to_string(),
        mount_path: SNAPSHOTS_DIR.to_string(),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "snapshots".to_string(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: pvc.claim_name.clone(),
            read_only: Some(false),
        }),
        ..Volume::default()
    }];
    if let Some(secret) = &names.client_tls_secret {
        args.extend([
            "--cacert".to_string(),
            format!("{CLIENT_TLS_DIR}/ca.crt"),
            "--cert".to_string(),
            format!("{CLIENT_TLS_DIR}/tls.crt"),
            "--key".to_string(),
            format!("{CLIENT_TLS_DIR}/tls.key"),
        ]);
        volumes.push(secret_volume("client-tls", secret));
        volume_mounts.push(VolumeMount {
            name: "client-tls".to_string(),
            mount_path: CLIENT_TLS_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if let Some((keep, prefix)) = retain {
        args.extend([
            "--retain".into(),
            keep.to_string(),
            "--prefix".into(),
            prefix.to_string(),
        ]);
    }
    let labels = job_labels(cluster, snapshot);
    Job {
        metadata: ObjectMeta {
            name: Some(snapshot_job_name(snapshot)),
            namespace: snapshot.namespace(),
            labels: Some(labels.clone()),
            // Collected with its snapshot.
            owner_references: snapshot.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(2),
            // The result lives on in the snapshot's status.
            ttl_seconds_after_finished: Some(86_400),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_string()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    containers: vec![Container {
                        name: "save".to_string(),
                        image: Some(image(cluster)),
                        image_pull_policy: cluster.spec.image_pull_policy.clone(),
                        args: Some(args),
                        volume_mounts: Some(volume_mounts),
                        security_context: Some(container_security()),
                        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
                        ..Container::default()
                    }],
                    volumes: Some(volumes),
                    security_context: Some(pod_security()),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}
