//! Snapshots that name a cluster which does not exist.
//!
//! A `LodestoneSnapshot` is saved by the reconcile of the cluster it names (`backup`), which
//! never runs for a cluster that does not exist: without this the snapshot would sit with no
//! status at all, and a typo in `spec.cluster` would go unnoticed. This small controller of
//! snapshots says so in the snapshot's status (`Pending`, with a message naming the missing
//! cluster). It is not `Failed`: the cluster may simply be created after its snapshot (one
//! `kubectl apply` of a directory), and its first reconcile then saves the snapshot and clears
//! the message.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::Context;
use super::backup::{finished, phase};
use crate::Error;
use crate::crd::{LodestoneSnapshot, LodestoneSnapshotStatus};

/// The status an unfinished snapshot of a missing cluster should have; `None` when nothing
/// is to be written (finished, its cluster exists, or the status says so already).
pub fn decide(snapshot: &LodestoneSnapshot, cluster_exists: bool) -> Option<LodestoneSnapshotStatus> {
    if finished(snapshot) || cluster_exists {
        return None;
    }
    let old = snapshot.status.clone().unwrap_or_default();
    let new = LodestoneSnapshotStatus {
        phase: Some(phase::PENDING.into()),
        message: Some(format!(
            "LodestoneCluster {:?} not found in namespace {:?}: the snapshot is saved once it exists (check spec.cluster)",
            snapshot.spec.cluster,
            snapshot.namespace().unwrap_or_default()
        )),
        ..old.clone()
    };
    (new != old).then_some(new)
}

/// One reconcile of one snapshot: only the missing-cluster case is handled here.
pub async fn reconcile(snapshot: Arc<LodestoneSnapshot>, ctx: Arc<Context>) -> Result<Action, Error> {
    if snapshot.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = snapshot.namespace().ok_or(Error::MissingNamespace)?;
    let exists = ctx.platform.cluster_exists(&namespace, &snapshot.spec.cluster).await?;
    if let Some(status) = decide(&snapshot, exists) {
        tracing::info!(snapshot = %snapshot.name_any(), cluster = %snapshot.spec.cluster, "snapshot names a cluster that does not exist");
        ctx.platform.write_snapshot_status(&snapshot, &status).await?;
    }
    // A cluster created later reconciles its snapshots itself (its watch of snapshots too).
    Ok(Action::await_change())
}

pub fn error_policy(snapshot: Arc<LodestoneSnapshot>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(snapshot = %snapshot.name_any(), error = %error, "snapshot reconcile failed");
    Action::requeue(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{LodestoneSnapshotSpec, PvcDestination, SnapshotDestination};

    fn snapshot(phase: Option<&str>) -> LodestoneSnapshot {
        let mut s = LodestoneSnapshot::new(
            "nightly",
            LodestoneSnapshotSpec {
                cluster: "exmaple".into(),
                destination: SnapshotDestination {
                    pvc: PvcDestination {
                        claim_name: "backups".into(),
                        path: None,
                    },
                },
            },
        );
        s.metadata.namespace = Some("prod".into());
        s.status = phase.map(|p| LodestoneSnapshotStatus {
            phase: Some(p.into()),
            ..Default::default()
        });
        s
    }

    #[test]
    fn a_snapshot_of_a_missing_cluster_is_pending_and_says_why() {
        let status = decide(&snapshot(None), false).expect("a status to write");
        assert_eq!(status.phase.as_deref(), Some(phase::PENDING));
        assert_eq!(
            status.message.as_deref(),
            Some(
                "LodestoneCluster \"exmaple\" not found in namespace \"prod\": the snapshot is saved once it exists (check spec.cluster)"
            )
        );
        // Written once: the same status again is no change.
        let mut again = snapshot(None);
        again.status = Some(status);
        assert_eq!(decide(&again, false), None);
    }

    #[test]
    fn a_snapshot_of_an_existing_cluster_or_a_finished_one_is_left_alone() {
        assert_eq!(decide(&snapshot(None), true), None);
        assert_eq!(decide(&snapshot(Some(phase::RUNNING)), true), None);
        assert_eq!(decide(&snapshot(Some(phase::SUCCEEDED)), false), None);
        assert_eq!(decide(&snapshot(Some(phase::FAILED)), false), None);
    }
}
