//! `lodestone.dev/v1alpha1`: the `LodestoneCluster` and `LodestoneSnapshot` resources.
//!
//! Field docs are user docs: they become `kubectl explain` output. Validation that the API
//! server can do itself (bounds, immutability, no shrinking) is expressed as OpenAPI bounds and
//! CEL rules here; what it cannot (cron syntax, quantity syntax, timing ratios) is checked by
//! the operator, which reports `Degraded` with reason `InvalidSpec`.

// Each `printcolumn(...)` repeats the same keys; clippy reads that as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a Lodestone cluster: an etcd-compatible, Raft-replicated key-value store.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lodestone.dev",
    version = "v1alpha1",
    kind = "LodestoneCluster",
    namespaced,
    status = "LodestoneClusterStatus",
    shortname = "lsc",
    category = "lodestone",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired members"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready members"
    ),
    printcolumn(
        name = "Leader",
        type_ = "string",
        json_path = ".status.leader",
        description = "Member leading Raft"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.currentVersion",
        description = "Running version"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.tls) == has(oldSelf.tls)").message("tls cannot be added or removed after creation"))]
pub struct LodestoneClusterSpec {
    /// Number of voting members, 1 to 7. Three tolerates one failure, five tolerates two.
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 7").message("replicas must be between 1 and 7"))]
    pub replicas: i32,
    /// Lodestone version to run: the tag of the `lodestone` image, for example `0.1.0`.
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("version must not be empty"))]
    pub version: String,
    /// Full image reference to run instead of `ghcr.io/lodestone-dev/lodestone:<version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy of the store containers (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Volumes of every member: the data volume and an optional separate write-ahead-log volume.
    pub storage: StorageSpec,
    /// CPU and memory requests and limits of the store container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where members may run. Without `affinity`, members prefer distinct nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<SchedulingSpec>,
    /// Store settings, named after the etcd flags they set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreOptions>,
    /// Scheduled backups of the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotScheduleSpec>,
    /// How a new cluster starts: empty, or from a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,
    /// TLS on the client and peer URLs, from Secrets in the cluster's namespace. Cannot be
    /// added or removed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// Which Secrets hold the members' certificates. Each Secret has `tls.crt`, `tls.key` and
/// `ca.crt` (the layout cert-manager writes); the certificate must name the member pods'
/// DNS names (`*.<cluster>-peer.<namespace>.svc`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.client) == has(oldSelf.client) && has(self.peer) == has(oldSelf.peer)").message("tls.client and tls.peer cannot be added or removed after creation"))]
pub struct TlsSpec {
    /// Serve clients on https with this Secret's certificate; clients must present a
    /// certificate signed by its `ca.crt` (etcd's `--client-cert-auth`). The operator
    /// connects with this same certificate, so it must allow client authentication too; with
    /// etcd auth enabled its CN is the operator's user, which must hold the `root` role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<TlsSecret>,
    /// Members talk over https with this Secret's certificate and accept only peers whose
    /// certificate its `ca.crt` signed (etcd's `--peer-client-cert-auth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<TlsSecret>,
}

/// A Secret in the cluster's namespace, provided or issued by cert-manager.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSecret {
    /// Name of the Secret.
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("secretName must not be empty"))]
    pub secret_name: String,
    /// Have cert-manager issue the certificate into `secretName`: the operator creates a
    /// cert-manager `Certificate` (named like the Secret) for the member pods' and the client
    /// Service's DNS names, usable for server and client authentication. cert-manager must be
    /// installed, and the issuer must put `ca.crt` in the Secret (a CA or self-signed issuer
    /// does). The client certificate's CN is `root`, so that the operator acts as etcd's root
    /// user when auth is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
}

/// A cert-manager issuer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the issuer.
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("issuerRef.name must not be empty"))]
    pub name: String,
    /// `Issuer` (in the cluster's namespace, the default) or `ClusterIssuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self == 'Issuer' || self == 'ClusterIssuer'").message("issuerRef.kind must be Issuer or ClusterIssuer"))]
    pub kind: Option<String>,
    /// API group of the issuer; `cert-manager.io` by default (external issuers have their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Member volumes. Each member gets its own PersistentVolumeClaims from these templates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.wal) == has(oldSelf.wal)").message("storage.wal cannot be added or removed after creation"))]
pub struct StorageSpec {
    /// The data volume: the state machine and, without `wal`, the write-ahead log.
    pub data: VolumeSpec,
    /// A separate volume for the write-ahead log (the Raft log), mounted at the store's
    /// `--wal-dir`. Put it on fast storage. Cannot be added or removed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<VolumeSpec>,
}

/// One PersistentVolumeClaim template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// Requested size, for example `10Gi`. It can grow but never shrink.
    #[x_kube(validation = kube::core::Rule::new("quantity(self).compareTo(quantity(oldSelf)) >= 0").message("storage size cannot shrink"))]
    pub size: String,
    /// StorageClass of the claim; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Placement of the member pods.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    /// Nodes the members may run on, by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the members tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Pod affinity rules. When unset, members prefer distinct nodes (soft anti-affinity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How members spread across zones or other topology domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// PriorityClass of the member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Store settings. Each maps to the etcd flag of the same name; unset means etcd's default.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StoreOptions {
    /// `--quota-backend-bytes`: the state-machine size that raises the NOSPACE alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub quota_backend_bytes: Option<i64>,
    /// `--snapshot-count`: applied entries between Raft snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub snapshot_count: Option<i64>,
    /// `--heartbeat-interval` in milliseconds (etcd's default: 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub heartbeat_interval: Option<i64>,
    /// `--election-timeout` in milliseconds (etcd's default: 1000); at least 5 heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub election_timeout: Option<i64>,
    /// `--max-request-bytes`: the largest client request accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_request_bytes: Option<i64>,
    /// History compaction (`--auto-compaction-mode`, `--auto-compaction-retention`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_compaction: Option<AutoCompaction>,
}

