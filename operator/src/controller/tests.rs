//! The controller against a stand-in API server: the requests a reconcile sends, in order,
//! and what they carry, for create, update, invalid spec, deletion and API failures.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::StatusCode;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::*;
use crate::fixtures::{self, ApiServerVerifier, FakeProbe};

const NS: &str = "/api/v1/namespaces/default";
const APPS: &str = "/apis/apps/v1/namespaces/default";
const POLICY: &str = "/apis/policy/v1/namespaces/default";
const LSC: &str = "/apis/lodestone.dev/v1alpha1/namespaces/default/lodestoneclusters";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

fn spawn(cluster: LodestoneCluster, ctx: Arc<Context>) -> tokio::task::JoinHandle<Result<Action, Error>> {
    tokio::spawn(reconcile(Arc::new(cluster), ctx))
}

/// Answers the observe step's two reads as "not found": a cluster never reconciled before.
async fn expect_nothing_observed(api: &mut ApiServerVerifier) {
    api.expect("GET", &format!("{NS}/configmaps/example-bootstrap"))
        .await
        .not_found();
    api.expect("GET", &format!("{APPS}/statefulsets/example"))
        .await
        .not_found();
}

/// Answers the six server-side applies in order and returns their bodies by kind.
async fn expect_applies(api: &mut ApiServerVerifier) -> Vec<Value> {
    let mut bodies = Vec::new();
    for (prefix, resource) in [
        (NS, "serviceaccounts/example"),
        (NS, "services/example-peer"),
        (NS, "services/example"),
        (NS, "configmaps/example-bootstrap"),
        (APPS, "statefulsets/example"),
        (POLICY, "poddisruptionbudgets/example"),
    ] {
        let seen = api.expect("PATCH", &format!("{prefix}/{resource}?")).await;
        assert!(seen.path.contains("fieldManager=lodestone-operator"), "{}", seen.path);
        assert!(seen.path.contains("force=true"), "{}", seen.path);
        bodies.push(seen.body.clone());
        seen.echo();
    }
    bodies
}

/// Answers the snapshot step's list of LodestoneSnapshots: none.
async fn expect_no_snapshots(api: &mut ApiServerVerifier) {
    api.expect(
        "GET",
        "/apis/lodestone.dev/v1alpha1/namespaces/default/lodestonesnapshots?",
    )
    .await
    .reply(
        StatusCode::OK,
        json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "LodestoneSnapshotList", "metadata": {}, "items": []}),
    );
}

/// Answers the observe step's list of member pods with `items`.
async fn expect_pods(api: &mut ApiServerVerifier, items: Value) {
    api.expect("GET", &format!("{NS}/pods?")).await.reply(
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}),
    );
}

fn with_status(cluster: &LodestoneCluster, patch: &Value) -> Value {
    let mut object = serde_json::to_value(cluster).expect("json");
    object["status"] = patch["status"].clone();
    object
}

#[tokio::test]
async fn create_applies_every_owned_object_and_reports_bootstrapping() {
    let probe = Arc::new(FakeProbe::default());
    let (ctx, mut api) = fixtures::context(probe.clone());
    let cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let task = spawn(cluster.clone(), ctx);

    expect_nothing_observed(&mut api).await;
    let bodies = expect_applies(&mut api).await;
    let kinds: Vec<_> = bodies.iter().map(|b| b["kind"].as_str().unwrap_or_default()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Service",
            "Service",
            "ConfigMap",
            "StatefulSet",
            "PodDisruptionBudget"
        ]
    );
    for body in &bodies {
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], fixtures::UID);
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "lodestone-operator"
        );
    }
    assert_eq!(bodies[3]["data"]["LODESTONE_INITIAL_CLUSTER_STATE"], "new");
    assert_eq!(bodies[4]["spec"]["replicas"], 3);
    assert_eq!(bodies[4]["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(bodies[4]["spec"]["updateStrategy"]["type"], "OnDelete");

    let status = api.expect("PATCH", &format!("{LSC}/example/status")).await;
    assert_eq!(status.body["status"]["phase"], "Bootstrapping");
    assert_eq!(status.body["status"]["observedGeneration"], fixtures::GENERATION);
    let reply = with_status(&cluster, &status.body);
    status.reply(StatusCode::OK, reply);

    let event = api.expect("POST", EVENTS).await;
    assert_eq!(event.body["reason"], "Bootstrapping");
    assert_eq!(event.body["regarding"]["name"], "example");
    event.echo();

    let action = task.await.expect("task").expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(10)));
    assert_eq!(
        probe.calls.load(Ordering::SeqCst),
        0,
        "no pods exist yet, so no member is asked"
    );
}

