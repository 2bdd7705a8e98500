//! The client side of the peer transport for openraft: its RPCs over tonic gRPC.
//!
//! Connections come from the member's one cache ([`crate::peer::client::Peers`]), so every
//! message carries the envelope naming the cluster and the target member, and a refusal comes
//! back in the envelope's one form. Payloads are bincode-encoded openraft messages.
//! Snapshots stream from their file in 1 MiB chunks with backpressure.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use tokio::io::AsyncReadExt;

use super::snapshot::SnapshotFile;
use super::{MemberNode, NodeId, Snapshot, TypeConfig, Vote};
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

/// A connection to one peer.
pub struct PeerConnection {
    target: NodeId,
    url: String,
    peers: Arc<Peers>,
    removed: tokio_util::sync::CancellationToken,
    max_message: usize,
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
            Err(_) => {
                return Err(RPCError::Unreachable(unreachable(format!(
                    "peer {:x} timed out",
                    self.target
                ))));
            }
            Ok(Err(status)) => return Err(self.failed(&status)),
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
        let path = snapshot.snapshot.path.clone();
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
