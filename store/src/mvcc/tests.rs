//! MVCC unit tests on a real RocksDB instance in a temporary directory.

use super::*;
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};

fn store() -> (tempfile::TempDir, Mvcc) {
    let dir = tempfile::tempdir().unwrap();
    let m = Mvcc::open(&dir.path().join("db")).unwrap();
    (dir, m)
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.to_string().into(),
        value: v.to_string().into(),
        ..Default::default()
    }
}

fn put(m: &Mvcc, k: &str, v: &str) -> i64 {
    let mut t = m.write_txn().unwrap();
    let r = t.put(&put_req(k, v)).unwrap();
    t.commit(vec![]).unwrap();
    r.header.unwrap().revision
}

fn del(m: &Mvcc, k: &str, end: &str) -> i64 {
    let mut t = m.write_txn().unwrap();
    let r = t
        .delete_range(&DeleteRangeRequest {
            key: k.to_string().into(),
            range_end: end.to_string().into(),
            prev_kv: false,
        })
        .unwrap();
    t.commit(vec![]).unwrap();
    r.deleted
}

fn range(m: &Mvcc, req: RangeRequest) -> crate::error::Result<RangeOutcome> {
    m.read_view().unwrap().with(|v| v.range(&req))
}

fn get(m: &Mvcc, k: &str, rev: i64) -> Option<crate::proto::mvccpb::KeyValue> {
    range(
        m,
        RangeRequest {
            key: k.to_string().into(),
            revision: rev,
            ..Default::default()
        },
    )
    .unwrap()
    .kvs
    .pop()
}

fn prefix(m: &Mvcc, p: &str, rev: i64) -> Vec<String> {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    range(
        m,
        RangeRequest {
            key: p.to_string().into(),
            range_end: end.into(),
            revision: rev,
            ..Default::default()
        },
    )
    .unwrap()
    .kvs
    .into_iter()
    .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
    .collect()
}

#[test]
fn revisions_start_at_one_and_bump_once_per_change() {
    let (_d, m) = store();
    assert_eq!(m.meta().unwrap().revision, 1);
    assert_eq!(put(&m, "a", "1"), 2);
    assert_eq!(put(&m, "a", "2"), 3);
    let kv = get(&m, "a", 0).unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    // Deleting nothing changes nothing.
    assert_eq!(del(&m, "zzz", ""), 0);
    assert_eq!(m.meta().unwrap().revision, 3);
}

#[test]
fn tombstones_and_history() {
    let (_d, m) = store();
    put(&m, "k", "v1"); // 2
    put(&m, "k", "v2"); // 3
    assert_eq!(del(&m, "k", ""), 1); // 4
    put(&m, "k", "v3"); // 5
    assert_eq!(get(&m, "k", 2).unwrap().value, "v1");
    assert_eq!(get(&m, "k", 3).unwrap().value, "v2");
    assert!(get(&m, "k", 4).is_none());
    let kv = get(&m, "k", 5).unwrap();
    assert_eq!((kv.version, kv.create_revision), (1, 5));
    // The tombstone is in the revision keyspace with its mark.
    let db = m.db();
    let kcf = db.cf_handle(CF_KV).unwrap();
    assert!(
        db.get_cf(&kcf, revision_key(Revision::new(4, 0), true))
            .unwrap()
            .is_some()
    );
}

