use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::crd::{PvcDestination, SnapshotDestination, SnapshotScheduleSpec};
use crate::fixtures;

fn at(text: &str) -> Time {
    Time(text.parse().expect("timestamp"))
}

fn cluster(schedule: Option<(&str, i32)>) -> LodestoneCluster {
    let mut c = fixtures::sample("lodestonecluster-3-members.yaml");
    c.metadata.creation_timestamp = Some(at("2026-12-01T00:00:00Z"));
    c.spec.snapshots = schedule.map(|(schedule, retention)| SnapshotScheduleSpec {
        schedule: schedule.into(),
        retention,
        destination: destination(),
    });
    c
}

fn destination() -> SnapshotDestination {
    SnapshotDestination {
        pvc: PvcDestination {
            claim_name: "backups".into(),
            path: Some("example".into()),
        },
    }
}

fn snapshot(name: &str, phase: Option<&str>, scheduled: bool, completed: Option<&str>) -> LodestoneSnapshot {
    let mut s = LodestoneSnapshot::new(
        name,
        LodestoneSnapshotSpec {
            cluster: "example".into(),
            destination: destination(),
        },
    );
    s.metadata.namespace = Some("default".into());
    if scheduled {
        s.metadata.labels = Some(BTreeMap::from([(SCHEDULED_LABEL.to_string(), "true".to_string())]));
    }
    s.status = phase.map(|p| LodestoneSnapshotStatus {
        phase: Some(p.into()),
        completion_time: completed.map(at),
        revision: Some(7),
        ..Default::default()
    });
    s
}

const URLS: &[&str] = &["http://example-1:2379", "http://example-0:2379"];

fn urls() -> Vec<String> {
    URLS.iter().map(|u| u.to_string()).collect()
}

#[test]
fn a_new_snapshot_starts_a_job_from_the_answering_members_only_with_a_leader() {
    let c = cluster(None);
    let snaps = [snapshot("manual", None, false, None)];
    let now = at("2026-12-03T10:00:00Z");
    let plan = decide(Input {
        cluster: &c,
        snapshots: &snaps,
        jobs: &BTreeMap::new(),
        endpoints: &urls(),
        now: &now,
    });
    assert_eq!(plan.jobs.len(), 1);
    let job = &plan.jobs[0];
    assert_eq!(job.metadata.name.as_deref(), Some("manual-save"));
    let container = &job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        container.args.as_deref().unwrap(),
        [
            "snapshot",
            "save",
            "/var/lib/lodestone/snapshots/example/manual.db",
            "--endpoints",
            "http://example-1:2379,http://example-0:2379",
            "--report",
            "/dev/termination-log"
        ]
    );
    assert_eq!(plan.statuses[0].1.phase.as_deref(), Some(phase::RUNNING));
    assert_eq!(plan.statuses[0].1.start_time, Some(now.clone()));
    // The Job's pod is no member: the members' selector must not match it.
    let pod_labels = job
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let selector = crate::names::selector_labels(&c);
    assert!(
        !selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "{pod_labels:?} matches the member selector {selector:?}"
    );
    assert_eq!(
        pod_labels.get("app.kubernetes.io/instance").map(String::as_str),
        Some("example")
    );

    // Without a leader it waits.
    let plan = decide(Input {
        cluster: &c,
        snapshots: &snaps,
        jobs: &BTreeMap::new(),
        endpoints: &[],
        now: &now,
    });
    assert!(plan.jobs.is_empty());
    assert_eq!(plan.statuses[0].1.phase.as_deref(), Some(phase::PENDING));
    assert_eq!(
        plan.statuses[0].1.message.as_deref(),
        Some("waiting for LodestoneCluster \"example\" to have a leader")
    );

    // Once a leader is back, the Job starts and the message goes.
    let waiting = [LodestoneSnapshot {
        status: Some(plan.statuses[0].1.clone()),
        ..snaps[0].clone()
    }];
    let plan = decide(Input {
        cluster: &c,
        snapshots: &waiting,
        jobs: &BTreeMap::new(),
        endpoints: &["http://example-0:2379".to_string()],
        now: &now,
    });
    assert_eq!(plan.jobs.len(), 1);
    assert_eq!(plan.statuses[0].1.phase.as_deref(), Some(phase::RUNNING));
    assert_eq!(plan.statuses[0].1.message, None);
}

