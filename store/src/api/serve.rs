//! Binds the listeners, serves the client, peer and metrics endpoints, and shuts down in
//! order: stop accepting clients and let in-flight requests finish, stop Raft, stop peers,
//! close storage.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use super::cluster::ClusterService;
use super::concurrency::{ElectionService, LockService};
use super::kv::KvService;
use super::lease::LeaseService;
use super::maintenance::MaintenanceService;
use super::watch::WatchService;
use crate::config::{self, Config};
use crate::member::{Member, StartError};
use crate::net::h2_authority::ClientStream;
use crate::peer::service::{EnvelopeLayer, PeerService};
use crate::proto::etcdserverpb::cluster_server::ClusterServer;
use crate::proto::etcdserverpb::kv_server::KvServer;
use crate::proto::etcdserverpb::lease_server::LeaseServer;
use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::proto::etcdserverpb::watch_server::WatchServer;
use crate::proto::lodestone::peer_server::PeerServer;
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;

/// gRPC allows this much over `--max-request-bytes` for framing, as etcd does.
const GRPC_OVERHEAD: usize = 512 * 1024;

async fn bind_all(urls: &[String]) -> Result<Vec<(String, TcpListener)>, StartError> {
    let mut out = Vec::new();
    for url in urls {
        for addr in config::resolve(url).await? {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|err| StartError::Listen { url: url.clone(), err })?;
            out.push((url.clone(), l));
        }
    }
    Ok(out)
}

/// Accepted connections with Nagle's algorithm off: a response or a Raft message goes out
/// as soon as it is written. (The server builder's `tcp_nodelay` applies only to listeners
/// it binds itself.)
fn incoming(l: TcpListener) -> TcpIncoming {
    TcpIncoming::from(l).with_nodelay(Some(true))
}

/// The addresses a running member listens on (useful when ports were chosen by the OS).
#[derive(Debug, Clone)]
pub struct Bound {
    pub client: Vec<SocketAddr>,
    pub peer: Vec<SocketAddr>,
    pub metrics: Vec<SocketAddr>,
}

/// A gRPC method of a service this member does not serve (tonic's own fallback, kept when
/// the HTTP routes join the client router).
async fn unknown_method() -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, ()) = tonic::Status::unimplemented("").into_http::<()>().into_parts();
    (parts.status, parts.headers).into_response()
}

/// Runs a member until `shutdown` is cancelled.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    // Flag errors first, before anything is bound or opened.
    cfg.retention()?;
    let client = bind_all(&cfg.listen_client_urls).await?;
    let peer = bind_all(&cfg.listen_peer_urls).await?;
    let metrics_urls: Vec<String> = cfg
        .listen_metrics_urls
        .iter()
        .filter(|u| !u.is_empty())
        .cloned()
        .collect();
    let metrics = bind_all(&metrics_urls).await?;
    let max_recv = cfg.max_request_bytes + GRPC_OVERHEAD;
    let member = Member::start(cfg, shutdown.clone()).await?;
    tracing::info!(
        name = %member.config().name,
        member = %format!("{:x}", member.id()),
        cluster = %format!("{:x}", member.cluster_id()),
        client = ?client.iter().map(|(u, _)| u).collect::<Vec<_>>(),
        peer = ?peer.iter().map(|(u, _)| u).collect::<Vec<_>>(),
        "serving"
    );

    // Peers keep talking until Raft has stopped.
    let peers_stop = CancellationToken::new();
    let mut peer_tasks = Vec::new();
    for (_, l) in peer {
        let svc = PeerServer::new(PeerService { member: member.clone() })
            .max_decoding_message_size(crate::peer::max_message(member.config().max_request_bytes))
            .max_encoding_message_size(i32::MAX as usize);
        let stop = peers_stop.clone();
        peer_tasks.push(tokio::spawn(
            tonic::transport::Server::builder()
                .layer(EnvelopeLayer { member: member.clone() })
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming(l), stop.cancelled_owned()),
        ));
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<KvServer<KvService>>().await;
    let mut client_tasks = Vec::new();
    for (_, l) in client {
        let s = member.clone();
        let kv = KvServer::new(KvService { member: s.clone() })
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX);
        let maint =
            MaintenanceServer::new(MaintenanceService { member: s.clone() }).max_decoding_message_size(max_recv);
        let cluster = ClusterServer::new(ClusterService { member: s.clone() }).max_decoding_message_size(max_recv);
        let lease = LeaseServer::new(LeaseService { member: s.clone() }).max_decoding_message_size(max_recv);
        let lock = LockServer::new(LockService { member: s.clone() }).max_decoding_message_size(max_recv);
        let election = ElectionServer::new(ElectionService { member: s.clone() }).max_decoding_message_size(max_recv);
        let watch = WatchServer::new(WatchService { member: s.clone() })
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX);
        // Client connections go through the :authority repair (see `authority`).
        let conns = incoming(l).map(|conn| conn.map(ClientStream::new));
        // The HTTP endpoints share the client port, as etcd serves them (HTTP/1.1 and gRPC
        // over HTTP/2 on one listener); anything else is a gRPC method nobody serves.
        let http = tonic::service::Routes::from(super::http::router(s.clone()).fallback(unknown_method));
        client_tasks.push(tokio::spawn(
            tonic::transport::Server::builder()
                .accept_http1(true)
                .layer(super::limits::OversizeLayer)
                .layer(super::guard::GuardLayer { member: s.clone() })
                .add_routes(http)
                .add_service(health_service.clone())
                .add_service(kv)
                .add_service(maint)
                .add_service(cluster)
                .add_service(lease)
                .add_service(watch)
                .add_service(lock)
                .add_service(election)
                .serve_with_incoming_shutdown(conns, shutdown.clone().cancelled_owned()),
        ));
    }

    let mut http_tasks = Vec::new();
    for (_, l) in metrics {
        let router = super::http::router(member.clone());
        let stop = shutdown.clone();
        http_tasks.push(tokio::spawn(async move {
            axum::serve(l, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }));
    }

    shutdown.cancelled().await;
    tracing::info!("shutting down: draining client requests");
    for t in client_tasks {
        let _ = t.await;
    }
    for t in http_tasks {
        let _ = t.await;
    }
    member.stop().await;
    peers_stop.cancel();
    for t in peer_tasks {
        let _ = t.await;
    }
    tracing::info!("stopped");
    match member.failure() {
        Some(why) => Err(StartError::Failed(why)),
        None => Ok(()),
    }
}
