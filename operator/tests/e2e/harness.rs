//! The operator, restarted at will, over a [`ProcessPlatform`]; the writer; the invariants.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use futures::future::BoxFuture;
use lodestone_operator::controller::{self, Context};
use lodestone_operator::crd::LodestoneCluster;
use lodestone_operator::members::{
    ChangeError, ClientTls, EtcdMembers, EtcdProbe, MemberProbe, Members, MembersView, format_id,
};
use lodestone_operator::metrics::Metrics;

use crate::platform::{Dns, Faults, ProcessPlatform};

/// The operator's member probe, through the platform's DNS.
struct Probe {
    dns: Dns,
}

impl MemberProbe for Probe {
    fn observe(&self, endpoints: Vec<String>, tls: Option<ClientTls>) -> BoxFuture<'static, MembersView> {
        let dns = self.dns.clone();
        let endpoints = endpoints.iter().map(|e| dns.resolve(e)).collect();
        Box::pin(async move {
            let mut view = EtcdProbe.observe(endpoints, tls).await;
            for m in &mut view.members {
                m.peer_urls = m.peer_urls.iter().map(|u| dns.name(u)).collect();
                m.client_urls = m.client_urls.iter().map(|u| dns.name(u)).collect();
            }
            view
        })
    }
}

/// The operator's membership calls, through the platform's DNS, counted as changes.
struct Calls {
    dns: Dns,
    faults: Arc<Faults>,
}

impl Calls {
    fn resolve(&self, endpoints: Vec<String>) -> Vec<String> {
        endpoints.iter().map(|e| self.dns.resolve(e)).collect()
    }
}

/// Runs one membership call unless the operator is dead, and counts it when it succeeds.
async fn counted<T>(
    faults: Arc<Faults>,
    what: String,
    call: impl std::future::Future<Output = Result<T, ChangeError>>,
) -> Result<T, ChangeError> {
    faults.admit(&what).map_err(ChangeError::Refused)?;
    let result = call.await;
    if result.is_ok() {
        faults.made(what);
    }
    result
}

impl Members for Calls {
    fn add_learner(
        &self,
        endpoints: Vec<String>,
        tls: Option<ClientTls>,
        peer_url: String,
    ) -> BoxFuture<'static, Result<u64, ChangeError>> {
        let call = EtcdMembers.add_learner(self.resolve(endpoints), tls, self.dns.resolve(&peer_url));
        Box::pin(counted(self.faults.clone(), format!("MemberAdd {peer_url}"), call))
    }

    fn promote(
        &self,
        endpoints: Vec<String>,
        tls: Option<ClientTls>,
        id: u64,
    ) -> BoxFuture<'static, Result<(), ChangeError>> {
        let call = EtcdMembers.promote(self.resolve(endpoints), tls, id);
        Box::pin(counted(
            self.faults.clone(),
            format!("MemberPromote {}", format_id(id)),
            call,
        ))
    }

    fn remove(
        &self,
        endpoints: Vec<String>,
        tls: Option<ClientTls>,
        id: u64,
    ) -> BoxFuture<'static, Result<(), ChangeError>> {
        let call = EtcdMembers.remove(self.resolve(endpoints), tls, id);
        let faults = self.faults.clone();
        Box::pin(async move {
            let result = counted(faults.clone(), format!("MemberRemove {}", format_id(id)), call).await;
            if result.is_ok() {
                faults.removed.lock().unwrap().insert(id, Instant::now());
            }
            result
        })
    }

    fn move_leader(
        &self,
        leader_endpoint: String,
        tls: Option<ClientTls>,
        to: u64,
    ) -> BoxFuture<'static, Result<(), ChangeError>> {
        let call = EtcdMembers.move_leader(self.dns.resolve(&leader_endpoint), tls, to);
        Box::pin(counted(
            self.faults.clone(),
            format!("MoveLeader {}", format_id(to)),
            call,
        ))
    }
}

/// A cluster resource with `replicas` voters wanted.
pub fn cluster(name: &str, replicas: i32) -> LodestoneCluster {
    cluster_with(name, replicas, |_| {})
}

