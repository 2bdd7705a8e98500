//! The lease clock: when each lease expires, as far as this member knows.
//!
//! Only the leader's clock counts. Every member tracks the granted leases (fed by the state
//! machine as grants and revokes apply), but deadlines are only meaningful on the leader:
//! when a member becomes leader it restarts every lease's full TTL from that moment, so a
//! leader change can lengthen a lease but never shortens it (etcd's `Promote`). Renewals
//! (KeepAlive) and TTL queries are answered by the leader; expiry turns into a replicated
//! revoke proposed by the leader (see `member::leases`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// etcd's upper bound on a lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Granted TTL in seconds.
    ttl: i64,
    deadline: Instant,
    /// When the leader last proposed revoking it; a failed revoke is retried after a while.
    revoking_since: Option<Instant>,
}

/// What the leader says about a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTtl {
    /// Remaining seconds (truncated, as etcd reports them).
    pub remaining: i64,
    pub granted: i64,
}

#[derive(Default)]
pub struct Lessor {
    leases: Mutex<HashMap<i64, Lease>>,
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(ttl.clamp(0, MAX_LEASE_TTL) as u64)
}

impl Lessor {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Lease>> {
        self.leases.lock().expect("lessor lock")
    }

    /// Replaces everything with the leases found in storage (at start or after a snapshot).
    pub fn reset(&self, leases: impl IntoIterator<Item = (i64, i64)>, now: Instant) {
        let mut m = self.lock();
        m.clear();
        for (id, ttl) in leases {
            m.insert(
                id,
                Lease {
                    ttl,
                    deadline: now + ttl_duration(ttl),
                    revoking_since: None,
                },
            );
        }
    }

    /// A grant was applied.
    pub fn granted(&self, id: i64, ttl: i64, now: Instant) {
        self.lock().insert(
            id,
            Lease {
                ttl,
                deadline: now + ttl_duration(ttl),
                revoking_since: None,
            },
        );
    }

    /// A revoke was applied.
    pub fn revoked(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// This member became leader: every lease gets its full TTL from now.
    pub fn promote(&self, now: Instant) {
        for l in self.lock().values_mut() {
            l.deadline = now + ttl_duration(l.ttl);
            l.revoking_since = None;
        }
    }

    /// KeepAlive: restarts the lease's TTL and returns it; `None` when the lease is unknown
    /// or already expired (its revoke is on the way).
    pub fn renew(&self, id: i64, now: Instant) -> Option<i64> {
        let mut m = self.lock();
        let l = m.get_mut(&id)?;
        if l.deadline <= now {
            return None;
        }
        l.deadline = now + ttl_duration(l.ttl);
        Some(l.ttl)
    }

    /// TimeToLive: `None` when the lease is unknown.
    pub fn time_to_live(&self, id: i64, now: Instant) -> Option<LeaseTtl> {
        let m = self.lock();
        let l = m.get(&id)?;
        Some(LeaseTtl {
            remaining: l.deadline.saturating_duration_since(now).as_secs() as i64,
            granted: l.ttl,
        })
    }

    /// Every known lease id, sorted.
    pub fn ids(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.lock().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// True when some lease has expired (whether or not its revoke is on the way).
    pub fn any_expired(&self, now: Instant) -> bool {
        self.lock().values().any(|l| l.deadline <= now)
    }

    /// Up to `max` expired leases to revoke now. A lease handed out here is not handed out
    /// again until `retry` passed, so a slow revoke is not proposed twice in a row.
    pub fn take_expired(&self, now: Instant, max: usize, retry: Duration) -> Vec<i64> {
        let mut m = self.lock();
        let mut out: Vec<(Instant, i64)> = m
            .iter()
            .filter(|(_, l)| l.deadline <= now && l.revoking_since.is_none_or(|t| now.duration_since(t) >= retry))
            .map(|(id, l)| (l.deadline, *id))
            .collect();
        out.sort_unstable();
        out.truncate(max);
        for (_, id) in &out {
            if let Some(l) = m.get_mut(id) {
                l.revoking_since = Some(now);
            }
        }
        out.into_iter().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_restarts_the_ttl_and_expired_leases_are_not_renewed() {
        let l = Lessor::default();
        let t0 = Instant::now();
        l.granted(7, 10, t0);
        assert_eq!(
            l.time_to_live(7, t0 + Duration::from_millis(2500)).unwrap().remaining,
            7
        );
        assert_eq!(l.renew(7, t0 + Duration::from_secs(5)), Some(10));
        assert_eq!(l.time_to_live(7, t0 + Duration::from_secs(5)).unwrap().remaining, 10);
        assert_eq!(l.renew(7, t0 + Duration::from_secs(16)), None, "expired at t0+15s");
        assert_eq!(l.renew(8, t0), None);
        assert_eq!(l.time_to_live(8, t0), None);
    }

    #[test]
    fn expired_leases_are_handed_out_once_per_retry_window_oldest_first() {
        let l = Lessor::default();
        let t0 = Instant::now();
        l.granted(1, 5, t0);
        l.granted(2, 3, t0);
        l.granted(3, 100, t0);
        let retry = Duration::from_secs(2);
        let t = t0 + Duration::from_secs(6);
        assert_eq!(l.take_expired(t, 10, retry), vec![2, 1]);
        assert!(l.take_expired(t + Duration::from_secs(1), 10, retry).is_empty());
        assert_eq!(l.take_expired(t + Duration::from_secs(2), 1, retry), vec![2]);
        l.revoked(2);
        assert_eq!(l.take_expired(t + Duration::from_secs(4), 10, retry), vec![1]);
    }

    #[test]
    fn promotion_never_shortens_a_lease() {
        let l = Lessor::default();
        let t0 = Instant::now();
        l.granted(1, 10, t0);
        let later = t0 + Duration::from_secs(8);
        l.promote(later);
        assert_eq!(l.time_to_live(1, later).unwrap().remaining, 10);
        assert!(
            l.take_expired(t0 + Duration::from_secs(12), 10, Duration::ZERO)
                .is_empty()
        );
        assert_eq!(l.ids(), vec![1]);
    }
}
