//! What the members themselves say, and the membership changes asked of them, through the
//! etcd API (`etcd-client`): the same API every user has. The operator reads MemberList from
//! one member and Status from each ([`MemberProbe`]), and changes the membership one call
//! at a time ([`Members`]): add a learner, promote it, move leadership, remove a member.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use futures::future::BoxFuture;

/// How long one member may take to answer before it counts as unreachable.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a membership change may take (it commits through Raft; a leader election may be
/// under way).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(15);

/// The cluster as its members report it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembersView {
    /// Cluster ID from the member that answered MemberList; `None` when none answered.
    pub cluster_id: Option<u64>,
    pub members: Vec<ObservedMember>,
    /// Leader ID agreed by the members that answered Status.
    pub leader: Option<u64>,
    /// Highest revision any member reported.
    pub revision: Option<i64>,
    /// Version reported by the members (the first one seen).
    pub version: Option<String>,
}

/// One member from MemberList, with its own Status when it answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedMember {
    pub id: u64,
    /// Empty until the member has started and published its name.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
    pub status: Option<MemberHealth>,
}

/// A member's answer to Status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberHealth {
    pub leader: u64,
    pub applied_index: u64,
    pub raft_term: u64,
    pub revision: i64,
    pub version: String,
    /// Active alarms and other errors the member reports.
    pub errors: Vec<String>,
}

impl MembersView {
    /// Whether the cluster has formed: some member answered with a cluster ID.
    pub fn formed(&self) -> bool {
        self.cluster_id.is_some()
    }

    /// The voter other than `id` that has applied the most, among those that answer: where
    /// leadership goes when `id` must give it up.
    pub fn furthest_voter_except(&self, id: u64) -> Option<u64> {
        self.members
            .iter()
            .filter(|m| m.id != id && !m.learner)
            .filter_map(|m| m.status.as_ref().map(|s| (m.id, s.applied_index)))
            .max_by_key(|(_, applied)| *applied)
            .map(|(id, _)| id)
    }

    /// Name of the leader, when known and started.
    pub fn leader_name(&self) -> Option<String> {
        let leader = self.leader?;
        self.members.iter().find(|m| m.id == leader).map(|m| m.name.clone())
    }
}

/// The CA and client certificate (PEM) the operator uses on https client URLs: the
/// contents of the cluster's client TLS Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

/// Reads the members' view. A trait so controller tests, which run without members, can
/// supply one; the real implementation is [`EtcdProbe`], tested against real `lodestone`
/// processes in the `lodestone-tests` crate.
pub trait MemberProbe: Send + Sync {
    /// `endpoints` are client URLs to try for MemberList, in order; `tls` is what to
    /// connect to https ones with.
    fn observe(&self, endpoints: Vec<String>, tls: Option<ClientTls>) -> BoxFuture<'static, MembersView>;
}

/// The real probe: `etcd-client` with short timeouts.
#[derive(Clone, Debug, Default)]
pub struct EtcdProbe;

impl MemberProbe for EtcdProbe {
    fn observe(&self, endpoints: Vec<String>, tls: Option<ClientTls>) -> BoxFuture<'static, MembersView> {
        Box::pin(observe(endpoints, tls))
    }
}

fn options(tls: Option<&ClientTls>) -> ConnectOptions {
    let options = ConnectOptions::new().with_connect_timeout(MEMBER_TIMEOUT);
    match tls {
        Some(t) => options.with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&t.ca))
                .identity(etcd_client::Identity::from_pem(&t.cert, &t.key)),
        ),
        None => options,
    }
}

async fn connect(endpoint: &str, tls: Option<&ClientTls>) -> Option<Client> {
    connect_within(endpoint, tls, MEMBER_TIMEOUT).await
}

/// A client of one member (TLS only for https endpoints), whose requests may take
/// `request_timeout`; connecting itself takes at most [`MEMBER_TIMEOUT`].
async fn connect_within(endpoint: &str, tls: Option<&ClientTls>, request_timeout: Duration) -> Option<Client> {
    let tls = tls.filter(|_| endpoint.starts_with("https://"));
    let options = options(tls).with_timeout(request_timeout);
    tokio::time::timeout(MEMBER_TIMEOUT, Client::connect([endpoint], Some(options)))
        .await
        .ok()?
        .ok()
}

