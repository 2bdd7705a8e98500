use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::fixtures;
use crate::names::*;

fn names(cluster: &LodestoneCluster) -> Names {
    Names::of(cluster)
}

#[test]
fn statefulset_leaves_ordering_to_the_operator() {
    let cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let sts = statefulset(&cluster, &names(&cluster), 3);
    let spec = sts.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(
        spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("OnDelete")
    );
    assert_eq!(spec.service_name.as_deref(), Some("example-peer"));
    let retention = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .expect("retention policy");
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
    assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
    assert_eq!(spec.selector.match_labels.as_ref(), Some(&selector_labels(&cluster)));
    let owner = &sts.metadata.owner_references.as_ref().expect("owner reference")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("LodestoneCluster", "example", Some(true))
    );
    let labels = sts.metadata.labels.as_ref().expect("labels");
    for key in [
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/version",
    ] {
        assert!(labels.contains_key(key), "missing label {key}");
    }
}

#[test]
fn data_only_layout_has_one_claim_and_no_wal_dir() {
    let cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let sts = statefulset(&cluster, &names(&cluster), 3);
    let spec = sts.spec.as_ref().expect("spec");
    let claims: Vec<_> = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .map(|c| c.metadata.name.as_deref())
        .collect();
    assert_eq!(claims, [Some("data")]);
    let container = &spec.template.spec.as_ref().expect("pod").containers[0];
    assert!(env(container, "LODESTONE_WAL_DIR").is_none());
    assert_eq!(env(container, "LODESTONE_DATA_DIR").as_deref(), Some(DATA_DIR));
    assert_eq!(mount_path(container, "data").as_deref(), Some(DATA_DIR));
}

#[test]
fn separate_wal_volume_is_mounted_at_the_wal_dir() {
    let cluster = fixtures::sample("lodestonecluster-separate-wal.yaml");
    let sts = statefulset(&cluster, &names(&cluster), 3);
    let spec = sts.spec.as_ref().expect("spec");
    let claims = spec.volume_claim_templates.as_ref().expect("claims");
    assert_eq!(claims.len(), 2);
    let wal = claims
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("wal"))
        .expect("wal claim");
    let wal_spec = wal.spec.as_ref().expect("claim spec");
    assert_eq!(wal_spec.storage_class_name.as_deref(), Some("fast-ssd"));
    assert_eq!(
        wal_spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.as_str()),
        Some("8Gi")
    );
    let container = &spec.template.spec.as_ref().expect("pod").containers[0];
    assert_eq!(mount_path(container, "wal").as_deref(), Some(WAL_DIR));
    assert_eq!(env(container, "LODESTONE_WAL_DIR").as_deref(), Some(WAL_DIR));
    // Store options reach the store as its etcd-named flags.
    assert_eq!(
        env(container, "LODESTONE_QUOTA_BACKEND_BYTES").as_deref(),
        Some("8589934592")
    );
    assert_eq!(env(container, "LODESTONE_SNAPSHOT_COUNT").as_deref(), Some("50000"));
    assert_eq!(env(container, "LODESTONE_ELECTION_TIMEOUT").as_deref(), Some("1000"));
    assert_eq!(
        env(container, "LODESTONE_AUTO_COMPACTION_MODE").as_deref(),
        Some("periodic")
    );
    assert_eq!(
        env(container, "LODESTONE_AUTO_COMPACTION_RETENTION").as_deref(),
        Some("1h")
    );
}

#[test]
fn member_identity_comes_from_the_pod_name() {
    let cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let sts = statefulset(&cluster, &names(&cluster), 3);
    let container = &sts
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod")
        .containers[0];
    let pod_name = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_NAME")
        .expect("POD_NAME");
    assert_eq!(
        pod_name
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.name")
    );
    assert_eq!(env(container, "LODESTONE_NAME").as_deref(), Some("$(POD_NAME)"));
    assert_eq!(
        env(container, "LODESTONE_INITIAL_ADVERTISE_PEER_URLS").as_deref(),
        Some("http://$(POD_NAME).example-peer.default.svc:2380")
    );
    assert_eq!(
        env(container, "LODESTONE_ADVERTISE_CLIENT_URLS").as_deref(),
        Some("http://$(POD_NAME).example-peer.default.svc:2379")
    );
    // POD_NAME must come before the variables that expand it.
    let order: Vec<_> = container.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert_eq!(order[0], "POD_NAME");
    let from = container.env_from.as_ref().expect("envFrom")[0]
        .config_map_ref
        .as_ref()
        .expect("configmap");
    assert_eq!(from.name, "example-bootstrap");
}

