//! `ProcessPlatform`: a stand-in for the Kubernetes API server, the StatefulSet controller and
//! the kubelet, so the operator's whole reconcile runs against real `lodestone` members.
//!
//! - **API state** (the cluster resource, the applied objects, the pods and claims) lives in
//!   `api.json` under the platform's directory and is rewritten on every change. The operator
//!   keeps nothing between reconciles but what it reads back from here, so dropping its
//!   `Context` is an operator restart.
//! - **The StatefulSet controller**: pods `<sts>-0 .. <sts>-(replicas-1)` exist, created from the
//!   template of the moment (its hash is the revision), and are never updated in place
//!   (`OnDelete`): a deleted pod is created again from the current template once its process
//!   has exited. Slots above `replicas` are deleted. Each pod's claims are created when missing
//!   and never deleted, except by an explicit claim delete (held, like the PVC protection
//!   finalizer, until no pod uses the claim).
//! - **The kubelet**: a pod is a `lodestone` process with the container's environment expanded
//!   as the kubelet would (`envFrom` the ConfigMap, `$(VAR)` references, the downward API's
//!   pod name), its volumes as directories, and its own loopback address standing in for the
//!   pod IP. A process that exits is restarted with a doubling backoff; readiness is
//!   `/readyz` on the metrics port.
//! - **Cluster DNS**: the names of the headless Service (`<pod>.<peer>.<ns>.svc`) are rewritten
//!   to the pod addresses in what a member is given, and [`Dns`] translates for the operator's
//!   etcd clients.
//!
//! Every change the operator makes is counted; [`Faults`] ends the operator after a chosen
//! one, so a scenario can be re-run with the operator killed after each of its steps.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, PodTemplateSpec, Secret};
use lodestone_operator::Error;
use lodestone_operator::controller::plan::{Desired, PlannedEvent};
use lodestone_operator::controller::rollout::PodInfo;
use lodestone_operator::crd::{LodestoneCluster, LodestoneClusterStatus, LodestoneSnapshot, LodestoneSnapshotStatus};
use lodestone_operator::names::Names;
use lodestone_operator::platform::{JobState, Platform};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// How long a deleted pod's process has to stop after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(10);
/// The longest restart backoff (the kubelet's is 5 minutes; a test cannot wait that long).
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// The cluster DNS of one platform: each pod's Service name and its loopback address.
#[derive(Clone, Debug)]
pub struct Dns {
    /// (`<pod>.<peer>.<ns>.svc`, address), for every slot a scenario may use.
    pairs: Vec<(String, String)>,
}

impl Dns {
    fn new(names: &Names, net: u16) -> Self {
        let pairs = (0..16)
            .map(|ordinal| (names.pod_host(&names.pod(ordinal)), pod_ip(net, ordinal)))
            .collect();
        Self { pairs }
    }

    /// Service names to addresses, as a member or a client resolves them.
    pub fn resolve(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (host, ip) in &self.pairs {
            out = out.replace(host.as_str(), ip);
        }
        out
    }

    /// Addresses in URLs back to Service names, as the operator knows the members.
    pub fn name(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (host, ip) in &self.pairs {
            out = out.replace(&format!("//{ip}:"), &format!("//{host}:"));
        }
        out
    }

    /// The peer URL of the pod at `ordinal`, by address.
    pub fn peer_url(&self, ordinal: i32) -> String {
        format!("http://{}:2380", self.pairs[ordinal as usize].1)
    }

    /// The client URL of the pod at `ordinal`, by address.
    pub fn client_url(&self, ordinal: i32) -> String {
        format!("http://{}:2379", self.pairs[ordinal as usize].1)
    }
}

/// The address of a pod: `net` numbers the platform (one per scenario run).
fn pod_ip(net: u16, ordinal: i32) -> String {
    format!("127.{}.{}.{}", 77 + net / 256, net % 256, ordinal + 1)
}

/// Kills the operator after its `k`-th change: that change is made, every later call fails,
/// until the scenario starts a new operator.
#[derive(Debug, Default)]
pub struct Faults {
    changes: AtomicUsize,
    abort_after: Mutex<Option<usize>>,
    dead: AtomicBool,
    /// Every change made, in order, for the failure messages.
    pub journal: Mutex<Vec<String>>,
    /// Kill after the first change whose description contains this.
    abort_on: Mutex<Option<String>>,
    /// Member ids the operator removed, and when: none may start again.
    pub removed: Mutex<BTreeMap<u64, Instant>>,
}

impl Faults {
    pub fn abort_after(&self, k: Option<usize>) {
        *self.abort_after.lock().unwrap() = k;
    }

