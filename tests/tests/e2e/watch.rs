//! The Watch API side by side with etcd 3.4 (history, live events, filters, errors,
//! progress), and Lodestone-only: a watch that outlives a leader kill.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use etcd_client::{
    Compare, CompareOp, EventType, Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};
use lodestone_tests::{Cluster, Kind, Options, assert_status};
use tonic::Code;

lodestone_tests::compat!(
    history_then_live,
    errors_and_cancel,
    filters_ids_and_progress,
    future_start_revision,
    periodic_progress_notifications,
    require_leader_watch_ends_without_leader,
    compacted_watcher_does_not_cost_its_stream_neighbour_events
);

async fn one(kind: Kind) -> Cluster {
    Cluster::start(kind, Options::default()).await
}

async fn next(s: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("watch response within 10 s")
        .expect("watch stream error")
        .expect("watch stream open")
}

/// (type, key, value, mod_revision) of every event until `n` events arrived; checks that
/// every response's events belong to whole revisions in order.
async fn collect(s: &mut WatchStream, n: usize) -> Vec<(EventType, String, String, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = next(s).await;
        assert!(!r.canceled(), "unexpected cancel: {:?}", r.cancel_reason());
        for e in r.events() {
            let kv = e.kv().unwrap();
            out.push((
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.mod_revision(),
            ));
        }
    }
    out
}

async fn history_then_live(kind: Kind) {
    let c = one(kind).await;
    let mut cl = c.client().await;
    cl.put("w/a", "1", None).await.unwrap(); // rev 2
    cl.put("w/b", "1", None).await.unwrap(); // rev 3
    cl.put("w/a", "2", None).await.unwrap(); // rev 4
    cl.delete("w/b", None).await.unwrap(); // rev 5
    cl.put("other", "x", None).await.unwrap(); // rev 6
    // Two keys at one revision.
    cl.txn(Txn::new().and_then([TxnOp::put("w/c", "1", None), TxnOp::put("w/d", "1", None)]))
        .await
        .unwrap(); // rev 7

    let mut s = cl
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_start_revision(2).with_prev_key()),
        )
        .await
        .unwrap();
    let created = next(&mut s).await;
    assert!(created.created());
    assert_eq!(created.header().unwrap().revision(), 7);
    let got = collect(&mut s, 6).await;
    use EventType::{Delete, Put};
    assert_eq!(
        got,
        vec![
            (Put, "w/a".into(), "1".into(), 2),
            (Put, "w/b".into(), "1".into(), 3),
            (Put, "w/a".into(), "2".into(), 4),
            (Delete, "w/b".into(), "".into(), 5),
            (Put, "w/c".into(), "1".into(), 7),
            (Put, "w/d".into(), "1".into(), 7),
        ]
    );

    // Live: a put and a delete with their previous versions.
    cl.put("w/a", "3", None).await.unwrap(); // rev 8
    let r = next(&mut s).await;
    let e = &r.events()[0];
    assert_eq!(e.kv().unwrap().value(), b"3");
    assert_eq!(e.kv().unwrap().version(), 3);
    assert_eq!(e.prev_kv().unwrap().value(), b"2");
    cl.delete("w/a", None).await.unwrap(); // rev 9
    let r = next(&mut s).await;
    let e = &r.events()[0];
    assert_eq!(e.event_type(), EventType::Delete);
    assert_eq!(e.kv().unwrap().mod_revision(), 9);
    assert_eq!(e.prev_kv().unwrap().value(), b"3");
    assert_eq!(r.header().unwrap().revision(), 9);

    // A txn deleting several keys is one response (a revision is never split).
    cl.txn(
        Txn::new()
            .when([Compare::version("w/c", CompareOp::Greater, 0)])
            .and_then([TxnOp::delete(
                "w/",
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )]),
    )
    .await
    .unwrap(); // rev 10
    let r = next(&mut s).await;
    assert_eq!(r.events().len(), 2);
    assert!(r.events().iter().all(|e| e.kv().unwrap().mod_revision() == 10));

    // Resuming from last revision + 1 yields nothing old.
    let mut again = cl
        .watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(10)))
        .await
        .unwrap();
    assert!(next(&mut again).await.created());
    let r = next(&mut again).await;
    assert_eq!(r.events().len(), 2);
    assert_eq!(r.events()[0].kv().unwrap().mod_revision(), 10);
    cl.put("w/z", "1", None).await.unwrap();
    let r = next(&mut again).await;
    assert_eq!(r.events()[0].kv().unwrap().key(), b"w/z");
}

