//! Read barriers. A linearizable read waits for a read index confirmed by a quorum and for
//! this member to apply it; the ReadIndex rounds are batched like etcd's read loop: one round
//! serves every read that was waiting when it started. Reads that arrive during a round
//! wait for the next one, because the running round may have started before their writes
//! were acknowledged. A serializable read only waits until a restarted member is back where
//! it was.
//!
//! The leader's lease clock needs the same kind of round, on this member only: a renewal or
//! TTL query is answered only once a quorum confirmed this member's leadership after the
//! request arrived ([`Scope::HereOnly`]), and concurrent renewals share that round too.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::Member;
use super::route::{Leader, Reroute, answer};
use crate::error::{Result, StoreError};
use crate::proto::lodestone::ReadIndexRequest;

type Waiter = oneshot::Sender<Result<u64>>;

/// Where a barrier's ReadIndex rounds run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Through whichever member leads: the index a linearizable read must see applied.
    ThroughLeader,
    /// On this member only, within an election timeout: it still leads, as confirmed by a
    /// quorum (etcd's `ensureLeadership`); `NotLeader` otherwise.
    HereOnly,
}

/// The queue of requests waiting for the next ReadIndex round.
pub struct ReadBarrier {
    scope: Scope,
    tx: mpsc::UnboundedSender<Waiter>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Waiter>>>,
}

impl ReadBarrier {
    pub fn new(scope: Scope) -> ReadBarrier {
        let (tx, rx) = mpsc::unbounded_channel();
        ReadBarrier {
            scope,
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// The read index of the next round that starts after this call.
    async fn next_round(&self) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}

/// One round of `scope`.
async fn round(member: &Member, scope: Scope) -> Result<u64> {
    match scope {
        Scope::ThroughLeader => {
            // Leadership may move between finding the leader and asking it: ask the new one,
            // a few times, then let the reads fail as etcd's do.
            let routed = member.to_leader(Reroute::NotLeaderAtMost(3), |leader| async {
                match leader {
                    Leader::Here => member.local_read_index().await,
                    Leader::Peer(_, mut c) => answer(c.read_index(ReadIndexRequest {}).await).map(|r| r.read_index),
                }
            });
            tokio::time::timeout(member.cfg.request_timeout(), routed)
                .await
                .unwrap_or(Err(StoreError::Timeout))
        }
        Scope::HereOnly => match tokio::time::timeout(member.cfg.election(), member.consensus.read_index()).await {
            Ok(Ok(index)) => Ok(index),
            Ok(Err(StoreError::Stopped)) => Err(StoreError::Stopped),
            Ok(Err(_)) | Err(_) => Err(StoreError::NotLeader),
        },
    }
}

/// A barrier's loop: one round at a time, for everyone waiting when it starts; ends at
/// shutdown. `barrier` picks the member's barrier it serves.
pub(super) async fn run(member: Arc<Member>, barrier: fn(&Member) -> &ReadBarrier) {
    let scope = barrier(&member).scope;
    let Some(mut rx) = barrier(&member).rx.lock().expect("read barrier lock").take() else {
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
        let result = round(&member, scope).await;
        match scope {
            Scope::ThroughLeader => crate::metrics::read_index_round(waiters.len()),
            Scope::HereOnly => crate::metrics::leadership_round(waiters.len()),
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

impl Member {
    /// Returns once this member's state reflects every write acknowledged before the call
    /// (ReadIndex through the leader, shared by concurrent reads).
    pub async fn linearizable_barrier(&self) -> Result<()> {
        let index = tokio::time::timeout(self.cfg.request_timeout(), self.reads.next_round())
            .await
            .unwrap_or(Err(StoreError::Timeout))?;
        self.wait_applied(index).await
    }

    /// Returns once a quorum confirmed, after the call, that this member leads (one round
    /// shared by every caller waiting when it starts); `NotLeader` otherwise. A waiter sits
    /// out at most the running round, then its own, each bounded by an election timeout.
    pub(super) async fn confirm_leadership(&self) -> Result<()> {
        // A round answers only NotLeader or Stopped when it fails (see `round`).
        tokio::time::timeout(self.cfg.election() * 2, self.leadership.next_round())
            .await
            .unwrap_or(Err(StoreError::NotLeader))
            .map(drop)
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