/// Asks the members: MemberList from the first endpoint that answers, then Status from every
/// member listed, concurrently.
pub async fn observe(endpoints: Vec<String>, tls: Option<ClientTls>) -> MembersView {
    let mut view = MembersView::default();
    for endpoint in &endpoints {
        let Some(mut client) = connect(endpoint, tls.as_ref()).await else {
            continue;
        };
        let Ok(list) = client.member_list().await else { continue };
        view.cluster_id = list.header().map(|h| h.cluster_id());
        view.members = list
            .members()
            .iter()
            .map(|m| ObservedMember {
                id: m.id(),
                name: m.name().to_string(),
                peer_urls: m.peer_urls().to_vec(),
                client_urls: m.client_urls().to_vec(),
                learner: m.is_learner(),
                status: None,
            })
            .collect();
        break;
    }
    let statuses = futures::future::join_all(
        view.members
            .iter()
            .map(|m| member_status(m.client_urls.clone(), tls.as_ref())),
    )
    .await;
    for (member, status) in view.members.iter_mut().zip(statuses) {
        member.status = status;
    }
    // The leader is the one named by the member that has seen the newest term.
    let mut newest_term = 0;
    for status in view.members.iter().filter_map(|m| m.status.as_ref()) {
        if status.leader != 0 && status.raft_term >= newest_term {
            newest_term = status.raft_term;
            view.leader = Some(status.leader);
        }
        view.revision = Some(view.revision.map_or(status.revision, |r| r.max(status.revision)));
        if view.version.is_none() && !status.version.is_empty() {
            view.version = Some(status.version.clone());
        }
    }
    view
}

async fn member_status(client_urls: Vec<String>, tls: Option<&ClientTls>) -> Option<MemberHealth> {
    let url = client_urls.first()?;
    let mut client = connect(url, tls).await?;
    let status = client.status().await.ok()?;
    Some(MemberHealth {
        leader: status.leader(),
        applied_index: status.raft_applied_index(),
        raft_term: status.raft_term(),
        revision: status.header().map(|h| h.revision()).unwrap_or_default(),
        version: status.version().to_string(),
        errors: status.errors().to_vec(),
    })
}

/// Why a membership change did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("no member answered at {0:?}")]
    Unreachable(Vec<String>),
    /// The learner has not caught up with the leader yet: promote it later.
    #[error("the learner has not caught up with the leader yet")]
    NotCaughtUp,
    /// A member refused the change; etcd's message.
    #[error("{0}")]
    Refused(String),
}

/// Membership changes, one call each. Every call is idempotent, so a step the operator
/// repeats after a restart (it records the step before making it) does no harm: adding a
/// learner whose peer URL is already a member answers that member's id; promoting a voter,
/// or removing a member that is gone, succeeds.
///
/// A trait so controller tests, which run without members, can supply one; the real
/// implementation is [`EtcdMembers`], tested against real `lodestone` processes.
pub trait Members: Send + Sync {
    /// MemberAdd as a learner with `peer_url`; the new (or existing) member's id.
    fn add_learner(
        &self,
        endpoints: Vec<String>,
        tls: Option<ClientTls>,
        peer_url: String,
    ) -> BoxFuture<'static, Result<u64, ChangeError>>;
    /// MemberPromote; `NotCaughtUp` while the learner trails the leader.
    fn promote(
        &self,
        endpoints: Vec<String>,
        tls: Option<ClientTls>,
        id: u64,
    ) -> BoxFuture<'static, Result<(), ChangeError>>;
    /// MemberRemove.
    fn remove(
        &self,
        endpoints: Vec<String>,
        tls: Option<ClientTls>,
        id: u64,
    ) -> BoxFuture<'static, Result<(), ChangeError>>;
    /// MoveLeader, asked of the leader at `leader_endpoint` (etcd requires it), to `to`.
    fn move_leader(
        &self,
        leader_endpoint: String,
        tls: Option<ClientTls>,
        to: u64,
    ) -> BoxFuture<'static, Result<(), ChangeError>>;
}

/// The real membership calls: `etcd-client`, trying each endpoint in turn.
#[derive(Clone, Debug, Default)]
pub struct EtcdMembers;

