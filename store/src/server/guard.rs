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

use super::Server;
use crate::error::StoreError;

/// RPCs a learner may serve (Range only when serializable, checked by its handler).
const LEARNER_RPCS: [&str; 2] = ["/etcdserverpb.Maintenance/Status", "/etcdserverpb.KV/Range"];

#[derive(Clone)]
pub struct GuardLayer {
    pub server: Arc<Server>,
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            server: self.server.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    server: Arc<Server>,
}

/// Why a request to `path` must be refused now, if it must.
fn refusal(server: &Server, path: &str, wants_leader: bool) -> Option<StoreError> {
    if path.starts_with("/grpc.health.v1.") {
        return None;
    }
    if server.is_learner() && !LEARNER_RPCS.contains(&path) {
        return Some(StoreError::NotSupportedForLearner);
    }
    if wants_leader && server.leader().is_none() {
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
        if let Some(e) = refusal(&self.server, req.uri().path(), wants_leader) {
            let resp = tonic::Status::from(e).into_http();
            return Box::pin(async move { Ok(resp) });
        }
        let fut = self.inner.call(req);
        Box::pin(fut)
    }
}
