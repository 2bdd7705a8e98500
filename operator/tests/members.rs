//! The operator's member probe against real `lodestone` processes: what the reconcile's
//! observe step reads through `etcd-client` (MemberList, Status), and the status the plan
//! derives from it when a member dies.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use lodestone_operator::controller::build::{BootstrapConfig, ClusterState};
use lodestone_operator::controller::observe::Observed;
use lodestone_operator::controller::plan::plan;
use lodestone_operator::crd::LodestoneCluster;
use lodestone_operator::members::{ClientTls, format_id, observe};
use lodestone_operator::names::Names;
use lodestone_tests::{Cluster, Kind, Options};

fn urls(cluster: &Cluster) -> Vec<String> {
    cluster.members.iter().map(|m| m.client_url()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reads_members_leader_and_progress_from_a_live_cluster() {
    let mut cluster = Cluster::start(
        Kind::Lodestone,
        Options {
            size: 3,
            ..Options::default()
        },
    )
    .await;
    cluster.wait_published().await;
    let mut client = cluster.client().await;
    client.put("k", "v", None).await.expect("put");
    let leader = cluster.leader().await;
    let mut status = cluster.client_of(leader).await;
    let leader_id = status
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id();

    // An endpoint that does not answer is skipped.
    let mut endpoints = vec!["http://127.0.0.1:1".to_string()];
    endpoints.extend(urls(&cluster));
    let view = observe(endpoints, None).await;
    assert!(view.formed());
    let list = client.member_list().await.expect("member list");
    assert_eq!(view.cluster_id, list.header().map(|h| h.cluster_id()));
    assert_eq!(view.members.len(), 3);
    let mut names: Vec<_> = view.members.iter().map(|m| m.name.clone()).collect();
    names.sort();
    let mut expected: Vec<_> = cluster.members.iter().map(|m| m.name.clone()).collect();
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(view.leader, Some(leader_id));
    assert_eq!(
        view.leader_name().as_deref(),
        Some(cluster.members[leader].name.as_str())
    );
    assert!(view.revision.is_some_and(|r| r >= 2), "{view:?}");
    assert!(view.version.is_some());
    for member in &view.members {
        let health = member
            .status
            .as_ref()
            .unwrap_or_else(|| panic!("{} answered no status", member.name));
        assert_eq!(health.leader, leader_id);
        assert!(health.applied_index > 0);
        assert!(!member.learner);
    }

    // A follower dies: the probe sees it unanswering, and the plan calls the cluster degraded
    // but available.
    let follower = (leader + 1) % 3;
    let dead = cluster.members[follower].name.clone();
    cluster.kill(follower);
    let view = observe(urls(&cluster), None).await;
    let dead_member = view.members.iter().find(|m| m.name == dead).expect("still a member");
    assert!(dead_member.status.is_none());
    assert_eq!(view.leader, Some(leader_id));

    let resource: LodestoneCluster = serde_saphyr::from_str(
        "apiVersion: lodestone.dev/v1alpha1\nkind: LodestoneCluster\nmetadata: {name: live, namespace: default, uid: u1}\nspec: {replicas: 3, version: 0.1.0, storage: {data: {size: 1Gi}}}\n",
    )
    .expect("resource");
    let observed = Observed {
        bootstrap: Some(BootstrapConfig {
            state: ClusterState::Existing,
            ..BootstrapConfig::founding(&Names::of(&resource), 3, "u1")
        }),
        statefulset: None,
        members: view,
        client_tls: None,
        pods: Vec::new(),
    };
    let planned = plan(&resource, &observed, &Time(k8s_openapi::jiff::Timestamp::now()));
    let status = planned.status;
    assert_eq!(status.cluster_id, observed.members.cluster_id.map(format_id));
    assert_eq!(status.leader.as_deref(), Some(cluster.members[leader].name.as_str()));
    let condition = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition")
            .clone()
    };
    assert_eq!(condition("Available").status, "True");
    assert_eq!(condition("Degraded").reason, "MembersUnhealthy");
    assert!(condition("Degraded").message.contains(&dead));
    let dead_status = status.members.iter().find(|m| m.name == dead).expect("member");
    assert!(!dead_status.healthy);
    assert_eq!(status.members.iter().filter(|m| m.role == "leader").count(), 1);
}

#[tokio::test]
async fn probe_of_nothing_reachable_is_not_formed() {
    let started = std::time::Instant::now();
    let view = observe(vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()], None).await;
    assert!(!view.formed());
    assert!(view.members.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "unreachable members must fail fast"
    );
}

/// A cluster on https client and peer URLs (what `spec.tls` sets up): the probe reads it
/// with the client Secret's certificate, and gets nothing without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reads_a_cluster_over_tls_with_the_client_certificate() {
    let pki = tempfile::tempdir().expect("temp dir");
    let ca = lodestone_tests::pki::Ca::new(pki.path(), "cluster");
    let member = ca.issue("member", "member");
    let cluster = Cluster::start(
        Kind::Lodestone,
        Options {
            client_tls: Some(member.clone()),
            peer_tls: Some(member.clone()),
            ..Options::members(3)
        },
    )
    .await;
    cluster.wait_published().await;
    let endpoints = urls(&cluster);
    assert!(endpoints.iter().all(|u| u.starts_with("https://")));
    let read = |p: &std::path::Path| std::fs::read(p).expect("certificate file");
    let tls = ClientTls {
        ca: read(&member.ca),
        cert: read(&member.cert),
        key: read(&member.key),
    };
    let view = observe(endpoints.clone(), Some(tls)).await;
    assert!(view.formed());
    assert_eq!(view.members.len(), 3);
    assert!(view.members.iter().all(|m| m.status.is_some()), "{view:?}");
    assert!(view.leader.is_some());
    assert!(view.members.iter().all(|m| m.client_urls[0].starts_with("https://")));
    // Without the certificate the members refuse the operator.
    assert!(!observe(endpoints, None).await.formed());
}

