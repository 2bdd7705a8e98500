//! Writes a follower forwards to the leader, batched.
//!
//! A client write that reaches a follower goes to the leader over the peer transport. Sent
//! one call each, every forwarded write costs a gRPC call on both members (an HTTP/2 stream,
//! its headers and trailers, a task on the leader) and its own hand-off to consensus: under
//! a 64-client load spread over three members, two writes in three are forwarded, and those
//! calls took about a quarter of the members' CPU per write (measured against the same load
//! sent to the leader alone). etcd sends them inside its Raft message stream instead.
//!
//! So each follower keeps one lane per leader: a write is sent at once while fewer than
//! [`MAX_IN_FLIGHT`] batches are on their way to that leader, and otherwise waits in the
//! lane; when a batch is answered, everything waiting goes in the next one (`ProposeMany`,
//! proposed on the leader in one hand-off to consensus). A lone write therefore pays no
//! delay, and a loaded follower sends as many writes per call as arrived during the last.
//!
//! Every write gets its own answer, and the log index the leader applied it at (see
//! [`Forwarded`]). A refusal of the whole call (transport trouble, or a
//! leader stopping) answers each write as a failed single call would: the leader's refusal,
//! or `LeaderChanged` when the call itself failed, since the leader may have acted on it. A
//! write whose caller gave up (its request timed out) before its batch left is not sent.
//! Members that predate `ProposeMany` answer `Unimplemented`; the lane then sends that
//! batch one `Propose` each (a rolling upgrade has both versions side by side).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::route::answer;
use crate::error::{Result, StoreError};
use crate::metrics;
use crate::peer::client::Client;
use crate::peer::envelope;
use crate::proto::lodestone::{self as pb, CommandBatch};
use crate::raft::NodeId;

/// Batches on their way to one leader at most; a write arriving while this many are out
/// waits for the next.
const MAX_IN_FLIGHT: usize = 2;
/// Writes one batch carries at most (openraft takes up to 4,096 writes in one hand-off).
const MAX_BATCH: usize = 1024;

/// A forwarded write's answer.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The leader's answer, or why there is none.
    pub result: Result<pb::CommandResult>,
    /// The log index the leader applied the write at; 0 when unknown (the call failed, or
    /// the leader predates the field). The member that forwarded the write answers its
    /// client only once it applied this index itself, as etcd's member does.
    pub index: u64,
}

impl Forwarded {
    fn failed(e: StoreError) -> Forwarded {
        Forwarded {
            result: Err(e),
            index: 0,
        }
    }

    /// The leader's answer to one write: its result, refusal at apply included.
    fn answered(r: pb::CommandResult) -> Forwarded {
        let index = r.log_index;
        Forwarded {
            result: crate::apply::outcome(r),
            index,
        }
    }
}

/// A forwarded write waiting for its batch, and where its answer goes.
struct Pending {
    cmd: pb::Command,
    size: usize,
    answer: oneshot::Sender<Forwarded>,
}

/// The writes waiting for one leader, and the batches out to it.
#[derive(Default)]
struct Lane {
    waiting: Vec<Pending>,
    in_flight: usize,
}

impl Lane {
    /// Takes the next batch from the front: at most [`MAX_BATCH`] writes and `max_bytes` of
    /// commands (one write always goes, whatever its size). Writes whose caller gave up are
    /// dropped here, unsent.
    fn take(&mut self, max_bytes: usize) -> Vec<Pending> {
        self.waiting.retain(|p| !p.answer.is_closed());
        let mut bytes = 0;
        let n = self
            .waiting
            .iter()
            .take(MAX_BATCH)
            .take_while(|p| {
                bytes += p.size;
                bytes <= max_bytes
            })
            .count()
            .max(1)
            .min(self.waiting.len());
        self.waiting.drain(..n).collect()
    }
}

/// The lanes, and the leaders known to take `ProposeMany`.
#[derive(Default)]
struct State {
    lanes: HashMap<NodeId, Lane>,
    /// Leaders that answered a `ProposeMany`: their batches are sent without keeping a copy
    /// for the one-call-each fallback.
    batching: HashSet<NodeId>,
}

