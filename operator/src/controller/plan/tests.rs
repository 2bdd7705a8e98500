//! Table tests of the plan: spec × observed state → desired objects, status and Events.

use k8s_openapi::api::apps::v1::StatefulSetStatus;
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::fixtures::{self, view};

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + seconds).expect("valid time"))
}

fn condition<'a>(status: &'a LodestoneClusterStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

fn assert_condition(status: &LodestoneClusterStatus, type_: &str, value: &str, reason: &str) {
    let c = condition(status, type_);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        (value, reason),
        "{type_}: {}",
        c.message
    );
}

fn reasons(plan: &Plan) -> Vec<&'static str> {
    plan.events.iter().map(|e| e.reason.as_str()).collect()
}

fn bootstrap_of(plan: &Plan) -> BootstrapConfig {
    BootstrapConfig::from_config_map(&plan.desired.as_ref().expect("desired").bootstrap).expect("bootstrap config")
}

fn replicas_of(plan: &Plan) -> Option<i32> {
    plan.desired
        .as_ref()
        .and_then(|d| d.statefulset.spec.as_ref())
        .and_then(|s| s.replicas)
}

fn sts_ready(ready: i32) -> StatefulSet {
    StatefulSet {
        status: Some(StatefulSetStatus {
            replicas: 3,
            ready_replicas: Some(ready),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn founded(cluster: &LodestoneCluster, state: ClusterState) -> BootstrapConfig {
    BootstrapConfig {
        state,
        ..BootstrapConfig::founding(&Names::of(cluster), 3, "uid-1")
    }
}

#[test]
fn a_new_cluster_founds_replicas_members() {
    let cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let plan = plan(&cluster, &Observed::default(), &at(0));
    let bootstrap = bootstrap_of(&plan);
    assert_eq!(bootstrap.state, ClusterState::New);
    assert_eq!(bootstrap.members(), 3);
    assert_eq!(bootstrap.token, format!("default-example-{}", fixtures::UID));
    assert_eq!(replicas_of(&plan), Some(3));
    assert_eq!(plan.status.phase.as_deref(), Some(phase::BOOTSTRAPPING));
    assert_condition(&plan.status, condition::PROGRESSING, "True", "Bootstrapping");
    assert_condition(&plan.status, condition::AVAILABLE, "False", "NoMembersReachable");
    assert_eq!(plan.status.observed_generation, Some(fixtures::GENERATION));
    assert_eq!(
        plan.status.selector.as_deref(),
        Some("app.kubernetes.io/instance=example,app.kubernetes.io/name=lodestone")
    );
    assert_eq!(reasons(&plan), ["Bootstrapping"]);
    assert_eq!(plan.requeue_after, REQUEUE_BUSY);
}

#[test]
fn a_formed_cluster_latches_existing_and_reports_members() {
    let cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let observed = Observed {
        bootstrap: Some(founded(&cluster, ClusterState::New)),
        statefulset: Some(sts_ready(3)),
        members: view(&["example-0", "example-1", "example-2"], Some(1), &[]),
        ..Default::default()
    };
    let plan = plan(&cluster, &observed, &at(0));
    assert_eq!(bootstrap_of(&plan).state, ClusterState::Existing);
    assert_eq!(
        bootstrap_of(&plan).initial_cluster,
        founded(&cluster, ClusterState::New).initial_cluster
    );
    let status = &plan.status;
    assert_eq!(status.cluster_id.as_deref(), Some("c1a5"));
    assert_eq!(status.phase.as_deref(), Some(phase::RUNNING));
    assert_eq!(status.leader.as_deref(), Some("example-1"));
    assert_eq!(status.ready_replicas, 3);
    assert_eq!(status.revision, Some(42));
    assert_eq!(status.current_version.as_deref(), Some("3.4.0"));
    let roles: Vec<_> = status
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.role.as_str(), m.healthy))
        .collect();
    assert_eq!(
        roles,
        [
            ("example-0", "follower", true),
            ("example-1", "leader", true),
            ("example-2", "follower", true)
        ]
    );
    assert_eq!(status.members[0].id, "a1");
    assert_eq!(status.members[0].applied_index, Some(100));
    assert_condition(status, condition::AVAILABLE, "True", "QuorumAvailable");
    assert_condition(status, condition::PROGRESSING, "False", "Reconciled");
    assert_condition(status, condition::DEGRADED, "False", "AsExpected");
    assert_eq!(reasons(&plan), ["ClusterFormed"]);
    assert_eq!(plan.requeue_after, REQUEUE_STEADY);
}

#[test]
fn existing_is_never_undone_even_when_no_member_answers() {
    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    cluster.status = Some(LodestoneClusterStatus {
        cluster_id: Some("c1a5".into()),
        ..Default::default()
    });
    let observed = Observed {
        bootstrap: Some(founded(&cluster, ClusterState::Existing)),
        statefulset: Some(sts_ready(0)),
        members: Default::default(),
        ..Default::default()
    };
    let plan = plan(&cluster, &observed, &at(0));
    assert_eq!(bootstrap_of(&plan).state, ClusterState::Existing);
    assert_eq!(plan.status.cluster_id.as_deref(), Some("c1a5"));
    assert_eq!(plan.status.phase.as_deref(), Some(phase::UNAVAILABLE));
    assert_condition(&plan.status, condition::AVAILABLE, "False", "NoMembersReachable");
    assert_condition(&plan.status, condition::PROGRESSING, "True", "MembersStarting");
}

#[test]
fn founding_members_are_fixed_once_written() {
    // The user changes replicas while the cluster is still forming: the founders stay three.
    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    cluster.spec.replicas = 5;
    let observed = Observed {
        bootstrap: Some(founded(&cluster, ClusterState::New)),
        ..Default::default()
    };
    let plan = plan(&cluster, &observed, &at(0));
    assert_eq!(bootstrap_of(&plan).members(), 3);
    assert_eq!(replicas_of(&plan), Some(3));
    assert!(reasons(&plan).is_empty());
}

#[test]
fn growing_a_formed_cluster_adds_one_learner_at_a_time() {
    use crate::crd::{OperationKind, StepKind};

    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    cluster.spec.replicas = 5;
    let observed = Observed {
        bootstrap: Some(founded(&cluster, ClusterState::Existing)),
        statefulset: Some(sts_ready(3)),
        members: view(&["example-0", "example-1", "example-2"], Some(0), &[]),
        ..Default::default()
    };
    // First, whatever volumes the new slot holds are deleted.
    let clearing = plan(&cluster, &observed, &at(0));
    let step = clearing.membership.clone().expect("a membership step");
    assert_eq!(
        step.action,
        crate::controller::membership::Action::DeleteVolumes {
            pod: "example-3".into()
        }
    );
    cluster.status = Some(LodestoneClusterStatus {
        operation: step.then.clone(),
        ..clearing.status.clone()
    });
    let plan = plan(&cluster, &observed, &at(0));
    let step = plan.membership.clone().expect("a membership step");
    assert_eq!(
        step.action,
        crate::controller::membership::Action::AddLearner {
            peer_url: "http://example-3.example-peer.default.svc:2380".into()
        }
    );
    // Recorded before it is made; the slot comes with the next step.
    let op = plan.status.operation.clone().expect("operation recorded");
    assert_eq!(
        (op.kind, op.step, op.member.as_str()),
        (OperationKind::AddMember, StepKind::AddLearner, "example-3")
    );
    assert_eq!(replicas_of(&plan), Some(3));
    assert_condition(&plan.status, condition::PROGRESSING, "True", "AddingMember");
    assert!(
        reasons(&clearing).contains(&"AddingMember"),
        "an Event when the operation starts"
    );
    assert!(reasons(&plan).is_empty(), "none for its next steps");
    assert_eq!(plan.requeue_after, REQUEUE_BUSY);

    // The next reconcile, with the learner added: its slot.
    let mut then = step.then.expect("then");
    then.member_id = Some("abc".into());
    cluster.status = Some(LodestoneClusterStatus {
        operation: Some(then),
        cluster_id: plan.status.cluster_id.clone(),
        ..Default::default()
    });
    let plan = plan_fn(&cluster, &observed);
    assert_eq!(replicas_of(&plan), Some(4));
    assert_eq!(
        plan.status.operation.as_ref().map(|o| o.step),
        Some(StepKind::StartMember)
    );
}

fn plan_fn(cluster: &LodestoneCluster, observed: &Observed) -> Plan {
    plan(cluster, observed, &at(0))
}

#[test]
fn shrinking_moves_leadership_off_the_member_first() {
    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    cluster.spec.replicas = 2;
    let observed = Observed {
        bootstrap: Some(founded(&cluster, ClusterState::Existing)),
        statefulset: Some(sts_ready(3)),
        members: view(&["example-0", "example-1", "example-2"], Some(2), &[]),
        ..Default::default()
    };
    let plan = plan(&cluster, &observed, &at(0));
    assert!(matches!(
        plan.membership.expect("a step").action,
        crate::controller::membership::Action::MoveLeader { .. }
    ));
    assert_condition(&plan.status, condition::PROGRESSING, "True", "RemovingMember");
}

#[test]
fn a_change_that_would_break_quorum_is_reported_not_made() {
    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    cluster.spec.replicas = 2;
    let observed = Observed {
        bootstrap: Some(founded(&cluster, ClusterState::Existing)),
        statefulset: Some(sts_ready(2)),
        members: view(&["example-0", "example-1", "example-2"], Some(0), &["example-1"]),
        ..Default::default()
    };
    let plan = plan(&cluster, &observed, &at(0));
    assert!(plan.membership.is_none());
    assert!(plan.status.operation.is_none());
    assert_eq!(replicas_of(&plan), Some(3));
    assert_condition(&plan.status, condition::DEGRADED, "True", "ScalingBlocked");
    assert!(condition(&plan.status, condition::DEGRADED).message.contains("quorum"));
}

#[test]
fn an_unhealthy_member_degrades_the_cluster() {
    let cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let observed = Observed {
        bootstrap: Some(founded(&cluster, ClusterState::Existing)),
        statefulset: Some(sts_ready(2)),
        members: view(&["example-0", "example-1", "example-2"], Some(0), &["example-2"]),
        ..Default::default()
    };
    let plan = plan(&cluster, &observed, &at(0));
    assert_condition(&plan.status, condition::AVAILABLE, "True", "QuorumAvailable");
    assert_condition(&plan.status, condition::DEGRADED, "True", "MembersUnhealthy");
    assert!(
        condition(&plan.status, condition::DEGRADED)
            .message
            .contains("example-2")
    );
    assert_eq!(plan.status.phase.as_deref(), Some(phase::DEGRADED));
    assert!(!plan.status.members[2].healthy);
    assert_eq!(plan.requeue_after, REQUEUE_BUSY);
}

#[test]
fn no_leader_means_unavailable() {
    let cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let observed = Observed {
        bootstrap: Some(founded(&cluster, ClusterState::Existing)),
        statefulset: Some(sts_ready(1)),
        members: view(&["example-0", "example-1", "example-2"], None, &[]),
        ..Default::default()
    };
    let plan = plan(&cluster, &observed, &at(0));
    assert_condition(&plan.status, condition::AVAILABLE, "False", "NoLeader");
    assert_eq!(plan.status.phase.as_deref(), Some(phase::UNAVAILABLE));
    assert_eq!(plan.status.leader, None);
}

#[test]
fn invalid_specs_are_reported_and_not_acted_on() {
    type Case = (&'static str, fn(&mut LodestoneCluster), &'static str);
    let cases: Vec<Case> = vec![
        ("replicas", |c| c.spec.replicas = 9, "spec.replicas is 9"),
        ("version", |c| c.spec.version = "not a tag".into(), "spec.version"),
        (
            "size",
            |c| c.spec.storage.data.size = "ten gigs".into(),
            "spec.storage.data.size",
        ),
        (
            "timing",
            |c| {
                c.spec.store = Some(crate::crd::StoreOptions {
                    heartbeat_interval: Some(300),
                    election_timeout: Some(1000),
                    ..Default::default()
                })
            },
            "at least 5 times",
        ),
        (
            "cron",
            |c| {
                c.spec.snapshots = Some(crate::crd::SnapshotScheduleSpec {
                    schedule: "every day".into(),
                    retention: 3,
                    destination: crate::crd::SnapshotDestination {
                        pvc: crate::crd::PvcDestination {
                            claim_name: "backups".into(),
                            path: None,
                        },
                    },
                })
            },
            "spec.snapshots.schedule",
        ),
    ];
    for (name, break_it, expected) in cases {
        let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
        break_it(&mut cluster);
        let first = plan(&cluster, &Observed::default(), &at(0));
        assert!(first.desired.is_none(), "{name}: must not act on an invalid spec");
        assert_eq!(first.status.phase.as_deref(), Some(phase::INVALID), "{name}");
        assert_condition(&first.status, condition::DEGRADED, "True", "InvalidSpec");
        let message = &condition(&first.status, condition::DEGRADED).message;
        assert!(message.contains(expected), "{name}: {message}");
        assert_eq!(reasons(&first), ["InvalidSpec"], "{name}");
        assert!(first.events[0].warning);

        // The same problem seen again raises no second Event.
        cluster.status = Some(first.status.clone());
        let again = plan(&cluster, &Observed::default(), &at(30));
        assert!(again.events.is_empty(), "{name}: {:?}", again.events);
    }
}

#[test]
fn every_shipped_sample_is_valid() {
    for sample in [
        "lodestonecluster-3-members.yaml",
        "lodestonecluster-separate-wal.yaml",
        "lodestonecluster-scheduled-snapshots.yaml",
    ] {
        let cluster = fixtures::sample(sample);
        let plan = plan(&cluster, &Observed::default(), &at(0));
        assert!(plan.desired.is_some(), "{sample}: {:?}", plan.status.conditions);
    }
}

#[test]
fn a_cluster_from_a_snapshot_restores_each_founder_in_an_init_container() {
    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    cluster.spec.bootstrap = Some(crate::crd::BootstrapSpec {
        from_snapshot: Some(crate::crd::SnapshotSource {
            pvc: crate::crd::PvcDestination {
                claim_name: "backups".into(),
                path: Some("daily/".into()),
            },
            file: "snap.db".into(),
        }),
    });
    let planned = plan(&cluster, &Observed::default(), &at(0));
    let desired = planned.desired.expect("acted on");
    let pod = desired.statefulset.spec.expect("spec").template.spec.expect("pod");
    let init = &pod.init_containers.as_ref().expect("an init container")[0];
    assert_eq!(
        init.args.as_deref().unwrap_or_default(),
        [
            "snapshot",
            "restore",
            "/var/lib/lodestone/restore/daily/snap.db",
            "--only-if-new"
        ]
    );
    // The member's own environment and bootstrap ConfigMap: it restores as the member founds.
    assert_eq!(init.env, pod.containers[0].env);
    assert_eq!(init.env_from, pod.containers[0].env_from);
    let claim = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "restore")
        .and_then(|v| v.persistent_volume_claim.clone())
        .expect("the snapshot's claim");
    assert_eq!((claim.claim_name.as_str(), claim.read_only), ("backups", Some(true)));
}

#[test]
fn transition_times_move_only_when_a_condition_flips() {
    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let healthy = Observed {
        bootstrap: Some(founded(&cluster, ClusterState::Existing)),
        statefulset: Some(sts_ready(3)),
        members: view(&["example-0", "example-1", "example-2"], Some(1), &[]),
        ..Default::default()
    };
    let first = plan(&cluster, &healthy, &at(0));
    cluster.status = Some(first.status.clone());
    let same = plan(&cluster, &healthy, &at(60));
    assert_eq!(
        same.status, first.status,
        "nothing changed, so the status must be identical"
    );
    assert!(same.events.is_empty());

    let leaderless = Observed {
        members: view(&["example-0", "example-1", "example-2"], None, &[]),
        ..healthy.clone()
    };
    let flipped = plan(&cluster, &leaderless, &at(120));
    let available = condition(&flipped.status, condition::AVAILABLE);
    assert_eq!(available.last_transition_time, at(120));
    assert_eq!(
        condition(&flipped.status, condition::PROGRESSING).last_transition_time,
        at(0)
    );
    // Without a leader no member counts as healthy either.
    assert_eq!(reasons(&flipped), ["NoLeader", "MembersUnhealthy"]);
    assert!(flipped.events.iter().all(|e| e.warning));
}

#[test]
fn a_leader_change_is_an_event() {
    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let members = ["example-0", "example-1", "example-2"];
    let bootstrap = founded(&cluster, ClusterState::Existing);
    let observed = |leader| Observed {
        bootstrap: Some(bootstrap.clone()),
        statefulset: Some(sts_ready(3)),
        members: view(&members, Some(leader), &[]),
        ..Default::default()
    };
    let first = plan(&cluster, &observed(0), &at(0));
    cluster.status = Some(first.status);
    let moved = plan(&cluster, &observed(2), &at(10));
    assert_eq!(reasons(&moved), ["LeaderChanged"]);
    assert_eq!(moved.events[0].note, "leader moved from example-0 to example-2");
    assert_eq!(moved.status.leader.as_deref(), Some("example-2"));
}

/// The StatefulSet the operator made for `cluster`, as the API server returns it.
fn sts_for(cluster: &LodestoneCluster, ready: i32) -> StatefulSet {
    StatefulSet {
        status: sts_ready(ready).status,
        ..build::statefulset(cluster, &Names::of(cluster), 3)
    }
}

fn claim_sizes(plan: &Plan) -> Vec<(String, String)> {
    let sts = &plan.desired.as_ref().expect("desired").statefulset;
    sts.spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let size = c
                .spec
                .and_then(|s| s.resources)
                .and_then(|r| r.requests)
                .expect("requests")["storage"]
                .0
                .clone();
            (c.metadata.name.unwrap_or_default(), size)
        })
        .collect()
}

