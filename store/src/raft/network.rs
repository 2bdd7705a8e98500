//! The client side of the peer transport for openraft: its RPCs over tonic gRPC.
//!
//! Connections come from the member's one cache ([`crate::peer::client::Peers`]), so every
//! message carries the envelope naming the cluster and the target member, and a refusal comes
//! back in the envelope's one form. Payloads are bincode-encoded openraft messages.
//! Replication is pipelined: each follower gets one long-lived `AppendStream` on which the
//! leader sends AppendEntries without waiting for the answers to those before it, so the
//! follower's fsync of one batch overlaps the sending of the next (openraft's stream
//! replication; a follower without `AppendStream` is sent one AppendEntries at a time).
//! Snapshots stream from their file in 1 MiB chunks with backpressure.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use openraft::OptionalSend;
use openraft::base::{BoxFuture, BoxStream};

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use tokio::io::AsyncReadExt;

use super::snapshot::SnapshotFile;
use super::snapshot_files::snapshot_file;
use super::{LogId, MemberNode, NodeId, Snapshot, TypeConfig, Vote};
use crate::error::StoreError;
use crate::peer::client::{Client, Peers};
use crate::peer::{MAX_RAFT_REPLY, SNAPSHOT_CHUNK, envelope};
use crate::proto::lodestone::{RaftMessage, SnapshotChunk};

/// Creates peer connections; shared by all of openraft's replication tasks.
#[derive(Clone)]
pub struct Network {
    pub peers: Arc<Peers>,
    /// Cancelled when a peer answers that this member was removed from the cluster.
    pub removed: tokio_util::sync::CancellationToken,
    /// [`crate::peer::max_message`] for this member's `--max-request-bytes`.
    pub max_message: usize,
}

/// How long the oldest unanswered message of a replication stream may wait for its answer
/// before the stream is given up as unreachable (openraft backs off and opens another). An
/// answer follows the follower's fsync, which for a full batch under load can take a while,
/// so this is far above a heartbeat interval; a dead connection is found by HTTP/2
/// keep-alives within the same time.
const STREAM_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many messages of a replication stream may wait for their answers at once. One more
/// than sequential replication: the follower's fsync of one batch overlaps the sending of
/// the next, while entries appended meanwhile still gather into few large messages (on a
/// busy host, many small ones cost more CPU than the overlap saves).
const STREAM_WINDOW: usize = 2;

/// How often an idle replication stream looks again whether a message now waits for an
/// answer, so a stalled follower is noticed at most this late after the bound.
const STREAM_IDLE_CHECK: Duration = Duration::from_millis(500);

/// A connection to one peer.
pub struct PeerConnection {
    target: NodeId,
    url: String,
    peers: Arc<Peers>,
    removed: tokio_util::sync::CancellationToken,
    max_message: usize,
    /// The peer answered `AppendStream` with "unimplemented" (a member of an older version,
    /// during a rolling upgrade): replicate to it one AppendEntries at a time.
    sequential: bool,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> PeerConnection {
        PeerConnection {
            target,
            url: node.peer_urls.first().cloned().unwrap_or_default(),
            peers: self.peers.clone(),
            removed: self.removed.clone(),
            max_message: self.max_message,
            sequential: false,
        }
    }
}

fn unreachable(e: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::from_string(e.to_string())
}

impl PeerConnection {
    fn client(&self) -> Result<Client, Unreachable<TypeConfig>> {
        let c = self
            .peers
            .client(self.target, &self.url)
            .map_err(|e| unreachable(format!("peer {:x} at {}: {e}", self.target, self.url)))?;
        Ok(c.max_decoding_message_size(MAX_RAFT_REPLY)
            .max_encoding_message_size(self.max_message))
    }

    fn message<T: serde::Serialize>(msg: &T) -> RaftMessage {
        RaftMessage {
            payload: bincode::serialize(msg).expect("raft message serializes").into(),
        }
    }

