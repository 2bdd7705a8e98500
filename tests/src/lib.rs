//! Test harness: starts real `lodestone` (or, for side-by-side compatibility checks, real
//! `etcd` 3.4) processes on 127.0.0.1 with ephemeral ports and temporary data directories.
//! Both binaries take the same etcd flags, so one harness drives either.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

pub mod history;
pub mod lazyfs;
pub mod linearizability;
pub mod netlab;
pub mod pki;
pub mod robustness;
pub mod validate;

/// For each named `async fn(Kind)`, generates a test against Lodestone (in module
/// `lodestone`) and the same test against etcd 3.4 (in module `etcd`).
#[macro_export]
macro_rules! compat {
    ($($name:ident),* $(,)?) => {
        mod lodestone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Kind::Lodestone).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Kind::Etcd).await
                }
            )*
        }
    };
}

/// Which server implementation a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Lodestone,
    Etcd,
}

/// Path of the `lodestone` binary: `$LODESTONE_BIN`, else next to the test executable's
/// target directory (built by the test command before the suites run).
pub fn lodestone_bin() -> PathBuf {
    if let Ok(p) = std::env::var("LODESTONE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // A program (target/<profile>/lodestone-faults) has it beside itself; a test
    // (target/<profile>/deps/<test>) one directory up.
    let dir = exe.parent().expect("target dir");
    let p = [
        dir.join("lodestone"),
        dir.parent().expect("target dir").join("lodestone"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .unwrap_or_else(|| dir.join("lodestone"));
    assert!(
        p.exists(),
        "lodestone binary not found at {}; build it first (`cargo build --bin lodestone`) or set LODESTONE_BIN",
        p.display()
    );
    p
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Path of etcd 3.4 (Debian package `etcd-server`).
pub fn etcd_bin() -> PathBuf {
    which("etcd").expect("etcd not found: install the Debian package etcd-server (the README's test command does)")
}

/// Path of etcdctl 3.4 (Debian package `etcd-client`).
pub fn etcdctl_bin() -> PathBuf {
    which("etcdctl")
        .expect("etcdctl not found: install the Debian package etcd-client (the README's test command does)")
}

/// Taken by the few tests whose load is their subject (hundreds of megabytes written and
/// deleted in one request, a [`Cluster::write_load`], the fault suite's busy run), so that
/// two of them never share the machine's cores: on two cores the Lodestone and etcd runs of
/// one such test side by side pushed etcd's own DeleteRange past its request timeout. Tests
/// are otherwise free to run in parallel.
pub async fn heavy_load() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// A TCP port on 127.0.0.1 that nothing listens on, for a test process to bind.
///
/// Ports come from below the kernel's ephemeral range, never from it: the outgoing
/// connections of every process on the machine take ephemeral ports, so a port probed free
/// there can be taken by a client socket before the server binds it (a CI run failed with
/// "Address already in use" that way). Within this process an atomic cursor hands each port
/// out once; across test processes the cursor starts at a pid-derived offset and every
/// candidate is probed before it is returned.
pub fn free_port() -> u16 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};

    static POOL: OnceLock<(u32, u32, u32)> = OnceLock::new();
    static CURSOR: AtomicU32 = AtomicU32::new(0);
    let &(first, len, start) = POOL.get_or_init(|| {
        let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|v| v.parse::<u32>().ok());
                Some((it.next()??, it.next()??))
            })
            .unwrap_or((32768, 60999));
        let (first, last) = if low > 12_000 {
            (10_000, low - 1)
        } else {
            (high + 1, 65_535)
        };
        let len = last - first + 1;
        (first, len, (std::process::id() * 997) % len)
    });
    for _ in 0..len {
        let n = CURSOR.fetch_add(1, Ordering::Relaxed);
        let port = (first + (start + n) % len) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port on 127.0.0.1 between {first} and {}", first + len - 1)
}

/// One member process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    /// Whether the member has a listener of its own for HTTP (`--listen-metrics-urls`);
    /// without one it serves HTTP on its client URL, as etcd does by default.
    pub metrics_listener: bool,
    /// Client and peer URLs are `https://` (see [`Options::client_tls`], [`Options::peer_tls`]).
    pub client_https: bool,
    pub peer_https: bool,
    pub data_dir: PathBuf,
    args: Vec<String>,
    kind: Kind,
    child: Option<Child>,
    log: PathBuf,
}

