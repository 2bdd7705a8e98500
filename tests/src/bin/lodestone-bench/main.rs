//! `lodestone-bench`: Lodestone and etcd 3.4 side by side on this host, in one run.
//!
//! Starts a fresh three-member loopback cluster of each (etcd's default timing: 100 ms
//! heartbeat, 1 s election), drives the same workloads against both through the `etcd-client`
//! crate, and prints throughput and latency percentiles with Lodestone's ratio to etcd, then
//! each member's peak resident memory, `etcdctl check perf` verdicts, and a PNG plot of both
//! (`--plot`). Every workload runs for a fixed time, so a run is bounded: about
//! `2 × rows × --seconds`, plus a minute per `check perf` load and cluster (three: etcd,
//! Lodestone and the ceiling), plus startup.
//!
//! Build the store optimized first, or the figures measure a debug build:
//!
//! ```sh
//! cargo build --release --bin lodestone
//! LODESTONE_BIN=$CARGO_TARGET_DIR/release/lodestone \
//!   cargo run --release -p lodestone-tests --bin lodestone-bench -- --seconds 10
//! ```
//!
//! Rows: puts (256-byte values over 100,000 keys) at 1, 64 and 1000 clients; linearizable
//! and serializable single-key ranges and a compare-and-swap txn at 64 clients; lease
//! keep-alives from 1000 clients (a lease each); and watch fan-out: one writer putting 100
//! times a second to a key 1000 watchers follow, measured as delivery latency from the put
//! to each watcher (its op/s is events delivered per second). Clients share connections as
//! etcd's own benchmark does (at most 100). After the rows, `etcdctl check perf` runs at each
//! `--check-perf` load (default `l` and `xl`) against the same cluster, and once more against
//! one etcd member keeping its data in memory: the host's ceiling for that load, what
//! `etcdctl` itself can drive here (see [`host_ceiling`]).
//!
//! One run's figures move by tens of percent on a small, busy host, so `--rounds N` repeats
//! the whole comparison on fresh clusters, alternating which kind goes first, and reports
//! each figure's median over the rounds. `--endpoints` runs the rows against a cluster that
//! is already running instead (no comparison), for profiling or comparing two builds by hand.

mod plot;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp};
use lodestone_tests::{Cluster, Kind, Options, connect};

const VALUE_SIZE: usize = 256;
const KEY_SPACE: u64 = 100_000;
const PRELOADED: u64 = 1_000;
const MAX_CONNECTIONS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    RangeLinearizable,
    RangeSerializable,
    Txn,
    KeepAlive,
    WatchFanOut,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::RangeLinearizable => "range (linearizable)",
            Op::RangeSerializable => "range (serializable)",
            Op::Txn => "txn (compare-and-swap)",
            Op::KeepAlive => "lease keep-alive",
            Op::WatchFanOut => "watch fan-out delivery",
        }
    }

    /// The row's name on the plot.
    fn short(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::RangeLinearizable => "lin read",
            Op::RangeSerializable => "ser read",
            Op::Txn => "txn",
            Op::KeepAlive => "keep-alive",
            Op::WatchFanOut => "watch",
        }
    }
}

/// `etcdctl check perf --load=<load>`: its verdict and the throughput it measured.
#[derive(Debug, Clone)]
struct CheckPerf {
    load: String,
    verdict: String,
    /// The lines etcdctl printed about the run (throughput, slowest request, stddev).
    details: Vec<String>,
}

/// The PASS and FAIL lines of `check perf`'s output. Its progress bar redraws itself with
/// carriage returns on the same stream, and a verdict line can follow the bar's last redraw
/// without a line break, so each piece is read from where a verdict starts in it.
fn verdict_lines(text: &str) -> Vec<String> {
    text.split(['\n', '\r'])
        .filter_map(|piece| {
            let start = [piece.find("PASS"), piece.find("FAIL")].into_iter().flatten().min()?;
            Some(piece[start..].trim().to_string())
        })
        .collect()
}

