//! The Maintenance API side by side with etcd 3.4 (Status, HashKV, Defragment, Alarm and the
//! NOSPACE cycle, MoveLeader errors), and Lodestone-only: snapshot save → restore into a new
//! cluster, HashKV agreement across members, MoveLeader on a 3-member cluster.

use std::time::{Duration, Instant};

use etcd_client::{AlarmAction, AlarmOptions, AlarmType, GetOptions, PutOptions};
use lodestone_tests::{Cluster, Kind, Options, assert_status, etcdctl, etcdctl_ok};
use tonic::Code;

lodestone_tests::compat!(status_hashkv_defrag_errors, nospace_alarm_cycle);

async fn status_hashkv_defrag_errors(kind: Kind) {
    let c = Cluster::start(kind, Options::default()).await;
    let mut cl = c.client().await;
    for i in 0..10 {
        cl.put(format!("k{i}"), "v", None).await.unwrap(); // revs 2..=11
    }
    let s = cl.status().await.unwrap();
    assert!(!s.version().is_empty());
    assert!(s.db_size() > 0);
    assert!(s.raft_used_db_size() > 0 && s.raft_used_db_size() <= s.db_size());
    assert_eq!(s.leader(), s.header().unwrap().member_id());

    let h1 = cl.hash_kv(0).await.unwrap();
    let h2 = cl.hash_kv(0).await.unwrap();
    assert_eq!(h1.hash(), h2.hash(), "HashKV is stable without writes");
    assert_eq!(h1.header().unwrap().revision(), 11);
    let at5 = cl.hash_kv(5).await.unwrap().hash();
    cl.put("k0", "changed", None).await.unwrap();
    assert_ne!(cl.hash_kv(0).await.unwrap().hash(), h1.hash());
    assert_eq!(
        cl.hash_kv(5).await.unwrap().hash(),
        at5,
        "history up to 5 did not change"
    );
    assert_status(
        cl.hash_kv(100).await.unwrap_err(),
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    cl.compact(6, None).await.unwrap();
    assert_status(
        cl.hash_kv(5).await.unwrap_err(),
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_eq!(cl.hash_kv(0).await.unwrap().compact_version(), 6);

    cl.defragment().await.unwrap();
    assert_eq!(
        cl.get("k", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .count(),
        10
    );

    let alarms = cl.alarm(AlarmAction::Get, AlarmType::None, None).await.unwrap();
    assert!(alarms.alarms().is_empty());

    // MoveLeader to a member that does not exist.
    assert_status(
        cl.move_leader(0xdead).await.unwrap_err(),
        Code::FailedPrecondition,
        "etcdserver: bad leader transferee",
    );
}

async fn nospace_alarm_cycle(kind: Kind) {
    let c = Cluster::start(
        kind,
        Options {
            extra: vec!["--quota-backend-bytes".into(), "3000000".into()],
            ..Default::default()
        },
    )
    .await;
    let mut cl = c.client().await;
    let value = vec![b'x'; 100_000];
    let mut refused = None;
    // etcd measures its backend file, which grows when a batch commits (every 100 ms), so
    // fast puts can run well past the quota before the first refusal: allow for that.
    for i in 0..300 {
        if let Err(e) = cl.put(format!("big/{i:03}"), value.clone(), None).await {
            refused = Some(e);
            break;
        }
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_status(
        refused.expect("the quota was never reached"),
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    // The alarm is raised cluster-wide (asynchronously, as in etcd).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = cl.alarm(AlarmAction::Get, AlarmType::None, None).await.unwrap();
        if a.alarms().iter().any(|m| m.alarm() == AlarmType::Nospace) {
            break;
        }
        assert!(Instant::now() < deadline, "NOSPACE alarm never raised");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = cl.status().await.unwrap();
    assert!(
        status.errors().iter().any(|e| e.contains("NOSPACE")),
        "{:?}",
        status.errors()
    );
    let member = status.header().unwrap().member_id();
    // etcdctl 3.4 prints a space before the newline.
    let listed = etcdctl(&c.endpoints(), &["alarm", "list"]);
    assert!(listed.status.success(), "{listed:?}");
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        format!("memberID:{member} alarm:NOSPACE \n")
    );
    // Small puts and lease grants are refused too; reads and deletes work.
    assert_status(
        cl.put("small", "v", None).await.unwrap_err(),
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    assert_status(
        cl.lease_grant(60, None).await.unwrap_err(),
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    let n = cl
        .get("big/", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap()
        .count();
    assert!(n > 5);
    let del = cl
        .delete("big/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(del.deleted(), n);
    // Recovery: compact, defragment, disarm.
    let rev = del.header().unwrap().revision();
    cl.compact(rev, Some(etcd_client::CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    cl.defragment().await.unwrap();
    // etcdctl alarm disarm deactivates every listed alarm and prints what it disarmed.
    let disarmed = etcdctl(&c.endpoints(), &["alarm", "disarm"]);
    assert!(disarmed.status.success(), "{disarmed:?}");
    assert_eq!(
        String::from_utf8_lossy(&disarmed.stdout),
        format!("memberID:{member} alarm:NOSPACE \n")
    );
    assert!(
        cl.alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap()
            .alarms()
            .is_empty()
    );
    cl.put("small", "v", None).await.unwrap();
    cl.lease_grant(60, None).await.unwrap();
}

/// A key-value as plain data: key, value, create/mod revision, version, lease.
type Flat = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

/// HashKV of member `i` at `rev`, once that member has applied `rev` (HashKV is answered
/// from the member's own state, so a follower may still be behind).
async fn hash_kv_at(c: &Cluster, i: usize, rev: i64) -> (u32, i64) {
    let mut cl = c.client_of(i).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cl.hash_kv(rev).await {
            Ok(h) => return (h.hash(), h.compact_version()),
            Err(e) => assert!(Instant::now() < deadline, "HashKV on member {i}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn three() -> Options {
    Options {
        size: 3,
        ..Default::default()
    }
}

/// Lodestone only: `etcdctl snapshot save` from one member of a cluster with history, a
/// compaction and a lease; `lodestone snapshot restore` into three new data directories;
/// the new cluster serves the same data at the same revision with the same HashKV on every
/// member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_restore_into_a_new_cluster() {
    let old = Cluster::start(Kind::Lodestone, three()).await;
    old.wait_published().await;
    let mut cl = old.client().await;
    for i in 0..50 {
        cl.put(format!("data/{i:02}"), format!("v{i}"), None).await.unwrap();
    }
    for i in 0..10 {
        cl.put(format!("data/{i:02}"), format!("v{i}-2"), None).await.unwrap();
    }
    cl.compact(30, None).await.unwrap();
    let lease = cl.lease_grant(3600, None).await.unwrap().id();
    cl.put("leased", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    cl.delete("data/49", None).await.unwrap();
    let rev = cl.get("x", None).await.unwrap().header().unwrap().revision();

    // HashKV agrees on every member at the same revision.
    let mut hashes = Vec::new();
    for i in 0..3 {
        hashes.push(hash_kv_at(&old, i, rev).await.0);
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "members disagree: {hashes:?}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    let out = etcdctl(
        &[old.members[1].endpoint()],
        &["snapshot", "save", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let size = std::fs::metadata(&file).unwrap().len();
    assert_eq!(size % 512, 32, "etcd's snapshot file shape");

    let mut new = Cluster::prepare(Kind::Lodestone, three());
    for m in &new.members {
        let out = std::process::Command::new(lodestone_tests::lodestone_bin())
            .args(["snapshot", "restore", file.to_str().unwrap()])
            .args(["--name", &m.name])
            .args(["--data-dir", m.data_dir.to_str().unwrap()])
            .args(["--initial-cluster", m.flag("--initial-cluster").unwrap()])
            .args(["--initial-cluster-token", m.flag("--initial-cluster-token").unwrap()])
            .args([
                "--initial-advertise-peer-urls",
                m.flag("--initial-advertise-peer-urls").unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Restoring over an existing data directory is refused.
    let m = &new.members[0];
    let out = std::process::Command::new(lodestone_tests::lodestone_bin())
        .args(["snapshot", "restore", file.to_str().unwrap()])
        .args(["--name", &m.name, "--data-dir", m.data_dir.to_str().unwrap()])
        .args(["--initial-cluster", m.flag("--initial-cluster").unwrap()])
        .args([
            "--initial-advertise-peer-urls",
            m.flag("--initial-advertise-peer-urls").unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    // A damaged file is refused.
    let damaged = dir.path().join("damaged.db");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();
    let out = std::process::Command::new(lodestone_tests::lodestone_bin())
        .args(["snapshot", "restore", damaged.to_str().unwrap(), "--data-dir"])
        .arg(dir.path().join("never"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SHA-256"));

    new.launch().await;
    new.wait_published().await;
    let mut ncl = new.client().await;
    let a = cl.get("", Some(GetOptions::new().with_from_key())).await.unwrap();
    let b = ncl.get("", Some(GetOptions::new().with_from_key())).await.unwrap();
    let flat = |r: &etcd_client::GetResponse| -> Vec<Flat> {
        r.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    kv.value().to_vec(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                    kv.lease(),
                )
            })
            .collect()
    };
    assert_eq!(flat(&a), flat(&b), "same keys, values, revisions and leases");
    assert_eq!(b.header().unwrap().revision(), rev);
    assert_ne!(
        b.header().unwrap().cluster_id(),
        a.header().unwrap().cluster_id(),
        "a new cluster"
    );
    for i in 0..3 {
        let (hash, compacted) = hash_kv_at(&new, i, rev).await;
        assert_eq!(hash, hashes[0], "member {i} of the restored cluster");
        assert_eq!(compacted, 30);
    }
    // The lease came along, and the compaction point too.
    let ttl = ncl.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 3600);
    assert_status(
        ncl.get("data/00", Some(GetOptions::new().with_revision(10)))
            .await
            .unwrap_err(),
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    // And it takes writes.
    let p = ncl.put("after", "restore", None).await.unwrap();
    assert_eq!(p.header().unwrap().revision(), rev + 1);
}

/// Lodestone only: `lodestone snapshot save` (what the operator's backup Jobs run) skips an
/// endpoint that does not answer, writes the same bytes etcdctl does, reports the file's size,
/// SHA-256 and revision as JSON, prunes older files of its prefix with `--retain`, and the
/// restore tool's `--only-if-new` leaves a member with data (or a joiner) alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lodestone_snapshot_save_checks_reports_and_prunes() {
    let c = Cluster::start(Kind::Lodestone, three()).await;
    c.wait_published().await;
    let mut cl = c.client().await;
    for i in 0..20 {
        cl.put(format!("k{i}"), "v", None).await.unwrap();
    }
    let rev = cl.get("x", None).await.unwrap().header().unwrap().revision();
    let dir = tempfile::tempdir().unwrap();
    let save = |name: &str, extra: &[&str]| {
        let out = std::process::Command::new(lodestone_tests::lodestone_bin())
            .args(["snapshot", "save", dir.path().join(name).to_str().unwrap()])
            .arg("--endpoints")
            .arg(format!("http://127.0.0.1:1,{}", c.members[2].client_url()))
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("one line of JSON")
    };
    let saved = save("c-001.db", &[]);
    let bytes = std::fs::read(dir.path().join("c-001.db")).unwrap();
    assert_eq!(saved["size"], bytes.len() as u64);
    assert_eq!(saved["revision"], rev);
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(saved["sha256"], sha);
    // The same stream etcdctl saves.
    let theirs = dir.path().join("etcdctl.db");
    etcdctl_ok(etcdctl(
        &[c.members[2].endpoint()],
        &["snapshot", "save", theirs.to_str().unwrap()],
    ));
    assert_eq!(std::fs::read(&theirs).unwrap(), bytes);
    std::fs::remove_file(&theirs).unwrap();

    cl.put("more", "v", None).await.unwrap();
    save("c-002.db", &[]);
    let third = save("c-003.db", &["--retain", "2", "--prefix", "c-"]);
    assert_eq!(third["revision"], rev + 1);
    assert_eq!(third["pruned"], serde_json::json!(["c-001.db"]));
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    left.sort();
    assert_eq!(left, ["c-002.db", "c-003.db"], "nothing else left behind");

    // --report leaves the same JSON in a file too (a Job pod's termination message), and a
    // missing directory of the destination is created.
    let report = dir.path().join("report.json");
    let nested = save("nested/dir/d-001.db", &["--report", report.to_str().unwrap()]);
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(written, nested);
    assert_eq!(nested["revision"], rev + 1);
    std::fs::remove_file(&report).unwrap();
    std::fs::remove_dir_all(dir.path().join("nested")).unwrap();

    // Nothing answers: a clear error, and no file.
    let out = std::process::Command::new(lodestone_tests::lodestone_bin())
        .args(["snapshot", "save", dir.path().join("none.db").to_str().unwrap()])
        .args(["--endpoints", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no endpoint streamed a snapshot"));
    assert!(!dir.path().join("none.db").exists());

    // --only-if-new: a data directory with data, or a joining member, is left alone.
    let file = dir.path().join("c-003.db");
    let data = dir.path().join("member");
    let restore = |state: &str| {
        std::process::Command::new(lodestone_tests::lodestone_bin())
            .args(["snapshot", "restore", file.to_str().unwrap(), "--only-if-new"])
            .args(["--data-dir", data.to_str().unwrap(), "--initial-cluster-state", state])
            .output()
            .unwrap()
    };
    let joiner = restore("existing");
    assert!(joiner.status.success());
    assert!(!data.exists(), "a joiner is not restored");
    std::fs::create_dir(&data).unwrap();
    let first = restore("new");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains(&format!("revision {}", rev + 1)));
    let again = restore("new");
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing restored"));
}

/// Lodestone only: MoveLeader through etcdctl (which finds the leader with Status first),
/// and "not leader" from a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_on_three_members() {
    let c = Cluster::start(Kind::Lodestone, three()).await;
    c.wait_published().await;
    let leader = c.leader().await;
    let target = (leader + 1) % 3;
    let mut tcl = c.client_of(target).await;
    let target_id = tcl.status().await.unwrap().header().unwrap().member_id();
    let other = (leader + 2) % 3;
    assert_status(
        c.client_of(other).await.move_leader(target_id).await.unwrap_err(),
        Code::FailedPrecondition,
        "etcdserver: not leader",
    );
    let out = etcdctl(&c.endpoints(), &["move-leader", &format!("{target_id:x}")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Leadership transferred"));
    assert_eq!(c.leader().await, target);
    tcl.put("after-move", "v", None).await.unwrap();
}

/// Lodestone only: both auto-compaction modes compact on their own (the leader decides, the
/// compaction is replicated), and a bad retention stops the member at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compaction_modes() {
    let start = |extra: &[&str]| {
        Cluster::start(
            Kind::Lodestone,
            Options {
                extra: extra.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        )
    };
    let compacted_error = |e: etcd_client::Error| {
        assert_status(
            e,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        )
    };

    let c = start(&[
        "--auto-compaction-mode",
        "revision",
        "--auto-compaction-retention",
        "5",
        "--auto-compaction-check-interval",
        "200ms",
    ])
    .await;
    let mut cl = c.client().await;
    let mut rev = 0;
    for i in 0..20 {
        rev = cl
            .put("k", format!("{i}"), None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while cl
        .get("k", Some(GetOptions::new().with_revision(rev - 10)))
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "revision-mode auto compaction never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    compacted_error(cl.get("k", Some(GetOptions::new().with_revision(2))).await.unwrap_err());
    let kept = cl
        .get("k", Some(GetOptions::new().with_revision(rev - 4)))
        .await
        .unwrap();
    assert_eq!(kept.kvs()[0].mod_revision(), rev - 4, "the last 5 revisions are kept");
    drop(c);

    let c = start(&[
        "--auto-compaction-mode",
        "periodic",
        "--auto-compaction-retention",
        "2s",
    ])
    .await;
    let mut cl = c.client().await;
    let first = cl.put("p", "0", None).await.unwrap().header().unwrap().revision();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut i = 0;
    while cl.get("p", Some(GetOptions::new().with_revision(first))).await.is_ok() {
        assert!(Instant::now() < deadline, "periodic auto compaction never ran");
        i += 1;
        cl.put("p", format!("{i}"), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(i >= 15, "compacted after {i} × 100 ms, before 2 s of history existed");
    // The newest revisions are still readable.
    let now = cl.get("p", None).await.unwrap().header().unwrap().revision();
    cl.get("p", Some(GetOptions::new().with_revision(now - 1)))
        .await
        .unwrap();
    drop(c);

    let out = std::process::Command::new(lodestone_tests::lodestone_bin())
        .args([
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "1h",
        ])
        .args([
            "--data-dir",
            tempfile::tempdir().unwrap().path().join("x").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--auto-compaction-retention"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A published 3-member Lodestone cluster that runs the corruption check every `interval`.
async fn corrupt_checked_cluster(interval: &str) -> Cluster {
    let c = Cluster::start(
        Kind::Lodestone,
        Options {
            extra: vec!["--experimental-corrupt-check-time".into(), interval.into()],
            ..Options::members(3)
        },
    )
    .await;
    c.wait_published().await;
    c
}

/// Lodestone only: with the periodic corruption check on, a healthy cluster raises nothing;
/// a CORRUPT alarm makes every KV request fail with "corrupt cluster" on every member until
/// it is disarmed. (`corruption_check_finds_a_damaged_member` has the check raise it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_alarm_stops_kv_and_healthy_clusters_raise_nothing() {
    let c = corrupt_checked_cluster("200ms").await;
    let mut cl = c.client().await;
    for i in 0..20 {
        cl.put(format!("k{i}"), "v", None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        cl.alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap()
            .alarms()
            .is_empty(),
        "the corruption check blamed a healthy member"
    );
    let victim = cl.status().await.unwrap().header().unwrap().member_id();
    let mut o = AlarmOptions::new();
    o.with_member(victim);
    cl.alarm(AlarmAction::Activate, AlarmType::Corrupt, Some(o))
        .await
        .unwrap();
    for i in 0..3 {
        let mut m = c.client_of(i).await;
        writes_refused_as_corrupt(&mut m, &format!("member {i}")).await;
        assert_status(
            m.get("k0", None).await.unwrap_err(),
            Code::DataLoss,
            "etcdserver: corrupt cluster",
        );
    }
    let mut o = AlarmOptions::new();
    o.with_member(victim);
    cl.alarm(AlarmAction::Deactivate, AlarmType::Corrupt, Some(o))
        .await
        .unwrap();
    cl.put("after", "disarm", None).await.unwrap();
}

/// Lodestone only: real damage on disk. While a follower is stopped, one byte of the newest
/// revision's value is flipped in its state machine's `kv` column family: a silent
/// divergence, written through RocksDB so its checksums still pass, which only comparing
/// HashKV across members can find. After the follower restarts, the periodic check raises
/// CORRUPT for that member alone, and KV requests fail with "corrupt cluster".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_check_finds_a_damaged_member() {
    let mut c = corrupt_checked_cluster("300ms").await;
    let mut cl = c.client().await;
    for i in 0..20 {
        cl.put(format!("k{i}"), format!("value-{i}"), None).await.unwrap(); // revs 2..=21
    }
    let victim = (c.leader().await + 1) % 3;
    // Ask the survivors from here on: the victim is down for a while.
    let survivors: Vec<String> = (0..3)
        .filter(|i| *i != victim)
        .map(|i| c.members[i].endpoint())
        .collect();
    let mut cl = lodestone_tests::connect(&survivors).await;
    let mut vc = c.client_of(victim).await;
    let victim_id = vc.status().await.unwrap().header().unwrap().member_id();
    // The victim has applied everything before it stops, so nothing is replayed over the
    // damage when it restarts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while vc.status().await.unwrap().header().unwrap().revision() < 21 {
        assert!(Instant::now() < deadline, "member {victim} did not apply the writes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        cl.alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .unwrap()
            .alarms()
            .is_empty(),
        "the check blamed a member before any damage"
    );
    let stopped = c.members[victim].terminate();
    assert_eq!(
        stopped,
        Some(0),
        "graceful stop; log:\n{}",
        c.members[victim].log_tail()
    );
    flip_newest_value_byte(&c.members[victim].data_dir.join("member").join("snap"));
    // (No health wait: once the check runs, every KV request fails, reads included.)
    c.restart(victim);

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let alarms = cl.alarm(AlarmAction::Get, AlarmType::None, None).await.unwrap();
        let raised: Vec<(u64, AlarmType)> = alarms.alarms().iter().map(|a| (a.member_id(), a.alarm())).collect();
        assert!(
            raised.iter().all(|&(id, _)| id == victim_id),
            "only the damaged member {victim_id:x} may be blamed: {raised:?}"
        );
        if raised.contains(&(victim_id, AlarmType::Corrupt)) {
            break;
        }
        assert!(Instant::now() < deadline, "no CORRUPT alarm for the damaged member");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    writes_refused_as_corrupt(&mut cl, "the cluster").await;
}

/// Waits (5 s at most) until `cl`'s puts fail with "corrupt cluster" (the alarm applies
/// asynchronously on each member).
async fn writes_refused_as_corrupt(cl: &mut etcd_client::Client, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cl.put("after", "v", None).await {
            Err(e) => return assert_status(e, Code::DataLoss, "etcdserver: corrupt cluster"),
            Ok(_) => assert!(Instant::now() < deadline, "{who} still takes writes"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a stopped member's state machine with Lodestone's own storage code and flips the
/// last byte of the newest `kv` entry (the end of its value: the lease field is omitted when
/// zero).
fn flip_newest_value_byte(state_machine_dir: &std::path::Path) {
    let sm = ::lodestone::raft::state_machine::StateMachine::open(state_machine_dir)
        .expect("open the stopped member's state machine");
    let db = sm.shared.mvcc.db();
    let cf = db.cf_handle(::lodestone::mvcc::CF_KV).expect("kv column family");
    let mut it = db.raw_iterator_cf(&cf);
    it.seek_to_last();
    let key = it.key().expect("a kv entry").to_vec();
    let mut value = it.value().expect("a kv value").to_vec();
    drop(it);
    *value.last_mut().unwrap() ^= 0x01;
    db.put_cf(&cf, &key, &value).expect("write the damage");
    db.flush_cf(&cf).expect("flush");
}

/// Lodestone only: applying a compaction only moves the compacted revision; every member
/// then removes the dropped history in bounded background steps (1000 index entries each).
/// A physical compaction answers once the serving member is done; every member ends with
/// exactly the versions the compaction keeps, and their hashes agree throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_removes_history_on_every_member_in_steps() {
    use etcd_client::{Txn, TxnOp};
    let mut c = Cluster::start(Kind::Lodestone, Options::members(3)).await;
    let mut cl = c.client().await;
    // 600 keys, two versions each: 1200 index entries, more than one step.
    for round in 0..2 {
        for chunk in 0..6 {
            let ops: Vec<TxnOp> = (0..100)
                .map(|i| TxnOp::put(format!("k{:04}", chunk * 100 + i), format!("v{round}"), None))
                .collect();
            cl.txn(Txn::new().and_then(ops)).await.unwrap();
        }
    }
    let rev = cl.get("k0000", None).await.unwrap().header().unwrap().revision();
    assert_eq!(rev, 13);
    let follower = (c.leader().await + 1) % 3;
    c.client_of(follower)
        .await
        .compact(rev, Some(etcd_client::CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    // Right away, wherever each member's pass is: one hash, at the same compaction point.
    let mut hashes = Vec::new();
    for i in 0..3 {
        let (hash, compacted) = hash_kv_at(&c, i, rev).await;
        assert_eq!(compacted, rev, "member {i}");
        hashes.push(hash);
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "hashes differ: {hashes:?}");
    // Every member's pass ends (1200 entries: two steps, milliseconds).
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..3 {
        assert_eq!(c.members[i].terminate(), Some(0), "graceful stop of member {i}");
        let dir = c.members[i].data_dir.join("member").join("snap");
        let sm = ::lodestone::raft::state_machine::StateMachine::open(&dir)
            .expect("open the stopped member's state machine");
        assert_eq!(sm.shared.mvcc.compacted_physically().unwrap(), rev, "member {i}");
        let db = sm.shared.mvcc.db();
        let cf = db.cf_handle(::lodestone::mvcc::CF_KV).expect("kv column family");
        let mut it = db.raw_iterator_cf(&cf);
        it.seek_to_first();
        let mut left = 0;
        while it.valid() {
            left += 1;
            it.next();
        }
        assert_eq!(left, 600, "member {i} keeps exactly the latest version of each key");
    }
}
