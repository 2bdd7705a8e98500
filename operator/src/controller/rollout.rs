//! Rolling restarts: a changed pod template (version, resources, store options) reaches the
//! members one at a time, decided here, purely.
//!
//! The StatefulSet updates with `OnDelete`, so a member restarts on the new template only
//! when the operator deletes its pod. One pod is deleted per reconcile, and only while every
//! member answers, knows the leader and has applied nearly all the leader has (so the
//! previous restart is over and no restart costs the quorum). Followers go first, the leader
//! last: leadership moves to the voter furthest along before its pod is deleted. Each step is
//! derived again from what is observed (a restarted pod is no longer outdated), so nothing
//! needs recording and a repeated step is harmless.

use crate::members::{MembersView, ObservedMember};
use crate::names::Names;

/// How many entries a member may trail the furthest one and still count as caught up.
pub const CAUGHT_UP_SLACK: u64 = 1_000;

/// A member pod as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    /// The StatefulSet revision it was created from (`controller-revision-hash`).
    pub revision: Option<String>,
    pub ready: bool,
    /// Being deleted already.
    pub terminating: bool,
    /// How often its container restarted.
    pub restarts: i32,
    /// What its container said when it last exited with an error (the end of its log).
    pub last_failure: Option<String>,
}

impl PodInfo {
    /// What a pod from the API says of itself.
    pub fn of(pod: &k8s_openapi::api::core::v1::Pod) -> Self {
        Self {
            name: pod.metadata.name.clone().unwrap_or_default(),
            revision: pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("controller-revision-hash").cloned()),
            ready: pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            restarts: store(pod).map_or(0, |c| c.restart_count),
            last_failure: store(pod)
                .and_then(|c| c.last_state.as_ref())
                .and_then(|s| s.terminated.as_ref())
                .filter(|t| t.exit_code != 0)
                .and_then(|t| t.message.clone()),
        }
    }
}

/// The status of a member pod's `lodestone` container.
fn store(pod: &k8s_openapi::api::core::v1::Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "lodestone")
}

/// The one thing to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Delete the pod, so the StatefulSet recreates it from the new template.
    RestartPod(String),
    /// Hand leadership over before the leader's pod is restarted.
    MoveLeader { leader_client_url: String, to: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Every pod runs the current template.
    UpToDate,
    /// Pods are outdated but none may restart now; why.
    Wait(String),
    Step(Action),
}

/// The member pods not on `update_revision`, by name.
pub fn outdated(update_revision: Option<&str>, pods: &[PodInfo]) -> Vec<String> {
    let Some(rev) = update_revision else {
        return Vec::new();
    };
    let mut out: Vec<String> = pods
        .iter()
        .filter(|p| p.revision.as_deref() != Some(rev))
        .map(|p| p.name.clone())
        .collect();
    out.sort();
    out
}

fn member_of<'a>(view: &'a MembersView, names: &Names, pod: &str) -> Option<&'a ObservedMember> {
    let peer = names.peer_url(pod);
    view.members
        .iter()
        .find(|m| m.name == pod || m.peer_urls.contains(&peer))
}

pub fn decide(update_revision: Option<&str>, pods: &[PodInfo], view: &MembersView, names: &Names) -> Decision {
    let stale = outdated(update_revision, pods);
    if stale.is_empty() {
        return Decision::UpToDate;
    }
    if pods.iter().any(|p| p.terminating || !p.ready) {
        return Decision::Wait("a member pod is restarting".into());
    }
    let Some(leader) = view.leader else {
        return Decision::Wait("no leader".into());
    };
    let furthest = view
        .members
        .iter()
        .filter_map(|m| m.status.as_ref().map(|s| s.applied_index))
        .max()
        .unwrap_or_default();
    for m in &view.members {
        match &m.status {
            None => return Decision::Wait(format!("member {} does not answer", describe(m))),
            Some(s) if s.leader == 0 => return Decision::Wait(format!("member {} knows no leader", describe(m))),
            Some(s) if s.applied_index + CAUGHT_UP_SLACK < furthest => {
                return Decision::Wait(format!("member {} is catching up", describe(m)));
            }
            _ => {}
        }
    }
    // Followers first, highest ordinal first; the leader last.
    let mut order: Vec<&String> = stale.iter().collect();
    order.sort_by_key(|p| std::cmp::Reverse(names.ordinal(p).unwrap_or(-1)));
    let is_leader = |pod: &str| member_of(view, names, pod).is_some_and(|m| m.id == leader);
    if let Some(pod) = order.iter().find(|p| !is_leader(p)) {
        return Decision::Step(Action::RestartPod((*pod).clone()));
    }
    let pod = order[0];
    let Some(me) = member_of(view, names, pod) else {
        return Decision::Wait(format!("{pod} is not a member"));
    };
    match (view.furthest_voter_except(me.id), me.client_urls.first()) {
        (Some(to), Some(url)) => Decision::Step(Action::MoveLeader {
            leader_client_url: url.clone(),
            to,
        }),
        // A single member: nothing to hand over to; restart it.
        (None, _) => Decision::Step(Action::RestartPod(pod.clone())),
        (Some(_), None) => Decision::Wait(format!("{pod} has not published its client URL")),
    }
}

