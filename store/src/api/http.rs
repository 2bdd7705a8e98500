//! The HTTP endpoints, served on every client URL (as etcd does) and on the extra listeners
//! of `--listen-metrics-urls`.
//!
//! - `/health`: etcd's shape, `{"health":"true"}`; healthy when a leader exists and a
//!   linearizable read barrier completes within a second.
//! - `/livez`: the process serves requests.
//! - `/readyz`: the member has a leader and has caught up with what it served before a
//!   restart; Kubernetes routes client traffic only to ready members.
//! - `/version`: etcd's shape, `{"etcdserver":…,"etcdcluster":…}`.
//! - `/metrics`: Prometheus text format.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::member::Member;
use crate::metrics;

async fn health(member: Arc<Member>) -> impl IntoResponse {
    let ok = member.leader().is_some()
        && tokio::time::timeout(Duration::from_secs(1), member.linearizable_barrier())
            .await
            .is_ok_and(|r| r.is_ok());
    let (code, body) = if ok {
        (StatusCode::OK, r#"{"health":"true","reason":""}"#.to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"health":"false","reason":"no leader or quorum unreachable"}"#.to_string(),
        )
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

async fn readyz(member: Arc<Member>) -> impl IntoResponse {
    let caught_up = tokio::time::timeout(Duration::from_millis(500), member.serializable_barrier())
        .await
        .is_ok_and(|r| r.is_ok());
    if member.leader().is_some() && caught_up {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader or still recovering\n",
        )
    }
}

async fn render_metrics(member: Arc<Member>) -> impl IntoResponse {
    let (size, in_use) = member.state().mvcc.size();
    metrics::set_db(size, in_use, member.revision());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics::render())
}

async fn version() -> impl IntoResponse {
    let v = super::maintenance::ETCD_API_VERSION;
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"etcdserver":"{v}","etcdcluster":"{v}"}}"#),
    )
}

/// Every path the router serves.
pub const PATHS: [&str; 5] = ["/health", "/livez", "/readyz", "/metrics", "/version"];

pub fn router(member: Arc<Member>) -> Router {
    let (s1, s2, s3) = (member.clone(), member.clone(), member);
    Router::new()
        .route("/version", get(version))
        .route("/health", get(move || health(s1.clone())))
        .route("/readyz", get(move || readyz(s2.clone())))
        .route("/livez", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/metrics", get(move || render_metrics(s3.clone())))
}
