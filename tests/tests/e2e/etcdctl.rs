//! etcdctl 3.4 against Lodestone and, side by side, against etcd 3.4: the same commands
//! must print the same things.

use std::collections::BTreeSet;

use lodestone_tests::etcdctl_ok as ok;
use lodestone_tests::{Cluster, Kind, Options, etcdctl, etcdctl_stdin};

lodestone_tests::compat!(
    put_get_del,
    txn_and_compaction,
    endpoint_and_member_commands,
    errors_are_reported
);

fn json(out: std::process::Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("etcdctl json")
}

async fn put_get_del(kind: Kind) {
    let c = Cluster::start(kind, Options::default()).await;
    let ep = c.endpoints();
    assert_eq!(ok(etcdctl(&ep, &["put", "foo", "bar"])), "OK\n");
    assert_eq!(ok(etcdctl(&ep, &["get", "foo"])), "foo\nbar\n");
    assert_eq!(ok(etcdctl(&ep, &["get", "foo", "--print-value-only"])), "bar\n");
    assert_eq!(ok(etcdctl(&ep, &["put", "foo", "baz", "--prev-kv"])), "OK\nfoo\nbar\n");
    for k in ["p/1", "p/2", "p/3"] {
        ok(etcdctl(&ep, &["put", k, k]));
    }
    assert_eq!(
        ok(etcdctl(&ep, &["get", "p/", "--prefix", "--keys-only"])),
        "p/1\n\np/2\n\np/3\n\n"
    );
    assert_eq!(
        ok(etcdctl(
            &ep,
            &["get", "p/", "--prefix", "--limit", "1", "--order", "DESCEND"]
        )),
        "p/3\np/3\n"
    );
    assert_eq!(
        ok(etcdctl(
            &ep,
            &[
                "get",
                "p/",
                "--prefix",
                "--sort-by",
                "MODIFY",
                "--order",
                "DESCEND",
                "--limit",
                "1"
            ]
        )),
        "p/3\np/3\n"
    );
    assert_eq!(
        ok(etcdctl(&ep, &["get", "p/2", "--from-key", "--keys-only"])),
        "p/2\n\np/3\n\n"
    );
    let j = json(etcdctl(&ep, &["get", "p/", "--prefix", "--limit", "1", "-w", "json"]));
    assert_eq!(j["count"], 3);
    assert_eq!(j["more"], true);
    let j = json(etcdctl(&ep, &["get", "foo", "-w", "json"]));
    assert_eq!(j["kvs"][0]["version"], 2);
    assert_eq!(j["kvs"][0]["create_revision"], 2);
    assert_eq!(j["kvs"][0]["mod_revision"], 3);
    // Historical read and serializable consistency.
    assert_eq!(
        ok(etcdctl(&ep, &["get", "foo", "--rev", "2", "--print-value-only"])),
        "bar\n"
    );
    assert_eq!(
        ok(etcdctl(
            &ep,
            &["get", "foo", "--consistency", "s", "--print-value-only"]
        )),
        "baz\n"
    );
    assert_eq!(ok(etcdctl(&ep, &["del", "p/", "--prefix"])), "3\n");
    assert_eq!(ok(etcdctl(&ep, &["del", "foo", "--prev-kv"])), "1\nfoo\nbaz\n");
    assert_eq!(ok(etcdctl(&ep, &["del", "nothing"])), "0\n");
    assert_eq!(ok(etcdctl(&ep, &["get", "foo"])), "");
}

async fn txn_and_compaction(kind: Kind) {
    let c = Cluster::start(kind, Options::default()).await;
    let ep = c.endpoints();
    ok(etcdctl(&ep, &["put", "k", "v"]));
    let script = "value(\"k\") = \"v\"\n\nput k2 v2\nget k\n\nput k3 v3\n\n";
    let out = ok(etcdctl_stdin(&ep, &["txn"], script));
    assert_eq!(out, "SUCCESS\n\nOK\n\nk\nv\n");
    let script = "version(\"k\") > \"5\"\n\nput k4 v4\n\nget k2\n\n";
    let out = ok(etcdctl_stdin(&ep, &["txn"], script));
    assert_eq!(out, "FAILURE\n\nk2\nv2\n");
    let script = "mod(\"k2\") = \"3\"\ncreate(\"k\") = \"2\"\n\ndel k2\n\n\n";
    assert_eq!(ok(etcdctl_stdin(&ep, &["txn"], script)), "SUCCESS\n\n1\n");
    // Compaction, physical, then reading below it fails with etcd's message.
    assert_eq!(
        ok(etcdctl(&ep, &["compaction", "3", "--physical"])),
        "compacted revision 3\n"
    );
    let out = etcdctl(&ep, &["get", "k", "--rev", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcdserver: mvcc: required revision has been compacted"));
}

async fn endpoint_and_member_commands(kind: Kind) {
    let c = Cluster::start(kind, Options::members(3)).await;
    c.wait_published().await;
    let ep = c.endpoints();
    ok(etcdctl(&ep, &["put", "x", "1"]));
    // etcdctl 3.4 prints health results on stderr.
    let health = |eps: &[String], extra: &[&str]| {
        let mut args = vec!["endpoint", "health"];
        args.extend_from_slice(extra);
        let out = etcdctl(eps, &args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains("is healthy"))
            .count()
    };
    assert_eq!(health(&ep, &[]), 3);
    let status = json(etcdctl(&ep, &["endpoint", "status", "-w", "json"]));
    let arr = status.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    let leaders: BTreeSet<u64> = arr.iter().map(|s| s["Status"]["leader"].as_u64().unwrap()).collect();
    assert_eq!(leaders.len(), 1);
    for s in arr {
        assert!(s["Status"]["version"].as_str().unwrap().starts_with("3.4"));
        assert!(s["Status"]["raftIndex"].as_u64().unwrap() > 0);
    }
    let members = json(etcdctl(&ep, &["member", "list", "-w", "json"]));
    let list = members["members"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    let names: BTreeSet<&str> = list.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["m0", "m1", "m2"]));
    let table = ok(etcdctl(&ep, &["member", "list"]));
    assert_eq!(table.lines().count(), 3);
    assert_eq!(
        table.lines().filter(|l| l.contains(", started, ")).count(),
        3,
        "{table}"
    );
    // --cluster discovers every member's client URL through MemberList.
    assert_eq!(health(&ep[..1], &["--cluster"]), 3);
}

async fn errors_are_reported(kind: Kind) {
    let c = Cluster::start(kind, Options::default()).await;
    let ep = c.endpoints();
    let err = |args: &[&str]| {
        let out = etcdctl(&ep, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(err(&["put", "missing", "--ignore-value"]).contains("etcdserver: key not found"));
    assert!(err(&["get", "k", "--rev", "100"]).contains("etcdserver: mvcc: required revision is a future revision"));
    assert!(err(&["put", "k", "v", "--lease", "1234"]).contains("etcdserver: requested lease not found"));
    assert!(err(&["compaction", "100"]).contains("etcdserver: mvcc: required revision is a future revision"));
}
