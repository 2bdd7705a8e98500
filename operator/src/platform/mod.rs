//! The platform seam: every Kubernetes side effect of a reconcile goes through [`Platform`].
//!
//! The reconcile reads the objects that carry state, lists the member pods, applies the
//! desired objects, restarts one member (deletes its pod), deletes one member's volume, runs,
//! lists and prunes snapshots (`LodestoneSnapshot` objects and the Jobs that save them),
//! writes status and publishes Events, and nothing else touches the API server. [`KubePlatform`] is the
//! real one. The end-to-end suite (`operator/tests/e2e`) supplies a platform that runs the
//! StatefulSet the plan produced as local `lodestone` processes, so the whole reconcile is
//! proven against real members where no API server can run.
//!
//! The etcd API calls go through the other seam, [`crate::members`].

mod kube;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};

pub use self::kube::KubePlatform;
use crate::Error;
use crate::controller::plan::{Desired, PlannedEvent};
use crate::controller::rollout::PodInfo;
use crate::crd::{LodestoneCluster, LodestoneClusterStatus, LodestoneSnapshot, LodestoneSnapshotStatus};
use crate::names::Names;

/// Where a reconcile's side effects land. Reads answer `None` for an object that does not
/// exist; deletes of something already gone succeed.
pub trait Platform: Send + Sync {
    /// A ConfigMap (the bootstrap decision).
    fn config_map<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<ConfigMap>, Error>>;
    /// The members' StatefulSet, with its status (replicas, update revision).
    fn statefulset<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<StatefulSet>, Error>>;
    /// A Secret (the operator's client certificate).
    fn secret<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<Secret>, Error>>;
    /// The member pods of one cluster: the slots as they run.
    fn pods<'a>(&'a self, names: &'a Names) -> BoxFuture<'a, Result<Vec<PodInfo>, Error>>;
    /// Creates or updates every desired object (server-side apply under the operator's field
    /// manager).
    fn apply<'a>(&'a self, namespace: &'a str, desired: &'a Desired) -> BoxFuture<'a, Result<(), Error>>;
    /// Deletes a member pod, so the StatefulSet recreates it from the current template.
    fn delete_pod<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), Error>>;
    /// Deletes one member volume (a PersistentVolumeClaim), explicitly: never by cascade.
    fn delete_claim<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), Error>>;
    /// Turns the status `cluster` reports into `planned`.
    fn write_status<'a>(
        &'a self,
        cluster: &'a LodestoneCluster,
        planned: &'a LodestoneClusterStatus,
    ) -> BoxFuture<'a, Result<(), Error>>;
    /// Whether a `LodestoneCluster` of this name exists in the namespace.
    fn cluster_exists<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<bool, Error>>;
    /// The `LodestoneSnapshot`s of a namespace.
    fn snapshots<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Vec<LodestoneSnapshot>, Error>>;
    /// Creates a `LodestoneSnapshot` (a scheduled one); one that exists already is left as is.
    fn create_snapshot<'a>(&'a self, snapshot: &'a LodestoneSnapshot) -> BoxFuture<'a, Result<(), Error>>;
    /// Deletes a `LodestoneSnapshot` (retention).
    fn delete_snapshot<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), Error>>;
    /// Writes a snapshot's status.
    fn write_snapshot_status<'a>(
        &'a self,
        snapshot: &'a LodestoneSnapshot,
        status: &'a LodestoneSnapshotStatus,
    ) -> BoxFuture<'a, Result<(), Error>>;
    /// Starts a Job unless one of its name exists.
    fn run_job<'a>(&'a self, namespace: &'a str, job: &'a Job) -> BoxFuture<'a, Result<(), Error>>;
    /// How a Job went; `None` when it does not exist.
    fn job<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<JobState>, Error>>;
    /// Publishes Events on the cluster resource. Never fails the reconcile: an Event that
    /// cannot be written is logged.
    fn publish<'a>(&'a self, cluster: &'a LodestoneCluster, events: &'a [PlannedEvent]) -> BoxFuture<'a, ()>;
}

/// How a Job went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    /// Finished; its pod's termination message.
    Succeeded {
        report: String,
    },
    /// Gave up; why, from its last pod's termination message when there is one.
    Failed {
        message: String,
    },
}
