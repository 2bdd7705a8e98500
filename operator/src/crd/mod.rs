//! The custom resources the operator serves, and their CRD YAML.
//!
//! Types live in one module per API version; this module re-exports the current one and
//! renders the CustomResourceDefinitions that `lodestone-operator crd` prints and `crds/` holds.

pub mod v1alpha1;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use v1alpha1::*;

/// The API group of every Lodestone resource.
pub const GROUP: &str = "lodestone.dev";

/// All CRDs, in a stable order.
pub fn definitions() -> Vec<CustomResourceDefinition> {
    vec![LodestoneCluster::crd(), LodestoneSnapshot::crd()]
}

/// File name under `crds/` for each CRD, in the order of [`definitions`].
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// One CRD as YAML, as written to `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(crd)
}

/// Every CRD as one multi-document YAML stream (what `lodestone-operator crd` prints).
pub fn all_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for crd in definitions() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
