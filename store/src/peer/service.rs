//! The server side of the peer transport: Raft messages (handed to consensus as bytes),
//! streamed snapshots, and what followers route to the leader (writes, ReadIndex, lease
//! queries, membership changes), the cluster view for joiners, and HashKV for the
//! corruption check.
//!
//! Every request passes [`EnvelopeLayer`] first (its address is checked once, for every
//! method), and every refusal leaves through [`envelope::refuse`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tonic::codegen::http;
use tonic::{Request, Response, Status, Streaming};
use tower::{Layer, Service};

use super::envelope::{self, Address};
use crate::error::StoreError;
use crate::fsync::SyncPacer;
use crate::member::Member;
use crate::proto::etcdserverpb::{HashKvRequest, HashKvResponse};
use crate::proto::lodestone::peer_server::Peer;
use crate::proto::lodestone::{
    ClusterInfoRequest, ClusterView, Command, CommandBatch, CommandResult, CommandResults, LeaseAnswer, LeaseQuery,
    MemberChange, MemberChangeReply, RaftMessage, RaftReply, ReadIndexReply, ReadIndexRequest, SnapshotChunk,
};

/// The answers of a pipelined replication stream.
type AnswerStream = Pin<Box<dyn futures::Stream<Item = Result<RaftReply, Status>> + Send>>;

pub struct PeerService {
    pub member: Arc<Member>,
}

fn refused(e: StoreError) -> Status {
    envelope::refuse(&e)
}

fn reply(payload: Vec<u8>) -> Result<Response<RaftReply>, Status> {
    Ok(Response::new(RaftReply {
        payload: payload.into(),
    }))
}

/// The sender named in a request's envelope (checked by [`EnvelopeLayer`] already).
fn sender<T>(req: &Request<T>) -> Result<u64, Status> {
    Address::read(req.metadata()).map(|a| a.from).map_err(refused)
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let c = self.member.consensus();
        reply(c.append_entries(&request.get_ref().payload).await.map_err(refused)?)
    }

    async fn append_stream(&self, request: Request<Streaming<RaftMessage>>) -> Result<Response<AnswerStream>, Status> {
        // Transport trouble on the way in ends the input as its end would: what arrived
        // before it is still answered. Both directions end when this member stops: Raft no
        // longer answers, and the peer listener's graceful stop waits for this stream to
        // close both ways. The leader opens a new stream (to whoever runs here next).
        let stopping = self.member.shutdown().clone();
        let input = request.into_inner().take_until(stopping.clone().cancelled_owned());
        let input = Box::pin(tokio_stream::StreamExt::map_while(input, |m| m.ok().map(|m| m.payload)));
        let answers = self.member.consensus().append_stream(input).map(|answer| {
            answer
                .map(|payload| RaftReply {
                    payload: payload.into(),
                })
                .map_err(refused)
        });
        Ok(Response::new(Box::pin(answers.take_until(stopping.cancelled_owned()))))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let from = sender(&request)?;
        let c = self.member.consensus();
        reply(c.vote(from, &request.get_ref().payload).await.map_err(refused)?)
    }

    async fn transfer_leader(&self, request: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let c = self.member.consensus();
        reply(
            c.transfer_leader_request(&request.get_ref().payload)
                .await
                .map_err(refused)?,
        )
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        let from = sender(&request)?;
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let header = first
            .header
            .ok_or_else(|| Status::invalid_argument("snapshot stream without header"))?;
        // One file per transfer: a retried transfer from the same leader never writes into
        // the file of one still running.
        let path = self.member.state().scratch_path(&format!("incoming-{from:x}"), "part");
        let received = async {
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            // Synced piece by piece while it arrives, so the final sync never holds a
            // large snapshot's worth of writes ahead of this member's log fsyncs.
            let mut pacer = SyncPacer::default();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                file.write_all(&chunk.data)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                if pacer.wrote(chunk.data.len()) {
                    file.sync_data().await.map_err(|e| Status::internal(e.to_string()))?;
                }
                if chunk.done {
                    return file.sync_all().await.map_err(|e| Status::internal(e.to_string()));
                }
            }
            Err(Status::aborted("snapshot stream ended early"))
        }
        .await;
        if let Err(e) = received {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        let r = self.member.consensus().install_snapshot(&header.payload, &path).await;
        let _ = tokio::fs::remove_file(&path).await;
        reply(r.map_err(refused)?)
    }

    async fn propose(&self, request: Request<Command>) -> Result<Response<CommandResult>, Status> {
        let r = self.member.propose_here(request.into_inner()).await;
        Ok(Response::new(r.map_err(refused)?))
    }

    async fn propose_many(&self, request: Request<CommandBatch>) -> Result<Response<CommandResults>, Status> {
        let results = self
            .member
            .propose_many_here(request.into_inner().commands)
            .await
            .map_err(refused)?;
        Ok(Response::new(CommandResults { results }))
    }

    async fn read_index(&self, _request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexReply>, Status> {
        let read_index = self.member.local_read_index().await.map_err(refused)?;
        Ok(Response::new(ReadIndexReply { read_index }))
    }

    async fn lease(&self, request: Request<LeaseQuery>) -> Result<Response<LeaseAnswer>, Status> {
        let a = self.member.lease_query_here(request.get_ref()).await.map_err(refused)?;
        Ok(Response::new(a))
    }

    async fn change_membership(&self, request: Request<MemberChange>) -> Result<Response<MemberChangeReply>, Status> {
        let change = request
            .into_inner()
            .change
            .ok_or_else(|| Status::invalid_argument("membership change without a change"))?;
        let r = self.member.change_membership_here(change).await.map_err(refused)?;
        Ok(Response::new(r))
    }

    async fn cluster_info(&self, _request: Request<ClusterInfoRequest>) -> Result<Response<ClusterView>, Status> {
        Ok(Response::new(ClusterView {
            cluster_id: self.member.cluster_id(),
            members: self.member.members(),
        }))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let rev = request.get_ref().revision;
        let h = self.member.hash_kv_at(rev).await.map_err(refused)?;
        Ok(Response::new(HashKvResponse {
            header: self.member.header(h.revision),
            hash: h.hash,
            compact_revision: h.compacted,
        }))
    }
}

/// Checks every peer request's envelope before its method runs (and before its body is
/// read): one check for all methods.
#[derive(Clone)]
pub struct EnvelopeLayer {
    pub member: Arc<Member>,
}

impl<S> Layer<S> for EnvelopeLayer {
    type Service = EnvelopeCheck<S>;

    fn layer(&self, inner: S) -> EnvelopeCheck<S> {
        EnvelopeCheck {
            inner,
            member: self.member.clone(),
        }
    }
}

#[derive(Clone)]
pub struct EnvelopeCheck<S> {
    inner: S,
    member: Arc<Member>,
}

impl<S, B> Service<http::Request<B>> for EnvelopeCheck<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let checked = Address::from_headers(req.headers())
            .and_then(|addr| envelope::check(&addr, self.member.cluster_id(), self.member.id()));
        if let Err(e) = checked {
            let resp = envelope::refuse(&e).into_http();
            return Box::pin(async move { Ok(resp) });
        }
        Box::pin(self.inner.call(req))
    }
}
