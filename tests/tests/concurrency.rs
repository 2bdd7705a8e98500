//! v3lock and v3election side by side with etcd 3.4 through the `etcd-client` crate's lock
//! and election clients (which call those services), and `etcdctl lock` (which builds the
//! same recipe client-side from KV, Lease and Watch).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{LockOptions, ProclaimOptions, ResignOptions};
use lodestone_tests::{Cluster, Kind, Options, etcdctl};

lodestone_tests::compat!(lock_mutual_exclusion, election_campaign_observe_resign);

async fn lock_mutual_exclusion(kind: Kind) {
    let c = Cluster::start(kind, Options::default()).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let max_inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let eps = c.endpoints();
        let inside = inside.clone();
        let max_inside = max_inside.clone();
        tasks.push(tokio::spawn(async move {
            let mut cl = lodestone_tests::connect(&eps).await;
            let lease = cl.lease_grant(30, None).await.unwrap().id();
            for round in 0..5 {
                let l = cl
                    .lock("the-lock", Some(LockOptions::new().with_lease(lease)))
                    .await
                    .unwrap();
                assert!(l.key().starts_with(b"the-lock/"));
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                max_inside.fetch_max(now, Ordering::SeqCst);
                // Hold the lock across a write and a yield so overlaps would show.
                cl.put(format!("holder/{w}"), format!("{round}"), None).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                cl.unlock(l.key()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("lock rounds finish")
            .unwrap();
    }
    assert_eq!(
        max_inside.load(Ordering::SeqCst),
        1,
        "two clients held the lock at once"
    );

    // A lock held by an expiring lease is released by the expiry.
    let mut cl = c.client().await;
    let short = cl.lease_grant(2, None).await.unwrap().id();
    cl.lock("expiring", Some(LockOptions::new().with_lease(short)))
        .await
        .unwrap();
    let other = cl.lease_grant(30, None).await.unwrap().id();
    let started = std::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(15),
        cl.lock("expiring", Some(LockOptions::new().with_lease(other))),
    )
    .await
    .expect("the lock is released when its lease expires")
    .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));

    // etcdctl's client-side lock interoperates with the service's keys.
    let out = etcdctl(&c.endpoints(), &["lock", "ctl-lock", "echo", "held"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("held"));
}

async fn election_campaign_observe_resign(kind: Kind) {
    let c = Cluster::start(kind, Options::default()).await;
    let mut cl = c.client().await;
    let e = cl.leader("job").await.unwrap_err();
    assert!(e.to_string().contains("election: no leader"), "{e}");

    let l1 = cl.lease_grant(30, None).await.unwrap().id();
    let l2 = cl.lease_grant(30, None).await.unwrap().id();
    let first = cl.campaign("job", "one", l1).await.unwrap();
    let k1 = first.leader().unwrap().clone();
    assert_eq!(k1.name(), b"job");
    // Observing starts with the current leader's value.
    let mut observe = cl.observe("job").await.unwrap();
    let obs = observe.message().await.unwrap().unwrap();
    assert_eq!(obs.kv().unwrap().value(), b"one");

    // The second candidate waits while the first leads.
    let eps = c.endpoints();
    let second = tokio::spawn(async move {
        let mut cl = lodestone_tests::connect(&eps).await;
        cl.campaign("job", "two", l2).await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "second candidate elected while the first leads");

    cl.proclaim("one-updated", Some(ProclaimOptions::new().with_leader(k1.clone())))
        .await
        .unwrap();
    let obs = observe.message().await.unwrap().unwrap();
    assert_eq!(obs.kv().unwrap().value(), b"one-updated");
    let lead = cl.leader("job").await.unwrap();
    assert_eq!(lead.kv().unwrap().value(), b"one-updated");

    cl.resign(Some(ResignOptions::new().with_leader(k1.clone())))
        .await
        .unwrap();
    let won = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("second candidate elected after the resignation")
        .unwrap();
    let k2 = won.leader().unwrap().clone();
    assert!(k2.rev() > k1.rev());
    let obs = observe.message().await.unwrap().unwrap();
    assert_eq!(obs.kv().unwrap().value(), b"two");

    // The resigned leader can no longer proclaim.
    let e = cl
        .proclaim("stale", Some(ProclaimOptions::new().with_leader(k1)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("election: not leader"), "{e}");
}
