//! Every etcdctl 3.4 command for the Watch, Lease, Cluster and Maintenance services (and
//! `lock` / `elect`), run against a 3-member Lodestone cluster and, side by side, a
//! 3-member etcd 3.4 cluster; each must succeed and print the same shape.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lodestone_tests::etcdctl_ok as ok;
use lodestone_tests::{Cluster, Kind, Options, etcdctl, etcdctl_bin};

lodestone_tests::compat!(
    lease_watch_and_lock_commands,
    member_endpoint_snapshot_alarm_commands,
    interactive_watch_exec_watch_keep_alive_and_mirror
);

fn json(out: std::process::Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("etcdctl json")
}

/// Starts a long-running etcdctl and returns it with a reader of its stdout lines.
fn spawn(endpoints: &[String], args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    spawn_with_stdin(endpoints, args, Stdio::null())
}

/// [`spawn`], with the given standard input (`Stdio::piped()` for interactive commands).
fn spawn_with_stdin(
    endpoints: &[String],
    args: &[&str],
    stdin: Stdio,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcdctl");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Collects lines until `want` of them arrived (or 10 s passed).
fn lines(rx: &std::sync::mpsc::Receiver<String>, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => out.push(l),
            Err(_) => break,
        }
    }
    out
}

async fn lease_watch_and_lock_commands(kind: Kind) {
    let c = Cluster::start(kind, Options::members(3)).await;
    c.wait_published().await;
    let ep = c.endpoints();

    // lease grant / put --lease / timetolive --keys / list / keep-alive --once / revoke
    let granted = ok(etcdctl(&ep, &["lease", "grant", "100"]));
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(granted, format!("lease {id} granted with TTL(100s)\n"));
    ok(etcdctl(&ep, &["put", "leased", "v", &format!("--lease={id}")]));
    let ttl = ok(etcdctl(&ep, &["lease", "timetolive", &id, "--keys"]));
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(100s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.ends_with("attached keys([leased])\n"), "{ttl}");
    assert!(ok(etcdctl(&ep, &["lease", "list"])).contains(&id));
    assert_eq!(
        ok(etcdctl(&ep, &["lease", "keep-alive", "--once", &id])),
        format!("lease {id} keepalived with TTL(100)\n")
    );
    // Watch from the first revision, then the revoke's delete arrives live.
    let (mut w, rx) = spawn(&ep, &["watch", "leased", "--rev=1"]);
    assert_eq!(lines(&rx, 3), ["PUT", "leased", "v"]);
    assert_eq!(
        ok(etcdctl(&ep, &["lease", "revoke", &id])),
        format!("lease {id} revoked\n")
    );
    assert_eq!(lines(&rx, 2), ["DELETE", "leased"]);
    let _ = w.kill();
    let _ = w.wait();
    let gone = etcdctl(&ep, &["lease", "timetolive", &id]);
    assert_eq!(ok(gone), format!("lease {id} already expired\n"));
    let missing = etcdctl(&ep, &["lease", "revoke", &id]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("etcdserver: requested lease not found"));

    // watch --prefix --prev-kv through another member.
    let (mut w, rx) = spawn(&[ep[2].clone()], &["watch", "w/", "--prefix", "--prev-kv"]);
    std::thread::sleep(Duration::from_millis(500));
    ok(etcdctl(&[ep[0].clone()], &["put", "w/a", "1"]));
    ok(etcdctl(&[ep[1].clone()], &["put", "w/a", "2"]));
    assert_eq!(lines(&rx, 3), ["PUT", "w/a", "1"]);
    assert_eq!(lines(&rx, 5), ["PUT", "w/a", "1", "w/a", "2"]);
    let _ = w.kill();
    let _ = w.wait();

    // lock: runs the command while holding the lock.
    assert_eq!(ok(etcdctl(&ep, &["lock", "mutex", "echo", "inside"])), "inside\n");
    // elect: a campaigner prints its proposal; a listener sees it.
    let (mut candidate, crx) = spawn(&ep, &["elect", "leader-election", "p1"]);
    let first = lines(&crx, 2);
    assert_eq!(first.len(), 2, "the candidate was elected");
    assert_eq!(first[1], "p1");
    let (mut listener, lrx) = spawn(&ep, &["elect", "-l", "leader-election"]);
    let seen = lines(&lrx, 2);
    assert_eq!(seen.get(1).map(String::as_str), Some("p1"));
    let _ = candidate.kill();
    let _ = listener.kill();
    let _ = candidate.wait();
    let _ = listener.wait();
}