    /// What a failed call means to openraft: a peer that is down or stopping is unreachable
    /// (openraft backs off), anything else a network error. Learns from the envelope's
    /// refusal whether this member was removed, and drops the connection after transport
    /// trouble.
    fn failed(&self, status: &tonic::Status) -> RPCError<TypeConfig> {
        let text = format!("peer {:x}: {}", self.target, status.message());
        match envelope::refusal_of(status) {
            Some(StoreError::MemberRemoved) => {
                tracing::warn!(peer = %format!("{:x}", self.target), "{}", StoreError::MemberRemoved);
                self.removed.cancel();
                RPCError::Network(NetworkError::from_string(text))
            }
            Some(StoreError::Stopped) => RPCError::Unreachable(unreachable(text)),
            Some(_) => RPCError::Network(NetworkError::from_string(text)),
            None if status.code() == tonic::Code::Unavailable => {
                self.peers.forget(self.target);
                RPCError::Unreachable(unreachable(text))
            }
            None => RPCError::Network(NetworkError::from_string(text)),
        }
    }

    async fn call<Req, Resp, F, Fut>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        f: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(Client, RaftMessage) -> Fut,
        Fut: Future<Output = Result<tonic::Response<crate::proto::lodestone::RaftReply>, tonic::Status>>,
    {
        let client = self.client()?;
        let msg = Self::message(req);
        let reply = match tokio::time::timeout(option.hard_ttl(), f(client, msg)).await {
            Err(_) => return Err(RPCError::Unreachable(timed_out(self.target))),
            Ok(Err(status)) => return Err(self.failed(&status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        decode_reply(&reply.payload)
    }
}

/// A message of a replication stream still waiting for its answer.
struct Waiting {
    since: Instant,
    /// The log ids it covers: after `prev`, up to `last` (`prev` when it carries no entries).
    prev: Option<LogId>,
    last: Option<LogId>,
}

impl Waiting {
    /// Whether openraft would count an answer `matching` of an earlier message as an answer
    /// to this one too. Openraft pairs an answer with the messages in flight by log ids
    /// alone and credits the follower's contact to the send time of the latest one it
    /// covers; a message with no entries (one carrying only a new commit index) covers no
    /// more than the one before it, so an earlier message's answer, still on its way, would
    /// date the follower's last contact to after it was paused or cut off, and a leader
    /// without its quorum could pass a ReadIndex round. Such an answer is held back; the
    /// follower's answer to this message, cumulative and right behind it, counts instead.
    fn credited_by(&self, matching: &Option<LogId>) -> bool {
        self.last <= *matching || self.prev < *matching
    }
}

/// A peer's answer (bincode); one that does not decode is a network error.
fn decode_reply<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, RPCError<TypeConfig>> {
    bincode::deserialize(payload).map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))
}

fn timed_out(target: NodeId) -> Unreachable<TypeConfig> {
    unreachable(format!("peer {target:x} timed out"))
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotFile;

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        if self.sequential {
            return openraft::network::stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            let mut client = self.client()?;
            let waiting: Arc<Mutex<VecDeque<Waiting>>> = Arc::default();
            let sent = waiting.clone();
            // Openraft ends a session by dropping the answers; the messages must end with
            // them, or the request side would live on in the connection, holding the
            // follower's end of the stream open and taking entries from the session
            // openraft starts next.
            let session = tokio_util::sync::CancellationToken::new();
            let session_over = session.clone().drop_guard();
            // At most STREAM_WINDOW messages wait for answers; openraft builds the next one
            // only when it may go, from every entry appended by then.
            let window = Arc::new(tokio::sync::Semaphore::new(STREAM_WINDOW));
            let gate = window.clone();
            let admitted = futures::stream::unfold((input, gate), |(mut input, gate)| async move {
                let permit = gate.clone().acquire_owned().await.ok()?;
                let req = input.next().await?;
                // Given back when its answer arrives.
                permit.forget();
                Some((req, (input, gate)))
            });
            let messages = admitted.take_until(session.cancelled_owned()).map(move |req| {
                sent.lock().expect("stream clock").push_back(Waiting {
                    since: Instant::now(),
                    prev: req.prev_log_id,
                    last: req.entries.last().map(|e| e.log_id).or(req.prev_log_id),
                });
                Self::message(&req)
            });
            let replies = match tokio::time::timeout(STREAM_REPLY_TIMEOUT, client.append_stream(messages)).await {
                Err(_) => return Err(RPCError::Unreachable(timed_out(self.target))),
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                    tracing::info!(peer = %format!("{:x}", self.target), "peer has no pipelined replication; sending one AppendEntries at a time");
                    self.sequential = true;
                    return Err(RPCError::Unreachable(unreachable(status.message())));
                }
                Ok(Err(status)) => return Err(self.failed(&status)),
                Ok(Ok(r)) => r.into_inner(),
            };
            let this: &'s PeerConnection = self;
            let answers = futures::stream::unfold(Some(replies), move |state| {
                let _ends_messages_when_dropped = &session_over;
                let waiting = waiting.clone();
                let window = window.clone();
                async move {
                    let mut replies = state?;
                    loop {
                        let oldest = waiting.lock().expect("stream clock").front().map(|w| w.since);
                        let wait = oldest.map_or(STREAM_IDLE_CHECK, |t| {
                            STREAM_REPLY_TIMEOUT.saturating_sub(t.elapsed()).min(STREAM_IDLE_CHECK)
                        });
                        match tokio::time::timeout(wait, replies.next()).await {
                            Err(_) if oldest.is_some_and(|t| t.elapsed() >= STREAM_REPLY_TIMEOUT) => {
                                return Some((Err(RPCError::Unreachable(timed_out(this.target))), None));
                            }
                            Err(_) => continue,
                            Ok(None) => return None,
                            Ok(Some(Err(status))) => return Some((Err(this.failed(&status)), None)),
                            Ok(Some(Ok(reply))) => {
                                let answer: Result<StreamAppendResult<TypeConfig>, _> = decode_reply(&reply.payload);
                                let mut waiting = waiting.lock().expect("stream clock");
                                waiting.pop_front();
                                window.add_permits(1);
                                if let Ok(Ok(matching)) = &answer
                                    && waiting.front().is_some_and(|next| next.credited_by(matching))
                                {
                                    continue;
                                }
                                let go_on = matches!(answer, Ok(Ok(_)));
                                return Some((answer, go_on.then_some(replies)));
                            }
                        }
                    }
                }
            });
            Ok(Box::pin(answers) as BoxStream<'s, _>)
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, msg| async move { c.append_entries(msg).await })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, msg| async move { c.vote(msg).await })
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&req, &option, |mut c, msg| async move { c.transfer_leader(msg).await })
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client()?;
        let header = Self::message(&(vote, snapshot.meta.clone()));
        // A built snapshot is a checkpoint: the file to send is made of it now, once.
        let source = snapshot.snapshot.path.clone();
        let path = tokio::task::spawn_blocking(move || snapshot_file(&source))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|e| StreamingError::Unreachable(unreachable(format!("snapshot file: {e}"))))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        let per_chunk = option.soft_ttl().max(Duration::from_secs(5));
        // Producer: read the file and feed the stream; stops when the receiver goes away.
        let producer = async move {
            let mut f = tokio::fs::File::open(&path).await?;
            let _ = tx
                .send(SnapshotChunk {
                    header: Some(header),
                    data: Default::default(),
                    done: false,
                })
                .await;
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let mut filled = 0;
                while filled < buf.len() {
                    let n = f.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                buf.truncate(filled);
                let done = filled < SNAPSHOT_CHUNK;
                if tokio::time::timeout(
                    per_chunk,
                    tx.send(SnapshotChunk {
                        header: None,
                        data: buf.into(),
                        done,
                    }),
                )
                .await
                .is_err()
                {
                    return Err(std::io::Error::other("snapshot receiver stalled"));
                }
                if done {
                    return Ok::<(), std::io::Error>(());
                }
            }
        };
        let call = async move {
            let resp = client
                .install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            resp.map(|r| r.into_inner())
        };
        let work = async {
            let (p, c) = tokio::join!(producer, call);
            p.map_err(|e| StreamingError::Unreachable(unreachable(format!("snapshot file: {e}"))))?;
            c.map_err(|s| {
                // Any failed transfer backs off before the next try.
                let _ = self.failed(&s);
                StreamingError::Unreachable(unreachable(s.message()))
            })
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = work => {
                let reply = r?;
                bincode::deserialize(&reply.payload)
                    .map_err(|e| StreamingError::Network(NetworkError::from_string(e.to_string())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(index: u64) -> Option<LogId> {
        Some(LogId::new(
            openraft::vote::leader_id_adv::LeaderId { term: 2, node_id: 1 },
            index,
        ))
    }

    fn waiting(prev: u64, last: u64) -> Waiting {
        Waiting {
            since: Instant::now(),
            prev: id(prev),
            last: id(last),
        }
    }

    /// A member of an older version: it serves AppendEntries but has no `AppendStream`
    /// (generated stubs answer "unimplemented").
    struct OlderPeer;

    #[tonic::async_trait]
    impl crate::proto::lodestone::peer_server::Peer for OlderPeer {
        async fn append_entries(
            &self,
            _request: tonic::Request<RaftMessage>,
        ) -> Result<tonic::Response<crate::proto::lodestone::RaftReply>, tonic::Status> {
            let answer = AppendEntriesResponse::<TypeConfig>::Success;
            Ok(tonic::Response::new(crate::proto::lodestone::RaftReply {
                payload: bincode::serialize(&answer).unwrap().into(),
            }))
        }
    }

    #[tokio::test]
    async fn a_peer_without_append_stream_is_sent_one_append_entries_at_a_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(crate::proto::lodestone::peer_server::PeerServer::new(OlderPeer))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let peers = Arc::new(Peers::new(
            1,
            Arc::new(std::sync::atomic::AtomicU64::new(7)),
            crate::peer::client::Dialer::plain(),
        ));
        let mut conn = PeerConnection {
            target: 2,
            url,
            peers,
            removed: tokio_util::sync::CancellationToken::new(),
            max_message: 1 << 20,
            sequential: false,
        };
        let request = || AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 1),
            prev_log_id: id(4),
            leader_commit: id(4),
            entries: Vec::new(),
        };
        let option = RPCOption::new(Duration::from_secs(5));

        // The first session finds out and ends as unreachable (openraft backs off and retries).
        let first = conn
            .stream_append(futures::stream::iter([request()]), option.clone())
            .await
            .map(drop);
        assert!(matches!(first, Err(RPCError::Unreachable(_))), "{first:?}");
        assert!(conn.sequential);

        // The next one is served by AppendEntries calls, each answered in turn.
        let answers: Vec<_> = conn
            .stream_append(futures::stream::iter([request(), request()]), option)
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(answers.len(), 2);
        for a in answers {
            assert_eq!(a.unwrap().unwrap(), id(4));
        }
        server.abort();
    }

    #[test]
    fn an_answer_is_held_back_only_when_it_would_count_for_a_later_message() {
        // The usual pipeline: the next message starts where the answered one ended.
        assert!(!waiting(10, 15).credited_by(&id(10)));
        // A message with only a new commit index, right behind the answered one.
        assert!(waiting(10, 10).credited_by(&id(10)));
        // One overlapping the answered one (sent again after a conflict).
        assert!(waiting(8, 15).credited_by(&id(10)));
        // An answer that matched less than the next message starts from.
        assert!(!waiting(10, 10).credited_by(&id(9)));
        assert!(!waiting(10, 15).credited_by(&None));
    }
}
