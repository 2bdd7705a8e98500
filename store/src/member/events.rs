//! What a member does as consensus changes: log leader changes and keep the Raft gauges
//! current, shut down once it was removed from the cluster, and publish its own name and
//! client URLs through Raft (etcd's "publish").

use std::sync::Arc;

use super::Member;
use crate::metrics;
use crate::proto::lodestone as pb;

/// Follows consensus until shutdown: leader changes, removal, gauges.
pub(super) async fn follow_consensus(member: Arc<Member>) {
    let mut watch = member.consensus.watch();
    let mut last_leader = None;
    // A joining member replays memberships from before it was added; only leaving a
    // membership it was part of means it was removed. The leader stops replicating to a
    // removed member, so it may never see the removal committed: the uniform (non-joint)
    // membership entry without it is the signal, as etcd's removed member stops when it
    // applies its own removal.
    let mut was_member = false;
    loop {
        let s = watch.status();
        if s.fatal.is_some() {
            // A member whose consensus died (say, its log could not be written: a full or
            // failing disk) must not linger answering "server stopped": it exits with an
            // error, as etcd does, so that whatever supervises it restarts it once fixed.
            member.fail(consensus_stopped(s.fatal));
            return;
        }
        if s.membership.nodes.contains_key(&member.id) {
            was_member = true;
        } else if was_member && !s.membership.joint && !removing_itself(&s, member.id) {
            tracing::warn!("this member was removed from the cluster; shutting down");
            member.shutdown.cancel();
            return;
        }
        if s.leader != last_leader {
            if s.leader.is_some() {
                metrics::leader_changed();
            }
            tracing::info!(leader = ?s.leader.map(|l| format!("{l:x}")), term = s.term, "leader");
            last_leader = s.leader;
        }
        metrics::set_raft(s.committed, s.leader.is_some(), s.leader == Some(member.id));
        metrics::set_log_compaction(s.snapshot_index, s.purged_index);
        tokio::select! {
            _ = member.shutdown.cancelled() => return,
            changed = watch.changed() => if !changed {
                if !member.shutdown.is_cancelled() {
                    member.fail(consensus_stopped(watch.status().fatal));
                }
                return
            },
        }
    }
}

/// The member's failure when consensus stopped, with openraft's reason if it gave one.
fn consensus_stopped(fatal: Option<String>) -> String {
    fatal.map_or_else(|| "consensus stopped".into(), |why| format!("consensus stopped: {why}"))
}

/// Whether this member leads the change that removes it and that change is not committed
/// yet. The leader must stay until its removal commits (it then steps down): stopping at the
/// append would fail the MemberRemove it is answering, and leave the removal to whichever
/// member is elected next.
fn removing_itself(s: &crate::raft::RaftStatus, me: crate::raft::NodeId) -> bool {
    s.leader == Some(me) && s.membership.log_index.is_some_and(|at| s.committed < at)
}

/// Publishes this member's name and client URLs through Raft, retrying until it is
/// recorded; returns then, or at shutdown.
pub(super) async fn publish_attributes(member: Arc<Member>) {
    let cmd = pb::Command {
        kind: Some(pb::command::Kind::MemberAttributes(pb::MemberAttributes {
            id: member.id,
            name: member.cfg.name.clone(),
            client_urls: member.cfg.advertise_client_urls.clone(),
        })),
        auth: None,
    };
    loop {
        let current = member.sm.member_attributes().get(&member.id).cloned();
        if current.is_some_and(|a| a.name == member.cfg.name && a.client_urls == member.cfg.advertise_client_urls) {
            return;
        }
        tokio::select! {
            _ = member.shutdown.cancelled() => return,
            r = member.propose(cmd.clone()) => match r {
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "publishing member attributes; will retry");
                    tokio::time::sleep(member.cfg.election()).await;
                }
            }
        }
    }
}
