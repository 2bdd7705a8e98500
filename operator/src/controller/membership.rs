//! Membership changes as the operator makes them: one step per reconcile, decided here,
//! purely, from the spec, the StatefulSet's slot count, what the members report, and the
//! operation under way.
//!
//! Growing adds one member at a time: MemberAdd as a learner, then a StatefulSet slot for its
//! pod (which joins by itself), then MemberPromote once it caught up. Shrinking removes the
//! member of the highest ordinal: leadership moves off it first if it leads, then
//! MemberRemove, then the slot goes, then the member's volumes are deleted explicitly (a
//! StatefulSet never deletes claims). Raft ids are never reused: a member added again gets a
//! new id from MemberAdd.
//!
//! The executor records [`Step::record`] (e.g. in `status.operation`) *before* it acts and
//! [`Step::then`] after the action succeeded, so an operator restarted at any point resumes
//! with the recorded step; every action is idempotent ([`crate::members::Members`]), so
//! repeating one is harmless.
//!
//! Replacing repairs a voter that lost its volume (the store refuses to start under its old id
//! on empty storage and says so; the operator reads that in the pod's termination message) or
//! that crash-loops without answering: MemberRemove, then its claims are deleted and its pod
//! restarted so it comes back empty, then MemberAdd as a learner under a new id and
//! MemberPromote, as in growing.
//!
//! Safety rules, all checked here: nothing changes without a leader; one operation, so one
//! learner and one replacement, at a time; a member is added only while every voter answers; a
//! voter is removed only if the voters left keep a quorum of healthy members; the leader is
//! never removed while it leads.

use super::rollout::PodInfo;
use crate::members::{MembersView, ObservedMember, format_id};
use crate::names::Names;

pub use crate::crd::{MembershipOperation as Operation, OperationKind, StepKind};

/// The one thing to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// MemberAdd as a learner with this peer URL (the executor puts the id it gets into
    /// [`Step::then`]).
    AddLearner { peer_url: String },
    /// Set the StatefulSet's replicas (its slots).
    SetSlots(i32),
    /// MemberPromote; a learner that has not caught up is tried again next time.
    Promote { id: u64 },
    /// MoveLeader, asked of the leader at its client URL.
    MoveLeader { leader_client_url: String, to: u64 },
    /// MemberRemove.
    Remove { id: u64 },
    /// Delete the member pod's PersistentVolumeClaims.
    DeleteVolumes { pod: String },
    /// Delete the member pod's claims, then the pod, so the StatefulSet starts it again on
    /// new, empty volumes.
    ResetVolumes { pod: String },
}

/// How often a member's container may restart without answering before it is replaced.
pub const CRASH_LOOP_RESTARTS: i32 = 5;

/// What the store says when it refuses to start under an old id on empty storage.
const LOST_VOLUME: &str = "has already been bootstrapped";

/// A step: record `record`, perform `action`, then record `then` (`None`: done).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub record: Operation,
    pub action: Action,
    pub then: Option<Operation>,
}

/// What the planner decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The membership is what the spec asks for, and no operation is under way.
    Steady,
    /// Something must change but cannot safely now; why.
    Wait(String),
    /// Make this step.
    Step(Step),
    /// The recorded operation has nothing left to do (its last effect is visible): clear it.
    Done,
}

/// Everything the decision needs.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// `spec.replicas`: how many voters the cluster should have.
    pub desired: i32,
    /// The StatefulSet's current replicas.
    pub slots: i32,
    pub view: &'a MembersView,
    pub names: &'a Names,
    pub operation: Option<&'a Operation>,
    /// The member pods that exist (a slot's old pod may still be terminating).
    pub pods: &'a [PodInfo],
}

/// The pod a member runs in, found by its peer URL (a learner that has not started yet has
/// no name, but its peer URL is the one MemberAdd was given).
fn ordinal_of_member(names: &Names, m: &ObservedMember, slots_upper: i32) -> Option<i32> {
    if let Some(o) = names.ordinal(&m.name) {
        return Some(o);
    }
    (0..slots_upper).find(|&o| m.peer_urls.contains(&names.peer_url(&names.pod(o))))
}

/// Raft's quorum of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