#[test]
fn pods_are_hardened_and_probed() {
    let cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let sts = statefulset(&cluster, &names(&cluster), 3);
    let pod = sts.spec.as_ref().expect("spec").template.spec.clone().expect("pod");
    let security = pod.security_context.as_ref().expect("pod security");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_ne!(security.run_as_user, Some(0));
    assert_eq!(pod.automount_service_account_token, Some(false));
    let container = &pod.containers[0];
    let sc = container.security_context.as_ref().expect("container security");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = p.as_ref().and_then(|p| p.http_get.as_ref()).expect("http probe");
        assert_eq!(get.port, IntOrString::String("metrics".into()));
        get.path.clone()
    };
    assert_eq!(path(&container.liveness_probe).as_deref(), Some("/livez"));
    assert_eq!(path(&container.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(path(&container.startup_probe).as_deref(), Some("/livez"));
    let ports: Vec<_> = container
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [(Some("client"), 2379), (Some("peer"), 2380), (Some("metrics"), 2381)]
    );
    assert_eq!(container.resources, cluster.spec.resources);
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/lodestone-dev/lodestone:0.1.0")
    );
}

#[test]
fn default_placement_prefers_distinct_nodes_and_user_affinity_wins() {
    let mut cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let pod = |c: &LodestoneCluster| {
        statefulset(c, &names(c), 3)
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod")
    };
    let affinity = pod(&cluster).affinity.expect("default affinity");
    let preferred = affinity
        .pod_anti_affinity
        .and_then(|a| a.preferred_during_scheduling_ignored_during_execution)
        .expect("soft anti-affinity");
    assert_eq!(preferred[0].pod_affinity_term.topology_key, "kubernetes.io/hostname");
    assert!(affinity.pod_affinity.is_none() && affinity.node_affinity.is_none());

    let user = k8s_openapi::api::core::v1::Affinity {
        node_affinity: Some(Default::default()),
        ..Default::default()
    };
    cluster.spec.scheduling = Some(crate::crd::SchedulingSpec {
        affinity: Some(user.clone()),
        node_selector: Some([("disk".to_string(), "ssd".to_string())].into()),
        ..Default::default()
    });
    let spec = pod(&cluster);
    assert_eq!(spec.affinity, Some(user));
    assert_eq!(
        spec.node_selector.and_then(|n| n.get("disk").cloned()).as_deref(),
        Some("ssd")
    );
}

#[test]
fn services_and_pdb() {
    let cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let n = names(&cluster);
    let peer = peer_service(&cluster, &n).spec.expect("spec");
    assert_eq!(peer.cluster_ip.as_deref(), Some("None"));
    assert_eq!(peer.publish_not_ready_addresses, Some(true));
    assert!(peer.ports.iter().flatten().any(|p| p.port == PEER_PORT));
    let client = client_service(&cluster, &n);
    assert_eq!(client.metadata.name.as_deref(), Some("example"));
    let client = client.spec.expect("spec");
    assert_eq!(client.publish_not_ready_addresses, None);
    assert!(client.ports.iter().flatten().any(|p| p.port == CLIENT_PORT));
    assert_eq!(client.selector.as_ref(), Some(&selector_labels(&cluster)));
    let pdb = pod_disruption_budget(&cluster, &n, 3).spec.expect("spec");
    assert_eq!(pdb.min_available, Some(IntOrString::Int(2)));
    assert_eq!(pdb.max_unavailable, None);
    assert_eq!(
        pdb.selector.and_then(|s| s.match_labels),
        Some(selector_labels(&cluster))
    );
    // A quorum of the voters, whatever their number: five members may lose two, not one.
    for (voters, min) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)] {
        let pdb = pod_disruption_budget(&cluster, &n, voters).spec.expect("spec");
        assert_eq!(pdb.min_available, Some(IntOrString::Int(min)), "{voters} voters");
    }
    let sa = service_account(&cluster, &n);
    assert_eq!(sa.automount_service_account_token, Some(false));
}

