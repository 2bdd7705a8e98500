//! The running member: its identity, its consensus, its state machine, and the work it does
//! besides answering requests. The client API (`crate::api`) and the peer service
//! (`crate::peer::service`) are thin adapters over [`Member`]; it is the only thing they
//! call, and its fields are its own.
//!
//! - [`auth`]: who a request runs as, Authenticate, the auth state checks read.
//! - [`bootstrap`]: starting a member: found, join or resume, then start consensus and the
//!   background loops ([`StartError`] when it cannot).
//! - [`route`]: the one way a request reaches the leader (here, or forwarded to a peer).
//! - [`propose`]: replicated writes, with etcd's space quota and apply-lag limit.
//! - [`forward`]: the writes a follower forwards to its leader, batched.
//! - [`reads`]: the linearizable read barrier (ReadIndex batching) and serializable reads.
//! - [`membership`]: membership changes on the leader: a pure decision, then its execution.
//! - [`leases`]: lease ids, renewals and TTL queries on the leader's clock, and expiry.
//! - [`watch_cache`]: recent changes shared by every watch stream on this member.
//! - [`compactor`]: auto compaction on the leader, and removing compacted history.
//! - [`corruption`]: the periodic HashKV comparison across members.
//! - [`events`]: following consensus (leader changes, removal, gauges) and publishing this
//!   member's attributes.

pub mod auth;
pub mod bootstrap;
pub mod compactor;
pub mod corruption;
mod events;
mod forward;
pub mod leases;
pub mod membership;
mod propose;
pub mod reads;
pub mod route;
pub mod watch_cache;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use bootstrap::StartError;
pub use propose::alarm_command;

use crate::config::Config;
use crate::error::{Result, StoreError};
use crate::peer::client::Peers;
use crate::proto::etcdserverpb::{AlarmType, ResponseHeader};
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::Shared;
use crate::raft::{Consensus, NodeId, RaftStatus};

/// One running member. Shared by every request handler and background loop through an
/// `Arc`; what it holds is reached through its methods only.
pub struct Member {
    id: NodeId,
    cfg: Config,
    /// 0 until the member knows its cluster; shared with the peer clients' envelope.
    cluster_id: Arc<AtomicU64>,
    consensus: Consensus,
    /// The state machine's state (MVCC data, applied index, alarms, lease deadlines).
    sm: Arc<Shared>,
    log: LogStore,
    peers: Arc<Peers>,
    /// Writes forwarded to the leader, batched per leader.
    forwarder: Arc<forward::Forwarder>,
    /// Linearizable reads waiting for a ReadIndex round through the leader.
    reads: reads::ReadBarrier,
    /// Lease requests waiting for this leader's leadership to be confirmed.
    leadership: reads::ReadBarrier,
    /// The commit index saved before the last restart: serializable reads wait until the
    /// state machine is back there, so a restart never shows older data than before.
    recovered_to: u64,
    lease_clock: leases::LeaseClock,
    /// Held by the leader while it runs a membership change: one at a time.
    membership_lock: Mutex<()>,
    db_size: std::sync::Mutex<(Option<std::time::Instant>, (i64, i64))>,
    /// Recent changes shared by every watch stream on this member.
    watch_cache: Arc<watch_cache::WatchCache>,
    /// The revision up to which this member removed compacted history from disk.
    compacted_physically: tokio::sync::watch::Sender<i64>,
    /// What the cluster said when this member joined it: whether it was added as a learner.
    /// Stands in for the membership until the first replicated one names this member.
    joined_as_learner: bool,
    shutdown: CancellationToken,
    /// Why the member shut itself down on an error it cannot go on after (the process then
    /// exits non-zero).
    failure: std::sync::Mutex<Option<String>>,
    /// The background loops: [`Member::stop`] waits for them.
    tasks: TaskTracker,
    /// What `--auth-token` selected: simple tokens (kept by the state machine) or JWT.
    token_kind: crate::auth::tokens::TokenKind,
}

