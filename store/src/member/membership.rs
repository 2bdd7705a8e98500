//! Membership changes, decided and run on the leader one at a time (followers route them
//! there), with etcd's rules:
//!
//! - MemberAdd adds a learner (and, for a voter, promotes it through joint consensus); a
//!   fresh id every time, so a re-added member never reuses an old identity; at most one
//!   learner; adding a voter must leave a quorum of started voters.
//! - MemberPromote needs the learner's matched index at 90 % of the leader's log.
//! - MemberRemove must leave a quorum of voters that acknowledged the leader lately.
//! - MemberUpdate replaces a member's peer URLs.
//!
//! [`decide`] is pure: from the state of consensus and the request it yields the consensus
//! steps to run (or etcd's refusal), so every rule is unit-tested. [`Member::change_membership`]
//! routes a change to the leader, which decides and executes it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::Member;
use super::route::{Leader, Reroute, answer};
use crate::error::{Result, StoreError};
use crate::proto::etcdserverpb::{
    Member as EtcdMember, MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest, MemberUpdateRequest,
};
use crate::proto::lodestone::{MemberChange, MemberChangeReply, member_change::Change};
use crate::raft::{MemberNode, MembershipChange, NodeId, RaftStatus};

/// etcd's `maxLearners`.
const MAX_LEARNERS: usize = 1;
/// etcd's `readyPercent`: a learner may be promoted once it holds this share of the log.
const PROMOTE_READY: f64 = 0.9;

/// A majority of `voters`.
fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

fn valid_url(u: &str) -> bool {
    crate::config::parse_url(u).is_ok()
}

/// How many of `voters` are running as far as leader `me` can tell: itself, and every voter
/// that acknowledged it within `window` (`acked_ago`: how long ago each member did).
pub fn active_voters<'a>(
    acked_ago: &BTreeMap<NodeId, Duration>,
    me: NodeId,
    window: Duration,
    voters: impl IntoIterator<Item = &'a NodeId>,
) -> usize {
    voters
        .into_iter()
        .filter(|v| **v == me || acked_ago.get(*v).is_some_and(|ago| *ago < window))
        .count()
}

/// What a decision needs besides the state of consensus.
pub struct Context {
    /// The deciding member (the leader).
    pub me: NodeId,
    /// How recently a voter must have acknowledged the leader to count as started.
    pub active_window: Duration,
    /// The id a MemberAdd would give the new member (fresh for every request).
    pub new_id: NodeId,
}

/// A decided change: the consensus steps, in order, and the member a MemberAdd adds.
#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<MembershipChange>,
    pub added: Option<EtcdMember>,
}