impl Member {
    pub fn client_url(&self) -> String {
        let scheme = if self.client_https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        let scheme = if self.peer_https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.peer_port)
    }

    /// Changes the value of `flag` for the member's next start (the flag must be set).
    pub fn set_flag(&mut self, flag: &str, value: &str) {
        let at = self.args.iter().position(|a| a == flag).expect("flag is set") + 1;
        self.args[at] = value.to_string();
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Where the member serves `/health`, `/metrics` and the other HTTP endpoints. A
    /// separate metrics listener is plain HTTP even when the client URL is https, as etcd
    /// allows.
    pub fn metrics_url(&self) -> String {
        if self.metrics_listener {
            format!("http://127.0.0.1:{}", self.metrics_port)
        } else {
            self.client_url()
        }
    }

    /// The value this member is started with for `flag` (e.g. `--initial-cluster`).
    pub fn flag(&self, flag: &str) -> Option<&str> {
        let i = self.args.iter().position(|a| a == flag)?;
        self.args.get(i + 1).map(|s| s.as_str())
    }

    fn spawn(&mut self, extra_env: &[(String, String)]) {
        let bin = match self.kind {
            Kind::Lodestone => lodestone_bin(),
            Kind::Etcd => etcd_bin(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open member log");
        let mut cmd = Command::new(bin);
        cmd.args(&self.args)
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start member process"));
    }

    /// The process id while the member runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().expect("wait").is_none(),
            None => false,
        }
    }

    /// SIGSTOP: the process stops dead, its sockets open (a member that stalls or is cut
    /// off, as its peers see it), until [`Member::resume`]. Returns once every thread of the
    /// member has stopped, because delivery is not instantaneous: a thread waiting for a CPU on a busy machine runs on until it is
    /// scheduled, and a test that goes on at once may see it answer (a follower answered a
    /// heartbeat a millisecond after `kill -STOP` had returned).
    pub fn pause(&self) {
        self.signal("-STOP");
        let pid = self.child.as_ref().expect("member is running").id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !all_threads_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "member {pid} did not stop within 5 s of SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT after [`Member::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let c = self.child.as_ref().expect("member is running");
        let ok = Command::new("kill").arg(sig).arg(c.id().to_string()).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill {sig} {}", c.id());
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the process to exit; returns its exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the member logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The member's last log lines (for failure messages).
    /// Everything the member logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// The fields of a `/proc/.../stat` file that follow the command name, from the state on.
/// The name is in parentheses and may contain anything, so the split is at the last `)`.
fn stat_fields(path: &Path) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether every thread of process `pid` is in the stopped state (`T` in
/// `/proc/<pid>/task/<tid>/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        stat_fields(&t.path().join("stat"))
            .and_then(|f| f.first().map(|state| state == "T"))
            .unwrap_or(true)
    })
}

/// CPU time (user and system, every thread) process `pid` has used so far, in microseconds;
/// `None` if it is gone. `/proc/<pid>/stat` counts it in USER_HZ ticks (fields 14 and 15 of
/// the line, the 12th and 13th after the name), which Linux fixes at 100 a second.
pub fn cpu_time_us(pid: u32) -> Option<u64> {
    const US_PER_TICK: u64 = 10_000;
    let fields = stat_fields(Path::new(&format!("/proc/{pid}/stat")))?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * US_PER_TICK)
}

/// A cluster of real processes in a temporary directory, killed when dropped.
pub struct Cluster {
    pub kind: Kind,
    pub members: Vec<Member>,
    /// The certificate the harness's clients present when the client URLs are https.
    pub client_tls: Option<pki::TlsFiles>,
    _dir: tempfile::TempDir,
}

/// Options for a test cluster.
#[derive(Debug, Clone)]
pub struct Options {
    pub size: usize,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    /// Extra flags for every member.
    pub extra: Vec<String>,
    /// Start every member with `--listen-metrics-urls` (a listener of its own for HTTP);
    /// without it, members use etcd's default: HTTP on the client URLs, no extra port.
    pub metrics_listener: bool,
    /// Serve clients on https URLs with this certificate, requiring client certificates
    /// signed by its CA; the harness's clients present the same certificate.
    pub client_tls: Option<pki::TlsFiles>,
    /// Talk between members on https URLs with this certificate, requiring peer
    /// certificates signed by its CA.
    pub peer_tls: Option<pki::TlsFiles>,
    /// Where the cluster's temporary directory is made (the system's temporary directory
    /// when `None`): a tmpfs, for instance, takes the disk out of a measurement.
    pub data_root: Option<PathBuf>,
}

impl Options {
    /// The defaults, with `size` members.
    pub fn members(size: usize) -> Options {
        Options {
            size,
            ..Default::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            size: 1,
            heartbeat_ms: 50,
            election_ms: 500,
            extra: Vec::new(),
            metrics_listener: true,
            client_tls: None,
            peer_tls: None,
            data_root: None,
        }
    }
}

