//! The two Services and the ServiceAccount of a cluster.

use k8s_openapi::api::core::v1::{Service, ServiceAccount, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::owned_meta;
use crate::crd::LodestoneCluster;
use crate::names::{CLIENT_PORT, METRICS_PORT, Names, PEER_PORT, selector_labels};

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".to_string()),
        app_protocol: Some(if name == "metrics" { "http" } else { "kubernetes.io/h2c" }.to_string()),
        ..ServicePort::default()
    }
}

/// Headless Service giving every member `<pod>.<cluster>-peer.<namespace>.svc`. It publishes
/// addresses of pods that are not ready yet, because members must reach each other to become
/// ready at all.
pub fn peer_service(cluster: &LodestoneCluster, names: &Names) -> Service {
    Service {
        metadata: owned_meta(cluster, &names.peer_service, "peer"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cluster)),
            ports: Some(vec![port("client", CLIENT_PORT), port("peer", PEER_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The Service clients use: `<cluster>.<namespace>.svc:2379`, ready members only.
pub fn client_service(cluster: &LodestoneCluster, names: &Names) -> Service {
    Service {
        metadata: owned_meta(cluster, &names.cluster, "client"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector_labels(cluster)),
            ports: Some(vec![port("client", CLIENT_PORT), port("metrics", METRICS_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The members' own identity. Members never call the Kubernetes API, so no token is mounted.
pub fn service_account(cluster: &LodestoneCluster, names: &Names) -> ServiceAccount {
    ServiceAccount {
        metadata: owned_meta(cluster, &names.cluster, "store"),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}
