//! The running member: assembles storage, consensus and the gRPC services, and serves them
//! until shutdown.
//!
//! - [`kv`], [`watch`], [`lease`], [`maintenance`], [`cluster`]: the etcd v3 client services;
//!   [`concurrency`]: etcd's v3lock and v3election services.
//! - [`compactor`]: auto compaction on the leader; [`corruption`]: the periodic HashKV check.
//! - [`peer`]: the peer transport's server side (Raft RPCs, forwarded writes, ReadIndex).
//! - [`reads`]: the linearizable read barrier (ReadIndex batching).
//! - [`guard`]: require-leader and learner checks for every client RPC.
//! - [`status`]: domain error → gRPC status, in one place; [`limits`]: oversized messages.
//! - [`http`]: `/health`, `/livez`, `/readyz`, `/metrics`.
//! - [`authority`] (with [`hpack`]): accepted client connections, repairing the HTTP/2
//!   `:authority` etcdctl 3.4 sends when it dials an endpoint URL.

pub mod authority;
pub mod cluster;
pub mod compactor;
pub mod concurrency;
pub mod corruption;
pub mod guard;
pub mod hpack;
pub mod http;
pub mod kv;
pub mod lease;
pub mod limits;
pub mod maintenance;
pub mod peer;
pub mod reads;
pub mod serve;
pub mod status;
pub mod watch;
pub mod watch_cache;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use prost::Message;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::{ClusterState, Config};
use crate::error::{Result, StoreError};
use crate::metrics;
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::{AlarmType, ResponseHeader};
use crate::proto::lodestone::peer_client::PeerClient;
use crate::proto::lodestone::{self as pb, command_result::Kind as ResKind};
use crate::raft::log_store::LogStore;
use crate::raft::network::{Network, peer_channel};
use crate::raft::state_machine::{Shared, StateMachine};
use crate::raft::{Command, MemberNode, NodeId, Raft};

/// Everything a request handler needs. Shared by all services through an `Arc`.
pub struct Server {
    pub id: NodeId,
    pub cfg: Config,
    pub cluster_id: Arc<AtomicU64>,
    pub raft: Raft,
    pub sm: Arc<Shared>,
    pub log: LogStore,
    reads: reads::ReadBarrier,
    peers: Mutex<HashMap<NodeId, (String, PeerClient<Channel>)>>,
    /// The commit index saved before the last restart: serializable reads wait until the
    /// state machine is back there, so a restart never shows older data than before.
    recovered_to: u64,
    lease_clock: lease::LeaseClock,
    /// Held by the leader while it runs a membership change: one at a time.
    membership_lock: Mutex<()>,
    db_size: std::sync::Mutex<(Option<std::time::Instant>, (i64, i64))>,
    /// Recent changes shared by every watch stream on this member.
    pub watch_cache: Arc<watch_cache::WatchCache>,
    /// The revision up to which this member removed compacted history from disk.
    compacted_physically: tokio::sync::watch::Sender<i64>,
    /// What the cluster said when this member joined it: whether it was added as a learner.
    /// Stands in for the membership until the first replicated one names this member.
    joined_as_learner: bool,
    pub shutdown: CancellationToken,
}

/// Errors that stop a member from starting, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot join the existing cluster: {0}")]
    Join(String),
    #[error(
        "member {member} has already been bootstrapped: the cluster at {peer} knows it as a started member, \
         so its data was lost and it must not found the cluster again under its old identity. Remove it \
         (`etcdctl member remove {member}`), add it back (`etcdctl member add {name} --peer-urls={peer_urls}`) \
         and start it on an empty data directory with --initial-cluster-state existing"
    )]
    AlreadyBootstrapped {
        member: String,
        name: String,
        peer_urls: String,
        peer: String,
    },
    #[error("cannot listen on {url}: {err}")]
    Listen { url: String, err: std::io::Error },
}