/// With `issuerRef`, the Certificates go first, so cert-manager issues the Secrets the
/// StatefulSet's pods mount while the rest is applied.
#[tokio::test]
async fn cert_manager_certificates_are_applied_before_the_members() {
    let probe = Arc::new(FakeProbe::default());
    let (ctx, mut api) = fixtures::context(probe);
    let cluster = fixtures::sample("lodestonecluster-cert-manager.yaml");
    let task = spawn(cluster.clone(), ctx);

    for resource in ["configmaps/example-cm-bootstrap"] {
        api.expect("GET", &format!("{NS}/{resource}")).await.not_found();
    }
    api.expect("GET", &format!("{APPS}/statefulsets/example-cm"))
        .await
        .not_found();
    for secret in ["example-cm-client", "example-cm-peer"] {
        let seen = api
            .expect(
                "PATCH",
                &format!("/apis/cert-manager.io/v1/namespaces/default/certificates/{secret}?"),
            )
            .await;
        assert!(seen.path.contains("fieldManager=lodestone-operator"), "{}", seen.path);
        assert_eq!(seen.body["kind"], "Certificate");
        assert_eq!(seen.body["apiVersion"], "cert-manager.io/v1");
        assert_eq!(seen.body["spec"]["secretName"], secret);
        assert_eq!(seen.body["metadata"]["ownerReferences"][0]["uid"], fixtures::UID);
        seen.echo();
    }
    for (prefix, resource) in [
        (NS, "serviceaccounts/example-cm"),
        (NS, "services/example-cm-peer"),
        (NS, "services/example-cm"),
        (NS, "configmaps/example-cm-bootstrap"),
        (APPS, "statefulsets/example-cm"),
        (POLICY, "poddisruptionbudgets/example-cm"),
    ] {
        api.expect("PATCH", &format!("{prefix}/{resource}?")).await.echo();
    }
    let status = api
        .expect(
            "PATCH",
            "/apis/lodestone.dev/v1alpha1/namespaces/default/lodestoneclusters/example-cm/status",
        )
        .await;
    let reply = with_status(&cluster, &status.body);
    status.reply(StatusCode::OK, reply);
    api.expect("POST", EVENTS).await.echo();
    task.await.expect("task").expect("reconcile succeeds");
}

#[tokio::test]
async fn formed_cluster_latches_existing_and_records_the_cluster_id() {
    let probe = Arc::new(FakeProbe {
        view: fixtures::view(&["example-0", "example-1", "example-2"], Some(0), &[]),
        ..FakeProbe::default()
    });
    let (ctx, mut api) = fixtures::context(probe.clone());
    let cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let names = crate::names::Names::of(&cluster);
    let founding = build::BootstrapConfig::founding(&names, 3, fixtures::UID);
    let config_map = build::bootstrap_config_map(&cluster, &names, &founding);
    let statefulset = build::statefulset(&cluster, &names, 3);
    let task = spawn(cluster.clone(), ctx);

    api.expect("GET", &format!("{NS}/configmaps/example-bootstrap"))
        .await
        .reply(StatusCode::OK, serde_json::to_value(&config_map).expect("json"));
    api.expect("GET", &format!("{APPS}/statefulsets/example"))
        .await
        .reply(StatusCode::OK, serde_json::to_value(&statefulset).expect("json"));
    expect_pods(&mut api, json!([])).await;
    let bodies = expect_applies(&mut api).await;
    expect_no_snapshots(&mut api).await;
    assert_eq!(bodies[3]["data"]["LODESTONE_INITIAL_CLUSTER_STATE"], "existing");
    assert_eq!(bodies[3]["data"]["LODESTONE_INITIAL_CLUSTER_TOKEN"], founding.token);

    let status = api.expect("PATCH", &format!("{LSC}/example/status")).await;
    assert_eq!(status.body["status"]["clusterId"], "c1a5");
    assert_eq!(status.body["status"]["leader"], "example-0");
    assert_eq!(status.body["status"]["members"].as_array().map(Vec::len), Some(3));
    let reply = with_status(&cluster, &status.body);
    status.reply(StatusCode::OK, reply);
    let event = api.expect("POST", EVENTS).await;
    assert_eq!(event.body["reason"], "ClusterFormed");
    event.echo();

    task.await.expect("task").expect("reconcile succeeds");
    assert_eq!(probe.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unchanged_status_is_not_rewritten() {
    let probe = Arc::new(FakeProbe {
        view: fixtures::view(&["example-0", "example-1", "example-2"], Some(0), &[]),
        ..FakeProbe::default()
    });
    // The status a previous reconcile wrote.
    let (cluster, config_map, statefulset) = steady_cluster(&probe);
    let (ctx, mut api) = fixtures::context(probe);
    let task = spawn(cluster, ctx);
    expect_steady_observe_and_apply(&mut api, &config_map, &statefulset).await;
    expect_no_snapshots(&mut api).await;
    let action = task.await.expect("task").expect("reconcile succeeds");
    api.expect_silence().await;
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(60)));
}

#[tokio::test]
async fn invalid_spec_sets_degraded_and_touches_nothing_else() {
    let (ctx, mut api) = fixtures::context(Arc::new(FakeProbe::default()));
    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    cluster.spec.replicas = 9;
    let task = spawn(cluster.clone(), ctx);

    expect_nothing_observed(&mut api).await;
    let status = api.expect("PATCH", &format!("{LSC}/example/status")).await;
    assert_eq!(status.body["status"]["phase"], "Invalid");
    let degraded = status.body["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Degraded").cloned())
        .expect("Degraded condition");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.replicas is 9")
    );
    let reply = with_status(&cluster, &status.body);
    status.reply(StatusCode::OK, reply);
    let event = api.expect("POST", EVENTS).await;
    assert_eq!(event.body["reason"], "InvalidSpec");
    assert_eq!(event.body["type"], "Warning");
    event.echo();

    let action = task
        .await
        .expect("task")
        .expect("an invalid spec is a status, not an error");
    assert_eq!(action, Action::await_change());
    api.expect_silence().await;
}

#[tokio::test]
async fn a_deleted_cluster_is_left_to_the_garbage_collector() {
    let (ctx, mut api) = fixtures::context(Arc::new(FakeProbe::default()));
    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    cluster.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    let action = spawn(cluster, ctx).await.expect("task").expect("reconcile succeeds");
    assert_eq!(action, Action::await_change());
    api.expect_silence().await;
}

