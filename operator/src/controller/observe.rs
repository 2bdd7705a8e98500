//! The observe step: read the owned objects that carry state (the bootstrap ConfigMap, the
//! StatefulSet) and ask the members how the cluster is. [`Observed`] is all the plan step
//! knows of the world.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::api::ListParams;

use super::build::BootstrapConfig;
use super::rollout::PodInfo;
use crate::Error;
use crate::members::{ClientTls, MemberProbe, MembersView};
use crate::names::Names;

/// What the observe step found.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The bootstrap decision already written, if any.
    pub bootstrap: Option<BootstrapConfig>,
    pub statefulset: Option<StatefulSet>,
    pub members: MembersView,
    /// The operator's client certificate, when clients use https (for membership calls).
    pub client_tls: Option<ClientTls>,
    /// The member pods, with the StatefulSet revision each was created from.
    pub pods: Vec<PodInfo>,
}

pub async fn observe(client: &kube::Client, probe: &dyn MemberProbe, names: &Names) -> Result<Observed, Error> {
    let bootstrap = read::<ConfigMap>(client, &names.namespace, &names.bootstrap)
        .await?
        .as_ref()
        .and_then(BootstrapConfig::from_config_map);
    let statefulset = read::<StatefulSet>(client, &names.namespace, &names.cluster).await?;
    let pods = match (&bootstrap, &statefulset) {
        (Some(_), Some(_)) => list_pods(client, names).await?,
        _ => Vec::new(),
    };
    // Only a cluster whose pods may exist is worth asking.
    let (members, client_tls) = match (&bootstrap, &statefulset) {
        (Some(bootstrap), Some(sts)) => {
            // The founders, then every other slot (members added later).
            let slots = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or_default();
            let mut endpoints: Vec<String> = bootstrap
                .initial_cluster
                .iter()
                .map(|(pod, _)| names.client_url(pod))
                .collect();
            for ordinal in 0..slots {
                let url = names.client_url(&names.pod(ordinal));
                if !endpoints.contains(&url) {
                    endpoints.push(url);
                }
            }
            let tls = match &names.client_tls_secret {
                Some(secret) => Some(read_client_tls(client, &names.namespace, secret).await?),
                None => None,
            };
            (probe.observe(endpoints, tls.clone()).await, tls)
        }
        _ => Default::default(),
    };
    Ok(Observed {
        bootstrap,
        statefulset,
        members,
        client_tls,
        pods,
    })
}

/// The member pods (by the StatefulSet's selector), for rolling restarts.
async fn list_pods(client: &kube::Client, names: &Names) -> Result<Vec<PodInfo>, Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &names.namespace);
    let selector = names.selector();
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::Read {
            kind: "Pod",
            name: selector.clone(),
            source,
        })?;
    Ok(list
        .items
        .into_iter()
        .map(|p| PodInfo {
            name: p.metadata.name.clone().unwrap_or_default(),
            revision: p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("controller-revision-hash").cloned()),
            ready: p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            terminating: p.metadata.deletion_timestamp.is_some(),
        })
        .collect())
}

/// The operator's own client certificate: the cluster's client TLS Secret.
async fn read_client_tls(client: &kube::Client, namespace: &str, name: &str) -> Result<ClientTls, Error> {
    let secret = read::<Secret>(client, namespace, name)
        .await?
        .ok_or_else(|| Error::TlsSecret {
            name: name.to_string(),
            problem: "it does not exist".to_string(),
        })?;
    let data = secret.data.unwrap_or_default();
    let key = |k: &str| {
        data.get(k).map(|b| b.0.clone()).ok_or_else(|| Error::TlsSecret {
            name: name.to_string(),
            problem: format!("it has no {k}"),
        })
    };
    Ok(ClientTls {
        ca: key("ca.crt")?,
        cert: key("tls.crt")?,
        key: key("tls.key")?,
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