async fn errors_and_cancel(kind: Kind) {
    let c = one(kind).await;
    let mut cl = c.client().await;
    for i in 0..5 {
        cl.put("k", format!("{i}"), None).await.unwrap(); // revs 2..=6
    }
    cl.compact(4, None).await.unwrap();

    // A compacted start revision: created, then canceled with the compact revision.
    let mut s = cl
        .watch("k", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .unwrap();
    let r = next(&mut s).await;
    assert!(r.created());
    let r = if r.canceled() { r } else { next(&mut s).await };
    assert!(r.canceled());
    assert_eq!(r.compact_revision(), 4);

    // Watching exactly at the compacted revision works.
    let mut s = cl
        .watch("k", Some(WatchOptions::new().with_start_revision(4)))
        .await
        .unwrap();
    assert!(next(&mut s).await.created());
    let got = collect(&mut s, 3).await;
    assert_eq!(got.iter().map(|e| e.3).collect::<Vec<_>>(), vec![4, 5, 6]);

    // An empty range is refused at creation.
    let mut s = cl.watch("b", Some(WatchOptions::new().with_range("a"))).await.unwrap();
    let r = next(&mut s).await;
    assert!(r.created() && r.canceled());
    assert_eq!(r.cancel_reason(), "mvcc: watcher range is empty");

    // Duplicate client-chosen ids on one stream.
    let mut s = cl.watch("x", Some(WatchOptions::new().with_watch_id(7))).await.unwrap();
    let r = next(&mut s).await;
    assert!(r.created());
    assert_eq!(r.watch_id(), 7);
    s.watch("y", Some(WatchOptions::new().with_watch_id(7))).await.unwrap();
    let r = next(&mut s).await;
    assert!(r.created() && r.canceled());
    assert_eq!(
        r.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );

    // Cancel: confirmed, and no events afterwards.
    s.cancel(7).await.unwrap();
    let r = next(&mut s).await;
    assert!(r.canceled());
    assert_eq!(r.watch_id(), 7);
    cl.put("x", "after-cancel", None).await.unwrap();
    s.watch("marker", None).await.unwrap();
    let r = next(&mut s).await;
    assert!(r.created(), "nothing for the canceled watcher came first");
    cl.put("marker", "1", None).await.unwrap();
    let r = next(&mut s).await;
    assert_eq!(r.events()[0].kv().unwrap().key(), b"marker");
}

async fn filters_ids_and_progress(kind: Kind) {
    let c = one(kind).await;
    let mut cl = c.client().await;
    // Auto-assigned ids start at 0 and count up on one stream.
    let mut s = cl
        .watch(
            "f",
            Some(WatchOptions::new().with_prefix().with_filters([WatchFilterType::NoPut])),
        )
        .await
        .unwrap();
    let r = next(&mut s).await;
    assert_eq!(r.watch_id(), 0);
    s.watch(
        "f",
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_filters([WatchFilterType::NoDelete]),
        ),
    )
    .await
    .unwrap();
    let r = next(&mut s).await;
    assert_eq!(r.watch_id(), 1);
    cl.put("f1", "v", None).await.unwrap();
    cl.delete("f1", None).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let r = next(&mut s).await;
        for e in r.events() {
            seen.push((r.watch_id(), e.event_type()));
        }
    }
    seen.sort_by_key(|(id, _)| *id);
    assert_eq!(seen, vec![(0, EventType::Delete), (1, EventType::Put)]);

    // A progress request: an empty response whose revision is the current one.
    let rev = cl
        .put("unwatched", "v", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    s.request_progress().await.unwrap();
    let r = next(&mut s).await;
    assert!(r.events().is_empty() && !r.created() && !r.canceled());
    assert_eq!(r.header().unwrap().revision(), rev);
    assert_eq!(r.watch_id(), -1);
}

