//! The leader's side of leases.
//!
//! Grants and revokes are replicated commands. Renewals (KeepAlive) and TTL queries are
//! answered by the leader, whose clock alone decides expiry; followers route them there.
//! The leader turns expired leases into replicated revokes, at most [`REVOKES_PER_TICK`]
//! per tick (etcd's 1000 per second). The deadlines themselves are `crate::lease`'s, fed by
//! the state machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Member;
use super::route::{Leader, Reroute, answer};
use crate::auth::AuthInfo;
use crate::error::{Result, StoreError};
use crate::lease::MAX_LEASE_TTL;
use crate::proto::etcdserverpb::{LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse};
use crate::proto::lodestone::{self as pb, LeaseAnswer, LeaseQuery, command::Kind, command_result::Kind as ResKind};

const TICK: Duration = Duration::from_millis(500);
const REVOKES_PER_TICK: usize = 500;

/// Leader-side lease state that is not replicated.
#[derive(Default)]
pub struct LeaseClock {
    /// The term in which this member last restarted every lease's TTL as the new leader.
    promoted_term: std::sync::Mutex<u64>,
    ids: AtomicU64,
}

/// A well-mixed 64-bit value (splitmix64's finalizer).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

impl Member {
    /// The smallest TTL a lease gets: etcd's `ceil(1.5 × election timeout)` in seconds.
    pub fn min_lease_ttl(&self) -> i64 {
        let ms = self.cfg.election().as_millis() as i64 * 3 / 2;
        ((ms + 999) / 1000).max(1)
    }

    fn new_lease_id(&self) -> i64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let n = self.lease_clock.ids.fetch_add(1, Ordering::Relaxed);
        loop {
            let id = (mix(self.id ^ nanos.rotate_left(17) ^ mix(n)) & (i64::MAX as u64)) as i64;
            if id != 0 {
                return id;
            }
        }
    }

    /// LeaseGrant: bounds the TTL, picks an ID when the client left it 0, and replicates.
    pub async fn lease_grant(self: &Arc<Self>, req: LeaseGrantRequest, who: AuthInfo) -> Result<LeaseGrantResponse> {
        if req.ttl > MAX_LEASE_TTL {
            return Err(StoreError::LeaseTtlTooLarge);
        }
        let ttl = req.ttl.max(self.min_lease_ttl());
        let chosen = req.id != 0;
        for _ in 0..8 {
            let id = if chosen { req.id } else { self.new_lease_id() };
            let cmd = pb::Command {
                kind: Some(Kind::LeaseGrant(LeaseGrantRequest { ttl, id })),
                auth: Some(who.clone()),
            };
            match self.propose_write(cmd).await {
                Ok(pb::CommandResult {
                    kind: Some(ResKind::LeaseGrant(mut r)),
                    ..
                }) => {
                    r.header = self.header(r.header.map_or(0, |h| h.revision));
                    return Ok(r);
                }
                Ok(_) => return Err(StoreError::Internal("unexpected result for lease grant".into())),
                // A server-chosen ID that collided: pick another.
                Err(StoreError::LeaseExist) if !chosen => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::LeaseExist)
    }

    /// LeaseRevoke through Raft: the attached keys go at one revision (a client's revoke is
    /// checked at apply: its user must be allowed to delete every one of them).
    pub async fn lease_revoke(&self, id: i64, who: AuthInfo) -> Result<LeaseRevokeResponse> {
        let mut cmd = revoke_command(id);
        cmd.auth = Some(who);
        match self.propose(cmd).await? {
            pb::CommandResult {
                kind: Some(ResKind::LeaseRevoke(mut r)),
                ..
            } => {
                r.header = self.header(r.header.map_or(0, |h| h.revision));
                Ok(r)
            }
            _ => Err(StoreError::Internal("unexpected result for lease revoke".into())),
        }
    }

    /// Renews or reports a lease on the leader, forwarding when this member is a follower.
    pub async fn lease_query(&self, q: LeaseQuery) -> Result<LeaseAnswer> {
        // Renewals and queries are idempotent: route again until the request timeout while
        // leadership settles.
        let routed = self.to_leader(Reroute::NotLeaderOrLost, |leader| async move {
            match leader {
                Leader::Here => self.lease_query_here(&q).await,
                Leader::Peer(_, mut c) => answer(c.lease(q).await),
            }
        });
        tokio::time::timeout(self.cfg.request_timeout(), routed)
            .await
            .unwrap_or(Err(StoreError::Timeout))
    }

    /// The leader's answer. Every lease's TTL restarts the first time a new leader is asked
    /// (or its expiry loop runs) in its term, before any deadline is read.
    ///
    /// Leadership is confirmed with a quorum after the request arrived and before the clock
    /// is read (etcd's `ensureLeadership`): a leader cut off from its quorum, which the rest
    /// of the cluster has already replaced, must not renew a lease the new leader lets
    /// expire, or a lock holder would believe it still holds its lock.
    pub async fn lease_query_here(&self, q: &LeaseQuery) -> Result<LeaseAnswer> {
        let committed = self.lease_leader_ready()?;
        // A grant the previous leader committed may not be applied here yet.
        self.wait_applied(committed).await?;
        self.confirm_leadership().await?;
        let now = Instant::now();
        let lessor = &self.sm.lessor;
        if q.renew {
            return Ok(match lessor.renew(q.id, now) {
                Some(ttl) => LeaseAnswer {
                    ttl,
                    granted_ttl: ttl,
                    keys: Vec::new(),
                },
                None => LeaseAnswer {
                    ttl: -1,
                    ..Default::default()
                },
            });
        }
        let Some(t) = lessor.time_to_live(q.id, now) else {
            return Ok(LeaseAnswer {
                ttl: -1,
                ..Default::default()
            });
        };
        let keys = if q.keys {
            let sm = self.sm.clone();
            let id = q.id;
            tokio::task::spawn_blocking(move || sm.mvcc.lease_keys(id))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))??
                .into_iter()
                .map(Into::into)
                .collect()
        } else {
            Vec::new()
        };
        Ok(LeaseAnswer {
            ttl: t.remaining,
            granted_ttl: t.granted,
            keys,
        })
    }

    /// Checks that this member leads and that its lease clock was restarted in this term;
    /// returns the commit index to wait for.
    fn lease_leader_ready(&self) -> Result<u64> {
        let (leader, term, committed) = self.consensus.leadership();
        if leader != Some(self.id) {
            return Err(StoreError::NotLeader);
        }
        let mut promoted = self.lease_clock.promoted_term.lock().expect("lease clock lock");
        if *promoted != term {
            self.sm.lessor.promote(Instant::now());
            *promoted = term;
            tracing::info!(term, "leader: restarted every lease's TTL");
        }
        Ok(committed)
    }
}

