//! The status step: what to write to `status` (through the platform), only when it changed.

use serde_json::json;

use crate::Error;
use crate::crd::{LodestoneCluster, LodestoneClusterStatus};

/// Whether `planned` differs from what the resource already reports.
pub fn changed(cluster: &LodestoneCluster, planned: &LodestoneClusterStatus) -> bool {
    cluster.status.as_ref() != Some(planned)
}

/// The merge patch that turns the reported status into `planned`. Fields that disappear
/// (a leader no longer known, say) are sent as `null`, or a merge patch would keep them.
pub fn patch(cluster: &LodestoneCluster, planned: &LodestoneClusterStatus) -> Result<serde_json::Value, Error> {
    let mut new = serde_json::to_value(planned).map_err(Error::Serialize)?;
    if let (Some(old), Some(new)) = (cluster.status.as_ref(), new.as_object_mut()) {
        let old = serde_json::to_value(old).map_err(Error::Serialize)?;
        for key in old.as_object().into_iter().flat_map(|o| o.keys()) {
            new.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    Ok(json!({ "status": new }))
}
