//! A member cut off from its quorum: require-leader requests fail at once with etcd's "no
//! leader", serializable reads keep working, and writes time out with etcd's error rather
//! than hanging. Checked against Lodestone and etcd 3.4 where their behaviour is the same.

use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use lodestone_tests::{Cluster, Kind, Options, assert_status};
use tonic::Code;

/// Starts three members, writes a key, kills the leader and one follower, and waits until
/// the survivor reports that it has no leader.
async fn isolated_follower(kind: Kind) -> (Cluster, usize) {
    let opts = Options {
        size: 3,
        ..Default::default()
    };
    let mut c = Cluster::start(kind, opts).await;
    c.client().await.put("before", "loss", None).await.unwrap();
    let leader = c.leader().await;
    let survivor = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    // Make sure the survivor has applied the write before its peers go away.
    let mut s = c.client_of(survivor).await;
    assert_eq!(s.get("before", None).await.unwrap().kvs().len(), 1);
    c.kill(leader);
    c.kill(other);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.status().await.is_ok_and(|st| st.leader() == 0) {
        assert!(
            Instant::now() < deadline,
            "the survivor never noticed it lost its leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (c, survivor)
}

async fn require_leader_client(endpoint: String) -> Client {
    let opts = ConnectOptions::new()
        .with_require_leader(true)
        .with_timeout(Duration::from_secs(10));
    Client::connect([endpoint], Some(opts)).await.unwrap()
}

lodestone_tests::compat!(require_leader_fails_fast_and_serializable_reads_work);

async fn require_leader_fails_fast_and_serializable_reads_work(kind: Kind) {
    let (c, survivor) = isolated_follower(kind).await;
    let mut rl = require_leader_client(c.members[survivor].endpoint()).await;
    let start = Instant::now();
    let no_leader = "etcdserver: no leader";
    assert_status(rl.get("before", None).await.unwrap_err(), Code::Unavailable, no_leader);
    assert_status(rl.put("k", "v", None).await.unwrap_err(), Code::Unavailable, no_leader);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "require-leader requests did not fail fast"
    );
    // Serializable reads are served locally, leader or not.
    let mut plain = c.client_of(survivor).await;
    let r = plain
        .get("before", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"loss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lodestone_write_without_quorum_times_out() {
    let (c, survivor) = isolated_follower(Kind::Lodestone).await;
    let mut plain = c.client_of(survivor).await;
    let start = Instant::now();
    let timed_out = "etcdserver: request timed out";
    // etcd's request timeout: 5 s plus two election timeouts; then the client gets a
    // retryable error instead of a request that hangs.
    assert_status(
        plain.put("k", "v", None).await.unwrap_err(),
        Code::Unavailable,
        timed_out,
    );
    assert!(start.elapsed() < Duration::from_secs(9));
    assert_status(
        plain.get("before", None).await.unwrap_err(),
        Code::Unavailable,
        timed_out,
    );
}
