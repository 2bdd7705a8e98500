//! The fault suite: a three-member Lodestone cluster in a [`Lab`] under steady client
//! traffic, hit by one randomly chosen fault per cycle, then checked.
//!
//! A run, after etcd's robustness tests:
//! 1. Start the cluster (each member in its own network namespace), then the traffic:
//!    key-value clients (puts, compare-and-swap txns, deletes, linearizable and
//!    serializable reads on ten keys, each value unique), watchers that resume where their
//!    stream broke, and lease holders that keep a lease alive and watch its key.
//! 2. For each cycle: a second of traffic, one fault (kill -9 of a follower or of the
//!    leader, SIGSTOP/SIGCONT, the leader or a follower cut off from its peers, a follower
//!    cut off until only a snapshot can catch it up, a member replaced by a new one on an
//!    empty disk; on the lazy filesystem also crashes that lose unsynced data, and a full
//!    disk), heal, and wait until every member serves a linearizable read again.
//! 3. Stop the traffic; one last write must succeed (liveness) and reach every watcher.
//! 4. Read the store's record of every change (a watch from revision 1) and check: every
//!    member has the same revision and HashKV and the same member list; no acknowledged
//!    write lost; reads, revisions and real-time order agree with the record
//!    ([`crate::validate`]); a member a client talks to alone never answers it behind what
//!    it answered it before, unless it was restarted in between; each key's history is
//!    linearizable ([`crate::linearizability`]); watches delivered exactly the record; no
//!    lease expired while its holder kept it alive, and an abandoned lease did expire.
//!
//! Everything is bounded: the cycle count, the traffic rate, each request (1 s), each
//! recovery (30 s). A run is reproducible in its choices from its seed (the timing of a
//! real cluster is not).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};

use crate::history::{Event, NEVER, Operation, Request, Response, Time, WatchSession};
use crate::lazyfs::LazyMount;
use crate::netlab::Lab;
use crate::{linearizability, lodestone_bin, validate};

/// The traffic's keys are `key0`..`key9`; the final write is `key-final`.
const PREFIX: &str = "key";
const FINAL_KEY: &str = "key-final";
const LEASE_TTL: i64 = 3;
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
const RECOVERY: Duration = Duration::from_secs(30);

/// What a run does.
#[derive(Debug, Clone)]
pub struct Config {
    pub members: usize,
    pub cycles: usize,
    pub seed: u64,
    /// Key-value clients; half are pinned to one member, half use every member.
    pub clients: usize,
    /// Requests per second over all key-value clients.
    pub rate: u32,
    /// Progress lines on stderr.
    pub progress: bool,
    /// Search steps per key for the linearizability checker.
    pub search_budget: u64,
    /// Put every member's data on a lazy filesystem and drop what it had not fsynced
    /// whenever it is killed: a crash of the machine, not just of the process.
    pub lose_unsynced: bool,
    /// Members talk over TLS (https peer URLs, peer certificates checked against a CA);
    /// `None` lets the seed decide, so runs cover both.
    pub peer_tls: Option<bool>,
    /// With `lose_unsynced`: whether the lazy filesystem makes hard links. Without them no
    /// checkpoint can be made, so every snapshot build writes the whole file. `None` lets the
    /// seed decide (one round in four without).
    pub hard_links: Option<bool>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            members: 3,
            cycles: 6,
            seed: 1,
            clients: 6,
            rate: 150,
            progress: true,
            search_budget: 20_000_000,
            lose_unsynced: false,
            peer_tls: None,
            hard_links: None,
        }
    }
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub members: usize,
    pub lose_unsynced: bool,
    pub peer_tls: bool,
    /// False when the members' filesystems refused hard links.
    pub hard_links: bool,
    pub snapshot_count: u64,
    pub catchup_entries: u64,
    /// The faults, in order.
    pub faults: Vec<String>,
    pub operations: usize,
    pub unknown: usize,
    pub linearizable_checked: usize,
    pub keys: usize,
    /// Answers of a member to a client that talks to it alone, held to its earlier answers.
    pub session_checked: usize,
    pub watch_sessions: usize,
    pub watch_events: usize,
    pub lease_checks: u64,
    pub revision: i64,
    pub elapsed: Duration,
    /// Empty when the run passed.
    pub violations: Vec<String>,
    /// Where the members' logs and data were kept, when the run failed.
    pub artifacts: Option<PathBuf>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} ({} members{}{}{}, snapshot-count {}, catch-up entries {}): {} cycles survived in {:.1} s: {}",
            self.seed,
            self.members,
            if self.peer_tls { ", peer TLS" } else { "" },
            if self.lose_unsynced {
                ", unsynced writes lost at crashes"
            } else {
                ""
            },
            if self.hard_links { "" } else { ", no hard links" },
            self.snapshot_count,
            self.catchup_entries,
            self.faults.len(),
            self.elapsed.as_secs_f64(),
            self.faults.join(", ")
        )?;
        writeln!(
            f,
            "  {} operations ({} with unknown outcome), {} linearizability-checked over {} keys, \
             {} session-checked, {} watch events in {} streams, {} lease checks, last revision {}",
            self.operations,
            self.unknown,
            self.linearizable_checked,
            self.keys,
            self.session_checked,
            self.watch_events,
            self.watch_sessions,
            self.lease_checks,
            self.revision
        )?;
        write!(f, "  violations: {}", self.violations.len())?;
        if let Some(dir) = &self.artifacts {
            write!(f, " (member logs and data kept in {})", dir.display())?;
        }
        for v in self.violations.iter().take(20) {
            write!(f, "\n    {v}")?;
        }
        Ok(())
    }
}