/// Batches the writes this member forwards to its leader.
pub struct Forwarder {
    state: Mutex<State>,
    /// A batch carries at most this many bytes of commands (`--max-request-bytes`, so it
    /// stays far inside what a peer accepts).
    max_bytes: usize,
    /// How long one call may take before its writes are answered `LeaderChanged`.
    timeout: Duration,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Forwarder {
    pub fn new(max_bytes: usize, timeout: Duration, shutdown: CancellationToken, tasks: TaskTracker) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            state: Mutex::new(State::default()),
            max_bytes,
            timeout,
            shutdown,
            tasks,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forwards `cmd` (`size` bytes encoded, as the caller measured it against
    /// `--max-request-bytes`) to `leader`, reached through `client`, and returns its answer.
    pub async fn propose(self: &Arc<Self>, leader: NodeId, client: Client, cmd: pb::Command, size: usize) -> Forwarded {
        let (tx, rx) = oneshot::channel();
        let batch = {
            let mut state = self.state();
            let lane = state.lanes.entry(leader).or_default();
            lane.waiting.push(Pending { cmd, size, answer: tx });
            if lane.in_flight < MAX_IN_FLIGHT {
                lane.in_flight += 1;
                Some(lane.take(self.max_bytes))
            } else {
                None
            }
        };
        if let Some(batch) = batch {
            self.tasks.spawn(self.clone().send(leader, client, batch));
        }
        // The sender answers every write it took; a dropped answer means it was stopped.
        rx.await.unwrap_or_else(|_| Forwarded::failed(StoreError::Stopped))
    }

    /// Sends `batch`, then whatever waits in the lane meanwhile, until the lane is empty.
    async fn send(self: Arc<Self>, leader: NodeId, mut client: Client, mut batch: Vec<Pending>) {
        loop {
            if !batch.is_empty() {
                self.call(leader, &mut client, batch).await;
            }
            let mut state = self.state();
            let Some(lane) = state.lanes.get_mut(&leader) else {
                return;
            };
            if lane.waiting.is_empty() || self.shutdown.is_cancelled() {
                for p in lane.waiting.drain(..) {
                    let _ = p.answer.send(Forwarded::failed(StoreError::Stopped));
                }
                lane.in_flight -= 1;
                if lane.in_flight == 0 {
                    state.lanes.remove(&leader);
                }
                return;
            }
            batch = lane.take(self.max_bytes);
        }
    }

    /// One `ProposeMany` call to `leader`; answers every write of `batch`.
    async fn call(&self, leader: NodeId, client: &mut Client, batch: Vec<Pending>) {
        metrics::forward_call(batch.len());
        let (commands, answers): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, p.answer)).unzip();
        let proven = self.state().batching.contains(&leader);
        // Until the leader has shown it takes batches, keep the commands for the fallback.
        let fallback = (!proven).then(|| commands.clone());
        let request = CommandBatch { commands };
        let outcome = tokio::select! {
            r = tokio::time::timeout(self.timeout, client.propose_many(request)) => {
                r.unwrap_or(Err(tonic::Status::deadline_exceeded("forwarded writes timed out")))
            }
            _ = self.shutdown.cancelled() => Err(tonic::Status::cancelled("member stopping")),
        };
        let results: Vec<Forwarded> = match (outcome, fallback) {
            (Ok(reply), _) => {
                if !proven {
                    self.state().batching.insert(leader);
                }
                let results = reply.into_inner().results;
                if results.len() == answers.len() {
                    results.into_iter().map(Forwarded::answered).collect()
                } else {
                    let e = StoreError::Internal(format!(
                        "the leader answered {} of {} forwarded writes",
                        results.len(),
                        answers.len()
                    ));
                    vec![Forwarded::failed(e); answers.len()]
                }
            }
            (Err(s), Some(commands)) if s.code() == tonic::Code::Unimplemented => {
                // A leader of an earlier version: one call each, side by side. (Unimplemented
                // comes from its router: nothing of the batch was done.)
                let calls = commands.into_iter().map(|cmd| {
                    let mut c = client.clone();
                    async move {
                        match answer(c.propose(cmd).await) {
                            Ok(r) => Forwarded::answered(r),
                            Err(e) => Forwarded::failed(e),
                        }
                    }
                });
                futures::future::join_all(calls).await
            }
            (Err(s), None) if s.code() == tonic::Code::Unimplemented => {
                // It took batches before and no longer does (it was rolled back): nothing was
                // done, so the writes may be routed again, to go one call each.
                self.state().batching.remove(&leader);
                vec![Forwarded::failed(StoreError::NotLeader); answers.len()]
            }
            (Err(s), _) => vec![Forwarded::failed(envelope::error_of(&s)); answers.len()],
        };
        for (a, r) in answers.into_iter().zip(results) {
            let _ = a.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(size: usize) -> (Pending, oneshot::Receiver<Forwarded>) {
        let (tx, rx) = oneshot::channel();
        let p = Pending {
            cmd: pb::Command::default(),
            size,
            answer: tx,
        };
        (p, rx)
    }

    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

    use prost::Message;

    use crate::peer::client::{Dialer, Peers};
    use crate::proto::etcdserverpb::{PutRequest, PutResponse, ResponseHeader};
    use crate::proto::lodestone::peer_server::{Peer, PeerServer};
    use crate::proto::lodestone::{CommandResults, command, command_result};

    /// A leader that answers `Propose`, and `ProposeMany` only while `batching` is set (as a
    /// member of an older version, its generated stub answers "unimplemented"). Every write
    /// gets the next revision, applied at log index ten times it; a put of key "refuse" is
    /// refused at apply, at log index 1.
    #[derive(Clone, Default)]
    struct Leader {
        batching: Arc<AtomicBool>,
        revision: Arc<AtomicI64>,
        single_calls: Arc<AtomicUsize>,
        batch_calls: Arc<AtomicUsize>,
    }

    impl Leader {
        fn apply(&self, cmd: pb::Command) -> pb::CommandResult {
            match cmd.kind {
                Some(command::Kind::Put(p)) if p.key.as_ref() == b"refuse" => pb::CommandResult {
                    log_index: 1,
                    ..crate::apply::refused(StoreError::KeyNotFound)
                },
                _ => {
                    let revision = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
                    pb::CommandResult {
                        kind: Some(command_result::Kind::Put(PutResponse {
                            header: Some(ResponseHeader {
                                revision,
                                ..Default::default()
                            }),
                            prev_kv: None,
                        })),
                        log_index: revision as u64 * 10,
                    }
                }
            }
        }
    }

    #[tonic::async_trait]
    impl Peer for Leader {
        async fn propose(
            &self,
            request: tonic::Request<pb::Command>,
        ) -> std::result::Result<tonic::Response<pb::CommandResult>, tonic::Status> {
            self.single_calls.fetch_add(1, Ordering::SeqCst);
            // As the peer service answers Propose: a refusal is a status.
            let r = crate::apply::outcome(self.apply(request.into_inner()));
            r.map(tonic::Response::new).map_err(|e| envelope::refuse(&e))
        }

        async fn propose_many(
            &self,
            request: tonic::Request<CommandBatch>,
        ) -> std::result::Result<tonic::Response<CommandResults>, tonic::Status> {
            if !self.batching.load(Ordering::SeqCst) {
                return Err(tonic::Status::unimplemented("no ProposeMany here"));
            }
            self.batch_calls.fetch_add(1, Ordering::SeqCst);
            let results = request
                .into_inner()
                .commands
                .into_iter()
                .map(|c| self.apply(c))
                .collect();
            Ok(tonic::Response::new(CommandResults { results }))
        }
    }

    fn put(key: &str) -> pb::Command {
        pb::Command {
            kind: Some(command::Kind::Put(PutRequest {
                key: key.as_bytes().to_vec().into(),
                ..Default::default()
            })),
            auth: None,
        }
    }

    fn revision(r: &Result<pb::CommandResult>) -> i64 {
        match r {
            Ok(pb::CommandResult {
                kind: Some(command_result::Kind::Put(p)),
                ..
            }) => p.header.as_ref().unwrap().revision,
            other => panic!("not a put's answer: {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_write_gets_its_answer_from_a_leader_with_or_without_batches() {
        let leader = Leader::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerServer::new(leader.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let peers = Peers::new(1, Arc::new(std::sync::atomic::AtomicU64::new(7)), Dialer::plain());
        let client = peers.client(2, &url).unwrap();
        let stop = CancellationToken::new();
        let f = Forwarder::new(1 << 20, Duration::from_secs(5), stop.clone(), TaskTracker::new());
        let burst = |n: usize| {
            let f = f.clone();
            let client = client.clone();
            async move {
                let writes = (0..n).map(|i| {
                    let (f, client) = (f.clone(), client.clone());
                    let cmd = put(if i == 3 { "refuse" } else { "k" });
                    let size = cmd.encoded_len();
                    async move { f.propose(2, client, cmd, size).await }
                });
                futures::future::join_all(writes).await
            }
        };
        // `refusal_index`: where the refused write's answer says it was applied (a single
        // Propose's refusal is a status, which carries none).
        let distinct = |answers: &[Forwarded], refusal_index: u64| {
            let revs: HashSet<i64> = answers
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 3)
                .map(|(_, a)| {
                    let rev = revision(&a.result);
                    assert_eq!(a.index, rev as u64 * 10, "each answer carries its log index");
                    rev
                })
                .collect();
            assert_eq!(revs.len(), answers.len() - 1, "each write has its own answer");
            assert_eq!(
                answers[3].result,
                Err(StoreError::KeyNotFound),
                "a refusal comes back as itself"
            );
            assert_eq!(answers[3].index, refusal_index);
        };

        // A leader of an older version: one Propose each.
        let answers = burst(50).await;
        distinct(&answers, 0);
        assert_eq!(leader.single_calls.load(Ordering::SeqCst), 50);
        assert_eq!(leader.batch_calls.load(Ordering::SeqCst), 0);

        // Upgraded: the same burst goes in a few shared calls.
        leader.batching.store(true, Ordering::SeqCst);
        let answers = burst(50).await;
        distinct(&answers, 1);
        assert_eq!(
            leader.single_calls.load(Ordering::SeqCst),
            50,
            "no single calls once it batches"
        );
        let calls = leader.batch_calls.load(Ordering::SeqCst);
        assert!((1..25).contains(&calls), "{calls} calls for 50 writes");

        // Rolled back: nothing was done, so the write is handed back to be routed again...
        leader.batching.store(false, Ordering::SeqCst);
        let again = f.propose(2, client.clone(), put("k"), 1).await.result;
        assert_eq!(again, Err(StoreError::NotLeader));
        // ... and then goes one call each.
        let answers = burst(5).await;
        distinct(&answers, 0);
        assert_eq!(leader.single_calls.load(Ordering::SeqCst), 55);
        server.abort();
    }

    #[test]
    fn a_batch_is_bounded_in_bytes_and_count_and_skips_abandoned_writes() {
        let mut lane = Lane::default();
        let mut keep = Vec::new();
        for i in 0..10 {
            let (p, rx) = pending(100);
            lane.waiting.push(p);
            // Writes 3 and 4 were given up before their batch left.
            if i != 3 && i != 4 {
                keep.push(rx);
            }
        }
        assert_eq!(lane.take(350).len(), 3, "350 bytes hold three 100-byte writes");
        assert_eq!(lane.waiting.len(), 5, "the two abandoned writes are gone, unsent");
        assert_eq!(lane.take(10).len(), 1, "one write always goes, whatever its size");
        assert_eq!(lane.take(usize::MAX).len(), 4);
        assert!(lane.take(usize::MAX).is_empty());

        for _ in 0..MAX_BATCH + 5 {
            let (p, rx) = pending(1);
            lane.waiting.push(p);
            keep.push(rx);
        }
        assert_eq!(lane.take(usize::MAX).len(), MAX_BATCH);
        assert_eq!(lane.take(usize::MAX).len(), 5);
    }
}
