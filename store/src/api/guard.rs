//! Checks every client RPC makes before its handler runs, in one place (etcd's gRPC
//! interceptors):
//! - **require-leader**: a request carrying `hasleader: true` metadata fails at once with
//!   "no leader" while this member knows no leader (streams are also cancelled later, by
//!   the watch service, after three election timeouts without one);
//! - **learners**: a learner serves only Status and serializable Range; every other RPC
//!   fails with "rpc not supported for learner" (Range checks serializability itself).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tower::{Layer, Service};

use crate::error::StoreError;
use crate::member::Member;

/// RPCs a learner may serve (Range only when serializable, checked by its handler).
const LEARNER_RPCS: [&str; 2] = ["/etcdserverpb.Maintenance/Status", "/etcdserverpb.KV/Range"];

#[derive(Clone)]
pub struct GuardLayer {
    pub member: Arc<Member>,
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            member: self.member.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    member: Arc<Member>,
}

/// Why a request to `path` must be refused now, if it must.
fn refusal(member: &Member, path: &str, wants_leader: bool) -> Option<StoreError> {
    if path.starts_with("/grpc.health.v1.") {
        return None;
    }
    if member.is_learner() && !LEARNER_RPCS.contains(&path) {
        return Some(StoreError::NotSupportedForLearner);
    }
    if wants_leader && member.leader().is_none() {
        return Some(StoreError::NoLeader);
    }
    None
}

impl<S, B> Service<Request<B>> for Guard<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The HTTP endpoints that share the client port (`/health`, `/metrics`, ...) are not
        // RPCs: a learner serves them too.
        if super::http::PATHS.contains(&req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        let wants_leader = req.headers().get("hasleader").is_some_and(|v| v.as_bytes() == b"true");
        if let Some(e) = refusal(&self.member, req.uri().path(), wants_leader) {
            let resp = tonic::Status::from(e).into_http();
            return Box::pin(async move { Ok(resp) });
        }
        let fut = self.inner.call(req);
        Box::pin(fut)
    }
}
