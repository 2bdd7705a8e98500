//! Starting a member: open storage, decide whether it founds a cluster, joins one or
//! resumes from its data, start consensus, and start the background loops.
//!
//! - **Found** (empty storage, `--initial-cluster-state new`): the id comes from the peer
//!   URLs and the cluster token; first the other founders are asked whether the cluster
//!   already knows this member as started (etcd's `isMemberBootstrapped`).
//! - **Join** (empty storage, `existing`): the members in `--initial-cluster` are asked for
//!   the cluster id and this member's id, matched by its peer URLs.
//! - **Resume** (data present): the identity recorded in the write-ahead log; the
//!   `--initial-cluster*` flags are ignored, as etcd does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Member, compactor, corruption, events, forward, leases, reads, watch_cache};
use crate::config::{ClusterState, Config, ConfigError, InitialMember};
use crate::peer::client::{self, Dialer, Peers};
use crate::proto::lodestone as pb;
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::StateMachine;
use crate::raft::{Consensus, MemberNode, NodeId};

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
         so its data was lost and it must not come back under its old identity (a voter that forgot its log \
         could help elect a leader that lacks committed writes). Remove it (`etcdctl member remove {member}`), \
         add it back (`etcdctl member add {name} --peer-urls={peer_urls}`) and start it on an empty data \
         directory with --initial-cluster-state existing"
    )]
    AlreadyBootstrapped {
        member: String,
        name: String,
        peer_urls: String,
        peer: String,
    },
    #[error("cannot listen on {url}: {err}")]
    Listen { url: String, err: std::io::Error },
    /// The member ran, then had to stop on an error (see `Member::failure`).
    #[error("{0}")]
    Failed(String),
}

/// Who this member is and how it starts.
struct Identity {
    id: NodeId,
    cluster_id: u64,
    /// The founding membership, when this member founds the cluster.
    founders: Option<BTreeMap<NodeId, MemberNode>>,
    joined_as_learner: bool,
}

async fn identify(cfg: &Config, log: &LogStore, dialer: &Dialer) -> Result<Identity, StartError> {
    if !log.is_pristine()? {
        let (cluster_id, id) = log
            .identity()?
            .ok_or_else(|| StartError::Raft("write-ahead log has no member identity".into()))?;
        tracing::info!(member = %format!("{id:x}"), "resuming from existing data; --initial-cluster flags are ignored");
        return Ok(Identity {
            id,
            cluster_id,
            founders: None,
            joined_as_learner: false,
        });
    }
    if cfg.initial_cluster_state == ClusterState::Existing {
        let (cluster_id, id, learner) = join_existing(cfg, dialer).await?;
        log.save_identity(cluster_id, id).await?;
        tracing::info!(member = %format!("{id:x}"), cluster = %format!("{cluster_id:x}"), learner, "joining the existing cluster");
        return Ok(Identity {
            id,
            cluster_id,
            founders: None,
            joined_as_learner: learner,
        });
    }
    let members = cfg.initial_members()?;
    let me = cfg.self_member(&members)?;
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let cluster_id = crate::config::cluster_id(&ids, &cfg.initial_cluster_token);
    refuse_if_bootstrapped(&members, &me, cluster_id, dialer).await?;
    log.save_identity(cluster_id, me.id).await?;
    let founders = members
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
    Ok(Identity {
        id: me.id,
        cluster_id,
        founders: Some(founders),
        joined_as_learner: false,
    })
}

