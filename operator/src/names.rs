//! The names, ports and labels of a cluster's Kubernetes objects: the contract between the
//! builders, the observe step, the member probe and anything that finds a member by name.
//! Pure string work; nothing here builds an object or talks to the API server.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::crd::LodestoneCluster;

/// Client port of every member (etcd's).
pub const CLIENT_PORT: i32 = 2379;
/// Peer (Raft) port of every member (etcd's).
pub const PEER_PORT: i32 = 2380;
/// Metrics and health port of every member.
pub const METRICS_PORT: i32 = 2381;
/// Where the data volume is mounted; the store's `--data-dir`.
pub const DATA_DIR: &str = "/var/lib/lodestone/data";
/// Where the separate WAL volume is mounted; the store's `--wal-dir`.
pub const WAL_DIR: &str = "/var/lib/lodestone/wal";
/// Where the client TLS Secret is mounted (`tls.crt`, `tls.key`, `ca.crt`).
pub const CLIENT_TLS_DIR: &str = "/etc/lodestone/tls/client";
/// Where the peer TLS Secret is mounted.
pub const PEER_TLS_DIR: &str = "/etc/lodestone/tls/peer";

/// Names of the objects owned by one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The cluster's name: also the StatefulSet, client Service, PDB and ServiceAccount name.
    pub cluster: String,
    pub namespace: String,
    /// Headless Service that gives each member a stable DNS name.
    pub peer_service: String,
    /// ConfigMap holding the bootstrap decision.
    pub bootstrap: String,
    /// Secret with the client certificate, when clients use https.
    pub client_tls_secret: Option<String>,
    /// Secret with the peer certificate, when members talk over https.
    pub peer_tls_secret: Option<String>,
}

impl Names {
    pub fn of(cluster: &LodestoneCluster) -> Self {
        let name = cluster.name_any();
        let tls = cluster.spec.tls.as_ref();
        Self {
            peer_service: format!("{name}-peer"),
            bootstrap: format!("{name}-bootstrap"),
            namespace: cluster.namespace().unwrap_or_default(),
            cluster: name,
            client_tls_secret: tls.and_then(|t| t.client.as_ref()).map(|s| s.secret_name.clone()),
            peer_tls_secret: tls.and_then(|t| t.peer.as_ref()).map(|s| s.secret_name.clone()),
        }
    }

    /// Pod name of the member at `ordinal`.
    pub fn pod(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.cluster)
    }

    /// The ordinal of one of this cluster's pods, from its name (`<cluster>-<n>`).
    pub fn ordinal(&self, pod: &str) -> Option<i32> {
        pod.strip_prefix(&self.cluster)?.strip_prefix('-')?.parse().ok()
    }

    /// The selector of the member pods, as a pod list takes it.
    pub fn selector(&self) -> String {
        selector_text(selector_labels_of(&self.cluster))
    }

    /// Stable DNS name of a member pod through the headless Service.
    pub fn pod_host(&self, pod: &str) -> String {
        format!("{pod}.{}.{}.svc", self.peer_service, self.namespace)
    }

    /// `https` when clients use TLS, else `http`.
    pub fn client_scheme(&self) -> &'static str {
        if self.client_tls_secret.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `https` when members talk over TLS, else `http`.
    pub fn peer_scheme(&self) -> &'static str {
        if self.peer_tls_secret.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn peer_url(&self, pod: &str) -> String {
        format!("{}://{}:{PEER_PORT}", self.peer_scheme(), self.pod_host(pod))
    }

    pub fn client_url(&self, pod: &str) -> String {
        format!("{}://{}:{CLIENT_PORT}", self.client_scheme(), self.pod_host(pod))
    }
}

/// Labels that select the member pods of the cluster named `instance`. Never change them:
/// selectors are immutable.
fn selector_labels_of(instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "lodestone".to_string()),
        ("app.kubernetes.io/instance".to_string(), instance.to_string()),
    ])
}

/// Labels that select a cluster's member pods.
pub fn selector_labels(cluster: &LodestoneCluster) -> BTreeMap<String, String> {
    selector_labels_of(&cluster.name_any())
}

fn selector_text(labels: BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The selector in the string form of the scale subresource (and of a pod list).
pub fn selector_string(cluster: &LodestoneCluster) -> String {
    selector_text(selector_labels(cluster))
}

/// All recommended labels of an owned object.
pub fn labels(cluster: &LodestoneCluster, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(cluster);
    labels.insert("app.kubernetes.io/component".into(), component.into());
    labels.insert("app.kubernetes.io/part-of".into(), "lodestone".into());
    labels.insert("app.kubernetes.io/managed-by".into(), "lodestone-operator".into());
    labels.insert("app.kubernetes.io/version".into(), cluster.spec.version.clone());
    labels
}
