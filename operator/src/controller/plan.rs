//! The plan step: from the cluster resource and what was observed, decide the desired owned
//! objects, the status to report and the Events to publish. Pure: no client, no clock (the
//! time is passed in), so every decision is a table test.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::build::{self, BootstrapConfig, ClusterState};
use super::membership::{self, Action as MemberAction, Decision};
use super::observe::Observed;
use super::rollout;
use super::validate::validate;
use crate::crd::{LodestoneCluster, LodestoneClusterStatus, MemberStatus, StorageSpec, VolumeSpec};
use crate::members::format_id;
use crate::names::{self, Names};

/// The owned objects as they should be.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub service_account: ServiceAccount,
    pub peer_service: Service,
    pub client_service: Service,
    pub bootstrap: ConfigMap,
    pub statefulset: StatefulSet,
    pub pdb: PodDisruptionBudget,
    /// cert-manager Certificates for `spec.tls.*.issuerRef`, applied before the StatefulSet
    /// that mounts their Secrets.
    pub certificates: Vec<kube::api::DynamicObject>,
}

/// An Event to publish on the cluster resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    pub warning: bool,
    pub reason: Reason,
    /// PascalCase action the operator took or attempted.
    pub action: &'static str,
    pub note: String,
}

/// Everything the apply and status steps do for one reconcile.
#[derive(Clone, Debug)]
pub struct Plan {
    /// `None` when the spec must not be acted on (invalid, or asks for something unsupported).
    pub desired: Option<Box<Desired>>,
    pub status: LodestoneClusterStatus,
    pub events: Vec<PlannedEvent>,
    pub requeue_after: Duration,
    /// The membership step to make before applying (`status.operation` holds its record
    /// until it succeeded, then its follow-up).
    pub membership: Option<membership::Step>,
    /// The Event to publish when the membership step succeeds and ends its operation (the
    /// member joined as a voter, or is gone with its volumes).
    pub membership_done: Option<PlannedEvent>,
    /// The rolling-restart step to make after applying.
    pub rollout: Option<rollout::Action>,
}

/// Phases reported in `status.phase`.
pub mod phase {
    pub const INVALID: &str = "Invalid";
    pub const BOOTSTRAPPING: &str = "Bootstrapping";
    pub const RUNNING: &str = "Running";
    pub const DEGRADED: &str = "Degraded";
    pub const UNAVAILABLE: &str = "Unavailable";
}

/// Condition types.
pub mod condition {
    pub const AVAILABLE: &str = "Available";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
}