fn describe(m: &ObservedMember) -> String {
    if m.name.is_empty() {
        crate::members::format_id(m.id)
    } else {
        m.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn names() -> Names {
        Names::of(&fixtures::sample("lodestonecluster-3-members.yaml"))
    }

    fn pods(revs: &[&str]) -> Vec<PodInfo> {
        revs.iter()
            .enumerate()
            .map(|(i, r)| PodInfo {
                name: format!("example-{i}"),
                revision: Some(r.to_string()),
                ready: true,
                ..PodInfo::default()
            })
            .collect()
    }

    fn three(leader: usize) -> MembersView {
        fixtures::view(&["example-0", "example-1", "example-2"], Some(leader), &[])
    }

    #[test]
    fn up_to_date_pods_need_nothing() {
        assert_eq!(
            decide(Some("b"), &pods(&["b", "b", "b"]), &three(0), &names()),
            Decision::UpToDate
        );
        assert_eq!(
            decide(None, &pods(&["a", "b", "c"]), &three(0), &names()),
            Decision::UpToDate
        );
        assert_eq!(outdated(Some("b"), &pods(&["a", "b", "a"])), ["example-0", "example-2"]);
    }

    #[test]
    fn followers_restart_first_one_at_a_time_and_the_leader_last() {
        let n = names();
        // The leader is example-2: followers first, highest ordinal first.
        assert_eq!(
            decide(Some("b"), &pods(&["a", "a", "a"]), &three(2), &n),
            Decision::Step(Action::RestartPod("example-1".into()))
        );
        // While that pod restarts, nothing else moves.
        let mut p = pods(&["a", "b", "a"]);
        p[1].ready = false;
        assert!(matches!(decide(Some("b"), &p, &three(2), &n), Decision::Wait(_)));
        let mut p = pods(&["a", "a", "a"]);
        p[0].terminating = true;
        assert!(matches!(decide(Some("b"), &p, &three(2), &n), Decision::Wait(_)));
        // Back and caught up: the next follower.
        assert_eq!(
            decide(Some("b"), &pods(&["a", "b", "a"]), &three(2), &n),
            Decision::Step(Action::RestartPod("example-0".into()))
        );
        // Only the leader left: leadership moves first, then its pod restarts.
        match decide(Some("b"), &pods(&["b", "b", "a"]), &three(2), &n) {
            Decision::Step(Action::MoveLeader { leader_client_url, to }) => {
                assert_eq!(leader_client_url, "http://example-2:2379");
                assert_ne!(to, 0xa1 + 2);
            }
            other => panic!("expected a leadership move, got {other:?}"),
        }
        assert_eq!(
            decide(Some("b"), &pods(&["b", "b", "a"]), &three(0), &n),
            Decision::Step(Action::RestartPod("example-2".into()))
        );
    }

    #[test]
    fn nothing_restarts_while_a_member_is_unhealthy_or_behind() {
        let n = names();
        let down = fixtures::view(&["example-0", "example-1", "example-2"], Some(0), &["example-1"]);
        assert!(matches!(
            decide(Some("b"), &pods(&["a", "a", "a"]), &down, &n),
            Decision::Wait(_)
        ));
        let mut behind = three(0);
        behind.members[1].status.as_mut().unwrap().applied_index = 0;
        behind.members[0].status.as_mut().unwrap().applied_index = 5_000;
        match decide(Some("b"), &pods(&["a", "a", "a"]), &behind, &n) {
            Decision::Wait(why) => assert!(why.contains("catching up"), "{why}"),
            other => panic!("expected to wait, got {other:?}"),
        }
        let leaderless = fixtures::view(&["example-0", "example-1", "example-2"], None, &[]);
        assert!(matches!(
            decide(Some("b"), &pods(&["a", "a", "a"]), &leaderless, &n),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn a_single_member_restarts_in_place() {
        let one = fixtures::view(&["example-0"], Some(0), &[]);
        assert_eq!(
            decide(Some("b"), &pods(&["a"]), &one, &names()),
            Decision::Step(Action::RestartPod("example-0".into()))
        );
    }
}
