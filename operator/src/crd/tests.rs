use std::path::PathBuf;

use super::*;

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

/// `crds/` must hold exactly what the types generate. `UPDATE_EXPECT=1 cargo test` rewrites it.
#[test]
fn crds_directory_is_current() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    for crd in definitions() {
        let path = crds_dir().join(file_name(&crd));
        let generated = to_yaml(&crd).expect("CRD serializes");
        if update {
            std::fs::create_dir_all(crds_dir()).expect("create crds/");
            std::fs::write(&path, &generated).expect("write CRD");
            continue;
        }
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} is missing; run UPDATE_EXPECT=1 cargo test", path.display()));
        assert!(
            committed == generated,
            "{} is out of date with the Rust types; run UPDATE_EXPECT=1 cargo test -p lodestone-operator",
            path.display()
        );
    }
    let files: Vec<_> = std::fs::read_dir(crds_dir())
        .expect("crds/ exists")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8 name"))
        .collect();
    assert_eq!(
        files.len(),
        definitions().len(),
        "crds/ holds a file that no type generates: {files:?}"
    );
}

#[test]
fn the_printed_stream_holds_every_crd() {
    let all = all_yaml().expect("serializes");
    for crd in definitions() {
        assert!(all.contains(&to_yaml(&crd).expect("serializes")));
    }
    assert_eq!(all.matches("---\n").count(), 2);
}

#[test]
fn cluster_crd_has_names_subresources_and_columns() {
    let crd = LodestoneCluster::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("lodestoneclusters.lodestone.dev"));
    assert_eq!(crd.spec.group, GROUP);
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["lsc".to_string()][..]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let sub = version.subresources.as_ref().expect("subresources");
    assert!(sub.status.is_some());
    let scale = sub.scale.as_ref().expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(scale.label_selector_path.as_deref(), Some(".status.selector"));
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Replicas", "Ready", "Leader", "Version", "Phase", "Age"]);

    // The CEL rules are in the schema, at the fields they guard.
    let schema = serde_json::to_string(&version.schema).expect("schema serializes");
    for rule in [
        "self >= 1 && self <= 7",
        "has(self.wal) == has(oldSelf.wal)",
        "quantity(self).compareTo(quantity(oldSelf)) >= 0",
    ] {
        assert!(schema.contains(rule), "missing CEL rule {rule}");
    }
}

#[test]
fn snapshot_crd_has_names_and_status() {
    let crd = LodestoneSnapshot::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("lodestonesnapshots.lodestone.dev"));
    assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["lss".to_string()][..]));
    assert!(
        crd.spec.versions[0]
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
}
