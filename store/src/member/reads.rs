//! Read barriers. A linearizable read waits for a read index confirmed by a quorum and for
//! this member to apply it; the ReadIndex rounds are batched like etcd's read loop: one round
//! serves every read that was waiting when it started. Reads that arrive during a round
//! wait for the next one, because the running round may have started before their writes
//! were acknowledged. A serializable read only waits until a restarted member is back where
//! it was.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::Member;
use super::route::{Leader, Reroute, answer};
use crate::error::{Result, StoreError};
use crate::proto::lodestone::ReadIndexRequest;

type Waiter = oneshot::Sender<Result<u64>>;

/// The queue of reads waiting for the next ReadIndex round.
pub struct ReadBarrier {
    tx: mpsc::UnboundedSender<Waiter>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Waiter>>>,
}

impl ReadBarrier {
    pub fn new() -> ReadBarrier {
        let (tx, rx) = mpsc::unbounded_channel();
        ReadBarrier {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// The index this member must apply before serving a linearizable read.
    async fn read_index(&self) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}

impl Default for ReadBarrier {
    fn default() -> Self {
        Self::new()
    }
}

/// The read loop: one ReadIndex round at a time, for everyone waiting; ends at shutdown.
pub(super) async fn run(member: Arc<Member>) {
    let Some(mut rx) = member.reads.rx.lock().expect("read barrier lock").take() else {
        return;
    };
    loop {
        let first = tokio::select! {
            _ = member.shutdown.cancelled() => return,
            w = rx.recv() => match w { Some(w) => w, None => return },
        };
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        // Leadership may move between finding the leader and asking it: ask the new one, a
        // few times, then let the reads fail as etcd's do.
        let round = member.to_leader(Reroute::NotLeaderAtMost(3), |leader| async {
            match leader {
                Leader::Here => member.local_read_index().await,
                Leader::Peer(mut c) => answer(c.read_index(ReadIndexRequest {}).await).map(|r| r.read_index),
            }
        });
        let result = tokio::time::timeout(member.cfg.request_timeout(), round)
            .await
            .unwrap_or(Err(StoreError::Timeout));
        crate::metrics::read_index_round(waiters.len());
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

impl Member {
    /// Returns once this member's state reflects every write acknowledged before the call
    /// (ReadIndex through the leader, shared by concurrent reads).
    pub async fn linearizable_barrier(&self) -> Result<()> {
        let index = tokio::time::timeout(self.cfg.request_timeout(), self.reads.read_index())
            .await
            .unwrap_or(Err(StoreError::Timeout))?;
        self.wait_applied(index).await
    }

    /// ReadIndex on the leader: confirm leadership with a quorum, return the index to apply.
    pub async fn local_read_index(&self) -> Result<u64> {
        self.consensus.read_index().await
    }

    /// Waits until the state machine has applied `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<()> {
        let mut rx = self.sm.applied();
        let wait = async {
            while *rx.borrow_and_update() < index {
                if rx.changed().await.is_err() {
                    return Err(StoreError::Stopped);
                }
            }
            Ok(())
        };
        tokio::time::timeout(self.cfg.request_timeout(), wait)
            .await
            .unwrap_or(Err(StoreError::TimeoutWaitAppliedIndex))
    }

    /// Serializable reads may be stale, but never older than before a restart.
    pub async fn serializable_barrier(&self) -> Result<()> {
        self.wait_applied(self.recovered_to).await
    }
}
