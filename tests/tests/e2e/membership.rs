//! The Cluster API: every refusal side by side with etcd 3.4, and Lodestone-only the full
//! cycle under live write traffic: learner add → join → catch up → promote → remove, with no
//! acknowledged write lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, MemberAddOptions};
use lodestone_tests::{Cluster, Kind, Options, assert_status, etcdctl};
use tonic::Code;

lodestone_tests::compat!(
    membership_errors_and_learner_bookkeeping,
    a_founder_that_lost_its_data_does_not_found_again,
    removing_the_leader_succeeds_and_the_rest_carry_on,
    a_change_through_a_follower_is_listed_there_at_once
);

async fn membership_errors_and_learner_bookkeeping(kind: Kind) {
    let c = Cluster::start(kind, Options::default()).await;
    let mut cl = c.client().await;
    let me = cl.member_list().await.unwrap().members()[0].clone();

    assert_status(
        cl.member_add(["http://127.0.0.1"], None).await.unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: given member URLs are invalid",
    );
    assert_status(
        cl.member_add(me.peer_urls(), None).await.unwrap_err(),
        Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    );
    let added = cl
        .member_add(["http://127.0.0.1:2"], Some(MemberAddOptions::new().with_is_learner()))
        .await
        .unwrap();
    let learner = added.member().unwrap().clone();
    assert!(learner.is_learner());
    assert!(learner.name().is_empty(), "unstarted");
    assert_eq!(added.member_list().len(), 2);
    assert_status(
        cl.member_add(["http://127.0.0.1:3"], Some(MemberAddOptions::new().with_is_learner()))
            .await
            .unwrap_err(),
        Code::FailedPrecondition,
        "etcdserver: too many learner members in cluster",
    );
    assert_status(
        cl.member_promote(learner.id()).await.unwrap_err(),
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member which is in sync with leader",
    );
    assert_status(
        cl.member_promote(me.id()).await.unwrap_err(),
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    );
    assert_status(
        cl.member_promote(0xbad).await.unwrap_err(),
        Code::NotFound,
        "etcdserver: member not found",
    );
    assert_status(
        cl.member_remove(0xbad).await.unwrap_err(),
        Code::NotFound,
        "etcdserver: member not found",
    );
    assert_status(
        cl.member_update(0xbad, vec!["http://127.0.0.1:9".to_string()])
            .await
            .unwrap_err(),
        Code::NotFound,
        "etcdserver: member not found",
    );
    assert_status(
        cl.member_update(learner.id(), me.peer_urls().to_vec())
            .await
            .unwrap_err(),
        Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    );
    cl.member_update(learner.id(), vec!["http://127.0.0.1:4".to_string()])
        .await
        .unwrap();
    let list = cl.member_list().await.unwrap();
    let l = list.members().iter().find(|m| m.id() == learner.id()).unwrap();
    assert_eq!(l.peer_urls(), ["http://127.0.0.1:4"]);
    cl.member_remove(learner.id()).await.unwrap();
    assert_eq!(cl.member_list().await.unwrap().members().len(), 1);
    // The cluster still takes writes.
    cl.put("after", "membership changes", None).await.unwrap();
}

/// A founding member whose data directory is lost, restarted with its original flags
/// (`--initial-cluster-state new`), must not come back under its old identity: the running
/// members know it as started, so it refuses to start and says why (etcd's
/// `isMemberBootstrapped`). The others go on serving.
async fn a_founder_that_lost_its_data_does_not_found_again(kind: Kind) {
    let mut c = Cluster::start(kind, Options::members(3)).await;
    c.wait_published().await;
    let victim = (c.leader().await + 1) % 3;
    c.kill(victim);
    std::fs::remove_dir_all(&c.members[victim].data_dir).unwrap();
    c.restart(victim);
    let log = refused_start_log(
        &mut c,
        victim,
        Duration::from_secs(15),
        "a founder that lost its data started again",
    )
    .await;
    assert!(log.contains("has already been bootstrapped"), "{log}");
    survivors_serving(&c, victim).await;
}

