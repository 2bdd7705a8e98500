//! The fault suite's short run: a three-member cluster in network namespaces under mixed
//! traffic through six random faults, every history checked (see
//! `lodestone_tests::robustness`). `LODESTONE_FAULT_SEED` replays a seed's choices; the long
//! run is `lodestone-faults`.

use lodestone_tests::robustness::{Config, run};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_lose_no_acknowledged_write_and_stay_linearizable() {
    let seed = seed();
    let config = Config {
        seed,
        cycles: 6,
        ..Config::default()
    };
    let report = run(&config).await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{report}");
    assert!(
        report.violations.is_empty(),
        "fault suite found violations (replay with LODESTONE_FAULT_SEED={seed}):\n{report}"
    );
    assert_eq!(report.faults.len(), config.cycles, "{report}");
    // The checks must have had something to check.
    assert!(report.linearizable_checked > 300, "{report}");
    assert!(report.watch_events > 100, "{report}");
    assert!(report.lease_checks > 5, "{report}");
}

/// One member on a lazy filesystem, killed again and again with everything it had not
/// fsynced thrown away: only unacknowledged work may be lost. With one member, every
/// acknowledged write must have been fsynced on this very disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_that_lose_unsynced_writes_lose_no_acknowledged_write() {
    let seed = seed();
    let config = Config {
        seed,
        members: 1,
        cycles: 5,
        rate: 100,
        lose_unsynced: true,
        ..Config::default()
    };
    let report = run(&config).await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{report}");
    assert!(
        report.violations.is_empty(),
        "violations after lost unsynced writes (replay with LODESTONE_FAULT_SEED={seed}):\n{report}"
    );
    assert_eq!(report.faults.len(), config.cycles, "{report}");
    assert!(report.linearizable_checked > 200, "{report}");
}