/// Why a condition is what it is, or why an Event was published: the PascalCase `reason`
/// that `kubectl describe` and `kubectl get -o yaml` show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The spec breaks a rule the API server cannot check.
    InvalidSpec,
    /// The founding members are starting and have not formed the cluster yet.
    Bootstrapping,
    /// A member reported the cluster for the first time.
    ClusterFormed,
    /// A leader is known: a quorum of voters is up.
    QuorumAvailable,
    /// No member answered.
    NoMembersReachable,
    /// Members answer but none knows a leader.
    NoLeader,
    /// A member is being added (learner, slot, promotion).
    AddingMember,
    /// A member is being removed (leadership, removal, slot, volumes).
    RemovingMember,
    /// A member that lost its volume, or crash-looped, is being removed and added again.
    ReplacingMember,
    /// A member joined as a voter.
    MemberAdded,
    /// A lost member joined again, empty, under a new id.
    MemberReplaced,
    /// A member left the cluster and its volumes were deleted.
    MemberRemoved,
    /// `spec.replicas` differs from the membership, and no change can be made safely now.
    ScalingBlocked,
    /// `spec.storage` differs from the volumes the members run on, and a StatefulSet's claim
    /// templates cannot change.
    StorageChangeNotApplied,
    /// Some members do not answer or know no leader.
    MembersUnhealthy,
    /// Nothing is wrong.
    AsExpected,
    /// Members are (re)starting.
    MembersStarting,
    /// Everything the spec asks for is in place.
    Reconciled,
    /// A snapshot was saved and checked.
    SnapshotSucceeded,
    /// A snapshot could not be saved.
    SnapshotFailed,
    /// Leadership moved to another member.
    LeaderChanged,
    /// Members restart one at a time on a changed pod template.
    RollingUpdate,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "InvalidSpec",
            Reason::Bootstrapping => "Bootstrapping",
            Reason::ClusterFormed => "ClusterFormed",
            Reason::QuorumAvailable => "QuorumAvailable",
            Reason::NoMembersReachable => "NoMembersReachable",
            Reason::NoLeader => "NoLeader",
            Reason::AddingMember => "AddingMember",
            Reason::RemovingMember => "RemovingMember",
            Reason::ReplacingMember => "ReplacingMember",
            Reason::MemberAdded => "MemberAdded",
            Reason::MemberReplaced => "MemberReplaced",
            Reason::MemberRemoved => "MemberRemoved",
            Reason::ScalingBlocked => "ScalingBlocked",
            Reason::StorageChangeNotApplied => "StorageChangeNotApplied",
            Reason::MembersUnhealthy => "MembersUnhealthy",
            Reason::AsExpected => "AsExpected",
            Reason::MembersStarting => "MembersStarting",
            Reason::Reconciled => "Reconciled",
            Reason::SnapshotSucceeded => "SnapshotSucceeded",
            Reason::SnapshotFailed => "SnapshotFailed",
            Reason::LeaderChanged => "LeaderChanged",
            Reason::RollingUpdate => "RollingUpdate",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Re-observe soon while something is changing, less often when all is well.
const REQUEUE_BUSY: Duration = Duration::from_secs(10);
const REQUEUE_STEADY: Duration = Duration::from_secs(60);

