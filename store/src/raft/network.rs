//! The client side of the peer transport: openraft's RPCs over tonic gRPC.
//!
//! Every message travels in an envelope naming the cluster and the target member; the
//! receiver refuses envelopes meant for someone else (a reused address must not let a new
//! member act on another member's messages). Payloads are bincode-encoded openraft messages.
//! Snapshots stream from their file in 1 MiB chunks with backpressure.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use super::snapshot::SnapshotFile;
use super::{MemberNode, NodeId, Snapshot, TypeConfig, Vote};
use crate::proto::lodestone::peer_client::PeerClient;
use crate::proto::lodestone::{RaftEnvelope, SnapshotChunk};

const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Log entries one AppendEntries carries at most (openraft's `max_payload_entries`), so a
/// peer message has a size bound: see [`max_peer_message`].
pub const MAX_APPEND_ENTRIES: u64 = 64;
/// Room for an entry's log id and framing beside its command.
const ENTRY_OVERHEAD: usize = 4 << 10;

/// The largest message a member accepts from a peer: a full AppendEntries of commands of at
/// most `--max-request-bytes` each, or a snapshot chunk, with framing. Anything larger is
/// refused before it is buffered.
pub fn max_peer_message(max_request_bytes: usize) -> usize {
    let append = MAX_APPEND_ENTRIES as usize * (max_request_bytes + ENTRY_OVERHEAD);
    append.max(SNAPSHOT_CHUNK) + (64 << 10)
}

/// Raft RPC replies (votes, append and snapshot results) are small; this bounds them.
const MAX_RAFT_REPLY: usize = 4 << 20;

/// Creates peer connections; shared by all of openraft's replication tasks.
#[derive(Clone)]
pub struct Network {
    pub self_id: NodeId,
    /// 0 until the member knows its cluster (set at bootstrap or join).
    pub cluster_id: Arc<AtomicU64>,
    /// Cancelled when a peer answers that this member was removed from the cluster.
    pub removed: tokio_util::sync::CancellationToken,
    /// [`max_peer_message`] for this member's `--max-request-bytes`.
    pub max_message: usize,
}

/// What a member answers a vote request from a member no longer in the cluster (etcd's
/// peers answer a removed member likewise, and it stops).
pub const MEMBER_REMOVED: &str = "the member has been permanently removed from the cluster";

/// A connection to one peer.
pub struct PeerConnection {
    target: NodeId,
    from: NodeId,
    cluster_id: Arc<AtomicU64>,
    client: Option<PeerClient<Channel>>,
    url: String,
    removed: tokio_util::sync::CancellationToken,
    max_message: usize,
}

/// Connects lazily to the first reachable form of a peer URL.
pub fn peer_channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> PeerConnection {
        PeerConnection {
            target,
            from: self.self_id,
            cluster_id: self.cluster_id.clone(),
            client: None,
            url: node.peer_urls.first().cloned().unwrap_or_default(),
            removed: self.removed.clone(),
            max_message: self.max_message,
        }
    }
}

fn unreachable(e: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::from_string(e.to_string())
}

impl PeerConnection {
    fn client(&mut self) -> Result<PeerClient<Channel>, Unreachable<TypeConfig>> {
        if self.client.is_none() {
            let ch = peer_channel(&self.url)
                .map_err(|e| unreachable(format!("peer {} at {}: {e}", self.target, self.url)))?;
            self.client = Some(
                PeerClient::new(ch)
                    .max_decoding_message_size(MAX_RAFT_REPLY)
                    .max_encoding_message_size(self.max_message),
            );
        }
        Ok(self.client.clone().expect("client set"))
    }

    fn envelope<T: serde::Serialize>(&self, msg: &T) -> RaftEnvelope {
        RaftEnvelope {
            cluster_id: self.cluster_id.load(Ordering::Relaxed),
            from: self.from,
            to: self.target,
            payload: bincode::serialize(msg).expect("raft message serializes").into(),
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
        F: FnOnce(PeerClient<Channel>, RaftEnvelope) -> Fut,
        Fut: Future<Output = Result<tonic::Response<crate::proto::lodestone::RaftReply>, tonic::Status>>,
    {
        let client = self.client()?;
        let env = self.envelope(req);
        let reply = match tokio::time::timeout(option.hard_ttl(), f(client, env)).await {
            Err(_) => {
                return Err(RPCError::Unreachable(unreachable(format!(
                    "peer {} timed out",
                    self.target
                ))));
            }
            Ok(Err(status)) => {
                if status.code() == tonic::Code::FailedPrecondition && status.message() == MEMBER_REMOVED {
                    tracing::warn!(peer = %format!("{:x}", self.target), "{MEMBER_REMOVED}");
                    self.removed.cancel();
                }
                if status.code() == tonic::Code::Unavailable {
                    // Connection trouble: reconnect next time.
                    self.client = None;
                    return Err(RPCError::Unreachable(unreachable(status.message())));
                }
                return Err(RPCError::Network(NetworkError::from_string(format!(
                    "peer {}: {}",
                    self.target,
                    status.message()
                ))));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        bincode::deserialize(&reply.payload).map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, env| async move { c.append_entries(env).await })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, env| async move { c.vote(env).await })
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&req, &option, |mut c, env| async move { c.transfer_leader(env).await })
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
        let header = self.envelope(&(vote, snapshot.meta.clone()));
        let path = snapshot.snapshot.path.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        let per_chunk = option.soft_ttl().max(Duration::from_secs(5));
        // Producer: read the file and feed the stream; stops when the receiver goes away.
        let producer = async move {
            let mut f = tokio::fs::File::open(&path).await?;
            let _ = tx
                .send(SnapshotChunk {
                    envelope: Some(header),
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
                        envelope: None,
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
            c.map_err(|s| StreamingError::Unreachable(unreachable(s.message())))
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