/// A cluster resource with `replicas` voters wanted, changed by `edit`.
pub fn cluster_with(name: &str, replicas: i32, edit: impl FnOnce(&mut LodestoneCluster)) -> LodestoneCluster {
    let mut cluster: LodestoneCluster = serde_saphyr::from_str(&format!(
        "apiVersion: lodestone.dev/v1alpha1\nkind: LodestoneCluster\nmetadata: {{name: {name}, namespace: default}}\nspec: {{replicas: {replicas}, version: 0.1.0, storage: {{data: {{size: 1Gi}}}}}}\n"
    ))
    .expect("cluster resource");
    cluster.metadata.uid = Some(format!("uid-{name}"));
    cluster.metadata.generation = Some(1);
    edit(&mut cluster);
    cluster
}

/// One scenario: the platform, the operator (restarted when the faults kill it), a writer.
pub struct Harness {
    _dir: tempfile::TempDir,
    pub platform: Arc<ProcessPlatform>,
    pub faults: Arc<Faults>,
    ctx: Arc<Context>,
    /// How many times the operator was restarted.
    pub restarts: usize,
    /// Each invariant broken, as it was seen.
    pub broken: Vec<String>,
    writer: Option<Writer>,
}

impl Harness {
    /// `net` picks the pods' addresses: unique per scenario run.
    pub fn new(name: &str, net: u16, replicas: i32) -> Self {
        Self::of(cluster(name, replicas), net)
    }

    /// A scenario for this cluster resource.
    pub fn of(resource: LodestoneCluster, net: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let faults = Arc::new(Faults::default());
        let platform = ProcessPlatform::start(dir.path(), net, resource, faults.clone());
        let ctx = Self::operator(&platform, &faults);
        Self {
            _dir: dir,
            platform,
            faults,
            ctx,
            restarts: 0,
            broken: Vec::new(),
            writer: None,
        }
    }

    /// A new operator: nothing carried over but the platform's API state.
    fn operator(platform: &Arc<ProcessPlatform>, faults: &Arc<Faults>) -> Arc<Context> {
        Arc::new(Context::new(
            platform.clone(),
            Arc::new(Probe {
                dns: platform.dns.clone(),
            }),
            Arc::new(Calls {
                dns: platform.dns.clone(),
                faults: faults.clone(),
            }),
            Arc::new(Metrics::new()),
        ))
    }

    /// One reconcile, as the controller would run it. A killed operator is replaced.
    pub async fn reconcile(&mut self) {
        let cluster = Arc::new(self.platform.cluster());
        let result = controller::reconcile(cluster, self.ctx.clone()).await;
        if self.faults.dead() {
            self.faults.revive();
            self.faults.abort_after(None);
            self.ctx = Self::operator(&self.platform, &self.faults);
            self.restarts += 1;
        } else if let Err(e) = result {
            eprintln!("reconcile failed: {e}: {:?}", std::error::Error::source(&e));
        }
    }

