//! The fault suite's short run: a three-member cluster in network namespaces under mixed
//! traffic through six random faults, every history checked (see
//! `lodestone_tests::robustness`). `LODESTONE_FAULT_SEED` replays a seed's choices; the long
//! run is `lodestone-faults`.

use lodestone_tests::robustness::{Config, Report, run};

fn seed() -> u64 {
    std::env::var("LODESTONE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        })
}

/// Runs `config` and fails on any violation, or when the checks had too little to check.
async fn run_and_check(config: Config, min_linearizable: usize) -> Report {
    let seed = config.seed;
    let report = run(&config).await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{report}");
    assert!(
        report.violations.is_empty(),
        "fault suite found violations (replay with LODESTONE_FAULT_SEED={seed}):\n{report}"
    );
    assert_eq!(report.faults.len(), config.cycles, "{report}");
    assert!(report.linearizable_checked > min_linearizable, "{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_lose_no_acknowledged_write_and_stay_linearizable() {
    let config = Config {
        seed: seed(),
        cycles: 6,
        ..Config::default()
    };
    let report = run_and_check(config, 300).await;
    // Watches and leases must have had something to check too.
    assert!(report.watch_events > 100, "{report}");
    assert!(report.lease_checks > 5, "{report}");
}

/// Clients as fast as the members answer, so that followers lag: a member that a client
/// talks to alone must still never answer it behind its own earlier answers (a forwarded
/// write acknowledged before the follower applied it, then a serializable read there). It
/// takes the machine's cores for its few seconds, so it waits for the other heavy tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_cluster_under_faults_keeps_each_clients_session() {
    let _alone = lodestone_tests::heavy_load().await;
    let config = Config {
        seed: seed(),
        cycles: 3,
        clients: 24,
        rate: 20_000,
        ..Config::default()
    };
    let report = run_and_check(config, 1000).await;
    assert!(report.session_checked > 1000, "{report}");
}

/// One member on a lazy filesystem, killed again and again with everything it had not
/// fsynced thrown away: only unacknowledged work may be lost. With one member, every
/// acknowledged write must have been fsynced on this very disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_that_lose_unsynced_writes_lose_no_acknowledged_write() {
    let config = Config {
        seed: seed(),
        members: 1,
        cycles: 5,
        rate: 100,
        lose_unsynced: true,
        ..Config::default()
    };
    run_and_check(config, 200).await;
}

/// A member whose log cannot be written (its disk is full) stops with an error and a
/// non-zero exit, as etcd does, instead of lingering and answering "server stopped"; once
/// there is room again it starts on its data with every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_disk_fills_up_exits_and_recovers_after() {
    use lodestone_tests::lazyfs::LazyMount;
    use lodestone_tests::{connect, free_port, lodestone_bin};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let mut disk =
        LazyMount::start(&dir.path().join("backing"), &dir.path().join("disk")).unwrap_or_else(|e| panic!("{e}"));
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let data = disk.mountpoint().join("data");
    let log = dir.path().join("member.log");
    let spawn = || {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        std::process::Command::new(lodestone_bin())
            .args(["--name", "m0", "--data-dir", data.to_str().unwrap()])
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("m0={peer_url}")])
            .stdout(std::process::Stdio::from(out.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(out))
            .spawn()
            .map(Process)
            .unwrap()
    };
    let mut member = spawn();
    let endpoint = vec![format!("127.0.0.1:{client}")];
    let mut c = connect(&endpoint).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = c.put("k0", "v", None).await {
        assert!(Instant::now() < deadline, "the member did not start: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 1..20 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }

    disk.set_full(true).unwrap();
    assert!(
        c.put("while-full", "v", None).await.is_err(),
        "a write succeeded on a full disk"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = member.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the member kept running with its log unwritable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "exit status {status:?}; log:\n{text}");
    assert!(text.contains("consensus stopped"), "{text}");

    disk.set_full(false).unwrap();
    let _member = spawn();
    let mut c = connect(&endpoint).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let kvs = loop {
        match c.get("k", Some(etcd_client::GetOptions::new().with_prefix())).await {
            Ok(r) => break r,
            Err(e) => assert!(Instant::now() < deadline, "the member did not come back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(kvs.kvs().len(), 20, "acknowledged writes lost on the full disk");
    c.put("after", "v", None).await.unwrap();
}

/// A child process killed when dropped, also when the test fails.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