/// Runs `etcdctl check perf` against `endpoints` (each load takes a minute).
fn check_perf(endpoints: &[String], load: &str) -> CheckPerf {
    let out = std::process::Command::new(lodestone_tests::etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(["check", "perf", &format!("--load={load}")])
        .output();
    let (verdict, details) = match out {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            let lines = verdict_lines(&text);
            let verdict = lines
                .iter()
                .rev()
                .find(|l| *l == "PASS" || *l == "FAIL")
                .cloned()
                .unwrap_or_else(|| {
                    // etcdctl's progress bar shares the output: name only its error.
                    let error = text
                        .lines()
                        .rev()
                        .map(str::trim)
                        .find(|l| l.starts_with("Error:"))
                        .unwrap_or("no error printed");
                    format!("no verdict (exit {:?}; {error})", out.status.code())
                });
            let details = lines
                .into_iter()
                .filter(|l| l.contains(':'))
                .map(|l| l.split_once(": ").map_or(l.clone(), |(_, d)| d.to_string()))
                .collect();
            (verdict, details)
        }
        Err(e) => (format!("etcdctl did not run: {e}"), Vec::new()),
    };
    CheckPerf {
        load: load.to_string(),
        verdict,
        details,
    }
}

/// Runs `check perf` at each of `loads` against `endpoints`, one after another, with progress
/// on standard error under `label`.
fn check_perf_loads(label: &str, endpoints: &[String], loads: &[String]) -> Vec<CheckPerf> {
    loads
        .iter()
        .map(|load| {
            eprint!("[{label}] etcdctl check perf --load={load} (a minute) ... ");
            let c = check_perf(endpoints, load);
            eprintln!("{} ({})", c.verdict, c.details.join("; "));
            c
        })
        .collect()
}

/// Options of every cluster the bench starts: `size` members on etcd's default timing (100 ms
/// heartbeat, 1 s election).
fn options(size: usize) -> Options {
    Options {
        size,
        heartbeat_ms: 100,
        election_ms: 1000,
        ..Options::default()
    }
}

/// A tmpfs on Linux: the host ceiling's member keeps its data there when it has room.
const MEMORY_DIR: &str = "/dev/shm";
/// Room the ceiling's member needs: a minute of `--load=xl` writes about 1.2 GB, and etcd's
/// database grows past what it holds (a container's default `/dev/shm` of 64 MiB is far from
/// enough).
const MEMORY_NEEDED_KIB: u64 = 4 << 20;

/// Free space under `dir` in KiB, as `df` reports it.
fn free_kib(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The second line: filesystem, size, used, available, capacity, mount point.
    text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

/// `etcdctl check perf` at each of `loads` against one etcd member whose data lives in
/// memory (`/dev/shm`, when it has room): nothing to replicate, no disk to wait for, so what
/// it reaches is about what `etcdctl` itself can drive on this host, sharing its cores with
/// one member. A three-member cluster that comes near it is held back by the host, not by
/// the store, and a load that fails here cannot pass against any cluster on this host.
///
/// Answers where the member kept its data, and a verdict per load.
async fn host_ceiling(loads: &[String]) -> (&'static str, Vec<CheckPerf>) {
    let memory = Path::new(MEMORY_DIR);
    let room = free_kib(memory).is_some_and(|kib| kib >= MEMORY_NEEDED_KIB);
    let data_root = room.then(|| memory.to_path_buf());
    let place = if room {
        "in memory"
    } else {
        "on disk (/dev/shm is missing or under 4 GiB free, so this ceiling includes the disk)"
    };
    eprintln!("[ceiling] starting one etcd member with its data {place}");
    let cluster = Cluster::start(
        Kind::Etcd,
        Options {
            data_root,
            ..options(1)
        },
    )
    .await;
    let endpoints = cluster.endpoints();
    let checks = tokio::task::block_in_place(|| check_perf_loads("ceiling", &endpoints, loads));
    (place, checks)
}

const ROWS: [(Op, usize); 8] = [
    (Op::Put, 1),
    (Op::Put, 64),
    (Op::Put, 1000),
    (Op::RangeLinearizable, 64),
    (Op::RangeSerializable, 64),
    (Op::Txn, 64),
    (Op::KeepAlive, 1000),
    (Op::WatchFanOut, 1000),
];

/// Puts per second of the watch fan-out writer.
const FAN_OUT_PUTS_PER_SEC: u64 = 100;

/// What one workload measured.
#[derive(Debug, Clone, Default)]
struct Figures {
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Operations completed (events delivered, for the fan-out); summed over rounds in
    /// [`medians`].
    count: usize,
    /// CPU time the members spent per operation (per delivered event for the fan-out), all
    /// members together, in microseconds; NaN when their processes are not known.
    cpu_us_per_op: f64,
}

/// A small, fast, seedable generator, so clients pick keys without sharing state.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn key(n: u64) -> String {
    format!("bench/{n:08}")
}