impl Server {
    /// Opens storage, bootstraps or resumes the member, and starts Raft.
    pub async fn start(cfg: Config, shutdown: CancellationToken) -> Result<Arc<Server>, StartError> {
        let retention = cfg.retention()?;
        let log = LogStore::open(&cfg.wal_dir())?;
        let sm = StateMachine::open(&cfg.state_machine_dir())?;
        let barrier_sm = sm.clone();
        log.set_durability_barrier(Arc::new(move || barrier_sm.sync()));

        let pristine = log.is_pristine()?;
        let mut joined_as_learner = false;
        let (id, cluster_id, bootstrap) = if pristine && cfg.initial_cluster_state == ClusterState::Existing {
            let (cid, id, learner) = join_existing(&cfg).await?;
            log.save_identity(cid, id).await?;
            tracing::info!(member = %format!("{id:x}"), cluster = %format!("{cid:x}"), learner, "joining the existing cluster");
            joined_as_learner = learner;
            (id, cid, None)
        } else if pristine {
            let members = cfg.initial_members()?;
            let me = cfg.self_member(&members)?;
            let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
            let cid = crate::config::cluster_id(&ids, &cfg.initial_cluster_token);
            refuse_if_bootstrapped(&members, &me, cid).await?;
            log.save_identity(cid, me.id).await?;
            let nodes: BTreeMap<NodeId, MemberNode> = members
                .iter()
                .map(|m| {
                    (
                        m.id,
                        MemberNode {
                            name: m.name.clone(),
                            peer_urls: m.peer_urls.clone(),
                        },
                    )
                })
                .collect();
            (me.id, cid, Some(nodes))
        } else {
            let (cid, id) = log
                .identity()?
                .ok_or_else(|| StartError::Raft("write-ahead log has no member identity".into()))?;
            tracing::info!(member = %format!("{id:x}"), "resuming from existing data; --initial-cluster flags are ignored");
            (id, cid, None)
        };
        let recovered_to = {
            use openraft::storage::RaftLogStorage;
            let mut l = log.clone();
            l.read_committed().await?.map_or(0, |c| c.index)
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
            max_payload_entries: crate::raft::network::MAX_APPEND_ENTRIES,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;

        let cluster_id = Arc::new(AtomicU64::new(cluster_id));
        let removed = CancellationToken::new();
        let network = Network {
            self_id: id,
            cluster_id: cluster_id.clone(),
            removed: removed.clone(),
            max_message: crate::raft::network::max_peer_message(cfg.max_request_bytes),
        };
        let shared = sm.shared.clone();
        // Where the watch cache starts following (before Raft replays anything).
        let start_revision = *shared.revision().borrow();
        let compacted_physically = shared
            .mvcc
            .compacted_physically()
            .map_err(|e| StartError::Raft(format!("reading compaction progress: {e}")))?;
        let raft = Raft::new(id, Arc::new(raft_cfg), network, log.clone(), sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if let Some(nodes) = bootstrap {
            // Every founding member initializes with the same membership; openraft accepts
            // the identical first entry from each of them.
            if let Err(e) = raft.initialize(nodes).await {
                tracing::warn!(error = %e, "initialize");
            }
        }
        let server = Arc::new(Server {
            id,
            reads: reads::ReadBarrier::new(),
            cfg,
            cluster_id,
            raft,
            sm: shared,
            log,
            peers: Mutex::new(HashMap::new()),
            recovered_to,
            lease_clock: lease::LeaseClock::default(),
            membership_lock: Mutex::new(()),
            db_size: std::sync::Mutex::new((None, (0, 0))),
            watch_cache: watch_cache::WatchCache::new(start_revision),
            compacted_physically: tokio::sync::watch::channel(compacted_physically).0,
            joined_as_learner,
            shutdown,
        });
        server.reads.start(server.clone());
        tokio::spawn(watch_raft(server.clone()));
        tokio::spawn(watch_cache::run(server.clone()));
        tokio::spawn(publish_attributes(server.clone()));
        tokio::spawn(lease::expire_leases(server.clone()));
        tokio::spawn(compactor::run(server.clone(), retention));
        tokio::spawn(compactor::remove_compacted_history(server.clone()));
        tokio::spawn(corruption::run(
            server.clone(),
            server.cfg.experimental_corrupt_check_time,
        ));
        {
            let s = server.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = s.shutdown.cancelled() => {}
                    _ = removed.cancelled() => {
                        tracing::warn!("this member was removed from the cluster; shutting down");
                        s.shutdown.cancel();
                    }
                }
            });
        }
        Ok(server)
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Relaxed)
    }

    pub fn metrics(&self) -> crate::raft::RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    /// The leader as this member knows it; `None` while there is none, and on a leader that
    /// has lost touch with a quorum of voters.
    pub fn leader(&self) -> Option<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let leader = m.current_leader?;
        if leader != self.id {
            return Some(leader);
        }
        // etcd's check-quorum: a leader that has not heard from a quorum of voters lately
        // has lost the cluster (openraft keeps it leader regardless), so it reports no
        // leader, and require-leader requests, watches and /health say so.
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        (self.active_voters(&m, &voters) > voters.len() / 2).then_some(leader)
    }

    /// True while this member is a learner (non-voting). A member that just joined knows
    /// it from the cluster's answer before its first replicated membership arrives.
    pub fn is_learner(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        if membership.learner_ids().any(|id| id == self.id) {
            return true;
        }
        if membership.voter_ids().any(|id| id == self.id) {
            return false;
        }
        self.joined_as_learner
    }

    /// etcd's response header for a reply at `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id(),
            member_id: self.id,
            revision,
            raft_term: self.raft.metrics().borrow_watched().current_term,
        })
    }

    /// Current store revision as of the last applied batch.
    pub fn revision(&self) -> i64 {
        *self.sm.revision().borrow()
    }

    /// Waits until some member is leader. Callers bound the wait with their request
    /// timeout, so a member without quorum answers "request timed out" as etcd does.
    async fn wait_leader(&self) -> Result<NodeId> {
        let mut rx = self.raft.metrics();
        loop {
            if let Some(l) = rx.borrow_and_update().current_leader {
                return Ok(l);
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::Stopped);
            }
        }
    }

    async fn peer(&self, id: NodeId) -> Result<PeerClient<Channel>> {
        let node = {
            let m = self.raft.metrics().borrow_watched().clone();
            m.membership_config.membership().get_node(&id).cloned()
        };
        let url = node
            .and_then(|n| n.peer_urls.first().cloned())
            .ok_or(StoreError::NoLeader)?;
        let mut peers = self.peers.lock().await;
        if let Some((u, c)) = peers.get(&id)
            && *u == url
        {
            return Ok(c.clone());
        }
        let ch = peer_channel(&url).map_err(|e| StoreError::Internal(format!("peer {id:x} at {url}: {e}")))?;
        // Requests are commands and queries within the peer bound; answers to forwarded
        // writes carry whole txn results, bounded like any gRPC message (2 GiB).
        let c = PeerClient::new(ch)
            .max_decoding_message_size(i32::MAX as usize)
            .max_encoding_message_size(crate::raft::network::max_peer_message(self.cfg.max_request_bytes));
        peers.insert(id, (url, c.clone()));
        Ok(c)
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

    /// etcd's space quota at the API: a request that adds data and would push the store past
    /// `--quota-backend-bytes` is refused, and raises NOSPACE (cluster-wide, through Raft)
    /// unless it is active already. While NOSPACE is active, apply refuses such requests.
    fn check_quota(self: &Arc<Self>, cmd: &pb::Command) -> Result<()> {
        let cost = crate::validate::quota_cost(cmd);
        if cost == 0 {
            return Ok(());
        }
        if self.db_size().0 + cost > self.cfg.quota() {
            if self.sm.alarm_active(AlarmType::Nospace) {
                return Err(StoreError::NoSpace);
            }
            let s = self.clone();
            tokio::spawn(async move {
                let r = s
                    .propose(alarm_command(AlarmAction::Activate, s.id, AlarmType::Nospace))
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "raising the NOSPACE alarm");
                } else {
                    tracing::warn!(quota = s.cfg.quota(), "database space exceeded: NOSPACE alarm raised");
                }
            });
            return Err(StoreError::NoSpace);
        }
        Ok(())
    }

    /// Like [`Server::propose`], for client writes: checks the space quota first. Active
    /// alarms (CORRUPT, NOSPACE) are enforced where the log orders them, at apply: this
    /// member's view of them may trail the log (a disarm it has not applied yet), so it must
    /// not refuse on that view.
    pub async fn propose_write(self: &Arc<Self>, cmd: pb::Command) -> Result<pb::CommandResult> {
        self.check_quota(&cmd)?;
        self.propose(cmd).await
    }

    /// Replicates a write through the leader (forwarding when this member is a follower) and
    /// returns the state machine's answer.
    pub async fn propose(&self, cmd: pb::Command) -> Result<pb::CommandResult> {
        if cmd.encoded_len() > self.cfg.max_request_bytes {
            return Err(StoreError::RequestTooLarge);
        }
        let (committed, applied) = {
            let rx = self.raft.metrics();
            let m = rx.borrow_watched();
            (
                m.cluster_committed.as_ref().map_or(0, |c| c.index),
                m.last_applied.as_ref().map_or(0, |c| c.index),
            )
        };
        if applying_too_far_behind(committed, applied) {
            return Err(StoreError::TooManyRequests);
        }
        metrics::proposal_started();
        let r = tokio::time::timeout(self.cfg.request_timeout(), self.propose_inner(cmd))
            .await
            .unwrap_or(Err(StoreError::Timeout));
        metrics::proposal_finished();
        if r.is_err() {
            metrics::proposal_failed();
        }
        r
    }

    async fn propose_inner(&self, cmd: pb::Command) -> Result<pb::CommandResult> {
        loop {
            let leader = self.wait_leader().await?;
            let r = if leader != self.id {
                self.forward(leader, cmd.clone()).await
            } else {
                self.propose_local(cmd.clone()).await
            };
            match r {
                Err(StoreError::NotLeader) => {
                    // Leadership moved before the entry was appended: safe to route again.
                    tokio::time::sleep(self.cfg.heartbeat()).await;
                    continue;
                }
                r => return r,
            }
        }
    }

    /// Proposes on this member, which must be the leader. Apply errors come back as
    /// [`StoreError`]s.
    pub async fn propose_local(&self, cmd: pb::Command) -> Result<pb::CommandResult> {
        match self.raft.client_write(Command(cmd)).await {
            Ok(resp) => match resp.data.0.kind {
                Some(ResKind::Error(e)) => Err(StoreError::from_code(e.code, &e.message)),
                _ => Ok(resp.data.0),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(StoreError::NotLeader),
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => Err(StoreError::LeaderChanged),
            Err(RaftError::APIError(e)) => Err(StoreError::Internal(e.to_string())),
            Err(RaftError::Fatal(_)) => Err(StoreError::Stopped),
        }
    }

    async fn forward(&self, leader: NodeId, cmd: pb::Command) -> Result<pb::CommandResult> {
        let mut client = self.peer(leader).await?;
        match client.propose(cmd).await {
            Ok(r) => {
                let r = r.into_inner();
                match r.kind {
                    Some(ResKind::Error(e)) => Err(StoreError::from_code(e.code, &e.message)),
                    _ => Ok(r),
                }
            }
            // The leader may or may not have committed it; the client must decide.
            Err(_) => Err(StoreError::LeaderChanged),
        }
    }

    /// Returns once this member's state reflects every write acknowledged before the call
    /// (ReadIndex through the leader, shared by concurrent reads).
    pub async fn linearizable_barrier(&self) -> Result<()> {
        let index = tokio::time::timeout(self.cfg.request_timeout(), self.reads.read_index())
            .await
            .unwrap_or(Err(StoreError::Timeout))?;
        self.wait_applied(index).await
    }

    /// The read index, obtained from this member if leader, else from the leader.
    pub(crate) async fn fetch_read_index(&self) -> Result<u64> {
        let leader = self.wait_leader().await?;
        if leader == self.id {
            return self.local_read_index().await;
        }
        let mut client = self.peer(leader).await?;
        match client
            .read_index(pb::ReadIndexRequest {
                cluster_id: self.cluster_id(),
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().read_index),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => Err(StoreError::NotLeader),
            Err(_) => Err(StoreError::LeaderChanged),
        }
    }

    /// ReadIndex on the leader: confirm leadership with a quorum, return the index to apply.
    pub async fn local_read_index(&self) -> Result<u64> {
        match self.raft.get_read_log_id(openraft::raft::ReadPolicy::ReadIndex).await {
            Ok((read_log_id, _)) => Ok(read_log_id.index()),
            Err(RaftError::APIError(openraft::error::LinearizableReadError::ForwardToLeader(_))) => {
                Err(StoreError::NotLeader)
            }
            Err(RaftError::APIError(_)) => Err(StoreError::LeaderChanged),
            Err(RaftError::Fatal(_)) => Err(StoreError::Stopped),
        }
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

    /// Stops Raft and the storage threads.
    pub async fn stop(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let sm = self.sm.clone();
        match tokio::task::spawn_blocking(move || sm.mvcc.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "final state machine sync"),
            Err(e) => tracing::warn!(error = %e, "final state machine sync"),
        }
        self.log.close();
    }
}

