//! The observe step: read the owned objects that carry state (the bootstrap ConfigMap, the
//! StatefulSet) and ask the members how the cluster is. [`Observed`] is all the plan step
//! knows of the world.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use super::build::BootstrapConfig;
use crate::Error;
use crate::members::{MemberProbe, MembersView};
use crate::names::Names;

/// What the observe step found.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The bootstrap decision already written, if any.
    pub bootstrap: Option<BootstrapConfig>,
    pub statefulset: Option<StatefulSet>,
    pub members: MembersView,
}

pub async fn observe(client: &kube::Client, probe: &dyn MemberProbe, names: &Names) -> Result<Observed, Error> {
    let bootstrap = read::<ConfigMap>(client, &names.namespace, &names.bootstrap)
        .await?
        .as_ref()
        .and_then(BootstrapConfig::from_config_map);
    let statefulset = read::<StatefulSet>(client, &names.namespace, &names.cluster).await?;
    // Only a cluster whose pods may exist is worth asking.
    let members = match (&bootstrap, &statefulset) {
        (Some(bootstrap), Some(_)) => {
            let endpoints = bootstrap
                .initial_cluster
                .iter()
                .map(|(pod, _)| names.client_url(pod))
                .collect();
            probe.observe(endpoints).await
        }
        _ => Default::default(),
    };
    Ok(Observed {
        bootstrap,
        statefulset,
        members,
    })
}

/// One namespaced object, or `None` when it does not exist.
async fn read<K>(client: &kube::Client, namespace: &str, name: &str) -> Result<Option<K>, Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + k8s_openapi::Resource
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name).await.map_err(|source| Error::Read {
        kind: <K as k8s_openapi::Resource>::KIND,
        name: name.to_string(),
        source,
    })
}