#[tokio::test]
async fn api_failures_are_errors_retried_with_growing_backoff() {
    let (ctx, mut api) = fixtures::context(Arc::new(FakeProbe::default()));
    let cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let task = spawn(cluster.clone(), ctx.clone());
    expect_nothing_observed(&mut api).await;
    api.expect("PATCH", &format!("{NS}/serviceaccounts/example?"))
        .await
        .reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500, "message": "etcd is sad"}));
    let err = task.await.expect("task").expect_err("the apply failed");
    assert!(
        matches!(&err, Error::Apply { kind, name, .. } if kind == "ServiceAccount" && name == "example"),
        "{err}"
    );
    assert_eq!(err.to_string(), "failed to apply ServiceAccount example");

    let cluster = Arc::new(cluster);
    let first = error_policy(cluster.clone(), &err, ctx.clone());
    let second = error_policy(cluster.clone(), &err, ctx.clone());
    let third = error_policy(cluster, &err, ctx);
    assert_eq!(first, Action::requeue(std::time::Duration::from_secs(1)));
    assert_eq!(second, Action::requeue(std::time::Duration::from_secs(2)));
    assert_eq!(third, Action::requeue(std::time::Duration::from_secs(4)));
    assert_eq!(backoff(30), std::time::Duration::from_secs(300));
}

/// A cluster asked to grow: each step is recorded in status before it is made. First the new
/// slot's leftover volumes are deleted; the next reconcile makes MemberAdd, applies the objects
/// (no new slot yet) and records the follow-up step with the new member's id.
#[tokio::test]
async fn growing_records_each_step_before_making_it() {
    let probe = Arc::new(FakeProbe {
        view: fixtures::view(&["example-0", "example-1", "example-2"], Some(0), &[]),
        ..FakeProbe::default()
    });
    let members = Arc::new(fixtures::FakeMembers::default());
    let (ctx, mut api) = fixtures::context_with(probe, members.clone());
    let ctx2 = ctx.clone();
    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    cluster.spec.replicas = 4;
    cluster.status = Some(crate::crd::LodestoneClusterStatus {
        cluster_id: Some("c1a5".into()),
        ..Default::default()
    });
    let names = crate::names::Names::of(&cluster);
    let mut founding = build::BootstrapConfig::founding(&names, 3, fixtures::UID);
    founding.state = build::ClusterState::Existing;
    let config_map = build::bootstrap_config_map(&cluster, &names, &founding);
    let statefulset = build::statefulset(&cluster, &names, 3);

    // First reconcile: the slot is cleared.
    let task = spawn(cluster.clone(), ctx);
    expect_observed(&mut api, &config_map, &statefulset).await;
    let record = api.expect("PATCH", &format!("{LSC}/example/status")).await;
    assert_eq!(
        record.body["status"]["operation"],
        json!({"kind": "AddMember", "step": "ClearVolumes", "member": "example-3", "ordinal": 3})
    );
    let reply = with_status(&cluster, &record.body);
    record.reply(StatusCode::OK, reply);
    for claim in ["data-example-3", "wal-example-3"] {
        api.expect("DELETE", &format!("{NS}/persistentvolumeclaims/{claim}"))
            .await
            .not_found();
    }
    expect_applies(&mut api).await;
    expect_no_snapshots(&mut api).await;
    let status = api.expect("PATCH", &format!("{LSC}/example/status")).await;
    assert_eq!(
        status.body["status"]["operation"],
        json!({"kind": "AddMember", "step": "AddLearner", "member": "example-3", "ordinal": 3})
    );
    let reply = with_status(&cluster, &status.body);
    status.reply(StatusCode::OK, reply.clone());
    let event = api.expect("POST", EVENTS).await;
    assert_eq!(event.body["reason"], "AddingMember");
    event.echo();
    task.await.expect("task").expect("reconcile succeeds");
    assert!(members.calls.lock().unwrap().is_empty(), "no member call yet");

    // Second reconcile, from the recorded AddLearner: MemberAdd, then the follow-up.
    let cluster: LodestoneCluster = serde_json::from_value(reply).expect("cluster");
    let task = spawn(cluster.clone(), ctx2);
    expect_observed(&mut api, &config_map, &statefulset).await;
    let bodies = expect_applies(&mut api).await;
    expect_no_snapshots(&mut api).await;
    assert_eq!(
        members.calls.lock().unwrap().as_slice(),
        [
            "add_learner http://example-3.example-peer.default.svc:2380 via http://example-0:2379,http://example-1:2379,http://example-2:2379"
        ]
    );
    assert_eq!(bodies[4]["spec"]["replicas"], 3, "the slot comes with the next step");
    let status = api.expect("PATCH", &format!("{LSC}/example/status")).await;
    assert_eq!(
        status.body["status"]["operation"],
        json!({"kind": "AddMember", "step": "StartMember", "member": "example-3", "ordinal": 3, "memberId": "abc"})
    );
    let reply = with_status(&cluster, &status.body);
    status.reply(StatusCode::OK, reply);
    let action = task.await.expect("task").expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(10)));
}

/// Answers the observe step's reads with a formed cluster's ConfigMap and StatefulSet, and no pods.
async fn expect_observed(
    api: &mut ApiServerVerifier,
    config_map: &k8s_openapi::api::core::v1::ConfigMap,
    statefulset: &StatefulSet,
) {
    api.expect("GET", &format!("{NS}/configmaps/example-bootstrap"))
        .await
        .reply(StatusCode::OK, serde_json::to_value(config_map).expect("json"));
    api.expect("GET", &format!("{APPS}/statefulsets/example"))
        .await
        .reply(StatusCode::OK, serde_json::to_value(statefulset).expect("json"));
    expect_pods(api, json!([])).await;
}