pub fn decide(input: Input<'_>) -> Decision {
    match input.operation {
        Some(op) => resume(input, op),
        None => start(input),
    }
}

fn start(input: Input<'_>) -> Decision {
    let Input {
        desired, view, names, ..
    } = input;
    let voters: Vec<&ObservedMember> = view.members.iter().filter(|m| !m.learner).collect();
    let learners: Vec<&ObservedMember> = view.members.iter().filter(|m| m.learner).collect();
    let wanted = desired.max(1) as usize;
    // Ordinals above every member and slot, for finding the pods of members.
    let upper = input.slots.max(view.members.len() as i32) + 1;
    // A lost voter is replaced first (it needs a leader, and no learner may be under way).
    if view.leader.is_some()
        && learners.is_empty()
        && let Some(decision) = replacement(input, &voters, upper)
    {
        return decision;
    }
    if learners.is_empty() && voters.len() == wanted {
        return Decision::Steady;
    }
    let Some(leader) = view.leader else {
        return Decision::Wait("no leader: membership changes wait for one".into());
    };
    if let Some(l) = learners.first() {
        // A learner nobody recorded (added by hand, or the record was lost): finish adding
        // it if it is one of this cluster's pods.
        return match ordinal_of_member(names, l, upper) {
            Some(ordinal) => {
                let op = Operation {
                    kind: OperationKind::AddMember,
                    step: StepKind::StartMember,
                    member: names.pod(ordinal),
                    ordinal,
                    member_id: Some(format_id(l.id)),
                };
                resume(input, &op)
            }
            None => Decision::Wait(format!(
                "learner {:x} ({:?}) is not one of this cluster's pods: promote or remove it",
                l.id, l.peer_urls
            )),
        };
    }
    if voters.len() < wanted {
        if voters.iter().any(|m| m.status.is_none()) {
            return Decision::Wait("a member does not answer: members are added only to a healthy cluster".into());
        }
        // The lowest ordinal no member runs in.
        let taken: Vec<i32> = voters
            .iter()
            .filter_map(|m| ordinal_of_member(names, m, upper))
            .collect();
        let ordinal = (0..).find(|o| !taken.contains(o)).expect("a free ordinal");
        let member = names.pod(ordinal);
        let record = Operation {
            kind: OperationKind::AddMember,
            step: StepKind::ClearVolumes,
            member,
            ordinal,
            member_id: None,
        };
        return resume(input, &record);
    }
    // Too many voters: the one of the highest ordinal goes.
    let Some((victim, ordinal)) = voters
        .iter()
        .filter_map(|m| ordinal_of_member(names, m, upper).map(|o| (*m, o)))
        .max_by_key(|(_, o)| *o)
    else {
        return Decision::Wait("no voter runs in one of this cluster's pods".into());
    };
    let healthy_left = voters
        .iter()
        .filter(|m| m.id != victim.id && m.status.is_some())
        .count();
    if healthy_left < quorum(voters.len() - 1) {
        return Decision::Wait(format!(
            "removing {} would leave {healthy_left} healthy of {} voters, short of a quorum",
            names.pod(ordinal),
            voters.len() - 1
        ));
    }
    let record = Operation {
        kind: OperationKind::RemoveMember,
        step: if leader == victim.id {
            StepKind::MoveLeader
        } else {
            StepKind::RemoveMember
        },
        member: names.pod(ordinal),
        ordinal,
        member_id: Some(format_id(victim.id)),
    };
    resume(input, &record)
}

/// A voter to replace: its pod says its volume was lost, or it crash-loops and does not answer.
/// `None` when there is none; a wait when there is one but the rest lack a healthy quorum.
fn replacement(input: Input<'_>, voters: &[&ObservedMember], upper: i32) -> Option<Decision> {
    let Input { names, pods, .. } = input;
    let (lost, ordinal, why) = voters.iter().find_map(|m| {
        let ordinal = ordinal_of_member(names, m, upper)?;
        let pod = pods.iter().find(|p| p.name == names.pod(ordinal))?;
        if m.status.is_some() || pod.ready {
            return None;
        }
        if pod.last_failure.as_deref().is_some_and(|f| f.contains(LOST_VOLUME)) {
            Some((*m, ordinal, "lost its volume"))
        } else if pod.restarts >= CRASH_LOOP_RESTARTS {
            Some((*m, ordinal, "crash-loops"))
        } else {
            None
        }
    })?;
    let healthy_left = voters.iter().filter(|m| m.id != lost.id && m.status.is_some()).count();
    if healthy_left < quorum(voters.len() - 1) {
        return Some(Decision::Wait(format!(
            "{} {why}, but replacing it would leave {healthy_left} healthy of {} voters, short of a quorum",
            names.pod(ordinal),
            voters.len() - 1
        )));
    }
    let op = Operation {
        kind: OperationKind::ReplaceMember,
        step: StepKind::RemoveMember,
        member: names.pod(ordinal),
        ordinal,
        member_id: Some(format_id(lost.id)),
    };
    Some(resume(input, &op))
}

