//! v3lock and v3election side by side with etcd 3.4 through the `etcd-client` crate's lock
//! and election clients (which call those services), and `etcdctl lock` (which builds the
//! same recipe client-side from KV, Lease and Watch).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{LockOptions, ProclaimOptions, ResignOptions};
use lodestone_tests::{Cluster, Kind, Options, assert_status, etcdctl};
use tonic::Code;

lodestone_tests::compat!(
    lock_mutual_exclusion,
    election_campaign_observe_resign,
    abandoned_waiters_withdraw
);

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

/// A Lock or Campaign whose client gives up while waiting withdraws its key, so it does not
/// block the contenders queued behind it until its lease expires.
async fn abandoned_waiters_withdraw(kind: Kind) {
    let c = Cluster::start(kind, Options::default()).await;
    let mut cl = c.client().await;
    let mut impatient = c.client().await;
    let holder = cl.lease_grant(30, None).await.unwrap().id();
    let waiter = cl.lease_grant(30, None).await.unwrap().id();
    let watcher = cl.clone();
    let gone = |key: String| {
        let mut cl = watcher.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while cl.get(key.as_str(), None).await.unwrap().count() != 0 {
                assert!(std::time::Instant::now() < deadline, "{key} was not withdrawn");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let held = cl
        .lock("busy", Some(LockOptions::new().with_lease(holder)))
        .await
        .unwrap();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(500),
        impatient.lock("busy", Some(LockOptions::new().with_lease(waiter))),
    )
    .await;
    assert!(gave_up.is_err(), "the lock is held, the waiter must wait");
    gone(format!("busy/{waiter:x}")).await;
    assert_eq!(
        cl.get(held.key(), None).await.unwrap().count(),
        1,
        "the holder keeps its key"
    );
    // The next contender gets the lock as soon as the holder releases it.
    let next = cl.lease_grant(30, None).await.unwrap().id();
    let mut patient = c.client().await;
    let queued = tokio::spawn(async move {
        patient
            .lock("busy", Some(LockOptions::new().with_lease(next)))
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cl.unlock(held.key()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), queued)
        .await
        .expect("the next contender is not blocked by the abandoned one")
        .unwrap();

    cl.campaign("post", "first", holder).await.unwrap();
    let gave_up = tokio::time::timeout(Duration::from_millis(500), impatient.campaign("post", "second", waiter)).await;
    assert!(gave_up.is_err(), "the election has a leader, the candidate must wait");
    gone(format!("post/{waiter:x}")).await;
    assert_eq!(cl.leader("post").await.unwrap().kv().unwrap().value(), b"first");
}

/// Lodestone only (etcd 3.4's server-side recipe goes on waiting, and later reports a lock
/// whose key is gone as held): a Lock or Campaign whose own key vanishes while it waits,
/// here because its lease is revoked, fails at once with "session expired" and never
/// reports success, so mutual exclusion holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_key_vanishes_wins_nothing() {
    let c = Cluster::start(Kind::Lodestone, Options::default()).await;
    let mut cl = c.client().await;
    let holder = cl.lease_grant(30, None).await.unwrap().id();
    let held = cl
        .lock("job", Some(LockOptions::new().with_lease(holder)))
        .await
        .unwrap();
    cl.campaign("seat", "first", holder).await.unwrap();

    let waiter = cl.lease_grant(30, None).await.unwrap().id();
    let mut other = c.client().await;
    let lock_wait = tokio::spawn(async move {
        let l = other.lock("job", Some(LockOptions::new().with_lease(waiter))).await;
        let e = other.campaign("seat", "second", waiter).await;
        (l, e)
    });
    // Both contender keys exist before the lease goes (the campaign queues after the lock
    // fails, so wait for the lock's key first).
    let reader = cl.clone();
    let queued = |key: String| {
        let mut cl = reader.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while cl.get(key.as_str(), None).await.unwrap().count() == 0 {
                assert!(std::time::Instant::now() < deadline, "{key} never queued");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    queued(format!("job/{waiter:x}")).await;
    let gone = cl.lease_grant(30, None).await.unwrap().id();
    // The waiter's lease is revoked: its lock key goes. It must not wait for the holder.
    cl.lease_revoke(waiter).await.unwrap();
    let (lock, campaign) = tokio::time::timeout(Duration::from_secs(5), lock_wait)
        .await
        .expect("the waits end at once, not when the holder lets go")
        .unwrap();
    assert_status(lock.unwrap_err(), Code::Unknown, "session expired");
    // Campaigning on a revoked lease cannot even queue.
    assert_status(
        campaign.unwrap_err(),
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_eq!(
        cl.get(held.key(), None).await.unwrap().count(),
        1,
        "the holder keeps the lock"
    );

    // A campaign whose key is deleted while it waits ends the same way.
    let mut other = c.client().await;
    let campaign_wait = tokio::spawn(async move { other.campaign("seat", "third", gone).await });
    queued(format!("seat/{gone:x}")).await;
    cl.delete(format!("seat/{gone:x}"), None).await.unwrap();
    let campaign = tokio::time::timeout(Duration::from_secs(5), campaign_wait)
        .await
        .expect("the campaign ends at once")
        .unwrap();
    assert_status(campaign.unwrap_err(), Code::Unknown, "session expired");
    assert_eq!(cl.leader("seat").await.unwrap().kv().unwrap().value(), b"first");
}