/// Two watchers on one stream, one starting below the compaction and one above it, created
/// together on a member whose watch cache is cold (restarted): the first is canceled with
/// the compact revision, the second still gets every event from its start revision. (A
/// catch-up round that started at the compacted cursor used to find no history and move
/// the other watcher's cursor past revisions it never received.)
async fn compacted_watcher_does_not_cost_its_stream_neighbour_events(kind: Kind) {
    use ::lodestone::proto::etcdserverpb::watch_client::WatchClient;
    use ::lodestone::proto::etcdserverpb::watch_request::RequestUnion;
    use ::lodestone::proto::etcdserverpb::{WatchCreateRequest, WatchRequest};

    let mut c = one(kind).await;
    let mut cl = c.client().await;
    for i in 2..=20 {
        cl.put("c/k", format!("{i}"), None).await.unwrap(); // revs 2..=20
    }
    cl.compact(10, Some(etcd_client::CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    drop(cl);
    c.kill(0);
    c.restart(0);
    c.wait_healthy(Duration::from_secs(30)).await;

    // Both creates are queued before the stream opens, so the member sees them together.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for start in [5, 12] {
        let create = WatchCreateRequest {
            key: b"c/".to_vec().into(),
            range_end: b"c0".to_vec().into(),
            start_revision: start,
            ..Default::default()
        };
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .await
        .unwrap();
    }
    let mut raw = WatchClient::connect(c.members[0].client_url()).await.unwrap();
    let mut s = raw
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (mut created, mut canceled, mut events) = (Vec::new(), None, Vec::new());
    while created.len() < 2 || canceled.is_none() || events.len() < 9 {
        let r = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .unwrap_or_else(|_| panic!("stalled: created {created:?}, canceled {canceled:?}, events {events:?}"))
            .unwrap()
            .expect("stream open");
        if r.created {
            created.push(r.watch_id);
        }
        if r.canceled {
            assert_eq!(r.watch_id, 0, "only the compacted watcher is canceled");
            assert!(canceled.is_none(), "canceled twice");
            canceled = Some(r.compact_revision);
        }
        for e in &r.events {
            assert_eq!(r.watch_id, 1, "the canceled watcher got an event");
            events.push(e.kv.as_ref().unwrap().mod_revision);
        }
    }
    assert_eq!(created, vec![0, 1]);
    assert_eq!(canceled, Some(10));
    assert_eq!(events, (12..=20).collect::<Vec<i64>>());
    drop(tx);
}

async fn future_start_revision(kind: Kind) {
    let c = one(kind).await;
    let mut cl = c.client().await;
    cl.put("k", "old", None).await.unwrap(); // rev 2
    let mut s = cl
        .watch("k", Some(WatchOptions::new().with_start_revision(5)))
        .await
        .unwrap();
    assert!(next(&mut s).await.created());
    cl.put("k", "3", None).await.unwrap();
    cl.put("k", "4", None).await.unwrap();
    cl.put("k", "5", None).await.unwrap();
    let got = collect(&mut s, 1).await;
    assert_eq!(got[0].3, 5, "the first event is the start revision, never an older one");
    assert_eq!(got.len(), 1);
}

/// `--experimental-watch-progress-notify-interval`: a quiet watcher created with
/// `progress_notify` gets empty responses at the current revision; one created without it
/// gets none.
async fn periodic_progress_notifications(kind: Kind) {
    let c = Cluster::start(
        kind,
        Options {
            extra: vec!["--experimental-watch-progress-notify-interval".into(), "300ms".into()],
            ..Default::default()
        },
    )
    .await;
    let mut cl = c.client().await;
    let rev = cl.put("k", "v", None).await.unwrap().header().unwrap().revision();
    let mut notified = cl
        .watch("k", Some(WatchOptions::new().with_progress_notify()))
        .await
        .unwrap();
    let created = next(&mut notified).await;
    assert!(created.created());
    let mut quiet = cl.watch("k", None).await.unwrap();
    assert!(next(&mut quiet).await.created());
    for _ in 0..2 {
        let r = next(&mut notified).await;
        assert!(r.events().is_empty() && !r.created() && !r.canceled(), "{r:?}");
        assert_eq!(r.watch_id(), created.watch_id());
        assert_eq!(r.header().unwrap().revision(), rev);
    }
    let nothing = tokio::time::timeout(Duration::from_millis(1200), quiet.message()).await;
    assert!(nothing.is_err(), "a watcher without progress_notify got {nothing:?}");
}

/// A watch stream opened with `hasleader` metadata ends with "no leader" once its member has
/// lost its leader (after three election timeouts).
async fn require_leader_watch_ends_without_leader(kind: Kind) {
    let mut c = Cluster::start(kind, Options::members(3)).await;
    // Watch on the leader, the harder case: it must notice that it lost its quorum (etcd's
    // check-quorum), where a follower only notices that its leader went quiet.
    let watched = c.leader().await;
    let opts = ConnectOptions::new().with_require_leader(true);
    let mut cl = Client::connect([c.members[watched].endpoint()], Some(opts))
        .await
        .unwrap();
    let mut s = cl.watch("k", None).await.unwrap();
    assert!(next(&mut s).await.created());
    for i in (0..3).filter(|i| *i != watched) {
        c.kill(i);
    }
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.message().await {
                Ok(Some(r)) if r.canceled() => panic!("canceled instead of ended: {}", r.cancel_reason()),
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream closed without a status"),
                Err(e) => break e,
            }
        }
    })
    .await
    .expect("the stream ends within 20 s");
    assert_status(end, Code::Unavailable, "etcdserver: no leader");
    // Three election timeouts (500 ms each) without a leader, not at the first missed beat.
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
}

