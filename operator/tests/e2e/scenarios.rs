//! The scenarios of issue 11, each under a writer, with the invariants checked after every
//! reconcile.

use std::time::Duration;

use etcd_client::Client;
use futures::StreamExt;
use futures::future::BoxFuture;

use lodestone_operator::crd::{
    BootstrapSpec, LodestoneSnapshot, LodestoneSnapshotSpec, PvcDestination, SnapshotDestination, SnapshotScheduleSpec,
    SnapshotSource,
};

use crate::harness::{Harness, cluster_with};

const STEP: Duration = Duration::from_secs(180);

/// Hands leadership to the member at `ordinal` (a user's `etcdctl move-leader`), so the
/// operator must move it away again before removing that member.
async fn lead_from(h: &Harness, ordinal: i32) {
    let target = h.platform.dns.client_url(ordinal);
    let mut c = Client::connect([target.as_str()], None).await.expect("connect");
    let id = c.status().await.expect("status").header().expect("header").member_id();
    for _ in 0..50 {
        let running: Vec<String> = h
            .platform
            .running()
            .iter()
            .map(|o| h.platform.dns.client_url(*o))
            .collect();
        for endpoint in running {
            let Ok(mut c) = Client::connect([endpoint.as_str()], None).await else {
                continue;
            };
            let Ok(status) = c.status().await else { continue };
            if status.leader() == id {
                return;
            }
            if status.header().map(|h| h.member_id()) == Some(status.leader()) {
                let _ = c.move_leader(id).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("leadership did not move to ordinal {ordinal}");
}

fn count(events: &[String], prefix: &str) -> usize {
    events.iter().filter(|e| e.starts_with(prefix)).count()
}

/// 1 → 3 → 5 → 3 → 1: members join as learners one at a time and are promoted; members leave
/// highest ordinal first, leadership handed over first when the leaving member leads, and
/// their volumes are deleted after their removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_1_3_5_3_1_under_a_writer() {
    let mut h = Harness::new("scale", 1, 1);
    h.converge(1, STEP).await;
    h.start_writer();
    // When shrinking, the first member to go leads.
    for (replicas, leader) in [(3, None), (5, None), (3, Some(4)), (1, Some(2))] {
        if let Some(ordinal) = leader {
            lead_from(&h, ordinal).await;
        }
        h.platform.edit(|c| c.spec.replicas = replicas);
        h.converge(replicas as usize, STEP).await;
    }
    let acked = h.check_writes().await;
    assert!(acked > 20, "the writer made progress: {acked} writes");
    h.assert_unbroken();
    let events = h.platform.events();
    assert_eq!(count(&events, "MemberAdded:"), 4, "{events:#?}");
    assert_eq!(count(&events, "MemberRemoved:"), 4, "{events:#?}");
    let journal = h.faults.journal.lock().unwrap().clone();
    assert!(
        journal.iter().any(|j| j.contains("MoveLeader")),
        "leadership was handed over before a leader was removed: {journal:#?}"
    );
}

/// 1 → 3 → 1 with the member to go leading: every kind of step, on a small cluster.
async fn grow_and_shrink(h: &mut Harness) {
    h.converge(1, STEP).await;
    h.start_writer();
    h.platform.edit(|c| c.spec.replicas = 3);
    h.converge(3, STEP).await;
    lead_from(h, 2).await;
    h.platform.edit(|c| c.spec.replicas = 1);
    h.converge(1, STEP).await;
    let acked = h.check_writes().await;
    assert!(acked > 5, "the writer made progress: {acked} writes");
    h.assert_unbroken();
}

/// A scenario, from a platform holding its cluster resource to its checks.
type Scenario = for<'a> fn(&'a mut Harness) -> BoxFuture<'a, ()>;

/// Runs `scenario` once cleanly, then again with the operator killed right after its k-th
/// change, for every k (four runs at a time: they mostly wait on timers). The runs take
/// the platform numbers from `net` up. Returns, per run, k, how often the operator was killed and
/// the change it was killed after.
async fn with_each_abort(
    name: &'static str,
    net: u16,
    replicas: i32,
    scenario: Scenario,
) -> Vec<(usize, usize, String)> {
    let mut clean = Harness::new(name, net, replicas);
    scenario(&mut clean).await;
    let changes = clean.faults.changes();
    drop(clean);
    assert!(changes > 5, "a run makes many changes: {changes}");
    // Runs differ a little in their number of changes (a status write more or less): a few
    // more runs than the clean one made.
    let started = std::time::Instant::now();
    let runs: Vec<(usize, usize, String)> = futures::stream::iter(1..=changes + 4)
        .map(|k| async move {
            let mut h = Harness::new(name, net + k as u16, replicas);
            h.faults.abort_after(Some(k));
            scenario(&mut h).await;
            let at = h.faults.journal.lock().unwrap().get(k - 1).cloned().unwrap_or_default();
            eprintln!(
                "{name}: killed after change {k} ({at}): recovered; {:?} so far",
                started.elapsed()
            );
            // A run that was not killed made fewer than k changes; otherwise the kill failed.
            assert!(
                h.restarts == 1 || h.faults.changes() < k,
                "{name}: run {k} made {} changes and the operator was not killed",
                h.faults.changes()
            );
            (k, h.restarts, at)
        })
        .buffer_unordered(4)
        .collect()
        .await;
    // Runs differ in how many changes they make (timers, a status write more or less), but
    // nearly every k of the clean run must have been reached and killed at.
    let killed = runs.iter().filter(|(_, restarts, _)| *restarts == 1).count();
    assert!(
        killed * 5 >= changes * 4,
        "the operator was killed in {killed} runs of {changes} changes: {runs:#?}"
    );
    runs
}

/// The operator is killed right after its k-th change (a status write, an apply that changed
/// something, a membership call, a pod or claim delete), for every k: a new operator takes
/// over from the API state alone, and the scenario still ends where it should with every
/// invariant kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_and_shrink_with_the_operator_killed_after_each_change() {
    with_each_abort("abort", 19, 1, |h| Box::pin(grow_and_shrink(h))).await;
    // Runs drift by a change or two, so each kind of step also gets a run killed right
    // after it for certain.
    let kinds = [
        "ClearVolumes",
        "MemberAdd",
        "StartMember",
        "MemberPromote",
        "MoveLeader",
        "MemberRemove",
        "Shrink",
        "delete claim",
    ];
    futures::stream::iter(kinds.into_iter().enumerate())
        .map(|(i, kind)| async move {
            let mut h = Harness::new("abort", 100 + i as u16, 1);
            h.faults.abort_on(kind);
            grow_and_shrink(&mut h).await;
            assert_eq!(h.restarts, 1, "the operator was killed right after {kind}");
            eprintln!("killed right after {kind}: recovered");
        })
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
}