/// The last step of a removal deletes the removed member's volumes, explicitly (a
/// StatefulSet never does), and clears the operation.
#[tokio::test]
async fn a_removal_ends_by_deleting_the_members_volumes() {
    let probe = Arc::new(FakeProbe {
        view: fixtures::view(&["example-0", "example-1"], Some(0), &[]),
        ..FakeProbe::default()
    });
    let members = Arc::new(fixtures::FakeMembers::default());
    let (ctx, mut api) = fixtures::context_with(probe, members.clone());
    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    cluster.spec.replicas = 2;
    cluster.status = Some(crate::crd::LodestoneClusterStatus {
        cluster_id: Some("c1a5".into()),
        operation: Some(crate::crd::MembershipOperation {
            kind: crate::crd::OperationKind::RemoveMember,
            step: crate::crd::StepKind::Shrink,
            member: "example-2".into(),
            ordinal: 2,
            member_id: Some("a3".into()),
        }),
        ..Default::default()
    });
    let names = crate::names::Names::of(&cluster);
    let mut founding = build::BootstrapConfig::founding(&names, 3, fixtures::UID);
    founding.state = build::ClusterState::Existing;
    let config_map = build::bootstrap_config_map(&cluster, &names, &founding);
    let statefulset = build::statefulset(&cluster, &names, 2);
    let task = spawn(cluster.clone(), ctx);

    api.expect("GET", &format!("{NS}/configmaps/example-bootstrap"))
        .await
        .reply(StatusCode::OK, serde_json::to_value(&config_map).expect("json"));
    api.expect("GET", &format!("{APPS}/statefulsets/example"))
        .await
        .reply(StatusCode::OK, serde_json::to_value(&statefulset).expect("json"));
    expect_pods(&mut api, json!([])).await;
    let record = api.expect("PATCH", &format!("{LSC}/example/status")).await;
    assert_eq!(record.body["status"]["operation"]["step"], "DeleteVolumes");
    let reply = with_status(&cluster, &record.body);
    record.reply(StatusCode::OK, reply);
    api.expect("DELETE", &format!("{NS}/persistentvolumeclaims/data-example-2"))
        .await
        .reply(
            StatusCode::OK,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
        );
    api.expect("DELETE", &format!("{NS}/persistentvolumeclaims/wal-example-2"))
        .await
        .not_found();
    let bodies = expect_applies(&mut api).await;
    expect_no_snapshots(&mut api).await;
    assert_eq!(bodies[4]["spec"]["replicas"], 2);
    assert_eq!(bodies[5]["spec"]["minAvailable"], 2, "the quorum of two voters");
    let status = api.expect("PATCH", &format!("{LSC}/example/status")).await;
    assert_eq!(status.body["status"]["operation"], Value::Null, "cleared");
    let reply = with_status(&cluster, &status.body);
    status.reply(StatusCode::OK, reply);
    let event = api.expect("POST", EVENTS).await;
    assert_eq!(event.body["reason"], "RemovingMember");
    event.echo();
    let event = api.expect("POST", EVENTS).await;
    assert_eq!(event.body["reason"], "MemberRemoved");
    assert_eq!(event.body["note"], "example-2 was removed and its volumes deleted");
    event.echo();
    task.await.expect("task").expect("reconcile succeeds");
    assert!(members.calls.lock().unwrap().is_empty(), "no member call in this step");
}

/// A changed pod template reaches the members one pod at a time, followers first: with
/// every member healthy, the reconcile deletes one outdated follower's pod after applying,
/// and reports the outdated members.
#[tokio::test]
async fn a_changed_template_restarts_one_follower_at_a_time() {
    let probe = Arc::new(FakeProbe {
        view: fixtures::view(&["example-0", "example-1", "example-2"], Some(2), &[]),
        ..FakeProbe::default()
    });
    let (ctx, mut api) = fixtures::context(probe);
    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    cluster.status = Some(crate::crd::LodestoneClusterStatus {
        cluster_id: Some("c1a5".into()),
        ..Default::default()
    });
    let names = crate::names::Names::of(&cluster);
    let mut founding = build::BootstrapConfig::founding(&names, 3, fixtures::UID);
    founding.state = build::ClusterState::Existing;
    let config_map = build::bootstrap_config_map(&cluster, &names, &founding);
    let mut statefulset = serde_json::to_value(build::statefulset(&cluster, &names, 3)).expect("json");
    statefulset["status"] = json!({"replicas": 3, "readyReplicas": 3, "updateRevision": "example-new"});
    let pod = |i: usize, rev: &str| {
        json!({
            "metadata": {"name": format!("example-{i}"), "labels": {"controller-revision-hash": rev}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        })
    };
    let task = spawn(cluster.clone(), ctx);

    api.expect("GET", &format!("{NS}/configmaps/example-bootstrap"))
        .await
        .reply(StatusCode::OK, serde_json::to_value(&config_map).expect("json"));
    api.expect("GET", &format!("{APPS}/statefulsets/example"))
        .await
        .reply(StatusCode::OK, statefulset);
    expect_pods(
        &mut api,
        json!([pod(0, "example-old"), pod(1, "example-new"), pod(2, "example-old")]),
    )
    .await;
    expect_applies(&mut api).await;
    // example-2 leads: the outdated follower goes first.
    api.expect("DELETE", &format!("{NS}/pods/example-0"))
        .await
        .reply(StatusCode::OK, pod(0, "example-old"));
    expect_no_snapshots(&mut api).await;
    let status = api.expect("PATCH", &format!("{LSC}/example/status")).await;
    assert_eq!(
        status.body["status"]["outdatedMembers"],
        json!(["example-0", "example-2"])
    );
    let progressing = status.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .cloned()
        .unwrap();
    assert_eq!(progressing["reason"], "RollingUpdate");
    let reply = with_status(&cluster, &status.body);
    status.reply(StatusCode::OK, reply);
    let event = api.expect("POST", EVENTS).await;
    assert_eq!(event.body["reason"], "RollingUpdate");
    assert!(event.body["note"].as_str().unwrap().contains("example-0"));
    event.echo();
    let action = task.await.expect("task").expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(10)));
}

