//! Lodestone clusters under real faults: follower forwarding, kill -9 of the leader under a
//! write load, kill -9 of every member, catch-up by snapshot, graceful shutdown, health and
//! metrics endpoints, flag defaults and environment variables.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{GetOptions, WatchOptions};
use lodestone_tests::{Cluster, Kind, Options, connect, http_get, metric};

fn opts(size: usize) -> Options {
    Options {
        size,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_linearizable_reads_through_every_member() {
    let c = Cluster::start(Kind::Lodestone, opts(3)).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(c.client_of(i).await);
    }
    for (i, cl) in clients.iter_mut().enumerate() {
        cl.put(format!("via/{i}"), format!("{i}"), None).await.unwrap();
        // Read-your-write through every member, immediately, without serializable.
        for other in 0..3 {
            let mut o = c.client_of(other).await;
            let r = o.get(format!("via/{i}"), None).await.unwrap();
            assert_eq!(
                r.kvs().len(),
                1,
                "member {other} misses a write acknowledged by member {i}"
            );
        }
    }
    // Every member reports the same cluster, the same leader and the same members.
    let mut ids = BTreeSet::new();
    let mut leaders = BTreeSet::new();
    let mut lists = BTreeSet::new();
    for cl in clients.iter_mut() {
        let s = cl.status().await.unwrap();
        leaders.insert(s.leader());
        ids.insert(s.header().unwrap().cluster_id());
        let m = cl.member_list().await.unwrap();
        lists.insert(m.members().iter().map(|m| m.id()).collect::<BTreeSet<u64>>());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(leaders.len(), 1);
    assert_eq!(lists.len(), 1, "member ids differ: {lists:?}");
    assert_eq!(lists.first().unwrap().len(), 3);
    // Names and client URLs are published once members run, each in an entry of its own
    // that may still be on its way when the writes above are done.
    c.wait_published().await;
    // A member answers MemberList from what it applied, as etcd 3.4 does: after a
    // linearizable read through it, it has applied every publish seen above.
    let mut lists = BTreeSet::new();
    for cl in clients.iter_mut() {
        cl.get("via/0", None).await.unwrap();
        let m = cl.member_list().await.unwrap();
        let mut members: Vec<(u64, String, Vec<String>)> = m
            .members()
            .iter()
            .map(|m| (m.id(), m.name().to_string(), m.client_urls().to_vec()))
            .collect();
        members.sort();
        lists.insert(format!("{members:?}"));
        let names: BTreeSet<&str> = m.members().iter().map(|m| m.name()).collect();
        assert_eq!(names, BTreeSet::from(["m0", "m1", "m2"]));
    }
    assert_eq!(lists.len(), 1, "member lists differ: {lists:?}");
}

/// Writes sequential keys until `stop`, recording each acknowledged key and its time.
async fn writer(
    endpoints: Vec<String>,
    prefix: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
) {
    let mut cl = connect(&endpoints).await;
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let key = format!("{prefix}/{i:08}");
        let r = tokio::time::timeout(Duration::from_secs(3), cl.put(key.clone(), "v", None)).await;
        if let Ok(Ok(_)) = r {
            acked.lock().unwrap().push((key, Instant::now()));
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_under_write_load_loses_no_acknowledged_write() {
    let mut c = Cluster::start(Kind::Lodestone, opts(3)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..4 {
        // Each writer talks to one member, so some go through followers.
        let ep = vec![
            c.members[w % 3].endpoint(),
            c.members[(w + 1) % 3].endpoint(),
            c.members[(w + 2) % 3].endpoint(),
        ];
        tasks.push(tokio::spawn(writer(ep, format!("w{w}"), stop.clone(), acked.clone())));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leader = c.leader().await;
    let killed_at = Instant::now();
    c.kill(leader);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let before = acked.iter().filter(|(_, t)| *t < killed_at).count();
    let after: Vec<Instant> = acked.iter().filter(|(_, t)| *t >= killed_at).map(|(_, t)| *t).collect();
    assert!(before > 20, "too little load before the kill: {before}");
    let first_after = after
        .iter()
        .min()
        .copied()
        .expect("writes never resumed after the leader was killed");
    eprintln!(
        "acknowledged {before} writes before the kill, {} after; the first after it came {:?} after the kill",
        after.len(),
        first_after - killed_at
    );
    // Election timeout is 500 ms (randomized up to 1 s): writes must resume within a few.
    assert!(
        first_after - killed_at < Duration::from_millis(4000),
        "writes resumed only after {:?}",
        first_after - killed_at
    );

    // Every acknowledged write is there, read through a survivor.
    let survivor = (leader + 1) % 3;
    let mut cl = c.client_of(survivor).await;
    let r = cl
        .get("w", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    let present: BTreeSet<Vec<u8>> = r.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    let missing: Vec<&String> = acked
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !present.contains(k.as_bytes()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );

    // The killed member comes back and catches up.
    c.restart(leader);
    c.wait_healthy(Duration::from_secs(30)).await;
    let mut back = c.client_of(leader).await;
    let r = back
        .get("w", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert!(r.count() as usize >= acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_all_members_and_restart_keeps_every_acknowledged_write() {
    let mut c = Cluster::start(Kind::Lodestone, opts(3)).await;
    let mut cl = c.client().await;
    let mut acked = Vec::new();
    for i in 0..300 {
        let key = format!("crash/{i:05}");
        cl.put(key.clone(), format!("{i}"), None).await.unwrap();
        acked.push(key);
    }
    let last_rev = cl.get("crash/00000", None).await.unwrap().header().unwrap().revision();
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.restart(i);
    }
    c.wait_healthy(Duration::from_secs(30)).await;
    let mut revs = BTreeSet::new();
    for i in 0..3 {
        let mut m = c.client_of(i).await;
        let r = m.get("crash/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(r.count() as usize, acked.len(), "member {i} lost writes");
        revs.insert(r.header().unwrap().revision());
        // Serializable reads after a restart are never older than before it.
        let s = m
            .get(
                "crash/",
                Some(GetOptions::new().with_prefix().with_count_only().with_serializable()),
            )
            .await
            .unwrap();
        assert_eq!(s.count() as usize, acked.len());
    }
    assert_eq!(revs.len(), 1, "members disagree on the revision: {revs:?}");
    assert!(*revs.iter().next().unwrap() >= last_rev);
    // Writes continue from where they were.
    let p = cl.put("after", "crash", None).await.unwrap();
    assert_eq!(p.header().unwrap().revision(), *revs.iter().next().unwrap() + 1);
}

/// Three members that snapshot every 50 entries and keep only 10 behind a snapshot, so a
/// member that stops falls behind the purged log quickly.
async fn snapshotting_three() -> Cluster {
    let mut c = Cluster::prepare(Kind::Lodestone, snapshotting_options());
    c.launch().await;
    c
}

fn snapshotting_options() -> Options {
    let extra = vec![
        "--snapshot-count".into(),
        "50".into(),
        "--experimental-snapshot-catchup-entries".into(),
        "10".into(),
    ];
    Options {
        size: 3,
        extra,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_behind_the_purged_log_catches_up_by_snapshot() {
    let mut c = snapshotting_three().await;
    // 400 values of 16 KiB: the snapshot (over 6 MiB) is synced piece by piece while it is
    // built and while the lagging member receives it, not only at its end.
    catch_up_by_snapshot(&mut c, 16 << 10).await;
}

/// On a filesystem that refuses hard links (here with EPERM, as a FUSE filesystem without
/// `link` does), a build cannot make a checkpoint: it writes the snapshot file directly
/// instead of failing (which would stop the member), and a member behind the purged log
/// still catches up from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hard_links_a_build_writes_the_file_and_a_member_still_catches_up() {
    use lodestone_tests::lazyfs::LazyMount;
    let disks = tempfile::tempdir().unwrap();
    // The cluster's own directory lies inside `disks` too: the member directories are still
    // mountpoints when the cluster removes its directory, so the removal stops at them; the
    // mounts go next, and `disks`, dropped last, removes what they left.
    let prepared = Cluster::prepare(
        Kind::Lodestone,
        Options {
            data_root: Some(disks.path().to_path_buf()),
            ..snapshotting_options()
        },
    );
    let mut mounts = Vec::new();
    for (i, m) in prepared.members.iter().enumerate() {
        let mut disk =
            LazyMount::start(&disks.path().join(format!("backing{i}")), &m.data_dir).unwrap_or_else(|e| panic!("{e}"));
        disk.set_links(false).unwrap();
        mounts.push(disk);
    }
    // Bound after the mounts, so its members stop before the mounts go, a failure included.
    let mut c = prepared;
    c.launch().await;
    let (leader, _) = catch_up_by_snapshot(&mut c, 100).await;
    let snaps = c.members[leader].data_dir.join("member/snap/snapshots");
    let names: Vec<String> = std::fs::read_dir(&snaps)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.ends_with(".ckpt")),
        "a checkpoint was made without hard links: {names:?}"
    );
    assert!(
        names.iter().any(|n| n.ends_with(".snap")),
        "the leader holds no snapshot file: {names:?}"
    );
    assert!(
        c.members[leader].log_text().contains("cannot make a checkpoint"),
        "the leader did not say why it writes whole snapshot files"
    );
}

/// Stops a follower, writes 400 values of `value` bytes and a delete, waits until the leader
/// purged its log beyond where the follower stopped, starts the follower again and checks
/// that it caught up by a snapshot file with every write, and keeps up afterwards. Returns
/// (leader, the lagging member).
async fn catch_up_by_snapshot(c: &mut Cluster, value: usize) -> (usize, usize) {
    let leader = c.leader().await;
    let lagger = (leader + 1) % 3;
    c.kill(lagger);
    let others: Vec<String> = (0..3)
        .filter(|&i| i != lagger)
        .map(|i| c.members[i].endpoint())
        .collect();
    let mut cl = connect(&others).await;
    for i in 0..400 {
        cl.put(format!("snap/{i:04}"), vec![b'x'; value], None).await.unwrap();
    }
    cl.delete("snap/0000", None).await.unwrap();
    // Wait until the leader has purged its log past where the lagging member stopped (a few
    // entries in). Purges come in batches of 256 entries, behind a snapshot.
    let url = format!("{}/metrics", c.members[leader].metrics_url());
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&http_get(&url).1, "lodestone_raft_purged_index") < 100.0 {
        assert!(Instant::now() < deadline, "the leader never purged its log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.restart(lagger);
    c.wait_healthy(Duration::from_secs(30)).await;
    let mut m = c.client_of(lagger).await;
    let r = m
        .get("snap/", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert_eq!(r.count(), 399);
    // The lagging member received a snapshot file rather than the (purged) log.
    let snaps = c.members[lagger].data_dir.join("member/snap/snapshots");
    let has_snapshot = std::fs::read_dir(&snaps)
        .unwrap()
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "snap"));
    assert!(has_snapshot, "no snapshot file on the lagging member");
    assert!(
        c.members[lagger].log_text().contains("installed snapshot"),
        "the lagging member caught up without a snapshot"
    );
    // And it keeps up afterwards, with the same revision as the leader.
    cl.put("snap/after", "1", None).await.unwrap();
    let a = m.get("snap/after", None).await.unwrap();
    let b = cl.get("snap/after", None).await.unwrap();
    assert_eq!(a.header().unwrap().revision(), b.header().unwrap().revision());
    (leader, lagger)
}

/// A snapshot damaged on disk (a flipped bit, a torn end; in a file or a checkpoint's
/// manifest) is never served: the member that holds it drops it at start, and a member behind
/// the purged log still catches up with the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_file_is_dropped_and_never_served() {
    let mut c = snapshotting_three().await;
    let leader = c.leader().await;
    let lagger = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    c.kill(lagger);
    let up: Vec<String> = [leader, other].iter().map(|&i| c.members[i].endpoint()).collect();
    let mut cl = connect(&up).await;
    for i in 0..400 {
        cl.put(format!("snap/{i:04}"), vec![b'x'; 100], None).await.unwrap();
    }
    // Both running members snapshot and purge their logs past where the lagging one stopped.
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in [leader, other] {
        let url = format!("{}/metrics", c.members[i].metrics_url());
        while metric(&http_get(&url).1, "lodestone_raft_purged_index") < 100.0 {
            assert!(Instant::now() < deadline, "member {i} never purged its log");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every snapshot of both is damaged while they are down (the leader's by a flipped bit,
    // the other's by a torn end): a snapshot file, or the manifest of a checkpoint (which a
    // checkpoint holds as a copy of its own; its table files are links to the live
    // instance's); then they come back.
    let mut damaged = Vec::new();
    for i in [leader, other] {
        c.kill(i);
        let dir = c.members[i].data_dir.join("member/snap/snapshots");
        let mut targets = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "snap") {
                targets.push(path);
            } else if path.extension().is_some_and(|x| x == "ckpt") {
                for f in std::fs::read_dir(&path).unwrap().flatten() {
                    if f.file_name().to_string_lossy().starts_with("MANIFEST-") {
                        targets.push(f.path());
                    }
                }
            }
        }
        for path in targets {
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            if i == leader {
                // A flipped bit.
                bytes[middle] ^= 0x40;
            } else {
                // A torn end.
                bytes.truncate(middle);
            }
            std::fs::write(&path, &bytes).unwrap();
            damaged.push((path, bytes));
        }
    }
    assert!(!damaged.is_empty(), "no snapshot file to damage");
    c.restart(leader);
    c.restart(other);
    c.restart(lagger);
    c.wait_healthy(Duration::from_secs(60)).await;
    for (path, bytes) in &damaged {
        assert!(
            std::fs::read(path).ok().as_ref() != Some(bytes),
            "{} is still there, damaged",
            path.display()
        );
    }
    for i in [leader, other] {
        assert!(
            c.members[i].log_text().contains("removing damaged snapshot"),
            "member {i} did not notice its damaged snapshot"
        );
    }
    // The lagging member caught up (by a snapshot built anew) and agrees on every key.
    let mut m = c.client_of(lagger).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = m
            .get(
                "snap/",
                Some(GetOptions::new().with_prefix().with_count_only()).map(|o| o.with_serializable()),
            )
            .await;
        if r.as_ref().is_ok_and(|r| r.count() == 400) {
            break;
        }
        assert!(Instant::now() < deadline, "the lagging member did not catch up: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        c.members[lagger].log_text().contains("installed snapshot"),
        "the lagging member caught up without a snapshot"
    );
    let mut cl = c.client().await;
    let rev = cl.put("after", "1", None).await.unwrap().header().unwrap().revision();
    let mut hashes = BTreeSet::new();
    for i in 0..3 {
        let mut each = c.client_of(i).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match each.hash_kv(rev).await {
                Ok(h) => {
                    hashes.insert(h.hash());
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "member {i}: HashKV at {rev}: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    assert_eq!(hashes.len(), 1, "members disagree: {hashes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_data_survives() {
    let mut c = Cluster::start(Kind::Lodestone, opts(1)).await;
    let mut cl = c.client().await;
    cl.put("durable", "yes", None).await.unwrap();
    let code = c.members[0].terminate();
    assert_eq!(
        code,
        Some(0),
        "lodestone did not exit cleanly on SIGTERM; log:\n{}",
        c.members[0].log_tail()
    );
    c.restart(0);
    c.wait_healthy(Duration::from_secs(30)).await;
    let mut cl = c.client().await;
    assert_eq!(cl.get("durable", None).await.unwrap().kvs()[0].value(), b"yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_endpoints() {
    let c = Cluster::start(Kind::Lodestone, opts(3)).await;
    let mut cl = c.client().await;
    for i in 0..20 {
        cl.put(format!("m/{i}"), "v", None).await.unwrap();
    }
    for m in &c.members {
        let (code, body) = http_get(&format!("{}/health", m.metrics_url()));
        assert_eq!(code, 200);
        assert!(body.contains(r#""health":"true""#), "{body}");
        assert_eq!(http_get(&format!("{}/livez", m.metrics_url())).0, 200);
        assert_eq!(http_get(&format!("{}/readyz", m.metrics_url())).0, 200);
        let (code, text) = http_get(&format!("{}/metrics", m.metrics_url()));
        assert_eq!(code, 200);
        for name in [
            "etcd_server_has_leader 1",
            "etcd_server_proposals_committed_total",
            "etcd_server_proposals_applied_total",
            "etcd_server_proposals_pending",
            "etcd_server_proposals_failed_total",
            "etcd_disk_wal_fsync_duration_seconds_count",
            "etcd_disk_backend_commit_duration_seconds_count",
            "etcd_server_leader_changes_seen_total",
            "etcd_mvcc_db_total_size_in_bytes",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(name), "metrics lack {name}");
        }
        let fsyncs: f64 = text
            .lines()
            .find(|l| l.starts_with("etcd_disk_wal_fsync_duration_seconds_count"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(fsyncs > 0.0);
    }
}

/// Caught-up watch streams take new revisions from the member's shared watch cache: 20
/// streams (half with `prev_kv`) following 50 puts each see every event, in order, with the
/// right previous versions, while storage is read far less than once per stream and put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caught_up_watch_streams_share_the_watch_cache() {
    let c = Cluster::start(Kind::Lodestone, opts(1)).await;
    let url = format!("{}/metrics", c.members[0].metrics_url());
    let mut cl = c.client().await;
    let first = cl
        .put("shared/k", "0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut streams = Vec::new();
    for i in 0..20 {
        let o = WatchOptions::new().with_prefix();
        let o = if i % 2 == 0 { o.with_prev_key() } else { o };
        let mut s = cl.watch("shared/", Some(o)).await.unwrap();
        assert!(s.message().await.unwrap().unwrap().created());
        streams.push((i % 2 == 0, s));
    }
    let before = metric(&http_get(&url).1, "lodestone_watch_storage_reads_total");
    let puts: i64 = 50;
    for i in 1..=puts {
        cl.put("shared/k", i.to_string(), None).await.unwrap();
    }
    for (with_prev, s) in &mut streams {
        let mut seen = Vec::new();
        while (seen.len() as i64) < puts {
            let r = tokio::time::timeout(Duration::from_secs(10), s.message())
                .await
                .expect("events arrive")
                .unwrap()
                .unwrap();
            for e in r.events() {
                let kv = e.kv().unwrap();
                let value: i64 = kv.value_str().unwrap().parse().unwrap();
                assert_eq!(kv.mod_revision(), first + value);
                let prev = e.prev_kv().map(|p| p.value_str().unwrap().to_string());
                assert_eq!(prev, with_prev.then(|| (value - 1).to_string()), "prev_kv of {value}");
                seen.push(value);
            }
        }
        assert_eq!(seen, (1..=puts).collect::<Vec<_>>());
    }
    let reads = metric(&http_get(&url).1, "lodestone_watch_storage_reads_total") - before;
    assert!(
        reads < (20 * puts / 10) as f64,
        "{reads} storage reads for 20 streams following {puts} puts: the streams do not share the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_fsyncs() {
    let c = Cluster::start(Kind::Lodestone, opts(1)).await;
    let url = format!("{}/metrics", c.members[0].metrics_url());
    let before = metric(&http_get(&url).1, "etcd_disk_wal_fsync_duration_seconds_count");
    let cl = c.client().await;
    let writes = 64 * 10;
    for round in 0..10 {
        let puts = (0..64).map(|i| {
            let mut cl = cl.clone();
            async move { cl.put(format!("gc/{round}/{i}"), "v", None).await.map(|_| ()) }
        });
        for r in futures::future::join_all(puts).await {
            r.unwrap();
        }
    }
    let after = metric(&http_get(&url).1, "etcd_disk_wal_fsync_duration_seconds_count");
    let fsyncs = after - before;
    assert!(fsyncs > 0.0);
    assert!(
        fsyncs < writes as f64 / 2.0,
        "{fsyncs} fsyncs for {writes} concurrent writes: no group commit"
    );
}

/// Writes sent to a follower together reach the leader in shared calls, and each still gets
/// its own answer: its revision, a txn's outcome, an error raised at apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_a_follower_share_forwarding_calls() {
    use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
    let c = Cluster::start(Kind::Lodestone, opts(3)).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let cl = c.client_of(follower).await;
    cl.clone().put("fw/cas", "0", None).await.unwrap();
    // A member publishes its attributes with a write of its own, forwarded too when it
    // follows: let that be done before counting.
    c.wait_published().await;
    let url = format!("{}/metrics", c.members[follower].metrics_url());
    let text = http_get(&url).1;
    let (calls0, writes0) = (
        metric(&text, "lodestone_forward_calls_total"),
        metric(&text, "lodestone_forwarded_writes_total"),
    );
    let puts = 300;
    let put_all = (0..puts).map(|i| {
        let mut cl = cl.clone();
        async move {
            cl.put(format!("fw/{i}"), format!("{i}"), None)
                .await
                .map(|r| r.header().unwrap().revision())
        }
    });
    // Mixed into the same burst: a txn whose compare holds, one whose compare fails, and a
    // put refused at apply (ignore_value on a missing key).
    let txn = |expect: &'static str| {
        let mut cl = cl.clone();
        async move {
            let t = Txn::new()
                .when([Compare::value("fw/cas", CompareOp::Equal, expect)])
                .and_then([TxnOp::put("fw/cas-result", expect, None)]);
            cl.txn(t).await.map(|r| r.succeeded())
        }
    };
    let mut refused = cl.clone();
    let (revisions, held, failed, refusal) = tokio::join!(
        futures::future::join_all(put_all),
        txn("0"),
        txn("not-the-value"),
        refused.put("fw/missing", "", Some(PutOptions::new().with_ignore_value())),
    );
    let revisions: BTreeSet<i64> = revisions.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(revisions.len(), puts, "every forwarded put has a revision of its own");
    assert!(held.unwrap(), "the txn whose compare holds succeeded");
    assert!(!failed.unwrap(), "the txn whose compare fails did not");
    let e = refusal.unwrap_err().to_string();
    assert!(
        e.contains("etcdserver: key not found"),
        "apply's refusal comes back: {e}"
    );
    let mut check = c.client_of(leader).await;
    for i in [0, puts / 2, puts - 1] {
        let r = check.get(format!("fw/{i}"), None).await.unwrap();
        assert_eq!(r.kvs()[0].value_str().unwrap(), i.to_string());
    }
    let text = http_get(&url).1;
    let calls = metric(&text, "lodestone_forward_calls_total") - calls0;
    let writes = metric(&text, "lodestone_forwarded_writes_total") - writes0;
    assert_eq!(writes, (puts + 3) as f64, "every write went through the leader once");
    assert!(
        calls < writes / 2.0,
        "{calls} forwarding calls for {writes} concurrent writes: not batched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_linearizable_reads_share_read_index_rounds() {
    let c = Cluster::start(Kind::Lodestone, opts(3)).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let mut cl = c.client_of(follower).await;
    cl.put("r", "1", None).await.unwrap();
    let url = format!("{}/metrics", c.members[follower].metrics_url());
    let text = http_get(&url).1;
    let (rounds0, reads0) = (
        metric(&text, "lodestone_read_index_rounds_total"),
        metric(&text, "lodestone_linearizable_reads_total"),
    );
    let reads = 400;
    let gets = (0..reads).map(|_| {
        let mut cl = cl.clone();
        async move { cl.get("r", None).await.map(|r| r.kvs().len()) }
    });
    for r in futures::future::join_all(gets).await {
        assert_eq!(r.unwrap(), 1);
    }
    let text = http_get(&url).1;
    let rounds = metric(&text, "lodestone_read_index_rounds_total") - rounds0;
    let served = metric(&text, "lodestone_linearizable_reads_total") - reads0;
    assert!(
        served >= reads as f64,
        "{served} reads went through the barrier, expected {reads}"
    );
    assert!(
        rounds < served / 2.0,
        "{rounds} ReadIndex rounds for {served} concurrent reads: not batched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_raft_state() {
    let c = Cluster::start(Kind::Lodestone, opts(3)).await;
    let mut cl = c.client().await;
    cl.put("s", "1", None).await.unwrap();
    for i in 0..3 {
        let mut m = c.client_of(i).await;
        let s = m.status().await.unwrap();
        assert!(s.version().starts_with("3."));
        assert!(s.db_size() > 0);
        assert!(s.leader() != 0);
        assert!(s.raft_term() >= 1);
        assert!(s.raft_index() >= 1);
        assert!(!s.is_learner());
        assert!(s.errors().is_empty());
    }
}

/// A connected channel to a member's peer URL.
async fn peer_channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A peer message larger than a full AppendEntries of `--max-request-bytes` commands can
/// be is refused before it is buffered (it used to be accepted up to any size), and the
/// member goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_peer_messages_are_refused() {
    use lodestone::peer::envelope::Stamp;
    use lodestone::proto::etcdserverpb::PutRequest;
    use lodestone::proto::lodestone::peer_client::PeerClient;
    use lodestone::proto::lodestone::{Command, command::Kind as CommandKind};

    let c = Cluster::start(
        Kind::Lodestone,
        Options {
            extra: vec!["--max-request-bytes".into(), "65536".into()],
            ..Default::default()
        },
    )
    .await;
    let peer = format!("http://127.0.0.1:{}", c.members[0].peer_port);
    // A well-addressed message (the envelope names no cluster or member), so only its size
    // can get it refused.
    let channel = peer_channel(&peer).await;
    let mut client = PeerClient::with_interceptor(channel, Stamp::anonymous()).max_encoding_message_size(usize::MAX);
    // 64 entries of 64 KiB (+ framing) fit in about 4.3 MiB; send 16 MiB.
    let huge = Command {
        kind: Some(CommandKind::Put(PutRequest {
            key: b"huge".to_vec().into(),
            value: vec![b'x'; 16 << 20].into(),
            ..Default::default()
        })),
        auth: None,
    };
    let err = client
        .propose(huge)
        .await
        .expect_err("an oversized peer message was accepted");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{}", err.message());
    let mut cl = c.client().await;
    cl.put("after", "v", None).await.unwrap();
    assert!(cl.get("huge", None).await.unwrap().kvs().is_empty());
}

/// Every peer request carries the envelope (cluster, sender, target), checked once for every
/// method: a forwarded write with no envelope, for another cluster, or for another member is
/// refused in the envelope's one form (the domain error's code in metadata) and changes
/// nothing; the same write addressed to this member of this cluster is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misaddressed_peer_messages_are_refused() {
    use std::sync::atomic::AtomicU64;

    use lodestone::error::StoreError;
    use lodestone::peer::envelope::{self, Stamp};
    use lodestone::proto::etcdserverpb::PutRequest;
    use lodestone::proto::lodestone::peer_client::PeerClient;
    use lodestone::proto::lodestone::{Command, command::Kind as CommandKind};

    let c = Cluster::start(Kind::Lodestone, Options::default()).await;
    let mut cl = c.client().await;
    let status = cl.status().await.unwrap();
    let header = status.header().unwrap();
    let (cluster, me) = (header.cluster_id(), header.member_id());
    let put = |key: &str| Command {
        kind: Some(CommandKind::Put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        })),
        auth: None,
    };
    let peer = format!("http://127.0.0.1:{}", c.members[0].peer_port);
    let channel = peer_channel(&peer).await;
    let stamped = |cluster: u64, to: u64| {
        PeerClient::with_interceptor(channel.clone(), Stamp::new(Arc::new(AtomicU64::new(cluster)), 7, to))
    };

    let refusal = PeerClient::new(channel.clone())
        .propose(put("no-envelope"))
        .await
        .expect_err("a peer request without an envelope was accepted");
    assert!(
        matches!(envelope::refusal_of(&refusal), Some(StoreError::Misaddressed(_))),
        "{refusal:?}"
    );
    for (key, cluster, to) in [("other-cluster", cluster ^ 1, me), ("other-member", cluster, me ^ 1)] {
        let refusal = stamped(cluster, to)
            .propose(put(key))
            .await
            .expect_err("a misaddressed peer request was accepted");
        assert_eq!(refusal.code(), tonic::Code::FailedPrecondition, "{refusal:?}");
        assert!(
            matches!(envelope::refusal_of(&refusal), Some(StoreError::Misaddressed(_))),
            "{refusal:?}"
        );
    }
    stamped(cluster, me)
        .propose(put("addressed"))
        .await
        .expect("a well-addressed forwarded write");
    for key in ["no-envelope", "other-cluster", "other-member"] {
        assert!(cl.get(key, None).await.unwrap().kvs().is_empty(), "{key} was written");
    }
    assert_eq!(cl.get("addressed", None).await.unwrap().kvs().len(), 1);
}
