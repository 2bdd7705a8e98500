//! The etcd Watch service: one bidirectional stream carries many watchers.
//!
//! A stream's watchers live in its response body ([`outbound`]), with no task or channel of
//! ours: the HTTP/2 server's task for the stream polls it, and a round runs whenever the
//! client has taken the last response. A watcher
//! is a key range and a cursor (the next revision it has not seen). Whenever the member's
//! revision, as the watch cache publishes it, moves past a cursor, a round takes the missing
//! revisions (at most [`REVS_PER_ROUND`] per round, whole revisions only) from the member's
//! shared cache of recent changes (`watch_cache`), or reads them from MVCC history when the
//! cache no longer holds them, and queues each watcher its events. Watchers that fall behind
//! therefore catch up from storage, and memory never grows with a backlog; gRPC flow control
//! pushes back on the stream when the client reads slowly.
//!
//! Guarantees, as etcd gives them: events in revision order, no duplicates, a revision
//! never split across responses (unless the watcher asked for fragments), resumable from
//! any retained revision. A cursor below the compacted revision cancels the watcher with
//! `compact_revision` set. Progress notifications are only sent when every watcher on the
//! stream has caught up, so a bookmark never runs ahead of undelivered events.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Access;
use crate::error::StoreError;
use crate::member::Member;
use crate::member::auth::Credentials;
use crate::member::watch_cache::Interest;
use crate::metrics;
use crate::mvcc::KeyRange;
use crate::mvcc::history::History;
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use crate::proto::mvccpb::{Event, event::EventType};

/// etcd's `watchBatchMaxRevs`: revisions read and sent per round.
const REVS_PER_ROUND: i64 = 1000;
/// gRPC framing allowance over `--max-request-bytes` (fragmenting threshold, as etcd's).
const FRAGMENT_OVERHEAD: usize = 512 * 1024;

const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// etcd puts the gRPC form of its PermissionDenied error in the cancel reason.
const ERR_PERMISSION_DENIED: &str = "rpc error: code = PermissionDenied desc = etcdserver: permission denied";
/// etcd's `clientv3.InvalidWatchID`.
const NO_WATCH_ID: i64 = -1;

pub struct WatchService {
    pub member: Arc<Member>,
}

struct Watcher {
    range: KeyRange,
    /// The next revision this watcher has not been sent.
    next: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
    /// Keeps the shared cache following (with previous versions if this watcher wants them).
    _interest: Interest,
}

impl Watcher {
    fn wants(&self, deleted: bool, key: &[u8]) -> bool {
        if deleted && self.no_delete || !deleted && self.no_put {
            return false;
        }
        self.range.contains(key)
    }
}

/// The state of one stream: its watchers and what it still owes the client.
struct StreamState {
    member: Arc<Member>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// A WatchProgressRequest waiting for every watcher to catch up, with the store revision
    /// when it arrived: the answer's revision is at least that (every write acknowledged
    /// before the request), so it can serve as the bookmark of a consistent read.
    progress_requested: Option<i64>,
    /// Responses made and not yet taken by the stream's sender (see [`outbound`]).
    out: VecDeque<Result<WatchResponse, Status>>,
    /// What the stream was opened with: each create request is checked as its user.
    credentials: Credentials,
}

type Outbound = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

impl StreamState {
    fn header(&self) -> Option<crate::proto::etcdserverpb::ResponseHeader> {
        self.member.header(self.member.revision())
    }

    /// Queues a response for the client.
    fn send(&mut self, r: WatchResponse) {
        self.out.push_back(Ok(r));
    }