#[test]
fn a_finished_job_completes_or_fails_the_snapshot() {
    let c = cluster(None);
    let snaps = [snapshot("manual", Some(phase::RUNNING), false, None)];
    let now = at("2026-12-03T10:00:00Z");
    let sha = "ab".repeat(32);
    let report = format!(r#"{{"file":"/x/manual.db","size":4128,"sha256":"{sha}","revision":42,"pruned":[]}}"#);
    let jobs = BTreeMap::from([("manual-save".to_string(), JobState::Succeeded { report })]);
    let plan = decide(Input {
        cluster: &c,
        snapshots: &snaps,
        jobs: &jobs,
        endpoints: &urls(),
        now: &now,
    });
    let status = &plan.statuses[0].1;
    assert_eq!(status.phase.as_deref(), Some(phase::SUCCEEDED));
    assert_eq!((status.size, status.revision), (Some(4128), Some(42)));
    assert_eq!(status.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(
        plan.last.as_ref().map(|l| (l.name.as_str(), l.revision)),
        Some(("manual", Some(42)))
    );
    assert_eq!(plan.events[0].reason, Reason::SnapshotSucceeded);

    let jobs = BTreeMap::from([(
        "manual-save".to_string(),
        JobState::Failed {
            message: "lodestone snapshot save: no endpoint streamed a snapshot".into(),
        },
    )]);
    let plan = decide(Input {
        cluster: &c,
        snapshots: &snaps,
        jobs: &jobs,
        endpoints: &urls(),
        now: &now,
    });
    let status = &plan.statuses[0].1;
    assert_eq!(status.phase.as_deref(), Some(phase::FAILED));
    assert!(status.error.as_deref().unwrap().contains("no endpoint"));
    assert!(plan.events[0].warning);
    // A report that is not one fails it too.
    let jobs = BTreeMap::from([(
        "manual-save".to_string(),
        JobState::Succeeded {
            report: "garbage".into(),
        },
    )]);
    let plan = decide(Input {
        cluster: &c,
        snapshots: &snaps,
        jobs: &jobs,
        endpoints: &urls(),
        now: &now,
    });
    assert_eq!(plan.statuses[0].1.phase.as_deref(), Some(phase::FAILED));
    assert!(plan.events[0].warning);
    // Nothing left to watch and no schedule: no reason to wake.
    assert_eq!(plan.wake, None);
}

#[test]
fn the_schedule_creates_one_snapshot_per_tick_one_at_a_time() {
    let c = cluster(Some(("0 */6 * * *", 3)));
    let now = at("2026-12-03T13:05:00Z");
    let decide_with = |snaps: &[LodestoneSnapshot]| {
        decide(Input {
            cluster: &c,
            snapshots: snaps,
            jobs: &BTreeMap::new(),
            endpoints: &urls(),
            now: &now,
        })
    };
    // The latest tick (12:00) has no snapshot yet.
    let plan = decide_with(&[]);
    let created = &plan.create[0];
    assert_eq!(created.metadata.name.as_deref(), Some("example-sched-20261203120000"));
    assert_eq!(created.spec.cluster, "example");
    assert_eq!(created.labels().get(SCHEDULED_LABEL).map(String::as_str), Some("true"));
    // Its save is about to run: look again soon.
    assert_eq!(plan.wake, Some(WAKE_WHILE_SAVING));
    // It exists: nothing more until the next tick (18:00), and that is when to look again.
    let done = snapshot("example-sched-20261203120000", Some(phase::SUCCEEDED), true, None);
    let plan = decide_with(std::slice::from_ref(&done));
    assert!(plan.create.is_empty());
    assert_eq!(plan.wake, Some(Duration::from_secs(4 * 3600 + 55 * 60)));
    // A tick while the previous one still runs is skipped.
    let running = snapshot("example-sched-20261203060000", Some(phase::RUNNING), true, None);
    assert!(decide_with(std::slice::from_ref(&running)).create.is_empty());
    // Seconds are accepted.
    assert!(parse_schedule("*/5 * * * * *").is_ok());
    // Nothing for ticks before the cluster existed.
    let mut young = c.clone();
    young.metadata.creation_timestamp = Some(at("2026-12-03T12:30:00Z"));
    let plan = decide(Input {
        cluster: &young,
        snapshots: &[],
        jobs: &BTreeMap::new(),
        endpoints: &urls(),
        now: &now,
    });
    assert!(plan.create.is_empty());
}

#[test]
fn retention_keeps_the_newest_completed_scheduled_snapshots_and_their_files() {
    let c = cluster(Some(("0 * * * *", 2)));
    let now = at("2026-12-03T13:05:00Z");
    let snaps = [
        snapshot(
            "example-sched-20261203100000",
            Some(phase::SUCCEEDED),
            true,
            Some("2026-12-03T10:00:05Z"),
        ),
        snapshot("example-sched-20261203110000", Some(phase::FAILED), true, None),
        snapshot(
            "example-sched-20261203120000",
            Some(phase::SUCCEEDED),
            true,
            Some("2026-12-03T12:00:05Z"),
        ),
        snapshot(
            "example-sched-20261203130000",
            Some(phase::SUCCEEDED),
            true,
            Some("2026-12-03T13:00:05Z"),
        ),
        // Not scheduled: never pruned.
        snapshot("manual", Some(phase::SUCCEEDED), false, Some("2026-12-01T00:00:05Z")),
    ];
    let plan = decide(Input {
        cluster: &c,
        snapshots: &snaps,
        jobs: &BTreeMap::new(),
        endpoints: &urls(),
        now: &now,
    });
    assert_eq!(
        plan.delete,
        ["example-sched-20261203100000", "example-sched-20261203110000"]
    );
    assert_eq!(plan.last.map(|l| l.name), Some("example-sched-20261203130000".into()));
    // The Job of a scheduled snapshot prunes the files the same way.
    let pending = [snapshot("example-sched-20261203140000", None, true, None)];
    let plan = decide(Input {
        cluster: &c,
        snapshots: &pending,
        jobs: &BTreeMap::new(),
        endpoints: &urls(),
        now: &at("2026-12-03T14:00:01Z"),
    });
    let args = plan.jobs[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap();
    assert_eq!(args[args.len() - 4..], ["--retain", "2", "--prefix", "example-sched-"]);
}

#[test]
fn with_client_tls_the_job_checks_the_members_and_presents_the_operators_certificate() {
    let c = fixtures::sample("lodestonecluster-tls.yaml");
    let mut s = snapshot("secure", None, false, None);
    s.spec.cluster = c.name_any();
    let https = vec!["https://example-tls-0.example-tls-peer.default.svc:2379".to_string()];
    let now = at("2026-12-03T10:00:00Z");
    let plan = decide(Input {
        cluster: &c,
        snapshots: std::slice::from_ref(&s),
        jobs: &BTreeMap::new(),
        endpoints: &https,
        now: &now,
    });
    let pod = plan.jobs[0].spec.as_ref().unwrap().template.spec.clone().unwrap();
    let args = pod.containers[0].args.clone().unwrap();
    let dir = crate::names::CLIENT_TLS_DIR;
    for (flag, file) in [("--cacert", "ca.crt"), ("--cert", "tls.crt"), ("--key", "tls.key")] {
        let at = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} in {args:?}"));
        assert_eq!(args[at + 1], format!("{dir}/{file}"));
    }
    let secret = c
        .spec
        .tls
        .as_ref()
        .unwrap()
        .client
        .as_ref()
        .unwrap()
        .secret_name
        .clone();
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "client-tls")
        .expect("volume");
    assert_eq!(volume.secret.unwrap().secret_name, Some(secret));
    let mount = pod.containers[0]
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "client-tls")
        .expect("mount");
    assert_eq!((mount.mount_path.as_str(), mount.read_only), (dir, Some(true)));

    // Without TLS, neither flags nor Secret.
    let plain = cluster(None);
    let plan = decide(Input {
        cluster: &plain,
        snapshots: &[snapshot("plain", None, false, None)],
        jobs: &BTreeMap::new(),
        endpoints: &urls(),
        now: &now,
    });
    let pod = plan.jobs[0].spec.as_ref().unwrap().template.spec.clone().unwrap();
    assert!(!pod.containers[0].args.clone().unwrap().iter().any(|a| a == "--cacert"));
    assert_eq!(pod.volumes.unwrap().len(), 1);
}