    /// Reconciles until the cluster is `replicas` healthy voters with nothing left to do, checking
    /// the invariants after each reconcile.
    pub async fn converge(&mut self, replicas: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.reconcile().await;
            let view = self.check_invariants().await;
            if self.settled(replicas, &view) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the cluster did not settle at {replicas} voters in {timeout:?}\nstatus: {:#?}\nmembers: {view:#?}\npods: {:?}\nclaims: {:?}\nchanges: {:#?}\nevents: {:#?}",
                    self.platform.cluster().status,
                    self.platform.pods(),
                    self.platform.claims(),
                    self.faults.journal.lock().unwrap(),
                    self.platform.events(),
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn settled(&self, replicas: usize, view: &MembersView) -> bool {
        let status = self.platform.cluster().status.unwrap_or_default();
        let pods = self.platform.pods();
        let names: BTreeSet<String> = (0..replicas as i32).map(|o| self.platform.names.pod(o)).collect();
        let claims: BTreeSet<String> = names.iter().map(|p| format!("data-{p}")).collect();
        status.phase.as_deref() == Some("Running")
            && status.operation.is_none()
            && status.outdated_members.is_empty()
            && self.platform.all_current()
            && pods.keys().cloned().collect::<BTreeSet<_>>() == names
            && pods.values().all(|(_, ready, _, terminating)| *ready && !terminating)
            && self.platform.claims() == claims
            && view.members.len() == replicas
            && view.members.iter().all(|m| !m.learner && m.status.is_some())
            && view.leader.is_some()
    }

    /// The running members' own view, and the invariants: at most one learner, the voters that
    /// run are a quorum, no process runs under a removed id, nothing the platform saw broke.
    pub async fn check_invariants(&mut self) -> MembersView {
        let running = self.platform.running();
        let endpoints: Vec<String> = running.iter().map(|o| self.platform.dns.client_url(*o)).collect();
        let view = lodestone_operator::members::observe(endpoints.clone(), None).await;
        let learners = view.members.iter().filter(|m| m.learner).count();
        if learners > 1 {
            self.broken.push(format!("{learners} learners at once: {view:?}"));
        }
        let voters: Vec<_> = view.members.iter().filter(|m| !m.learner).collect();
        let running_voters = voters
            .iter()
            .filter(|m| {
                m.peer_urls
                    .iter()
                    .any(|u| running.iter().any(|o| *u == self.platform.dns.peer_url(*o)))
            })
            .count();
        if voters.len() >= 2 && running_voters < voters.len() / 2 + 1 {
            self.broken.push(format!(
                "quorum lost: {running_voters} of {} voters run: {view:?}",
                voters.len()
            ));
        }
        // A removed member's process may run on until its slot goes, but none may start
        // under a removed id.
        let removed = self.faults.removed.lock().unwrap().clone();
        for (ordinal, started) in self.platform.running_since() {
            let endpoint = self.platform.dns.client_url(ordinal);
            if let Some(id) = member_id(&endpoint).await
                && let Some(at) = removed.get(&id)
                && started > *at
            {
                self.broken.push(format!(
                    "{endpoint} started as member {} after it was removed",
                    format_id(id)
                ));
            }
        }
        self.broken.extend(self.platform.violations.lock().unwrap().drain(..));
        view
    }

    pub fn start_writer(&mut self) {
        self.writer = Some(Writer::start(self.platform.clone()));
    }

    /// Stops the writer and checks that every acknowledged write is there; the acknowledged
    /// keys.
    pub async fn check_writes_keys(&mut self) -> Vec<String> {
        let writer = self.writer.take().expect("a writer was started");
        let acked = writer.stop().await;
        let running = self.platform.running();
        let endpoints: Vec<String> = running.iter().map(|o| self.platform.dns.client_url(*o)).collect();
        let mut client = Client::connect(endpoints, None).await.expect("connect");
        let got = client
            .get("w/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("read back the writes");
        let present: BTreeSet<String> = got.kvs().iter().map(|kv| kv.key_str().unwrap().to_string()).collect();
        let lost: Vec<&String> = acked.iter().filter(|k| !present.contains(*k)).collect();
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
        acked
    }

    /// Stops the writer and checks that every acknowledged write is there; how many there were.
    pub async fn check_writes(&mut self) -> usize {
        self.check_writes_keys().await.len()
    }

    pub fn assert_unbroken(&self) {
        assert!(
            self.broken.is_empty(),
            "invariants broken: {:#?}\nchanges: {:#?}",
            self.broken,
            self.faults.journal.lock().unwrap()
        );
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.platform.shutdown();
    }
}

/// The id a member process answers Status with.
async fn member_id(endpoint: &str) -> Option<u64> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(1));
    let mut client = Client::connect([endpoint], Some(options)).await.ok()?;
    let status = client.status().await.ok()?;
    status.header().map(|h| h.member_id())
}

/// Puts `w/<n>` one after another on whichever member runs, recording the acknowledged ones.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Writer {
    fn start(platform: Arc<ProcessPlatform>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut n = 0u64;
                let mut client: Option<Client> = None;
                while !stop.load(Ordering::SeqCst) {
                    if client.is_none() {
                        let endpoints: Vec<String> =
                            platform.running().iter().map(|o| platform.dns.client_url(*o)).collect();
                        let options = ConnectOptions::new()
                            .with_connect_timeout(Duration::from_millis(500))
                            .with_timeout(Duration::from_secs(5));
                        client = Client::connect(endpoints, Some(options)).await.ok();
                    }
                    let Some(c) = client.as_mut() else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let key = format!("w/{n:08}");
                    match c.put(key.clone(), n.to_string(), None).await {
                        Ok(_) => acked.lock().unwrap().push(key),
                        Err(_) => {
                            client = None;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                acked.lock().unwrap().clone()
            }
        });
        Self { stop, task }
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("writer")
    }
}