/// splitmix64: a run's choices from its seed, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

/// The faults a cycle picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillFollower,
    KillLeader,
    PauseMember,
    IsolateLeader,
    IsolateFollower,
    /// A follower cut off until the leader purged its log past the follower's commit
    /// index, so that it can only catch up from a snapshot (etcd's "blackhole until
    /// snapshot").
    IsolateUntilSnapshot,
    ReplaceMember,
    /// A member's disk fills up (lazy filesystem only), then frees.
    DiskFull,
}

const FAULTS: [Fault; 7] = [
    Fault::KillFollower,
    Fault::KillLeader,
    Fault::PauseMember,
    Fault::IsolateLeader,
    Fault::IsolateFollower,
    Fault::IsolateUntilSnapshot,
    Fault::ReplaceMember,
];

/// One member process in the lab.
struct Node {
    name: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The cluster under test.
struct LabCluster {
    lab: Lab,
    nodes: Vec<Node>,
    /// Per member, its lazy filesystem when the run loses unsynced writes at crashes
    /// (dropped before `dir`, which holds their backing directories).
    mounts: Vec<Option<LazyMount>>,
    dir: tempfile::TempDir,
    snapshot_count: u64,
    /// `--experimental-snapshot-catchup-entries`: how much log the leader keeps behind its
    /// snapshot for slow followers.
    catchup_entries: u64,
    token: String,
    /// The peer certificate (for every member's address) when members talk over TLS.
    peer_tls: Option<crate::pki::TlsFiles>,
    /// When each member process was started: (member, instant), for the session check.
    starts: Vec<(usize, Instant)>,
}

fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(1))
}

impl LabCluster {
    fn endpoint(&self, i: usize) -> String {
        format!("{}:{CLIENT_PORT}", self.lab.address(i))
    }