impl Cluster {
    /// Starts a cluster and waits until it serves a linearizable read.
    pub async fn start(kind: Kind, opts: Options) -> Cluster {
        let mut c = Cluster::prepare(kind, opts);
        c.launch().await;
        c
    }

    /// Starts every member of a [`Cluster::prepare`]d cluster and waits until it is healthy.
    pub async fn launch(&mut self) {
        self.spawn_all();
        self.wait_healthy(Duration::from_secs(30)).await;
    }

    /// Starts every member without waiting (for clusters the harness's client cannot
    /// reach, e.g. with self-signed certificates).
    pub fn spawn_all(&mut self) {
        for m in &mut self.members {
            m.spawn(&[]);
        }
    }

    /// Lays out a cluster (ports, directories, flags) without starting it, so a test can
    /// prepare the members' data directories first.
    pub fn prepare(kind: Kind, opts: Options) -> Cluster {
        let dir = match &opts.data_root {
            Some(root) => tempfile::tempdir_in(root),
            None => tempfile::tempdir(),
        }
        .expect("temp dir");
        let token = format!("test-{}", std::process::id());
        let mut members = Vec::new();
        for i in 0..opts.size {
            let name = format!("m{i}");
            members.push(Member {
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
                metrics_listener: opts.metrics_listener,
                client_https: opts.client_tls.is_some(),
                peer_https: opts.peer_tls.is_some(),
                data_dir: dir.path().join(format!("{name}.data")),
                log: dir.path().join(format!("{name}.log")),
                name,
                args: Vec::new(),
                kind,
                child: None,
            });
        }
        let initial: Vec<String> = members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect();
        let initial = initial.join(",");
        for m in &mut members {
            m.args = vec![
                "--name".into(),
                m.name.clone(),
                "--data-dir".into(),
                m.data_dir.display().to_string(),
                "--listen-client-urls".into(),
                m.client_url(),
                "--advertise-client-urls".into(),
                m.client_url(),
                "--listen-peer-urls".into(),
                m.peer_url(),
                "--initial-advertise-peer-urls".into(),
                m.peer_url(),
                "--initial-cluster".into(),
                initial.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                token.clone(),
                "--heartbeat-interval".into(),
                opts.heartbeat_ms.to_string(),
                "--election-timeout".into(),
                opts.election_ms.to_string(),
            ];
            if opts.metrics_listener {
                m.args.extend(["--listen-metrics-urls".into(), m.metrics_url()]);
            }
            if let Some(t) = &opts.client_tls {
                m.args.extend(tls_flags("", t));
            }
            if let Some(t) = &opts.peer_tls {
                m.args.extend(tls_flags("peer-", t));
            }
            m.args.extend(opts.extra.iter().cloned());
        }
        Cluster {
            kind,
            members,
            client_tls: opts.client_tls.clone(),
            _dir: dir,
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint()).collect()
    }

    /// How the `etcd-client` crate reaches member `m`: its client URL when that is https
    /// (so the client speaks TLS), else `host:port`.
    fn grpc_endpoint(&self, m: &Member) -> String {
        if m.client_https { m.client_url() } else { m.endpoint() }
    }

    /// Connection options for the harness's clients: TLS with the cluster's client
    /// certificate when the client URLs are https.
    pub fn connect_options(&self) -> ConnectOptions {
        connect_options(self.client_tls.as_ref())
    }

    /// A client of one member only.
    pub async fn client_of(&self, i: usize) -> Client {
        connect_with(&[self.grpc_endpoint(&self.members[i])], self.connect_options()).await
    }