    /// Whether the operator has been killed (and must be restarted).
    pub fn dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// A new operator takes over: calls go through again.
    pub fn revive(&self) {
        self.dead.store(false, Ordering::SeqCst);
    }

    pub fn changes(&self) -> usize {
        self.changes.load(Ordering::SeqCst)
    }

    /// Kills the operator after the first change whose description contains `what`.
    pub fn abort_on(&self, what: &str) {
        *self.abort_on.lock().unwrap() = Some(what.to_string());
    }

    /// Called before a change: refused once the operator is dead.
    pub fn admit(&self, what: &str) -> Result<(), String> {
        if self.dead() {
            Err(format!("the operator was killed before {what}"))
        } else {
            Ok(())
        }
    }

    /// Called after a change was made.
    pub fn made(&self, what: String) {
        let n = self.changes.fetch_add(1, Ordering::SeqCst) + 1;
        self.journal.lock().unwrap().push(format!("{n}: {what}"));
        let what = what.as_str();
        let matches = {
            let mut on = self.abort_on.lock().unwrap();
            let hit = on.as_deref().is_some_and(|w| what.contains(w));
            if hit {
                *on = None;
            }
            hit
        };
        if *self.abort_after.lock().unwrap() == Some(n) || matches {
            self.dead.store(true, Ordering::SeqCst);
        }
    }
}

/// A pod as the API holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PodRecord {
    ordinal: i32,
    revision: String,
    /// The template it was created from: a pod never changes after creation.
    template: PodTemplateSpec,
    ready: bool,
    restarts: u32,
    terminating: bool,
    /// The end of the log of the last run that exited.
    last_termination: Option<String>,
}

/// Everything the stand-in API server holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ApiState {
    cluster: Option<LodestoneCluster>,
    config_maps: BTreeMap<String, ConfigMap>,
    statefulset: Option<StatefulSet>,
    /// Objects with no behaviour here (Services, PDB, ServiceAccount), by kind/name.
    other: BTreeMap<String, serde_json::Value>,
    claims: BTreeSet<String>,
    /// Claims deleted while a pod still uses them.
    claims_terminating: BTreeSet<String>,
    pods: BTreeMap<String, PodRecord>,
    events: Vec<String>,
    snapshots: BTreeMap<String, LodestoneSnapshot>,
    jobs: BTreeMap<String, JobRecord>,
}

