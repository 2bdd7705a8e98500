//! The observe step: read the owned objects that carry state (the bootstrap ConfigMap, the
//! StatefulSet, the member pods) through the platform and ask the members how the cluster is. [`Observed`] is all the plan step
//! knows of the world.

use k8s_openapi::api::apps::v1::StatefulSet;

use super::build::BootstrapConfig;
use super::rollout::PodInfo;
use crate::Error;
use crate::members::{ClientTls, MemberProbe, MembersView};
use crate::names::Names;
use crate::platform::Platform;

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

pub async fn observe(platform: &dyn Platform, probe: &dyn MemberProbe, names: &Names) -> Result<Observed, Error> {
    let bootstrap = platform
        .config_map(&names.namespace, &names.bootstrap)
        .await?
        .as_ref()
        .and_then(BootstrapConfig::from_config_map);
    let statefulset = platform.statefulset(&names.namespace, &names.cluster).await?;
    let pods = match (&bootstrap, &statefulset) {
        (Some(_), Some(_)) => platform.pods(names).await?,
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
                Some(secret) => Some(read_client_tls(platform, &names.namespace, secret).await?),
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

/// The operator's own client certificate: the cluster's client TLS Secret.
async fn read_client_tls(platform: &dyn Platform, namespace: &str, name: &str) -> Result<ClientTls, Error> {
    let secret = platform
        .secret(namespace, name)
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