const SNAPSHOTS: &str = "/apis/lodestone.dev/v1alpha1/namespaces/default/lodestonesnapshots";
const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";

/// A formed three-member cluster whose status a previous reconcile wrote, and the answers to
/// the observe step's reads for it.
fn steady_cluster(probe: &FakeProbe) -> (LodestoneCluster, Value, Value) {
    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let names = crate::names::Names::of(&cluster);
    let existing = build::BootstrapConfig {
        state: build::ClusterState::Existing,
        ..build::BootstrapConfig::founding(&names, 3, fixtures::UID)
    };
    let mut statefulset = build::statefulset(&cluster, &names, 3);
    statefulset.status = Some(k8s_openapi::api::apps::v1::StatefulSetStatus {
        replicas: 3,
        ready_replicas: Some(3),
        ..Default::default()
    });
    let observed = observe::Observed {
        bootstrap: Some(existing.clone()),
        statefulset: Some(statefulset.clone()),
        members: probe.view.clone(),
        ..Default::default()
    };
    let previous = plan::plan(&cluster, &observed, &Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    cluster.status = Some(previous.status);
    let config_map = serde_json::to_value(build::bootstrap_config_map(&cluster, &names, &existing)).expect("json");
    let statefulset = serde_json::to_value(&statefulset).expect("json");
    (cluster, config_map, statefulset)
}

async fn expect_steady_observe_and_apply(api: &mut ApiServerVerifier, config_map: &Value, statefulset: &Value) {
    api.expect("GET", &format!("{NS}/configmaps/example-bootstrap"))
        .await
        .reply(StatusCode::OK, config_map.clone());
    api.expect("GET", &format!("{APPS}/statefulsets/example"))
        .await
        .reply(StatusCode::OK, statefulset.clone());
    expect_pods(api, json!([])).await;
    expect_applies(api).await;
}

fn snapshot_object(status: Value) -> Value {
    json!({
        "apiVersion": "lodestone.dev/v1alpha1",
        "kind": "LodestoneSnapshot",
        "metadata": {"name": "nightly", "namespace": "default", "uid": "5a5a"},
        "spec": {"cluster": "example", "destination": {"pvc": {"claimName": "backups"}}},
        "status": status,
    })
}

fn snapshot_list(items: Value) -> Value {
    json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "LodestoneSnapshotList", "metadata": {}, "items": items})
}

#[tokio::test]
async fn a_new_snapshot_is_saved_by_a_job_from_the_leader_first() {
    let probe = Arc::new(FakeProbe {
        view: fixtures::view(&["example-0", "example-1", "example-2"], Some(1), &[]),
        ..FakeProbe::default()
    });
    let (cluster, config_map, statefulset) = steady_cluster(&probe);
    let (ctx, mut api) = fixtures::context(probe);
    let task = spawn(cluster, ctx);
    expect_steady_observe_and_apply(&mut api, &config_map, &statefulset).await;

    api.expect("GET", &format!("{SNAPSHOTS}?"))
        .await
        .reply(StatusCode::OK, snapshot_list(json!([snapshot_object(Value::Null)])));
    api.expect("GET", &format!("{JOBS}/nightly-save")).await.not_found();
    let job = api.expect("POST", &format!("{JOBS}?")).await;
    assert_eq!(job.body["metadata"]["name"], "nightly-save");
    assert_eq!(job.body["metadata"]["ownerReferences"][0]["kind"], "LodestoneSnapshot");
    assert_eq!(job.body["metadata"]["ownerReferences"][0]["name"], "nightly");
    let container = &job.body["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["args"],
        json!([
            "snapshot",
            "save",
            "/var/lib/lodestone/snapshots/nightly.db",
            "--endpoints",
            "http://example-1:2379,http://example-0:2379,http://example-2:2379",
            "--report",
            "/dev/termination-log"
        ])
    );
    assert_eq!(
        job.body["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "backups"
    );
    job.echo();
    let status = api.expect("PATCH", &format!("{SNAPSHOTS}/nightly/status")).await;
    assert_eq!(status.body["status"]["phase"], "Running");
    assert!(status.body["status"]["startTime"].is_string());
    // A merge patch: a message left from a wait is cleared by name.
    assert_eq!(status.body["status"]["message"], Value::Null);
    assert!(status.body["status"].as_object().unwrap().contains_key("message"));
    let reply = snapshot_object(status.body["status"].clone());
    status.reply(StatusCode::OK, reply);

    let action = task.await.expect("task").expect("reconcile succeeds");
    api.expect_silence().await;
    // A save runs: look again soon rather than at the steady pace.
    assert_eq!(action, Action::requeue(backup::WAKE_WHILE_SAVING));
}

#[tokio::test]
async fn a_finished_job_completes_the_snapshot_from_its_pods_report() {
    let probe = Arc::new(FakeProbe {
        view: fixtures::view(&["example-0", "example-1", "example-2"], Some(0), &[]),
        ..FakeProbe::default()
    });
    let (cluster, config_map, statefulset) = steady_cluster(&probe);
    let (ctx, mut api) = fixtures::context(probe);
    let task = spawn(cluster.clone(), ctx);
    expect_steady_observe_and_apply(&mut api, &config_map, &statefulset).await;

    let running = json!({"phase": "Running", "startTime": "2026-12-03T10:00:00Z"});
    api.expect("GET", &format!("{SNAPSHOTS}?"))
        .await
        .reply(StatusCode::OK, snapshot_list(json!([snapshot_object(running)])));
    api.expect("GET", &format!("{JOBS}/nightly-save")).await.reply(
        StatusCode::OK,
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "nightly-save", "namespace": "default"},
            "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
        }),
    );
    let sha = "0f".repeat(32);
    let report = format!(
        r#"{{"file":"/var/lib/lodestone/snapshots/nightly.db","size":8192,"sha256":"{sha}","revision":42,"pruned":[]}}"#
    );
    let pods = api.expect("GET", &format!("{NS}/pods?")).await;
    assert!(
        pods.path
            .contains("labelSelector=batch.kubernetes.io%2Fjob-name%3Dnightly-save"),
        "{}",
        pods.path
    );
    pods.reply(
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [{
            "metadata": {"name": "nightly-save-x7k2p", "namespace": "default"},
            "status": {"containerStatuses": [{
                "name": "save", "image": "lodestone", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "message": report}},
            }]},
        }]}),
    );
    let status = api.expect("PATCH", &format!("{SNAPSHOTS}/nightly/status")).await;
    assert_eq!(status.body["status"]["phase"], "Succeeded");
    assert_eq!(status.body["status"]["size"], 8192);
    assert_eq!(status.body["status"]["sha256"], sha.as_str());
    assert_eq!(status.body["status"]["revision"], 42);
    assert_eq!(status.body["status"]["startTime"], "2026-12-03T10:00:00Z");
    let reply = snapshot_object(status.body["status"].clone());
    status.reply(StatusCode::OK, reply);
    // The cluster's status names its newest snapshot.
    let cluster_status = api.expect("PATCH", &format!("{LSC}/example/status")).await;
    assert_eq!(cluster_status.body["status"]["lastSnapshot"]["name"], "nightly");
    assert_eq!(cluster_status.body["status"]["lastSnapshot"]["revision"], 42);
    let reply = with_status(&cluster, &cluster_status.body);
    cluster_status.reply(StatusCode::OK, reply);
    let event = api.expect("POST", EVENTS).await;
    assert_eq!(event.body["reason"], "SnapshotSucceeded");
    event.echo();

    task.await.expect("task").expect("reconcile succeeds");
    api.expect_silence().await;
}