pub fn plan(cluster: &LodestoneCluster, observed: &Observed, now: &Time) -> Plan {
    let names = Names::of(cluster);
    let previous = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let mut status = LodestoneClusterStatus {
        conditions: previous.conditions.clone(),
        selector: Some(names::selector_string(cluster)),
        observed_generation: generation,
        cluster_id: previous.cluster_id.clone(),
        last_snapshot: previous.last_snapshot.clone(),
        ..LodestoneClusterStatus::default()
    };
    fill_from_observation(&mut status, observed);
    let mut events = Vec::new();
    let mut conditions = Conditions {
        list: &mut status.conditions,
        generation,
        now,
    };

    // Specs that must not be acted on: report and wait for the user to change them.
    let problems = validate(&cluster.spec);
    let reason = Reason::InvalidSpec;
    if !problems.is_empty() {
        let message = problems.join("; ");
        if conditions.set(condition::DEGRADED, true, reason, &message) {
            events.push(PlannedEvent {
                warning: true,
                reason,
                action: "Validate",
                note: message.clone(),
            });
        }
        conditions.set(
            condition::PROGRESSING,
            false,
            reason,
            "waiting for the spec to be corrected",
        );
        let (available, why, text) = availability(observed);
        conditions.set(condition::AVAILABLE, available, why, &text);
        status.phase = Some(phase::INVALID.to_string());
        return Plan {
            desired: None,
            status,
            events,
            requeue_after: REQUEUE_STEADY,
            membership: None,
            membership_done: None,
            rollout: None,
        };
    }

    // The bootstrap decision: founding members are fixed the first time; `existing` is
    // latched as soon as the cluster has been seen formed, and never goes back.
    let mut bootstrap = observed.bootstrap.clone().unwrap_or_else(|| {
        events.push(PlannedEvent {
            warning: false,
            reason: Reason::Bootstrapping,
            action: "CreateCluster",
            note: format!("founding a cluster of {} members", cluster.spec.replicas),
        });
        BootstrapConfig::founding(
            &names,
            cluster.spec.replicas,
            cluster.metadata.uid.as_deref().unwrap_or(""),
        )
    });
    if observed.members.formed() {
        if bootstrap.state == ClusterState::New {
            bootstrap.state = ClusterState::Existing;
        }
        if status.cluster_id.is_none() {
            let id = format_id(observed.members.cluster_id.unwrap_or_default());
            events.push(PlannedEvent {
                warning: false,
                reason: Reason::ClusterFormed,
                action: "Bootstrap",
                note: format!("cluster {id} formed with {} members", observed.members.members.len()),
            });
            status.cluster_id = Some(id);
        }
    }
    // Slots: the StatefulSet's replicas. The founding members' count until the cluster has
    // formed; afterwards what it runs, changed only by membership steps.
    let mut members = match (&status.cluster_id, &observed.statefulset) {
        (Some(_), Some(sts)) => sts
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(bootstrap.members()),
        _ => bootstrap.members(),
    };
    status.operation = previous.operation.clone();
    // Membership is changed only on what the members say: with none answering, nothing is
    // decided (the operation, if any, stays recorded).
    let decision = if status.cluster_id.is_some() && observed.members.formed() {
        membership::decide(membership::Input {
            desired: cluster.spec.replicas,
            slots: members,
            view: &observed.members,
            names: &names,
            operation: previous.operation.as_ref(),
            pods: &observed.pods,
        })
    } else if previous.operation.is_some() {
        Decision::Wait("no member answers".into())
    } else {
        Decision::Steady
    };
    let update_revision = observed
        .statefulset
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.update_revision.clone());
    status.outdated_members = rollout::outdated(update_revision.as_deref(), &observed.pods);
    let mut blocked = None;
    let step = match decision {
        Decision::Steady => {
            status.operation = None;
            None
        }
        Decision::Done => {
            if let Some(op) = &previous.operation {
                events.push(finished(op));
            }
            status.operation = None;
            None
        }
        Decision::Wait(why) => {
            blocked = Some(why);
            None
        }
        Decision::Step(step) => {
            if let MemberAction::SetSlots(n) = step.action {
                members = n;
            }
            if previous.operation.as_ref() != Some(&step.record) {
                events.push(PlannedEvent {
                    warning: false,
                    reason: match step.record.kind {
                        membership::OperationKind::AddMember => Reason::AddingMember,
                        membership::OperationKind::RemoveMember => Reason::RemovingMember,
                        membership::OperationKind::ReplaceMember => Reason::ReplacingMember,
                    },
                    action: "ChangeMembership",
                    note: format!("{}: {:?}", step.record.member, step.record.step),
                });
            }
            // Until the executor reports success, the record stands.
            status.operation = Some(step.record.clone());
            Some(step)
        }
    };
    // A StatefulSet's claim templates are immutable: members keep the volumes they run on,
    // and a changed spec.storage is reported instead of failing every apply.
    let in_place = storage_in_place(observed).filter(|st| !same_storage(st, &cluster.spec.storage));
    let statefulset = match &in_place {
        Some(storage) => {
            let mut running = cluster.clone();
            running.spec.storage = storage.clone();
            build::statefulset(&running, &names, members)
        }
        None => build::statefulset(cluster, &names, members),
    };
    let desired = Desired {
        service_account: build::service_account(cluster, &names),
        peer_service: build::peer_service(cluster, &names),
        client_service: build::client_service(cluster, &names),
        bootstrap: build::bootstrap_config_map(cluster, &names, &bootstrap),
        statefulset,
        pdb: build::pod_disruption_budget(cluster, &names, members),
        certificates: build::certificates(cluster, &names),
    };

    // Conditions.
    let (available, why, text) = availability(observed);
    if conditions.set(condition::AVAILABLE, available, why, &text) && previous_known(&previous) {
        events.push(PlannedEvent {
            warning: !available,
            reason: why,
            action: "Observe",
            note: text.clone(),
        });
    }
    // A learner the operation under way is starting does not answer until its pod runs: that
    // is progress (Progressing says so), not a degraded cluster.
    let starting = status
        .operation
        .as_ref()
        .filter(|op| op.kind != membership::OperationKind::RemoveMember)
        .and_then(|op| op.member_id.as_deref());
    let unhealthy: Vec<&MemberStatus> = status
        .members
        .iter()
        .filter(|m| !(m.healthy || (m.learner && Some(m.id.as_str()) == starting)))
        .collect();
    let degraded = if let Some(why) = &blocked {
        Some((
            Reason::ScalingBlocked,
            format!(
                "spec.replicas is {}, but the membership cannot change now: {why}",
                cluster.spec.replicas
            ),
        ))
    } else if let Some(running) = &in_place {
        Some((
            Reason::StorageChangeNotApplied,
            format!(
                "spec.storage asks for {} but the members run on {}: a StatefulSet's volume claim templates cannot change, and this operator version does not resize or move volumes; revert spec.storage, or expand each member's PersistentVolumeClaim yourself where its StorageClass allows it",
                describe_storage(&cluster.spec.storage),
                describe_storage(running)
            ),
        ))
    } else if !unhealthy.is_empty() && status.cluster_id.is_some() {
        let names: Vec<&str> = unhealthy
            .iter()
            .map(|m| {
                if m.name.is_empty() {
                    m.id.as_str()
                } else {
                    m.name.as_str()
                }
            })
            .collect();
        Some((
            Reason::MembersUnhealthy,
            format!("members not answering or without a leader: {}", names.join(", ")),
        ))
    } else {
        None
    };
    match &degraded {
        Some((reason, message)) => {
            if conditions.set(condition::DEGRADED, true, *reason, message) {
                events.push(PlannedEvent {
                    warning: true,
                    reason: *reason,
                    action: "Observe",
                    note: message.clone(),
                });
            }
        }
        None => {
            conditions.set(
                condition::DEGRADED,
                false,
                Reason::AsExpected,
                "all members are healthy",
            );
        }
    }
    let bootstrapping = status.cluster_id.is_none();
    if bootstrapping {
        conditions.set(
            condition::PROGRESSING,
            true,
            Reason::Bootstrapping,
            &format!("waiting for {members} founding members to form the cluster"),
        );
    } else if status.operation.is_none() && !status.outdated_members.is_empty() {
        conditions.set(
            condition::PROGRESSING,
            true,
            Reason::RollingUpdate,
            &format!(
                "{} of {members} members run an older template: {}",
                status.outdated_members.len(),
                status.outdated_members.join(", ")
            ),
        );
    } else if let Some(op) = &status.operation {
        conditions.set(
            condition::PROGRESSING,
            true,
            match op.kind {
                membership::OperationKind::AddMember => Reason::AddingMember,
                membership::OperationKind::RemoveMember => Reason::RemovingMember,
                membership::OperationKind::ReplaceMember => Reason::ReplacingMember,
            },
            &format!("{}: {:?}", op.member, op.step),
        );
    } else {
        let ready = status.ready_replicas;
        if ready < members {
            conditions.set(
                condition::PROGRESSING,
                true,
                Reason::MembersStarting,
                &format!("{ready} of {members} members ready"),
            );
        } else {
            conditions.set(
                condition::PROGRESSING,
                false,
                Reason::Reconciled,
                "all members are running",
            );
        }
    }
    if let (Some(old), Some(new)) = (&previous.leader, &status.leader)
        && old != new
    {
        events.push(PlannedEvent {
            warning: false,
            reason: Reason::LeaderChanged,
            action: "Observe",
            note: format!("leader moved from {old} to {new}"),
        });
    }

    status.phase = Some(
        if bootstrapping {
            phase::BOOTSTRAPPING
        } else if !available {
            phase::UNAVAILABLE
        } else if degraded.is_some() {
            phase::DEGRADED
        } else {
            phase::RUNNING
        }
        .to_string(),
    );
    // A rolling restart waits for membership changes, and runs only on a formed cluster.
    let restart = match (&step, &status.operation, bootstrapping) {
        (None, None, false) => {
            match rollout::decide(update_revision.as_deref(), &observed.pods, &observed.members, &names) {
                rollout::Decision::Step(action) => {
                    if let rollout::Action::RestartPod(pod) = &action {
                        events.push(PlannedEvent {
                            warning: false,
                            reason: Reason::RollingUpdate,
                            action: "RestartMember",
                            note: format!("restarting {pod} on the new pod template"),
                        });
                    }
                    Some(action)
                }
                rollout::Decision::UpToDate | rollout::Decision::Wait(_) => None,
            }
        }
        _ => None,
    };
    let steady = available
        && degraded.is_none()
        && !bootstrapping
        && status.ready_replicas >= members
        && status.operation.is_none()
        && status.outdated_members.is_empty();
    Plan {
        desired: Some(Box::new(desired)),
        status,
        events,
        requeue_after: if steady { REQUEUE_STEADY } else { REQUEUE_BUSY },
        membership_done: step.as_ref().filter(|s| s.then.is_none()).map(|s| finished(&s.record)),
        membership: step,
        rollout: restart,
    }
}

