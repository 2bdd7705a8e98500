//! The periodic corruption check (`--experimental-corrupt-check-time`): the leader computes
//! HashKV at its applied revision, asks every other member for HashKV at the same revision,
//! and raises a CORRUPT alarm for each member whose hash differs while its compaction point
//! is the same (members at different compaction points hash different histories). Once
//! raised, every member refuses KV requests with "corrupt cluster" until an operator has
//! repaired the member and disarmed the alarm.

use std::sync::Arc;
use std::time::Duration;

use super::{Member, alarm_command};
use crate::mvcc::history::KvHash;
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::{AlarmType, HashKvRequest};

/// What a peer answered (or `None` when it could not be asked).
pub type PeerHash = (u64, Option<KvHash>);

/// The members whose history differs from the leader's: same revision and compaction point,
/// another hash. Pure, so the rule is unit-tested.
pub fn mismatched(leader: KvHash, peers: &[PeerHash]) -> Vec<u64> {
    peers
        .iter()
        .filter_map(|(id, h)| {
            let h = (*h)?;
            (h.compacted == leader.compacted && h.hash != leader.hash).then_some(*id)
        })
        .collect()
}

impl Member {
    /// This member's HashKV at `rev`, once it applied that revision (bounded wait).
    pub async fn hash_kv_at(&self, rev: i64) -> crate::error::Result<KvHash> {
        let mut r = self.sm.revision();
        let reached = async {
            while *r.borrow_and_update() < rev {
                if r.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(self.cfg.request_timeout(), reached).await;
        let sm = self.sm.clone();
        tokio::task::spawn_blocking(move || sm.mvcc.hash_kv(rev))
            .await
            .map_err(|e| crate::error::StoreError::Internal(e.to_string()))?
    }

    async fn check_corruption(&self) {
        let rev = self.revision();
        let mine = match self.hash_kv_at(rev).await {
            Ok(h) => h,
            Err(e) => return tracing::debug!(error = %e, "corruption check: own hash"),
        };
        let others: Vec<u64> = self
            .consensus
            .status()
            .membership
            .nodes
            .into_keys()
            .filter(|id| *id != self.id)
            .collect();
        let mut answers = Vec::new();
        for id in others {
            let h = match self.peer_client(id) {
                Ok(mut c) => match c.hash_kv(HashKvRequest { revision: rev }).await.map(|r| r.into_inner()) {
                    Ok(r) => Some(KvHash {
                        hash: r.hash,
                        compacted: r.compact_revision,
                        revision: rev,
                    }),
                    Err(e) => {
                        tracing::debug!(member = %format!("{id:x}"), error = %e.message(), "corruption check: no hash");
                        None
                    }
                },
                Err(_) => None,
            };
            answers.push((id, h));
        }
        for id in mismatched(mine, &answers) {
            tracing::error!(
                member = %format!("{id:x}"),
                revision = rev,
                "corruption check: member's HashKV differs from the leader's; raising CORRUPT"
            );
            if let Err(e) = self
                .propose(alarm_command(AlarmAction::Activate, id, AlarmType::Corrupt))
                .await
            {
                tracing::warn!(error = %e, "raising the CORRUPT alarm");
            }
        }
    }
}

/// Runs the check on the leader every `interval`; returns at shutdown.
pub(super) async fn run(member: Arc<Member>, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = member.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if member.leader() == Some(member.id) && !member.sm.alarm_active(AlarmType::Corrupt) {
            member.check_corruption().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(hash: u32, compacted: i64) -> Option<KvHash> {
        Some(KvHash {
            hash,
            compacted,
            revision: 10,
        })
    }

    #[test]
    fn only_a_different_hash_at_the_same_compaction_point_counts() {
        let leader = h(7, 3).unwrap();
        let peers = [(1, h(7, 3)), (2, h(8, 3)), (3, h(9, 5)), (4, None)];
        assert_eq!(mismatched(leader, &peers), vec![2]);
    }
}
