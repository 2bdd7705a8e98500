//! The bootstrap ConfigMap: the one place that says whether a member with an empty data
//! directory may found a cluster (`new`) or must join one (`existing`).
//!
//! Members read it through `envFrom`, so it takes effect when a pod (re)starts. The operator
//! writes `new` only until it has seen the cluster formed, then latches `existing` forever;
//! see ARCHITECTURE.md, "Bootstrap and member identity".

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::owned_meta;
use crate::crd::LodestoneCluster;
use crate::names::Names;

const KEY_CLUSTER: &str = "LODESTONE_INITIAL_CLUSTER";
const KEY_STATE: &str = "LODESTONE_INITIAL_CLUSTER_STATE";
const KEY_TOKEN: &str = "LODESTONE_INITIAL_CLUSTER_TOKEN";

/// etcd's `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

impl ClusterState {
    fn as_str(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

/// The bootstrap decision for one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapConfig {
    pub state: ClusterState,
    /// Founding members as (name, peer URL), in ordinal order. Fixed once written.
    pub initial_cluster: Vec<(String, String)>,
    /// `--initial-cluster-token`: unique per cluster object (it embeds the object's UID), so a
    /// deleted and re-created cluster of the same name never produces the same member IDs.
    pub token: String,
}

impl BootstrapConfig {
    /// The decision for a cluster that has never formed: `replicas` founding members.
    pub fn founding(names: &Names, replicas: i32, uid: &str) -> Self {
        let initial_cluster = (0..replicas)
            .map(|ordinal| {
                let pod = names.pod(ordinal);
                let url = names.peer_url(&pod);
                (pod, url)
            })
            .collect();
        Self {
            state: ClusterState::New,
            initial_cluster,
            token: format!("{}-{}-{uid}", names.namespace, names.cluster),
        }
    }

    /// Reads the decision back from the ConfigMap the operator wrote; `None` when it is not one.
    pub fn from_config_map(cm: &ConfigMap) -> Option<Self> {
        let data = cm.data.as_ref()?;
        let state = match data.get(KEY_STATE)?.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            _ => return None,
        };
        let initial_cluster = data
            .get(KEY_CLUSTER)?
            .split(',')
            .map(|entry| {
                let (name, url) = entry.split_once('=')?;
                Some((name.to_string(), url.to_string()))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            state,
            initial_cluster,
            token: data.get(KEY_TOKEN)?.clone(),
        })
    }

    /// Number of founding members.
    pub fn members(&self) -> i32 {
        self.initial_cluster.len() as i32
    }

    fn initial_cluster_flag(&self) -> String {
        self.initial_cluster
            .iter()
            .map(|(name, url)| format!("{name}={url}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The ConfigMap the member pods load their bootstrap flags from.
pub fn bootstrap_config_map(cluster: &LodestoneCluster, names: &Names, config: &BootstrapConfig) -> ConfigMap {
    ConfigMap {
        metadata: owned_meta(cluster, &names.bootstrap, "store"),
        data: Some(BTreeMap::from([
            (KEY_CLUSTER.to_string(), config.initial_cluster_flag()),
            (KEY_STATE.to_string(), config.state.as_str().to_string()),
            (KEY_TOKEN.to_string(), config.token.clone()),
        ])),
        ..ConfigMap::default()
    }
}