    /// Handles one client request.
    async fn handle(&mut self, req: WatchRequest) {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) if self.watchers.remove(&c.watch_id).is_some() => {
                let r = WatchResponse {
                    header: self.header(),
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                };
                self.send(r);
            }
            // Canceling a watcher the stream does not have answers nothing, as etcd does.
            Some(RequestUnion::CancelRequest(_)) => {}
            Some(RequestUnion::ProgressRequest(_)) => {
                let now = self.member.revision();
                self.progress_requested = Some(self.progress_requested.map_or(now, |r| r.max(now)));
            }
            None => {}
        }
    }

    /// With auth enabled, the stream's user must be allowed to read the whole watched range
    /// (a from-key watch is every key from its start, never just the start key).
    async fn permitted(&self, c: &WatchCreateRequest) -> bool {
        match self.member.who(&self.credentials).await {
            Ok(who) => self
                .member
                .auth()
                .check_range(&who, &c.key, &c.range_end, Access::Read)
                .is_ok(),
            Err(_) => false,
        }
    }

    async fn create(&mut self, mut c: WatchCreateRequest) {
        if c.key.is_empty() {
            c.key = vec![0u8].into();
        }
        let range = KeyRange::new(&c.key, &c.range_end);
        let refuse = |reason: &str| WatchResponse {
            header: self.header(),
            watch_id: NO_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        if !self.permitted(&c).await {
            let r = refuse(ERR_PERMISSION_DENIED);
            self.send(r);
            return;
        }
        if range.is_empty() {
            let r = refuse(ERR_EMPTY_RANGE);
            self.send(r);
            return;
        }
        if c.start_revision < 0 {
            let r = refuse(&StoreError::Compacted.to_string());
            self.send(r);
            return;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                let r = refuse(ERR_DUPLICATE_ID);
                self.send(r);
                return;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        };
        let current = self.member.revision();
        let filters: Vec<i32> = c.filters.clone();
        let w = Watcher {
            range,
            next: if c.start_revision == 0 {
                current + 1
            } else {
                c.start_revision
            },
            prev_kv: c.prev_kv,
            no_put: filters.contains(&(FilterType::Noput as i32)),
            no_delete: filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            _interest: self.member.watch_cache().register(c.prev_kv),
        };
        self.watchers.insert(id, w);
        let r = WatchResponse {
            header: self.member.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        self.send(r);
    }

    fn behind(&self, current: i64) -> bool {
        self.watchers.values().any(|w| w.next <= current)
    }

    /// One catch-up round: reads the revisions the furthest-behind watcher needs (bounded)
    /// and sends every watcher its part. False when the history could not be read (the
    /// stream then ends with the error).
    async fn sync(&mut self, current: i64) -> bool {
        // Watchers whose cursor fell below the compaction go first: the history they need is
        // gone, and a round starting at their cursor would find nothing to send the others,
        // whose cursors would then skip revisions they never received (etcd cancels them
        // before choosing the round's start, too).
        self.cancel_compacted(self.member.state().compacted());
        let Some(from) = self
            .watchers
            .values()
            .filter(|w| w.next <= current)
            .map(|w| w.next)
            .min()
        else {
            return true;
        };
        let to = current.min(from.saturating_add(REVS_PER_ROUND - 1));
        let with_prev = self.watchers.values().any(|w| w.prev_kv && w.next <= to);
        let history = match self.member.watch_cache().get(from, to, with_prev) {
            Some(changes) => History {
                changes,
                compacted: self.member.state().compacted(),
                revision: to,
            },
            None => {
                metrics::watch_storage_read();
                let sm = self.member.state().clone();
                match tokio::task::spawn_blocking(move || sm.mvcc.history(from, to, with_prev)).await {
                    Ok(Ok(h)) => h,
                    Ok(Err(e)) => {
                        self.out.push_back(Err(e.into()));
                        return false;
                    }
                    Err(e) => {
                        self.out.push_back(Err(Status::internal(e.to_string())));
                        return false;
                    }
                }
            }
        };
        if from < history.compacted {
            // A compaction landed between the check above and the read: the view holds
            // nothing for this round. Cancel who needs the lost history; the rest are read
            // again in the next round.
            self.cancel_compacted(history.compacted);
            return true;
        }
        let to = to.min(history.revision);
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let w = &self.watchers[&id];
            if w.next > to {
                continue;
            }
            let events = events_for(w, &history, to);
            let fragment = w.fragment;
            if let Some(w) = self.watchers.get_mut(&id) {
                w.next = to + 1;
            }
            if events.is_empty() {
                continue;
            }
            let header = self.member.header(to);
            for r in responses(id, header, events, fragment, self.fragment_limit()) {
                self.send(r);
            }
        }
        true
    }

    /// Cancels, with `compact_revision` set, every watcher whose cursor is below the
    /// compacted revision.
    fn cancel_compacted(&mut self, compacted: i64) {
        let doomed: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.next < compacted)
            .map(|(id, _)| *id)
            .collect();
        for id in doomed {
            self.watchers.remove(&id);
            let r = WatchResponse {
                header: self.header(),
                watch_id: id,
                canceled: true,
                compact_revision: compacted,
                ..Default::default()
            };
            self.send(r);
        }
    }

    fn fragment_limit(&self) -> usize {
        self.member.config().max_request_bytes + FRAGMENT_OVERHEAD
    }

    /// Answers a pending WatchProgressRequest once the stream has followed the store to the
    /// revision the request saw and nothing older is still owed.
    fn maybe_progress(&mut self, current: i64) {
        match self.progress_requested {
            Some(seen) if current >= seen && !self.behind(current) => {}
            _ => return,
        }
        self.progress_requested = None;
        let r = WatchResponse {
            header: self.member.header(current),
            watch_id: NO_WATCH_ID,
            ..Default::default()
        };
        self.send(r);
    }

    /// Periodic progress for watchers that asked for it and are caught up.
    fn periodic_progress(&mut self, current: i64) {
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && w.next > current)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let r = WatchResponse {
                header: self.member.header(current),
                watch_id: id,
                ..Default::default()
            };
            self.send(r);
        }
    }
}

