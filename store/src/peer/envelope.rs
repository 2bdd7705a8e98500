//! The peer protocol's envelope: how every peer request is addressed and how every refusal
//! comes back, the same for all RPCs.
//!
//! - **Address.** Each request carries its cluster, its sender and its target member as gRPC
//!   metadata, stamped by [`Stamp`] on the client side and checked once for every method by
//!   [`check`] on the server side. Stable DNS names are reused by new members, so an address
//!   alone proves nothing: a request for another cluster or another member is refused. A
//!   zero means "not known yet" (a joining member knows neither the cluster nor who answers).
//! - **Refusals.** Whatever a member refuses (not leader, a membership rule, a removed
//!   sender, a misaddressed message) travels as one gRPC status made by [`refuse`]: code
//!   `FailedPrecondition`, the [`StoreError`] text, and its stable code in metadata, so the
//!   caller rebuilds the very same error with [`refusal_of`]. A status without that code is
//!   transport trouble (the peer is down, restarting, or the message was too large).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Code, Status};

use crate::error::StoreError;

/// Metadata key: the cluster the sender belongs to (hex; 0 when not known yet).
pub const CLUSTER: &str = "lodestone-cluster";
/// Metadata key: the sending member (hex).
pub const FROM: &str = "lodestone-from";
/// Metadata key: the member the request is for (hex; 0 for "whoever answers").
pub const TO: &str = "lodestone-to";
/// Metadata key of a refusal: the [`StoreError::code`] of the reason.
pub const ERROR: &str = "lodestone-error";

/// How a request is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Address {
    pub cluster: u64,
    pub from: u64,
    pub to: u64,
}

fn read_hex<'a>(get: &impl Fn(&str) -> Option<&'a [u8]>, key: &str) -> Result<u64, StoreError> {
    let v =
        get(key).ok_or_else(|| StoreError::Misaddressed(format!("peer request without the {key} envelope field")))?;
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| StoreError::Misaddressed(format!("peer request with an unreadable {key} envelope field")))
}

impl Address {
    fn read_with<'a>(get: impl Fn(&str) -> Option<&'a [u8]>) -> Result<Address, StoreError> {
        Ok(Address {
            cluster: read_hex(&get, CLUSTER)?,
            from: read_hex(&get, FROM)?,
            to: read_hex(&get, TO)?,
        })
    }

    /// The address a request carries; a request without one is refused.
    pub fn read(meta: &MetadataMap) -> Result<Address, StoreError> {
        Address::read_with(|k| meta.get(k).map(|v| v.as_bytes()))
    }

    /// As [`Address::read`], from the HTTP headers of a request not yet decoded.
    pub fn from_headers(headers: &tonic::codegen::http::HeaderMap) -> Result<Address, StoreError> {
        Address::read_with(|k| headers.get(k).map(|v| v.as_bytes()))
    }

    fn write(&self, meta: &mut MetadataMap) {
        for (key, v) in [(CLUSTER, self.cluster), (FROM, self.from), (TO, self.to)] {
            let v = MetadataValue::try_from(format!("{v:x}")).expect("hex is valid metadata");
            meta.insert(key, v);
        }
    }
}

/// Whether a request addressed `addr` may reach member `me` of cluster `cluster` (0: this
/// member does not know its cluster yet). A stated cluster or member that is not this one is
/// refused.
pub fn check(addr: &Address, cluster: u64, me: u64) -> Result<(), StoreError> {
    if addr.cluster != 0 && cluster != 0 && addr.cluster != cluster {
        return Err(StoreError::Misaddressed(format!(
            "message for cluster {:x}, this member belongs to cluster {cluster:x}",
            addr.cluster
        )));
    }
    if addr.to != 0 && addr.to != me {
        return Err(StoreError::Misaddressed(format!(
            "message for member {:x} reached member {me:x}",
            addr.to
        )));
    }
    Ok(())
}

