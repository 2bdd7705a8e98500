//! Snapshots, decided here, purely: which `LodestoneSnapshot`s to save now (each by a Job
//! running `lodestone snapshot save` against the members), what each one's status becomes
//! from its Job, which scheduled snapshots `spec.snapshots` creates, and which old ones its
//! retention deletes.
//!
//! A snapshot is saved only while the cluster has a leader, from the members that answer
//! (the leader first). Its Job reports the file's size, SHA-256 and revision as JSON in its
//! termination message, after checking the file's trailer and loading it. Scheduled snapshots
//! are named `<cluster>-sched-<UTC time of the tick>`, so they sort by time; one runs at a
//! time (a tick that comes while one still runs is skipped, like a CronJob with
//! `concurrencyPolicy: Forbid`), and a tick missed while the operator was away is caught up
//! once. The Job of a scheduled snapshot prunes the older files of its schedule down to the
//! retention; the operator deletes the objects of the same snapshots.

use std::collections::BTreeMap;
use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::{Resource, ResourceExt};

use super::build::{snapshot_job, snapshot_job_name};
use super::plan::{PlannedEvent, Reason};
use crate::crd::{LastSnapshot, LodestoneCluster, LodestoneSnapshot, LodestoneSnapshotSpec, LodestoneSnapshotStatus};
use crate::names::labels;
use crate::platform::JobState;

/// Marks the snapshots a schedule created (retention applies to those only).
pub const SCHEDULED_LABEL: &str = "lodestone.dev/scheduled";

pub mod phase {
    pub const PENDING: &str = "Pending";
    pub const RUNNING: &str = "Running";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
}

/// Everything the decision needs.
pub struct Input<'a> {
    pub cluster: &'a LodestoneCluster,
    /// The snapshots of the cluster's namespace (those of other clusters are ignored).
    pub snapshots: &'a [LodestoneSnapshot],
    /// The Jobs of this cluster's unfinished snapshots, by Job name.
    pub jobs: &'a BTreeMap<String, JobState>,
    /// Client URLs of the members that answer, the leader's first; empty without a leader.
    pub endpoints: &'a [String],
    pub now: &'a Time,
}

/// What to do about snapshots in this reconcile.
#[derive(Debug, Default)]
pub struct Plan {
    /// Scheduled snapshots to create.
    pub create: Vec<LodestoneSnapshot>,
    /// Snapshots the retention lets go, by name.
    pub delete: Vec<String>,
    /// Jobs to start.
    pub jobs: Vec<Job>,
    /// New statuses of snapshots.
    pub statuses: Vec<(LodestoneSnapshot, LodestoneSnapshotStatus)>,
    /// The newest completed snapshot, for the cluster's status.
    pub last: Option<LastSnapshot>,
    pub events: Vec<PlannedEvent>,
    /// When to look again for snapshots' sake: soon while a save runs or waits, else at the
    /// schedule's next tick.
    pub wake: Option<Duration>,
}

/// How soon to look again at a save that runs or waits for a leader.
pub const WAKE_WHILE_SAVING: Duration = Duration::from_secs(5);

/// The schedule's parser: the standard five fields, or six with leading seconds.
pub fn parse_schedule(schedule: &str) -> Result<Cron, croner::errors::CronError> {
    CronParser::builder().seconds(Seconds::Optional).build().parse(schedule)
}

/// Whether a snapshot reached its end (succeeded or failed).
pub fn finished(s: &LodestoneSnapshot) -> bool {
    matches!(
        s.status.as_ref().and_then(|st| st.phase.as_deref()),
        Some(phase::SUCCEEDED | phase::FAILED)
    )
}

fn succeeded(s: &LodestoneSnapshot) -> bool {
    s.status.as_ref().and_then(|st| st.phase.as_deref()) == Some(phase::SUCCEEDED)
}

