//! The Lease API side by side with etcd 3.4 (grant, attach, keep-alive, time-to-live,
//! revoke, expiry, every error), and Lodestone-only: leases across a leader kill.

use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions};
use lodestone_tests::{Cluster, Kind, Options, assert_status, metric};
use tonic::Code;

lodestone_tests::compat!(grant_attach_revoke, negative_lease_ids, errors, expiry_and_keep_alive);

/// heartbeat 100 ms / election 2 s: etcd's minimum TTL is then 3 s.
fn slow_election(size: usize) -> Options {
    Options {
        size,
        heartbeat_ms: 100,
        election_ms: 2000,
        ..Default::default()
    }
}

async fn grant_attach_revoke(kind: Kind) {
    let c = Cluster::start(kind, slow_election(1)).await;
    let mut cl = c.client().await;
    // Below the minimum: raised to ceil(1.5 × election timeout).
    let g = cl.lease_grant(1, None).await.unwrap();
    assert_eq!(g.ttl(), 3);
    assert!(g.id() > 0);
    let g = cl
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .unwrap();
    assert_eq!((g.id(), g.ttl()), (0x1234, 60));
    let id = g.id();
    cl.put("l/a", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    cl.put("l/b", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    // Moving a key to no lease detaches it.
    cl.put("l/c", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    cl.put("l/c", "2", None).await.unwrap();
    let kv = cl.get("l/a", None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.lease(), id);

    let t = cl
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(t.granted_ttl(), 60);
    assert!((58..=60).contains(&t.ttl()), "remaining {}", t.ttl());
    let mut keys: Vec<&[u8]> = t.keys().iter().map(|k| k.as_slice()).collect();
    keys.sort();
    assert_eq!(keys, vec![&b"l/a"[..], b"l/b"]);

    let list = cl.leases().await.unwrap();
    let mut ids: Vec<i64> = list.leases().iter().map(|l| l.id()).collect();
    ids.sort();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&id));

    let (mut keeper, mut stream) = cl.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let k = stream.message().await.unwrap().unwrap();
    assert_eq!((k.id(), k.ttl()), (id, 60));

    // Revoke: attached keys go at one revision, watchers see the deletes.
    let mut w = cl.watch("l/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    assert!(w.message().await.unwrap().unwrap().created());
    let before = cl.get("l/c", None).await.unwrap().header().unwrap().revision();
    let r = cl.lease_revoke(id).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), before + 1);
    let resp = w.message().await.unwrap().unwrap();
    assert_eq!(resp.events().len(), 2);
    assert!(
        resp.events()
            .iter()
            .all(|e| e.event_type() == EventType::Delete && e.kv().unwrap().mod_revision() == before + 1)
    );
    let left = cl.get("l/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(left.kvs().len(), 1);
    assert_eq!(left.kvs()[0].key(), b"l/c");
    let t = cl.lease_time_to_live(id, None).await.unwrap();
    assert_eq!(t.ttl(), -1);
}

/// A client may choose any non-zero int64 as a lease id, −1 included (whose bytes are all
/// 0xFF): its keys are listed, and revoking it deletes them and nothing of its neighbours.
async fn negative_lease_ids(kind: Kind) {
    let c = Cluster::start(kind, slow_election(1)).await;
    let mut cl = c.client().await;
    for id in [-1, -2] {
        let g = cl
            .lease_grant(60, Some(LeaseGrantOptions::new().with_id(id)))
            .await
            .unwrap();
        assert_eq!(g.id(), id);
        cl.put(format!("n/{id}"), "v", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
    }
    let t = cl
        .lease_time_to_live(-1, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(t.keys(), [b"n/-1".to_vec()]);
    cl.lease_revoke(-1).await.unwrap();
    let left = cl.get("n/", Some(GetOptions::new().with_prefix())).await.unwrap();
    let keys: Vec<&[u8]> = left.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, vec![&b"n/-2"[..]], "revoking lease -1 deletes its key only");
    assert_eq!(cl.lease_time_to_live(-1, None).await.unwrap().ttl(), -1);
    cl.lease_revoke(-2).await.unwrap();
    assert!(
        cl.get("n/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .kvs()
            .is_empty()
    );
}

async fn errors(kind: Kind) {
    let c = Cluster::start(kind, slow_election(1)).await;
    let mut cl = c.client().await;
    cl.lease_grant(30, Some(LeaseGrantOptions::new().with_id(77)))
        .await
        .unwrap();
    let e = cl
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(77)))
        .await
        .unwrap_err();
    assert_status(e, Code::FailedPrecondition, "etcdserver: lease already exists");
    let e = cl.lease_grant(9_000_000_001, None).await.unwrap_err();
    assert_status(e, Code::OutOfRange, "etcdserver: too large lease TTL");
    let e = cl.lease_revoke(4242).await.unwrap_err();
    assert_status(e, Code::NotFound, "etcdserver: requested lease not found");
    let e = cl
        .put("k", "v", Some(PutOptions::new().with_lease(4242)))
        .await
        .unwrap_err();
    assert_status(e, Code::NotFound, "etcdserver: requested lease not found");
    // Inside a txn too, and nothing is written.
    let e = cl
        .txn(etcd_client::Txn::new().and_then([etcd_client::TxnOp::put(
            "k",
            "v",
            Some(PutOptions::new().with_lease(4242)),
        )]))
        .await
        .unwrap_err();
    assert_status(e, Code::NotFound, "etcdserver: requested lease not found");
    assert!(cl.get("k", None).await.unwrap().kvs().is_empty());
    // Unknown lease: keep-alive answers TTL 0 (which the client reports as "lease not
    // found"), time-to-live answers TTL -1; neither is a gRPC error.
    match cl.lease_keep_alive(4242).await {
        Err(etcd_client::Error::LeaseKeepAliveError(m)) => assert_eq!(m, "lease not found"),
        other => panic!("keep-alive of an unknown lease: {other:?}"),
    }
    let t = cl.lease_time_to_live(4242, None).await.unwrap();
    assert_eq!(t.ttl(), -1);
}

async fn expiry_and_keep_alive(kind: Kind) {
    let c = Cluster::start(kind, slow_election(1)).await;
    let mut cl = c.client().await;
    let short = cl.lease_grant(3, None).await.unwrap().id();
    let kept = cl.lease_grant(3, None).await.unwrap().id();
    let granted = Instant::now();
    cl.put("short", "v", Some(PutOptions::new().with_lease(short)))
        .await
        .unwrap();
    cl.put("kept", "v", Some(PutOptions::new().with_lease(kept)))
        .await
        .unwrap();
    let (mut keeper, mut stream) = cl.lease_keep_alive(kept).await.unwrap();
    let mut gone_at = None;
    while granted.elapsed() < Duration::from_secs(8) {
        keeper.keep_alive().await.unwrap();
        assert_eq!(stream.message().await.unwrap().unwrap().ttl(), 3);
        if gone_at.is_none() && cl.get("short", None).await.unwrap().kvs().is_empty() {
            gone_at = Some(granted.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let gone_at = gone_at.expect("the un-renewed lease expired");
    assert!(
        gone_at >= Duration::from_millis(2500),
        "expired early, after {gone_at:?}"
    );
    assert_eq!(
        cl.get("kept", None).await.unwrap().kvs().len(),
        1,
        "renewed lease kept its key"
    );
    assert_eq!(cl.lease_time_to_live(short, None).await.unwrap().ttl(), -1);
}

/// Lodestone only: a lease's keys survive a leader kill for at least the lease's TTL (a new
/// leader restarts the TTL, never shortens it), and then expire on the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_after_leader_kill_and_not_early() {
    let mut c = Cluster::start(Kind::Lodestone, slow_election(3)).await;
    c.wait_published().await;
    let leader = c.leader().await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let mut cl = c.client_of(survivors[0]).await;
    let id = cl.lease_grant(6, None).await.unwrap().id();
    cl.put("doomed", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    // A key with a renewed lease must survive the failover too.
    let kept = cl.lease_grant(6, None).await.unwrap().id();
    cl.put("kept", "v", Some(PutOptions::new().with_lease(kept)))
        .await
        .unwrap();
    let granted = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.kill(leader);
    let mut keep_cl = c.client_of(survivors[1]).await;
    let mut ka = None;
    let mut gone_at = None;
    while granted.elapsed() < Duration::from_secs(25) {
        // Renewals may fail while the election runs (the stream then ends, as etcd's does);
        // a new stream must work once there is a leader again.
        if ka.is_none() {
            ka = keep_cl.lease_keep_alive(kept).await.ok();
        }
        if let Some((keeper, stream)) = ka.as_mut() {
            let renewed = keeper.keep_alive().await.is_ok()
                && matches!(
                    tokio::time::timeout(Duration::from_secs(3), stream.message()).await,
                    Ok(Ok(Some(r))) if r.ttl() == 6
                );
            if !renewed {
                ka = None;
            }
        }
        if let Ok(r) = cl.get("doomed", None).await
            && r.kvs().is_empty()
        {
            gone_at = Some(granted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let gone_at = gone_at.expect("the lease never expired after the leader kill");
    assert!(
        gone_at >= Duration::from_secs(6),
        "expired after {gone_at:?}, before its 6 s TTL"
    );
    assert_eq!(
        cl.get("kept", None).await.unwrap().kvs().len(),
        1,
        "a lease renewed through the failover lost its key"
    );
}

/// The member of `c` (other than `not`) that reports itself leader, asked of those members
/// only (a paused member would hold up the question).
async fn leader_among(c: &Cluster, not: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for i in (0..c.members.len()).filter(|i| *i != not) {
            let mut cl = c.client_of(i).await;
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), cl.status()).await
                && s.leader() != 0
                && s.leader() == s.header().map_or(0, |h| h.member_id())
            {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no new leader among the others");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lodestone only: a leader cut off from its quorum (both followers stalled) renews no lease:
/// KeepAlive fails instead of answering a TTL the cluster may not honour (etcd's
/// ensureLeadership; etcd 3.4.23 lacks it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_quorum_renews_no_lease() {
    let c = Cluster::start(Kind::Lodestone, Options::members(3)).await;
    c.wait_published().await;
    let leader = c.leader().await;
    let mut cl = c.client_of(leader).await;
    let id = cl.lease_grant(5, None).await.unwrap().id();
    let (mut keeper, mut stream) = cl.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().ttl(), 5);

    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for f in &followers {
        c.members[*f].pause();
    }
    let asked = Instant::now();
    keeper.keep_alive().await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .expect("the keep-alive was neither answered nor failed within 15 s");
    // Failing (an error, or the stream ending) is right; a positive TTL is not.
    if let Ok(Some(r)) = answer {
        assert!(r.ttl() <= 0, "renewed to {} s without a quorum", r.ttl());
    }
    assert!(asked.elapsed() < Duration::from_secs(10), "took {:?}", asked.elapsed());
    for f in &followers {
        c.members[*f].resume();
    }
}

/// Lodestone only: a leader that stalls (SIGSTOP) while the others elect a new leader and
/// keep a lease alive there finds, once it runs again, that the lease expired on its own
/// clock. It must not revoke it: the expiry is only proposed where leadership was just
/// confirmed, and never forwarded to the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_revokes_no_lease_the_new_leader_keeps() {
    let c = Cluster::start(Kind::Lodestone, Options::members(3)).await;
    c.wait_published().await;
    let old = c.leader().await;
    let mut cl = c.client_of(old).await;
    let id = cl.lease_grant(4, None).await.unwrap().id();
    cl.put("held", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    let (mut keeper, mut stream) = cl.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().ttl(), 4);
    drop((keeper, stream, cl));

    c.members[old].pause();
    let paused = Instant::now();
    let new = leader_among(&c, old).await;
    let mut ncl = c.client_of(new).await;
    let (mut keeper, mut stream) = ncl.lease_keep_alive(id).await.unwrap();
    let mut renew = async || {
        keeper.keep_alive().await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("renewal on the new leader within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(r.ttl(), 4, "the new leader renews the lease");
    };
    // Past the lease's TTL on the old leader's clock, kept alive on the new one.
    while paused.elapsed() < Duration::from_secs(7) {
        renew().await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    c.members[old].resume();
    let resumed = Instant::now();
    while resumed.elapsed() < Duration::from_secs(4) {
        renew().await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let r = ncl.get("held", None).await.unwrap();
    assert_eq!(
        r.kvs().len(),
        1,
        "the deposed leader revoked a lease kept alive on the new one"
    );
    assert!(ncl.lease_time_to_live(id, None).await.unwrap().ttl() > 0);
}

/// Lodestone only. The leader answers a renewal or TTL query only after a quorum confirmed
/// its leadership after the request arrived; concurrent requests share one such round
/// instead of costing one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lease_requests_share_leadership_rounds() {
    let c = Cluster::start(Kind::Lodestone, Options::members(3)).await;
    let leader = c.leader().await;
    let mut cl = c.client_of(leader).await;
    let lease = cl.lease_grant(60, None).await.unwrap().id();
    let url = format!("{}/metrics", c.members[leader].metrics_url());
    let text = lodestone_tests::http_get(&url).1;
    let (rounds0, checks0) = (
        metric(&text, "lodestone_lease_leadership_rounds_total"),
        metric(&text, "lodestone_lease_leadership_checks_total"),
    );
    let requests = 300;
    let queries = (0..requests).map(|_| {
        let mut cl = cl.clone();
        async move { cl.lease_time_to_live(lease, None).await.map(|r| r.ttl()) }
    });
    for ttl in futures::future::join_all(queries).await {
        let ttl = ttl.unwrap();
        assert!(ttl > 0 && ttl <= 60, "ttl {ttl}");
    }
    let text = lodestone_tests::http_get(&url).1;
    let rounds = metric(&text, "lodestone_lease_leadership_rounds_total") - rounds0;
    let checks = metric(&text, "lodestone_lease_leadership_checks_total") - checks0;
    assert!(
        checks >= requests as f64,
        "{checks} lease requests confirmed, expected at least {requests}"
    );
    assert!(
        rounds < checks / 2.0,
        "{rounds} leadership rounds for {checks} concurrent lease requests: not shared"
    );
}
