//! Compaction's two loops:
//! - auto compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), run by the
//!   leader and replicated as an ordinary Compact;
//! - on every member, removing the history that applied compactions made unreachable, in
//!   bounded steps off the apply path (`mvcc::compaction`).
//!
//! Auto compaction modes:
//! - `periodic`: keep `retention` of history. The leader samples the store revision every
//!   tenth of the compaction period and compacts to the newest sample at least `retention`
//!   old, at most once per period (the period is the retention, capped at one hour), as
//!   etcd's periodic compactor does.
//! - `revision`: keep the last `retention` revisions; checked every
//!   `--auto-compaction-check-interval` (5 minutes, etcd's fixed interval).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Member;
use crate::config::Retention;
use crate::error::StoreError;
use crate::mvcc::compaction::Step;
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
pub(super) async fn run(member: Arc<Member>, retention: Retention) {
    if retention == Retention::Disabled {
        return;
    }
    let mut planner = Planner::new(retention, member.cfg.auto_compaction_check_interval);
    tracing::info!(?retention, "auto compaction enabled");
    let mut tick = tokio::time::interval(planner.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = false;
    loop {
        tokio::select! {
            _ = member.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leader = member.leader() == Some(member.id);
        if leader != leading {
            planner.reset();
            leading = leader;
        }
        if !leader {
            continue;
        }
        let compacted = member.sm.compacted();
        let Some(target) = planner.tick(Instant::now(), member.revision(), compacted) else {
            continue;
        };
        let cmd = pb::Command {
            kind: Some(Kind::Compaction(CompactionRequest {
                revision: target,
                physical: false,
            })),
            auth: None,
        };
        match member.propose(cmd).await {
            Ok(_) => tracing::info!(revision = target, "auto compaction: compacted"),
            Err(StoreError::Compacted) => {}
            Err(e) => tracing::warn!(revision = target, error = %e, "auto compaction failed; will retry"),
        }
    }
}

/// Index entries one physical compaction step scans (etcd's `compactionBatchLimit`).
const STEP_ENTRIES: usize = 1000;
/// Pause between steps, so a long pass leaves the disk to the write path (etcd's
/// `compactionSleepInterval`).
const STEP_PAUSE: Duration = Duration::from_millis(10);
/// How often the loop looks for work it was not woken for (a snapshot installed mid-pass).
const RECHECK: Duration = Duration::from_secs(10);

impl Member {
    /// Waits until this member removed the history a compaction at `revision` dropped
    /// (etcd's `physical` compaction option).
    pub async fn wait_compacted_physically(&self, revision: i64) -> Result<(), StoreError> {
        let mut rx = self.compacted_physically.subscribe();
        tokio::select! {
            r = rx.wait_for(|done| *done >= revision) => r.map(|_| ()).map_err(|_| StoreError::Stopped),
            _ = self.shutdown.cancelled() => Err(StoreError::Stopped),
        }
    }
}

/// Every member's physical compaction loop: after each applied compaction (and now and then
/// regardless), runs bounded steps until the history it dropped is gone; returns at shutdown.
pub(super) async fn remove_compacted_history(member: Arc<Member>) {
    let mut revision = member.sm.revision();
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut done = *member.compacted_physically.borrow();
    let mut force = true;
    loop {
        if force || member.sm.compacted() > done {
            loop {
                let sm = member.sm.clone();
                let step = tokio::task::spawn_blocking(move || sm.mvcc.compact_step(STEP_ENTRIES)).await;
                match step {
                    Ok(Ok(Step::More)) => {}
                    Ok(Ok(Step::Idle(rev))) => {
                        done = rev;
                        member.compacted_physically.send_replace(rev);
                        break;
                    }
                    Ok(Ok(Step::Finished(rev))) => {
                        tracing::info!(revision = rev, "compacted history removed");
                        done = rev;
                        member.compacted_physically.send_replace(rev);
                        continue;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "removing compacted history; will retry");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "removing compacted history; will retry");
                        break;
                    }
                }
                tokio::select! {
                    _ = member.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(STEP_PAUSE) => {}
                }
            }
        }
        tokio::select! {
            _ = member.shutdown.cancelled() => return,
            r = revision.changed() => {
                if r.is_err() { return }
                force = false;
            }
            _ = recheck.tick() => force = true,
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