async fn member_endpoint_snapshot_alarm_commands(kind: Kind) {
    let c = Cluster::start(kind, Options::members(3)).await;
    c.wait_published().await;
    let ep = c.endpoints();

    let list = json(etcdctl(&ep, &["member", "list", "-w", "json"]));
    assert_eq!(list["members"].as_array().unwrap().len(), 3);
    // Endpoint commands three ways: members named without a scheme, named by URL, and found
    // through `--cluster` (which dials the advertised client URLs). Given a URL, etcdctl 3.4
    // sends it whole as the HTTP/2 :authority, which Lodestone repairs on the way in.
    let urls: Vec<String> = c.members.iter().map(|m| m.client_url()).collect();
    let one_url = [urls[0].clone()];
    let ways: [(&[String], &[&str]); 3] = [(&ep, &[]), (&urls, &[]), (&one_url, &["--cluster"])];
    let mut leaders = Vec::new();
    for (endpoints, extra) in ways {
        let run = |args: &[&str]| etcdctl(endpoints, &[args, extra].concat());
        let status = json(run(&["endpoint", "status", "-w", "json"]));
        let status = status.as_array().unwrap();
        assert_eq!(status.len(), 3, "{extra:?}: {status:?}");
        leaders = status.iter().map(|s| s["Status"]["leader"].as_u64().unwrap()).collect();
        assert!(leaders.windows(2).all(|w| w[0] == w[1]), "one leader: {leaders:?}");
        let table = ok(run(&["endpoint", "status"]));
        assert_eq!(table.lines().count(), 3, "{table}");
        let health = run(&["endpoint", "health"]);
        assert!(health.status.success(), "{extra:?}: {health:?}");
        // etcdctl 3.4 prints health results on stderr.
        let health = String::from_utf8_lossy(&health.stderr).to_string() + &String::from_utf8_lossy(&health.stdout);
        assert_eq!(health.matches("is healthy").count(), 3, "{health}");
        let hashes = json(run(&["endpoint", "hashkv", "-w", "json"]));
        assert_eq!(hashes.as_array().unwrap().len(), 3, "{extra:?}: {hashes}");
        let defrag = ok(run(&["defrag"]));
        assert_eq!(
            defrag.matches("Finished defragmenting etcd member").count(),
            3,
            "{defrag}"
        );
    }

    for i in 0..20 {
        ok(etcdctl(&ep, &["put", &format!("k{i}"), "v"]));
    }
    // HashKV agrees across members once all applied the last write.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = json(etcdctl(&ep, &["endpoint", "hashkv", "-w", "json"]));
        let hashes: Vec<u64> = h
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["HashKV"]["hash"].as_u64().unwrap_or(0))
            .collect();
        if hashes.len() == 3 && hashes.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(Instant::now() < deadline, "hashes differ: {hashes:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.db");
    let saved = etcdctl(&one_url, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(ok(saved).contains("Snapshot saved at"));
    assert_eq!(std::fs::metadata(&file).unwrap().len() % 512, 32);

    let defrag = ok(etcdctl(&ep, &["defrag"]));
    assert_eq!(
        defrag.matches("Finished defragmenting etcd member").count(),
        3,
        "{defrag}"
    );
    assert_eq!(ok(etcdctl(&ep, &["alarm", "list"])), "");
    assert_eq!(ok(etcdctl(&ep, &["alarm", "disarm"])), "");

    // member add --learner / update / remove. etcd refuses membership changes with
    // "unhealthy cluster" until its leader has been connected to every member for 5 s;
    // retry like a patient operator.
    let deadline = Instant::now() + Duration::from_secs(15);
    let added = loop {
        let out = etcdctl(
            &ep,
            &["member", "add", "newbie", "--learner", "--peer-urls=http://127.0.0.1:7"],
        );
        if out.status.success() || Instant::now() > deadline {
            break ok(out);
        }
        assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy cluster"));
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(added.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""), "{added}");
    let hex = added
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(|c: char| !c.is_ascii_hexdigit())
        .to_string();
    let updated = ok(etcdctl(
        &ep,
        &["member", "update", &hex, "--peer-urls=http://127.0.0.1:8"],
    ));
    assert!(updated.contains("updated in cluster"), "{updated}");
    let removed = ok(etcdctl(&ep, &["member", "remove", &hex]));
    assert!(removed.contains("removed from cluster"), "{removed}");
    let list = json(etcdctl(&ep, &["member", "list", "-w", "json"]));
    assert_eq!(list["members"].as_array().unwrap().len(), 3);

    // move-leader to a follower.
    let leader_id = leaders[0];
    let target = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ID"].as_u64().unwrap())
        .find(|id| *id != leader_id)
        .unwrap();
    let moved = ok(etcdctl(&urls, &["move-leader", &format!("{target:x}")]));
    assert!(moved.contains("Leadership transferred"), "{moved}");
}

