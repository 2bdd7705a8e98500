//! The observe step: read the owned objects that carry state (the bootstrap ConfigMap, the
//! StatefulSet) and ask the members how the cluster is.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use super::build::{BootstrapConfig, Names};
use super::plan::Observed;
use crate::Error;
use crate::members::MemberProbe;

pub async fn observe(client: &kube::Client, probe: &dyn MemberProbe, names: &Names) -> Result<Observed, Error> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &names.namespace);
    let bootstrap = config_maps
        .get_opt(&names.bootstrap)
        .await
        .map_err(|source| Error::Read {
            kind: "ConfigMap",
            name: names.bootstrap.clone(),
            source,
        })?
        .as_ref()
        .and_then(BootstrapConfig::from_config_map);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &names.namespace);
    let statefulset = statefulsets
        .get_opt(&names.cluster)
        .await
        .map_err(|source| Error::Read {
            kind: "StatefulSet",
            name: names.cluster.clone(),
            source,
        })?;
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