impl Member {
    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Relaxed)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The state machine's state as of the last applied batch.
    pub fn state(&self) -> &Arc<Shared> {
        &self.sm
    }

    /// Consensus, for the peer service's Raft messages.
    pub fn consensus(&self) -> &Consensus {
        &self.consensus
    }

    pub fn watch_cache(&self) -> &Arc<watch_cache::WatchCache> {
        &self.watch_cache
    }

    /// Cancelled when the member shuts down (signal, or removed from the cluster).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The state of consensus now.
    pub fn status(&self) -> RaftStatus {
        self.consensus.status()
    }

    /// The leader as this member knows it; `None` while there is none, and on a leader that
    /// has lost touch with a quorum of voters.
    pub fn leader(&self) -> Option<NodeId> {
        let leader = self.consensus.current_leader()?;
        if leader != self.id {
            return Some(leader);
        }
        // etcd's check-quorum: a leader that has not heard from a quorum of voters lately
        // has lost the cluster (openraft keeps it leader regardless), so it reports no
        // leader, and require-leader requests, watches and /health say so.
        let (voters, acked_ago) = self.consensus.voter_contact();
        let active = membership::active_voters(&acked_ago, self.id, self.cfg.election() * 2, &voters);
        (active > voters.len() / 2).then_some(leader)
    }

    /// True while this member is a learner (non-voting). A member that just joined knows
    /// it from the cluster's answer before its first replicated membership arrives.
    pub fn is_learner(&self) -> bool {
        match self.consensus.is_voter(self.id) {
            Some(voter) => !voter,
            None => self.joined_as_learner,
        }
    }

    /// etcd's response header for a reply at `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id(),
            member_id: self.id,
            revision,
            raft_term: self.consensus.current_term(),
        })
    }

    /// Current store revision as of the last applied batch.
    pub fn revision(&self) -> i64 {
        *self.sm.revision().borrow()
    }

    /// Refuses reads while a CORRUPT alarm is active; called after the read's barrier, so a
    /// linearizable read sees every alarm change committed before it. (Writes are refused at
    /// apply.)
    pub fn check_corrupt(&self) -> Result<()> {
        if self.sm.alarm_active(AlarmType::Corrupt) {
            return Err(StoreError::Corrupt);
        }
        Ok(())
    }

    /// `(dbSize, dbSizeInUse)`, refreshed at most every 100 ms (the quota check runs on the
    /// write path).
    pub fn db_size(&self) -> (i64, i64) {
        let mut g = self.db_size.lock().expect("db size lock");
        if g.0.is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(100)) {
            *g = (Some(std::time::Instant::now()), self.sm.mvcc.size());
        }
        g.1
    }

    /// Forgets the cached database size, so the next read measures it (after a defrag).
    pub fn forget_db_size(&self) {
        *self.db_size.lock().expect("db size lock") = (None, (0, 0));
    }

    /// Writes a consistent image of the state machine to a fresh scratch file for a client
    /// (Maintenance.Snapshot); returns the file and the log index it reflects.
    pub async fn export_snapshot(&self) -> Result<(std::path::PathBuf, u64)> {
        let sm = self.sm.clone();
        let path = self.sm.scratch_path("client", "export");
        let p = path.clone();
        let index = tokio::task::spawn_blocking(move || sm.export_for_client(&p))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
            .map_err(|e| {
                let _ = std::fs::remove_file(&path);
                StoreError::Storage(e.to_string())
            })?;
        Ok((path, index))
    }

    /// Shuts the member down because of `why`, an error it cannot go on after.
    pub(crate) fn fail(&self, why: String) {
        tracing::error!("{why}; shutting down");
        self.failure.lock().expect("failure lock").get_or_insert(why);
        self.shutdown.cancel();
    }

    /// Why the member shut itself down, if it did so on an error.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("failure lock").clone()
    }

    /// Stops the member after its client listeners closed: ends the background loops, stops
    /// Raft, makes the state machine durable and closes the write-ahead log.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.cfg.request_timeout(), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.tasks.len(),
                "background tasks still running at shutdown; stopping anyway"
            );
        }
        self.consensus.shutdown().await;
        let sm = self.sm.clone();
        match tokio::task::spawn_blocking(move || sm.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "final state machine sync"),
            Err(e) => tracing::warn!(error = %e, "final state machine sync"),
        }
        self.log.close();
    }
}
