//! Connections to other members: one cache per member, shared by openraft's replication
//! and by everything a member routes to its leader (forwarded writes, ReadIndex, lease
//! queries, membership changes, the corruption check). Every client it hands out stamps the
//! envelope ([`super::envelope::Stamp`]) addressed to the member it was asked for.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::envelope::Stamp;
use crate::error::StoreError;
use crate::proto::lodestone::peer_client::PeerClient;

/// A peer client whose every request carries the envelope.
pub type Client = PeerClient<InterceptedService<Channel, Stamp>>;

/// A lazily connecting channel to a peer URL (Nagle off, HTTP/2 keep-alives).
pub fn channel(url: &str) -> Result<Channel, StoreError> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| StoreError::Internal(format!("peer URL {url}: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// A client for whoever answers at `url`, from a member that knows neither its cluster nor
/// its own id yet (joining, or checking whether it was bootstrapped before).
pub fn anonymous(url: &str) -> Result<Client, StoreError> {
    Ok(PeerClient::with_interceptor(channel(url)?, Stamp::anonymous()))
}

/// The member's channels to its peers, by member id; a member whose URL changed gets a new
/// channel. tonic channels reconnect by themselves, so an entry stays valid across a
/// peer's restart.
pub struct Peers {
    me: u64,
    cluster: Arc<AtomicU64>,
    channels: Mutex<HashMap<u64, (String, Channel)>>,
}

impl Peers {
    /// `cluster` is the member's cluster id, shared so that clients stamp it once known.
    pub fn new(me: u64, cluster: Arc<AtomicU64>) -> Peers {
        Peers {
            me,
            cluster,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A client for member `id`, reached at `url`.
    pub fn client(&self, id: u64, url: &str) -> Result<Client, StoreError> {
        let mut channels = self.channels.lock().expect("peer channels lock");
        let ch = match channels.get(&id) {
            Some((u, ch)) if u == url => ch.clone(),
            _ => {
                let ch = channel(url)?;
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