    /// `writers` clients of member `i` putting 512-byte values (100 keys each) until the load
    /// is stopped: keeps every member's apply busy while a test looks at something else.
    pub async fn write_load(&self, i: usize, writers: usize) -> WriteLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let alone = heavy_load().await;
        let mut tasks = Vec::new();
        for t in 0..writers {
            let mut cl = self.client_of(i).await;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    cl.put(format!("load/{t}/{}", n % 100), vec![b'x'; 512], None)
                        .await
                        .expect("a put of the write load");
                    n += 1;
                }
            }));
        }
        WriteLoad {
            stop,
            tasks,
            _alone: alone,
        }
    }

    /// A client of all members.
    pub async fn client(&self) -> Client {
        let eps: Vec<String> = self.members.iter().map(|m| self.grpc_endpoint(m)).collect();
        connect_with(&eps, self.connect_options()).await
    }

    /// Waits until every running member answers a linearizable read.
    pub async fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            loop {
                let ok = async {
                    let mut c = Client::connect([self.grpc_endpoint(m)], Some(self.connect_options()))
                        .await
                        .ok()?;
                    match c.get("health", None).await {
                        Ok(_) => Some(()),
                        // With auth enabled the anonymous read is refused, but answered: a
                        // member that applied the auth store is serving (etcdctl's rule).
                        Err(etcd_client::Error::GRpcStatus(s))
                            if s.message() == "etcdserver: user name is empty"
                                || s.message() == "etcdserver: permission denied" =>
                        {
                            Some(())
                        }
                        Err(_) => None,
                    }
                }
                .await
                .is_some();
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "member {i} did not become healthy; log:\n{}",
                    m.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The index of the member that is leader, asked through Maintenance.Status.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                if let Ok(mut c) = Client::connect([self.grpc_endpoint(m)], Some(self.connect_options())).await
                    && let Ok(s) = c.status().await
                    && s.leader() != 0
                    && s.leader() == s.header().map_or(0, |h| h.member_id())
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every member has published its name and client URLs (MemberList shows
    /// them as started).
    pub async fn wait_published(&self) {
        let mut c = self.client().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(m) = c.member_list().await
                && m.members().len() == self.members.len()
                && m.members()
                    .iter()
                    .all(|m| !m.name().is_empty() && !m.client_urls().is_empty())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members never published their names and client URLs"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Lays out one more member (ports, directories; not started, not yet in the cluster)
    /// and returns its index. Its peer URL is `http://127.0.0.1:<peer_port>`.
    pub fn add_member_slot(&mut self) -> usize {
        let i = self.members.len();
        let name = format!("m{i}");
        let template = self.members[0].args.clone();
        let mut m = Member {
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            metrics_listener: self.members[0].metrics_listener,
            client_https: self.members[0].client_https,
            peer_https: self.members[0].peer_https,
            data_dir: self._dir.path().join(format!("{name}.data")),
            log: self._dir.path().join(format!("{name}.log")),
            name,
            args: template,
            kind: self.kind,
            child: None,
        };
        let peer = m.peer_url();
        for (flag, value) in [
            ("--name", m.name.clone()),
            ("--data-dir", m.data_dir.display().to_string()),
            ("--listen-client-urls", m.client_url()),
            ("--advertise-client-urls", m.client_url()),
            ("--listen-peer-urls", peer.clone()),
            ("--initial-advertise-peer-urls", peer),
            ("--listen-metrics-urls", m.metrics_url()),
        ] {
            if flag == "--listen-metrics-urls" && !m.metrics_listener {
                continue;
            }
            let at = m.args.iter().position(|a| a == flag).expect("flag in template") + 1;
            m.args[at] = value;
        }
        self.members.push(m);
        i
    }

    /// Starts member `i` so that it joins the running cluster (`--initial-cluster-state
    /// existing`) with the `--initial-cluster` that `etcdctl member add` printed.
    pub fn start_joining(&mut self, i: usize, initial_cluster: &str) {
        let m = &mut self.members[i];
        for (flag, value) in [
            ("--initial-cluster", initial_cluster.to_string()),
            ("--initial-cluster-state", "existing".to_string()),
        ] {
            let at = m.args.iter().position(|a| a == flag).expect("flag in template") + 1;
            m.args[at] = value;
        }
        m.spawn(&[]);
    }

    /// Restarts a stopped member on its data directory with its original flags.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is still running");
        self.members[i].spawn(&[]);
    }

    /// Runs `etcdctl` against the given endpoints.
    pub fn etcdctl(&self, endpoints: &[String], args: &[&str]) -> Output {
        etcdctl(endpoints, args)
    }
}

/// A running [`Cluster::write_load`]. It holds [`heavy_load`] until stopped: a load that
/// keeps every member busy starves whatever else shares the two cores (etcd, so loaded
/// beside the fault suite's busy run, let a MemberAdd pass its 10 s client timeout).
pub struct WriteLoad {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _alone: tokio::sync::MutexGuard<'static, ()>,
}

impl WriteLoad {
    /// Stops the writers and waits for them; panics if a put of theirs failed.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a writer of the write load");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

fn opts() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10))
}

/// The flags that give a member `files` for one side (`""` for clients, `"peer-"` for
/// peers), with certificate authentication of the other end, as etcd names them.
pub fn tls_flags(prefix: &str, files: &pki::TlsFiles) -> Vec<String> {
    vec![
        format!("--{prefix}cert-file"),
        files.cert.display().to_string(),
        format!("--{prefix}key-file"),
        files.key.display().to_string(),
        format!("--{prefix}trusted-ca-file"),
        files.ca.display().to_string(),
        format!("--{prefix}client-cert-auth"),
    ]
}