/// The Event that says a membership operation is over.
fn finished(op: &crate::crd::MembershipOperation) -> PlannedEvent {
    PlannedEvent {
        warning: false,
        reason: match op.kind {
            membership::OperationKind::AddMember => Reason::MemberAdded,
            membership::OperationKind::RemoveMember => Reason::MemberRemoved,
            membership::OperationKind::ReplaceMember => Reason::MemberReplaced,
        },
        action: "ChangeMembership",
        note: match op.kind {
            membership::OperationKind::AddMember => format!("{} joined as a voter", op.member),
            membership::OperationKind::RemoveMember => format!("{} was removed and its volumes deleted", op.member),
            membership::OperationKind::ReplaceMember => {
                format!("{} was replaced: it joined again, empty, as a new voter", op.member)
            }
        },
    }
}

/// The storage the running StatefulSet's claim templates were made from (`None` before it
/// exists, or when it carries no templates).
fn storage_in_place(observed: &Observed) -> Option<StorageSpec> {
    let templates = observed
        .statefulset
        .as_ref()?
        .spec
        .as_ref()?
        .volume_claim_templates
        .as_ref()?;
    let volume = |name: &str| {
        let claim = templates.iter().find(|c| c.metadata.name.as_deref() == Some(name))?;
        let spec = claim.spec.as_ref()?;
        let size = spec.resources.as_ref()?.requests.as_ref()?.get("storage")?.0.clone();
        Some(VolumeSpec {
            size,
            storage_class_name: spec.storage_class_name.clone(),
        })
    };
    Some(StorageSpec {
        data: volume("data")?,
        wal: volume("wal"),
    })
}