impl Member {
    /// Opens storage, bootstraps or resumes the member, starts Raft and the background
    /// loops. The member runs until `shutdown` is cancelled and [`Member::stop`] is called.
    pub async fn start(cfg: Config, dialer: Dialer, shutdown: CancellationToken) -> Result<Arc<Member>, StartError> {
        let retention = cfg.retention()?;
        let token_kind = crate::auth::tokens::TokenKind::from_config(&cfg)?;
        let log = LogStore::open(&cfg.wal_dir())?;
        let sm = StateMachine::open(&cfg.state_machine_dir())?;
        let barrier_sm = sm.clone();
        log.set_durability_barrier(Arc::new(move |upto| barrier_sm.sync_through(upto)));

        let who = identify(&cfg, &log, &dialer).await?;
        let recovered_to = log.saved_commit_index()?;
        let cluster_id = Arc::new(AtomicU64::new(who.cluster_id));
        let peers = Arc::new(Peers::new(who.id, cluster_id.clone(), dialer));
        let removed = CancellationToken::new();
        let shared = sm.shared.clone();
        shared.tokens.set_ttl(cfg.auth_token_ttl);
        // Where the watch cache starts following (before Raft replays anything).
        let start_revision = *shared.revision().borrow();
        let compacted_physically = shared
            .mvcc
            .compacted_physically()
            .map_err(|e| StartError::Raft(format!("reading compaction progress: {e}")))?;
        let consensus = Consensus::start(who.id, &cfg, peers.clone(), removed.clone(), log.clone(), sm)
            .await
            .map_err(StartError::Raft)?;
        if let Some(founders) = who.founders {
            consensus.initialize(founders).await;
        }
        let tasks = TaskTracker::new();
        let forwarder = forward::Forwarder::new(
            cfg.max_request_bytes,
            cfg.request_timeout(),
            shutdown.clone(),
            tasks.clone(),
        );
        let member = Arc::new(Member {
            id: who.id,
            forwarder,
            reads: reads::ReadBarrier::new(reads::Scope::ThroughLeader),
            leadership: reads::ReadBarrier::new(reads::Scope::HereOnly),
            cfg,
            cluster_id,
            consensus,
            sm: shared,
            log,
            peers,
            recovered_to,
            lease_clock: leases::LeaseClock::default(),
            membership_lock: Mutex::new(()),
            db_size: std::sync::Mutex::new((None, (0, 0))),
            watch_cache: watch_cache::WatchCache::new(start_revision),
            compacted_physically: tokio::sync::watch::channel(compacted_physically).0,
            joined_as_learner: who.joined_as_learner,
            shutdown,
            failure: std::sync::Mutex::new(None),
            tasks,
            token_kind,
        });
        let m = &member;
        m.tasks.spawn(reads::run(m.clone(), |m| &m.reads));
        m.tasks.spawn(reads::run(m.clone(), |m| &m.leadership));
        m.tasks.spawn(events::follow_consensus(m.clone()));
        m.tasks.spawn(watch_cache::run(m.clone()));
        m.tasks.spawn(events::publish_attributes(m.clone()));
        m.tasks.spawn(leases::expire_leases(m.clone()));
        m.tasks.spawn(compactor::run(m.clone(), retention));
        m.tasks.spawn(compactor::remove_compacted_history(m.clone()));
        m.tasks
            .spawn(corruption::run(m.clone(), m.cfg.experimental_corrupt_check_time));
        {
            let s = m.clone();
            m.tasks.spawn(async move {
                tokio::select! {
                    _ = s.shutdown.cancelled() => {}
                    _ = removed.cancelled() => {
                        tracing::warn!("this member was removed from the cluster; shutting down");
                        s.shutdown.cancel();
                    }
                }
            });
        }
        Ok(member)
    }
}

/// etcd's `isMemberBootstrapped`: before a member founds a cluster on empty storage, it asks
/// the other founders whether that cluster already runs with this member in it as a started
/// member (one that published its client URLs). If so, this member lost its data: coming
/// back under its old identity would let it vote and acknowledge as if it still held the
/// entries it forgot, which can lose committed writes. Founders that are not up yet, or that
/// have never seen this member start, let it through.
async fn refuse_if_bootstrapped(
    members: &[InitialMember],
    me: &InitialMember,
    cluster_id: u64,
    dialer: &Dialer,
) -> Result<(), StartError> {
    let asks = members
        .iter()
        .filter(|m| m.name != me.name)
        .flat_map(|m| m.peer_urls.iter())
        .map(|url| async move {
            let mut c = client::anonymous(url, dialer).ok()?;
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
///
/// This member's storage is empty. If the cluster knows it as a voter that has started
/// before (it published its client URLs), it lost its data: handed its old voting id back,
/// it would vote with an empty log and could help elect a leader that lacks committed
/// entries. It refuses to start instead, saying how to replace it (the same rule as
/// [`refuse_if_bootstrapped`] for founders). A member added but never started, or a learner
/// (which does not vote), joins.
async fn join_existing(cfg: &Config, dialer: &Dialer) -> Result<(u64, NodeId, bool), StartError> {
    let members = cfg.initial_members()?;
    // A joiner need not be listed in --initial-cluster (etcd insists; the list only says whom
    // to ask): one added later, e.g. by the operator to a StatefulSet whose pods share one
    // --initial-cluster, finds itself by its --initial-advertise-peer-urls in the member list.
    let me = match cfg.self_member(&members) {
        Err(ConfigError::NameNotInCluster(_)) => InitialMember {
            name: cfg.name.clone(),
            peer_urls: cfg.initial_advertise_peer_urls.clone(),
            id: 0,
        },
        r => r?,
    };
    let mut last_err = String::from("--initial-cluster names no other member");
    let mut not_found_since: Option<std::time::Instant> = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        for m in members.iter().filter(|m| m.name != me.name) {
            for url in &m.peer_urls {
                let Ok(mut c) = client::anonymous(url, dialer) else {
                    continue;
                };
                match tokio::time::timeout(cfg.request_timeout(), c.cluster_info(pb::ClusterInfoRequest {})).await {
                    Ok(Ok(info)) => {
                        let info = info.into_inner();
                        let found = info
                            .members
                            .iter()
                            .find(|x| x.peer_ur_ls.iter().any(|u| me.peer_urls.contains(u)));
                        if let Some(x) = found {
                            if !x.is_learner && !x.client_ur_ls.is_empty() {
                                return Err(StartError::AlreadyBootstrapped {
                                    member: format!("{:x}", x.id),
                                    name: me.name.clone(),
                                    peer_urls: me.peer_urls.join(","),
                                    peer: url.clone(),
                                });
                            }
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