/// The events of `history` up to `to` that watcher `w` wants, from its cursor on.
fn events_for(w: &Watcher, history: &History, to: i64) -> Vec<Event> {
    history
        .changes
        .iter()
        .filter(|c| c.rev.main >= w.next && c.rev.main <= to && w.wants(c.deleted, &c.kv.key))
        .map(|c| Event {
            r#type: if c.deleted { EventType::Delete } else { EventType::Put } as i32,
            kv: Some(c.kv.clone()),
            prev_kv: if w.prev_kv { c.prev.clone() } else { None },
        })
        .collect()
}

/// One response, or several with `fragment` set when the watcher allows it and the events
/// exceed `limit` bytes.
fn responses(
    id: i64,
    header: Option<crate::proto::etcdserverpb::ResponseHeader>,
    events: Vec<Event>,
    fragment: bool,
    limit: usize,
) -> Vec<WatchResponse> {
    let one = |events: Vec<Event>, more: bool| WatchResponse {
        header,
        watch_id: id,
        events,
        fragment: more,
        ..Default::default()
    };
    // Sizes are measured only for a watcher that may be fragmented: every other one (nearly
    // all, and each of a fan-out's thousand on every put) skips walking its events for it.
    if !fragment || events.len() < 2 || events.iter().map(|e| e.encoded_len() + 4).sum::<usize>() <= limit {
        return vec![one(events, false)];
    }
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for e in events {
        let n = e.encoded_len() + 4;
        if !cur.is_empty() && size + n > limit {
            out.push(one(std::mem::take(&mut cur), true));
            size = 0;
        }
        size += n;
        cur.push(e);
    }
    out.push(one(cur, false));
    out
}

/// What drives one watch stream: its state, the client's requests, and what wakes it.
struct Run {
    member: Arc<Member>,
    inbound: Streaming<WatchRequest>,
    st: StreamState,
    /// The shared cache's revision: woken by it, a caught-up stream finds the new revisions
    /// already read.
    revision: tokio::sync::watch::Receiver<i64>,
    progress: tokio::time::Interval,
    /// Set with `hasleader`: how often the member's leader is checked.
    leader_check: Option<tokio::time::Interval>,
    leaderless_since: Option<Instant>,
    ended: bool,
}