fn scheduled(s: &LodestoneSnapshot) -> bool {
    s.labels().get(SCHEDULED_LABEL).map(String::as_str) == Some("true")
}

/// The name prefix of a cluster's scheduled snapshots (and of their files).
pub fn scheduled_prefix(cluster: &LodestoneCluster) -> String {
    format!("{}-sched-", cluster.name_any())
}

pub fn decide(input: Input<'_>) -> Plan {
    let Input {
        cluster,
        snapshots,
        jobs,
        endpoints,
        now,
    } = input;
    let mut plan = Plan::default();
    let mine: Vec<&LodestoneSnapshot> = snapshots
        .iter()
        .filter(|s| s.spec.cluster == cluster.name_any())
        .collect();
    let retention = cluster.spec.snapshots.as_ref().map(|s| s.retention.max(1));
    let prefix = scheduled_prefix(cluster);

    // Each unfinished snapshot moves on with its Job.
    for snapshot in mine.iter().filter(|s| !finished(s)) {
        let old = snapshot.status.clone().unwrap_or_default();
        let mut new = old.clone();
        match jobs.get(&snapshot_job_name(snapshot)) {
            None if endpoints.is_empty() => {
                new.phase = Some(phase::PENDING.into());
                new.message = Some(format!(
                    "waiting for LodestoneCluster {:?} to have a leader",
                    cluster.name_any()
                ));
            }
            None => {
                let retain = retention.filter(|_| scheduled(snapshot)).map(|n| (n, prefix.as_str()));
                plan.jobs.push(snapshot_job(cluster, snapshot, endpoints, retain));
                new.phase = Some(phase::RUNNING.into());
                new.start_time.get_or_insert_with(|| now.clone());
                new.message = None;
            }
            Some(JobState::Running) => {
                new.phase = Some(phase::RUNNING.into());
                new.start_time.get_or_insert_with(|| now.clone());
                new.message = None;
            }
            Some(JobState::Succeeded { report }) => match parse_report(report) {
                Ok((size, sha256, revision)) => {
                    new.phase = Some(phase::SUCCEEDED.into());
                    new.completion_time = Some(now.clone());
                    new.size = Some(size);
                    new.sha256 = Some(sha256);
                    new.revision = Some(revision);
                    new.error = None;
                    plan.events.push(PlannedEvent {
                        warning: false,
                        reason: Reason::SnapshotSucceeded,
                        action: "Snapshot",
                        note: format!("{} saved at revision {revision}, {size} bytes", snapshot.name_any()),
                    });
                }
                Err(why) => {
                    new.phase = Some(phase::FAILED.into());
                    new.completion_time = Some(now.clone());
                    let message = format!("the save Job reported nothing usable: {why}");
                    plan.events.push(PlannedEvent {
                        warning: true,
                        reason: Reason::SnapshotFailed,
                        action: "Snapshot",
                        note: format!("{} failed: {message}", snapshot.name_any()),
                    });
                    new.error = Some(message);
                }
            },
            Some(JobState::Failed { message }) => {
                new.phase = Some(phase::FAILED.into());
                new.completion_time = Some(now.clone());
                new.error = Some(message.clone());
                plan.events.push(PlannedEvent {
                    warning: true,
                    reason: Reason::SnapshotFailed,
                    action: "Snapshot",
                    note: format!("{} failed: {message}", snapshot.name_any()),
                });
            }
        }
        if new != old {
            plan.statuses.push(((*snapshot).clone(), new));
        }
    }

    // The schedule's latest tick, unless its snapshot exists or one still runs.
    if let Some(schedule) = &cluster.spec.snapshots
        && let Ok(cron) = parse_schedule(&schedule.schedule)
    {
        let zoned = now.0.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC);
        let ours: Vec<&&LodestoneSnapshot> = mine.iter().filter(|s| scheduled(s)).collect();
        let busy = ours.iter().any(|s| !finished(s));
        if let Ok(next) = cron.find_next_occurrence(&zoned, false) {
            let until = next.timestamp().duration_since(now.0);
            plan.wake = Some(
                Duration::try_from(until)
                    .unwrap_or_default()
                    .max(Duration::from_secs(1)),
            );
        }
        if let Ok(tick) = cron.find_previous_occurrence(&zoned, true) {
            let name = format!("{prefix}{}", tick.strftime("%Y%m%d%H%M%S"));
            let newest = ours.iter().map(|s| s.name_any()).max();
            let created = cluster.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let after_creation = created.is_none_or(|c| tick.timestamp() >= c);
            let due = match &newest {
                Some(n) => *n < name,
                None => after_creation,
            };
            if due && !busy {
                plan.create.push(LodestoneSnapshot {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace: cluster.namespace(),
                        labels: Some({
                            let mut l = labels(cluster, "snapshot");
                            l.insert(SCHEDULED_LABEL.into(), "true".into());
                            l
                        }),
                        owner_references: cluster.controller_owner_ref(&()).map(|r| vec![r]),
                        ..ObjectMeta::default()
                    },
                    spec: LodestoneSnapshotSpec {
                        cluster: cluster.name_any(),
                        destination: schedule.destination.clone(),
                    },
                    status: None,
                });
            }
        }
        // Retention: the newest `retention` completed scheduled snapshots stay; every finished
        // one older than the oldest of those goes.
        let mut done: Vec<String> = ours.iter().filter(|s| succeeded(s)).map(|s| s.name_any()).collect();
        done.sort();
        let keep = schedule.retention.max(1) as usize;
        if done.len() > keep {
            let oldest_kept = done[done.len() - keep].clone();
            plan.delete = ours
                .iter()
                .filter(|s| finished(s) && s.name_any() < oldest_kept)
                .map(|s| s.name_any())
                .collect();
            plan.delete.sort();
        }
    }

    // The newest completed snapshot, counting the ones completed just now.
    let completed = mine
        .iter()
        .map(|s| {
            let status = plan
                .statuses
                .iter()
                .find(|(o, _)| o.name_any() == s.name_any())
                .map(|(_, st)| st.clone())
                .or_else(|| s.status.clone())
                .unwrap_or_default();
            (s.name_any(), status)
        })
        .filter(|(name, st)| st.phase.as_deref() == Some(phase::SUCCEEDED) && !plan.delete.contains(name))
        .max_by(|a, b| (&a.1.completion_time, &a.0).cmp(&(&b.1.completion_time, &b.0)));
    let saving = !plan.create.is_empty()
        || plan
            .statuses
            .iter()
            .any(|(_, st)| !matches!(st.phase.as_deref(), Some(phase::SUCCEEDED | phase::FAILED)))
        || mine
            .iter()
            .any(|s| !finished(s) && !plan.statuses.iter().any(|(o, _)| o.name_any() == s.name_any()));
    if saving {
        plan.wake = Some(plan.wake.map_or(WAKE_WHILE_SAVING, |w| w.min(WAKE_WHILE_SAVING)));
    }
    plan.last = completed.map(|(name, st)| LastSnapshot {
        name,
        completion_time: st.completion_time,
        revision: st.revision,
    });
    plan
}

/// Size, SHA-256 and revision from `lodestone snapshot save`'s JSON report.
fn parse_report(report: &str) -> Result<(i64, String, i64), String> {
    let v: serde_json::Value = serde_json::from_str(report.trim()).map_err(|e| format!("{e}: {report:?}"))?;
    let size = v["size"].as_i64().ok_or("no size")?;
    let sha = v["sha256"].as_str().ok_or("no sha256")?.to_string();
    let revision = v["revision"].as_i64().ok_or("no revision")?;
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("sha256 {sha:?} is not a SHA-256"));
    }
    Ok((size, sha, revision))
}

#[cfg(test)]
mod tests;