async fn one(client: &mut Client, op: Op, rng: &mut Rng, value: &[u8]) -> Result<(), etcd_client::Error> {
    match op {
        Op::Put => client.put(key(rng.next() % KEY_SPACE), value, None).await.map(drop),
        Op::RangeLinearizable => client.get(key(rng.next() % PRELOADED), None).await.map(drop),
        Op::RangeSerializable => client
            .get(key(rng.next() % PRELOADED), Some(GetOptions::new().with_serializable()))
            .await
            .map(drop),
        Op::Txn => {
            // Compare-and-swap on a key of its own: read its version, then write if unchanged.
            let k = key(rng.next() % PRELOADED);
            let version = client
                .get(k.as_str(), None)
                .await?
                .kvs()
                .first()
                .map_or(0, |kv| kv.version());
            let txn = Txn::new()
                .when([Compare::version(k.as_str(), CompareOp::Equal, version)])
                .and_then([TxnOp::put(k.as_str(), value, None)]);
            client.txn(txn).await.map(drop)
        }
        // Streams of their own: `keep_alive` and `fan_out`.
        Op::KeepAlive | Op::WatchFanOut => unreachable!("{} is not a single request", op.name()),
    }
}

fn figures(mut latencies_us: Vec<u32>, count: usize, elapsed: Duration, errors: u64) -> Figures {
    latencies_us.sort_unstable();
    let pct = |p: f64| {
        if latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies_us.len() as f64 * p).ceil() as usize).clamp(1, latencies_us.len()) - 1;
        latencies_us[i] as f64 / 1000.0
    };
    Figures {
        ops_per_sec: count as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors,
        count,
        cpu_us_per_op: f64::NAN,
    }
}