#[test]
fn a_storage_change_the_statefulset_cannot_take_is_reported_not_applied() {
    let running = fixtures::sample("lodestonecluster-3-members.yaml");
    let mut cluster = running.clone();
    cluster.status = Some(LodestoneClusterStatus {
        cluster_id: Some("c1a5".into()),
        ..Default::default()
    });
    let before = cluster.spec.storage.data.size.clone();
    let observed = Observed {
        bootstrap: Some(founded(&cluster, ClusterState::Existing)),
        statefulset: Some(sts_for(&running, 3)),
        members: view(&["example-0", "example-1", "example-2"], Some(1), &[]),
        ..Default::default()
    };
    // Unchanged (the same size written another way included): nothing to report.
    let steady = plan(&cluster, &observed, &at(0));
    assert_condition(&steady.status, condition::DEGRADED, "False", "AsExpected");
    assert_eq!(quantity_bytes("1Gi"), quantity_bytes("1024Mi"));
    assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
    assert_eq!(quantity_bytes("500M"), Some(500_000_000));
    assert_eq!(quantity_bytes("lots"), None);

    // A larger data volume: the StatefulSet keeps its claim templates (so the apply does
    // not fail), and the cluster reports why.
    cluster.spec.storage.data.size = "500Gi".into();
    cluster.status = steady.status.clone().into();
    let grown = plan(&cluster, &observed, &at(30));
    assert_eq!(claim_sizes(&grown), [("data".to_string(), before.clone())]);
    assert_condition(&grown.status, condition::DEGRADED, "True", "StorageChangeNotApplied");
    let message = &condition(&grown.status, condition::DEGRADED).message;
    assert!(
        message.contains("data 500Gi") && message.contains(&format!("data {before}")),
        "{message}"
    );
    assert_eq!(grown.status.phase.as_deref(), Some(phase::DEGRADED));
    assert_eq!(reasons(&grown), ["StorageChangeNotApplied"]);
    // Everything else still follows the spec.
    assert_eq!(replicas_of(&grown), Some(3));
}
