//! Spec checks the API server cannot make (or that an older CRD may not carry). A spec that
//! fails them is reported as `Degraded` with reason `InvalidSpec` and is not acted on.

use crate::crd::{AutoCompactionMode, LodestoneClusterSpec};

/// etcd's defaults, used when a timing option is unset.
const DEFAULT_HEARTBEAT_MS: i64 = 100;
const DEFAULT_ELECTION_MS: i64 = 1000;

/// Every problem with the spec, as user-facing sentences.
pub fn validate(spec: &LodestoneClusterSpec) -> Vec<String> {
    let mut problems = Vec::new();
    if !(1..=7).contains(&spec.replicas) {
        problems.push(format!(
            "spec.replicas is {}; it must be between 1 and 7",
            spec.replicas
        ));
    }
    if !valid_tag(&spec.version) {
        problems.push(format!(
            "spec.version {:?} is not an image tag (letters, digits, '_', '.', '-'; at most 128)",
            spec.version
        ));
    }
    if let Some(policy) = &spec.image_pull_policy
        && !matches!(policy.as_str(), "Always" | "IfNotPresent" | "Never")
    {
        problems.push(format!(
            "spec.imagePullPolicy {policy:?} must be Always, IfNotPresent or Never"
        ));
    }
    check_size(&mut problems, "spec.storage.data.size", &spec.storage.data.size);
    if let Some(wal) = &spec.storage.wal {
        check_size(&mut problems, "spec.storage.wal.size", &wal.size);
    }
    if let Some(store) = &spec.store {
        let heartbeat = store.heartbeat_interval.unwrap_or(DEFAULT_HEARTBEAT_MS);
        let election = store.election_timeout.unwrap_or(DEFAULT_ELECTION_MS);
        if election < 5 * heartbeat {
            problems.push(format!(
                "spec.store.electionTimeout ({election} ms) must be at least 5 times spec.store.heartbeatInterval ({heartbeat} ms)"
            ));
        }
        if let Some(compaction) = &store.auto_compaction {
            let ok = match compaction.mode {
                AutoCompactionMode::Periodic => valid_period(&compaction.retention),
                AutoCompactionMode::Revision => compaction.retention.parse::<u64>().is_ok_and(|n| n > 0),
            };
            if !ok {
                problems.push(format!(
                    "spec.store.autoCompaction.retention {:?} does not fit mode {}: use a duration such as 1h or 30m for periodic, a revision count for revision",
                    compaction.retention,
                    match compaction.mode {
                        AutoCompactionMode::Periodic => "periodic",
                        AutoCompactionMode::Revision => "revision",
                    }
                ));
            }
        }
    }
    if let Some(snapshots) = &spec.snapshots {
        if let Err(err) = super::backup::parse_schedule(&snapshots.schedule) {
            problems.push(format!(
                "spec.snapshots.schedule {:?} is not a cron schedule: {err}",
                snapshots.schedule
            ));
        }
        if snapshots.retention < 1 {
            problems.push("spec.snapshots.retention must be at least 1".to_string());
        }
        if !valid_dns_label(&snapshots.destination.pvc.claim_name) {
            problems.push(format!(
                "spec.snapshots.destination.pvc.claimName {:?} is not a valid claim name",
                snapshots.destination.pvc.claim_name
            ));
        }
    }
    problems
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
}

/// etcd's periodic retention: a Go duration (`1h30m`, `45m`, `10s`) or a bare number of hours.
fn valid_period(retention: &str) -> bool {
    if retention.parse::<u64>().is_ok_and(|n| n > 0) {
        return true;
    }
    let mut rest = retention;
    let mut any = false;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        if !matches!(&rest[..unit], "h" | "m" | "s") {
            return false;
        }
        rest = &rest[unit..];
        any = true;
    }
    any
}

/// A Kubernetes quantity for a volume: a positive number with an optional binary or decimal
/// suffix (`10Gi`, `500M`, `1.5Ti`).
fn check_size(problems: &mut Vec<String>, field: &str, size: &str) {
    const SUFFIXES: [&str; 13] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", ""];
    let suffix = SUFFIXES
        .iter()
        .find(|s| !s.is_empty() && size.ends_with(*s))
        .copied()
        .unwrap_or("");
    let number = &size[..size.len() - suffix.len()];
    let ok = number
        .parse::<f64>()
        .is_ok_and(|n| n > 0.0 && n.is_finite() && number.chars().all(|c| c.is_ascii_digit() || c == '.'));
    if !ok {
        problems.push(format!("{field} {size:?} is not a size such as 10Gi"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_follow_etcd() {
        for ok in ["1", "12", "1h", "30m", "1h30m", "90s"] {
            assert!(valid_period(ok), "{ok}");
        }
        for bad in ["", "h", "1d", "1.5h", "-1", "0", "m30"] {
            assert!(!valid_period(bad), "{bad}");
        }
    }

    #[test]
    fn sizes_are_quantities() {
        for (size, ok) in [
            ("10Gi", true),
            ("1.5Ti", true),
            ("500M", true),
            ("0", false),
            ("10GB", false),
            ("", false),
            ("-1Gi", false),
            ("1e3", false),
        ] {
            let mut problems = Vec::new();
            check_size(&mut problems, "f", size);
            assert_eq!(problems.is_empty(), ok, "{size}");
        }
    }

    #[test]
    fn tags() {
        assert!(valid_tag("0.1.0"));
        assert!(valid_tag("v3.4-rc_1"));
        assert!(!valid_tag(""));
        assert!(!valid_tag("-x"));
        assert!(!valid_tag("a:b"));
        assert!(!valid_tag(&"x".repeat(129)));
    }
}