fn resume(input: Input<'_>, op: &Operation) -> Decision {
    let Input { view, names, slots, .. } = input;
    // The member by its recorded id, else by its pod's peer URL (an id never recorded).
    let peer_url = names.peer_url(&op.member);
    let member = match op.id() {
        Some(id) => view.members.iter().find(|m| m.id == id),
        None => view.members.iter().find(|m| m.peer_urls.contains(&peer_url)),
    };
    let member_id = op.id().or(member.map(|m| m.id));
    let next = |step: StepKind| Operation { step, ..op.clone() };
    let step = |action: Action, then: Option<Operation>| {
        Decision::Step(Step {
            record: op.clone(),
            action,
            then,
        })
    };
    match op.step {
        // Volumes left in the slot (retained by hand, or by an operator stopped before it
        // deleted them) hold an old member's id and data: they go before the member is added.
        // The slot's old pod must be gone first, or its claims would outlive the delete.
        StepKind::ClearVolumes => match input.pods.iter().find(|p| p.name == op.member) {
            Some(_) => Decision::Wait(format!(
                "pod {} still exists: a member is added in its slot once it is gone",
                op.member
            )),
            None => step(
                Action::DeleteVolumes { pod: op.member.clone() },
                Some(next(StepKind::AddLearner)),
            ),
        },
        StepKind::AddLearner => step(
            Action::AddLearner {
                peer_url: names.peer_url(&op.member),
            },
            Some(next(StepKind::StartMember)),
        ),
        StepKind::StartMember if slots <= op.ordinal => {
            step(Action::SetSlots(op.ordinal + 1), Some(next(StepKind::Promote)))
        }
        StepKind::StartMember | StepKind::Promote => match (member, member_id) {
            (Some(m), _) if !m.learner => Decision::Done,
            (_, Some(id)) => {
                let record = Operation {
                    member_id: Some(format_id(id)),
                    ..next(StepKind::Promote)
                };
                Decision::Step(Step {
                    record,
                    action: Action::Promote { id },
                    then: None,
                })
            }
            (_, None) => Decision::Wait(format!("{} is not a member: add it again", op.member)),
        },
        StepKind::MoveLeader => {
            let Some(id) = op.id() else {
                return Decision::Wait(format!("{}: no member id recorded", op.member));
            };
            if view.leader != Some(id) {
                return resume(input, &next(StepKind::RemoveMember));
            }
            // To the healthy voter furthest along.
            match (
                view.furthest_voter_except(id),
                member.and_then(|m| m.client_urls.first()),
            ) {
                (Some(to), Some(url)) => step(
                    Action::MoveLeader {
                        leader_client_url: url.clone(),
                        to,
                    },
                    Some(next(StepKind::RemoveMember)),
                ),
                _ => Decision::Wait(format!("no healthy voter to hand leadership from {} to", op.member)),
            }
        }
        StepKind::RemoveMember => {
            // A removed member leaves its slot; a replaced one is started again, empty.
            let after = match op.kind {
                OperationKind::ReplaceMember => StepKind::ResetVolumes,
                _ => StepKind::Shrink,
            };
            match op.id() {
                // Still a member: remove it (the leader never: leadership moves first).
                Some(id) if member.is_some() => {
                    if view.leader == Some(id) {
                        return resume(input, &next(StepKind::MoveLeader));
                    }
                    step(Action::Remove { id }, Some(next(after)))
                }
                _ => resume(input, &next(after)),
            }
        }
        StepKind::ResetVolumes => step(
            Action::ResetVolumes { pod: op.member.clone() },
            Some(Operation {
                member_id: None,
                ..next(StepKind::AddLearner)
            }),
        ),
        StepKind::Shrink if slots > op.ordinal => {
            step(Action::SetSlots(op.ordinal), Some(next(StepKind::DeleteVolumes)))
        }
        StepKind::Shrink | StepKind::DeleteVolumes => {
            let record = next(StepKind::DeleteVolumes);
            Decision::Step(Step {
                record,
                action: Action::DeleteVolumes { pod: op.member.clone() },
                then: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::members::MemberHealth;

    fn names() -> Names {
        Names::of(&crate::fixtures::sample("lodestonecluster-3-members.yaml"))
    }

    /// Members `ordinals` (ids 100 + ordinal), voters unless listed in `learners`, healthy
    /// unless listed in `down`, led by `leader` (an ordinal).
    fn view(ordinals: &[i32], learners: &[i32], down: &[i32], leader: Option<i32>) -> MembersView {
        let n = names();
        MembersView {
            cluster_id: Some(1),
            leader: leader.map(|o| 100 + o as u64),
            members: ordinals
                .iter()
                .map(|&o| ObservedMember {
                    id: 100 + o as u64,
                    name: if learners.contains(&o) { String::new() } else { n.pod(o) },
                    peer_urls: vec![n.peer_url(&n.pod(o))],
                    client_urls: vec![n.client_url(&n.pod(o))],
                    learner: learners.contains(&o),
                    status: (!down.contains(&o)).then(|| MemberHealth {
                        applied_index: 10 + o as u64,
                        ..Default::default()
                    }),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn decide_for(desired: i32, slots: i32, view: &MembersView, op: Option<&Operation>) -> Decision {
        let n = names();
        decide(Input {
            desired,
            slots,
            view,
            names: &n,
            operation: op,
            pods: &[],
        })
    }

    fn step(d: Decision) -> Step {
        match d {
            Decision::Step(s) => s,
            other => panic!("expected a step, got {other:?}"),
        }
    }

    #[test]
    fn steady_when_the_voters_match_the_spec() {
        assert_eq!(
            decide_for(3, 3, &view(&[0, 1, 2], &[], &[], Some(0)), None),
            Decision::Steady
        );
        // Even without a leader: nothing to change.
        assert_eq!(decide_for(1, 1, &view(&[0], &[], &[0], None), None), Decision::Steady);
    }

    #[test]
    fn growing_clears_the_slot_adds_a_learner_then_a_slot_then_promotes() {
        let n = names();
        let v = view(&[0], &[], &[], Some(0));
        // Whatever volumes the slot holds go first.
        let s = step(decide_for(3, 1, &v, None));
        assert_eq!(s.action, Action::DeleteVolumes { pod: n.pod(1) });
        assert_eq!((s.record.step, s.record.ordinal), (StepKind::ClearVolumes, 1));
        let clear = s.then.expect("then");
        let s = step(decide_for(3, 1, &v, Some(&clear)));
        assert_eq!(
            s.action,
            Action::AddLearner {
                peer_url: n.peer_url(&n.pod(1))
            }
        );
        assert_eq!((s.record.step, s.record.ordinal), (StepKind::AddLearner, 1));
        let mut then = s.then.expect("then");
        assert_eq!(then.step, StepKind::StartMember);
        then.member_id = Some(format_id(101));

        // The learner exists (not started): its slot comes next.
        let v = view(&[0, 1], &[1], &[1], Some(0));
        let s = step(decide_for(3, 1, &v, Some(&then)));
        assert_eq!(s.action, Action::SetSlots(2));
        let then = s.then.expect("then");
        assert_eq!(then.step, StepKind::Promote);

        // Started: promote, again and again until it caught up; then done.
        let v = view(&[0, 1], &[1], &[], Some(0));
        let s = step(decide_for(3, 2, &v, Some(&then)));
        assert_eq!(s.action, Action::Promote { id: 101 });
        assert_eq!(s.then, None);
        let v = view(&[0, 1], &[], &[], Some(0));
        assert_eq!(decide_for(3, 2, &v, Some(&then)), Decision::Done);
        // And the next member after that.
        let s = step(decide_for(3, 2, &v, None));
        assert_eq!(s.record.ordinal, 2);
    }

    #[test]
    fn a_step_repeated_after_a_restart_is_the_same_step() {
        let v = view(&[0], &[], &[], Some(0));
        let s = step(decide_for(2, 1, &v, None));
        // The operator recorded AddLearner, then died before (or after) MemberAdd.
        let again = step(decide_for(2, 1, &v, Some(&s.record)));
        assert_eq!(again.action, s.action);
        let v = view(&[0, 1], &[1], &[1], Some(0));
        let again = step(decide_for(2, 1, &v, Some(&s.record)));
        assert_eq!(again.action, s.action, "MemberAdd is idempotent: ask again for the id");
    }

    #[test]
    fn members_are_added_only_to_a_healthy_cluster_with_a_leader() {
        assert!(matches!(
            decide_for(3, 1, &view(&[0], &[], &[], None), None),
            Decision::Wait(_)
        ));
        assert!(matches!(
            decide_for(5, 3, &view(&[0, 1, 2], &[], &[2], Some(0)), None),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn an_unrecorded_learner_is_finished_before_anything_else() {
        let v = view(&[0, 1, 2], &[2], &[], Some(0));
        let s = step(decide_for(3, 3, &v, None));
        assert_eq!(s.action, Action::Promote { id: 102 });
        // One that is not a pod of this cluster is left to a human.
        let mut v = view(&[0, 1], &[], &[], Some(0));
        let mut stranger = v.members[1].clone();
        stranger.id = 999;
        stranger.learner = true;
        stranger.name = String::new();
        stranger.peer_urls = vec!["http://elsewhere:2380".into()];
        v.members.push(stranger);
        assert!(matches!(decide_for(2, 2, &v, None), Decision::Wait(_)));
    }

    #[test]
    fn shrinking_removes_the_highest_ordinal_then_its_slot_then_its_volumes() {
        let v = view(&[0, 1, 2], &[], &[], Some(0));
        let s = step(decide_for(2, 3, &v, None));
        assert_eq!(s.action, Action::Remove { id: 102 });
        assert_eq!(s.record.member, names().pod(2));
        let then = s.then.expect("then");
        assert_eq!(then.step, StepKind::Shrink);
        // Removed from the cluster; its pod still runs.
        let v = view(&[0, 1], &[], &[], Some(0));
        let s = step(decide_for(2, 3, &v, Some(&then)));
        assert_eq!(s.action, Action::SetSlots(2));
        let then = s.then.expect("then");
        let s = step(decide_for(2, 2, &v, Some(&then)));
        assert_eq!(s.action, Action::DeleteVolumes { pod: names().pod(2) });
        assert_eq!(s.then, None);
        assert_eq!(decide_for(2, 2, &v, None), Decision::Steady);
    }

    #[test]
    fn a_leader_hands_over_before_it_is_removed() {
        let v = view(&[0, 1, 2], &[], &[], Some(2));
        let s = step(decide_for(2, 3, &v, None));
        assert_eq!(
            s.action,
            Action::MoveLeader {
                leader_client_url: names().client_url(&names().pod(2)),
                to: 101,
            },
            "to the voter furthest along"
        );
        let then = s.then.expect("then");
        assert_eq!(then.step, StepKind::RemoveMember);
        // Leadership moved: remove.
        let v = view(&[0, 1, 2], &[], &[], Some(1));
        assert_eq!(
            step(decide_for(2, 3, &v, Some(&then))).action,
            Action::Remove { id: 102 }
        );
        // Still leading (it took leadership back): move it again, never remove a leader.
        let v = view(&[0, 1, 2], &[], &[], Some(2));
        assert!(matches!(
            step(decide_for(2, 3, &v, Some(&then))).action,
            Action::MoveLeader { .. }
        ));
    }

    #[test]
    fn a_removal_never_breaks_quorum() {
        // 3 → 2 with one of the two left down: 1 healthy of 2 is short of a quorum of 2.
        let v = view(&[0, 1, 2], &[], &[1], Some(0));
        assert!(matches!(decide_for(2, 3, &v, None), Decision::Wait(_)));
        // 5 → 4 with one of the four left down: 3 healthy of 4 is a quorum.
        let v = view(&[0, 1, 2, 3, 4], &[], &[1], Some(0));
        assert_eq!(step(decide_for(4, 5, &v, None)).action, Action::Remove { id: 104 });
        // The victim itself being down does not count against it.
        let v = view(&[0, 1, 2], &[], &[2], Some(0));
        assert_eq!(step(decide_for(2, 3, &v, None)).action, Action::Remove { id: 102 });
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(4), 3);
    }

    #[test]
    fn one_to_five_to_one_walks_one_member_at_a_time() {
        // Simulate the executor against an ideal cluster: every action takes effect.
        let mut members: Vec<(i32, bool)> = vec![(0, false)]; // (ordinal, learner)
        let mut slots = 1;
        let mut op: Option<Operation> = None;
        let mut trace = Vec::new();
        for desired in [3, 5, 3, 1] {
            for _ in 0..100 {
                let ords: Vec<i32> = members.iter().map(|m| m.0).collect();
                let learners: Vec<i32> = members.iter().filter(|m| m.1).map(|m| m.0).collect();
                let v = view(&ords, &learners, &[], Some(0));
                assert!(learners.len() <= 1, "at most one learner");
                match decide_for(desired, slots, &v, op.as_ref()) {
                    Decision::Steady => break,
                    Decision::Done => op = None,
                    Decision::Wait(why) => panic!("waits in an ideal cluster: {why}"),
                    Decision::Step(s) => {
                        trace.push(format!("{:?}", s.action));
                        let mut then = s.then.clone();
                        match s.action {
                            Action::AddLearner { .. } => {
                                members.push((s.record.ordinal, true));
                                if let Some(t) = then.as_mut() {
                                    t.member_id = Some(format_id(100 + s.record.ordinal as u64));
                                }
                            }
                            Action::SetSlots(n) => slots = n,
                            Action::Promote { id } => members
                                .iter_mut()
                                .filter(|m| 100 + m.0 as u64 == id)
                                .for_each(|m| m.1 = false),
                            Action::Remove { id } => members.retain(|m| 100 + m.0 as u64 != id),
                            Action::MoveLeader { .. } => panic!("member 0 leads throughout"),
                            Action::DeleteVolumes { .. } => {}
                            Action::ResetVolumes { .. } => panic!("nobody is lost here"),
                        }
                        op = then;
                    }
                }
            }
            let voters = members.iter().filter(|m| !m.1).count();
            assert_eq!((voters, slots, op.is_none()), (desired as usize, desired, true));
        }
        assert_eq!(
            trace.iter().filter(|t| t.starts_with("AddLearner")).count(),
            4,
            "{trace:#?}"
        );
        assert_eq!(trace.iter().filter(|t| t.starts_with("Remove")).count(), 4);
        // Four slots cleared before their members were added, four after removal.
        assert_eq!(trace.iter().filter(|t| t.starts_with("DeleteVolumes")).count(), 8);
    }

    fn pod(n: &Names, ordinal: i32, restarts: i32, last_failure: Option<&str>) -> PodInfo {
        PodInfo {
            name: n.pod(ordinal),
            restarts,
            last_failure: last_failure.map(str::to_string),
            ..PodInfo::default()
        }
    }

    fn decide_with_pods(
        desired: i32,
        slots: i32,
        view: &MembersView,
        op: Option<&Operation>,
        pods: &[PodInfo],
    ) -> Decision {
        let n = names();
        decide(Input {
            desired,
            slots,
            view,
            names: &n,
            operation: op,
            pods,
        })
    }

    #[test]
    fn a_member_that_lost_its_volume_is_removed_reset_and_added_again_under_a_new_id() {
        let n = names();
        let refused = "member a2 has already been bootstrapped: the cluster at ... knows it";
        let pods = [pod(&n, 0, 0, None), pod(&n, 1, 2, Some(refused)), pod(&n, 2, 0, None)];
        // Member 1 does not answer and its pod says why.
        let v = view(&[0, 1, 2], &[], &[1], Some(0));
        let s = step(decide_with_pods(3, 3, &v, None, &pods));
        assert_eq!(s.record.kind, OperationKind::ReplaceMember);
        assert_eq!(s.action, Action::Remove { id: 101 });
        let then = s.then.expect("then");
        assert_eq!(then.step, StepKind::ResetVolumes);

        // Removed: its claims go and its pod restarts; then it is added again, as new.
        let v = view(&[0, 2], &[], &[], Some(0));
        let s = step(decide_with_pods(3, 3, &v, Some(&then), &pods));
        assert_eq!(s.action, Action::ResetVolumes { pod: n.pod(1) });
        let then = s.then.expect("then");
        assert_eq!((then.step, then.member_id.as_deref()), (StepKind::AddLearner, None));
        let s = step(decide_with_pods(3, 3, &v, Some(&then), &pods));
        assert_eq!(
            s.action,
            Action::AddLearner {
                peer_url: n.peer_url(&n.pod(1))
            }
        );
        let mut then = s.then.expect("then");
        then.member_id = Some(format_id(111));

        // Its slot exists already: promoted once caught up, and done.
        let mut v = view(&[0, 2], &[], &[], Some(0));
        v.members.push(ObservedMember {
            id: 111,
            name: n.pod(1),
            peer_urls: vec![n.peer_url(&n.pod(1))],
            learner: true,
            status: Some(MemberHealth::default()),
            ..ObservedMember::default()
        });
        let s = step(decide_with_pods(3, 3, &v, Some(&then), &[]));
        assert_eq!(s.action, Action::Promote { id: 111 });
        assert_eq!(s.then, None);
    }

    #[test]
    fn a_crash_looping_member_is_replaced_but_a_restarting_one_is_not() {
        let n = names();
        let v = view(&[0, 1, 2], &[], &[2], Some(0));
        let restarting = [pod(&n, 2, CRASH_LOOP_RESTARTS - 1, None)];
        assert_eq!(decide_with_pods(3, 3, &v, None, &restarting), Decision::Steady);
        let looping = [pod(&n, 2, CRASH_LOOP_RESTARTS, None)];
        let s = step(decide_with_pods(3, 3, &v, None, &looping));
        assert_eq!(
            (s.record.kind, s.action),
            (OperationKind::ReplaceMember, Action::Remove { id: 102 })
        );
        // One that answers again is left alone, whatever its past.
        let v = view(&[0, 1, 2], &[], &[], Some(0));
        assert_eq!(decide_with_pods(3, 3, &v, None, &looping), Decision::Steady);
    }

    #[test]
    fn no_replacement_without_a_healthy_quorum_of_the_rest_or_a_leader() {
        let n = names();
        let refused = "has already been bootstrapped";
        let pods = [pod(&n, 1, 1, Some(refused)), pod(&n, 2, 1, Some(refused))];
        // Two of three lost: removing one would leave one healthy of two.
        let v = view(&[0, 1, 2], &[], &[1, 2], Some(0));
        let d = decide_with_pods(3, 3, &v, None, &pods);
        assert!(
            matches!(d, Decision::Wait(ref why) if why.contains("short of a quorum")),
            "{d:?}"
        );
        // No leader: nothing moves.
        let v = view(&[0, 1, 2], &[], &[1], None);
        assert_eq!(decide_with_pods(3, 3, &v, None, &pods[..1]), Decision::Steady);
    }

    #[test]
    fn a_slot_is_cleared_only_once_its_old_pod_is_gone() {
        let n = names();
        let v = view(&[0], &[], &[], Some(0));
        let clear = Operation {
            kind: OperationKind::AddMember,
            step: StepKind::ClearVolumes,
            member: n.pod(1),
            ordinal: 1,
            member_id: None,
        };
        let terminating = [PodInfo {
            name: n.pod(1),
            terminating: true,
            ..PodInfo::default()
        }];
        let decision = decide(Input {
            desired: 3,
            slots: 1,
            view: &v,
            names: &n,
            operation: Some(&clear),
            pods: &terminating,
        });
        assert!(
            matches!(decision, Decision::Wait(ref why) if why.contains("still exists")),
            "{decision:?}"
        );
        let s = step(decide_for(3, 1, &v, Some(&clear)));
        assert_eq!(s.action, Action::DeleteVolumes { pod: n.pod(1) });
        assert_eq!(s.then.map(|t| t.step), Some(StepKind::AddLearner));
    }
}