#[test]
fn requests_in_one_batch_see_each_other() {
    let (_d, m) = store();
    put(&m, "base", "0"); // 2
    let mut t = m.write_txn().unwrap();
    t.put(&put_req("x", "1")).unwrap(); // 3
    t.put(&put_req("x", "2")).unwrap(); // 4
    t.delete_range(&DeleteRangeRequest {
        key: "base".into(),
        ..Default::default()
    })
    .unwrap(); // 5
    // A txn in the same batch reads the overlay, at the latest and at a revision inside it.
    let txn = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp {
                request: Some(Op::RequestRange(RangeRequest {
                    key: "x".into(),
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(Op::RequestRange(RangeRequest {
                    key: "x".into(),
                    revision: 3,
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(Op::RequestRange(RangeRequest {
                    key: "base".into(),
                    revision: 4,
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    let r = t.txn(&txn).unwrap();
    let val = |i: usize| match &r.responses[i].response {
        Some(crate::proto::etcdserverpb::response_op::Response::ResponseRange(rr)) => {
            rr.kvs.first().map(|kv| kv.value.clone())
        }
        _ => panic!(),
    };
    assert_eq!(val(0).unwrap(), "2");
    assert_eq!(val(1).unwrap(), "1");
    assert_eq!(val(2).unwrap(), "0");
    assert_eq!(t.revision(), 5, "a read-only txn does not bump the revision");
    // Nothing is visible to readers before commit.
    assert!(get(&m, "x", 0).is_none());
    t.commit(b"applied".to_vec()).unwrap();
    assert_eq!(get(&m, "x", 0).unwrap().version, 2);
    let meta = m.meta().unwrap();
    assert_eq!((meta.revision, meta.applied.as_slice()), (5, &b"applied"[..]));
}

#[test]
fn a_batch_merges_its_changes_with_stored_keys_in_key_order() {
    use crate::proto::etcdserverpb::LeaseGrantRequest;
    use crate::proto::etcdserverpb::response_op::Response;
    let (_d, m) = store();
    let mut t = m.write_txn().unwrap();
    t.lease_grant(&LeaseGrantRequest { ttl: 60, id: 7 }).unwrap();
    t.commit(vec![]).unwrap();
    for k in ["a", "c", "e", "g"] {
        put(&m, k, "stored");
    }
    let leased = |k: &str| PutRequest {
        key: k.to_string().into(),
        value: "leased".into(),
        lease: 7,
        ..Default::default()
    };
    let mut t = m.write_txn().unwrap();
    t.put(&leased("d")).unwrap();
    t.commit(vec![]).unwrap();
    // d is attached in RocksDB, h only in the batch below.
    let mut t = m.write_txn().unwrap();
    t.put(&leased("h")).unwrap();
    t.put(&put_req("b", "batch")).unwrap();
    t.delete_range(&DeleteRangeRequest {
        key: "c".into(),
        ..Default::default()
    })
    .unwrap();
    t.put(&put_req("f", "batch")).unwrap();
    t.put(&put_req("g", "batch")).unwrap();
    let read = |t: &mut crate::mvcc::write::WriteTxn, limit: i64| {
        let r = t
            .txn(&TxnRequest {
                compare: vec![],
                success: vec![RequestOp {
                    request: Some(Op::RequestRange(RangeRequest {
                        key: "a".into(),
                        range_end: "z".into(),
                        limit,
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            })
            .unwrap();
        match r.responses[0].response.clone() {
            Some(Response::ResponseRange(rr)) => {
                let kvs: Vec<String> = rr
                    .kvs
                    .iter()
                    .map(|kv| {
                        format!(
                            "{}={}",
                            String::from_utf8_lossy(&kv.key),
                            String::from_utf8_lossy(&kv.value)
                        )
                    })
                    .collect();
                (kvs, rr.more)
            }
            _ => panic!("not a range response"),
        }
    };
    // Stored and batch keys interleave; the batch's change wins for g, c is gone.
    assert_eq!(
        read(&mut t, 0).0,
        [
            "a=stored", "b=batch", "d=leased", "e=stored", "f=batch", "g=batch", "h=leased"
        ]
    );
    // Stopping early works on either side of the merge.
    assert_eq!(
        read(&mut t, 2),
        (vec!["a=stored".to_string(), "b=batch".to_string()], true)
    );
    // A delete without prev_kv removes stored and batch keys alike, in key order, and
    // detaches the lease of the key it removes.
    let before = t.revision();
    let r = t
        .delete_range(&DeleteRangeRequest {
            key: "b".into(),
            range_end: "i".into(),
            prev_kv: false,
        })
        .unwrap();
    assert_eq!((r.deleted, r.prev_kvs.len()), (6, 0));
    assert_eq!(t.revision(), before + 1, "one revision for the whole delete");
    t.commit(vec![]).unwrap();
    for k in ["b", "d", "e", "f", "g", "h"] {
        assert!(get(&m, k, 0).is_none(), "{k} is deleted");
    }
    assert_eq!(get(&m, "a", 0).unwrap().value, "stored");
    assert!(m.lease_keys(7).unwrap().is_empty(), "the deleted keys left their lease");
}

#[test]
fn failed_request_leaves_no_trace() {
    let (_d, m) = store();
    put(&m, "k", "v"); // 2
    let mut t = m.write_txn().unwrap();
    // Deletes k, then puts k with ignore_value: the key is gone by then, so the txn fails.
    let txn = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp {
                request: Some(Op::RequestPut(put_req("other", "1"))),
            },
            RequestOp {
                request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                    key: "k".into(),
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(Op::RequestPut(PutRequest {
                    key: "k".into(),
                    ignore_value: true,
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    assert_eq!(t.txn(&txn).unwrap_err(), crate::error::StoreError::KeyNotFound);
    // A later request in the same batch sees the state before the failed one.
    t.put(&put_req("after", "1")).unwrap();
    assert_eq!(t.revision(), 3);
    // The same failure once the batch holds writes: the key changed earlier in the batch
    // gets that change back, the key the batch never touched is forgotten again.
    let again = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp {
                request: Some(Op::RequestPut(put_req("after", "2"))),
            },
            RequestOp {
                request: Some(Op::RequestPut(put_req("fresh", "1"))),
            },
            RequestOp {
                request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                    key: "after".into(),
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(Op::RequestPut(PutRequest {
                    key: "after".into(),
                    ignore_value: true,
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    assert_eq!(t.txn(&again).unwrap_err(), crate::error::StoreError::KeyNotFound);
    assert_eq!(t.revision(), 3);
    t.put(&PutRequest {
        key: "after".into(),
        value: "3".into(),
        prev_kv: true,
        ..Default::default()
    })
    .map(|r| assert_eq!(r.prev_kv.unwrap().value, "1", "the batch's own change is back"))
    .unwrap();
    t.commit(vec![]).unwrap();
    assert_eq!(get(&m, "k", 0).unwrap().value, "v");
    assert!(get(&m, "other", 0).is_none());
    assert!(get(&m, "fresh", 0).is_none());
    let after = get(&m, "after", 0).unwrap();
    assert_eq!(
        (after.value.as_ref(), after.version, after.mod_revision),
        (&b"3"[..], 2, 4)
    );
    assert_eq!(get(&m, "after", 3).unwrap().value, "1");
}

#[test]
fn compaction_keeps_what_is_live_at_the_compacted_revision() {
    let (_d, m) = store();
    put(&m, "a", "1"); // 2
    put(&m, "a", "2"); // 3
    put(&m, "b", "1"); // 4
    del(&m, "b", ""); // 5
    put(&m, "c", "1"); // 6
    put(&m, "a", "3"); // 7
    let mut t = m.write_txn().unwrap();
    t.compact(6).unwrap();
    t.commit(vec![]).unwrap();
    assert_eq!(m.meta().unwrap().compacted, 6);
    assert!(matches!(
        range(
            &m,
            RangeRequest {
                key: "a".into(),
                revision: 5,
                ..Default::default()
            }
        ),
        Err(crate::error::StoreError::Compacted)
    ));
    // At the compacted revision everything live then is still readable.
    assert_eq!(get(&m, "a", 6).unwrap().value, "2");
    assert!(get(&m, "b", 6).is_none());
    assert_eq!(get(&m, "c", 6).unwrap().value, "1");
    assert_eq!(get(&m, "a", 7).unwrap().value, "3");
    // Applying the compaction removed nothing yet, and the hash already counts only what
    // the compaction keeps.
    assert_eq!(kv_revisions(&m), vec![2, 3, 4, 5, 6, 7]);
    let hash = m.hash_kv(0).unwrap();
    assert_eq!(m.compacted_physically().unwrap(), 0);
    // Physically, in bounded steps: revisions 2 (a), 4 (b), 5 (b's tombstone) go; 3, 6, 7
    // remain.
    let mut steps = 0;
    loop {
        steps += 1;
        match m.compact_step(1).unwrap() {
            compaction::Step::More => continue,
            compaction::Step::Finished(rev) => {
                assert_eq!(rev, 6);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(steps, 3, "one user key per step");
    assert_eq!(kv_revisions(&m), vec![3, 6, 7]);
    assert_eq!(m.compact_step(1).unwrap(), compaction::Step::Idle(6));
    assert_eq!(m.compacted_physically().unwrap(), 6);
    assert_eq!(m.hash_kv(0).unwrap(), hash, "removing dropped history changes no hash");
    assert_eq!(get(&m, "a", 6).unwrap().value, "2");
    assert!(get(&m, "b", 6).is_none());
    let mut t = m.write_txn().unwrap();
    assert_eq!(t.compact(6).unwrap_err(), crate::error::StoreError::Compacted);
    assert_eq!(t.compact(8).unwrap_err(), crate::error::StoreError::FutureRev);
}

fn kv_revisions(m: &Mvcc) -> Vec<i64> {
    let db = m.db();
    let kcf = db.cf_handle(CF_KV).unwrap();
    db.iterator_cf(&kcf, rocksdb::IteratorMode::Start)
        .map(|i| keys::parse_revision_key(&i.unwrap().0).unwrap().0.main)
        .collect()
}

/// A compaction that arrives while the pass for an earlier one runs restarts the pass at
/// the new revision, and the progress survives a reopen.
#[test]
fn a_newer_compaction_restarts_the_pass_and_progress_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let m = Mvcc::open(dir.path()).unwrap();
        for k in ["a", "b", "c"] {
            put(&m, k, "1"); // 2, 4, 6
            put(&m, k, "2"); // 3, 5, 7
        }
        let mut t = m.write_txn().unwrap();
        t.compact(3).unwrap();
        t.commit(vec![]).unwrap();
        assert_eq!(m.compact_step(1).unwrap(), compaction::Step::More, "a's first version");
        assert_eq!(kv_revisions(&m), vec![3, 4, 5, 6, 7]);
        let mut t = m.write_txn().unwrap();
        t.compact(7).unwrap();
        t.commit(vec![]).unwrap();
    }
    let m = Mvcc::open(dir.path()).unwrap();
    assert_eq!(m.compacted_physically().unwrap(), 0);
    // The pass at 7 starts over: a keeps its one version, then b loses its old one.
    assert_eq!(m.compact_step(1).unwrap(), compaction::Step::More);
    assert_eq!(kv_revisions(&m), vec![3, 4, 5, 6, 7]);
    assert_eq!(m.compact_step(1).unwrap(), compaction::Step::More);
    assert_eq!(kv_revisions(&m), vec![3, 5, 6, 7]);
    while m.compact_step(1).unwrap() == compaction::Step::More {}
    assert_eq!(kv_revisions(&m), vec![3, 5, 7]);
    assert_eq!(m.compacted_physically().unwrap(), 7);
}

#[test]
fn ranges_count_limit_and_prefixes() {
    let (_d, m) = store();
    for k in ["p/a", "p/b", "p/c", "q"] {
        put(&m, k, k);
    }
    assert_eq!(prefix(&m, "p/", 0), ["p/a", "p/b", "p/c"]);
    assert_eq!(prefix(&m, "p/", 2), ["p/a"]);
    assert_eq!(prefix(&m, "p/", 3), ["p/a", "p/b"]);
    let r = range(
        &m,
        RangeRequest {
            key: "p/".into(),
            range_end: "p0".into(),
            limit: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 3));
    let r = range(
        &m,
        RangeRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            count_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 4));
    let r = range(
        &m,
        RangeRequest {
            key: "q".into(),
            range_end: "p".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.count, 0);
    assert!(matches!(
        range(
            &m,
            RangeRequest {
                key: "q".into(),
                revision: 99,
                ..Default::default()
            }
        ),
        Err(crate::error::StoreError::FutureRev)
    ));
}

#[test]
fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let m = Mvcc::open(&dir.path().join("db")).unwrap();
        put(&m, "k", "v");
        m.sync().unwrap();
    }
    let m = Mvcc::open(&dir.path().join("db")).unwrap();
    assert_eq!(m.meta().unwrap().revision, 2);
    assert_eq!(get(&m, "k", 0).unwrap().value, "v");
}

/// The keys under `p` as a read in a txn of the open batch `t` sees them.
fn prefix_in(t: &mut WriteTxn, p: &str) -> Vec<String> {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let r = t
        .txn(&TxnRequest {
            compare: vec![],
            success: vec![RequestOp {
                request: Some(Op::RequestRange(RangeRequest {
                    key: p.to_string().into(),
                    range_end: end.into(),
                    keys_only: true,
                    ..Default::default()
                })),
            }],
            failure: vec![],
        })
        .unwrap();
    match &r.responses[0].response {
        Some(crate::proto::etcdserverpb::response_op::Response::ResponseRange(rr)) => rr
            .kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
            .collect(),
        _ => panic!("not a range response"),
    }
}

/// A DeleteRange of many keys drops their latest records with one range deletion: exactly
/// its keys go (neighbours on both sides stay), a key written earlier in the same batch goes
/// with them, one written after it in the batch stays, history stays readable, and all of
/// it survives a reopen.
#[test]
fn a_large_delete_range_drops_exactly_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mvcc::open(&dir.path().join("db")).unwrap();
    const KEYS: usize = 1_500;
    let mut first = m.write_txn().unwrap();
    for k in ["many.", "many0", "zzz"] {
        first.put(&put_req(k, "neighbour")).unwrap();
    }
    for i in 0..KEYS {
        first.put(&put_req(&format!("many/{i:05}"), "v")).unwrap();
    }
    first.commit(vec![]).unwrap();
    drop(first);
    let before = m.meta().unwrap().revision;

    let mut t = m.write_txn().unwrap();
    t.put(&put_req("many/99999", "earlier in the batch")).unwrap();
    let r = t
        .delete_range(&DeleteRangeRequest {
            key: "many/".into(),
            range_end: "many0".into(),
            prev_kv: false,
        })
        .unwrap();
    assert_eq!(r.deleted, KEYS as i64 + 1);
    t.put(&put_req("many/00007", "after the delete")).unwrap();
    assert_eq!(
        prefix_in(&mut t, "many/"),
        ["many/00007"],
        "the batch sees its own delete"
    );
    t.commit(vec![]).unwrap();
    drop(t);

    let check = |m: &Mvcc| {
        assert_eq!(prefix(m, "many/", 0), ["many/00007"]);
        assert_eq!(get(m, "many/00007", 0).unwrap().value, "after the delete");
        for k in ["many.", "many0", "zzz"] {
            assert_eq!(get(m, k, 0).unwrap().value, "neighbour", "{k}");
        }
        assert_eq!(prefix(m, "many/", before).len(), KEYS, "history before the delete");
        assert_eq!(get(m, "many/01499", before).unwrap().value, "v");
    };
    check(&m);
    m.sync().unwrap();
    drop(m);
    check(&Mvcc::open(&dir.path().join("db")).unwrap());
}

/// A large DeleteRange alone in its batch writes its history ahead, in pieces. Until the
/// batch commits nothing of it shows (reads, watch history, the whole-state hash); a batch
/// lost after pieces reached RocksDB (a crash) leaves a state that the replay of the same
/// request turns into exactly what an uninterrupted apply gives.
#[test]
fn history_written_ahead_shows_only_with_its_batch() {
    // 1,500 keys of 2 kB: 6 MB of history, more than one piece.
    const KEYS: usize = 1_500;
    let key = |i: usize| format!("big/{i:05}/{}", "k".repeat(2_000));
    let load = |m: &Mvcc| {
        let mut t = m.write_txn().unwrap();
        for i in 0..KEYS {
            t.put(&put_req(&key(i), "v")).unwrap();
        }
        t.put(&put_req("big0", "neighbour")).unwrap();
        t.commit(vec![]).unwrap();
    };
    let delete = DeleteRangeRequest {
        key: "big/".into(),
        range_end: "big0".into(),
        prev_kv: false,
    };

    let (_d1, crashed) = store();
    load(&crashed);
    let before = crashed.meta().unwrap().revision;
    let (hash_before, _) = crashed.hash_all().unwrap();
    {
        let mut t = crashed.write_txn().unwrap();
        assert_eq!(t.delete_range(&delete).unwrap().deleted, KEYS as i64);
        // Dropped uncommitted: the pieces are in RocksDB, the batch is lost.
    }
    let pieces = crashed
        .db()
        .iterator_cf(cf(&crashed.db(), CF_KV).unwrap(), rocksdb::IteratorMode::End)
        .next()
        .unwrap()
        .unwrap();
    let (rev, _) = keys::parse_revision_key(&pieces.0).unwrap();
    assert_eq!(rev.main, before + 1, "some history was written ahead");
    assert_eq!(crashed.meta().unwrap().revision, before);
    assert_eq!(prefix(&crashed, "big/", 0).len(), KEYS, "no key is gone yet");
    assert_eq!(
        crashed.hash_all().unwrap().0,
        hash_before,
        "pending history is not state"
    );
    assert!(crashed.history(before + 1, i64::MAX, false).unwrap().changes.is_empty());

    // The replay of the same request.
    let mut t = crashed.write_txn().unwrap();
    assert_eq!(t.delete_range(&delete).unwrap().deleted, KEYS as i64);
    t.commit(vec![]).unwrap();
    drop(t);

    let (_d2, straight) = store();
    load(&straight);
    assert_eq!(del(&straight, "big/", "big0"), KEYS as i64);

    for m in [&crashed, &straight] {
        assert_eq!(m.meta().unwrap().revision, before + 1);
        assert!(prefix(m, "big/", 0).is_empty());
        assert_eq!(get(m, "big0", 0).unwrap().value, "neighbour");
        let h = m.history(before + 1, before + 1, false).unwrap();
        assert_eq!(h.changes.len(), KEYS);
        assert!(
            h.changes
                .iter()
                .enumerate()
                .all(|(i, c)| c.deleted && c.rev.sub == i as i64)
        );
    }
    assert_eq!(crashed.hash_all().unwrap(), straight.hash_all().unwrap());
}

#[test]
fn try_commit_never_waits_for_a_read_only_txn() {
    let (_d, m) = store();
    put(&m, "a", "1");
    let mut t = m.write_txn().unwrap();
    t.put(&put_req("a", "2")).unwrap();
    {
        // What a read-only txn holds while it evaluates.
        let _evaluating = m.commit_lock.read().unwrap();
        assert!(!t.try_commit(b"x".to_vec()).unwrap(), "the write would have waited");
        assert!(t.is_dirty(), "nothing was written");
    }
    assert_eq!(get(&m, "a", 0).unwrap().value, b"1".to_vec());
    assert!(t.try_commit(b"x".to_vec()).unwrap());
    assert_eq!(get(&m, "a", 0).unwrap().value, b"2".to_vec());
    assert_eq!(m.meta().unwrap().applied, b"x".to_vec());
}
