//! The real platform: the Kubernetes API through kube-rs.

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{JobState, Platform};
use crate::Error;
use crate::controller::build::certificate_resource;
use crate::controller::plan::{Desired, PlannedEvent};
use crate::controller::rollout::PodInfo;
use crate::controller::status;
use crate::crd::{LodestoneCluster, LodestoneClusterStatus, LodestoneSnapshot, LodestoneSnapshotStatus};
use crate::names::Names;

/// Field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "lodestone-operator";

/// The Kubernetes API server, as the operator's service account sees it.
#[derive(Clone)]
pub struct KubePlatform {
    client: kube::Client,
    recorder: Recorder,
}

impl KubePlatform {
    /// `instance` names this operator replica in the Events it publishes.
    pub fn new(client: kube::Client, instance: String) -> Self {
        let reporter = Reporter {
            controller: "lodestone-operator".to_string(),
            instance: Some(instance),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
        }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    async fn read<K>(&self, namespace: &str, name: &str) -> Result<Option<K>, Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + k8s_openapi::Resource
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name).await.map_err(|source| Error::Read {
            kind: <K as k8s_openapi::Resource>::KIND,
            name: name.to_string(),
            source,
        })
    }

    async fn apply_one<K>(&self, namespace: &str, object: &K) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Serialize
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let name = object.name_any();
        // Server-side apply needs apiVersion and kind in the body.
        let mut body = serde_json::to_value(object).map_err(Error::Serialize)?;
        body["apiVersion"] = K::api_version(&()).into();
        body["kind"] = K::kind(&()).into();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
            .await
            .map_err(|source| Error::Apply {
                kind: K::kind(&()).into_owned(),
                name,
                source,
            })?;
        Ok(())
    }

    /// Creates `object` unless it exists: objects created once and never changed (a scheduled
    /// snapshot, a save Job), so an earlier reconcile's creation is success.
    async fn create_once<K>(&self, namespace: &str, object: &K) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Serialize
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        match api.create(&Default::default(), object).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(source) => Err(Error::Apply {
                kind: K::kind(&()).into_owned(),
                name: object.name_any(),
                source,
            }),
        }
    }

    /// A cert-manager Certificate (a dynamic object: cert-manager's types are not a dependency).
    async fn apply_certificate(&self, namespace: &str, object: &DynamicObject) -> Result<(), Error> {
        let resource = certificate_resource();
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &resource);
        let name = object.name_any();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
            .await
            .map_err(|source| Error::Apply {
                kind: resource.kind.clone(),
                name,
                source,
            })?;
        Ok(())
    }
}