/// Whether two storage specs ask for the same volumes (sizes compared as quantities, so
/// `1Gi` and `1024Mi` agree).
fn same_storage(a: &StorageSpec, b: &StorageSpec) -> bool {
    fn same(a: &VolumeSpec, b: &VolumeSpec) -> bool {
        let size = match (quantity_bytes(&a.size), quantity_bytes(&b.size)) {
            (Some(x), Some(y)) => x == y,
            _ => a.size == b.size,
        };
        size && a.storage_class_name == b.storage_class_name
    }
    same(&a.data, &b.data)
        && match (&a.wal, &b.wal) {
            (Some(x), Some(y)) => same(x, y),
            (None, None) => true,
            _ => false,
        }
}

/// A Kubernetes quantity in bytes (`10Gi`, `500M`, `1.5Gi`, `1e9`), or `None` for a form
/// this does not read.
fn quantity_bytes(q: &str) -> Option<i128> {
    const SUFFIXES: [(&str, i128); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let q = q.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| q.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((q, 1));
    let value: f64 = number.parse().ok()?;
    value.is_finite().then(|| (value * scale as f64).round() as i128)
}

fn describe_storage(s: &StorageSpec) -> String {
    let volume = |v: &VolumeSpec| match &v.storage_class_name {
        Some(class) => format!("{} ({class})", v.size),
        None => v.size.clone(),
    };
    match &s.wal {
        Some(wal) => format!("data {}, wal {}", volume(&s.data), volume(wal)),
        None => format!("data {}", volume(&s.data)),
    }
}

/// Whether a status was reported before, so the first observation does not raise an Event.
fn previous_known(previous: &LodestoneClusterStatus) -> bool {
    previous.conditions.iter().any(|c| c.type_ == condition::AVAILABLE)
}

/// Availability from the members' own answers: a leader means a quorum of voters.
fn availability(observed: &Observed) -> (bool, Reason, String) {
    let view = &observed.members;
    if !view.formed() {
        return (false, Reason::NoMembersReachable, "no member answered".to_string());
    }
    match view.leader_name() {
        Some(leader) => {
            let voters = view.members.iter().filter(|m| !m.learner).count();
            let healthy = view
                .members
                .iter()
                .filter(|m| !m.learner && m.status.as_ref().is_some_and(|s| s.leader != 0))
                .count();
            let leader = if leader.is_empty() {
                "unnamed member".to_string()
            } else {
                leader
            };
            (
                true,
                Reason::QuorumAvailable,
                format!("{healthy} of {voters} voters healthy; leader {leader}"),
            )
        }
        None => (
            false,
            Reason::NoLeader,
            "members answer but none knows a leader: the cluster has no quorum".to_string(),
        ),
    }
}

fn fill_from_observation(status: &mut LodestoneClusterStatus, observed: &Observed) {
    if let Some(sts) = &observed.statefulset {
        let s = sts.status.as_ref();
        status.replicas = s.map(|s| s.replicas).unwrap_or_default();
        status.ready_replicas = s.and_then(|s| s.ready_replicas).unwrap_or_default();
    }
    let view = &observed.members;
    status.members = view
        .members
        .iter()
        .map(|m| {
            let role = if m.learner {
                "learner"
            } else if Some(m.id) == view.leader {
                "leader"
            } else {
                "follower"
            };
            MemberStatus {
                name: m.name.clone(),
                id: format_id(m.id),
                role: role.to_string(),
                learner: m.learner,
                healthy: m.status.as_ref().is_some_and(|s| s.leader != 0 && s.errors.is_empty()),
                applied_index: m.status.as_ref().map(|s| s.applied_index),
            }
        })
        .collect();
    status.leader = view.leader_name().filter(|n| !n.is_empty());
    status.revision = view.revision;
    status.current_version = view.version.clone();
}

/// Condition bookkeeping: `lastTransitionTime` moves only when the status flips.
struct Conditions<'a> {
    list: &'a mut Vec<Condition>,
    generation: Option<i64>,
    now: &'a Time,
}

impl Conditions<'_> {
    /// Sets a condition; returns whether its status or reason changed.
    fn set(&mut self, type_: &str, value: bool, reason: Reason, message: &str) -> bool {
        let status = if value { "True" } else { "False" };
        let reason = reason.as_str();
        let existing = self.list.iter_mut().find(|c| c.type_ == type_);
        match existing {
            Some(c) => {
                let changed = c.status != status || c.reason != reason;
                if c.status != status {
                    c.last_transition_time = self.now.clone();
                }
                c.status = status.to_string();
                c.reason = reason.to_string();
                c.message = message.to_string();
                c.observed_generation = self.generation;
                changed
            }
            None => {
                self.list.push(Condition {
                    type_: type_.to_string(),
                    status: status.to_string(),
                    reason: reason.to_string(),
                    message: message.to_string(),
                    observed_generation: self.generation,
                    last_transition_time: self.now.clone(),
                });
                self.list.sort_by_key(|c| order(&c.type_));
                true
            }
        }
    }
}

fn order(type_: &str) -> u8 {
    match type_ {
        condition::AVAILABLE => 0,
        condition::PROGRESSING => 1,
        _ => 2,
    }
}

#[cfg(test)]
mod tests;