/// Renews its own lease until `deadline`; the latencies of the renewals.
async fn keep_alive(mut client: Client, deadline: Instant) -> (Vec<u32>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let Ok(lease) = client.lease_grant(60, None).await else {
        return (latencies, 1);
    };
    let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease.id()).await else {
        return (latencies, 1);
    };
    while Instant::now() < deadline {
        let t = Instant::now();
        match keeper.keep_alive().await {
            Ok(()) => match stream.message().await {
                Ok(Some(r)) if r.ttl() > 0 => latencies.push(t.elapsed().as_micros() as u32),
                _ => errors += 1,
            },
            Err(_) => errors += 1,
        }
        if errors > 0 && latencies.is_empty() {
            break;
        }
    }
    let _ = client.lease_revoke(lease.id()).await;
    (latencies, errors)
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One writer puts its wall-clock time to a key `watchers` watchers follow, for `duration`;
/// the figures are the delivery latencies (put sent → event received) of every event.
async fn fan_out(endpoints: &[String], watchers: usize, duration: Duration) -> Figures {
    const KEY: &str = "bench-fan-out";
    let mut conns = Vec::new();
    for _ in 0..watchers.min(MAX_CONNECTIONS) {
        conns.push(connect(endpoints).await);
    }
    let mut streams = Vec::new();
    for i in 0..watchers {
        let mut c = conns[i % conns.len()].clone();
        match c.watch(KEY, None).await {
            Ok(stream) => streams.push(stream),
            Err(e) => eprint!("(watch {i}: {e}) "),
        }
    }
    let open = streams.len();
    let stop = Instant::now() + duration + Duration::from_secs(2);
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while let Ok(Ok(Some(r))) = tokio::time::timeout_at(stop.into(), stream.message()).await {
                    for e in r.events() {
                        if e.event_type() == EventType::Put
                            && let Some(sent) = e.kv().and_then(|kv| kv.value_str().ok()?.parse::<u64>().ok())
                        {
                            latencies.push(now_us().saturating_sub(sent) as u32);
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut writer = connect(endpoints).await;
    let start = Instant::now();
    let mut puts = 0u64;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / FAN_OUT_PUTS_PER_SEC));
    while start.elapsed() < duration {
        tick.tick().await;
        if writer.put(KEY, now_us().to_string(), None).await.is_ok() {
            puts += 1;
        }
    }
    let mut latencies = Vec::new();
    for r in readers {
        latencies.extend(r.await.expect("watch reader"));
    }
    let expected = puts * open as u64;
    let missing = expected.saturating_sub(latencies.len() as u64) + (watchers - open) as u64;
    let count = latencies.len();
    figures(latencies, count, duration, missing)
}

/// Runs `op` from `clients` concurrent clients for `duration`.
async fn run(endpoints: &[String], op: Op, clients: usize, duration: Duration) -> Figures {
    if op == Op::WatchFanOut {
        return fan_out(endpoints, clients, duration).await;
    }
    let mut conns = Vec::new();
    for _ in 0..clients.min(MAX_CONNECTIONS) {
        conns.push(connect(endpoints).await);
    }
    let value = Arc::new(vec![b'v'; VALUE_SIZE]);
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let mut client = conns[i % conns.len()].clone();
            let value = value.clone();
            tokio::spawn(async move {
                if op == Op::KeepAlive {
                    return keep_alive(client, deadline).await;
                }
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match one(&mut client, op, &mut rng, &value).await {
                        Ok(()) => latencies.push(t.elapsed().as_micros() as u32),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("client task");
        latencies.extend(l);
        errors += e;
    }
    let count = latencies.len();
    figures(latencies, count, start.elapsed(), errors)
}

/// Peak resident memory of a process in MiB (`VmHWM`), while it runs.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// CPU time the processes have used so far, together, in microseconds; `None` if one of
/// them is gone.
fn cpu_used_us(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&pid| lodestone_tests::cpu_time_us(pid)).sum()
}

/// What one run measures.
#[derive(Clone)]
struct Plan {
    members: usize,
    seconds: u64,
    rows: Vec<(Op, usize)>,
    loads: Vec<String>,
}

/// Runs every row against a fresh cluster of `kind`; returns the figures and each member's
/// peak RSS (`None` for a member that is no longer running).
async fn bench(kind: Kind, plan: &Plan) -> (Vec<Figures>, Vec<CheckPerf>, Vec<Option<f64>>) {
    let label = match kind {
        Kind::Lodestone => "lodestone",
        Kind::Etcd => "etcd",
    };
    eprintln!("[{label}] starting a {}-member cluster", plan.members);
    let cluster = Cluster::start(kind, options(plan.members)).await;
    let endpoints = cluster.endpoints();
    let pids: Vec<u32> = cluster.members.iter().filter_map(|m| m.pid()).collect();
    let (rows, checks) = rows_against(label, &endpoints, &pids, plan).await;
    // A member that died during the run has no figure: say so, with the end of its log.
    let rss = cluster
        .members
        .iter()
        .map(|m| {
            let peak = m.pid().and_then(peak_rss_mib);
            if peak.is_none() {
                eprintln!(
                    "[{label}] member {} is no longer running; the end of its log:\n{}",
                    m.name,
                    m.log_tail()
                );
            }
            peak
        })
        .collect();
    (rows, checks, rss)
}

/// Preloads the keys, runs every row of `plan` against `endpoints`, then its `check perf`
/// loads. `pids` are the members' processes, whose CPU time each row is charged (none when
/// the cluster is not the bench's own).
async fn rows_against(label: &str, endpoints: &[String], pids: &[u32], plan: &Plan) -> (Vec<Figures>, Vec<CheckPerf>) {
    let seconds = plan.seconds;
    let mut client = connect(endpoints).await;
    for n in 0..PRELOADED {
        client.put(key(n), vec![b'v'; VALUE_SIZE], None).await.expect("preload");
    }
    let mut rows = Vec::new();
    for &(op, clients) in &plan.rows {
        eprint!("[{label}] {} with {clients} clients for {seconds} s ... ", op.name());
        let before = Some(pids).filter(|p| !p.is_empty()).and_then(cpu_used_us);
        let mut f = run(endpoints, op, clients, Duration::from_secs(seconds)).await;
        // Charged from before the row connects to after its last answer: the setup (the
        // connections, the fan-out's watch streams) is a small part of a row's work.
        if let (Some(before), Some(after)) = (before, cpu_used_us(pids))
            && f.count > 0
        {
            f.cpu_us_per_op = (after - before) as f64 / f.count as f64;
        }
        eprintln!(
            "{:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, member CPU {:.0} µs/op, {} errors",
            f.ops_per_sec, f.p50_ms, f.p99_ms, f.cpu_us_per_op, f.errors
        );
        rows.push(f);
    }
    let checks = tokio::task::block_in_place(|| check_perf_loads(label, endpoints, &plan.loads));
    (rows, checks)
}

/// The median of each figure over rounds (`rounds[round][row]`), per row.
fn medians(rounds: &[Vec<Figures>]) -> Vec<Figures> {
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }
    (0..rounds[0].len())
        .map(|row| {
            let of = |f: fn(&Figures) -> f64| median(rounds.iter().map(|r| f(&r[row])).collect());
            Figures {
                ops_per_sec: of(|f| f.ops_per_sec),
                p50_ms: of(|f| f.p50_ms),
                p99_ms: of(|f| f.p99_ms),
                errors: rounds.iter().map(|r| r[row].errors).sum(),
                count: rounds.iter().map(|r| r[row].count).sum(),
                cpu_us_per_op: of(|f| f.cpu_us_per_op),
            }
        })
        .collect()
}

fn usage() -> ! {
    eprintln!(
        "usage: lodestone-bench [--seconds N] [--rounds N] [--check-perf LOADS] [--plot FILE] [--members N] [--only ROW] [--clients N] [--endpoints URLS]\n  \
         --seconds N         seconds per workload, 1 to 600 (default 5)\n  \
         --rounds N          rounds, 1 to 10 (default 1): each starts fresh clusters of both, in alternating\n                      order (etcd first in odd rounds); the table shows each figure's median over rounds;\n                      check perf and peak RSS come from the first round\n  \
         --endpoints URLS    only run the rows (and check perf) against this running cluster, comma-separated\n                      client URLs, and print its figures; nothing is started or compared\n  \
         --members N         members per cluster, 1 to 5 (default 3)\n  \
         --only ROW          only the rows whose name contains ROW (e.g. put, read, watch)\n  \
         --clients N         only the rows with N clients (e.g. 1, 64, 1000)\n  \
         --check-perf LOADS  etcdctl check perf loads, comma-separated, a minute each (default l,xl; none to skip)\n  \
         --plot FILE         where to write the PNG plot (default lodestone-bench.png)"
    );
    std::process::exit(2)
}

/// A flag's number, which must lie in `range`.
fn in_range<T: std::str::FromStr + PartialOrd>(value: Option<String>, range: std::ops::RangeInclusive<T>) -> T {
    value
        .and_then(|v| v.parse().ok())
        .filter(|n| range.contains(n))
        .unwrap_or_else(|| usage())
}

#[tokio::main]
async fn main() {
    let mut seconds = 5u64;
    let mut members = 3usize;
    let mut only: Option<String> = None;
    let mut clients: Option<usize> = None;
    let mut endpoints: Option<Vec<String>> = None;
    let mut rounds = 1usize;
    let mut loads: Vec<String> = vec!["l".into(), "xl".into()];
    let mut plot_path = PathBuf::from("lodestone-bench.png");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--check-perf" => {
                let v = args.next().unwrap_or_else(|| usage());
                loads = if v == "none" {
                    Vec::new()
                } else {
                    v.split(',').map(str::to_string).collect()
                };
                if !loads.iter().all(|l| ["s", "m", "l", "xl"].contains(&l.as_str())) {
                    usage()
                }
            }
            "--plot" => plot_path = args.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "--members" => members = in_range(args.next(), 1..=5),
            "--only" => only = Some(args.next().unwrap_or_else(|| usage())),
            "--clients" => clients = Some(in_range(args.next(), 1..=1000)),
            "--endpoints" => {
                let v = args.next().unwrap_or_else(|| usage());
                endpoints = Some(v.split(',').map(str::to_string).collect());
            }
            "--rounds" => rounds = in_range(args.next(), 1..=10),
            "--seconds" => seconds = in_range(args.next(), 1..=600),
            _ => usage(),
        }
    }
    let plan = Plan {
        members,
        seconds,
        rows: ROWS
            .iter()
            .copied()
            .filter(|(op, _)| only.as_ref().is_none_or(|o| op.name().contains(o.as_str())))
            .filter(|(_, n)| clients.is_none_or(|c| c == *n))
            .collect(),
        loads,
    };
    if plan.rows.is_empty() {
        usage()
    }
    if let Some(endpoints) = endpoints {
        let (rows, checks) = rows_against("cluster", &endpoints, &[], &plan).await;
        println!();
        println!(
            "{:<24} {:>8} | {:>10} {:>8} {:>8}",
            "workload", "clients", "op/s", "p50 ms", "p99 ms"
        );
        for ((op, clients), f) in plan.rows.iter().zip(&rows) {
            println!(
                "{:<24} {:>8} | {:>10.0} {:>8.2} {:>8.2}",
                op.name(),
                clients,
                f.ops_per_sec,
                f.p50_ms,
                f.p99_ms
            );
        }
        for c in checks {
            println!(
                "etcdctl check perf --load={}: {} ({})",
                c.load,
                c.verdict,
                c.details.join("; ")
            );
        }
        return;
    }
    // Only the clusters the bench starts itself need the binary (--endpoints needs none).
    eprintln!(
        "lodestone binary: {} (build it with --release for meaningful figures)",
        lodestone_tests::lodestone_bin().display()
    );
    // Round 1 measures check perf and peak RSS; later rounds only the rows.
    let rows_only = Plan {
        loads: Vec::new(),
        ..plan.clone()
    };
    let (mut etcd_rounds, mut lode_rounds) = (Vec::new(), Vec::new());
    let (mut etcd_checks, mut lode_checks, mut etcd_rss, mut lode_rss) = Default::default();
    for round in 1..=rounds {
        if rounds > 1 {
            eprintln!("round {round} of {rounds}");
        }
        let this = if round == 1 { &plan } else { &rows_only };
        let order = if round % 2 == 1 {
            [Kind::Etcd, Kind::Lodestone]
        } else {
            [Kind::Lodestone, Kind::Etcd]
        };
        for kind in order {
            let (rows, checks, rss) = bench(kind, this).await;
            let (all, first_checks, first_rss) = match kind {
                Kind::Etcd => (&mut etcd_rounds, &mut etcd_checks, &mut etcd_rss),
                Kind::Lodestone => (&mut lode_rounds, &mut lode_checks, &mut lode_rss),
            };
            all.push(rows);
            if round == 1 {
                *first_checks = checks;
                *first_rss = rss;
            }
        }
    }
    let (place, ceiling) = if plan.loads.is_empty() {
        ("", Vec::new())
    } else {
        host_ceiling(&plan.loads).await
    };
    let (etcd, lode) = (medians(&etcd_rounds), medians(&lode_rounds));
    if rounds > 1 {
        println!();
        println!("medians over {rounds} rounds:");
    }

    println!();
    println!(
        "{:<24} {:>8} | {:>10} {:>8} {:>8} {:>7} | {:>10} {:>8} {:>8} {:>7} | {:>7} {:>7} {:>7}",
        "workload",
        "clients",
        "etcd op/s",
        "p50 ms",
        "p99 ms",
        "cpu µs",
        "lode op/s",
        "p50 ms",
        "p99 ms",
        "cpu µs",
        "x op/s",
        "x p99",
        "x cpu"
    );
    for (i, (op, clients)) in plan.rows.iter().enumerate() {
        let (e, l) = (&etcd[i], &lode[i]);
        println!(
            "{:<24} {:>8} | {:>10.0} {:>8.2} {:>8.2} {:>7.0} | {:>10.0} {:>8.2} {:>8.2} {:>7.0} | {:>7.2} {:>7.2} {:>7.2}",
            op.name(),
            clients,
            e.ops_per_sec,
            e.p50_ms,
            e.p99_ms,
            e.cpu_us_per_op,
            l.ops_per_sec,
            l.p50_ms,
            l.p99_ms,
            l.cpu_us_per_op,
            l.ops_per_sec / e.ops_per_sec,
            l.p99_ms / e.p99_ms,
            l.cpu_us_per_op / e.cpu_us_per_op,
        );
    }
    let show = |v: &[Option<f64>]| {
        v.iter()
            .map(|m| m.map_or("exited".to_string(), |m| format!("{m:.0}")))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!();
    println!(
        "peak RSS per member (MiB): etcd {} | lodestone {}",
        show(&etcd_rss),
        show(&lode_rss)
    );
    for (e, l) in etcd_checks.iter().zip(&lode_checks) {
        println!(
            "etcdctl check perf --load={}: etcd {} ({}) | lodestone {} ({})",
            e.load,
            e.verdict,
            e.details.join("; "),
            l.verdict,
            l.details.join("; ")
        );
    }
    for c in &ceiling {
        println!(
            "  host ceiling, --load={}: one etcd member with its data {place}: {} ({})",
            c.load,
            c.verdict,
            c.details.join("; ")
        );
    }
    let errors: u64 = etcd.iter().chain(&lode).map(|f| f.errors).sum();
    if errors > 0 {
        println!("requests that failed, or watch events not delivered (not counted above): {errors}");
    }
    if !ceiling.is_empty() {
        println!(
            "host ceiling: what etcdctl itself drives on this host against a member that neither replicates nor waits for a disk; \
             a cluster near it is held back by the host, and a load failing there cannot pass here."
        );
    }
    println!(
        "x op/s: Lodestone's throughput over etcd's (above 1 is faster); x p99: its p99 latency over etcd's (below 1 is faster)."
    );
    println!(
        "cpu µs: CPU time of all members per operation (per delivered event for the fan-out); x cpu: Lodestone's over etcd's (below 1 is leaner). \
         On a host whose cores the load generator shares, it moves less from run to run than throughput does."
    );
    let rows: Vec<(String, Figures, Figures)> = plan
        .rows
        .iter()
        .enumerate()
        .map(|(i, (op, clients))| {
            let clients = if *clients >= 1000 {
                format!("{}k", clients / 1000)
            } else {
                clients.to_string()
            };
            (format!("{} ×{clients}", op.short()), etcd[i].clone(), lode[i].clone())
        })
        .collect();
    match plot::draw(&plot_path, members, &rows) {
        Ok(()) => println!("plot: {}", plot_path.display()),
        Err(e) => {
            eprintln!("lodestone-bench: cannot draw the plot: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work_and_needs_every_process() {
        let me = [std::process::id()];
        let before = cpu_used_us(&me).expect("this process");
        // Spin until the reading moved by 50 ms (five ticks), however busy the host; a
        // reading that never moves fails after ten seconds of wall time.
        let spin = Instant::now();
        let mut x = 0u64;
        let mut now = before;
        while now < before + 50_000 && spin.elapsed() < Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            now = cpu_used_us(&me).expect("this process");
        }
        assert!(
            now >= before + 50_000,
            "{before} µs, then {now} µs after 10 s of spinning"
        );
        assert_eq!(cpu_used_us(&[std::process::id(), u32::MAX]), None, "no such process");
    }

    #[test]
    fn verdicts_are_found_behind_the_progress_bar() {
        let text = " 59 / 60   98.33%\r 60 / 60  100.00% 1m0sPASS: Throughput is 151 writes/s\n\
                    PASS: Slowest request took 0.0076s\r\nFAIL: Stddev is 0.2s\nFAIL\n";
        assert_eq!(
            verdict_lines(text),
            [
                "PASS: Throughput is 151 writes/s",
                "PASS: Slowest request took 0.0076s",
                "FAIL: Stddev is 0.2s",
                "FAIL"
            ]
        );
        assert!(verdict_lines(" 1 / 60    1.67% 00m59s\n").is_empty());
    }

    #[test]
    fn free_space_is_read_from_df() {
        let dir = tempfile::tempdir().expect("temp dir");
        let kib = free_kib(dir.path()).expect("df answers for a temporary directory");
        assert!(kib > 0, "a writable directory with {kib} KiB free");
        assert_eq!(
            free_kib(&dir.path().join("missing")),
            None,
            "df fails on a missing path"
        );
    }

    #[test]
    fn medians_take_each_figure_on_its_own() {
        let f = |ops, cpu| Figures {
            ops_per_sec: ops,
            cpu_us_per_op: cpu,
            count: 10,
            ..Figures::default()
        };
        let m = medians(&[vec![f(1.0, 300.0)], vec![f(3.0, 100.0)], vec![f(2.0, 200.0)]]);
        assert_eq!((m[0].ops_per_sec, m[0].cpu_us_per_op, m[0].count), (2.0, 200.0, 30));
    }
}
