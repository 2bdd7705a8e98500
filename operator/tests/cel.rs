//! The CRD's CEL validation rules, evaluated client-side by kube's CEL evaluator (the
//! Kubernetes CEL libraries, `quantity()` included) against the shipped samples and against
//! updates that must be refused. A rule that does not compile fails here, not at install time.

use std::path::PathBuf;

use kube::core::cel::{validate_cel, validate_cel_update};
use lodestone_operator::crd::{LodestoneCluster, LodestoneSnapshot, VolumeSpec};

fn samples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/samples")
}

fn sample(name: &str) -> LodestoneCluster {
    let text = std::fs::read_to_string(samples_dir().join(name)).expect("sample exists");
    serde_saphyr::from_str(&text).expect("sample parses as a LodestoneCluster")
}

fn messages(err: kube::core::cel::ValidationErrors) -> String {
    format!("{err:?}")
}

#[test]
fn every_cluster_sample_passes_the_creation_rules() {
    let mut seen = 0;
    for entry in std::fs::read_dir(samples_dir()).expect("deploy/samples exists") {
        let path = entry.expect("dir entry").path();
        let text = std::fs::read_to_string(&path).expect("readable sample");
        if text.contains("kind: LodestoneCluster") {
            let cluster: LodestoneCluster = serde_saphyr::from_str(&text).expect("sample parses");
            validate_cel(&cluster).unwrap_or_else(|e| panic!("{}: {}", path.display(), messages(e)));
            // An unchanged object passes the transition rules too.
            validate_cel_update(&cluster, &cluster).unwrap_or_else(|e| panic!("{}: {}", path.display(), messages(e)));
            seen += 1;
        } else if text.contains("kind: LodestoneSnapshot") {
            let snapshot: LodestoneSnapshot = serde_saphyr::from_str(&text).expect("sample parses");
            validate_cel(&snapshot).unwrap_or_else(|e| panic!("{}: {}", path.display(), messages(e)));
            seen += 1;
        }
    }
    assert!(seen >= 4, "expected the cluster and snapshot samples, saw {seen}");
}

#[test]
fn replicas_are_bounded() {
    let mut cluster = sample("lodestonecluster-3-members.yaml");
    for bad in [0, -1, 8, 100] {
        cluster.spec.replicas = bad;
        let err = validate_cel(&cluster).expect_err("out-of-range replicas must be refused");
        assert!(
            messages(err).contains("replicas must be between 1 and 7"),
            "replicas {bad}"
        );
    }
    for good in [1, 3, 7] {
        cluster.spec.replicas = good;
        validate_cel(&cluster).expect("replicas within bounds");
    }
}

#[test]
fn empty_version_is_refused() {
    let mut cluster = sample("lodestonecluster-3-members.yaml");
    cluster.spec.version = String::new();
    let err = validate_cel(&cluster).expect_err("empty version");
    assert!(messages(err).contains("version must not be empty"));
}

#[test]
fn wal_volume_cannot_be_added_or_removed() {
    let with_wal = sample("lodestonecluster-separate-wal.yaml");
    assert!(with_wal.spec.storage.wal.is_some());
    let mut without_wal = with_wal.clone();
    without_wal.spec.storage.wal = None;

    let err = validate_cel_update(&without_wal, &with_wal).expect_err("removing the WAL volume");
    assert!(messages(err).contains("storage.wal cannot be added or removed after creation"));
    let err = validate_cel_update(&with_wal, &without_wal).expect_err("adding a WAL volume");
    assert!(messages(err).contains("storage.wal cannot be added or removed after creation"));
    validate_cel_update(&with_wal, &with_wal).expect("keeping the WAL volume");
    validate_cel_update(&without_wal, &without_wal).expect("keeping no WAL volume");
}

