//! The one way a request reaches the leader: handled here when this member leads, sent over
//! the peer transport otherwise, and routed again when leadership moved underneath it, as
//! far as the request's [`Reroute`] policy allows. Callers bound the whole with their
//! request timeout, so a member without a leader answers "request timed out" as etcd does.

use std::future::Future;

use super::Member;
use crate::error::{Result, StoreError};
use crate::peer::client::Client;
use crate::peer::envelope;
use crate::raft::NodeId;

/// Where a routed request runs.
pub enum Leader {
    /// This member leads.
    Here,
    /// Another member leads (this id); the client reaches it.
    Peer(NodeId, Client),
}

/// When a routed request may be tried again, with whoever leads by then.
#[derive(Debug, Clone, Copy)]
pub enum Reroute {
    /// When the member asked answered that it does not lead: nothing was done there, so
    /// it is safe for writes (a failed call may have been acted on, and is the client's to
    /// decide).
    NotLeader,
    /// Also when the call failed on the way: for requests that are idempotent (lease
    /// renewals and queries).
    NotLeaderOrLost,
    /// As [`Reroute::NotLeader`], at most this many more times; then `LeaderChanged`.
    NotLeaderAtMost(u32),
}

impl Reroute {
    fn again(&self, e: &StoreError, tries: u32) -> bool {
        match self {
            Reroute::NotLeader => matches!(e, StoreError::NotLeader),
            Reroute::NotLeaderOrLost => matches!(e, StoreError::NotLeader | StoreError::LeaderChanged),
            Reroute::NotLeaderAtMost(n) => matches!(e, StoreError::NotLeader) && tries <= *n,
        }
    }
}

/// What a peer call to the leader gave: its answer, or its refusal as the leader gave it
/// (`LeaderChanged` when the call itself failed: see [`envelope::error_of`]).
pub fn answer<T>(r: std::result::Result<tonic::Response<T>, tonic::Status>) -> Result<T> {
    r.map(tonic::Response::into_inner).map_err(|s| envelope::error_of(&s))
}

impl Member {
    /// A client for member `id`, at the peer URL the membership records for it.
    pub(super) fn peer_client(&self, id: NodeId) -> Result<Client> {
        let url = self.consensus.peer_url(id).ok_or(StoreError::NoLeader)?;
        // Requests are commands and queries within the peer bound; answers to forwarded
        // writes carry whole txn results, bounded like any gRPC message (2 GiB).
        Ok(self
            .peers
            .client(id, &url)?
            .max_decoding_message_size(i32::MAX as usize)
            .max_encoding_message_size(crate::peer::max_message(self.cfg.max_request_bytes)))
    }

    /// Runs `call` on the leader (waiting for one), routing it again as `reroute` allows,
    /// one heartbeat apart.
    pub async fn to_leader<T, F, Fut>(&self, reroute: Reroute, mut call: F) -> Result<T>
    where
        F: FnMut(Leader) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut tries = 0;
        loop {
            let leader = self.consensus.wait_leader().await?;
            let r = if leader == self.id {
                call(Leader::Here).await
            } else {
                match self.peer_client(leader) {
                    Ok(c) => call(Leader::Peer(leader, c)).await,
                    Err(e) => Err(e),
                }
            };
            tries += 1;
            match r {
                Err(e) if reroute.again(&e, tries) => tokio::time::sleep(self.cfg.heartbeat()).await,
                Err(StoreError::NotLeader) if matches!(reroute, Reroute::NotLeaderAtMost(_)) => {
                    return Err(StoreError::LeaderChanged);
                }
                r => return r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reroute_policies() {
        assert!(Reroute::NotLeader.again(&StoreError::NotLeader, 100));
        assert!(!Reroute::NotLeader.again(&StoreError::LeaderChanged, 1));
        assert!(Reroute::NotLeaderOrLost.again(&StoreError::LeaderChanged, 1));
        assert!(!Reroute::NotLeaderOrLost.again(&StoreError::Timeout, 1));
        assert!(Reroute::NotLeaderAtMost(3).again(&StoreError::NotLeader, 3));
        assert!(!Reroute::NotLeaderAtMost(3).again(&StoreError::NotLeader, 4));
        assert!(!Reroute::NotLeaderAtMost(3).again(&StoreError::Timeout, 1));
    }
}