#[tokio::test]
async fn the_schedule_creates_its_snapshot_and_retention_deletes_the_oldest() {
    let probe = Arc::new(FakeProbe {
        view: fixtures::view(&["example-0", "example-1", "example-2"], Some(0), &[]),
        ..FakeProbe::default()
    });
    let (mut cluster, config_map, statefulset) = steady_cluster(&probe);
    // Yearly (so the next tick is never seconds away, whatever the clock says), two kept; the
    // cluster is older than every tick below.
    cluster.metadata.creation_timestamp = Some(Time("2020-01-01T00:00:00Z".parse().expect("time")));
    cluster.spec.snapshots = Some(crate::crd::SnapshotScheduleSpec {
        schedule: "0 0 1 1 *".into(),
        retention: 2,
        destination: crate::crd::SnapshotDestination {
            pvc: crate::crd::PvcDestination {
                claim_name: "backups".into(),
                path: None,
            },
        },
    });
    let (ctx, mut api) = fixtures::context(probe);
    let task = spawn(cluster.clone(), ctx);
    expect_steady_observe_and_apply(&mut api, &config_map, &statefulset).await;

    let done = |name: &str, at: &str| {
        json!({
            "apiVersion": "lodestone.dev/v1alpha1",
            "kind": "LodestoneSnapshot",
            "metadata": {"name": name, "namespace": "default", "labels": {"lodestone.dev/scheduled": "true"}},
            "spec": {"cluster": "example", "destination": {"pvc": {"claimName": "backups"}}},
            "status": {"phase": "Succeeded", "completionTime": at, "revision": 7},
        })
    };
    api.expect("GET", &format!("{SNAPSHOTS}?")).await.reply(
        StatusCode::OK,
        snapshot_list(json!([
            done("example-sched-20210101000000", "2021-01-01T00:01:05Z"),
            done("example-sched-20220101000000", "2022-01-01T00:01:05Z"),
            done("example-sched-20230101000000", "2023-01-01T00:01:05Z"),
        ])),
    );
    let created = api.expect("POST", &format!("{SNAPSHOTS}?")).await;
    let name = created.body["metadata"]["name"].as_str().expect("name").to_string();
    assert!(
        name.starts_with("example-sched-20") && name.ends_with("0101000000"),
        "{name}"
    );
    assert_eq!(created.body["metadata"]["labels"]["lodestone.dev/scheduled"], "true");
    assert_eq!(
        created.body["metadata"]["ownerReferences"][0]["kind"],
        "LodestoneCluster"
    );
    created.echo();
    let deleted = api
        .expect("DELETE", &format!("{SNAPSHOTS}/example-sched-20210101000000"))
        .await;
    deleted.reply(
        StatusCode::OK,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
    );
    let cluster_status = api.expect("PATCH", &format!("{LSC}/example/status")).await;
    assert_eq!(
        cluster_status.body["status"]["lastSnapshot"]["name"],
        "example-sched-20230101000000"
    );
    let reply = with_status(&cluster, &cluster_status.body);
    cluster_status.reply(StatusCode::OK, reply);
    let action = task.await.expect("task").expect("reconcile succeeds");
    api.expect_silence().await;
    assert_eq!(action, Action::requeue(backup::WAKE_WHILE_SAVING));
}