pub(crate) fn revoke_command(id: i64) -> pb::Command {
    pb::Command {
        kind: Some(Kind::LeaseRevoke(LeaseRevokeRequest { id })),
        auth: None,
    }
}

/// The leader's expiry loop: proposes revokes for expired leases until shutdown.
///
/// An expiry is decided on this member's clock, so it only counts while this member leads:
/// leadership is confirmed with a quorum before expired leases are taken, and their revokes
/// are proposed here only, never forwarded. A deposed leader (one that was cut off, or
/// stalled, while another took over and kept the leases alive) therefore cannot revoke them
/// through the new leader; the new leader's own clock decides.
pub(super) async fn expire_leases(member: Arc<Member>) {
    let retry = member.cfg.election() * 2;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = member.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if member.lease_leader_ready().is_err() || !member.sm.lessor.any_expired(Instant::now()) {
            continue;
        }
        if member.confirm_leadership().await.is_err() {
            continue;
        }
        let expired = member.sm.lessor.take_expired(Instant::now(), REVOKES_PER_TICK, retry);
        if expired.is_empty() {
            continue;
        }
        tracing::debug!(count = expired.len(), "revoking expired leases");
        let revokes = expired.into_iter().map(|id| {
            let s = member.clone();
            async move {
                let local = tokio::time::timeout(s.cfg.request_timeout(), s.propose_here(revoke_command(id)));
                match local.await.unwrap_or(Err(StoreError::Timeout)) {
                    Ok(_) | Err(StoreError::LeaseNotFound) => {}
                    Err(e) => tracing::debug!(lease = %format!("{id:x}"), error = %e, "revoke of expired lease failed; will retry while leader"),
                }
            }
        });
        futures::future::join_all(revokes).await;
    }
}