impl Run {
    /// One round: waits for what comes first (a client request, new revisions, a timer) and
    /// handles it, queuing responses. False when the stream ends: the client left, the
    /// member shuts down, or (with `hasleader`) it has had no leader for three election
    /// timeouts.
    async fn step(&mut self) -> bool {
        let current = *self.revision.borrow_and_update();
        self.st.maybe_progress(current);
        if !self.st.out.is_empty() {
            // A progress answer is due now, not after the next wake-up.
            return true;
        }
        let behind = self.st.behind(current);
        let checks_leader = self.leader_check.is_some();
        tokio::select! {
            biased;
            _ = self.member.shutdown().cancelled() => false,
            req = self.inbound.next() => match req {
                Some(Ok(req)) => {
                    self.st.handle(req).await;
                    true
                }
                _ => false,
            },
            _ = std::future::ready(()), if behind => self.st.sync(current).await,
            r = self.revision.changed(), if !behind => r.is_ok(),
            _ = self.progress.tick() => {
                self.st.periodic_progress(current);
                true
            }
            _ = async { self.leader_check.as_mut().expect("checked").tick().await }, if checks_leader => {
                if self.member.leader().is_some() {
                    self.leaderless_since = None;
                } else {
                    let since = *self.leaderless_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.member.config().election() * 3 {
                        self.st.out.push_back(Err(StoreError::NoLeader.into()));
                        return false;
                    }
                }
                true
            }
        }
    }
}

/// The stream of responses, made as the connection asks for them: each poll hands out what
/// is queued, or runs rounds until something is. No task or channel stands between a new
/// revision and the connection (one wake-up per watcher and event instead of two), the
/// client's pace bounds the work (a round is made only when the last response was taken),
/// and a client that leaves drops the stream and everything with it.
fn outbound(member: Arc<Member>, inbound: Streaming<WatchRequest>, st: StreamState, require_leader: bool) -> Outbound {
    let interval = member
        .config()
        .experimental_watch_progress_notify_interval
        .max(Duration::from_millis(10));
    let run = Run {
        revision: member.watch_cache().revision(),
        progress: tokio::time::interval_at(tokio::time::Instant::now() + interval, interval),
        leader_check: require_leader.then(|| tokio::time::interval(member.config().election())),
        leaderless_since: None,
        ended: false,
        member,
        inbound,
        st,
    };
    Box::pin(futures::stream::unfold(run, |mut run| async move {
        loop {
            if let Some(r) = run.st.out.pop_front() {
                return Some((r, run));
            }
            if run.ended {
                return None;
            }
            run.ended = !run.step().await;
        }
    }))
}

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<Outbound>, Status> {
        let require_leader = request
            .metadata()
            .get("hasleader")
            .is_some_and(|v| v.as_bytes() == b"true");
        let credentials = super::auth::credentials(&request);
        let inbound = request.into_inner();
        let st = StreamState {
            member: self.member.clone(),
            watchers: BTreeMap::new(),
            next_id: 0,
            progress_requested: None,
            out: VecDeque::new(),
            credentials,
        };
        Ok(Response::new(outbound(
            self.member.clone(),
            inbound,
            st,
            require_leader,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::KeyValue;

    fn ev(key: &str, value_len: usize) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec().into(),
                value: vec![b'v'; value_len].into(),
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn fragments_only_when_asked_and_oversized() {
        let events: Vec<Event> = (0..10).map(|i| ev(&format!("k{i}"), 100)).collect();
        assert_eq!(responses(1, None, events.clone(), false, 50).len(), 1);
        assert_eq!(responses(1, None, events.clone(), true, 1 << 20).len(), 1);
        let parts = responses(1, None, events.clone(), true, 250);
        assert!(parts.len() > 1);
        assert!(parts[..parts.len() - 1].iter().all(|r| r.fragment));
        assert!(!parts.last().unwrap().fragment);
        let back: Vec<Event> = parts.into_iter().flat_map(|r| r.events).collect();
        assert_eq!(back, events, "fragments carry every event once, in order");
        assert_eq!(responses(1, None, vec![ev("big", 1000)], true, 10).len(), 1);
    }
}
