//! Auto compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), run by the
//! leader and replicated as an ordinary Compact.
//!
//! - `periodic`: keep `retention` of history. The leader samples the store revision every
//!   tenth of the compaction period and compacts to the newest sample at least `retention`
//!   old, at most once per period (the period is the retention, capped at one hour), as
//!   etcd's periodic compactor does.
//! - `revision`: keep the last `retention` revisions; checked every
//!   `--auto-compaction-check-interval` (5 minutes, etcd's fixed interval).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Server;
use crate::config::Retention;
use crate::error::StoreError;
use crate::proto::etcdserverpb::CompactionRequest;
use crate::proto::lodestone::{self as pb, command::Kind};

const MAX_PERIOD: Duration = Duration::from_secs(3600);

/// The compaction plan: pure, fed with the clock and the revisions.
#[derive(Debug)]
pub struct Planner {
    retention: Retention,
    check: Duration,
    samples: VecDeque<(Instant, i64)>,
    last_compaction: Option<Instant>,
}

impl Planner {
    pub fn new(retention: Retention, check: Duration) -> Planner {
        Planner {
            retention,
            check,
            samples: VecDeque::new(),
            last_compaction: None,
        }
    }

    /// How often [`Planner::tick`] should run.
    pub fn interval(&self) -> Duration {
        match self.retention {
            Retention::Disabled => Duration::from_secs(3600),
            Retention::Period(d) => (d.min(MAX_PERIOD) / 10).max(Duration::from_millis(10)),
            Retention::Revisions(_) => self.check,
        }
    }

    /// Forget everything (leadership moved; the new leader samples afresh).
    pub fn reset(&mut self) {
        self.samples.clear();
        self.last_compaction = None;
    }

    /// Returns the revision to compact to now, if any.
    pub fn tick(&mut self, now: Instant, current: i64, compacted: i64) -> Option<i64> {
        match self.retention {
            Retention::Disabled => None,
            Retention::Revisions(keep) => {
                let target = current - keep;
                (target > compacted).then(|| {
                    self.last_compaction = Some(now);
                    target
                })
            }
            Retention::Period(keep) => {
                self.samples.push_back((now, current));
                let period = keep.min(MAX_PERIOD);
                if self.last_compaction.is_some_and(|t| now.duration_since(t) < period) {
                    return None;
                }
                // The newest sample that is at least `keep` old.
                let pos = self.samples.iter().rposition(|(t, _)| now.duration_since(*t) >= keep)?;
                let (_, target) = self.samples[pos];
                self.samples.drain(..pos);
                if target > compacted {
                    self.last_compaction = Some(now);
                    Some(target)
                } else {
                    None
                }
            }
        }
    }
}

/// The leader's auto-compaction loop; returns at shutdown.
pub(super) async fn run(server: Arc<Server>, retention: Retention) {
    if retention == Retention::Disabled {
        return;
    }
    let mut planner = Planner::new(retention, server.cfg.auto_compaction_check_interval);
    tracing::info!(?retention, "auto compaction enabled");
    let mut tick = tokio::time::interval(planner.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = false;
    loop {
        tokio::select! {
            _ = server.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leader = server.leader() == Some(server.id);
        if leader != leading {
            planner.reset();
            leading = leader;
        }
        if !leader {
            continue;
        }
        let compacted = match server.sm.mvcc.meta() {
            Ok(m) => m.compacted,
            Err(e) => {
                tracing::warn!(error = %e, "auto compaction: reading the store");
                continue;
            }
        };
        let Some(target) = planner.tick(Instant::now(), server.revision(), compacted) else {
            continue;
        };
        let cmd = pb::Command {
            kind: Some(Kind::Compaction(CompactionRequest {
                revision: target,
                physical: false,
            })),
        };
        match server.propose(cmd).await {
            Ok(_) => tracing::info!(revision = target, "auto compaction: compacted"),
            Err(StoreError::Compacted) => {}
            Err(e) => tracing::warn!(revision = target, error = %e, "auto compaction failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_mode_keeps_the_last_n_revisions() {
        let mut p = Planner::new(Retention::Revisions(100), Duration::from_secs(300));
        let t = Instant::now();
        assert_eq!(p.interval(), Duration::from_secs(300));
        assert_eq!(p.tick(t, 50, 0), None);
        assert_eq!(p.tick(t, 150, 0), Some(50));
        assert_eq!(p.tick(t, 150, 50), None);
        assert_eq!(p.tick(t, 400, 50), Some(300));
    }

    #[test]
    fn periodic_mode_compacts_to_the_revision_retention_ago_once_per_period() {
        let keep = Duration::from_secs(10);
        let mut p = Planner::new(Retention::Period(keep), Duration::from_secs(300));
        assert_eq!(p.interval(), Duration::from_secs(1));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Revision grows by 10 per second.
        for s in 0..10 {
            assert_eq!(
                p.tick(at(s), 10 * s as i64 + 1, 0),
                None,
                "nothing is {keep:?} old at {s}s"
            );
        }
        assert_eq!(p.tick(at(10), 101, 0), Some(1), "the sample from t0");
        for s in 11..20 {
            assert_eq!(p.tick(at(s), 10 * s as i64 + 1, 1), None, "once per period");
        }
        assert_eq!(p.tick(at(20), 201, 1), Some(101));
        // A period is capped at an hour.
        let p = Planner::new(Retention::Period(Duration::from_secs(3 * 3600)), Duration::ZERO);
        assert_eq!(p.interval(), Duration::from_secs(360));
    }

    #[test]
    fn disabled_never_compacts() {
        let mut p = Planner::new(Retention::Disabled, Duration::from_secs(1));
        assert_eq!(p.tick(Instant::now(), 1_000_000, 0), None);
    }
}