/// Stamps the envelope on every request of one client (a tonic interceptor).
#[derive(Clone)]
pub struct Stamp {
    /// Shared with the member: 0 until it knows its cluster (set at bootstrap or join).
    cluster: Arc<AtomicU64>,
    from: u64,
    to: u64,
}

impl Stamp {
    pub fn new(cluster: Arc<AtomicU64>, from: u64, to: u64) -> Stamp {
        Stamp { cluster, from, to }
    }

    /// For a member that knows neither its cluster nor its own id yet (joining), asking
    /// whoever answers at an address.
    pub fn anonymous() -> Stamp {
        Stamp::new(Arc::new(AtomicU64::new(0)), 0, 0)
    }
}

impl Interceptor for Stamp {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        Address {
            cluster: self.cluster.load(Ordering::Relaxed),
            from: self.from,
            to: self.to,
        }
        .write(req.metadata_mut());
        Ok(req)
    }
}

/// The one form of every refusal a peer answers with.
pub fn refuse(e: &StoreError) -> Status {
    let mut s = Status::new(Code::FailedPrecondition, e.to_string());
    let code = MetadataValue::try_from(e.code().to_string()).expect("a number is valid metadata");
    s.metadata_mut().insert(ERROR, code);
    s
}

/// The refusal a status carries, if it is one (see [`refuse`]); `None` for transport trouble.
pub fn refusal_of(s: &Status) -> Option<StoreError> {
    let code = s.metadata().get(ERROR)?.to_str().ok()?.parse().ok()?;
    Some(StoreError::from_code(code, s.message()))
}

/// What a failed peer call means to a caller routing a request to the leader: the leader's
/// refusal as it gave it, or, when the call itself failed, `LeaderChanged` (the leader may
/// or may not have acted on it; the client must decide, as with etcd).
pub fn error_of(s: &Status) -> StoreError {
    refusal_of(s).unwrap_or(StoreError::LeaderChanged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_round_trip_and_transport_errors_do_not_pass_for_them() {
        for e in [
            StoreError::NotLeader,
            StoreError::MemberNotEnoughStarted,
            StoreError::MemberRemoved,
            StoreError::Misaddressed("message for member 2 reached member 3".into()),
        ] {
            assert_eq!(refusal_of(&refuse(&e)), Some(e.clone()));
            assert_eq!(error_of(&refuse(&e)), e);
        }
        let transport = Status::unavailable("connection refused");
        assert_eq!(refusal_of(&transport), None);
        assert_eq!(error_of(&transport), StoreError::LeaderChanged);
        // A status with our message but without the code is not taken for a refusal.
        assert_eq!(refusal_of(&Status::failed_precondition("etcdserver: not leader")), None);
    }

    #[test]
    fn the_stamped_address_is_checked() {
        let cluster = Arc::new(AtomicU64::new(0xc1));
        let mut stamp = Stamp::new(cluster.clone(), 0xa, 0xb);
        let req = stamp.call(tonic::Request::new(())).unwrap();
        let addr = Address::read(req.metadata()).unwrap();
        assert_eq!(
            addr,
            Address {
                cluster: 0xc1,
                from: 0xa,
                to: 0xb
            }
        );
        assert_eq!(check(&addr, 0xc1, 0xb), Ok(()));
        assert!(matches!(check(&addr, 0xc2, 0xb), Err(StoreError::Misaddressed(_))));
        assert!(matches!(check(&addr, 0xc1, 0xd), Err(StoreError::Misaddressed(_))));
        // A member that does not know its cluster yet cannot check it, only the target.
        assert_eq!(check(&addr, 0, 0xb), Ok(()));
        // A joining member states neither.
        let mut anon = Stamp::anonymous();
        let req = anon.call(tonic::Request::new(())).unwrap();
        assert_eq!(check(&Address::read(req.metadata()).unwrap(), 0xc1, 0xb), Ok(()));
        // No envelope at all is refused.
        assert!(matches!(
            Address::read(&MetadataMap::new()),
            Err(StoreError::Misaddressed(_))
        ));
    }
}