/// How a Job went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum JobOutcome {
    Running,
    Succeeded(String),
    Failed(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct JobRecord {
    job: Job,
    outcome: JobOutcome,
}

/// A pod's process, which only the kubelet knows.
struct Process {
    child: Option<Child>,
    /// When the running process was started.
    started: Instant,
    /// When to start it again after it exited.
    start_at: Instant,
    /// When SIGTERM was sent, for a deleted pod.
    stopping: Option<Instant>,
}

/// See the module documentation.
pub struct ProcessPlatform {
    dir: PathBuf,
    bin: PathBuf,
    net: u16,
    pub dns: Dns,
    pub names: Names,
    pub faults: Arc<Faults>,
    api: Mutex<ApiState>,
    processes: Mutex<BTreeMap<String, Process>>,
    /// What went wrong that the reconcile cannot see (checked by the scenarios).
    pub violations: Mutex<Vec<String>>,
    /// Each pod delete that took effect, in order, with whether that member led the cluster
    /// at that moment (as the members said then; `None` when no leader was known or the
    /// member was not listed).
    pub pod_deletes: Mutex<Vec<(String, Option<bool>)>>,
    /// Deleted claims keep their data aside (a PersistentVolume with reclaim policy Retain),
    /// so a scenario can bind it again.
    pub retain: AtomicBool,
    stop: CancellationToken,
}

impl ProcessPlatform {
    /// The members as the operator's own observe step sees them now, asked through every
    /// running pod.
    async fn members_now(&self) -> lodestone_operator::members::MembersView {
        let endpoints = self.running().into_iter().map(|o| self.dns.client_url(o)).collect();
        lodestone_operator::members::observe(endpoints, None).await
    }

    /// A platform holding `cluster`, its pods on their own loopback addresses ([`pod_ip`]), its state under
    /// `dir`. The kubelet runs until [`ProcessPlatform::shutdown`].
    pub fn start(dir: &Path, net: u16, cluster: LodestoneCluster, faults: Arc<Faults>) -> Arc<Self> {
        let names = Names::of(&cluster);
        std::fs::create_dir_all(dir.join("volumes")).unwrap();
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let platform = Arc::new(Self {
            dir: dir.to_path_buf(),
            bin: lodestone_tests::lodestone_bin(),
            net,
            dns: Dns::new(&names, net),
            names,
            faults,
            api: Mutex::new(ApiState {
                cluster: Some(cluster),
                ..ApiState::default()
            }),
            processes: Mutex::default(),
            violations: Mutex::default(),
            pod_deletes: Mutex::default(),
            retain: AtomicBool::new(false),
            stop: CancellationToken::new(),
        });
        platform.save(&platform.api.lock().unwrap());
        let kubelet = platform.clone();
        tokio::spawn(async move {
            while !kubelet.stop.is_cancelled() {
                kubelet.tick().await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = kubelet.stop.cancelled() => {}
                }
            }
        });
        platform
    }

    /// Stops the kubelet and every member.
    pub fn shutdown(&self) {
        self.stop.cancel();
        for process in self.processes.lock().unwrap().values_mut() {
            if let Some(child) = process.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn save(&self, api: &ApiState) {
        let text = serde_json::to_vec_pretty(api).expect("api state serializes");
        let tmp = self.dir.join("api.json.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join("api.json")).unwrap();
    }

    /// The cluster resource as the API holds it (what a reconcile is handed).
    pub fn cluster(&self) -> LodestoneCluster {
        self.api.lock().unwrap().cluster.clone().expect("the cluster exists")
    }

    /// A user edits the spec (a new generation).
    pub fn edit(&self, change: impl FnOnce(&mut LodestoneCluster)) {
        let mut api = self.api.lock().unwrap();
        let cluster = api.cluster.as_mut().expect("the cluster exists");
        change(cluster);
        cluster.metadata.generation = Some(cluster.metadata.generation.unwrap_or(1) + 1);
        self.save(&api);
    }

    /// The pods, by name: (ordinal, ready, restarts, terminating).
    pub fn pods(&self) -> BTreeMap<String, (i32, bool, u32, bool)> {
        let api = self.api.lock().unwrap();
        api.pods
            .iter()
            .map(|(n, p)| (n.clone(), (p.ordinal, p.ready, p.restarts, p.terminating)))
            .collect()
    }

    /// Whether every pod runs the StatefulSet's current template.
    pub fn all_current(&self) -> bool {
        let api = self.api.lock().unwrap();
        let Some(sts) = &api.statefulset else { return true };
        let revision = Self::revision(sts);
        api.pods.values().all(|p| p.revision == revision)
    }

    pub fn claims(&self) -> BTreeSet<String> {
        self.api.lock().unwrap().claims.clone()
    }

    pub fn events(&self) -> Vec<String> {
        self.api.lock().unwrap().events.clone()
    }

    /// Ordinals whose process is running now.
    pub fn running(&self) -> Vec<i32> {
        self.running_since().into_iter().map(|(o, _)| o).collect()
    }

    /// Ordinals whose process is running now, with when it started.
    pub fn running_since(&self) -> Vec<(i32, Instant)> {
        let mut processes = self.processes.lock().unwrap();
        let api = self.api.lock().unwrap();
        processes
            .iter_mut()
            .filter_map(|(name, p)| {
                let alive = p.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
                alive
                    .then(|| api.pods.get(name).map(|r| (r.ordinal, p.started)))
                    .flatten()
            })
            .collect()
    }

    /// The log of a pod's process (all its runs).
    pub fn log(&self, pod: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(format!("{pod}.log"))).unwrap_or_default()
    }

    /// The node under a pod loses its disk: the process dies and comes back on empty volumes.
    pub fn lose_volumes(&self, pod: &str) {
        let mut processes = self.processes.lock().unwrap();
        if let Some(child) = processes.get_mut(pod).and_then(|p| p.child.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let api = self.api.lock().unwrap();
        for claim in api.claims.iter().filter(|c| c.ends_with(&format!("-{pod}"))) {
            let dir = self.dir.join("volumes").join(claim);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
        }
    }

    /// The directory behind a claim.
    pub fn volume(&self, claim: &str) -> PathBuf {
        self.dir.join("volumes").join(claim)
    }

    /// A user creates a `LodestoneSnapshot`.
    pub fn create_snapshot(&self, snapshot: LodestoneSnapshot) {
        let mut api = self.api.lock().unwrap();
        api.snapshots
            .insert(snapshot.metadata.name.clone().unwrap_or_default(), snapshot);
        self.save(&api);
    }

    /// The `LodestoneSnapshot`s, by name.
    pub fn snapshot_objects(&self) -> BTreeMap<String, LodestoneSnapshot> {
        self.api.lock().unwrap().snapshots.clone()
    }

    /// An administrator binds a retained volume to the claim of its old name again.
    pub fn rebind(&self, claim: &str) {
        let mut api = self.api.lock().unwrap();
        let volumes = self.dir.join("volumes");
        let _ = std::fs::remove_dir_all(volumes.join(claim));
        std::fs::rename(volumes.join(".retained").join(claim), volumes.join(claim)).expect("a retained volume");
        api.claims.insert(claim.to_string());
        self.save(&api);
    }

    /// Deletes a claim's data, or keeps it aside when volumes are retained.
    fn release(&self, claim: &str) {
        let volumes = self.dir.join("volumes");
        if self.retain.load(Ordering::SeqCst) {
            std::fs::create_dir_all(volumes.join(".retained")).unwrap();
            let _ = std::fs::remove_dir_all(volumes.join(".retained").join(claim));
            let _ = std::fs::rename(volumes.join(claim), volumes.join(".retained").join(claim));
        } else {
            let _ = std::fs::remove_dir_all(volumes.join(claim));
        }
    }

    fn revision(sts: &StatefulSet) -> String {
        let template = &sts.spec.as_ref().expect("spec").template;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(template).unwrap().hash(&mut hasher);
        format!(
            "{}-{:08x}",
            sts.metadata.name.as_deref().unwrap_or_default(),
            hasher.finish() as u32
        )
    }

    /// One pass of the StatefulSet controller and the kubelet.
    async fn tick(&self) {
        self.reconcile_pods();
        // Readiness, probed outside the locks.
        let probes: Vec<(String, String)> = {
            let processes = self.processes.lock().unwrap();
            let api = self.api.lock().unwrap();
            api.pods
                .iter()
                .filter(|(name, _)| processes.get(*name).is_some_and(|p| p.child.is_some()))
                .map(|(name, p)| (name.clone(), pod_ip(self.net, p.ordinal)))
                .collect()
        };
        let mut ready = BTreeMap::new();
        for (name, ip) in probes {
            ready.insert(name, readyz(&ip).await);
        }
        let mut api = self.api.lock().unwrap();
        let mut changed = false;
        for (name, record) in api.pods.iter_mut() {
            let now = ready.get(name).copied().unwrap_or(false) && !record.terminating;
            if record.ready != now {
                record.ready = now;
                changed = true;
            }
        }
        if changed {
            self.save(&api);
        }
    }

    fn reconcile_pods(&self) {
        let mut processes = self.processes.lock().unwrap();
        let mut api = self.api.lock().unwrap();
        let mut changed = false;
        let now = Instant::now();
        let Some(sts) = api.statefulset.clone() else {
            return;
        };
        let spec = sts.spec.clone().expect("spec");
        let replicas = spec.replicas.unwrap_or(1);
        let revision = Self::revision(&sts);

        // Exits: a terminating pod whose process is gone is deleted; any other is restarted
        // after a backoff.
        let names: Vec<String> = api.pods.keys().cloned().collect();
        for name in names {
            let record = api.pods.get_mut(&name).unwrap();
            let process = processes.entry(name.clone()).or_insert(Process {
                child: None,
                started: now,
                start_at: now,
                stopping: None,
            });
            let status = match process.child.as_mut() {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            let exited = status.is_some();
            if record.terminating {
                if process.stopping.is_none() {
                    self.terminate(Some(&mut *process));
                }
                if let (Some(child), Some(since)) = (process.child.as_mut(), process.stopping)
                    && !exited
                    && now.duration_since(since) > GRACE
                {
                    let _ = child.kill();
                }
                if exited || process.child.is_none() {
                    processes.remove(&name);
                    api.pods.remove(&name);
                    changed = true;
                }
                continue;
            }
            if exited {
                let mut child = process.child.take().unwrap();
                let _ = child.wait();
                record.restarts += 1;
                record.ready = false;
                // FallbackToLogsOnError: after a failure, the end of the log is the
                // termination message.
                record.last_termination = status.filter(|s| !s.success()).map(|_| tail(&self.log(&name), 5));
                let backoff = Duration::from_millis(250 << record.restarts.min(5)).min(MAX_BACKOFF);
                process.start_at = now + backoff;
                changed = true;
            }
        }

        // Slots above `replicas` go (their claims stay); their processes stop on the next pass.
        for record in api.pods.values_mut() {
            if record.ordinal >= replicas && !record.terminating {
                record.terminating = true;
                record.ready = false;
                changed = true;
            }
        }

        // Claims deleted while in use go once no pod uses them (before the StatefulSet
        // controller creates a pod again, which then gets new claims).
        let held: Vec<String> = api.claims_terminating.iter().cloned().collect();
        for claim in held {
            if !api.pods.keys().any(|pod| claim.ends_with(&format!("-{pod}"))) {
                api.claims_terminating.remove(&claim);
                api.claims.remove(&claim);
                self.release(&claim);
                changed = true;
            }
        }

        // Missing slots are created from the current template, with their claims.
        for ordinal in 0..replicas {
            let name = format!("{}-{ordinal}", self.names.cluster);
            if api.pods.contains_key(&name) {
                continue;
            }
            for template in spec.volume_claim_templates.iter().flatten() {
                let claim = format!("{}-{name}", template.metadata.name.as_deref().unwrap_or_default());
                if api.claims.insert(claim.clone()) {
                    std::fs::create_dir_all(self.dir.join("volumes").join(&claim)).unwrap();
                }
            }
            api.pods.insert(
                name.clone(),
                PodRecord {
                    ordinal,
                    revision: revision.clone(),
                    template: spec.template.clone(),
                    ready: false,
                    restarts: 0,
                    terminating: false,
                    last_termination: None,
                },
            );
            processes.insert(
                name,
                Process {
                    child: None,
                    started: now,
                    start_at: now,
                    stopping: None,
                },
            );
            changed = true;
        }

        // Start what should run.
        let config_maps = api.config_maps.clone();
        for (name, record) in api.pods.iter_mut() {
            let process = processes.get_mut(name).unwrap();
            if record.terminating || process.child.is_some() || now < process.start_at {
                continue;
            }
            match self.start_pod(name, record, &config_maps) {
                Ok(child) => {
                    process.child = Some(child);
                    process.started = Instant::now();
                }
                Err(message) => {
                    // An init container failed: the pod restarts with a backoff.
                    record.restarts += 1;
                    record.last_termination = Some(message);
                    process.start_at = now + Duration::from_millis(250 << record.restarts.min(5)).min(MAX_BACKOFF);
                    changed = true;
                }
            }
        }

        // Jobs: each runs once; its termination log is its report.
        let job_names: Vec<String> = api.jobs.keys().cloned().collect();
        for name in job_names {
            let key = format!("job/{name}");
            let record = api.jobs.get_mut(&name).unwrap();
            if record.outcome != JobOutcome::Running {
                continue;
            }
            let process = processes.entry(key.clone()).or_insert(Process {
                child: None,
                started: now,
                start_at: now,
                stopping: None,
            });
            match process.child.as_mut() {
                None => {
                    let spec = record
                        .job
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.spec.clone())
                        .expect("job pod spec");
                    let child = self
                        .command(&key.replace('/', "-"), None, &spec, &spec.containers[0], &config_maps)
                        .spawn()
                        .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
                    process.child = Some(child);
                }
                Some(child) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let pod = key.replace('/', "-");
                        record.outcome = if status.success() {
                            JobOutcome::Succeeded(
                                std::fs::read_to_string(self.dir.join("logs").join(format!("{pod}.termination-log")))
                                    .unwrap_or_default(),
                            )
                        } else {
                            JobOutcome::Failed(tail(&self.log(&pod), 5))
                        };
                        processes.remove(&key);
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.save(&api);
        }
    }

    fn terminate(&self, process: Option<&mut Process>) {
        if let Some(process) = process {
            if let Some(child) = process.child.as_ref() {
                // SIGTERM: the member shuts down gracefully.
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .stderr(Stdio::null())
                    .status();
            }
            process.stopping = Some(Instant::now());
        }
    }

    /// A container's command as the kubelet would run it: its environment (`envFrom`
    /// ConfigMaps, `$(VAR)` references, the pod's name), its arguments, its volumes as
    /// directories, the pod's address for `0.0.0.0` and the Service names, and its
    /// termination log as a file of the pod.
    fn command(
        &self,
        pod: &str,
        ip: Option<&str>,
        spec: &PodSpec,
        container: &Container,
        config_maps: &BTreeMap<String, ConfigMap>,
    ) -> Command {
        let mut env: Vec<(String, String)> = Vec::new();
        for from in container.env_from.iter().flatten() {
            let name = from
                .config_map_ref
                .as_ref()
                .expect("only ConfigMap envFrom")
                .name
                .clone();
            let cm = config_maps
                .get(&name)
                .unwrap_or_else(|| panic!("pod {pod} needs ConfigMap {name}, which does not exist"));
            for (k, v) in cm.data.iter().flatten() {
                env.push((k.clone(), v.clone()));
            }
        }
        for var in container.env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (Some(v), _) => expand(v, &env),
                (None, Some(from)) => {
                    let field = from.field_ref.as_ref().expect("only fieldRef env").field_path.as_str();
                    assert_eq!(field, "metadata.name", "unsupported fieldRef {field}");
                    pod.to_string()
                }
                (None, None) => String::new(),
            };
            env.retain(|(k, _)| *k != var.name);
            env.push((var.name.clone(), value));
        }
        // Mounts: the member claims (templates) and named claims are directories of this
        // platform; /tmp is the host's.
        let volumes = self.dir.join("volumes");
        let mut mounts: Vec<(String, PathBuf)> = vec![(
            "/dev/termination-log".to_string(),
            self.dir.join("logs").join(format!("{pod}.termination-log")),
        )];
        for mount in container.volume_mounts.iter().flatten() {
            let claim = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .and_then(|v| v.persistent_volume_claim.as_ref())
                .map(|c| c.claim_name.clone());
            let dir = match (mount.name.as_str(), claim) {
                ("data" | "wal", _) => volumes.join(format!("{}-{pod}", mount.name)),
                (_, Some(claim)) => {
                    // A claim the user made: it exists before anything mounts it.
                    std::fs::create_dir_all(volumes.join(&claim)).unwrap();
                    volumes.join(claim)
                }
                ("tmp", None) => continue,
                (other, None) => {
                    panic!("ProcessPlatform does not mount volume {other} (TLS Secrets are not supported)")
                }
            };
            mounts.push((mount.mount_path.clone(), dir));
        }
        let local = |v: &str| {
            let mut v = self.dns.resolve(v);
            if let Some(ip) = ip {
                v = v.replace("0.0.0.0", ip);
            }
            for (path, dir) in &mounts {
                if v.starts_with(path.as_str()) {
                    v = v.replacen(path.as_str(), &dir.to_string_lossy(), 1);
                }
            }
            v
        };
        let mut command = Command::new(&self.bin);
        command.env_clear();
        for (k, v) in &env {
            command.env(k, local(v));
        }
        for arg in container.args.iter().flatten() {
            command.arg(local(arg));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs").join(format!("{pod}.log")))
            .unwrap();
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        command
    }

    /// Runs a pod's init containers to completion, then starts its container; `Err` with the
    /// end of the log when an init container failed.
    fn start_pod(
        &self,
        pod: &str,
        record: &PodRecord,
        config_maps: &BTreeMap<String, ConfigMap>,
    ) -> Result<Child, String> {
        let spec = record.template.spec.as_ref().expect("pod spec");
        let ip = pod_ip(self.net, record.ordinal);
        for init in spec.init_containers.iter().flatten() {
            let status = self
                .command(pod, Some(&ip), spec, init, config_maps)
                .status()
                .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
            if !status.success() {
                return Err(tail(&self.log(pod), 5));
            }
        }
        Ok(self
            .command(pod, Some(&ip), spec, &spec.containers[0], config_maps)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display())))
    }

    /// Records a change the operator made, or refuses it if the operator is dead.
    fn change<T>(
        &self,
        what: String,
        action: &'static str,
        f: impl FnOnce(&mut ApiState) -> (bool, T),
    ) -> Result<T, Error> {
        self.faults
            .admit(&what)
            .map_err(|message| Error::Platform { action, message })?;
        let mut api = self.api.lock().unwrap();
        let (changed, out) = f(&mut api);
        if changed {
            self.save(&api);
            drop(api);
            self.faults.made(what);
        }
        Ok(out)
    }
}

/// `$(VAR)` references to variables defined before, as the kubelet expands them.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find(')') {
            Some(end) => {
                let name = &after[..end];
                match env.iter().rev().find(|(k, _)| k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&rest[start..start + 3 + end]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `GET /readyz` on a pod's metrics port answers 200.
async fn readyz(ip: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(format!("{ip}:2381")).await.ok()?;
        s.write_all(format!("GET /readyz HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200"))
    };
    tokio::time::timeout(Duration::from_millis(800), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

fn key(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

impl Platform for ProcessPlatform {
    fn config_map<'a>(&'a self, _ns: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<ConfigMap>, Error>> {
        let found = self.api.lock().unwrap().config_maps.get(name).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn statefulset<'a>(&'a self, _ns: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<StatefulSet>, Error>> {
        let api = self.api.lock().unwrap();
        let found = api
            .statefulset
            .clone()
            .filter(|s| s.metadata.name.as_deref() == Some(name))
            .map(|mut sts| {
                let revision = Self::revision(&sts);
                let live = api.pods.values().filter(|p| !p.terminating);
                sts.status = Some(StatefulSetStatus {
                    replicas: live.clone().count() as i32,
                    ready_replicas: Some(live.clone().filter(|p| p.ready).count() as i32),
                    updated_replicas: Some(live.filter(|p| p.revision == revision).count() as i32),
                    update_revision: Some(revision),
                    ..StatefulSetStatus::default()
                });
                sts
            });
        Box::pin(async move { Ok(found) })
    }

    fn secret<'a>(&'a self, _ns: &'a str, _name: &'a str) -> BoxFuture<'a, Result<Option<Secret>, Error>> {
        Box::pin(async move { Ok(None) })
    }

    fn pods<'a>(&'a self, _names: &'a Names) -> BoxFuture<'a, Result<Vec<PodInfo>, Error>> {
        let pods = self
            .api
            .lock()
            .unwrap()
            .pods
            .iter()
            .map(|(name, p)| PodInfo {
                name: name.clone(),
                revision: Some(p.revision.clone()),
                ready: p.ready,
                terminating: p.terminating,
                restarts: p.restarts as i32,
                last_failure: p.last_termination.clone(),
            })
            .collect();
        Box::pin(async move { Ok(pods) })
    }

    fn apply<'a>(&'a self, _ns: &'a str, desired: &'a Desired) -> BoxFuture<'a, Result<(), Error>> {
        let result = if !desired.certificates.is_empty() {
            Err(Error::Platform {
                action: "apply",
                message: "ProcessPlatform has no cert-manager".into(),
            })
        } else {
            self.change("apply".to_string(), "apply", |api| {
                let mut changed = Vec::new();
                let cm = &desired.bootstrap;
                let cm_name = cm.metadata.name.clone().unwrap_or_default();
                if api.config_maps.get(&cm_name).map(|c| &c.data) != Some(&cm.data) {
                    api.config_maps.insert(cm_name.clone(), cm.clone());
                    changed.push(format!("ConfigMap {cm_name}"));
                }
                let sts = &desired.statefulset;
                if api.statefulset.as_ref().map(|s| (&s.spec, &s.metadata.labels)) != Some((&sts.spec, &sts.metadata.labels)) {
                    if let Some(old) = &api.statefulset
                        && old.spec.as_ref().map(|s| &s.volume_claim_templates)
                            != sts.spec.as_ref().map(|s| &s.volume_claim_templates)
                    {
                        // The API server refuses this: claim templates are immutable.
                        return (false, Err("StatefulSet.apps is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".to_string()));
                    }
                    api.statefulset = Some(sts.clone());
                    changed.push(format!(
                        "StatefulSet replicas={}",
                        sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or_default()
                    ));
                }
                for (kind, name, value) in [
                    ("ServiceAccount", &desired.service_account.metadata.name, serde_json::to_value(&desired.service_account)),
                    ("Service", &desired.peer_service.metadata.name, serde_json::to_value(&desired.peer_service)),
                    ("Service", &desired.client_service.metadata.name, serde_json::to_value(&desired.client_service)),
                    ("PodDisruptionBudget", &desired.pdb.metadata.name, serde_json::to_value(&desired.pdb)),
                ] {
                    let k = key(kind, name.as_deref().unwrap_or_default());
                    let value = value.unwrap();
                    if api.other.get(&k) != Some(&value) {
                        api.other.insert(k.clone(), value);
                        changed.push(k);
                    }
                }
                (!changed.is_empty(), Ok(()))
            })
            .and_then(|r| {
                r.map_err(|message| Error::Platform {
                    action: "apply",
                    message,
                })
            })
        };
        Box::pin(async move { result })
    }

    fn delete_pod<'a>(&'a self, _ns: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            // Who leads is asked at the moment of the delete, not when the operator decided,
            // so a scenario can tell a leader's pod deleted from one whose leadership moved.
            let peer = self.dns.resolve(&self.names.peer_url(name));
            let view = self.members_now().await;
            let led = view.leader.and_then(|leader| {
                let member = view.members.iter().find(|m| m.peer_urls.contains(&peer))?;
                Some(member.id == leader)
            });
            self.change(format!("delete pod {name}"), "delete pod", |api| {
                match api.pods.get_mut(name) {
                    Some(record) if !record.terminating => {
                        // The kubelet stops its process on its next pass.
                        record.terminating = true;
                        record.ready = false;
                        self.pod_deletes.lock().unwrap().push((name.to_string(), led));
                        (true, ())
                    }
                    _ => (false, ()),
                }
            })
        })
    }

    fn delete_claim<'a>(&'a self, _ns: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            // A claim may go only once its member is no longer in the cluster.
            let pod = name.split_once('-').map(|(_, pod)| pod.to_string()).unwrap_or_default();
            if let Some(ordinal) = self.names.ordinal(&pod) {
                let peer = self.dns.resolve(&self.names.peer_url(&pod));
                let view = self.members_now().await;
                if view.members.iter().any(|m| m.peer_urls.contains(&peer)) {
                    self.violations.lock().unwrap().push(format!(
                        "claim {name} deleted while member {pod} (ordinal {ordinal}) is still in the cluster"
                    ));
                }
            }
            self.change(format!("delete claim {name}"), "delete claim", |api| {
                if !api.claims.contains(name) {
                    return (false, ());
                }
                if api.pods.contains_key(&pod) {
                    api.claims_terminating.insert(name.to_string());
                } else {
                    api.claims.remove(name);
                    self.release(name);
                }
                (true, ())
            })
        })
    }

    fn write_status<'a>(
        &'a self,
        _cluster: &'a LodestoneCluster,
        planned: &'a LodestoneClusterStatus,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let what = match &planned.operation {
            Some(op) => format!("status: operation {:?} {:?} {}", op.kind, op.step, op.member),
            None => format!("status: phase {:?}", planned.phase),
        };
        let result = self.change(what, "write status", |api| {
            let cluster = api.cluster.as_mut().expect("the cluster exists");
            let changed = cluster.status.as_ref() != Some(planned);
            cluster.status = Some(planned.clone());
            (changed, ())
        });
        Box::pin(async move { result })
    }

    fn cluster_exists<'a>(&'a self, _ns: &'a str, name: &'a str) -> BoxFuture<'a, Result<bool, Error>> {
        let found = self
            .api
            .lock()
            .unwrap()
            .cluster
            .as_ref()
            .is_some_and(|c| c.metadata.name.as_deref() == Some(name));
        Box::pin(async move { Ok(found) })
    }

    fn snapshots<'a>(&'a self, _ns: &'a str) -> BoxFuture<'a, Result<Vec<LodestoneSnapshot>, Error>> {
        let list = self.api.lock().unwrap().snapshots.values().cloned().collect();
        Box::pin(async move { Ok(list) })
    }

    fn create_snapshot<'a>(&'a self, snapshot: &'a LodestoneSnapshot) -> BoxFuture<'a, Result<(), Error>> {
        let name = snapshot.metadata.name.clone().unwrap_or_default();
        let result = self.change(format!("create snapshot {name}"), "create snapshot", |api| {
            if api.snapshots.contains_key(&name) {
                return (false, ());
            }
            let mut s = snapshot.clone();
            s.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
            api.snapshots.insert(name.clone(), s);
            (true, ())
        });
        Box::pin(async move { result })
    }

    fn delete_snapshot<'a>(&'a self, _ns: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        let result = self.change(format!("delete snapshot {name}"), "delete snapshot", |api| {
            // Its Job goes with it (owner reference).
            api.jobs.remove(&format!("{name}-save"));
            (api.snapshots.remove(name).is_some(), ())
        });
        Box::pin(async move { result })
    }

    fn write_snapshot_status<'a>(
        &'a self,
        snapshot: &'a LodestoneSnapshot,
        status: &'a LodestoneSnapshotStatus,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let name = snapshot.metadata.name.clone().unwrap_or_default();
        let what = format!("snapshot {name}: {:?}", status.phase);
        let result = self.change(what, "write snapshot status", |api| {
            match api.snapshots.get_mut(&name) {
                Some(s) if s.status.as_ref() != Some(status) => {
                    s.status = Some(status.clone());
                    (true, ())
                }
                _ => (false, ()),
            }
        });
        Box::pin(async move { result })
    }

    fn run_job<'a>(&'a self, _ns: &'a str, job: &'a Job) -> BoxFuture<'a, Result<(), Error>> {
        let name = job.metadata.name.clone().unwrap_or_default();
        let result = self.change(format!("run job {name}"), "run job", |api| {
            if api.jobs.contains_key(&name) {
                return (false, ());
            }
            api.jobs.insert(
                name.clone(),
                JobRecord {
                    job: job.clone(),
                    outcome: JobOutcome::Running,
                },
            );
            (true, ())
        });
        Box::pin(async move { result })
    }

    fn job<'a>(&'a self, _ns: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<JobState>, Error>> {
        let state = self.api.lock().unwrap().jobs.get(name).map(|r| match &r.outcome {
            JobOutcome::Running => JobState::Running,
            JobOutcome::Succeeded(report) => JobState::Succeeded { report: report.clone() },
            JobOutcome::Failed(message) => JobState::Failed {
                message: message.clone(),
            },
        });
        Box::pin(async move { Ok(state) })
    }

    fn publish<'a>(&'a self, _cluster: &'a LodestoneCluster, events: &'a [PlannedEvent]) -> BoxFuture<'a, ()> {
        if !self.faults.dead() {
            let mut api = self.api.lock().unwrap();
            for e in events {
                api.events.push(format!("{}: {}", e.reason.as_str(), e.note));
            }
            self.save(&api);
        }
        Box::pin(async {})
    }
}