/// Decides `change` against `status` (the leader's view), with etcd's rules and errors.
pub fn decide(status: &RaftStatus, change: Change, ctx: &Context) -> Result<Plan> {
    let m = &status.membership;
    let url_taken = |urls: &[String], except: Option<NodeId>| {
        m.nodes
            .iter()
            .any(|(id, n)| Some(*id) != except && n.peer_urls.iter().any(|u| urls.contains(u)))
    };
    let active = |voters: &BTreeSet<NodeId>| active_voters(&status.acked_ago, ctx.me, ctx.active_window, voters);
    match change {
        Change::Add(MemberAddRequest { peer_ur_ls, is_learner }) => {
            if peer_ur_ls.is_empty() || !peer_ur_ls.iter().all(|u| valid_url(u)) {
                return Err(StoreError::MemberBadUrls);
            }
            if url_taken(&peer_ur_ls, None) {
                return Err(StoreError::PeerUrlExist);
            }
            if is_learner && m.learners.len() >= MAX_LEARNERS {
                return Err(StoreError::TooManyLearners);
            }
            if !is_learner {
                // Adding an unstarted voter must leave a quorum of started voters; like
                // etcd, a one-member cluster may grow to two (restoring a cluster).
                let started = active(&m.voters);
                let one_to_two = m.voters.len() == 1 && started == 1;
                if !one_to_two && started < quorum(m.voters.len() + 1) {
                    return Err(StoreError::MemberNotEnoughStarted);
                }
            }
            let id = ctx.new_id;
            if m.nodes.contains_key(&id) {
                return Err(StoreError::MemberExist);
            }
            let node = MemberNode {
                name: String::new(),
                peer_urls: peer_ur_ls.clone(),
            };
            let mut steps = vec![MembershipChange::AddLearner(id, node)];
            if !is_learner {
                steps.push(MembershipChange::AddVoter(id));
            }
            Ok(Plan {
                steps,
                added: Some(EtcdMember {
                    id,
                    name: String::new(),
                    peer_ur_ls,
                    client_ur_ls: Vec::new(),
                    is_learner,
                }),
            })
        }
        Change::Promote(MemberPromoteRequest { id }) => {
            if m.voters.contains(&id) {
                return Err(StoreError::MemberNotLearner);
            }
            if !m.learners.contains(&id) {
                return Err(StoreError::MemberNotFound);
            }
            let matched = status.matched.get(&id).copied().unwrap_or(0);
            if (matched as f64) < status.last_log_index as f64 * PROMOTE_READY {
                return Err(StoreError::LearnerNotReady);
            }
            Ok(Plan {
                steps: vec![MembershipChange::AddVoter(id)],
                added: None,
            })
        }
        Change::Remove(MemberRemoveRequest { id }) => {
            if !m.nodes.contains_key(&id) {
                return Err(StoreError::MemberNotFound);
            }
            if m.learners.contains(&id) {
                return Ok(Plan {
                    steps: vec![MembershipChange::RemoveLearner(id)],
                    added: None,
                });
            }
            let rest: BTreeSet<NodeId> = m.voters.iter().copied().filter(|v| *v != id).collect();
            if rest.is_empty() || active(&rest) < quorum(rest.len()) {
                return Err(StoreError::MemberNotEnoughStarted);
            }
            Ok(Plan {
                steps: vec![MembershipChange::RemoveVoter(id)],
                added: None,
            })
        }
        Change::Update(MemberUpdateRequest { id, peer_ur_ls }) => {
            let Some(old) = m.nodes.get(&id) else {
                return Err(StoreError::MemberNotFound);
            };
            if peer_ur_ls.is_empty() || !peer_ur_ls.iter().all(|u| valid_url(u)) {
                return Err(StoreError::MemberBadUrls);
            }
            if url_taken(&peer_ur_ls, Some(id)) {
                return Err(StoreError::PeerUrlExist);
            }
            let node = MemberNode {
                name: old.name.clone(),
                peer_urls: peer_ur_ls,
            };
            Ok(Plan {
                steps: vec![MembershipChange::SetNode(id, node)],
                added: None,
            })
        }
    }
}

impl Member {
    /// The membership as this member sees it, in etcd's shape.
    pub fn members(&self) -> Vec<EtcdMember> {
        let m = self.consensus.status().membership;
        let attrs = self.sm.member_attributes();
        m.nodes
            .iter()
            .map(|(id, node)| {
                let a = attrs.get(id);
                EtcdMember {
                    id: *id,
                    name: a.map(|a| a.name.clone()).unwrap_or_default(),
                    peer_ur_ls: node.peer_urls.clone(),
                    client_ur_ls: a.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: m.learners.contains(id),
                }
            })
            .collect()
    }

    /// Runs a membership change on the leader, forwarding when this member is a follower.
    pub async fn change_membership(&self, change: Change) -> Result<MemberChangeReply> {
        let routed = self.to_leader(Reroute::NotLeader, |leader| {
            let change = change.clone();
            async move {
                match leader {
                    Leader::Here => self.change_membership_here(change).await,
                    Leader::Peer(_, mut c) => {
                        // A member asked to remove itself may never learn that its removal
                        // committed: the leader stops replicating to it.
                        let removes_me = matches!(&change, Change::Remove(r) if r.id == self.id);
                        let reply = answer(c.change_membership(MemberChange { change: Some(change) }).await)?;
                        // Otherwise answered once this member applied the change too, so that
                        // its MemberList (served from its own view) shows it, as etcd's does
                        // (an unknown index, 0, is met at once).
                        if !removes_me {
                            self.wait_applied(reply.log_index).await?;
                        }
                        Ok(reply)
                    }
                }
            }
        });
        tokio::time::timeout(self.cfg.request_timeout() * 2, routed)
            .await
            .unwrap_or(Err(StoreError::Timeout))
    }