/// A changed template (here the version) restarts the members one at a time, followers first;
/// leadership is handed over before the leader's pod goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_restarts_followers_first_and_the_leader_last() {
    let mut h = Harness::new("upgrade", 3, 3);
    upgrade(&mut h).await;
    // An Event per restart (a killed operator may lose its last Events, so only here).
    let events = h.platform.events();
    assert!(count(&events, "RollingUpdate:") >= 3, "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_with_the_operator_killed_after_each_change() {
    with_each_abort("upgrade", 200, 3, |h| Box::pin(upgrade(h))).await;
}

async fn upgrade(h: &mut Harness) {
    h.converge(3, STEP).await;
    h.start_writer();
    h.check_invariants().await;
    let before = h.faults.changes();
    let deletes_before = h.platform.pod_deletes.lock().unwrap().len();
    h.platform.edit(|c| c.spec.version = "0.1.1".into());
    h.converge(3, STEP).await;
    let acked = h.check_writes().await;
    assert!(acked > 5, "the writer made progress: {acked} writes");
    h.assert_unbroken();
    let journal: Vec<String> = h.faults.journal.lock().unwrap()[before..].to_vec();
    let deletes: Vec<&String> = journal.iter().filter(|j| j.contains("delete pod")).collect();
    assert_eq!(deletes.len(), 3, "each member restarted once: {journal:#?}");
    // Leadership may move on its own during the rollout (a loaded host), so the leader is the
    // one of the moment each pod goes, not the one before the rollout: no pod goes while its
    // member leads.
    let led: Vec<(String, Option<bool>)> = h.platform.pod_deletes.lock().unwrap()[deletes_before..].to_vec();
    assert_eq!(led.len(), 3, "{led:?}");
    assert!(
        led.iter().all(|(_, led)| *led == Some(false)),
        "a pod was deleted while its member led, or who led was unknown: {led:?} {journal:#?}"
    );
    let last = journal.iter().position(|j| j == deletes[2]).unwrap();
    let second = journal.iter().position(|j| j == deletes[1]).unwrap();
    assert!(
        journal[second..last].iter().any(|j| j.contains("MoveLeader")),
        "leadership moved before the leader restarted: {journal:#?}"
    );
}