/// The long-running etcdctl commands: `watch -i` (interactive watches and `progress`),
/// `watch ... -- command` (runs a command per event with the event in its environment),
/// `lease keep-alive` (renews until stopped) and `make-mirror` (Range, then Watch from the
/// next revision, into a second cluster).
async fn interactive_watch_exec_watch_keep_alive_and_mirror(kind: Kind) {
    let c = Cluster::start(kind, Options::members(3)).await;
    c.wait_published().await;
    let ep = c.endpoints();
    let put_rev = |value: &str| {
        json(etcdctl(&ep, &["put", "iw", value, "-w", "json"]))["header"]["revision"]
            .as_i64()
            .unwrap()
    };
    let first = put_rev("first");
    let rev = put_rev("second");

    // watch -i: a watch from history typed at the prompt, then a progress request, whose
    // answer is the current revision.
    let (mut w, rx) = spawn_with_stdin(&ep, &["watch", "-i"], Stdio::piped());
    let mut stdin = w.stdin.take().unwrap();
    use std::io::Write as _;
    writeln!(stdin, "watch iw --rev=1").unwrap();
    assert_eq!(lines(&rx, 6), ["PUT", "iw", "first", "PUT", "iw", "second"]);
    writeln!(stdin, "progress").unwrap();
    assert_eq!(lines(&rx, 1), [format!("progress notify: {rev}")]);
    ok(etcdctl(&[ep[1].clone()], &["put", "iw", "third"]));
    assert_eq!(lines(&rx, 3), ["PUT", "iw", "third"]);
    drop(stdin);
    let _ = w.kill();
    let _ = w.wait();

    // watch ... -- command: etcdctl prints each event and runs the command with
    // ETCD_WATCH_* set from it (the command's output may come after later events).
    let (mut w, rx) = spawn(
        &ep,
        &[
            "watch",
            "iw",
            &format!("--rev={first}"),
            "--",
            "sh",
            "-c",
            "echo exec $ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_KEY $ETCD_WATCH_VALUE",
        ],
    );
    let got = lines(&rx, 12);
    let _ = w.kill();
    let _ = w.wait();
    let (ran, printed): (Vec<&String>, Vec<&String>) = got.iter().partition(|l| l.starts_with("exec "));
    assert_eq!(
        printed,
        ["PUT", "iw", "first", "PUT", "iw", "second", "PUT", "iw", "third"],
        "{got:?}"
    );
    let mut ran: Vec<&str> = ran.iter().map(|l| l.as_str()).collect();
    ran.sort_unstable();
    assert_eq!(
        ran,
        [
            "exec \"PUT\" \"iw\" \"first\"",
            "exec \"PUT\" \"iw\" \"second\"",
            "exec \"PUT\" \"iw\" \"third\""
        ],
        "{got:?}"
    );

    // lease keep-alive: renews every TTL/3 until stopped (two renewals of a 3 s lease).
    let granted = ok(etcdctl(&ep, &["lease", "grant", "3"]));
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    let (mut k, rx) = spawn(&ep, &["lease", "keep-alive", &id]);
    let renewed = lines(&rx, 2);
    assert_eq!(
        renewed,
        vec![format!("lease {id} keepalived with TTL(3)"); 2],
        "{renewed:?}"
    );
    // Past the granted TTL, the lease lives because it is kept alive.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        ok(etcdctl(&ep, &["lease", "timetolive", &id])).contains("granted with TTL(3s)"),
        "a kept-alive lease expired"
    );
    let _ = k.kill();
    let _ = k.wait();

    // make-mirror: existing keys, then live changes, arrive in the destination cluster.
    let dest = Cluster::start(kind, Options::default()).await;
    ok(etcdctl(&ep, &["put", "mm/a", "1"]));
    let (mut m, _rx) = spawn(&ep, &["make-mirror", "--prefix=mm/", &dest.endpoints()[0]]);
    std::thread::sleep(Duration::from_millis(700));
    ok(etcdctl(&ep, &["put", "mm/b", "2"]));
    ok(etcdctl(&ep, &["del", "mm/a"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mirrored = loop {
        let got = ok(etcdctl(&dest.endpoints(), &["get", "mm/", "--prefix"]));
        if got == "mm/b\n2\n" || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = m.kill();
    let _ = m.wait();
    assert_eq!(mirrored, "mm/b\n2\n");
}