    /// The leader's side: decides and executes one change at a time.
    pub async fn change_membership_here(&self, change: Change) -> Result<MemberChangeReply> {
        let _one_at_a_time = self.membership_lock.lock().await;
        let status = self.consensus.status();
        if status.leader != Some(self.id) {
            return Err(StoreError::NotLeader);
        }
        let ctx = Context {
            me: self.id,
            active_window: self.cfg.election() * 2,
            new_id: self.fresh_member_id(&change),
        };
        let plan = decide(&status, change.clone(), &ctx)?;
        let mut log_index = 0;
        for step in plan.steps {
            log_index = self.consensus.change_membership(step).await?;
        }
        match (&change, &plan.added) {
            (Change::Add(_), Some(a)) => {
                tracing::info!(member = %format!("{:x}", a.id), peer_urls = ?a.peer_ur_ls, is_learner = a.is_learner, "member added")
            }
            (Change::Promote(p), _) => tracing::info!(member = %format!("{:x}", p.id), "learner promoted"),
            (Change::Remove(r), _) => tracing::info!(member = %format!("{:x}", r.id), "member removed"),
            (Change::Update(u), _) => {
                tracing::info!(member = %format!("{:x}", u.id), peer_urls = ?u.peer_ur_ls, "member peer URLs updated")
            }
            _ => {}
        }
        Ok(MemberChangeReply {
            member: plan.added,
            members: self.members(),
            log_index,
        })
    }

    /// Moves leadership from this member, which must lead, to voter `target`, and waits
    /// until `target` leads (etcd's MoveLeader).
    pub async fn move_leader(&self, target: NodeId) -> Result<()> {
        let status = self.consensus.status();
        if status.leader != Some(self.id) {
            return Err(StoreError::NotLeader);
        }
        if !status.membership.voters.contains(&target) {
            return Err(StoreError::BadLeaderTransferee);
        }
        if target == self.id {
            return Ok(());
        }
        self.consensus.transfer_leader(target).await?;
        let mut watch = self.consensus.watch();
        let moved = async {
            loop {
                if watch.status().leader == Some(target) {
                    return Ok(());
                }
                if !watch.changed().await {
                    return Err(StoreError::Stopped);
                }
            }
        };
        tokio::time::timeout(self.cfg.election() * 5 + Duration::from_secs(1), moved)
            .await
            .unwrap_or(Err(StoreError::Timeout))
    }

