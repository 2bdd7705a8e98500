//! The apply step, the only one that writes: server-side apply of every desired object under
//! the operator's field manager, then the Events the plan asked for.

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::build::certificate_resource;
use super::plan::{Desired, PlannedEvent};
use crate::Error;
use crate::crd::LodestoneCluster;

/// Field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "lodestone-operator";

pub async fn apply(client: &kube::Client, namespace: &str, desired: &Desired) -> Result<(), Error> {
    for certificate in &desired.certificates {
        apply_certificate(client, namespace, certificate).await?;
    }
    apply_one(client, namespace, &desired.service_account).await?;
    apply_one(client, namespace, &desired.peer_service).await?;
    apply_one(client, namespace, &desired.client_service).await?;
    apply_one(client, namespace, &desired.bootstrap).await?;
    apply_one(client, namespace, &desired.statefulset).await?;
    apply_one(client, namespace, &desired.pdb).await?;
    Ok(())
}

async fn apply_one<K>(client: &kube::Client, namespace: &str, object: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
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

/// A cert-manager Certificate (a dynamic object: cert-manager's types are not a dependency).
async fn apply_certificate(client: &kube::Client, namespace: &str, object: &DynamicObject) -> Result<(), Error> {
    let resource = certificate_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
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

/// Publishes the planned Events. An Event that cannot be written is logged, not fatal: it must
/// never stop a reconcile.
pub async fn publish(recorder: &Recorder, cluster: &LodestoneCluster, events: &[PlannedEvent]) {
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
        if let Err(err) = recorder.publish(&event, &reference).await {
            tracing::warn!(reason = planned.reason.as_str(), error = %err, "failed to publish event");
        }
    }
}