/// etcd's `isMemberBootstrapped`: before a member founds a cluster on empty storage, it asks
/// the other founders whether that cluster already runs with this member in it as a started
/// member (one that published its client URLs). If so, this member lost its data: coming
/// back under its old identity would let it vote and acknowledge as if it still held the
/// entries it forgot, which can lose committed writes. Founders that are not up yet, or that
/// have never seen this member start, let it through.
async fn refuse_if_bootstrapped(
    members: &[crate::config::InitialMember],
    me: &crate::config::InitialMember,
    cluster_id: u64,
) -> Result<(), StartError> {
    let asks = members
        .iter()
        .filter(|m| m.name != me.name)
        .flat_map(|m| m.peer_urls.iter())
        .map(|url| async move {
            let mut c = PeerClient::new(peer_channel(url).ok()?);
            let ask = c.cluster_info(pb::ClusterInfoRequest {});
            let info = tokio::time::timeout(std::time::Duration::from_secs(1), ask)
                .await
                .ok()?
                .ok()?
                .into_inner();
            let started = info.cluster_id == cluster_id
                && info.members.iter().any(|x| x.id == me.id && !x.client_ur_ls.is_empty());
            started.then(|| url.clone())
        });
    match futures::future::join_all(asks).await.into_iter().flatten().next() {
        Some(peer) => Err(StartError::AlreadyBootstrapped {
            member: format!("{:x}", me.id),
            name: me.name.clone(),
            peer_urls: me.peer_urls.join(","),
            peer,
        }),
        None => Ok(()),
    }
}

