//! The `LodestoneCluster` controller: a named pipeline per reconcile,
//! observe → plan (pure) → apply → status.

pub mod backup;
pub mod build;
pub mod membership;
pub mod observe;
pub mod plan;
pub mod rollout;
pub mod status;
pub mod unclaimed;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::crd::{LodestoneCluster, LodestoneSnapshot};
use crate::members::format_id;
use crate::members::{ChangeError, MemberProbe, Members};
use crate::metrics::Metrics;
use crate::names::Names;
use crate::platform::Platform;

/// Everything a reconcile needs, shared by all reconciles.
pub struct Context {
    /// Where every Kubernetes side effect goes.
    pub platform: Arc<dyn Platform>,
    pub probe: Arc<dyn MemberProbe>,
    /// Membership changes (MemberAdd, MemberPromote, MemberRemove, MoveLeader).
    pub members: Arc<dyn Members>,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per cluster, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        platform: Arc<dyn Platform>,
        probe: Arc<dyn MemberProbe>,
        members: Arc<dyn Members>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            platform,
            probe,
            members,
            metrics,
            failures: Mutex::default(),
        }
    }

    fn key(cluster: &LodestoneCluster) -> String {
        format!("{}/{}", cluster.namespace().unwrap_or_default(), cluster.name_any())
    }
}

/// One reconcile of one cluster.
pub async fn reconcile(cluster: Arc<LodestoneCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&cluster, &ctx).await;
    ctx.metrics.observe_reconcile(started.elapsed(), result.as_ref().err());
    if result.is_ok() {
        ctx.failures
            .lock()
            .expect("failure map poisoned")
            .remove(&Context::key(&cluster));
    }
    result
}