/// A delete that finds nothing is done.
fn gone_is_done<T>(result: Result<T, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

impl Platform for KubePlatform {
    fn config_map<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<ConfigMap>, Error>> {
        Box::pin(self.read(namespace, name))
    }

    fn statefulset<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<StatefulSet>, Error>> {
        Box::pin(self.read(namespace, name))
    }

    fn secret<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<Secret>, Error>> {
        Box::pin(self.read(namespace, name))
    }

    fn pods<'a>(&'a self, names: &'a Names) -> BoxFuture<'a, Result<Vec<PodInfo>, Error>> {
        Box::pin(async move {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &names.namespace);
            let selector = names.selector();
            let list = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|source| Error::Read {
                    kind: "Pod",
                    name: selector.clone(),
                    source,
                })?;
            Ok(list.items.iter().map(PodInfo::of).collect())
        })
    }

    fn apply<'a>(&'a self, namespace: &'a str, desired: &'a Desired) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            for certificate in &desired.certificates {
                self.apply_certificate(namespace, certificate).await?;
            }
            self.apply_one(namespace, &desired.service_account).await?;
            self.apply_one(namespace, &desired.peer_service).await?;
            self.apply_one(namespace, &desired.client_service).await?;
            self.apply_one(namespace, &desired.bootstrap).await?;
            self.apply_one(namespace, &desired.statefulset).await?;
            self.apply_one(namespace, &desired.pdb).await?;
            Ok(())
        })
    }

    fn delete_pod<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            if gone_is_done(api.delete(name, &Default::default()).await).map_err(|source| Error::DeletePod {
                name: name.to_string(),
                source,
            })? {
                tracing::info!(pod = %name, "deleted a member pod");
            }
            Ok(())
        })
    }

    fn delete_claim<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
            if gone_is_done(api.delete(name, &Default::default()).await).map_err(|source| Error::DeleteVolume {
                name: name.to_string(),
                source,
            })? {
                tracing::info!(claim = %name, "deleted the volume of a removed member");
            }
            Ok(())
        })
    }

    fn write_status<'a>(
        &'a self,
        cluster: &'a LodestoneCluster,
        planned: &'a LodestoneClusterStatus,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let namespace = cluster.metadata.namespace.as_deref().unwrap_or_default();
            let name = cluster.metadata.name.as_deref().unwrap_or_default();
            let api: Api<LodestoneCluster> = Api::namespaced(self.client.clone(), namespace);
            let patch = status::patch(cluster, planned)?;
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| Error::WriteStatus {
                    name: name.to_string(),
                    source,
                })?;
            Ok(())
        })
    }

    fn cluster_exists<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let api: Api<LodestoneCluster> = Api::namespaced(self.client.clone(), namespace);
            let found = api.get_opt(name).await.map_err(|source| Error::Read {
                kind: "LodestoneCluster",
                name: name.to_string(),
                source,
            })?;
            Ok(found.is_some())
        })
    }

    fn snapshots<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Vec<LodestoneSnapshot>, Error>> {
        Box::pin(async move {
            let api: Api<LodestoneSnapshot> = Api::namespaced(self.client.clone(), namespace);
            let list = api.list(&ListParams::default()).await.map_err(|source| Error::Read {
                kind: "LodestoneSnapshot",
                name: namespace.to_string(),
                source,
            })?;
            Ok(list.items)
        })
    }

    fn create_snapshot<'a>(&'a self, snapshot: &'a LodestoneSnapshot) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let namespace = snapshot.metadata.namespace.as_deref().unwrap_or_default();
            self.create_once(namespace, snapshot).await
        })
    }

    fn delete_snapshot<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let api: Api<LodestoneSnapshot> = Api::namespaced(self.client.clone(), namespace);
            gone_is_done(api.delete(name, &Default::default()).await).map_err(|source| Error::Apply {
                kind: "LodestoneSnapshot".into(),
                name: name.to_string(),
                source,
            })?;
            Ok(())
        })
    }

    fn write_snapshot_status<'a>(
        &'a self,
        snapshot: &'a LodestoneSnapshot,
        status: &'a LodestoneSnapshotStatus,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let namespace = snapshot.metadata.namespace.as_deref().unwrap_or_default();
            let name = snapshot.name_any();
            let api: Api<LodestoneSnapshot> = Api::namespaced(self.client.clone(), namespace);
            // A merge patch leaves out what it does not name: fields the new status lacks
            // (a pending snapshot's message once its save starts) are cleared explicitly.
            let mut status = serde_json::to_value(status).expect("a snapshot status serializes");
            for field in ["message", "error"] {
                status
                    .as_object_mut()
                    .expect("a snapshot status is an object")
                    .entry(field)
                    .or_insert(serde_json::Value::Null);
            }
            let patch = serde_json::json!({ "status": status });
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| Error::WriteStatus { name, source })?;
            Ok(())
        })
    }

    fn run_job<'a>(&'a self, namespace: &'a str, job: &'a Job) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            // Jobs are immutable: one created by an earlier reconcile stands.
            self.create_once(namespace, job).await
        })
    }

    fn job<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<JobState>, Error>> {
        Box::pin(async move {
            let Some(job) = self.read::<Job>(namespace, name).await? else {
                return Ok(None);
            };
            let status = job.status.unwrap_or_default();
            let condition = |t: &str| {
                status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == t && c.status == "True")
            };
            let done = status.succeeded.unwrap_or(0) > 0 || condition("Complete");
            let failed = condition("Failed");
            if !done && !failed {
                return Ok(Some(JobState::Running));
            }
            // The report (or the failure) is the termination message of the Job's pod.
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            let selector = format!("batch.kubernetes.io/job-name={name}");
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|source| Error::Read {
                    kind: "Pod",
                    name: selector.clone(),
                    source,
                })?;
            let messages: Vec<(bool, String)> = list
                .items
                .iter()
                .filter_map(|p| {
                    let state = p
                        .status
                        .as_ref()?
                        .container_statuses
                        .as_ref()?
                        .first()?
                        .state
                        .as_ref()?;
                    let t = state.terminated.as_ref()?;
                    Some((t.exit_code == 0, t.message.clone().unwrap_or_default()))
                })
                .collect();
            Ok(Some(if done {
                JobState::Succeeded {
                    report: messages
                        .iter()
                        .find(|(ok, _)| *ok)
                        .map(|(_, m)| m.clone())
                        .unwrap_or_default(),
                }
            } else {
                JobState::Failed {
                    message: messages
                        .iter()
                        .rev()
                        .find(|(ok, _)| !*ok)
                        .map(|(_, m)| m.clone())
                        .unwrap_or_else(|| "the Job failed".to_string()),
                }
            }))
        })
    }

    fn publish<'a>(&'a self, cluster: &'a LodestoneCluster, events: &'a [PlannedEvent]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let reference = cluster.object_ref(&());
            for planned in events {
                let event = Event {
                    type_: if planned.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: planned.reason.to_string(),
                    note: Some(planned.note.clone()),
                    action: planned.action.to_string(),
                    secondary: None,
                };
                if let Err(err) = self.recorder.publish(&event, &reference).await {
                    tracing::warn!(reason = planned.reason.as_str(), error = %err, "failed to publish event");
                }
            }
        })
    }
}