/// With etcd auth enabled, the probe runs as the user its client certificate names (the CN,
/// as etcd takes it): a certificate for `root` reads the members; one naming no user reads
/// nothing, since MemberList needs a user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reads_a_cluster_with_auth_as_the_certificates_user() {
    let pki = tempfile::tempdir().expect("temp dir");
    let ca = lodestone_tests::pki::Ca::new(pki.path(), "cluster");
    let member = ca.issue("member", "member");
    let root = ca.issue("root", "root");
    let cluster = Cluster::start(
        Kind::Lodestone,
        Options {
            client_tls: Some(member.clone()),
            ..Options::members(1)
        },
    )
    .await;
    let endpoints = urls(&cluster);
    let read = |p: &std::path::Path| std::fs::read(p).expect("certificate file");
    let tls = |f: &lodestone_tests::pki::TlsFiles| ClientTls {
        ca: read(&f.ca),
        cert: read(&f.cert),
        key: read(&f.key),
    };
    let mut admin = lodestone_tests::connect_with(&endpoints, lodestone_tests::connect_options(Some(&root))).await;
    admin.user_add("root", "pw", None).await.expect("user add");
    admin.role_add("root").await.expect("role add");
    admin.user_grant_role("root", "root").await.expect("grant");
    admin.auth_enable().await.expect("auth enable");

    let view = observe(endpoints.clone(), Some(tls(&root))).await;
    assert!(view.formed(), "{view:?}");
    assert!(view.leader.is_some());
    assert!(view.members.iter().all(|m| m.status.is_some()), "{view:?}");
    assert!(!observe(endpoints, Some(tls(&member))).await.formed());
}

/// The operator's membership calls against real members, the way its steps will use them:
/// grow 1 → 3 one learner at a time (MemberAdd as a learner; the new member starts listing
/// only the founder in `--initial-cluster`, as a StatefulSet pod does; promote once caught
/// up), then shrink 3 → 1, moving leadership off a leader before removing it. Every call is
/// repeated once, as after an operator restart, and the repeat changes nothing. Writes made
/// along the way are all there at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_calls_grow_and_shrink_a_live_cluster() {
    use lodestone_operator::members::{ChangeError, EtcdMembers, Members};

    let mut cluster = Cluster::start(Kind::Lodestone, Options::members(1)).await;
    let founder = format!("{}={}", cluster.members[0].name, cluster.members[0].peer_url());
    let ops = EtcdMembers;
    let mut client = cluster.client_of(0).await;
    let mut written = 0;
    let mut write = async |client: &mut etcd_client::Client| {
        written += 1;
        client.put(format!("k{written}"), "v", None).await.expect("write");
    };
    write(&mut client).await;

    for _ in 0..2 {
        let endpoints = urls(&cluster);
        let slot = cluster.add_member_slot();
        let peer = cluster.members[slot].peer_url();
        let id = ops
            .add_learner(endpoints.clone(), None, peer.clone())
            .await
            .expect("add learner");
        assert_eq!(
            ops.add_learner(endpoints.clone(), None, peer).await,
            Ok(id),
            "a repeated add"
        );
        cluster.start_joining(slot, &founder);
        write(&mut client).await;
        // Promote once the learner caught up; until then the call says so.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match ops.promote(endpoints.clone(), None, id).await {
                Ok(()) => break,
                Err(ChangeError::NotCaughtUp) => {
                    assert!(std::time::Instant::now() < deadline, "the learner never caught up");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("promote: {e}"),
            }
        }
        assert_eq!(ops.promote(endpoints, None, id).await, Ok(()), "a repeated promote");
        write(&mut client).await;
    }
    // The joined members publish their names and client URLs once running.
    cluster.wait_published().await;
    let view = observe(urls(&cluster), None).await;
    assert_eq!(view.members.len(), 3);
    assert!(
        view.members.iter().all(|m| !m.learner && m.status.is_some()),
        "{view:?}"
    );

    // Shrink: the two newest members go; a leader hands leadership over first.
    for victim in [2usize, 1] {
        let view = observe(urls(&cluster), None).await;
        let leader = view.leader.expect("a leader");
        let victim_id = view
            .members
            .iter()
            .find(|m| m.name == cluster.members[victim].name)
            .expect("the victim is a member")
            .id;
        if leader == victim_id {
            let to = view
                .members
                .iter()
                .find(|m| m.id != victim_id)
                .expect("another member")
                .id;
            ops.move_leader(cluster.members[victim].client_url(), None, to)
                .await
                .expect("move leader");
        }
        let endpoints: Vec<String> = (0..victim).map(|i| cluster.members[i].client_url()).collect();
        ops.remove(endpoints.clone(), None, victim_id).await.expect("remove");
        assert_eq!(
            ops.remove(endpoints, None, victim_id).await,
            Ok(()),
            "a repeated remove"
        );
        cluster.kill(victim);
        let mut survivor = cluster.client_of(0).await;
        write(&mut survivor).await;
    }
    let view = observe(vec![cluster.members[0].client_url()], None).await;
    assert_eq!(view.members.len(), 1, "{view:?}");
    assert_eq!(view.leader, Some(view.members[0].id));
    let mut survivor = cluster.client_of(0).await;
    let all = survivor
        .get(
            "k",
            Some(etcd_client::GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("read");
    assert_eq!(all.count(), written as i64, "no acknowledged write lost");
    assert!(matches!(
        ops.promote(vec!["http://127.0.0.1:1".into()], None, 1).await,
        Err(ChangeError::Unreachable(_))
    ));
}