#[test]
fn bootstrap_config_round_trips_through_its_config_map() {
    let cluster = fixtures::sample("lodestonecluster-3-members.yaml");
    let n = names(&cluster);
    let config = BootstrapConfig::founding(&n, 3, "uid-1");
    assert_eq!(config.token, "default-example-uid-1");
    assert_eq!(
        config.initial_cluster[2],
        (
            "example-2".into(),
            "http://example-2.example-peer.default.svc:2380".into()
        )
    );
    let cm = bootstrap_config_map(&cluster, &n, &config);
    let data = cm.data.as_ref().expect("data");
    assert_eq!(data["LODESTONE_INITIAL_CLUSTER_STATE"], "new");
    assert_eq!(
        data["LODESTONE_INITIAL_CLUSTER"],
        "example-0=http://example-0.example-peer.default.svc:2380,example-1=http://example-1.example-peer.default.svc:2380,example-2=http://example-2.example-peer.default.svc:2380"
    );
    assert_eq!(BootstrapConfig::from_config_map(&cm), Some(config.clone()));
    let existing = BootstrapConfig {
        state: ClusterState::Existing,
        ..config
    };
    assert_eq!(
        BootstrapConfig::from_config_map(&bootstrap_config_map(&cluster, &n, &existing)),
        Some(existing)
    );
}

fn env(container: &k8s_openapi::api::core::v1::Container, name: &str) -> Option<String> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

fn mount_path(container: &k8s_openapi::api::core::v1::Container, name: &str) -> Option<String> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == name)
        .map(|m| m.mount_path.clone())
}

#[test]
fn tls_secrets_become_https_urls_mounted_files_and_etcd_flags() {
    let cluster = fixtures::sample("lodestonecluster-tls.yaml");
    let names = names(&cluster);
    let sts = statefulset(&cluster, &names, 3);
    let pod = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    let host = "$(POD_NAME).example-tls-peer.default.svc";
    for (var, value) in [
        ("LODESTONE_LISTEN_CLIENT_URLS", "https://0.0.0.0:2379".to_string()),
        ("LODESTONE_LISTEN_PEER_URLS", "https://0.0.0.0:2380".to_string()),
        ("LODESTONE_ADVERTISE_CLIENT_URLS", format!("https://{host}:2379")),
        ("LODESTONE_INITIAL_ADVERTISE_PEER_URLS", format!("https://{host}:2380")),
        // Probes and scrapes stay on plain HTTP.
        ("LODESTONE_LISTEN_METRICS_URLS", "http://0.0.0.0:2381".to_string()),
        ("LODESTONE_CERT_FILE", format!("{CLIENT_TLS_DIR}/tls.crt")),
        ("LODESTONE_KEY_FILE", format!("{CLIENT_TLS_DIR}/tls.key")),
        ("LODESTONE_TRUSTED_CA_FILE", format!("{CLIENT_TLS_DIR}/ca.crt")),
        ("LODESTONE_CLIENT_CERT_AUTH", "true".to_string()),
        ("LODESTONE_PEER_CERT_FILE", format!("{PEER_TLS_DIR}/tls.crt")),
        ("LODESTONE_PEER_KEY_FILE", format!("{PEER_TLS_DIR}/tls.key")),
        ("LODESTONE_PEER_TRUSTED_CA_FILE", format!("{PEER_TLS_DIR}/ca.crt")),
        ("LODESTONE_PEER_CLIENT_CERT_AUTH", "true".to_string()),
    ] {
        assert_eq!(env(container, var), Some(value), "{var}");
    }
    let volumes = pod.volumes.as_ref().unwrap();
    for (volume, secret, dir) in [
        ("client-tls", "example-tls-client", CLIENT_TLS_DIR),
        ("peer-tls", "example-tls-peer", PEER_TLS_DIR),
    ] {
        let v = volumes.iter().find(|v| v.name == volume).expect("secret volume");
        let s = v.secret.as_ref().expect("a Secret volume");
        assert_eq!(s.secret_name.as_deref(), Some(secret));
        assert_eq!(s.default_mode, Some(0o440), "readable by the store's group only");
        let m = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume)
            .expect("mounted");
        assert_eq!((m.mount_path.as_str(), m.read_only), (dir, Some(true)));
    }
    // The founding members reach each other on https peer URLs.
    let boot = BootstrapConfig::founding(&names, 3, "uid");
    assert!(boot.initial_cluster.iter().all(|(_, url)| url.starts_with("https://")));
    assert_eq!(
        names.client_url("example-tls-0"),
        "https://example-tls-0.example-tls-peer.default.svc:2379"
    );

    // Without spec.tls nothing of it appears.
    let plain = fixtures::sample("lodestonecluster-3-members.yaml");
    let sts = statefulset(&plain, &Names::of(&plain), 3);
    let pod = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert!(env(&pod.containers[0], "LODESTONE_CERT_FILE").is_none());
    assert!(pod.volumes.as_ref().unwrap().iter().all(|v| v.secret.is_none()));
}

