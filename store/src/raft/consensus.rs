//! The consensus facade: everything a member does with openraft, in Lodestone's terms.
//!
//! Propose a command, get a read index, change the membership, move leadership, read the
//! state of consensus ([`RaftStatus`], and [`StatusWatch`] to follow it), and hand the peer
//! transport's Raft messages in as bytes. openraft's types, errors and metrics end here: the
//! member and everything above it see [`StoreError`]s, ids and plain values.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::{AppendEntriesRequest, ReadPolicy, TransferLeaderRequest, VoteRequest};
use openraft::{ChangeMembers, Instant as _};
use tokio_util::sync::CancellationToken;

use super::log_store::LogStore;
use super::network::Network;
use super::snapshot::SnapshotFile;
use super::state_machine::StateMachine;
use super::{Command, MemberNode, NodeId, Raft, RaftMetrics, Snapshot, SnapshotMeta, TypeConfig, Vote};

use crate::config::Config;
use crate::error::{Result, StoreError};
use crate::peer::client::Peers;
use crate::proto::lodestone as pb;

/// The cluster's membership as the Raft log has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Every member, voter or learner, with where peers reach it.
    pub nodes: BTreeMap<NodeId, MemberNode>,
    /// The index of the log entry that set this membership (`None` before any).
    pub log_index: Option<u64>,
    /// True while a voter change is in progress (joint consensus).
    pub joint: bool,
}

/// The state of consensus on this member at one moment.
#[derive(Debug, Clone, Default)]
pub struct RaftStatus {
    /// The leader as this member knows it.
    pub leader: Option<NodeId>,
    pub term: u64,
    /// The cluster's commit index as this member knows it.
    pub committed: u64,
    /// The last index this member applied to its state machine.
    pub applied: u64,
    pub last_log_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub membership: Membership,
    /// On the leader: how far each member's log matches the leader's.
    pub matched: BTreeMap<NodeId, u64>,
    /// On the leader: how long ago each member last acknowledged it.
    pub acked_ago: BTreeMap<NodeId, Duration>,
    /// Why consensus stopped for good (a storage error it cannot go on after), if it did.
    pub fatal: Option<String>,
}

impl RaftStatus {
    fn of(m: &RaftMetrics) -> RaftStatus {
        let stored = &m.membership_config;
        let membership = stored.membership();
        RaftStatus {
            leader: m.current_leader,
            term: m.current_term,
            committed: m.cluster_committed.as_ref().map_or(0, |c| c.index),
            applied: m.last_applied.as_ref().map_or(0, |c| c.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.as_ref().map_or(0, |l| l.index),
            purged_index: m.purged.as_ref().map_or(0, |l| l.index),
            membership: Membership {
                voters: membership.voter_ids().collect(),
                learners: membership.learner_ids().collect(),
                nodes: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
                log_index: stored.log_id().as_ref().map(|l| l.index),
                joint: membership.get_joint_config().len() > 1,
            },
            matched: m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .filter_map(|(id, l)| l.as_ref().map(|l| (*id, l.index)))
                        .collect()
                })
                .unwrap_or_default(),
            acked_ago: acked_ago(m),
            fatal: m.running_state.as_ref().err().map(|e| e.to_string()),
        }
    }
}

/// On the leader: how long ago each member last acknowledged it.
fn acked_ago(m: &RaftMetrics) -> BTreeMap<NodeId, Duration> {
    m.heartbeat
        .as_ref()
        .map(|h| {
            h.iter()
                .filter_map(|(id, t)| t.as_ref().map(|t| (*id, t.elapsed())))
                .collect()
        })
        .unwrap_or_default()
}

/// Follows the state of consensus as it changes.
pub struct StatusWatch(openraft::type_config::alias::WatchReceiverOf<TypeConfig, RaftMetrics>);

impl StatusWatch {
    /// The state now, marking it seen.
    pub fn status(&mut self) -> RaftStatus {
        RaftStatus::of(&self.0.borrow_watched())
    }

