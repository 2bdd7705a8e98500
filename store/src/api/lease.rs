//! The etcd Lease service: grants and revokes are replicated writes; KeepAlive and
//! TimeToLive are answered on the leader's clock (`member::leases`). With auth enabled every
//! lease RPC needs a user; a revoke needs permission to delete the attached keys (checked at
//! apply), and TimeToLive with keys permission to read them.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{user, who};
use crate::member::Member;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use crate::proto::lodestone::LeaseQuery;

pub struct LeaseService {
    pub member: Arc<Member>,
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let who = who(&self.member, &request).await?;
        user(&self.member, &who)?;
        Ok(Response::new(self.member.lease_grant(request.into_inner(), who).await?))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let who = who(&self.member, &request).await?;
        user(&self.member, &who)?;
        Ok(Response::new(
            self.member.lease_revoke(request.get_ref().id, who).await?,
        ))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let who = who(&self.member, &request).await?;
        user(&self.member, &who)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let member = self.member.clone();
        tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    _ = member.shutdown().cancelled() => return,
                    r = inbound.next() => match r {
                        Some(Ok(r)) => r,
                        _ => return,
                    },
                };
                // The header is taken before the renewal, so its revision never postdates a
                // revoke the renewal could have raced with.
                let header = member.header(member.revision());
                let q = LeaseQuery {
                    id: req.id,
                    renew: true,
                    ..Default::default()
                };
                let out = match member.lease_query(q).await {
                    Ok(a) => Ok(LeaseKeepAliveResponse {
                        header,
                        id: req.id,
                        ttl: a.ttl.max(0),
                    }),
                    Err(e) => Err(Status::from(e)),
                };
                let failed = out.is_err();
                if tx.send(out).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let who = who(&self.member, &request).await?;
        user(&self.member, &who)?;
        let req = request.into_inner();
        let header = self.member.header(self.member.revision());
        let a = self
            .member
            .lease_query(LeaseQuery {
                id: req.id,
                keys: req.keys,
                ..Default::default()
            })
            .await?;
        // Key names are data: each attached key must be readable (etcd's CVE-2023-32082).
        let auth = self.member.auth();
        for k in &a.keys {
            auth.check_range(&who, k, &[], crate::auth::Access::Read)?;
        }
        Ok(Response::new(LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl: a.ttl,
            granted_ttl: a.granted_ttl,
            keys: a.keys,
        }))
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let who = who(&self.member, &request).await?;
        self.member.linearizable_barrier().await?;
        user(&self.member, &who)?;
        let leases = self
            .member
            .state()
            .lessor
            .ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.member.header(self.member.revision()),
            leases,
        }))
    }
}