/// A replaced member, once removed, restarts on new volumes: its claims are deleted, then its
/// pod (the claims' protection holds them until the pod is gone), and the next step adds it
/// again as a new member.
#[tokio::test]
async fn a_replaced_member_restarts_on_new_volumes_before_it_is_added_again() {
    let probe = Arc::new(FakeProbe {
        view: fixtures::view(&["example-0", "example-2"], Some(0), &[]),
        ..FakeProbe::default()
    });
    let members = Arc::new(fixtures::FakeMembers::default());
    let (ctx, mut api) = fixtures::context_with(probe, members.clone());
    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let operation = crate::crd::MembershipOperation {
        kind: crate::crd::OperationKind::ReplaceMember,
        step: crate::crd::StepKind::ResetVolumes,
        member: "example-1".into(),
        ordinal: 1,
        member_id: Some("a2".into()),
    };
    cluster.status = Some(crate::crd::LodestoneClusterStatus {
        cluster_id: Some("c1a5".into()),
        operation: Some(operation),
        ..Default::default()
    });
    let names = crate::names::Names::of(&cluster);
    let mut founding = build::BootstrapConfig::founding(&names, 3, fixtures::UID);
    founding.state = build::ClusterState::Existing;
    let config_map = build::bootstrap_config_map(&cluster, &names, &founding);
    let statefulset = build::statefulset(&cluster, &names, 3);
    let task = spawn(cluster.clone(), ctx);

    expect_observed(&mut api, &config_map, &statefulset).await;
    // Recorded already: no status write before the step.
    for claim in ["data-example-1", "wal-example-1"] {
        api.expect("DELETE", &format!("{NS}/persistentvolumeclaims/{claim}"))
            .await
            .reply(
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
            );
    }
    api.expect("DELETE", &format!("{NS}/pods/example-1")).await.reply(
        StatusCode::OK,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
    );
    let bodies = expect_applies(&mut api).await;
    assert_eq!(bodies[4]["spec"]["replicas"], 3, "the slot stays");
    expect_no_snapshots(&mut api).await;
    let status = api.expect("PATCH", &format!("{LSC}/example/status")).await;
    assert_eq!(
        status.body["status"]["operation"],
        json!({"kind": "ReplaceMember", "step": "AddLearner", "member": "example-1", "ordinal": 1})
    );
    let reply = with_status(&cluster, &status.body);
    status.reply(StatusCode::OK, reply);
    task.await.expect("task").expect("reconcile succeeds");
    assert!(members.calls.lock().unwrap().is_empty(), "no member call in this step");
}

/// One recorded membership step, resumed by a reconcile: the member call it makes (if any),
/// the replicas the StatefulSet is applied with, the operation recorded after it and the
/// Events published (a step's own Event goes out when it is first recorded).
struct Resumed {
    step: &'static str,
    kind: crate::crd::OperationKind,
    recorded: crate::crd::StepKind,
    member: &'static str,
    member_id: &'static str,
    desired: i32,
    slots: i32,
    view: crate::members::MembersView,
    call: Option<&'static str>,
    replicas: i32,
    then: Value,
    events: &'static [&'static str],
}