/// Waits until member `i` exits by itself (it refused to start) and returns its log; fails
/// with `what` and the log's tail if it still runs after `timeout`.
/// MemberRemove of the leader, asked through a follower, answers success once the removal
/// is committed; the leader then leaves and the other two elect a leader and serve. (The
/// fault suite found Lodestone's leader stopping at the append, failing the request with
/// "server stopped" and leaving the removal to the next leader.)
async fn removing_the_leader_succeeds_and_the_rest_carry_on(kind: Kind) {
    let mut c = Cluster::start(kind, Options::members(3)).await;
    c.wait_published().await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let cl = c.client_of(follower).await;
    cl.clone().put("before", "1", None).await.unwrap();
    let list = cl.clone().member_list().await.unwrap();
    let leader_name = c.members[leader].name.as_str();
    let id = list.members().iter().find(|m| m.name() == leader_name).unwrap().id();
    // etcd refuses membership changes until its members have been connected for a while
    // ("unhealthy cluster"), so the first attempts may be refused.
    let left = retry("removing the leader", Duration::from_secs(20), || {
        let mut cl = cl.clone();
        async move { cl.member_remove(id).await }
    })
    .await;
    assert_eq!(left.members().len(), 2, "{:?}", left.members());
    assert!(left.members().iter().all(|m| m.id() != id));

    // The removed leader stops (etcd and Lodestone both exit once removed).
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.members[leader].is_running() {
        assert!(Instant::now() < deadline, "the removed leader is still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.kill(leader);
    let mut rest = c.client_of(follower).await;
    let put = retry("a write after the removal", Duration::from_secs(20), || {
        let mut rest = rest.clone();
        async move { rest.put("after", "2", None).await }
    })
    .await;
    assert!(put.header().is_some());
    let other = 3 - leader - follower;
    let mut o = c.client_of(other).await;
    let list = retry("member list", Duration::from_secs(10), || {
        let mut o = o.clone();
        async move { o.member_list().await }
    })
    .await;
    assert_eq!(list.members().len(), 2);
    assert_eq!(rest.get("before", None).await.unwrap().kvs()[0].value(), b"1");
    assert_eq!(o.get("after", None).await.unwrap().kvs()[0].value(), b"2");
}

async fn refused_start_log(c: &mut Cluster, i: usize, timeout: Duration, what: &str) -> String {
    let deadline = Instant::now() + timeout;
    while c.members[i].is_running() {
        assert!(Instant::now() < deadline, "{what}:\n{}", c.members[i].log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.members[i].log_text()
}

/// A client of every member but `i`, once they took a write.
async fn survivors_serving(c: &Cluster, i: usize) -> Client {
    let survivors: Vec<String> = (0..c.members.len())
        .filter(|m| *m != i)
        .map(|m| c.members[m].endpoint())
        .collect();
    let mut cl = lodestone_tests::connect(&survivors).await;
    cl.put("still", "serving", None).await.unwrap();
    cl
}

/// Lodestone only. A voter whose data directory is lost, started again to join the running
/// cluster (`--initial-cluster-state existing`, what the operator latches once the cluster
/// formed), must not get its old voting id back on empty storage: voting with an empty log,
/// it could help elect a leader that lacks committed writes. It refuses to start and says
/// what to do; the others go on serving; and the remedy it names (remove, add back, start
/// empty) brings it back as a new member holding every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_that_lost_its_data_does_not_rejoin_under_its_old_id() {
    let mut c = Cluster::start(Kind::Lodestone, Options::members(3)).await;
    c.wait_published().await;
    let mut cl = c.client().await;
    for i in 0..20 {
        cl.put(format!("before/{i:02}"), "v", None).await.unwrap();
    }
    let victim = (c.leader().await + 1) % 3;
    let name = c.members[victim].name.clone();
    let initial = c.members[victim]
        .flag("--initial-cluster")
        .expect("--initial-cluster")
        .to_string();
    let old_id = cl
        .member_list()
        .await
        .unwrap()
        .members()
        .iter()
        .find(|m| m.name() == name)
        .expect("the victim in the member list")
        .id();
    c.kill(victim);
    std::fs::remove_dir_all(&c.members[victim].data_dir).unwrap();
    c.start_joining(victim, &initial);
    let log = refused_start_log(
        &mut c,
        victim,
        Duration::from_secs(20),
        "a voter that lost its data rejoined under its old id",
    )
    .await;
    assert!(log.contains("has already been bootstrapped"), "{log}");
    assert!(log.contains(&format!("etcdctl member remove {old_id:x}")), "{log}");
    let mut cl = survivors_serving(&c, victim).await;

    // The remedy: remove the old id, add the member back, start it on an empty directory.
    cl.member_remove(old_id).await.unwrap();
    let peer = format!("http://127.0.0.1:{}", c.members[victim].peer_port);
    let added = cl.member_add([peer.as_str()], None).await.unwrap();
    let new_id = added.member().unwrap().id();
    assert_ne!(new_id, old_id, "a re-added member gets a new id");
    std::fs::remove_dir_all(&c.members[victim].data_dir).ok();
    c.start_joining(victim, &initial_cluster(added.member_list(), &name, new_id));
    let rejoined = c.client_of(victim).await;
    let kvs = retry("every write on the re-added member", Duration::from_secs(30), || {
        let mut r = rejoined.clone();
        async move {
            let got = r
                .get("before/", Some(etcd_client::GetOptions::new().with_prefix()))
                .await?;
            if got.kvs().len() == 20 {
                Ok(got.kvs().len())
            } else {
                Err(etcd_client::Error::InvalidArgs(format!(
                    "{} of 20 keys",
                    got.kvs().len()
                )))
            }
        }
    })
    .await;
    assert_eq!(kvs, 20);
}

/// What `etcdctl member add` prints for the new member's `--initial-cluster`.
fn initial_cluster(list: &[etcd_client::Member], new_name: &str, new_id: u64) -> String {
    list.iter()
        .flat_map(|m| {
            let name = if m.id() == new_id { new_name } else { m.name() };
            m.peer_urls().iter().map(move |u| format!("{name}={u}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

async fn retry<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "{what}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lodestone only: the learner life cycle under a continuous write load.
/// A member asked to remove itself answers at once: the leader commits its removal and stops
/// replicating to it, so it cannot wait to apply the change as it does for other changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_asked_to_remove_itself_answers_at_once() {
    let c = Cluster::start(
        Kind::Lodestone,
        Options {
            size: 3,
            ..Default::default()
        },
    )
    .await;
    let leader = c.leader().await;
    let victim = (leader + 1) % 3;
    let mut cl = c.client_of(victim).await;
    let id = cl.status().await.unwrap().header().unwrap().member_id();
    let start = Instant::now();
    let left = cl.member_remove(id).await.unwrap();
    assert!(left.members().iter().all(|m| m.id() != id));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "the removal took {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_add_catch_up_promote_remove_under_load() {
    let mut c = Cluster::start(
        Kind::Lodestone,
        Options {
            size: 3,
            // Snapshot after 200 entries so the learner also catches up through a snapshot.
            extra: vec![
                "--snapshot-count".into(),
                "200".into(),
                "--experimental-snapshot-catchup-entries".into(),
                "50".into(),
            ],
            ..Default::default()
        },
    )
    .await;
    c.wait_published().await;
    let founders = c.endpoints();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let eps = founders.clone();
        tokio::spawn(async move {
            let mut cl = lodestone_tests::connect(&eps).await;
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = format!("load/{i:06}");
                if cl.put(k.clone(), i.to_string(), None).await.is_ok() {
                    acked.push(k);
                } else {
                    // Failures can be immediate: never spin without yielding.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                i += 1;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut cl = c.client().await;
    let slot = c.add_member_slot();
    let peer = format!("http://127.0.0.1:{}", c.members[slot].peer_port);
    let added = cl
        .member_add([peer.as_str()], Some(MemberAddOptions::new().with_is_learner()))
        .await
        .unwrap();
    let new_id = added.member().unwrap().id();
    let ic = initial_cluster(added.member_list(), &c.members[slot].name, new_id);
    c.start_joining(slot, &ic);

    // A learner serves Status and serializable reads, and refuses everything else.
    let learner_cl = c.client_of(slot).await;
    retry("serializable read on the learner", Duration::from_secs(20), || {
        let mut l = learner_cl.clone();
        async move {
            l.get(
                "load/",
                Some(etcd_client::GetOptions::new().with_prefix().with_serializable()),
            )
            .await
        }
    })
    .await;
    let mut l = learner_cl.clone();
    assert!(l.status().await.unwrap().is_learner());
    assert_status(
        l.put("via-learner", "v", None).await.unwrap_err(),
        Code::Unavailable,
        "etcdserver: rpc not supported for learner",
    );
    assert_status(
        l.get("load/", None).await.unwrap_err(),
        Code::Unavailable,
        "etcdserver: rpc not supported for learner",
    );
    assert_status(
        l.member_list().await.unwrap_err(),
        Code::Unavailable,
        "etcdserver: rpc not supported for learner",
    );

    // Promotion is refused until the learner caught up, then it succeeds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = cl.member_promote(new_id).await {
        assert!(
            Instant::now() < deadline,
            "promote the learner: {e}\nlearner log:\n{}",
            c.members[slot].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // MemberList is served from each member's own view (as in etcd 3.4): every member shows
    // four voters once the change reached it.
    for i in 0..4 {
        let m = c.client_of(i).await;
        retry("four voters in the member list", Duration::from_secs(10), || {
            let mut m = m.clone();
            async move {
                let l = m.member_list().await?;
                if l.members().len() == 4 && l.members().iter().all(|m| !m.is_learner()) {
                    Ok(())
                } else {
                    Err(etcd_client::Error::InvalidArgs(format!("{:?}", l.members())))
                }
            }
        })
        .await;
    }
    // The new member serves linearizable reads and writes.
    let newcl = c.client_of(slot).await;
    retry("write through the new member", Duration::from_secs(15), || {
        let mut n = newcl.clone();
        async move { n.put("via-new-member", "v", None).await }
    })
    .await;
    let names = retry("the new member publishes its name", Duration::from_secs(15), || {
        let mut n = newcl.clone();
        async move {
            let l = n.member_list().await?;
            match l.members().iter().find(|m| m.id() == new_id) {
                Some(m) if !m.name().is_empty() => Ok(m.name().to_string()),
                _ => Err(etcd_client::Error::InvalidArgs("not published yet".into())),
            }
        }
    })
    .await;
    assert_eq!(names, c.members[slot].name);

    // Remove one of the founders (not the leader) while writes continue.
    let leader = c.leader().await;
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let victim_id = c
        .client_of(victim)
        .await
        .status()
        .await
        .unwrap()
        .header()
        .unwrap()
        .member_id();
    cl.member_remove(victim_id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.members[victim].is_running() {
        assert!(Instant::now() < deadline, "a removed member keeps running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(acked.len() > 50, "too few writes acknowledged: {}", acked.len());

    // Every acknowledged write is on every remaining member.
    let remaining: Vec<usize> = (0..c.members.len()).filter(|i| *i != victim).collect();
    for i in remaining {
        let mut m: Client = c.client_of(i).await;
        let r = m
            .get(
                "load/",
                Some(etcd_client::GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .unwrap();
        let have: std::collections::HashSet<&[u8]> = r.kvs().iter().map(|kv| kv.key()).collect();
        for k in &acked {
            assert!(have.contains(k.as_bytes()), "member {i} lost acknowledged write {k}");
        }
    }
    // (Asked of a survivor: `cl` balances over the founders, the removed one among them.)
    let survivor = (0..3).find(|i| *i != victim).unwrap();
    let listed = c.client_of(survivor).await.member_list().await.unwrap();
    assert_eq!(listed.members().len(), 3);
}

/// Lodestone only: etcdctl's member commands, including the environment block `member add`
/// prints and the "not enough started members" refusal after a member died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_member_commands() {
    let mut c = Cluster::start(
        Kind::Lodestone,
        Options {
            size: 3,
            ..Default::default()
        },
    )
    .await;
    c.wait_published().await;
    let eps = c.endpoints();
    let out = etcdctl(
        &eps,
        &["member", "add", "m9", "--learner", "--peer-urls=http://127.0.0.1:9"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ETCD_NAME=\"m9\""), "{text}");
    assert!(text.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""), "{text}");
    assert!(text.contains("m9=http://127.0.0.1:9"), "{text}");
    let list = etcdctl(&eps, &["member", "list", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let learner = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["isLearner"].as_bool() == Some(true))
        .expect("learner listed")["ID"]
        .as_u64()
        .unwrap();
    let out = etcdctl(&eps, &["member", "promote", &format!("{learner:x}")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in sync with leader"));
    let out = etcdctl(
        &eps,
        &[
            "member",
            "update",
            &format!("{learner:x}"),
            "--peer-urls=http://127.0.0.1:19",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = etcdctl(&eps, &["member", "remove", &format!("{learner:x}")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed from cluster"));

    // With one of three voters dead, removing another would leave one started voter of two.
    let leader = c.leader().await;
    let dead = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let other_id = c
        .client_of(other)
        .await
        .status()
        .await
        .unwrap()
        .header()
        .unwrap()
        .member_id();
    c.kill(dead);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = etcdctl(
        &[c.members[leader].endpoint()],
        &["member", "remove", &format!("{other_id:x}")],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not enough started members"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A membership change answered by a follower was applied there before the answer, as etcd's
/// member waits for its own apply of what it proposed: MemberList on that member (served from
/// its own view) shows the change at once. Writers through the leader keep the follower's
/// apply busy meanwhile.
async fn a_change_through_a_follower_is_listed_there_at_once(kind: Kind) {
    let c = Cluster::start(kind, Options::members(3)).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    // etcd refuses MemberAdd ("unhealthy cluster") until the member asked has been connected
    // to every voter for 5 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let load = c.write_load(leader, 4).await;
    let mut cl = c.client_of(follower).await;
    let mut on_leader = c.client_of(leader).await;
    // etcd's Raft takes one configuration change at a time and drops a proposal made while
    // the leader has not applied the previous one; the request then waits out its timeout.
    // So the next change waits until the leader lists the last one, as a careful client does.
    let mut leader_lists = async |id: u64, listed: bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while on_leader
            .member_list()
            .await
            .is_ok_and(|r| r.members().iter().any(|m| m.id() == id) != listed)
        {
            assert!(Instant::now() < deadline, "the leader never applied the change");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut missed = Vec::new();
    for i in 0..20 {
        let url = format!("http://127.0.0.1:{}", 40_000 + i);
        let added = cl
            .member_add([url.as_str()], Some(MemberAddOptions::new().with_is_learner()))
            .await
            .unwrap();
        let id = added.member().unwrap().id();
        if !cl.member_list().await.unwrap().members().iter().any(|m| m.id() == id) {
            missed.push(format!("added {url}"));
        }
        leader_lists(id, true).await;
        cl.member_remove(id).await.unwrap();
        if cl.member_list().await.unwrap().members().iter().any(|m| m.id() == id) {
            missed.push(format!("removed {url}"));
        }
        leader_lists(id, false).await;
    }
    load.stop().await;
    assert!(
        missed.is_empty(),
        "MemberList on the member that answered the change missed it: {missed:?}"
    );
}