#[test]
fn storage_can_grow_but_not_shrink() {
    let old = sample("lodestonecluster-separate-wal.yaml");
    let resize = |data: &str, wal: &str| {
        let mut new = old.clone();
        new.spec.storage.data.size = data.to_string();
        new.spec.storage.wal = Some(VolumeSpec {
            size: wal.to_string(),
            ..old.spec.storage.wal.clone().expect("sample has a WAL volume")
        });
        new
    };
    let data = old.spec.storage.data.size.clone();
    let wal = old.spec.storage.wal.as_ref().map(|w| w.size.clone()).expect("wal");
    assert_eq!(
        (data.as_str(), wal.as_str()),
        ("20Gi", "8Gi"),
        "the test assumes the sample's sizes"
    );

    validate_cel_update(&resize("40Gi", "8Gi"), &old).expect("data grows");
    validate_cel_update(&resize("20Gi", "16Gi"), &old).expect("wal grows");
    // Same size in another unit is not a shrink.
    validate_cel_update(&resize("20480Mi", "8Gi"), &old).expect("same size, other unit");
    for (d, w) in [("10Gi", "8Gi"), ("20Gi", "4Gi"), ("19000Mi", "8Gi")] {
        let err = validate_cel_update(&resize(d, w), &old).expect_err("shrinking");
        assert!(messages(err).contains("storage size cannot shrink"), "{d} {w}");
    }
}

#[test]
fn tls_cannot_be_added_or_removed_and_needs_secret_names() {
    let with_tls = sample("lodestonecluster-tls.yaml");
    let mut without_tls = with_tls.clone();
    without_tls.spec.tls = None;
    let err = validate_cel_update(&with_tls, &without_tls).expect_err("adding TLS");
    assert!(messages(err).contains("tls cannot be added or removed after creation"));
    let err = validate_cel_update(&without_tls, &with_tls).expect_err("removing TLS");
    assert!(messages(err).contains("tls cannot be added or removed after creation"));
    let mut client_only = with_tls.clone();
    client_only.spec.tls.as_mut().unwrap().peer = None;
    let err = validate_cel_update(&client_only, &with_tls).expect_err("dropping peer TLS");
    assert!(messages(err).contains("tls.client and tls.peer cannot be added or removed after creation"));
    // Another Secret for the same side is fine (a rotation to a new Secret).
    let mut renamed = with_tls.clone();
    renamed.spec.tls.as_mut().unwrap().client.as_mut().unwrap().secret_name = "other".into();
    validate_cel_update(&renamed, &with_tls).expect("another client Secret");
    let mut empty = with_tls.clone();
    empty.spec.tls.as_mut().unwrap().client.as_mut().unwrap().secret_name = String::new();
    let err = validate_cel(&empty).expect_err("empty secret name");
    assert!(messages(err).contains("secretName must not be empty"));
}

#[test]
fn issuer_refs_name_an_issuer_or_a_cluster_issuer() {
    let mut cluster = sample("lodestonecluster-cert-manager.yaml");
    let issuer = |c: &mut LodestoneCluster| {
        c.spec
            .tls
            .as_mut()
            .unwrap()
            .client
            .as_mut()
            .unwrap()
            .issuer_ref
            .as_mut()
            .unwrap()
            .clone()
    };
    let set = |c: &mut LodestoneCluster, kind: Option<&str>, name: &str| {
        let i = c
            .spec
            .tls
            .as_mut()
            .unwrap()
            .client
            .as_mut()
            .unwrap()
            .issuer_ref
            .as_mut()
            .unwrap();
        i.kind = kind.map(str::to_string);
        i.name = name.to_string();
    };
    assert_eq!(issuer(&mut cluster).name, "lodestone-ca");
    set(&mut cluster, Some("ClusterIssuer"), "ca");
    validate_cel(&cluster).expect("a ClusterIssuer");
    set(&mut cluster, Some("Vault"), "ca");
    let err = validate_cel(&cluster).expect_err("an unknown kind");
    assert!(messages(err).contains("issuerRef.kind must be Issuer or ClusterIssuer"));
    set(&mut cluster, None, "");
    let err = validate_cel(&cluster).expect_err("an empty name");
    assert!(messages(err).contains("issuerRef.name must not be empty"));
}