    fn endpoints(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.endpoint(i)).collect()
    }

    fn peer_url(&self, i: usize) -> String {
        let scheme = if self.peer_tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{PEER_PORT}", self.lab.address(i))
    }

    fn initial_cluster(&self) -> String {
        (0..self.nodes.len())
            .map(|i| format!("{}={}", self.nodes[i].name, self.peer_url(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<(), String> {
        let client_url = format!("http://{}", self.endpoint(i));
        let args = [
            ("--name", self.nodes[i].name.clone()),
            ("--data-dir", self.nodes[i].data_dir.display().to_string()),
            ("--listen-client-urls", client_url.clone()),
            ("--advertise-client-urls", client_url),
            ("--listen-peer-urls", self.peer_url(i)),
            ("--initial-advertise-peer-urls", self.peer_url(i)),
            ("--initial-cluster", self.initial_cluster()),
            ("--initial-cluster-state", state.to_string()),
            ("--initial-cluster-token", self.token.clone()),
            ("--heartbeat-interval", "50".into()),
            ("--election-timeout", "500".into()),
            ("--snapshot-count", self.snapshot_count.to_string()),
            (
                "--experimental-snapshot-catchup-entries",
                self.catchup_entries.to_string(),
            ),
        ];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.nodes[i].log)
            .map_err(|e| format!("member log: {e}"))?;
        let mut cmd = self.lab.command(i, &lodestone_bin());
        for (flag, value) in args {
            cmd.arg(flag).arg(value);
        }
        if let Some(files) = &self.peer_tls {
            cmd.args(crate::tls_flags("peer-", files));
        }
        cmd.stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log));
        self.starts.push((i, Instant::now()));
        self.nodes[i].child = Some(cmd.spawn().map_err(|e| format!("start member {i}: {e}"))?);
        Ok(())
    }

    /// Stops every member and keeps their directory (logs, data) past the run.
    fn keep(&mut self) -> PathBuf {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        self.mounts.clear();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        dir.keep()
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn running(&mut self, i: usize) -> bool {
        self.nodes[i]
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn set_full(&mut self, i: usize, full: bool) -> Result<(), String> {
        match self.mounts.get_mut(i).and_then(Option::as_mut) {
            Some(m) => m.set_full(full),
            None => Err("a full disk needs the lazy filesystem".into()),
        }
    }

    /// After a kill: on a lazy filesystem, what the member had not fsynced is lost too.
    fn lose_unsynced(&mut self, i: usize) -> Result<Option<(u64, u64)>, String> {
        match self.mounts.get_mut(i).and_then(Option::as_mut) {
            Some(m) => m.drop_unsynced().map(Some),
            None => Ok(None),
        }
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(c) = &self.nodes[i].child {
            let _ = std::process::Command::new("kill")
                .arg(sig)
                .arg(c.id().to_string())
                .status();
        }
    }

    /// A metric of member `i` (from `/metrics` on its client URL).
    fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let url = format!("http://{}/metrics", self.endpoint(i));
        let (code, text) = crate::http_get(&url);
        (code == 200).then(|| crate::try_metric(&text, name)).flatten()
    }

    fn log_tail(&self, i: usize) -> String {
        let s = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    async fn client_of(&self, i: usize) -> Option<Client> {
        Client::connect([self.endpoint(i)], Some(connect_options())).await.ok()
    }

    /// Waits until every member serves a linearizable read through its own endpoint.
    async fn wait_healthy(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.nodes.len() {
            loop {
                if let Some(mut c) = self.client_of(i).await
                    && c.get("health", None).await.is_ok()
                {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "member {i} did not serve a linearizable read within {timeout:?}; its log ends:\n{}",
                        self.log_tail(i)
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The leader's index, asked of every member.
    async fn leader(&self) -> Option<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            for i in 0..self.nodes.len() {
                if let Some(mut c) = self.client_of(i).await
                    && let Ok(s) = c.status().await
                    && s.leader() != 0
                    && s.leader() == s.header().map_or(0, |h| h.member_id())
                {
                    return Some(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Removes member `i`, wipes it, adds it back as a new member and starts it empty.
    async fn replace(&mut self, i: usize, generation: usize) -> Result<(), String> {
        let name = self.nodes[i].name.clone();
        let other = (i + 1) % self.nodes.len();
        let mut c = Client::connect(
            [self.endpoint(other)],
            Some(ConnectOptions::new().with_timeout(Duration::from_secs(10))),
        )
        .await
        .map_err(|e| format!("replace: connect: {e}"))?;
        let list = c
            .member_list()
            .await
            .map_err(|e| format!("replace: member list: {e}"))?;
        let id = list
            .members()
            .iter()
            .find(|m| m.name() == name)
            .map(|m| m.id())
            .ok_or_else(|| format!("replace: {name} is not in the member list"))?;
        c.member_remove(id)
            .await
            .map_err(|e| format!("replace: member remove: {e}"))?;
        self.kill(i);
        let _ = std::fs::remove_dir_all(&self.nodes[i].data_dir);
        let base = match &self.mounts[i] {
            Some(m) => m.mountpoint().to_path_buf(),
            None => self.dir.path().to_path_buf(),
        };
        self.nodes[i].data_dir = base.join(format!("{name}.{generation}.data"));
        // Removing the leader leaves the cluster without one for an election: retry.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = c.member_add([self.peer_url(i)], None).await {
            if Instant::now() > deadline {
                return Err(format!("replace: member add: {e}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.spawn(i, "existing")
    }
}

impl Drop for LabCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// The traffic's shared state: the clock, the stop flag, and what was recorded.
struct Traffic {
    start: Instant,
    stop: AtomicBool,
    history: Mutex<Vec<Operation>>,
    sessions: Mutex<Vec<WatchSession>>,
    lease_checks: Mutex<(u64, Vec<String>)>,
    /// (lease id, when it was granted) of leases nobody keeps alive.
    abandoned: Mutex<Vec<(i64, Instant)>>,
}

impl Traffic {
    fn now(&self) -> Time {
        self.start.elapsed().as_nanos() as Time
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One key-value client: sequential requests at its share of the rate.
/// `pinned` is the member when `endpoints` holds only that member's.
async fn kv_client(
    id: usize,
    endpoints: Vec<String>,
    pinned: Option<usize>,
    pace: Duration,
    seed: u64,
    t: Arc<Traffic>,
) {
    let mut rng = Rng(seed);
    let mut client: Option<Client> = None;
    let mut known: HashMap<String, Option<String>> = HashMap::new();
    let mut reread: Option<String> = None;
    let mut seq = 0u64;
    let mut ops = Vec::new();
    while !t.stopped() {
        tokio::time::sleep(pace).await;
        let c = match &mut client {
            Some(c) => c,
            None => match Client::connect(endpoints.clone(), Some(connect_options())).await {
                Ok(c) => client.insert(c),
                Err(_) => continue,
            },
        };
        let key = reread.take().unwrap_or_else(|| format!("{PREFIX}{}", rng.below(10)));
        seq += 1;
        let value = format!("c{id}-{seq}");
        let pick = rng.below(100);
        let request = if !known.contains_key(&key) || pick < 25 {
            Request::Get {
                key: key.clone(),
                serializable: false,
            }
        } else if pick < 35 {
            Request::Get {
                key: key.clone(),
                serializable: true,
            }
        } else if pick < 70 {
            Request::Put {
                key: key.clone(),
                value,
            }
        } else if pick < 92 {
            Request::Cas {
                key: key.clone(),
                expect: known.get(&key).cloned().flatten(),
                value,
            }
        } else {
            Request::Delete { key: key.clone() }
        };
        let call = t.now();
        let response = match &request {
            Request::Get { serializable, .. } => {
                let options = serializable.then(|| GetOptions::new().with_serializable());
                c.get(key.as_str(), options).await.map(|r| Response::Get {
                    value: r
                        .kvs()
                        .first()
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                    revision: r.header().map_or(0, |h| h.revision()),
                })
            }
            Request::Put { value, .. } => c.put(key.as_str(), value.as_str(), None).await.map(|r| Response::Put {
                revision: r.header().map_or(0, |h| h.revision()),
            }),
            Request::Delete { .. } => c.delete(key.as_str(), None).await.map(|r| Response::Delete {
                deleted: r.deleted() > 0,
                revision: r.header().map_or(0, |h| h.revision()),
            }),
            Request::Cas { expect, value, .. } => {
                let compare = match expect {
                    Some(v) => Compare::value(key.as_str(), CompareOp::Equal, v.as_str()),
                    None => Compare::version(key.as_str(), CompareOp::Equal, 0),
                };
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(key.as_str(), value.as_str(), None)]);
                c.txn(txn).await.map(|r| Response::Cas {
                    succeeded: r.succeeded(),
                    revision: r.header().map_or(0, |h| h.revision()),
                })
            }
        };
        let ret = t.now();
        match response {
            Ok(response) => {
                match (&request, &response) {
                    (Request::Get { .. }, Response::Get { value, .. }) => {
                        known.insert(key.clone(), value.clone());
                    }
                    (Request::Put { value, .. }, _)
                    | (Request::Cas { value, .. }, Response::Cas { succeeded: true, .. }) => {
                        known.insert(key.clone(), Some(value.clone()));
                    }
                    (Request::Delete { .. }, _) => {
                        known.insert(key.clone(), None);
                    }
                    _ => {
                        // A failed compare: what the key holds is no longer known.
                        known.remove(&key);
                    }
                }
                ops.push(Operation {
                    client: id,
                    member: pinned,
                    request,
                    response,
                    call,
                    ret,
                });
            }
            Err(_) if request.is_write() => {
                // Outcome unknown: read the key before writing again, so that unknown
                // outcomes do not pile up (etcd's traffic does the same).
                known.remove(&key);
                reread = Some(key);
                ops.push(Operation {
                    client: id,
                    member: pinned,
                    request,
                    response: Response::Unknown,
                    call,
                    ret: NEVER,
                });
            }
            Err(_) => {}
        }
    }
    t.history.lock().expect("history").extend(ops);
}

/// One watcher: a stream on the traffic's prefix, resumed after the last delivered
/// revision whenever it breaks, until it has delivered the final write.
async fn watcher(id: usize, endpoints: Vec<String>, t: Arc<Traffic>, deadline: Arc<Mutex<Option<Instant>>>) {
    let mut next = 1i64;
    let mut done = false;
    while !done {
        if deadline.lock().expect("deadline").is_some_and(|d| Instant::now() > d) {
            break;
        }
        let Ok(mut c) = Client::connect(endpoints.clone(), Some(connect_options())).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut session = WatchSession {
            client: id,
            prefix: PREFIX.into(),
            start_revision: next,
            events: Vec::new(),
            before: Vec::new(),
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(next);
        if let Ok(mut stream) = c.watch(PREFIX, Some(options)).await {
            loop {
                let Ok(message) = tokio::time::timeout(Duration::from_millis(500), stream.message()).await else {
                    if deadline.lock().expect("deadline").is_some_and(|d| Instant::now() > d) {
                        break;
                    }
                    continue;
                };
                let Ok(Some(response)) = message else { break };
                if response.canceled() {
                    break;
                }
                for e in response.events() {
                    let (Some(kv), Some(event)) = (e.kv(), event_of(e)) else {
                        continue;
                    };
                    done |= event.key == FINAL_KEY;
                    session.before.push((
                        e.prev_kv().map(|p| String::from_utf8_lossy(p.value()).into_owned()),
                        event.value.is_some() && kv.create_revision() == kv.mod_revision(),
                    ));
                    next = event.revision + 1;
                    session.events.push(event);
                }
                if done {
                    break;
                }
            }
        }
        t.sessions.lock().expect("sessions").push(session);
        if !done {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One lease holder: grants a lease, attaches a key, keeps it alive and reads the key back;
/// the key of a lease kept alive within its TTL must never be gone. Every fourth lease is
/// abandoned instead, to be checked for expiry at the end.
async fn lease_holder(endpoints: Vec<String>, t: Arc<Traffic>) {
    let ttl = Duration::from_secs(LEASE_TTL as u64);
    let mut n = 0u64;
    let fail = |msg: String| t.lease_checks.lock().expect("lease checks").1.push(msg);
    while !t.stopped() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(mut c) = Client::connect(endpoints.clone(), Some(connect_options())).await else {
            continue;
        };
        n += 1;
        let granted_at = Instant::now();
        let Ok(lease) = c.lease_grant(LEASE_TTL, None).await else {
            continue;
        };
        let key = format!("lease/{n}");
        if c.put(
            key.as_str(),
            format!("held-{n}"),
            Some(PutOptions::new().with_lease(lease.id())),
        )
        .await
        .is_err()
        {
            continue;
        }
        if n.is_multiple_of(4) {
            t.abandoned.lock().expect("abandoned").push((lease.id(), granted_at));
            continue;
        }
        // The lease lives at least until `alive_until`: TTL after the send of the last
        // keep-alive the server answered with a positive TTL.
        let mut alive_until = granted_at + ttl;
        let Ok((mut keeper, mut stream)) = c.lease_keep_alive(lease.id()).await else {
            continue;
        };
        while !t.stopped() && Instant::now() < alive_until {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let sent = Instant::now();
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => alive_until = sent + ttl,
                Ok(Ok(Some(_))) => {
                    if Instant::now() < alive_until {
                        fail(format!(
                            "lease {:x} expired {:?} before its TTL could have run out",
                            lease.id(),
                            alive_until - Instant::now()
                        ));
                    }
                    break;
                }
                _ => break, // no answer: the lease may expire legitimately now
            }
            if let Ok(r) = c.get(key.as_str(), None).await {
                t.lease_checks.lock().expect("lease checks").0 += 1;
                if r.kvs().is_empty() && Instant::now() < alive_until {
                    fail(format!(
                        "the key of lease {:x} was gone {:?} before the lease could have expired",
                        lease.id(),
                        alive_until - Instant::now()
                    ));
                }
            }
        }
        let _ = c.lease_revoke(lease.id()).await;
    }
}

/// Runs the suite once. An `Err` means the run could not be set up; violations are in the
/// report.
pub async fn run(config: &Config) -> Result<Report, String> {
    let started = Instant::now();
    let mut rng = Rng(config.seed);
    let snapshot_count = [100, 1000][rng.below(2) as usize];
    let catchup_entries = [100, 5000][rng.below(2) as usize];
    let peer_tls = config.peer_tls.unwrap_or_else(|| rng.below(2) == 1);
    // Drawn apart from the run's generator, so a seed replays the same faults as before
    // this choice existed.
    let hard_links = !config.lose_unsynced
        || config
            .hard_links
            .unwrap_or_else(|| Rng(config.seed ^ 0x6c69_6e6b).below(4) != 0);
    let progress = |line: String| {
        if config.progress {
            eprintln!("[{:6.1} s] {line}", started.elapsed().as_secs_f64());
        }
    };
    let lab = Lab::new(config.members)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let peer_files = peer_tls.then(|| {
        let ca = crate::pki::Ca::new(&dir.path().join("pki"), "peers");
        let hosts: Vec<String> = (0..config.members).map(|i| lab.address(i).to_string()).collect();
        ca.issue_for("peer", "member", &hosts)
    });
    let mut mounts = Vec::new();
    for i in 0..config.members {
        mounts.push(if config.lose_unsynced {
            let mut mount = LazyMount::start(
                &dir.path().join(format!("m{i}.backing")),
                &dir.path().join(format!("m{i}.lazy")),
            )?;
            if !hard_links {
                mount.set_links(false)?;
            }
            Some(mount)
        } else {
            None
        });
    }
    let nodes = (0..config.members)
        .map(|i| Node {
            name: format!("m{i}"),
            data_dir: match &mounts[i] {
                Some(m) => m.mountpoint().join("data"),
                None => dir.path().join(format!("m{i}.data")),
            },
            log: dir.path().join(format!("m{i}.log")),
            child: None,
        })
        .collect();
    let mut cluster = LabCluster {
        lab,
        nodes,
        mounts,
        dir,
        snapshot_count,
        catchup_entries,
        token: format!("faults-{}", std::process::id()),
        peer_tls: peer_files,
        starts: Vec::new(),
    };
    for i in 0..config.members {
        cluster.spawn(i, "new")?;
    }
    cluster.wait_healthy(RECOVERY).await?;
    progress(format!(
        "{} members up in their own network namespaces (seed {}, snapshot-count {snapshot_count}, catch-up entries {catchup_entries}{})",
        config.members,
        config.seed,
        if peer_tls { ", peer TLS" } else { "" }
    ));

    let traffic = Arc::new(Traffic {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        history: Mutex::new(Vec::new()),
        sessions: Mutex::new(Vec::new()),
        lease_checks: Mutex::new((0, Vec::new())),
        abandoned: Mutex::new(Vec::new()),
    });
    let everyone = cluster.endpoints();
    let pace = Duration::from_secs_f64(config.clients as f64 / config.rate.max(1) as f64);
    let mut kv = Vec::new();
    for id in 0..config.clients {
        let (endpoints, pinned) = if id % 2 == 0 {
            let member = id / 2 % config.members;
            (vec![cluster.endpoint(member)], Some(member))
        } else {
            (everyone.clone(), None)
        };
        kv.push(tokio::spawn(kv_client(
            id,
            endpoints,
            pinned,
            pace,
            rng.next(),
            traffic.clone(),
        )));
    }
    let watch_deadline = Arc::new(Mutex::new(None));
    let mut watchers = Vec::new();
    for (id, endpoints) in [vec![cluster.endpoint(0)], everyone.clone()].into_iter().enumerate() {
        watchers.push(tokio::spawn(watcher(
            id,
            endpoints,
            traffic.clone(),
            watch_deadline.clone(),
        )));
    }
    let leases = tokio::spawn(lease_holder(everyone.clone(), traffic.clone()));

    let mut report = Report {
        seed: config.seed,
        members: config.members,
        lose_unsynced: config.lose_unsynced,
        peer_tls,
        hard_links,
        catchup_entries,
        snapshot_count,
        ..Report::default()
    };
    let mut generation = 0;
    let mut recovered = Instant::now();
    for cycle in 1..=config.cycles {
        tokio::time::sleep(rng.millis(800, 1200)).await;
        // One member can only crash or stall; there is no one to cut it off from or to
        // replace it with.
        let mut faults: Vec<Fault> = if config.members == 1 {
            vec![Fault::KillLeader, Fault::PauseMember]
        } else {
            FAULTS.to_vec()
        };
        if config.lose_unsynced {
            faults.push(Fault::DiskFull);
        }
        let fault = faults[rng.below(faults.len() as u64) as usize];
        let Some(leader) = cluster.leader().await else {
            report
                .violations
                .push(format!("cycle {cycle}: no leader before the fault"));
            break;
        };
        let follower = (leader + 1 + rng.below(config.members.max(2) as u64 - 1) as usize) % config.members;
        let anyone = rng.below(config.members as u64) as usize;
        let hold = rng.millis(500, 2500);
        let what = match fault {
            Fault::KillFollower | Fault::KillLeader => {
                let i = if fault == Fault::KillLeader { leader } else { follower };
                cluster.kill(i);
                let lost = match cluster.lose_unsynced(i)? {
                    Some((files, bytes)) => format!(", unsynced data lost ({bytes} bytes in {files} files)"),
                    None => String::new(),
                };
                tokio::time::sleep(hold).await;
                cluster.spawn(i, "new")?;
                format!("kill -9 m{i}{}{lost}", if i == leader { " (leader)" } else { "" })
            }
            Fault::PauseMember => {
                cluster.signal(anyone, "-STOP");
                tokio::time::sleep(hold).await;
                cluster.signal(anyone, "-CONT");
                format!("pause m{anyone}{}", if anyone == leader { " (leader)" } else { "" })
            }
            Fault::IsolateLeader | Fault::IsolateFollower => {
                let i = if fault == Fault::IsolateLeader {
                    leader
                } else {
                    follower
                };
                cluster.lab.isolate(i)?;
                tokio::time::sleep(hold).await;
                cluster.lab.heal()?;
                format!("isolate m{i}{}", if i == leader { " (leader)" } else { "" })
            }
            Fault::IsolateUntilSnapshot => {
                let i = follower;
                let behind = cluster
                    .metric(i, "etcd_server_proposals_committed_total")
                    .unwrap_or(0.0);
                cluster.lab.isolate(i)?;
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut purged = 0.0;
                while purged <= behind && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    purged = cluster.metric(leader, "lodestone_raft_purged_index").unwrap_or(0.0);
                }
                cluster.lab.heal()?;
                if purged > behind {
                    format!("isolate m{i} until the leader purged its log past it (catch-up by snapshot)")
                } else {
                    format!("isolate m{i} for 20 s (the leader kept its log: catch-up by log)")
                }
            }
            Fault::DiskFull => {
                cluster.set_full(anyone, true)?;
                tokio::time::sleep(hold).await;
                cluster.set_full(anyone, false)?;
                // A member may stop on a write it cannot make (as etcd does); it is started
                // again once there is room, as its pod's kubelet would. Stopping (draining
                // clients, closing storage) takes a moment after the failed write, which may
                // have come at the end of the hold: give it that moment.
                let mut stopped = !cluster.running(anyone);
                let grace = Instant::now() + Duration::from_secs(3);
                while !stopped && Instant::now() < grace {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    stopped = !cluster.running(anyone);
                }
                if stopped {
                    cluster.kill(anyone);
                    cluster.spawn(anyone, "new")?;
                }
                format!(
                    "disk full on m{anyone}{}{}",
                    if anyone == leader { " (leader)" } else { "" },
                    if stopped { ", it stopped and was restarted" } else { "" }
                )
            }
            Fault::ReplaceMember => {
                generation += 1;
                match cluster.replace(anyone, generation).await {
                    Ok(()) => format!("replace m{anyone}{}", if anyone == leader { " (leader)" } else { "" }),
                    Err(e) => {
                        report.violations.push(format!("cycle {cycle}: {e}"));
                        break;
                    }
                }
            }
        };
        progress(format!("cycle {cycle}/{}: {what} for {hold:?}", config.cycles));
        report.faults.push(what.clone());
        if let Err(e) = cluster.wait_healthy(RECOVERY).await {
            report.violations.push(format!("cycle {cycle} ({what}): {e}"));
            break;
        }
        recovered = Instant::now();
    }

    // Stop the traffic, then the final write: it must succeed, and reach every watcher.
    traffic.stop.store(true, Ordering::Relaxed);
    for k in kv {
        let _ = k.await;
    }
    let _ = leases.await;
    let mut c = Client::connect(
        everyone.clone(),
        Some(connect_options().with_timeout(Duration::from_secs(5))),
    )
    .await
    .map_err(|e| format!("final client: {e}"))?;
    let mut last = None;
    let final_call = traffic.now();
    for _ in 0..10 {
        match c.put(FINAL_KEY, "done", None).await {
            Ok(r) => {
                last = r.header().map(|h| h.revision());
                break;
            }
            Err(e) => {
                report.violations.push(format!("final write failed (retrying): {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let Some(revision) = last else {
        report.violations.push("the final write never succeeded".into());
        report.artifacts = Some(cluster.keep());
        return Ok(report);
    };
    report.violations.retain(|v| !v.starts_with("final write failed"));
    traffic.history.lock().expect("history").push(Operation {
        client: usize::MAX,
        member: None,
        request: Request::Put {
            key: FINAL_KEY.into(),
            value: "done".into(),
        },
        response: Response::Put { revision },
        call: final_call,
        ret: traffic.now(),
    });
    report.revision = revision;
    *watch_deadline.lock().expect("deadline") = Some(Instant::now() + Duration::from_secs(10));
    for w in watchers {
        let _ = w.await;
    }
    progress(format!("traffic stopped at revision {revision}; checking"));

    // Lease expiries change the store after the final write: settle them first, then take
    // the record up to the store's revision at that point.
    check_leases(&cluster, &traffic, recovered, &mut report).await;
    let settled = c
        .get(FINAL_KEY, None)
        .await
        .map_err(|e| format!("settled revision: {e}"))?
        .header()
        .map_or(revision, |h| h.revision());
    check_members(&cluster, settled, &mut report).await;
    let events = record(&cluster, settled).await?;

    let history = std::mem::take(&mut *traffic.history.lock().expect("history"));
    let sessions = std::mem::take(&mut *traffic.sessions.lock().expect("sessions"));
    report.operations = history.len();
    report.unknown = history.iter().filter(|o| o.response == Response::Unknown).count();
    report.watch_sessions = sessions.len();
    report.watch_events = sessions.iter().map(|s| s.events.len()).sum();
    for (i, s) in sessions.iter().enumerate() {
        if s.events.last().is_some_and(|e| e.key == FINAL_KEY) || sessions[i + 1..].iter().any(|o| o.client == s.client)
        {
            continue;
        }
        report
            .violations
            .push(format!("watch of client {} never delivered the final write", s.client));
    }

    let mut violations = Vec::new();
    let record = validate::Record::new(&events, settled, &mut violations);
    violations.extend(validate::check_history(&history, &record, PREFIX));
    let starts: Vec<(usize, Time)> = cluster
        .starts
        .iter()
        .map(|&(i, at)| (i, at.saturating_duration_since(traffic.start).as_nanos() as Time))
        .collect();
    let (session_checked, session_violations) = validate::check_sessions(&history, &starts);
    report.session_checked = session_checked;
    violations.extend(session_violations);
    violations.extend(validate::check_watches(&sessions, &record));
    // Unknown writes the record does not have never happened: leave them out of the search
    // (etcd patches its histories the same way), so they do not multiply its states.
    let patched: Vec<Operation> = history
        .into_iter()
        .filter(|o| {
            o.response != Response::Unknown || o.request.written_value().is_none_or(|v| record.written(v).is_some())
        })
        .collect();
    let lin = linearizability::check(&patched, config.search_budget);
    report.linearizable_checked = lin.operations;
    report.keys = lin.keys;
    violations.extend(lin.failures);
    report.violations.extend(violations);
    report.elapsed = started.elapsed();
    if !report.violations.is_empty() {
        report.artifacts = Some(cluster.keep());
    }
    Ok(report)
}

/// Every member reaches `revision` with the same HashKV and the same member list.
async fn check_members(cluster: &LabCluster, revision: i64, report: &mut Report) {
    let mut hashes = Vec::new();
    let mut lists = Vec::new();
    for i in 0..cluster.nodes.len() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = async {
                let mut c = cluster.client_of(i).await?;
                let h = c.hash_kv(revision).await.ok()?;
                let mut ids: Vec<u64> = c.member_list().await.ok()?.members().iter().map(|m| m.id()).collect();
                ids.sort();
                Some((h.hash(), h.compact_version(), ids))
            }
            .await;
            if let Some((hash, compacted, ids)) = got {
                hashes.push((i, hash, compacted));
                lists.push((i, ids));
                break;
            }
            if Instant::now() > deadline {
                report
                    .violations
                    .push(format!("member {i} gave no HashKV at revision {revision} within 10 s"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if hashes.windows(2).any(|w| (w[0].1, w[0].2) != (w[1].1, w[1].2)) {
        report
            .violations
            .push(format!("members disagree on HashKV at revision {revision}: {hashes:?}"));
    }
    if lists.windows(2).any(|w| w[0].1 != w[1].1) {
        report
            .violations
            .push(format!("members disagree on the member list: {lists:?}"));
    }
}

/// A watch event as the checkers see it (None without a key-value, which etcd never sends).
fn event_of(e: &etcd_client::Event) -> Option<Event> {
    let kv = e.kv()?;
    Some(Event {
        revision: kv.mod_revision(),
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: (e.event_type() == EventType::Put).then(|| String::from_utf8_lossy(kv.value()).into_owned()),
    })
}

/// The store's record of every change, from revision 1 to `revision`.
async fn record(cluster: &LabCluster, revision: i64) -> Result<Vec<Event>, String> {
    let mut c = Client::connect(cluster.endpoints(), Some(connect_options()))
        .await
        .map_err(|e| format!("record: connect: {e}"))?;
    let options = WatchOptions::new().with_all_keys().with_start_revision(1);
    let mut stream = c
        .watch("\0", Some(options))
        .await
        .map_err(|e| format!("record: watch: {e}"))?;
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reached = false;
    while !reached {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, stream.message())
            .await
            .map_err(|_| format!("record: the watch from revision 1 did not reach {revision} in 30 s"))?
            .map_err(|e| format!("record: {e}"))?
            .ok_or("record: the watch from revision 1 ended early")?;
        for e in message.events() {
            let Some(event) = event_of(e) else { continue };
            if event.revision > revision {
                // (A lease expiring after the record's revision was taken.)
                break;
            }
            events.push(event);
        }
        reached = message
            .events()
            .last()
            .and_then(|e| e.kv())
            .is_some_and(|kv| kv.mod_revision() >= revision);
    }
    Ok(events)
}

/// Lease checks made during the run, and that abandoned leases expired.
async fn check_leases(cluster: &LabCluster, t: &Traffic, recovered: Instant, report: &mut Report) {
    let (checks, violations) = std::mem::take(&mut *t.lease_checks.lock().expect("lease checks"));
    report.lease_checks = checks;
    report.violations.extend(violations);
    let abandoned = std::mem::take(&mut *t.abandoned.lock().expect("abandoned"));
    let Ok(mut c) = Client::connect(cluster.endpoints(), Some(connect_options())).await else {
        report.violations.push("lease check: cannot connect".into());
        return;
    };
    // An abandoned lease must be gone within its TTL of its grant, or of the last leader
    // change (a new leader gives every lease its full TTL again, as etcd's does), plus a few
    // election rounds.
    let ttl = Duration::from_secs(LEASE_TTL as u64);
    for (id, granted) in abandoned {
        let deadline = granted.max(recovered) + ttl + Duration::from_secs(10);
        report.lease_checks += 1;
        loop {
            match c.lease_time_to_live(id, None).await {
                Ok(r) if r.ttl() == -1 => break,
                Ok(r) if Instant::now() > deadline => {
                    report.violations.push(format!(
                        "abandoned lease {id:x} still has TTL {} s {:?} after its grant, {:?} after the last recovery",
                        r.ttl(),
                        granted.elapsed(),
                        recovered.elapsed()
                    ));
                    break;
                }
                Ok(_) => {}
                Err(e) if Instant::now() > deadline => {
                    report.violations.push(format!("lease check of {id:x}: {e}"));
                    break;
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