/// Lodestone only: watchers on a follower and on the leader while the leader is killed
/// under a write load. The follower's watch continues; the leader's watch is resumed on a
/// surviving member from its last revision + 1. Both see every acknowledged write exactly
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_leader_kill_without_gap_or_duplicate() {
    let mut c = Cluster::start(
        Kind::Lodestone,
        Options {
            size: 3,
            ..Default::default()
        },
    )
    .await;
    c.wait_published().await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let survivor = (leader + 2) % 3;
    let opts = || Some(WatchOptions::new().with_prefix().with_start_revision(1));
    let mut on_follower = c.client_of(follower).await.watch("load/", opts()).await.unwrap();
    let mut on_leader = c.client_of(leader).await.watch("load/", opts()).await.unwrap();
    assert!(next(&mut on_follower).await.created());
    assert!(next(&mut on_leader).await.created());

    let endpoints = vec![c.members[follower].endpoint(), c.members[survivor].endpoint()];
    let writer = tokio::spawn(async move {
        let mut cl = lodestone_tests::connect(&endpoints).await;
        let mut acked = Vec::new();
        let start = std::time::Instant::now();
        let mut i = 0;
        while start.elapsed() < Duration::from_secs(6) {
            match cl.put(format!("load/{i:05}"), format!("{i}"), None).await {
                Ok(r) => acked.push((format!("load/{i:05}"), r.header().unwrap().revision())),
                // Failures can be immediate: never spin without yielding.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
            i += 1;
        }
        acked
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.kill(leader);
    let acked = writer.await.unwrap();
    assert!(acked.len() > 20, "too few writes acknowledged: {}", acked.len());
    let last_acked = acked.last().unwrap().1;

    // Drain a stream until it delivered `last_acked`, or ends.
    async fn drain(s: &mut WatchStream, until: i64, seen: &mut Vec<(String, i64)>) -> bool {
        loop {
            if seen.last().is_some_and(|l| l.1 >= until) {
                return true;
            }
            match tokio::time::timeout(Duration::from_secs(10), s.message()).await {
                Ok(Ok(Some(r))) => {
                    assert!(!r.canceled(), "watch canceled: {}", r.cancel_reason());
                    for e in r.events() {
                        let kv = e.kv().unwrap();
                        seen.push((kv.key_str().unwrap().to_string(), kv.mod_revision()));
                    }
                }
                _ => return false,
            }
        }
    }
    let mut from_follower = Vec::new();
    assert!(
        drain(&mut on_follower, last_acked, &mut from_follower).await,
        "the follower's watch stopped"
    );
    let mut from_leader = Vec::new();
    drain(&mut on_leader, last_acked, &mut from_leader).await;
    if from_leader.last().is_none_or(|l| l.1 < last_acked) {
        let resume = from_leader.last().map_or(1, |l| l.1 + 1);
        let mut s = c
            .client_of(survivor)
            .await
            .watch(
                "load/",
                Some(WatchOptions::new().with_prefix().with_start_revision(resume)),
            )
            .await
            .unwrap();
        assert!(next(&mut s).await.created());
        assert!(
            drain(&mut s, last_acked, &mut from_leader).await,
            "resumed watch stalled"
        );
    }
    for (name, seen) in [("follower", &from_follower), ("leader, resumed", &from_leader)] {
        let revs: Vec<i64> = seen.iter().map(|s| s.1).collect();
        assert!(
            revs.windows(2).all(|w| w[0] < w[1]),
            "{name}: revisions not strictly increasing (gap-free resume must not duplicate)"
        );
        for (key, rev) in &acked {
            assert!(
                seen.iter().any(|(k, r)| k == key && r == rev),
                "{name}: acknowledged write {key}@{rev} never delivered"
            );
        }
    }
}