async fn reconcile_inner(cluster: &LodestoneCluster, ctx: &Context) -> Result<Action, Error> {
    // Deletion: owner references let Kubernetes collect the owned objects; member volumes
    // are retained on purpose. Nothing to do.
    if cluster.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let names = Names::of(cluster);
    if names.namespace.is_empty() {
        return Err(Error::MissingNamespace);
    }
    let observed = observe::observe(ctx.platform.as_ref(), ctx.probe.as_ref(), &names).await?;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut plan = plan::plan(cluster, &observed, &now);
    // What the API server holds, as far as this reconcile knows: the base of status patches.
    let mut reported = cluster.clone();
    if let Some(step) = &plan.membership {
        // Record the step before making it, so a restarted operator resumes it.
        let recorded = cluster.status.as_ref().and_then(|s| s.operation.as_ref());
        if recorded != Some(&step.record) {
            ctx.platform.write_status(&reported, &plan.status).await?;
            reported.status = Some(plan.status.clone());
        }
        match change_membership(ctx, &names, &observed, step).await {
            Ok(then) => {
                plan.status.operation = then;
                plan.events.extend(plan.membership_done.take());
            }
            // A learner still catching up: the record stands; look again soon.
            Err(Error::Membership {
                source: ChangeError::NotCaughtUp,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(desired) = &plan.desired {
        ctx.platform.apply(&names.namespace, desired).await?;
    }
    if let Some(action) = &plan.rollout {
        restart_one(ctx, &names, &observed, action).await?;
    }
    if plan.desired.is_some() && observed.members.formed() {
        let snapshots = take_snapshots(ctx, cluster, &names, &observed, &now).await?;
        plan.status.last_snapshot = snapshots.last;
        plan.events.extend(snapshots.events);
        if let Some(wake) = snapshots.wake {
            plan.requeue_after = plan.requeue_after.min(wake);
        }
    }
    if status::changed(&reported, &plan.status) {
        ctx.platform.write_status(&reported, &plan.status).await?;
    }
    ctx.platform.publish(cluster, &plan.events).await;
    ctx.metrics.observe_cluster(&names, &plan.status);
    Ok(match plan.desired {
        Some(_) => Action::requeue(plan.requeue_after),
        None => Action::await_change(),
    })
}

/// Makes one membership step and returns what to record after it. Slot changes need no call:
/// the plan already sized the StatefulSet the apply step writes.
async fn change_membership(
    ctx: &Context,
    names: &Names,
    observed: &observe::Observed,
    step: &membership::Step,
) -> Result<Option<crate::crd::MembershipOperation>, Error> {
    let view = &observed.members;
    // Client URLs of the members, the leader's first.
    let mut endpoints: Vec<String> = view
        .members
        .iter()
        .filter(|m| Some(m.id) == view.leader)
        .chain(view.members.iter().filter(|m| Some(m.id) != view.leader))
        .filter_map(|m| m.client_urls.first().cloned())
        .collect();
    endpoints.dedup();
    let tls = observed.client_tls.clone();
    let failed = |source: ChangeError| Error::Membership {
        member: step.record.member.clone(),
        step: format!("{:?}", step.record.step),
        source,
    };
    let mut then = step.then.clone();
    match &step.action {
        membership::Action::AddLearner { peer_url } => {
            let id = ctx
                .members
                .add_learner(endpoints, tls, peer_url.clone())
                .await
                .map_err(failed)?;
            tracing::info!(member = %step.record.member, id = %format_id(id), "added as a learner");
            if let Some(t) = then.as_mut() {
                t.member_id = Some(format_id(id));
            }
        }
        membership::Action::SetSlots(_) => {}
        membership::Action::Promote { id } => {
            ctx.members.promote(endpoints, tls, *id).await.map_err(failed)?;
            tracing::info!(member = %step.record.member, "promoted to voter");
        }
        membership::Action::MoveLeader { leader_client_url, to } => {
            ctx.members
                .move_leader(leader_client_url.clone(), tls, *to)
                .await
                .map_err(failed)?;
            tracing::info!(from = %step.record.member, to = %format_id(*to), "leadership moved");
        }
        membership::Action::Remove { id } => {
            ctx.members.remove(endpoints, tls, *id).await.map_err(failed)?;
            tracing::info!(member = %step.record.member, "removed from the cluster");
        }
        membership::Action::DeleteVolumes { pod } => {
            for template in ["data", "wal"] {
                ctx.platform
                    .delete_claim(&names.namespace, &format!("{template}-{pod}"))
                    .await?;
            }
        }
        membership::Action::ResetVolumes { pod } => {
            // The claims first: their protection holds them until the pod is gone, and the
            // StatefulSet then creates the pod again with new claims.
            for template in ["data", "wal"] {
                ctx.platform
                    .delete_claim(&names.namespace, &format!("{template}-{pod}"))
                    .await?;
            }
            ctx.platform.delete_pod(&names.namespace, pod).await?;
            tracing::info!(member = %pod, "restarting a replaced member on new volumes");
        }
    }
    Ok(then)
}

/// The snapshot step: moves each of the cluster's snapshots on with its Job, creates the
/// schedule's, and deletes what its retention lets go.
async fn take_snapshots(
    ctx: &Context,
    cluster: &LodestoneCluster,
    names: &Names,
    observed: &observe::Observed,
    now: &Time,
) -> Result<backup::Plan, Error> {
    let snapshots = ctx.platform.snapshots(&names.namespace).await?;
    let mut jobs = std::collections::BTreeMap::new();
    for s in snapshots.iter().filter(|s| s.spec.cluster == names.cluster) {
        if !backup::finished(s) {
            let job = build::snapshot_job_name(s);
            if let Some(state) = ctx.platform.job(&names.namespace, &job).await? {
                jobs.insert(job, state);
            }
        }
    }
    // Members that answer, the leader first; none without a leader.
    let view = &observed.members;
    let endpoints: Vec<String> = match view.leader {
        None => Vec::new(),
        Some(leader) => {
            let answering = view.members.iter().filter(|m| m.status.is_some());
            let mut urls: Vec<String> = answering
                .clone()
                .filter(|m| m.id == leader)
                .chain(answering.filter(|m| m.id != leader))
                .filter_map(|m| m.client_urls.first().cloned())
                .collect();
            urls.dedup();
            urls
        }
    };
    let plan = backup::decide(backup::Input {
        cluster,
        snapshots: &snapshots,
        jobs: &jobs,
        endpoints: &endpoints,
        now,
    });
    for snapshot in &plan.create {
        ctx.platform.create_snapshot(snapshot).await?;
        tracing::info!(snapshot = %snapshot.name_any(), "scheduled snapshot created");
    }
    for job in &plan.jobs {
        ctx.platform.run_job(&names.namespace, job).await?;
        tracing::info!(job = %job.name_any(), "saving a snapshot");
    }
    for (snapshot, status) in &plan.statuses {
        ctx.platform.write_snapshot_status(snapshot, status).await?;
    }
    for name in &plan.delete {
        ctx.platform.delete_snapshot(&names.namespace, name).await?;
        tracing::info!(snapshot = %name, "snapshot deleted by retention");
    }
    Ok(plan)
}

/// One step of a rolling restart.
async fn restart_one(
    ctx: &Context,
    names: &Names,
    observed: &observe::Observed,
    action: &rollout::Action,
) -> Result<(), Error> {
    match action {
        rollout::Action::RestartPod(pod) => {
            tracing::info!(pod = %pod, "restarting a member on the new template");
            ctx.platform.delete_pod(&names.namespace, pod).await?;
        }
        rollout::Action::MoveLeader { leader_client_url, to } => {
            ctx.members
                .move_leader(leader_client_url.clone(), observed.client_tls.clone(), *to)
                .await
                .map_err(|source| Error::Membership {
                    member: leader_client_url.clone(),
                    step: "MoveLeader".into(),
                    source,
                })?;
            tracing::info!(to = %format_id(*to), "leadership moved before restarting the leader");
        }
    }
    Ok(())
}

/// Transient failures are retried with a backoff that doubles per consecutive failure of the
/// same cluster, from 1 s up to 5 minutes.
pub fn error_policy(cluster: Arc<LodestoneCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures.lock().expect("failure map poisoned");
    let count = failures.entry(Context::key(&cluster)).or_insert(0);
    *count = count.saturating_add(1);
    let delay = backoff(*count);
    tracing::warn!(cluster = %Context::key(&cluster), error = %error, source = ?std::error::Error::source(error), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The delay before retry number `failures`.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

/// Runs the cluster controller and the snapshot one ([`unclaimed`]) until `shutdown` is
/// cancelled, watching through `client` (the platform's). `namespace` limits them to one
/// namespace.
pub async fn run(ctx: Arc<Context>, client: kube::Client, namespace: Option<String>, shutdown: CancellationToken) {
    fn api<K>(client: &kube::Client, namespace: &Option<String>) -> Api<K>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=lodestone-operator");
    // Snapshots whose cluster does not exist get a status saying so (`unclaimed`); every
    // other snapshot is the business of its cluster's reconcile.
    let snapshots = Controller::new(
        api::<LodestoneSnapshot>(&client, &namespace),
        watcher::Config::default().any_semantic(),
    )
    .graceful_shutdown_on({
        let shutdown = shutdown.clone();
        async move { shutdown.cancelled().await }
    })
    .run(unclaimed::reconcile, unclaimed::error_policy, ctx.clone())
    .for_each(|result| async move {
        if let Err(err) = result {
            tracing::debug!(error = %err, "snapshot reconcile did not complete");
        }
    });
    let clusters = Controller::new(
        api::<LodestoneCluster>(&client, &namespace),
        watcher::Config::default().any_semantic(),
    )
    .owns(api::<StatefulSet>(&client, &namespace), owned.clone())
    .owns(api::<Service>(&client, &namespace), owned.clone())
    .owns(api::<ConfigMap>(&client, &namespace), owned.clone())
    .owns(api::<PodDisruptionBudget>(&client, &namespace), owned.clone())
    .owns(api::<ServiceAccount>(&client, &namespace), owned.clone())
    // A snapshot (the user's or a schedule's) and its save Job concern the cluster it names.
    .watches(
        api::<LodestoneSnapshot>(&client, &namespace),
        watcher::Config::default(),
        |snapshot| {
            let namespace = snapshot.namespace()?;
            Some(ObjectRef::new(&snapshot.spec.cluster).within(&namespace))
        },
    )
    .watches(api::<Job>(&client, &namespace), owned, |job| {
        let namespace = job.namespace()?;
        let cluster = job.labels().get("app.kubernetes.io/instance")?;
        Some(ObjectRef::new(cluster).within(&namespace))
    })
    .graceful_shutdown_on(async move { shutdown.cancelled().await })
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((object, _)) => tracing::debug!(cluster = %object.name, "reconciled"),
            Err(err) => tracing::debug!(error = %err, "reconcile did not complete"),
        }
    });
    futures::future::join(clusters, snapshots).await;
}

#[cfg(test)]
mod tests;