/// True when `e` says the member could not be reached at all (as opposed to an answer).
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable && !s.message().starts_with("etcdserver: ")
        }
        _ => true,
    }
}

/// Makes `call` on the first member of `endpoints` that answers (with a result or a
/// refusal), with the change timeout.
async fn on_first<T, F, Fut>(
    endpoints: &[String],
    tls: Option<&ClientTls>,
    mut call: F,
) -> Result<Result<T, etcd_client::Error>, ChangeError>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    for endpoint in endpoints {
        let Some(c) = connect_within(endpoint, tls, CHANGE_TIMEOUT).await else {
            continue;
        };
        match call(c).await {
            Err(e) if unreachable(&e) => continue,
            r => return Ok(r),
        }
    }
    Err(ChangeError::Unreachable(endpoints.to_vec()))
}

fn refused(e: etcd_client::Error) -> ChangeError {
    match e {
        etcd_client::Error::GRpcStatus(s) => ChangeError::Refused(s.message().to_string()),
        other => ChangeError::Refused(other.to_string()),
    }
}

fn message(e: &etcd_client::Error) -> &str {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message(),
        _ => "",
    }
}

impl Members for EtcdMembers {
    fn add_learner(
        &self,
        endpoints: Vec<String>,
        tls: Option<ClientTls>,
        peer_url: String,
    ) -> BoxFuture<'static, Result<u64, ChangeError>> {
        Box::pin(async move {
            let added = on_first(&endpoints, tls.as_ref(), |mut c| {
                let peer_url = peer_url.clone();
                async move {
                    let opts = etcd_client::MemberAddOptions::new().with_is_learner();
                    match c.member_add([peer_url.as_str()], Some(opts)).await {
                        Ok(r) => Ok(r.member().map(|m| m.id())),
                        // Added before (a repeated step): that member is the answer.
                        Err(e) if message(&e) == "etcdserver: Peer URLs already exists" => {
                            let list = c.member_list().await?;
                            Ok(list
                                .members()
                                .iter()
                                .find(|m| m.peer_urls().contains(&peer_url))
                                .map(|m| m.id()))
                        }
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
            added
                .map_err(refused)?
                .ok_or_else(|| ChangeError::Refused(format!("no member with peer URL {peer_url} after MemberAdd")))
        })
    }

    fn promote(
        &self,
        endpoints: Vec<String>,
        tls: Option<ClientTls>,
        id: u64,
    ) -> BoxFuture<'static, Result<(), ChangeError>> {
        Box::pin(async move {
            match on_first(
                &endpoints,
                tls.as_ref(),
                |mut c| async move { c.member_promote(id).await },
            )
            .await?
            {
                Ok(_) => Ok(()),
                Err(e)
                    if message(&e) == "etcdserver: can only promote a learner member which is in sync with leader" =>
                {
                    Err(ChangeError::NotCaughtUp)
                }
                // Already a voter (a repeated step).
                Err(e) if message(&e) == "etcdserver: can only promote a learner member" => Ok(()),
                Err(e) => Err(refused(e)),
            }
        })
    }

    fn remove(
        &self,
        endpoints: Vec<String>,
        tls: Option<ClientTls>,
        id: u64,
    ) -> BoxFuture<'static, Result<(), ChangeError>> {
        Box::pin(async move {
            match on_first(
                &endpoints,
                tls.as_ref(),
                |mut c| async move { c.member_remove(id).await },
            )
            .await?
            {
                Ok(_) => Ok(()),
                // Gone already (a repeated step).
                Err(e) if message(&e) == "etcdserver: member not found" => Ok(()),
                Err(e) => Err(refused(e)),
            }
        })
    }

    fn move_leader(
        &self,
        leader_endpoint: String,
        tls: Option<ClientTls>,
        to: u64,
    ) -> BoxFuture<'static, Result<(), ChangeError>> {
        Box::pin(async move {
            on_first(
                std::slice::from_ref(&leader_endpoint),
                tls.as_ref(),
                |mut c| async move { c.move_leader(to).await },
            )
            .await?
            .map(|_| ())
            .map_err(refused)
        })
    }
}

/// A member ID the way etcd prints it.
pub fn format_id(id: u64) -> String {
    format!("{id:x}")
}