/// etcd's automatic compaction of old revisions.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoCompaction {
    /// `periodic` keeps a span of time (retention such as `1h`, `30m`); `revision` keeps a
    /// number of revisions (retention such as `10000`).
    pub mode: AutoCompactionMode,
    /// How much history to keep, in the form the mode expects.
    pub retention: String,
}

/// The two compaction modes of etcd.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AutoCompactionMode {
    Periodic,
    Revision,
}

/// Scheduled backups: a `LodestoneSnapshot` is taken on every tick of `schedule`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotScheduleSpec {
    /// Cron schedule in the standard five-field form, for example `0 */6 * * *` (UTC); a
    /// sixth, leading field of seconds is accepted.
    pub schedule: String,
    /// How many completed snapshots to keep; older ones are deleted.
    #[serde(default = "default_retention")]
    #[schemars(range(min = 1))]
    pub retention: i32,
    /// Where the snapshot files go.
    pub destination: SnapshotDestination,
}

fn default_retention() -> i32 {
    7
}

/// Where a snapshot file is written.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotDestination {
    /// A PersistentVolumeClaim in the cluster's namespace.
    pub pvc: PvcDestination,
}

/// A directory on a PersistentVolumeClaim.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PvcDestination {
    /// Name of the claim.
    pub claim_name: String,
    /// Directory inside the volume; the volume's root when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// How a new cluster starts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Start from this snapshot file instead of an empty store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<SnapshotSource>,
}

/// A snapshot file to restore from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSource {
    /// The claim holding the file.
    pub pvc: PvcDestination,
    /// File name inside `pvc.path`.
    pub file: String,
}

/// Observed state, written by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LodestoneClusterStatus {
    /// Summary: Pending, Bootstrapping, Running, Degraded or Invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `Available`, `Progressing` and `Degraded`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Raft members as the cluster itself reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Name of the member leading Raft.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Member pods that exist (the scale subresource's status replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Member pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the member pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Latest store revision seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Cluster ID in etcd's hex form, latched when the cluster first forms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Version the members run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The newest completed snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot: Option<LastSnapshot>,
    /// Member pods still running an older pod template (restarted one at a time, the leader
    /// last).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outdated_members: Vec<String>,
    /// The membership change under way, recorded before each of its steps so a restarted
    /// operator resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<MembershipOperation>,
}

/// A membership change: one member added or removed, a step at a time.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MembershipOperation {
    pub kind: OperationKind,
    /// The step being made (recorded before it is made).
    pub step: StepKind,
    /// The member's pod.
    pub member: String,
    /// The pod's ordinal in the StatefulSet.
    pub ordinal: i32,
    /// The member's Raft id in etcd's hex form, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
}

impl MembershipOperation {
    /// The Raft id, when recorded.
    pub fn id(&self) -> Option<u64> {
        self.member_id.as_deref().and_then(|h| u64::from_str_radix(h, 16).ok())
    }
}

/// What a membership operation does.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationKind {
    AddMember,
    RemoveMember,
    /// A member that lost its volume (or crash-loops) is removed and added again, empty,
    /// under a new id.
    ReplaceMember,
}

/// Steps of a membership operation. Adding: ClearVolumes (claims left in the new member's slot
/// are deleted, so it never starts on an old member's data), AddLearner (MemberAdd as a
/// learner), StartMember (a StatefulSet slot for its pod), Promote. Removing: MoveLeader (only
/// if it leads), RemoveMember, Shrink (its slot goes), DeleteVolumes (its claims are deleted).
/// Replacing: RemoveMember, ResetVolumes (its claims are deleted and its pod restarted, so it
/// comes back empty), AddLearner, StartMember, Promote.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    ClearVolumes,
    AddLearner,
    StartMember,
    Promote,
    MoveLeader,
    RemoveMember,
    Shrink,
    DeleteVolumes,
    ResetVolumes,
}

/// One Raft member.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member name (the pod name); empty until the member has started.
    pub name: String,
    /// Raft member ID in etcd's hex form.
    pub id: String,
    /// leader, follower or learner.
    pub role: String,
    /// Whether the member is a non-voting learner.
    pub learner: bool,
    /// Whether the member answered a status request and knows a leader.
    pub healthy: bool,
    /// Last Raft log index the member applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
}

/// A completed snapshot.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastSnapshot {
    /// Name of the `LodestoneSnapshot`.
    pub name: String,
    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Store revision it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

/// A one-shot backup of a `LodestoneCluster` through the etcd Maintenance.Snapshot API.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lodestone.dev",
    version = "v1alpha1",
    kind = "LodestoneSnapshot",
    namespaced,
    status = "LodestoneSnapshotStatus",
    shortname = "lss",
    category = "lodestone",
    derive = "PartialEq",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".status.revision"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".status.size"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct LodestoneSnapshotSpec {
    /// Name of the `LodestoneCluster` in the same namespace.
    pub cluster: String,
    /// Where the snapshot file goes.
    pub destination: SnapshotDestination,
}

/// Progress and result of a snapshot.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LodestoneSnapshotStatus {
    /// Pending, Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// When the snapshot started streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the file was complete and verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Size of the file in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// SHA-256 of the file, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Store revision the snapshot holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Why the snapshot failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What a pending snapshot waits for (its cluster to exist, or to have a leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
