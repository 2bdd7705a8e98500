//! The StatefulSet: stable pod names and volumes for the members.
//!
//! The StatefulSet controller only creates pods; it never restarts them by itself
//! (`updateStrategy: OnDelete`) and creates them all at once (`podManagementPolicy: Parallel`),
//! so the operator alone decides when a member restarts or joins.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{image, owned_meta};
use crate::crd::{AutoCompactionMode, LodestoneCluster, VolumeSpec};
use crate::names::{
    CLIENT_PORT, CLIENT_TLS_DIR, DATA_DIR, METRICS_PORT, Names, PEER_PORT, PEER_TLS_DIR, WAL_DIR, labels,
    selector_labels,
};

/// The non-root user of the `lodestone` image.
const RUN_AS: i64 = 65532;

/// The StatefulSet running `replicas` members.
pub fn statefulset(cluster: &LodestoneCluster, names: &Names, replicas: i32) -> StatefulSet {
    let spec = &cluster.spec;
    let mut claims = vec![claim("data", &spec.storage.data)];
    let mut mounts = vec![mount("data", DATA_DIR), mount("tmp", "/tmp")];
    if let Some(wal) = &spec.storage.wal {
        claims.push(claim("wal", wal));
        mounts.push(mount("wal", WAL_DIR));
    }
    let mut volumes = vec![Volume {
        name: "tmp".to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("64Mi".to_string())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }];
    for (volume, secret, dir) in [
        ("client-tls", &names.client_tls_secret, CLIENT_TLS_DIR),
        ("peer-tls", &names.peer_tls_secret, PEER_TLS_DIR),
    ] {
        if let Some(secret) = secret {
            volumes.push(secret_volume(volume, secret));
            mounts.push(VolumeMount {
                read_only: Some(true),
                ..mount(volume, dir)
            });
        }
    }
    let scheduling = spec.scheduling.clone().unwrap_or_default();
    let affinity = scheduling
        .affinity
        .clone()
        .unwrap_or_else(|| spread_across_nodes(cluster));

    // A cluster founded from a snapshot: each founding member's data directory is restored from
    // the same file before the member first starts. The restore tool reads the member's own
    // environment and does nothing for a member with data or one joining later.
    let mut init_containers = Vec::new();
    if let Some(source) = cluster.spec.bootstrap.as_ref().and_then(|b| b.from_snapshot.as_ref()) {
        volumes.push(Volume {
            name: "restore".to_string(),
            persistent_volume_claim: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
                claim_name: source.pvc.claim_name.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        });
        let mut restore_mounts: Vec<VolumeMount> = mounts
            .iter()
            .filter(|m| m.name == "data" || m.name == "wal")
            .cloned()
            .collect();
        restore_mounts.push(VolumeMount {
            read_only: Some(true),
            ..mount("restore", RESTORE_DIR)
        });
        init_containers.push(Container {
            name: "restore".to_string(),
            image: Some(image(cluster)),
            image_pull_policy: spec.image_pull_policy.clone(),
            args: Some(vec![
                "snapshot".to_string(),
                "restore".to_string(),
                snapshot_path(RESTORE_DIR, source.pvc.path.as_deref(), &source.file),
                "--only-if-new".to_string(),
            ]),
            env: Some(env(cluster, names)),
            env_from: bootstrap_env(names),
            volume_mounts: Some(restore_mounts),
            security_context: Some(container_security()),
            termination_message_policy: Some("FallbackToLogsOnError".to_string()),
            ..Container::default()
        });
    }

    let container = Container {
        name: "lodestone".to_string(),
        image: Some(image(cluster)),
        image_pull_policy: spec.image_pull_policy.clone(),
        env: Some(env(cluster, names)),
        env_from: bootstrap_env(names),
        ports: Some(vec![
            container_port("client", CLIENT_PORT),
            container_port("peer", PEER_PORT),
            container_port("metrics", METRICS_PORT),
        ]),
        // Replaying a long log can take a while: the startup probe allows five minutes
        // before liveness takes over.
        startup_probe: Some(http_probe("/livez", 5, 60)),
        liveness_probe: Some(http_probe("/livez", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        resources: spec.resources.clone(),
        // The store logs why it stopped last: that becomes the container's termination
        // message, which tells the operator a member lost its volume.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        volume_mounts: Some(mounts),
        security_context: Some(container_security()),
        ..Container::default()
    };

    StatefulSet {
        metadata: owned_meta(cluster, &names.cluster, "store"),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(names.peer_service.clone()),
            pod_management_policy: Some("Parallel".to_string()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_string()),
                ..StatefulSetUpdateStrategy::default()
            }),
            // Member volumes outlive the StatefulSet: removing a member's data is a membership
            // decision, never a side effect of scaling or deleting.
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Retain".to_string()),
                when_scaled: Some("Retain".to_string()),
            }),
            selector: LabelSelector {
                match_labels: Some(selector_labels(cluster)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(cluster, "store")),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(names.cluster.clone()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    init_containers: (!init_containers.is_empty()).then_some(init_containers),
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: Some(PodSecurityContext {
                        fs_group_change_policy: Some("OnRootMismatch".to_string()),
                        ..pod_security()
                    }),
                    affinity: Some(affinity),
                    node_selector: scheduling.node_selector.clone(),
                    tolerations: scheduling.tolerations.clone(),
                    topology_spread_constraints: scheduling.topology_spread_constraints.clone(),
                    priority_class_name: scheduling.priority_class_name.clone(),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(claims),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// The store's flags, as its `LODESTONE_*` environment variables. The member's name and URLs
/// come from the pod's own name through the downward API; the bootstrap flags come from the
/// bootstrap ConfigMap.
fn env(cluster: &LodestoneCluster, names: &Names) -> Vec<EnvVar> {
    let host = format!("$(POD_NAME).{}.{}.svc", names.peer_service, names.namespace);
    let mut env = vec![
        EnvVar {
            name: "POD_NAME".to_string(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_string(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        var("LODESTONE_NAME", "$(POD_NAME)".to_string()),
        var("LODESTONE_DATA_DIR", DATA_DIR.to_string()),
        var(
            "LODESTONE_LISTEN_CLIENT_URLS",
            format!("{}://0.0.0.0:{CLIENT_PORT}", names.client_scheme()),
        ),
        var(
            "LODESTONE_LISTEN_PEER_URLS",
            format!("{}://0.0.0.0:{PEER_PORT}", names.peer_scheme()),
        ),
        var(
            "LODESTONE_LISTEN_METRICS_URLS",
            format!("http://0.0.0.0:{METRICS_PORT}"),
        ),
        var(
            "LODESTONE_ADVERTISE_CLIENT_URLS",
            format!("{}://{host}:{CLIENT_PORT}", names.client_scheme()),
        ),
        var(
            "LODESTONE_INITIAL_ADVERTISE_PEER_URLS",
            format!("{}://{host}:{PEER_PORT}", names.peer_scheme()),
        ),
        var("LODESTONE_LOG_FORMAT", "json".to_string()),
    ];
    // The metrics listener stays plain HTTP: the kubelet's probes and scrapers use it.
    for (prefix, secret, dir) in [
        ("", &names.client_tls_secret, CLIENT_TLS_DIR),
        ("PEER_", &names.peer_tls_secret, PEER_TLS_DIR),
    ] {
        if secret.is_some() {
            env.push(var(&format!("LODESTONE_{prefix}CERT_FILE"), format!("{dir}/tls.crt")));
            env.push(var(&format!("LODESTONE_{prefix}KEY_FILE"), format!("{dir}/tls.key")));
            env.push(var(
                &format!("LODESTONE_{prefix}TRUSTED_CA_FILE"),
                format!("{dir}/ca.crt"),
            ));
            env.push(var(&format!("LODESTONE_{prefix}CLIENT_CERT_AUTH"), "true".to_string()));
        }
    }
    if cluster.spec.storage.wal.is_some() {
        env.push(var("LODESTONE_WAL_DIR", WAL_DIR.to_string()));
    }
    if let Some(store) = &cluster.spec.store {
        let numbers = [
            ("LODESTONE_QUOTA_BACKEND_BYTES", store.quota_backend_bytes),
            ("LODESTONE_SNAPSHOT_COUNT", store.snapshot_count),
            ("LODESTONE_HEARTBEAT_INTERVAL", store.heartbeat_interval),
            ("LODESTONE_ELECTION_TIMEOUT", store.election_timeout),
            ("LODESTONE_MAX_REQUEST_BYTES", store.max_request_bytes),
        ];
        for (name, value) in numbers {
            if let Some(value) = value {
                env.push(var(name, value.to_string()));
            }
        }
        if let Some(compaction) = &store.auto_compaction {
            let mode = match compaction.mode {
                AutoCompactionMode::Periodic => "periodic",
                AutoCompactionMode::Revision => "revision",
            };
            env.push(var("LODESTONE_AUTO_COMPACTION_MODE", mode.to_string()));
            env.push(var("LODESTONE_AUTO_COMPACTION_RETENTION", compaction.retention.clone()));
        }
    }
    env
}

/// Non-root, no privilege, read-only root file system: every container the operator runs.
pub(super) fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// Where the snapshot to restore from is mounted in the restore init container.
const RESTORE_DIR: &str = "/var/lib/lodestone/restore";

/// A snapshot file's path under a volume mounted at `mount`.
pub(super) fn snapshot_path(mount: &str, path: Option<&str>, file: &str) -> String {
    match path.map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()) {
        Some(p) => format!("{mount}/{p}/{file}"),
        None => format!("{mount}/{file}"),
    }
}

fn var(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value),
        ..EnvVar::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("metrics".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Probe::default()
    }
}

/// The pod's security: the store's user and group, never root, the runtime's seccomp profile.
pub(super) fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The bootstrap ConfigMap as environment: the member's cluster state and token.
fn bootstrap_env(names: &Names) -> Option<Vec<EnvFromSource>> {
    Some(vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: names.bootstrap.clone(),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }])
}

/// A Secret as files readable by the store's group only (the pod's fsGroup).
pub(super) fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            default_mode: Some(0o440),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        ..VolumeMount::default()
    }
}

fn claim(name: &str, volume: &VolumeSpec) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: volume.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(volume.size.clone()))])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The default placement: members prefer nodes that run no other member of the cluster, so
/// one node failure costs at most one member where the cluster has room for it.
fn spread_across_nodes(cluster: &LodestoneCluster) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: PodAffinityTerm {
                    topology_key: "kubernetes.io/hostname".to_string(),
                    label_selector: Some(LabelSelector {
                        match_labels: Some(selector_labels(cluster)),
                        ..LabelSelector::default()
                    }),
                    ..PodAffinityTerm::default()
                },
            }]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}