/// Volumes of removed members that come back (retained, and bound again by hand) never bring
/// their old members back: a member is added to a slot only after its leftover volumes are
/// deleted, so it starts empty under a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_volumes_after_scale_in_are_not_reused() {
    let mut h = Harness::new("stale", 4, 3);
    stale_volumes(&mut h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_volumes_with_the_operator_killed_after_each_change() {
    with_each_abort("stale", 300, 3, |h| Box::pin(stale_volumes(h))).await;
}

async fn stale_volumes(h: &mut Harness) {
    h.converge(3, STEP).await;
    h.start_writer();
    h.platform.retain.store(true, std::sync::atomic::Ordering::SeqCst);
    h.platform.edit(|c| c.spec.replicas = 1);
    h.converge(1, STEP).await;
    h.platform.rebind("data-stale-1");
    h.platform.rebind("data-stale-2");
    h.platform.edit(|c| c.spec.replicas = 3);
    h.converge(3, STEP).await;
    let acked = h.check_writes().await;
    assert!(acked > 5, "the writer made progress: {acked} writes");
    h.assert_unbroken();
    // Each claim is deleted once its member left, and again (the rebound stale volume) before a
    // new member takes the slot. An operator killed between a delete and its follow-up record
    // repeats the delete, so the order is checked, not the count.
    let journal = h.faults.journal.lock().unwrap().clone();
    let first = |needle: &str| journal.iter().position(|j| j.ends_with(needle));
    for member in ["stale-1", "stale-2"] {
        let claim = format!("data-{member}");
        let removal = first(&format!("operation RemoveMember DeleteVolumes {member}"))
            .unwrap_or_else(|| panic!("{member} was removed: {journal:#?}"));
        let clearing = first(&format!("operation AddMember ClearVolumes {member}"))
            .unwrap_or_else(|| panic!("{member}'s slot was cleared before it was added: {journal:#?}"));
        let deletes: Vec<usize> = journal
            .iter()
            .enumerate()
            .filter(|(_, j)| j.ends_with(&format!("delete claim {claim}")))
            .map(|(i, _)| i)
            .collect();
        assert!(
            removal < clearing
                && deletes.iter().any(|&d| removal < d && d < clearing)
                && deletes.iter().any(|&d| clearing < d),
            "{claim} deleted after its member left, and again before a new member took the slot: {journal:#?}"
        );
    }
}

/// A follower loses its volume, then the leader does: each comes back refusing its old id
/// (the store's bootstrapped-member check), and the operator replaces it (removed, restarted
/// on new volumes, added again as a learner under a new id, promoted), one at a time and only
/// while the rest keep a healthy quorum.
async fn volumes_lost(h: &mut Harness) {
    h.converge(3, STEP).await;
    h.start_writer();
    let view = h.check_invariants().await;
    let leader = view.leader_name().expect("a leader");
    let follower = (0..3)
        .map(|o| h.platform.names.pod(o))
        .find(|p| *p != leader)
        .expect("a follower");
    let before: Vec<u64> = view.members.iter().map(|m| m.id).collect();
    for pod in [follower, leader] {
        let replaced = h.faults.removed.lock().unwrap().len();
        h.platform.lose_volumes(&pod);
        let deadline = std::time::Instant::now() + STEP;
        while h.faults.removed.lock().unwrap().len() == replaced {
            assert!(std::time::Instant::now() < deadline, "{pod} was never replaced");
            h.reconcile().await;
            h.check_invariants().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        h.converge(3, STEP).await;
        assert!(
            h.platform.log(&pod).contains("has already been bootstrapped"),
            "{pod} refused to come back under its old id"
        );
    }
    let after: Vec<u64> = h.check_invariants().await.members.iter().map(|m| m.id).collect();
    assert_eq!(
        after.iter().filter(|id| before.contains(id)).count(),
        1,
        "two members have new ids: {before:x?} → {after:x?}"
    );
    let acked = h.check_writes().await;
    assert!(acked > 5, "the writer made progress: {acked} writes");
    h.assert_unbroken();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_lost_its_volume_is_replaced_follower_then_leader() {
    let mut h = Harness::new("lost", 5, 3);
    volumes_lost(&mut h).await;
    let events = h.platform.events();
    assert_eq!(count(&events, "MemberReplaced:"), 2, "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_loss_with_the_operator_killed_after_each_change() {
    with_each_abort("lost", 400, 3, |h| Box::pin(volumes_lost(h))).await;
}

/// HashKV of the member at `endpoint` at `revision`.
async fn hash_kv(endpoint: &str, revision: i64) -> u32 {
    let mut c = Client::connect([endpoint], None).await.expect("connect");
    c.hash_kv(revision).await.expect("hash kv").hash()
}

fn backups() -> SnapshotDestination {
    SnapshotDestination {
        pvc: PvcDestination {
            claim_name: "backups".into(),
            path: Some("snaps".into()),
        },
    }
}

/// Scheduled snapshots under a writer, their retention (objects and files), a last manual
/// snapshot, and a new cluster restored from it: every member restored from the same file,
/// with the source's HashKV at the snapshot's revision and every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_on_a_schedule_with_retention_then_restore_into_a_new_cluster() {
    let mut h = Harness::new("snap", 6, 3);
    let (revision, source, acked) = scheduled_snapshots(&mut h).await;

    // A new cluster from the last file.
    let resource = cluster_with("restored", 3, |c| {
        c.spec.bootstrap = Some(BootstrapSpec {
            from_snapshot: Some(SnapshotSource {
                pvc: backups().pvc,
                file: "final.db".into(),
            }),
        })
    });
    let mut r = Harness::of(resource, 7);
    let target = r.platform.volume("backups").join("snaps");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::copy(
        h.platform.volume("backups").join("snaps").join("final.db"),
        target.join("final.db"),
    )
    .unwrap();
    r.converge(3, STEP).await;
    for o in 0..3 {
        let endpoint = r.platform.dns.client_url(o);
        assert_eq!(hash_kv(&endpoint, revision).await, source[0], "restored member {o}");
        assert!(
            r.platform.log(&r.platform.names.pod(o)).contains("restored"),
            "member {o} was restored"
        );
    }
    let mut c = Client::connect([r.platform.dns.client_url(0)], None)
        .await
        .expect("connect");
    let got = c
        .get(
            "w/",
            Some(etcd_client::GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("read");
    let present: std::collections::BTreeSet<String> =
        got.kvs().iter().map(|kv| kv.key_str().unwrap().to_string()).collect();
    assert!(
        acked.iter().all(|k| present.contains(k)),
        "every acknowledged write came along"
    );
    assert_eq!(got.header().unwrap().revision(), revision);
    r.assert_unbroken();
    let events = h.platform.events();
    assert!(count(&events, "SnapshotSucceeded:") >= 5, "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_snapshots_with_the_operator_killed_after_each_change() {
    with_each_abort("snapk", 600, 3, |h| {
        Box::pin(async move {
            scheduled_snapshots(h).await;
        })
    })
    .await;
}

/// Scheduled snapshots under a writer until the retention has pruned (objects and files),
/// then a last one by hand once the writer stopped. Its revision, the members' HashKV there,
/// and the acknowledged writes.
async fn scheduled_snapshots(h: &mut Harness) -> (i64, Vec<u32>, Vec<String>) {
    h.converge(3, STEP).await;
    h.start_writer();
    h.platform.edit(|c| {
        c.spec.snapshots = Some(SnapshotScheduleSpec {
            schedule: "*/2 * * * * *".into(),
            retention: 2,
            destination: backups(),
        })
    });
    let files = |h: &Harness| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(h.platform.volume("backups").join("snaps"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let deadline = std::time::Instant::now() + STEP;
    loop {
        h.reconcile().await;
        h.check_invariants().await;
        let made = h
            .faults
            .journal
            .lock()
            .unwrap()
            .iter()
            .filter(|j| j.contains("create snapshot"))
            .count();
        let objects = h.platform.snapshot_objects();
        let all_done = objects
            .values()
            .all(|s| s.status.as_ref().and_then(|st| st.phase.as_deref()) == Some("Succeeded"));
        if made >= 4 && objects.len() == 2 && all_done && files(h).len() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not settle: {objects:#?}\nfiles: {:?}",
            files(h)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The objects left and the files left are the same snapshots, and each file is what its
    // status says.
    let objects = h.platform.snapshot_objects();
    let names: Vec<String> = objects.keys().map(|n| format!("{n}.db")).collect();
    assert_eq!(files(h), names);
    for (name, s) in &objects {
        let status = s.status.clone().unwrap();
        let file = h.platform.volume("backups").join("snaps").join(format!("{name}.db"));
        assert_eq!(status.size, Some(std::fs::metadata(&file).unwrap().len() as i64));
        // coreutils' sha256sum, an independent reckoning.
        let out = std::process::Command::new("sha256sum")
            .arg(&file)
            .output()
            .expect("sha256sum");
        let sha = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        assert_eq!(status.sha256.as_deref(), Some(sha.as_str()), "{name}");
        assert!(status.revision.is_some_and(|r| r > 1));
    }
    let last = h
        .platform
        .cluster()
        .status
        .unwrap()
        .last_snapshot
        .expect("lastSnapshot reported");
    assert!(objects.contains_key(&last.name));

    // The schedule goes; the writer stops; a last snapshot by hand holds every write.
    h.platform.edit(|c| c.spec.snapshots = None);
    let acked = h.check_writes_keys().await;
    assert!(acked.len() > 5, "the writer made progress");
    let mut manual = LodestoneSnapshot::new(
        "final",
        LodestoneSnapshotSpec {
            cluster: h.platform.names.cluster.clone(),
            destination: backups(),
        },
    );
    manual.metadata.namespace = Some("default".into());
    h.platform.create_snapshot(manual);
    let deadline = std::time::Instant::now() + STEP;
    let revision = loop {
        h.reconcile().await;
        let s = h.platform.snapshot_objects()["final"]
            .status
            .clone()
            .unwrap_or_default();
        match s.phase.as_deref() {
            Some("Succeeded") => break s.revision.expect("revision"),
            Some("Failed") => panic!("the snapshot failed: {s:?}"),
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the snapshot did not finish: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut source = Vec::new();
    for o in 0..3 {
        source.push(hash_kv(&h.platform.dns.client_url(o), revision).await);
    }
    assert!(source.windows(2).all(|w| w[0] == w[1]), "{source:?}");
    h.assert_unbroken();

    (revision, source, acked)
}
