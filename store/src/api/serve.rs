//! Binds the listeners, serves the client, peer and metrics endpoints, and shuts down in
//! order: stop accepting clients and let in-flight requests finish, stop Raft, stop peers,
//! close storage.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::auth::AuthService;
use super::cluster::ClusterService;
use super::concurrency::{ElectionService, LockService};
use super::kv::KvService;
use super::lease::LeaseService;
use super::maintenance::MaintenanceService;
use super::watch::WatchService;
use crate::config::{self, Config, ConfigError};
use crate::member::{Member, StartError};
use crate::net::coalesce::Coalesced;
use crate::net::h2_authority::ClientStream;
use crate::net::tls::{self, Conn, Dialer, TlsError};
use crate::peer::service::{EnvelopeLayer, PeerService};
use crate::proto::etcdserverpb::auth_server::AuthServer;
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

/// TLS for the listeners and for dialing peers, from the flags.
struct Security {
    /// For `https://` client (and metrics) URLs.
    client: Option<Arc<ServerConfig>>,
    /// For `https://` peer URLs.
    peer: Option<Arc<ServerConfig>>,
    dialer: Dialer,
}

/// The hosts of `urls`, for a self-signed certificate's names.
fn hosts(urls: &[&String]) -> Vec<String> {
    let mut out: Vec<String> = urls
        .iter()
        .filter_map(|u| config::parse_url(u).ok())
        .filter_map(|hp| hp.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_string()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Checks the TLS flags against the URLs and loads (or, with auto TLS, makes) the
/// certificates, before anything is bound or opened.
fn security(cfg: &Config) -> Result<Security, ConfigError> {
    let policy = cfg.tls_policy();
    policy.check()?;
    let client_side = cfg.client_tls();
    let peer_side = cfg.peer_tls();
    client_side.check()?;
    peer_side.check()?;

    let client_urls: Vec<&String> = cfg
        .listen_client_urls
        .iter()
        .chain(&cfg.advertise_client_urls)
        .chain(cfg.listen_metrics_urls.iter().filter(|u| !u.is_empty()))
        .collect();
    let client_pair = client_side.key_pair(&cfg.auto_tls_dir("client"), &hosts(&client_urls))?;
    let client = side_config(&client_side, &policy, &client_urls, client_pair.as_ref())?;
    let peer_urls: Vec<&String> = cfg
        .listen_peer_urls
        .iter()
        .chain(&cfg.initial_advertise_peer_urls)
        .collect();
    let peer_pair = peer_side.key_pair(&cfg.auto_tls_dir("peer"), &hosts(&peer_urls))?;
    let peer = side_config(&peer_side, &policy, &peer_urls, peer_pair.as_ref())?;
    // A member with a peer certificate (or CA) dials https peers with it; one without can
    // still dial http peers, and says what is missing if it meets an https one.
    let dialer = if peer_pair.is_some() || peer_side.trusted_ca_file.is_some() {
        Dialer::new(
            &peer_side,
            &policy,
            peer_pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )?
    } else {
        Dialer::plain()
    };
    Ok(Security { client, peer, dialer })
}

/// The server configuration of one side, if any of its URLs is `https://`; `pair` is the
/// side's certificate and key, as [`tls::Side::key_pair`] found them.
fn side_config(
    side: &tls::Side,
    policy: &tls::Policy,
    urls: &[&String],
    pair: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let https = urls.iter().find(|u| config::is_https(u));
    match (https, pair) {
        (Some(_), Some((cert, key))) => Ok(Some(tls::server_config(side, policy, cert, key)?)),
        (Some(url), None) => Err(TlsError::NoCertificate {
            url: url.to_string(),
            prefix: side.flag_prefix,
        }),
        (None, Some(_)) => {
            // As etcd: certificates without an https URL to serve them on are unused.
            tracing::warn!(
                "--{0}cert-file/--{0}key-file (or --{0}auto-tls) are set but no {0}URL is https; ignoring them",
                side.flag_prefix
            );
            Ok(None)
        }
        (None, None) => Ok(None),
    }
}

/// Accepted connections of a listener, TLS-wrapped when its URL is `https://`, until `stop`.
fn incoming(
    url: &str,
    l: TcpListener,
    tls: &Option<Arc<ServerConfig>>,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>> {
    let tls = if config::is_https(url) { tls.clone() } else { None };
    tls::accept(l, tls, stop)
}

/// The client TLS configuration for a metrics listener: it speaks HTTP/1.1 only, so TLS
/// must not offer h2 (a client such as curl would pick it).
fn http1_only(tls: &Option<Arc<ServerConfig>>) -> Option<Arc<ServerConfig>> {
    tls.as_ref().map(|c| {
        let mut c = (**c).clone();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    })
}

/// A metrics listener's accepted connections, as axum serves them.
struct MetricsListener {
    conns: tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>>,
    local: SocketAddr,
}

impl axum::serve::Listener for MetricsListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            match self.conns.next().await {
                Some(Ok(c)) => {
                    let remote = c.connect_info().remote_addr.unwrap_or(self.local);
                    return (c, remote);
                }
                Some(Err(_)) => continue,
                // The listener stopped: shutdown is under way and ends the server.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
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
    crate::auth::tokens::TokenKind::from_config(&cfg)?;
    let security = security(&cfg)?;
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
    let member = Member::start(cfg, security.dialer.clone(), shutdown.clone()).await?;
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
    for (url, l) in peer {
        let svc = PeerServer::new(PeerService { member: member.clone() })
            .max_decoding_message_size(crate::peer::max_message(member.config().max_request_bytes))
            .max_encoding_message_size(i32::MAX as usize);
        let stop = peers_stop.clone();
        peer_tasks.push(tokio::spawn(
            tonic::transport::Server::builder()
                .layer(EnvelopeLayer { member: member.clone() })
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming(&url, l, &security.peer, stop.clone()), stop.cancelled_owned()),
        ));
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<KvServer<KvService>>().await;
    let mut client_tasks = Vec::new();
    for (url, l) in client {
        let s = member.clone();
        let kv = KvServer::new(KvService { member: s.clone() })
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX);
        let maint =
            MaintenanceServer::new(MaintenanceService { member: s.clone() }).max_decoding_message_size(max_recv);
        let cluster = ClusterServer::new(ClusterService { member: s.clone() }).max_decoding_message_size(max_recv);
        let lease = LeaseServer::new(LeaseService { member: s.clone() }).max_decoding_message_size(max_recv);
        let auth = AuthServer::new(AuthService { member: s.clone() }).max_decoding_message_size(max_recv);
        let lock = LockServer::new(LockService { member: s.clone() }).max_decoding_message_size(max_recv);
        let election = ElectionServer::new(ElectionService { member: s.clone() }).max_decoding_message_size(max_recv);
        let watch = WatchServer::new(WatchService { member: s.clone() })
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX);
        // Client connections go through the :authority repair (see `h2_authority`) and write
        // in batches (see `coalesce`).
        let conns = incoming(&url, l, &security.client, shutdown.clone())
            .map(|conn| conn.map(|c| ClientStream::new(Coalesced::new(c))));
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
                .add_service(auth)
                .add_service(watch)
                .add_service(lock)
                .add_service(election)
                .serve_with_incoming_shutdown(conns, shutdown.clone().cancelled_owned()),
        ));
    }

    let mut http_tasks = Vec::new();
    for (url, l) in metrics {
        let router = super::http::router(member.clone());
        let stop = shutdown.clone();
        let listener = MetricsListener {
            local: l
                .local_addr()
                .map_err(|err| StartError::Listen { url: url.clone(), err })?,
            conns: incoming(&url, l, &http1_only(&security.client), stop.clone()),
        };
        http_tasks.push(tokio::spawn(async move {
            axum::serve(listener, router)
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
