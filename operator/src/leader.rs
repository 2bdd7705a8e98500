//! Leader election: several operator replicas may run; only the holder of a
//! `coordination.k8s.io` Lease reconciles. Built on `kube-lease-manager` (server-side apply on
//! the Lease, so two replicas cannot both take it).

use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Seconds a lease stays valid without renewal, and the grace before it is renewed.
const LEASE_SECONDS: u64 = 15;
const GRACE_SECONDS: u64 = 5;

/// A running election.
pub struct Election {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Election {
    pub async fn start(
        client: kube::Client,
        namespace: &str,
        lease: &str,
        identity: &str,
    ) -> Result<Self, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, lease)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(GRACE_SECONDS)
            .with_field_manager("lodestone-operator")
            .build()
            .await?;
        let (state, task) = manager.watch().await;
        Ok(Self { state, task })
    }

    /// Waits until this replica holds the lease. Returns false if the election stopped.
    pub async fn acquired(&mut self) -> bool {
        loop {
            if *self.state.borrow_and_update() {
                return true;
            }
            if self.state.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Waits until this replica loses the lease (or the election stops).
    pub async fn lost(&mut self) {
        loop {
            if !*self.state.borrow_and_update() {
                return;
            }
            if self.state.changed().await.is_err() {
                return;
            }
        }
    }

    /// Releases the lease so another replica can take over at once.
    pub async fn release(self) {
        drop(self.state);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("released the leader lease"),
            Ok(Err(err)) => tracing::warn!(error = %err, "failed to release the leader lease"),
            Err(err) => tracing::warn!(error = %err, "leader election task failed"),
        }
    }
}