#[test]
fn cert_manager_issues_the_secrets_named_in_spec_tls() {
    use kube::Resource;

    let cluster = fixtures::sample("lodestonecluster-cert-manager.yaml");
    let names = Names::of(&cluster);
    let certs = super::certificates(&cluster, &names);
    assert_eq!(certs.len(), 2);
    let by_name = |n: &str| certs.iter().find(|c| c.metadata.name.as_deref() == Some(n)).expect(n);
    for (name, cn) in [("example-cm-client", "root"), ("example-cm-peer", "example-cm-peer")] {
        let c = by_name(name);
        let types = c.types.as_ref().expect("apiVersion and kind");
        assert_eq!(
            (types.api_version.as_str(), types.kind.as_str()),
            ("cert-manager.io/v1", "Certificate")
        );
        assert_eq!(c.metadata.namespace.as_deref(), Some("default"));
        let owner = &c.metadata.owner_references.as_ref().expect("owned")[0];
        assert_eq!(owner.kind, LodestoneCluster::kind(&()));
        let spec = &c.data["spec"];
        assert_eq!(spec["secretName"], name);
        assert_eq!(spec["commonName"], cn);
        assert_eq!(
            spec["issuerRef"],
            serde_json::json!({"name": "lodestone-ca", "kind": "Issuer", "group": "cert-manager.io"})
        );
        let dns: Vec<&str> = spec["dnsNames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        // Every member as peers and the operator dial it, and the client Service.
        assert!(dns.contains(&"*.example-cm-peer.default.svc"), "{dns:?}");
        assert!(dns.contains(&"example-cm.default.svc"), "{dns:?}");
        assert_eq!(
            names.client_url("example-cm-0"),
            "https://example-cm-0.example-cm-peer.default.svc:2379",
            "a name the certificate covers"
        );
        let usages = spec["usages"].as_array().unwrap();
        assert!(usages.contains(&"server auth".into()) && usages.contains(&"client auth".into()));
    }

    // One Certificate for a Secret both sides share; none for provided Secrets.
    let mut shared = cluster.clone();
    let tls = shared.spec.tls.as_mut().unwrap();
    tls.peer.as_mut().unwrap().secret_name = "example-cm-client".into();
    let certs = super::certificates(&shared, &Names::of(&shared));
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].data["spec"]["commonName"], "root");
    let provided = fixtures::sample("lodestonecluster-tls.yaml");
    assert!(super::certificates(&provided, &Names::of(&provided)).is_empty());
    let plain = fixtures::sample("lodestonecluster-3-members.yaml");
    assert!(super::certificates(&plain, &Names::of(&plain)).is_empty());
}