    /// A fresh id for a member a MemberAdd would add: hashed from its URLs, the cluster
    /// token and the time, so a re-added member never reuses an old identity.
    fn fresh_member_id(&self, change: &Change) -> NodeId {
        let Change::Add(add) = change else { return 0 };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        crate::config::member_id(&add.peer_ur_ls, &format!("{}/{now}", self.cfg.initial_cluster_token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Membership;

    const WINDOW: Duration = Duration::from_secs(2);

    fn node(url: &str) -> MemberNode {
        MemberNode {
            name: String::new(),
            peer_urls: vec![url.to_string()],
        }
    }

    /// A leader (member 1) with `voters` and `learners`; `acked` voters acknowledged lately.
    fn status(voters: &[u64], learners: &[u64], acked: &[u64]) -> RaftStatus {
        let nodes: BTreeMap<u64, MemberNode> = voters
            .iter()
            .chain(learners)
            .map(|id| (*id, node(&format!("http://10.0.0.{id}:2380"))))
            .collect();
        RaftStatus {
            leader: Some(1),
            last_log_index: 100,
            membership: Membership {
                voters: voters.iter().copied().collect(),
                learners: learners.iter().copied().collect(),
                nodes,
                log_index: Some(1),
                joint: false,
            },
            acked_ago: acked.iter().map(|id| (*id, Duration::from_millis(100))).collect(),
            ..Default::default()
        }
    }

    fn ctx() -> Context {
        Context {
            me: 1,
            active_window: WINDOW,
            new_id: 99,
        }
    }

    fn add(url: &str, is_learner: bool) -> Change {
        Change::Add(MemberAddRequest {
            peer_ur_ls: vec![url.to_string()],
            is_learner,
        })
    }

    #[test]
    fn adding_a_learner_is_one_step_and_a_voter_two() {
        let s = status(&[1, 2, 3], &[], &[2, 3]);
        let p = decide(&s, add("http://10.0.0.9:2380", true), &ctx()).unwrap();
        assert!(matches!(p.steps[..], [MembershipChange::AddLearner(99, _)]));
        assert!(p.added.as_ref().unwrap().is_learner);
        let p = decide(&s, add("http://10.0.0.9:2380", false), &ctx()).unwrap();
        assert!(matches!(
            p.steps[..],
            [MembershipChange::AddLearner(99, _), MembershipChange::AddVoter(99)]
        ));
        assert_eq!(p.added.unwrap().id, 99);
    }

    #[test]
    fn adds_are_refused_as_etcd_refuses_them() {
        let s = status(&[1, 2, 3], &[4], &[2, 3]);
        let refused = |c| decide(&s, c, &ctx()).unwrap_err();
        assert_eq!(refused(add("not a url", true)), StoreError::MemberBadUrls);
        assert_eq!(refused(add("http://10.0.0.2:2380", false)), StoreError::PeerUrlExist);
        assert_eq!(refused(add("http://10.0.0.9:2380", true)), StoreError::TooManyLearners);
        // Two of three voters down: a fourth voter would leave no started quorum.
        let s = status(&[1, 2, 3], &[], &[]);
        assert_eq!(
            decide(&s, add("http://10.0.0.9:2380", false), &ctx()).unwrap_err(),
            StoreError::MemberNotEnoughStarted
        );
        // A one-member cluster may grow to two.
        let s = status(&[1], &[], &[]);
        assert!(decide(&s, add("http://10.0.0.9:2380", false), &ctx()).is_ok());
        // An id that exists already (the hash collided) is refused, never reused.
        let s = status(&[1, 99], &[], &[99]);
        assert_eq!(
            decide(&s, add("http://10.0.0.9:2380", true), &ctx()).unwrap_err(),
            StoreError::MemberExist
        );
    }

    #[test]
    fn a_learner_is_promoted_once_it_holds_ninety_percent_of_the_log() {
        let mut s = status(&[1, 2, 3], &[4], &[2, 3]);
        let promote = |id| Change::Promote(MemberPromoteRequest { id });
        s.matched.insert(4, 89);
        assert_eq!(decide(&s, promote(4), &ctx()).unwrap_err(), StoreError::LearnerNotReady);
        s.matched.insert(4, 90);
        let p = decide(&s, promote(4), &ctx()).unwrap();
        assert!(matches!(p.steps[..], [MembershipChange::AddVoter(4)]));
        assert_eq!(
            decide(&s, promote(2), &ctx()).unwrap_err(),
            StoreError::MemberNotLearner
        );
        assert_eq!(decide(&s, promote(7), &ctx()).unwrap_err(), StoreError::MemberNotFound);
    }

    #[test]
    fn a_removal_must_leave_a_started_quorum() {
        let remove = |id| Change::Remove(MemberRemoveRequest { id });
        // Voter 3 is down: removing 2 would leave {1, 3} with one started.
        let s = status(&[1, 2, 3], &[4], &[2]);
        assert_eq!(
            decide(&s, remove(2), &ctx()).unwrap_err(),
            StoreError::MemberNotEnoughStarted
        );
        // Removing the down voter leaves {1, 2}, both started.
        assert!(matches!(
            decide(&s, remove(3), &ctx()).unwrap().steps[..],
            [MembershipChange::RemoveVoter(3)]
        ));
        // A learner goes whatever the voters do.
        assert!(matches!(
            decide(&s, remove(4), &ctx()).unwrap().steps[..],
            [MembershipChange::RemoveLearner(4)]
        ));
        assert_eq!(decide(&s, remove(8), &ctx()).unwrap_err(), StoreError::MemberNotFound);
        // The last voter cannot leave.
        let s = status(&[1], &[], &[]);
        assert_eq!(
            decide(&s, remove(1), &ctx()).unwrap_err(),
            StoreError::MemberNotEnoughStarted
        );
    }

    #[test]
    fn an_update_keeps_the_name_and_refuses_taken_urls() {
        let s = status(&[1, 2, 3], &[], &[2, 3]);
        let update = |id, url: &str| {
            Change::Update(MemberUpdateRequest {
                id,
                peer_ur_ls: vec![url.to_string()],
            })
        };
        assert!(matches!(
            decide(&s, update(2, "http://10.0.0.20:2380"), &ctx()).unwrap().steps[..],
            [MembershipChange::SetNode(2, _)]
        ));
        // Its own URL again is fine; another member's is not.
        assert!(decide(&s, update(2, "http://10.0.0.2:2380"), &ctx()).is_ok());
        assert_eq!(
            decide(&s, update(2, "http://10.0.0.3:2380"), &ctx()).unwrap_err(),
            StoreError::PeerUrlExist
        );
        assert_eq!(
            decide(&s, update(5, "http://10.0.0.5:2380"), &ctx()).unwrap_err(),
            StoreError::MemberNotFound
        );
    }

    #[test]
    fn started_voters_are_the_leader_and_recent_acknowledgers() {
        let mut s = status(&[1, 2, 3], &[], &[2]);
        s.acked_ago.insert(3, WINDOW + Duration::from_millis(1));
        assert_eq!(active_voters(&s.acked_ago, 1, WINDOW, &s.membership.voters), 2);
    }
}