/// The harness's connection options, with TLS (this CA, this client certificate) when
/// `tls` is given.
pub fn connect_options(tls: Option<&pki::TlsFiles>) -> ConnectOptions {
    let o = opts();
    match tls {
        None => o,
        Some(t) => {
            let read = |p: &PathBuf| std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            o.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(read(&t.ca)))
                    .identity(etcd_client::Identity::from_pem(read(&t.cert), read(&t.key))),
            )
        }
    }
}

/// Connects the `etcd-client` crate to `endpoints`.
pub async fn connect(endpoints: &[String]) -> Client {
    connect_with(endpoints, opts()).await
}

/// Connects the `etcd-client` crate to `endpoints` with `options`.
pub async fn connect_with(endpoints: &[String], options: ConnectOptions) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(endpoints, Some(options.clone())).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect to {endpoints:?}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Runs etcdctl 3.4 (API v3) and returns its output.
pub fn etcdctl(endpoints: &[String], args: &[&str]) -> Output {
    Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--command-timeout=10s")
        .args(args)
        .output()
        .expect("run etcdctl")
}

/// The standard output of an etcdctl run that must have succeeded (its output and errors
/// in the failure message otherwise).
pub fn etcdctl_ok(out: impl std::borrow::Borrow<Output>) -> String {
    let out = out.borrow();
    assert!(
        out.status.success(),
        "etcdctl failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout.clone()).expect("etcdctl printed UTF-8")
}

/// The standard error of an etcdctl run that must have failed.
pub fn etcdctl_failed(out: impl std::borrow::Borrow<Output>) -> String {
    let out = out.borrow();
    assert!(
        !out.status.success(),
        "etcdctl succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs etcdctl with `stdin` as its input (for `txn`).
pub fn etcdctl_stdin(endpoints: &[String], args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("etcdctl output")
}

/// An HTTPS GET of `url` (`https://127.0.0.1:port/path`) over HTTP/1.1, trusting `tls.ca`
/// and presenting `tls`'s certificate when `identity` is set: status code and body, or the
/// error that stopped it (a refused handshake, say).
pub async fn https_get(url: &str, tls: &pki::TlsFiles, identity: bool) -> Result<(u16, String), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rest = url.strip_prefix("https://").ok_or("not an https URL")?;
    let (hostport, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&tls.ca).map_err(|e| e.to_string())? {
        roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = if identity {
        let chain = CertificateDer::pem_file_iter(&tls.cert)
            .map_err(|e| e.to_string())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| e.to_string())?;
        builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(hostport)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    // A server that refuses the certificate after the handshake ends the stream here.
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

/// A plain HTTP/1.0 GET of `url` (`http://host:port/path`): status code and body.
pub fn http_get(url: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (hostport, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(hostport).unwrap_or_else(|e| panic!("connect {hostport}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of metric `name` (its first sample) in a Prometheus text page; panics when the
/// page does not have it.
pub fn metric(text: &str, name: &str) -> f64 {
    try_metric(text, name).unwrap_or_else(|| panic!("metric {name} missing"))
}

/// The value of metric `name` (its first sample) in a Prometheus text page, if it has one.
pub fn try_metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// Asserts that an `etcd-client` error is a gRPC status with `code` and exactly `message`.
pub fn assert_status(err: etcd_client::Error, code: tonic::Code, message: &str) {
    match err {
        etcd_client::Error::GRpcStatus(s) => {
            assert_eq!(
                s.code(),
                code,
                "code for {message:?}: got {:?} {:?}",
                s.code(),
                s.message()
            );
            assert_eq!(s.message(), message);
        }
        other => panic!("expected gRPC status {code:?} {message:?}, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_root_holds_every_members_directory() {
        let root = tempfile::tempdir().expect("temp dir");
        let cluster = Cluster::prepare(
            Kind::Lodestone,
            Options {
                size: 3,
                data_root: Some(root.path().to_path_buf()),
                ..Options::default()
            },
        );
        for m in &cluster.members {
            assert!(
                m.data_dir.starts_with(root.path()),
                "{} is outside {}",
                m.data_dir.display(),
                root.path().display()
            );
        }
        let elsewhere = Cluster::prepare(Kind::Lodestone, Options::members(1));
        assert!(
            !elsewhere.members[0].data_dir.starts_with(root.path()),
            "without a root, the system's temporary directory"
        );
    }
}