/// Asks the members named in `--initial-cluster` (other than this one) which cluster they
/// form, and finds this member in it by its peer URLs, as `etcdctl member add` registered
/// them. Returns the cluster ID, this member's ID, and whether it was added as a learner.
async fn join_existing(cfg: &Config) -> Result<(u64, NodeId, bool), StartError> {
    let members = cfg.initial_members()?;
    let me = cfg.self_member(&members)?;
    let mut last_err = String::from("--initial-cluster names no other member");
    let mut not_found_since: Option<std::time::Instant> = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        for m in members.iter().filter(|m| m.name != me.name) {
            for url in &m.peer_urls {
                let Ok(ch) = peer_channel(url) else { continue };
                let mut c = PeerClient::new(ch);
                match tokio::time::timeout(cfg.request_timeout(), c.cluster_info(pb::ClusterInfoRequest {})).await {
                    Ok(Ok(info)) => {
                        let info = info.into_inner();
                        let found = info
                            .members
                            .iter()
                            .find(|x| x.peer_ur_ls.iter().any(|u| me.peer_urls.contains(u)));
                        if let Some(x) = found {
                            return Ok((info.cluster_id, x.id, x.is_learner));
                        }
                        // A member that has not applied the MemberAdd yet answers without
                        // this one; ask again (others, later) before blaming the user.
                        let since = *not_found_since.get_or_insert_with(std::time::Instant::now);
                        if since.elapsed() > std::time::Duration::from_secs(5) {
                            return Err(StartError::Join(format!(
                                "the cluster at {url} has no member with peer URLs {:?}; add it first with \
                                 `etcdctl member add {} --peer-urls={}`",
                                me.peer_urls,
                                me.name,
                                me.peer_urls.join(",")
                            )));
                        }
                        last_err = format!("{url}: this member is not in the cluster's member list yet");
                    }
                    Ok(Err(e)) => last_err = format!("{url}: {}", e.message()),
                    Err(_) => last_err = format!("{url}: timed out"),
                }
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(StartError::Join(format!(
                "no member of --initial-cluster answered ({last_err})"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// A replicated alarm change.
pub(crate) fn alarm_command(action: AlarmAction, member: u64, alarm: AlarmType) -> pb::Command {
    pb::Command {
        kind: Some(pb::command::Kind::Alarm(crate::proto::etcdserverpb::AlarmRequest {
            action: action as i32,
            member_id: member,
            alarm: alarm as i32,
        })),
    }
}

/// etcd refuses new proposals while the state machine trails the commit index by more than
/// this many entries, so a slow apply cannot let the backlog grow without bound.
const MAX_APPLY_LAG: u64 = 5_000;

fn applying_too_far_behind(committed: u64, applied: u64) -> bool {
    committed.saturating_sub(applied) > MAX_APPLY_LAG
}

/// Follows openraft's metrics: leader changes, gauges.
async fn watch_raft(server: Arc<Server>) {
    let mut rx = server.raft.metrics();
    let mut last_leader = None;
    // A joining member replays memberships from before it was added; only leaving a
    // membership it was part of means it was removed. The leader stops replicating to a
    // removed member, so it may never see the removal committed: the uniform (non-joint)
    // membership entry without it is the signal, as etcd's removed member stops when it
    // applies its own removal.
    let mut was_member = false;
    loop {
        let m = rx.borrow_and_update().clone();
        let latest = m.membership_config.membership();
        if latest.get_node(&server.id).is_some() {
            was_member = true;
        } else if was_member && latest.get_joint_config().len() == 1 {
            tracing::warn!("this member was removed from the cluster; shutting down");
            server.shutdown.cancel();
            return;
        }
        if m.current_leader != last_leader {
            if m.current_leader.is_some() {
                metrics::leader_changed();
            }
            tracing::info!(leader = ?m.current_leader.map(|l| format!("{l:x}")), term = m.current_term, "leader");
            last_leader = m.current_leader;
        }
        metrics::set_raft(
            m.cluster_committed.as_ref().map_or(0, |c| c.index),
            m.current_leader.is_some(),
            m.current_leader == Some(server.id),
        );
        metrics::set_log_compaction(
            m.snapshot.as_ref().map_or(0, |l| l.index),
            m.purged.as_ref().map_or(0, |l| l.index),
        );
        tokio::select! {
            _ = server.shutdown.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

/// Publishes this member's name and client URLs through Raft (etcd's "publish"), retrying
/// until it is recorded.
async fn publish_attributes(server: Arc<Server>) {
    let cmd = pb::Command {
        kind: Some(pb::command::Kind::MemberAttributes(pb::MemberAttributes {
            id: server.id,
            name: server.cfg.name.clone(),
            client_urls: server.cfg.advertise_client_urls.clone(),
        })),
    };
    loop {
        let current = server.sm.member_attributes().get(&server.id).cloned();
        if current.is_some_and(|a| a.name == server.cfg.name && a.client_urls == server.cfg.advertise_client_urls) {
            return;
        }
        tokio::select! {
            _ = server.shutdown.cancelled() => return,
            r = server.propose(cmd.clone()) => match r {
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "publishing member attributes; will retry");
                    tokio::time::sleep(server.cfg.election()).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::applying_too_far_behind;

    #[test]
    fn proposals_are_refused_only_past_etcds_apply_lag() {
        assert!(!applying_too_far_behind(0, 0));
        assert!(!applying_too_far_behind(5_000, 0));
        assert!(applying_too_far_behind(5_001, 0));
        assert!(!applying_too_far_behind(10_000, 9_000));
        assert!(
            !applying_too_far_behind(3, 7),
            "applied ahead of a stale commit view is fine"
        );
    }
}
