//! cert-manager `Certificate`s for `spec.tls.*.issuerRef`: cert-manager issues the members'
//! certificates into the Secrets the StatefulSet mounts, and renews them there (the store
//! reloads renewed files on the next connection).
//!
//! cert-manager's types are not a dependency: a Certificate is built as a `DynamicObject`
//! with the few fields this needs, and applied like every other owned object.

use kube::api::{ApiResource, DynamicObject};
use serde_json::json;

use super::owned_meta;
use crate::crd::{IssuerRef, LodestoneCluster, TlsSecret};
use crate::names::Names;

/// cert-manager's Certificate resource.
pub fn certificate_resource() -> ApiResource {
    ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    }
}

/// Which URLs a certificate serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Peer,
}

/// The DNS names a member's certificate must carry: every member through the headless
/// Service (as peers and the operator reach them), the client Service, and loopback (a
/// member's own health checks and `kubectl exec` clients).
fn dns_names(names: &Names) -> Vec<String> {
    let peers = format!("{}.{}.svc", names.peer_service, names.namespace);
    let client = &names.cluster;
    vec![
        format!("*.{peers}"),
        format!("*.{peers}.cluster.local"),
        client.clone(),
        format!("{client}.{}", names.namespace),
        format!("{client}.{}.svc", names.namespace),
        format!("{client}.{}.svc.cluster.local", names.namespace),
        "localhost".to_string(),
    ]
}

fn issuer(i: &IssuerRef) -> serde_json::Value {
    json!({
        "name": i.name,
        "kind": i.kind.as_deref().unwrap_or("Issuer"),
        "group": i.group.as_deref().unwrap_or("cert-manager.io"),
    })
}

/// The Certificate that has `tls.issuer_ref` issue `tls.secret_name` for `side`, named like
/// the Secret; `None` when the Secret is provided instead.
pub fn certificate(cluster: &LodestoneCluster, names: &Names, side: Side, tls: &TlsSecret) -> Option<DynamicObject> {
    let issuer_ref = tls.issuer_ref.as_ref()?;
    let resource = certificate_resource();
    let mut object = DynamicObject::new(&tls.secret_name, &resource);
    object.metadata = owned_meta(cluster, &tls.secret_name, "tls");
    // The client certificate is also the operator's: with etcd auth on, its CN is the user.
    let common_name = match side {
        Side::Client => "root".to_string(),
        Side::Peer => format!("{}-peer", names.cluster),
    };
    object.data = json!({
        "spec": {
            "secretName": tls.secret_name,
            "issuerRef": issuer(issuer_ref),
            "commonName": common_name,
            "dnsNames": dns_names(names),
            "ipAddresses": ["127.0.0.1"],
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            "privateKey": { "algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always" },
            "secretTemplate": { "labels": crate::names::labels(cluster, "tls") },
        }
    });
    Some(object)
}

/// Every Certificate the spec asks for, one per Secret (a Secret shared by both sides gets
/// the client's, whose CN the operator needs).
pub fn certificates(cluster: &LodestoneCluster, names: &Names) -> Vec<DynamicObject> {
    let Some(tls) = cluster.spec.tls.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<DynamicObject> = Vec::new();
    for (side, secret) in [(Side::Client, &tls.client), (Side::Peer, &tls.peer)] {
        if let Some(secret) = secret
            && !out
                .iter()
                .any(|c| c.metadata.name.as_deref() == Some(secret.secret_name.as_str()))
            && let Some(c) = certificate(cluster, names, side, secret)
        {
            out.push(c);
        }
    }
    out
}