    /// Waits until the state changes; false once consensus has stopped.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// A change of the membership (see [`Consensus::change_membership`]).
#[derive(Debug, Clone)]
pub enum MembershipChange {
    /// A new non-voting member, replicated to without waiting for it to catch up.
    AddLearner(NodeId, MemberNode),
    /// Makes a learner a voter (joint consensus).
    AddVoter(NodeId),
    RemoveVoter(NodeId),
    RemoveLearner(NodeId),
    /// New peer URLs for a member.
    SetNode(NodeId, MemberNode),
}

fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => StoreError::NotLeader,
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => StoreError::LeaderChanged,
        RaftError::APIError(e) => StoreError::Internal(e.to_string()),
        RaftError::Fatal(_) => StoreError::Stopped,
    }
}

fn stopped(e: impl std::fmt::Display) -> StoreError {
    tracing::debug!(error = %e, "raft stopped");
    StoreError::Stopped
}

fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T> {
    bincode::deserialize(payload).map_err(|e| StoreError::Internal(format!("undecodable raft message: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    bincode::serialize(v).map_err(|e| StoreError::Internal(e.to_string()))
}

/// One member's consensus.
pub struct Consensus {
    raft: Raft,
}

impl Consensus {
    /// Starts Raft for member `id` on its log and state machine, with the timing and bounds
    /// of `cfg`, reaching its peers through `peers`. `removed` is cancelled when a peer
    /// answers that this member was removed from the cluster.
    pub async fn start(
        id: NodeId,
        cfg: &Config,
        peers: Arc<Peers>,
        removed: CancellationToken,
        log: LogStore,
        sm: StateMachine,
    ) -> std::result::Result<Consensus, String> {
        let network = Network {
            peers,
            removed,
            max_message: crate::peer::max_message(cfg.max_request_bytes),
        };
        let raft_cfg = openraft::Config {
            cluster_name: cfg.initial_cluster_token.clone(),
            heartbeat_interval: cfg.heartbeat_interval,
            election_timeout_min: cfg.election_timeout,
            election_timeout_max: cfg.election_timeout * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_count),
            max_in_snapshot_log_to_keep: cfg.experimental_snapshot_catchup_entries,
            install_snapshot_timeout: 10_000,
            purge_batch_size: 256,
            // Bounds every AppendEntries, so the peer listener can bound what it accepts.
            max_payload_entries: crate::peer::MAX_APPEND_ENTRIES,
            // Entries go to the followers as soon as they are written to the leader's log
            // (readable, not yet fsynced), so the leader's fsync and the followers' overlap
            // (Raft §10.2.1, as etcd does). Safe: the leader counts itself towards a commit
            // only when its own IOFlushed arrives, so an acknowledged entry is still fsynced
            // on a majority. Without it openraft replicates after the leader's fsync, and one
            // write waits for two fsyncs in a row.
            broadcast_submitted_on_append: Some(true),
            // A leader that restarts runs an election like any other member (as etcd's does),
            // instead of resuming leadership at once (openraft's default). The state machine
            // and the commit index are written without fsync (the log is the durable record),
            // so after a power loss a restarted leader may be behind what it had committed; a
            // resumed leader would answer ReadIndex from that stale commit index and serve
            // stale linearizable reads. Found by the fault suite (`--lose-unsynced`, seed
            // 1796303988: a read pinned to the restarted leader saw revision 479 after 480 was
            // acknowledged). An election makes it learn the commit index first.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
        .map_err(|e| e.to_string())?;
        let raft = Raft::new(id, Arc::new(raft_cfg), network, log, sm)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Consensus { raft })
    }

    /// Founds the cluster with `members`. Every founding member initializes with the same
    /// membership; openraft accepts the identical first entry from each of them.
    pub async fn initialize(&self, members: BTreeMap<NodeId, MemberNode>) {
        if let Err(e) = self.raft.initialize(members).await {
            tracing::warn!(error = %e, "initialize");
        }
    }

    /// The state of consensus now.
    pub fn status(&self) -> RaftStatus {
        RaftStatus::of(&self.raft.metrics().borrow_watched())
    }

    /// The leader as this member knows it, cheaply (no membership copy).
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Whether member `id` is a voter (`Some(true)`), a learner (`Some(false)`), or not in
    /// the membership (`None`), cheaply.
    pub fn is_voter(&self, id: NodeId) -> Option<bool> {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        let membership = m.membership_config.membership();
        if membership.voter_ids().any(|v| v == id) {
            Some(true)
        } else if membership.learner_ids().any(|l| l == id) {
            Some(false)
        } else {
            None
        }
    }

    /// The voters, and how long ago each member last acknowledged this leader (empty on a
    /// follower), cheaply: what a leader's check-quorum needs.
    pub fn voter_contact(&self) -> (BTreeSet<NodeId>, BTreeMap<NodeId, Duration>) {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        let voters = m.membership_config.membership().voter_ids().collect();
        (voters, acked_ago(&m))
    }

    pub fn current_term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// The leader, the term and the commit index, read together and cheaply: what the
    /// lease clock checks on every renewal.
    pub fn leadership(&self) -> (Option<NodeId>, u64, u64) {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        (
            m.current_leader,
            m.current_term,
            m.cluster_committed.as_ref().map_or(0, |c| c.index),
        )
    }

    /// Where peers reach member `id` (its first peer URL), cheaply: what every request
    /// routed to the leader looks up.
    pub fn peer_url(&self, id: NodeId) -> Option<String> {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        m.membership_config
            .membership()
            .get_node(&id)?
            .peer_urls
            .first()
            .cloned()
    }

    /// `(committed, applied)` indexes, cheaply.
    pub fn progress(&self) -> (u64, u64) {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        (
            m.cluster_committed.as_ref().map_or(0, |c| c.index),
            m.last_applied.as_ref().map_or(0, |c| c.index),
        )
    }

    /// Follows the state of consensus.
    pub fn watch(&self) -> StatusWatch {
        StatusWatch(self.raft.metrics())
    }

    /// Waits until some member leads; `Stopped` once consensus has stopped.
    pub async fn wait_leader(&self) -> Result<NodeId> {
        let mut w = self.watch();
        loop {
            if let Some(l) = w.0.borrow_watched().current_leader {
                return Ok(l);
            }
            if !w.changed().await {
                return Err(StoreError::Stopped);
            }
        }
    }

    /// Proposes on this member, which must lead (`NotLeader` otherwise), and returns the
    /// state machine's answer; an error raised at apply comes back as that error.
    pub async fn propose(&self, cmd: pb::Command) -> Result<pb::CommandResult> {
        let resp = self.raft.client_write(Command(cmd)).await.map_err(write_error)?;
        crate::apply::outcome(resp.data.0)
    }

    /// Proposes `cmds` on this member, which must lead, in one hand-off to consensus, and
    /// returns each its answer in order: the state machine's result, or the error it met as
    /// an `ApplyError` result (`NotLeader` for each when this member does not lead).
    pub async fn propose_many(&self, cmds: Vec<pb::Command>) -> Result<Vec<pb::CommandResult>> {
        use futures::StreamExt;
        let n = cmds.len();
        let mut answers = self
            .raft
            .client_write_many(cmds.into_iter().map(Command))
            .await
            .map_err(stopped)?;
        let mut results = Vec::with_capacity(n);
        while let Some(r) = answers.next().await {
            results.push(match r.map_err(stopped)? {
                Ok(w) => w.response.0,
                Err(e) => crate::apply::refused(write_error(RaftError::APIError(e))),
            });
        }
        Ok(results)
    }

    /// ReadIndex on the leader: confirms leadership with a quorum and returns the index a
    /// read must see applied.
    pub async fn read_index(&self) -> Result<u64> {
        match self.raft.get_read_log_id(ReadPolicy::ReadIndex).await {
            Ok((read_log_id, _)) => Ok(read_log_id.index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => Err(StoreError::NotLeader),
            Err(RaftError::APIError(_)) => Err(StoreError::LeaderChanged),
            Err(RaftError::Fatal(_)) => Err(StoreError::Stopped),
        }
    }

    /// Changes the membership on the leader, waiting until the change is committed; returns
    /// the log index of the change.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<u64> {
        let r = match change {
            MembershipChange::AddLearner(id, node) => {
                self.raft.add_learner(id, node, false).await.map(|w| w.log_id.index)
            }
            MembershipChange::AddVoter(id) => self
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map(|w| w.log_id.index),
            MembershipChange::RemoveVoter(id) => self
                .raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map(|w| w.log_id.index),
            MembershipChange::RemoveLearner(id) => self
                .raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map(|w| w.log_id.index),
            MembershipChange::SetNode(id, node) => self
                .raft
                .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, node)])), false)
                .await
                .map(|w| w.log_id.index),
        };
        r.map_err(write_error)
    }

    /// Asks this leader to hand leadership to `to` (returns once asked, not once moved).
    pub async fn transfer_leader(&self, to: NodeId) -> Result<()> {
        self.raft.trigger().transfer_leader(to).await.map_err(stopped)
    }

    /// A peer's AppendEntries (bincode), answered in bincode.
    pub async fn append_entries(&self, payload: &[u8]) -> Result<Vec<u8>> {
        let req: AppendEntriesRequest<TypeConfig> = decode(payload)?;
        encode(&self.raft.append_entries(req).await.map_err(stopped)?)
    }

    /// A leader's pipelined replication stream: every AppendEntries (bincode) goes to
    /// consensus as it arrives, without waiting for the answers to those before it, and the
    /// answers (openraft `StreamAppendResult`s, bincode) come back in the same order. The
    /// answers end after the first refusal (a conflict or a higher vote); an undecodable
    /// message ends the input, so only what came before it is answered.
    pub fn append_stream<S>(&self, input: S) -> impl futures::Stream<Item = Result<Vec<u8>>> + Send + 'static
    where
        S: futures::Stream<Item = bytes::Bytes> + Send + Unpin + 'static,
    {
        use tokio_stream::StreamExt as _;
        let requests = input.map_while(|payload| match decode::<AppendEntriesRequest<TypeConfig>>(&payload) {
            Ok(req) => Some(req),
            Err(e) => {
                tracing::warn!(error = %e, "ending a leader's append stream");
                None
            }
        });
        futures::StreamExt::map(self.raft.stream_append(requests), |answer| match answer {
            Ok(result) => encode(&result),
            Err(fatal) => Err(stopped(fatal)),
        })
    }

    /// A peer's vote request (bincode), answered in bincode. A candidate missing from the
    /// membership whose log ends at or before the entry that dropped it was removed (a new
    /// member would know a later membership): it is told so, and stops.
    pub async fn vote(&self, from: NodeId, payload: &[u8]) -> Result<Vec<u8>> {
        let req: VoteRequest<TypeConfig> = decode(payload)?;
        let removed = {
            let rx = self.raft.metrics();
            let m = rx.borrow_watched();
            let stored = &m.membership_config;
            stored.log_id().as_ref().is_some_and(|at| {
                stored.membership().get_node(&from).is_none()
                    && req.last_log_id.as_ref().is_none_or(|l| l.index <= at.index)
            })
        };
        if removed {
            return Err(StoreError::MemberRemoved);
        }
        encode(&self.raft.vote(req).await.map_err(stopped)?)
    }

    /// A peer's TransferLeader (bincode), answered in bincode.
    pub async fn transfer_leader_request(&self, payload: &[u8]) -> Result<Vec<u8>> {
        let req: TransferLeaderRequest<TypeConfig> = decode(payload)?;
        encode(&self.raft.handle_transfer_leader(req).await.map_err(stopped)?)
    }

    /// Installs a snapshot a leader streamed into the file at `path`; `header` is the
    /// bincode (vote, meta) that came first. Answered in bincode.
    pub async fn install_snapshot(&self, header: &[u8], path: &Path) -> Result<Vec<u8>> {
        let (vote, meta): (Vote, SnapshotMeta) = decode(header)?;
        let snapshot = Snapshot {
            meta,
            snapshot: SnapshotFile {
                path: path.to_path_buf(),
            },
        };
        encode(&self.raft.install_full_snapshot(vote, snapshot).await.map_err(stopped)?)
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}
