//! Connections to other members: one cache per member, shared by openraft's replication
//! and by everything a member routes to its leader (forwarded writes, ReadIndex, lease
//! queries, membership changes, the corruption check). Every client it hands out stamps the
//! envelope ([`super::envelope::Stamp`]) addressed to the member it was asked for.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::codegen::http::Uri;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::net::tls::Conn;
pub use crate::net::tls::Dialer;

use super::envelope::Stamp;
use crate::error::StoreError;
use crate::proto::lodestone::peer_client::PeerClient;

/// A peer client whose every request carries the envelope.
pub type Client = PeerClient<InterceptedService<Channel, Stamp>>;

/// A lazily connecting channel to a peer URL (Nagle off, HTTP/2 keep-alives), over TLS for
/// an `https://` URL.
pub fn channel(url: &str, dialer: &Dialer) -> Result<Channel, StoreError> {
    let bad = |why: &str| StoreError::Internal(format!("peer URL {url}: {why}"));
    let hostport = crate::config::parse_url(url).map_err(|e| bad(&e.to_string()))?;
    let (host, port) = hostport.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
    // The channel's own URI stays http: the connector does TLS itself, so tonic never has to.
    let endpoint = Endpoint::from_shared(format!("http://{hostport}"))
        .map_err(|e| bad(&e.to_string()))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let connector = PeerConnector {
        dialer: dialer.clone(),
        host: Arc::from(host),
        port,
        tls: crate::config::is_https(url),
    };
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// Dials one peer URL for a channel, each time the channel (re)connects.
#[derive(Clone)]
struct PeerConnector {
    dialer: Dialer,
    host: Arc<str>,
    port: u16,
    tls: bool,
}

impl tower::Service<Uri> for PeerConnector {
    type Response = TokioIo<Conn>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<Conn>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let c = self.clone();
        Box::pin(async move { c.dialer.connect(&c.host, c.port, c.tls).await.map(TokioIo::new) })
    }
}

/// A client for whoever answers at `url`, from a member that knows neither its cluster nor
/// its own id yet (joining, or checking whether it was bootstrapped before).
pub fn anonymous(url: &str, dialer: &Dialer) -> Result<Client, StoreError> {
    Ok(PeerClient::with_interceptor(channel(url, dialer)?, Stamp::anonymous()))
}

/// The member's channels to its peers, by member id; a member whose URL changed gets a new
/// channel. tonic channels reconnect by themselves, so an entry stays valid across a
/// peer's restart.
pub struct Peers {
    me: u64,
    cluster: Arc<AtomicU64>,
    dialer: Dialer,
    channels: Mutex<HashMap<u64, (String, Channel)>>,
}

impl Peers {
    /// `cluster` is the member's cluster id, shared so that clients stamp it once known.
    pub fn new(me: u64, cluster: Arc<AtomicU64>, dialer: Dialer) -> Peers {
        Peers {
            me,
            cluster,
            dialer,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A client for member `id`, reached at `url`.
    pub fn client(&self, id: u64, url: &str) -> Result<Client, StoreError> {
        let mut channels = self.channels.lock().expect("peer channels lock");
        let ch = match channels.get(&id) {
            Some((u, ch)) if u == url => ch.clone(),
            _ => {
                let ch = channel(url, &self.dialer)?;
                channels.insert(id, (url.to_string(), ch.clone()));
                ch
            }
        };
        Ok(PeerClient::with_interceptor(
            ch,
            Stamp::new(self.cluster.clone(), self.me, id),
        ))
    }

    /// Drops the channel to member `id` after transport trouble, so the next call dials
    /// afresh instead of waiting on a connection that may be stuck.
    pub fn forget(&self, id: u64) {
        self.channels.lock().expect("peer channels lock").remove(&id);
    }
}