/// Every middle step of growing and shrinking on the stand-in API server: a step already
/// recorded is not recorded again, its one effect (a member call or the slots the StatefulSet
/// is applied with) is made before anything else changes, and the next step is recorded after
/// it. (ClearVolumes and AddLearner: `growing_records_each_step_before_making_it`; DeleteVolumes:
/// `a_removal_ends_by_deleting_the_members_volumes`.)
#[tokio::test]
async fn each_recorded_step_makes_its_one_change_then_records_the_next() {
    use crate::crd::{OperationKind as Op, StepKind as S};
    let names = crate::names::Names::of(&fixtures::sample("lodestonecluster-3-members.yaml"));
    // Three voters and the learner 0xabc that MemberAdd gave example-3 (it has no name yet).
    let mut with_learner = fixtures::view(&["example-0", "example-1", "example-2"], Some(0), &[]);
    with_learner.members.push(crate::members::ObservedMember {
        id: 0xabc,
        name: String::new(),
        peer_urls: vec![names.peer_url("example-3")],
        client_urls: Vec::new(),
        learner: true,
        status: None,
    });
    let example_3 =
        |step: &str| json!({"kind": "AddMember", "step": step, "member": "example-3", "ordinal": 3, "memberId": "abc"});
    let example_2 = |step: &str| json!({"kind": "RemoveMember", "step": step, "member": "example-2", "ordinal": 2, "memberId": "a3"});
    let cases = [
        Resumed {
            step: "StartMember: the slot comes, no member call",
            kind: Op::AddMember,
            recorded: S::StartMember,
            member: "example-3",
            member_id: "abc",
            desired: 4,
            slots: 3,
            view: with_learner.clone(),
            call: None,
            replicas: 4,
            then: example_3("Promote"),
            events: &[],
        },
        Resumed {
            step: "Promote: MemberPromote, then the operation is done",
            kind: Op::AddMember,
            recorded: S::Promote,
            member: "example-3",
            member_id: "abc",
            desired: 4,
            slots: 4,
            view: with_learner,
            call: Some("promote abc"),
            replicas: 4,
            then: Value::Null,
            events: &["MemberAdded"],
        },
        Resumed {
            step: "MoveLeader: the leaving member hands leadership over",
            kind: Op::RemoveMember,
            recorded: S::MoveLeader,
            member: "example-2",
            member_id: "a3",
            desired: 2,
            slots: 3,
            view: fixtures::view(&["example-0", "example-1", "example-2"], Some(2), &[]),
            call: Some("move_leader http://example-2:2379 to a"),
            replicas: 3,
            then: example_2("RemoveMember"),
            events: &[],
        },
        Resumed {
            step: "RemoveMember: MemberRemove, the slot stays until it is done",
            kind: Op::RemoveMember,
            recorded: S::RemoveMember,
            member: "example-2",
            member_id: "a3",
            desired: 2,
            slots: 3,
            view: fixtures::view(&["example-0", "example-1", "example-2"], Some(0), &[]),
            call: Some("remove a3"),
            replicas: 3,
            then: example_2("Shrink"),
            events: &[],
        },
        Resumed {
            step: "Shrink: the removed member's slot goes, its volumes next",
            kind: Op::RemoveMember,
            recorded: S::Shrink,
            member: "example-2",
            member_id: "a3",
            desired: 2,
            slots: 3,
            view: fixtures::view(&["example-0", "example-1"], Some(0), &[]),
            call: None,
            replicas: 2,
            then: example_2("DeleteVolumes"),
            events: &[],
        },
    ];
    for case in cases {
        let step = case.step;
        let probe = Arc::new(FakeProbe {
            view: case.view,
            ..FakeProbe::default()
        });
        let members = Arc::new(fixtures::FakeMembers::default());
        let (ctx, mut api) = fixtures::context_with(probe, members.clone());
        let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
        cluster.spec.replicas = case.desired;
        cluster.status = Some(crate::crd::LodestoneClusterStatus {
            cluster_id: Some("c1a5".into()),
            operation: Some(crate::crd::MembershipOperation {
                kind: case.kind,
                step: case.recorded,
                member: case.member.into(),
                ordinal: names.ordinal(case.member).expect("a member pod"),
                member_id: Some(case.member_id.into()),
            }),
            ..Default::default()
        });
        let mut founding = build::BootstrapConfig::founding(&names, 3, fixtures::UID);
        founding.state = build::ClusterState::Existing;
        let config_map = build::bootstrap_config_map(&cluster, &names, &founding);
        let statefulset = build::statefulset(&cluster, &names, case.slots);
        let task = spawn(cluster.clone(), ctx);

        // Recorded already: no status write before the change.
        expect_observed(&mut api, &config_map, &statefulset).await;
        let bodies = expect_applies(&mut api).await;
        let calls = members.calls.lock().unwrap().clone();
        match case.call {
            Some(call) => {
                assert_eq!(calls.len(), 1, "{step}: {calls:?}");
                assert!(calls[0].starts_with(call), "{step}: {calls:?}");
            }
            None => assert!(calls.is_empty(), "{step}: {calls:?}"),
        }
        assert_eq!(bodies[4]["spec"]["replicas"], case.replicas, "{step}");
        expect_no_snapshots(&mut api).await;
        let status = api.expect("PATCH", &format!("{LSC}/example/status")).await;
        assert_eq!(status.body["status"]["operation"], case.then, "{step}");
        // The learner being started does not answer yet: progress, not a degraded cluster.
        let degraded = status.body["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Degraded"))
            .cloned();
        assert_eq!(degraded.map(|c| c["status"].clone()), Some(json!("False")), "{step}");
        let reply = with_status(&cluster, &status.body);
        status.reply(StatusCode::OK, reply);
        for reason in case.events {
            let event = api.expect("POST", EVENTS).await;
            assert_eq!(event.body["reason"], *reason, "{step}");
            event.echo();
        }
        task.await.expect("task").expect("reconcile succeeds");
        api.expect_silence().await;
    }
}

/// Starts the snapshot controller's reconcile of a new snapshot (no status yet) of `example`.
fn reconcile_new_snapshot() -> (tokio::task::JoinHandle<Result<Action, Error>>, ApiServerVerifier) {
    let (ctx, api) = fixtures::context(Arc::new(FakeProbe::default()));
    let snapshot: LodestoneSnapshot = serde_json::from_value(snapshot_object(Value::Null)).expect("snapshot");
    (tokio::spawn(unclaimed::reconcile(Arc::new(snapshot), ctx)), api)
}

/// A snapshot naming a cluster that does not exist is not left without a status: the
/// snapshot controller reads the cluster, finds none, and says so in the snapshot.
#[tokio::test]
async fn a_snapshot_of_a_missing_cluster_says_so_in_its_status() {
    let (task, mut api) = reconcile_new_snapshot();
    api.expect("GET", &format!("{LSC}/example")).await.not_found();
    let status = api.expect("PATCH", &format!("{SNAPSHOTS}/nightly/status")).await;
    assert_eq!(status.body["status"]["phase"], "Pending");
    assert!(
        status.body["status"]["message"]
            .as_str()
            .unwrap()
            .starts_with("LodestoneCluster \"example\" not found in namespace \"default\""),
        "{}",
        status.body
    );
    let reply = snapshot_object(status.body["status"].clone());
    status.reply(StatusCode::OK, reply);
    assert_eq!(
        task.await.expect("task").expect("reconcile succeeds"),
        Action::await_change()
    );
    api.expect_silence().await;
}

/// A snapshot of a cluster that exists is left to that cluster's reconcile.
#[tokio::test]
async fn a_snapshot_of_an_existing_cluster_is_left_to_its_cluster() {
    let (task, mut api) = reconcile_new_snapshot();
    let cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    api.expect("GET", &format!("{LSC}/example"))
        .await
        .reply(StatusCode::OK, serde_json::to_value(&cluster).expect("json"));
    assert_eq!(
        task.await.expect("task").expect("reconcile succeeds"),
        Action::await_change()
    );
    api.expect_silence().await;
}
