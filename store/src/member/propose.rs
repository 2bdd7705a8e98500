//! Replicated writes: a command goes to the leader (here or forwarded), is committed on a
//! majority and applied, and the state machine's answer comes back. In front of it, etcd's
//! two admission rules: the space quota (a client write that would grow the store past
//! `--quota-backend-bytes` raises NOSPACE) and the apply lag (no new proposals while the
//! state machine trails the commit index too far).

use std::sync::Arc;

use super::Member;
use super::route::{Leader, Reroute};
use crate::error::{Result, StoreError};
use crate::metrics;
use crate::proto::etcdserverpb::AlarmType;
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::lodestone as pb;

/// etcd refuses new proposals while the state machine trails the commit index by more than
/// this many entries, so a slow apply cannot let the backlog grow without bound.
const MAX_APPLY_LAG: u64 = 5_000;

fn applying_too_far_behind(committed: u64, applied: u64) -> bool {
    committed.saturating_sub(applied) > MAX_APPLY_LAG
}

/// A replicated alarm change.
pub fn alarm_command(action: AlarmAction, member: u64, alarm: AlarmType) -> pb::Command {
    pb::Command {
        kind: Some(pb::command::Kind::Alarm(crate::proto::etcdserverpb::AlarmRequest {
            action: action as i32,
            member_id: member,
            alarm: alarm as i32,
        })),
        auth: None,
    }
}

impl Member {
    /// etcd's space quota at the API: a request that adds data and would push the store past
    /// `--quota-backend-bytes` is refused, and raises NOSPACE (cluster-wide, through Raft)
    /// unless it is active already. While NOSPACE is active, apply refuses such requests.
    fn check_quota(self: &Arc<Self>, cmd: &pb::Command) -> Result<()> {
        let cost = crate::apply::quota_cost(cmd);
        if cost == 0 {
            return Ok(());
        }
        if self.db_size().0 + cost > self.cfg.quota() {
            if self.sm.alarm_active(AlarmType::Nospace) {
                return Err(StoreError::NoSpace);
            }
            let s = self.clone();
            self.tasks.spawn(async move {
                let r = s
                    .propose(alarm_command(AlarmAction::Activate, s.id, AlarmType::Nospace))
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "raising the NOSPACE alarm");
                } else {
                    tracing::warn!(quota = s.cfg.quota(), "database space exceeded: NOSPACE alarm raised");
                }
            });
            return Err(StoreError::NoSpace);
        }
        Ok(())
    }

    /// Like [`Member::propose`], for client writes: checks the space quota first. Active
    /// alarms (CORRUPT, NOSPACE) are enforced where the log orders them, at apply: this
    /// member's view of them may trail the log (a disarm it has not applied yet), so it must
    /// not refuse on that view.
    pub async fn propose_write(self: &Arc<Self>, cmd: pb::Command) -> Result<pb::CommandResult> {
        self.check_quota(&cmd)?;
        self.propose(cmd).await
    }

    /// Replicates a write through the leader (forwarding when this member is a follower) and
    /// returns the state machine's answer.
    pub async fn propose(&self, cmd: pb::Command) -> Result<pb::CommandResult> {
        use prost::Message;
        let size = cmd.encoded_len();
        if size > self.cfg.max_request_bytes {
            return Err(StoreError::RequestTooLarge);
        }
        let (committed, applied) = self.consensus.progress();
        if applying_too_far_behind(committed, applied) {
            return Err(StoreError::TooManyRequests);
        }
        metrics::proposal_started();
        let routed = self.to_leader(Reroute::NotLeader, |leader| {
            let cmd = cmd.clone();
            async move {
                match leader {
                    Leader::Here => self.propose_here(cmd).await,
                    Leader::Peer(id, c) => {
                        // Answered once this member applied the write too, as etcd's member
                        // answers only what it applied: its client then reads the write back
                        // here at once, serializable reads included, and the revisions this
                        // member shows never go back below one it handed out. (An unknown
                        // index, 0, is met at once.)
                        let forwarded = self.forwarder.propose(id, c, cmd, size).await;
                        self.wait_applied(forwarded.index).await?;
                        forwarded.result
                    }
                }
            }
        });
        let r = tokio::time::timeout(self.cfg.request_timeout(), routed)
            .await
            .unwrap_or(Err(StoreError::Timeout));
        metrics::proposal_finished();
        if r.is_err() {
            metrics::proposal_failed();
        }
        r
    }

    /// Proposes on this member, which must lead (`NotLeader` otherwise): a write forwarded by
    /// a follower, or one only this member's leadership may decide (lease expiry). Apply
    /// errors come back as [`StoreError`]s.
    pub async fn propose_here(&self, cmd: pb::Command) -> Result<pb::CommandResult> {
        self.consensus.propose(cmd).await
    }

    /// Proposes the writes a follower forwarded together (see [`super::forward`]) on this
    /// member, which must lead: one answer each, in order.
    pub async fn propose_many_here(&self, cmds: Vec<pb::Command>) -> Result<Vec<pb::CommandResult>> {
        self.consensus.propose_many(cmds).await
    }
}

#[cfg(test)]
mod tests {
    use super::applying_too_far_behind;

    #[test]
    fn proposals_are_refused_only_past_etcds_apply_lag() {
        assert!(!applying_too_far_behind(0, 0));
        assert!(!applying_too_far_behind(5_000, 0));
        assert!(applying_too_far_behind(5_001, 0));
        assert!(!applying_too_far_behind(10_000, 9_000));
        assert!(
            !applying_too_far_behind(3, 7),
            "applied ahead of a stale commit view is fine"
        );
    }
}
