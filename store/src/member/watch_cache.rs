//! The recent changes every watch stream on this member shares.
//!
//! Without it, each stream reads every newly applied revision from storage itself, so N
//! caught-up streams cost N storage reads per applied batch. Instead one task follows the
//! state machine: after each applied batch it reads the new revisions once (with the
//! versions they replaced while any watcher asks for `prev_kv`) and keeps the most recent
//! changes, whole revisions only, bounded in count and bytes. Streams that are caught up
//! take their events from here; a stream further behind than the window, or one that needs
//! previous versions the window lacks, reads storage as before, so memory stays bounded
//! whatever the watchers do.
//!
//! The cache publishes the revision it has caught up to; streams wait on that rather than
//! on the state machine, so a stream woken by a new revision finds it already here.
//!
//! While no watcher is registered on this member the cache reads nothing and holds nothing:
//! it only publishes each new revision. A write-only load then pays no history read per
//! applied batch, and an idle member keeps no copy of recent values. A watcher that arrives
//! then reads the revisions up to its arrival from storage, as any watcher behind the window
//! does; the cache holds every batch applied after it registered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::Member;
use crate::mvcc::history::Change;

/// Changes kept at most.
const MAX_CHANGES: usize = 10_000;
/// Bytes of keys and values (previous versions included) kept at most.
const MAX_BYTES: usize = 64 << 20;

/// Every change of revisions `after + 1 ..= upto`, in revision order.
struct Window {
    after: i64,
    upto: i64,
    /// Whether each change carries the version it replaced (when that is still in history).
    with_prev: bool,
    changes: VecDeque<Change>,
    bytes: usize,
}

fn size(c: &Change) -> usize {
    let prev = c.prev.as_ref().map_or(0, |p| p.key.len() + p.value.len());
    c.kv.key.len() + c.kv.value.len() + prev + 64
}

impl Window {
    fn empty_at(rev: i64, with_prev: bool) -> Window {
        Window {
            after: rev,
            upto: rev,
            with_prev,
            changes: VecDeque::new(),
            bytes: 0,
        }
    }

    fn append(&mut self, upto: i64, changes: Vec<Change>) {
        for c in changes {
            self.bytes += size(&c);
            self.changes.push_back(c);
        }
        self.upto = upto;
        // Drop the oldest revisions, whole, until the window fits.
        while self.changes.len() > MAX_CHANGES || self.bytes > MAX_BYTES {
            let Some(oldest) = self.changes.front().map(|c| c.rev.main) else {
                break;
            };
            while self.changes.front().is_some_and(|c| c.rev.main == oldest) {
                let c = self.changes.pop_front().expect("front exists");
                self.bytes -= size(&c);
            }
            self.after = oldest;
        }
        if self.changes.is_empty() {
            self.after = self.upto;
        }
    }

    /// The changes of revisions `from..=to`, if the window holds all of them.
    fn get(&self, from: i64, to: i64, with_prev: bool) -> Option<Vec<Change>> {
        if from <= self.after || to > self.upto || (with_prev && !self.with_prev) {
            return None;
        }
        let start = self.changes.partition_point(|c| c.rev.main < from);
        Some(
            self.changes
                .range(start..)
                .take_while(|c| c.rev.main <= to)
                .cloned()
                .collect(),
        )
    }
}

pub struct WatchCache {
    window: RwLock<Window>,
    /// Watchers registered on this member.
    watchers: AtomicUsize,
    /// Of those, the ones that asked for `prev_kv`.
    prev_watchers: AtomicUsize,
    revision_tx: watch::Sender<i64>,
}

/// Held by each watcher on this member: while any is held the cache follows the state
/// machine, and while one that wants `prev_kv` is held it reads previous versions too.
pub struct Interest {
    cache: Arc<WatchCache>,
    prev: bool,
}

impl Drop for Interest {
    fn drop(&mut self) {
        if self.prev {
            self.cache.prev_watchers.fetch_sub(1, Ordering::Relaxed);
        }
        self.cache.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WatchCache {
    /// An empty cache that starts following at `revision`.
    pub fn new(revision: i64) -> Arc<WatchCache> {
        Arc::new(WatchCache {
            window: RwLock::new(Window::empty_at(revision, false)),
            watchers: AtomicUsize::new(0),
            prev_watchers: AtomicUsize::new(0),
            revision_tx: watch::channel(revision).0,
        })
    }

    /// The revision the cache has caught up to (events up to it can be served).
    pub fn revision(&self) -> watch::Receiver<i64> {
        self.revision_tx.subscribe()
    }

    /// Registers a watcher (one that wants `prev_kv` when `prev`) until the guard drops.
    pub fn register(self: &Arc<Self>, prev: bool) -> Interest {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        if prev {
            self.prev_watchers.fetch_add(1, Ordering::Relaxed);
        }
        Interest {
            cache: self.clone(),
            prev,
        }
    }

    /// The changes of revisions `from..=to` (with previous versions when `with_prev`), if the
    /// cache holds all of them.
    pub fn get(&self, from: i64, to: i64, with_prev: bool) -> Option<Vec<Change>> {
        self.window.read().expect("watch cache lock").get(from, to, with_prev)
    }

    /// Readies the window for revision `current`; the revisions to read into it then (from
    /// which one, with previous versions or not), if any.
    fn to_read(&self, current: i64) -> Option<(i64, bool)> {
        let with_prev = self.prev_watchers.load(Ordering::Relaxed) > 0;
        let mut w = self.window.write().expect("watch cache lock");
        if self.watchers.load(Ordering::Relaxed) == 0 || current - w.upto > MAX_CHANGES as i64 {
            *w = Window::empty_at(current, with_prev);
        } else if with_prev != w.with_prev {
            // What it holds lacks (or carries needless) previous versions: keep following
            // from here, the other way.
            let upto = w.upto;
            *w = Window::empty_at(upto, with_prev);
        }
        (w.upto < current).then_some((w.upto + 1, with_prev))
    }

    /// Reads the revisions applied since the last round into the window and publishes the
    /// new revision. A jump larger than the window (a snapshot was installed), a storage
    /// error or a member without watchers starts the window afresh at `current`: streams
    /// then read storage until it fills again.
    async fn catch_up(&self, member: &Member, current: i64) {
        if let Some((from, with_prev)) = self.to_read(current) {
            let sm = member.sm.clone();
            let read = tokio::task::spawn_blocking(move || sm.mvcc.history(from, current, with_prev)).await;
            let mut w = self.window.write().expect("watch cache lock");
            match read {
                // A compaction past `from` (the cache fell behind it) leaves gaps: start anew.
                Ok(Ok(h)) if h.revision >= current && from >= h.compacted && w.upto + 1 == from => {
                    w.append(current, h.changes)
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "watch cache: reading new revisions");
                    *w = Window::empty_at(current, with_prev);
                }
                _ => *w = Window::empty_at(current, with_prev),
            }
        }
        self.revision_tx.send_replace(current);
    }
}

/// Follows the state machine until shutdown, keeping the cache current.
pub async fn run(member: Arc<Member>) {
    let cache = member.watch_cache.clone();
    let mut revision = member.sm.revision();
    loop {
        let current = *revision.borrow_and_update();
        cache.catch_up(&member, current).await;
        tokio::select! {
            _ = member.shutdown.cancelled() => return,
            r = revision.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::Revision;
    use crate::proto::mvccpb::KeyValue;

    fn change(main: i64, sub: i64, value_len: usize) -> Change {
        Change {
            rev: Revision::new(main, sub),
            deleted: false,
            kv: KeyValue {
                key: format!("k{main}.{sub}").into_bytes().into(),
                value: vec![b'v'; value_len].into(),
                mod_revision: main,
                ..Default::default()
            },
            prev: None,
        }
    }

    fn revs(changes: &[Change]) -> Vec<(i64, i64)> {
        changes.iter().map(|c| (c.rev.main, c.rev.sub)).collect()
    }

    #[test]
    fn serves_only_what_it_holds_whole() {
        let mut w = Window::empty_at(10, false);
        w.append(13, vec![change(11, 0, 1), change(11, 1, 1), change(13, 0, 1)]);
        assert_eq!(revs(&w.get(11, 13, false).unwrap()), [(11, 0), (11, 1), (13, 0)]);
        assert_eq!(revs(&w.get(12, 13, false).unwrap()), [(13, 0)]);
        assert_eq!(w.get(12, 12, false).unwrap().len(), 0, "a revision without changes");
        assert!(w.get(10, 13, false).is_none(), "revision 10 is before the window");
        assert!(w.get(11, 14, false).is_none(), "revision 14 is not read yet");
        assert!(w.get(11, 13, true).is_none(), "no previous versions were read");
    }

    #[test]
    fn follows_only_while_watchers_are_registered() {
        let cache = WatchCache::new(5);
        assert_eq!(cache.to_read(8), None, "no watcher: nothing is read");
        assert!(cache.get(6, 8, false).is_none(), "and nothing is held");
        let plain = cache.register(false);
        assert_eq!(cache.to_read(8), None, "already at revision 8");
        assert_eq!(cache.to_read(10), Some((9, false)));
        cache
            .window
            .write()
            .unwrap()
            .append(10, vec![change(9, 0, 1), change(10, 0, 1)]);
        let with_prev = cache.register(true);
        assert_eq!(
            cache.to_read(11),
            Some((11, true)),
            "previous versions are now read too"
        );
        drop(with_prev);
        assert_eq!(cache.to_read(11), Some((11, false)));
        drop(plain);
        assert_eq!(cache.to_read(12), None, "the last watcher left");
        assert_eq!(
            cache.window.read().unwrap().changes.len(),
            0,
            "what was held is dropped"
        );
        assert_eq!(
            (
                cache.watchers.load(Ordering::Relaxed),
                cache.prev_watchers.load(Ordering::Relaxed)
            ),
            (0, 0)
        );
    }

    #[test]
    fn trims_whole_revisions_oldest_first() {
        let mut w = Window::empty_at(0, false);
        let mut batch: Vec<Change> = (1..=MAX_CHANGES as i64).map(|r| change(r, 0, 1)).collect();
        // Revision MAX+1 has two changes: the window must drop revision 1 and 2 whole.
        batch.push(change(MAX_CHANGES as i64 + 1, 0, 1));
        batch.push(change(MAX_CHANGES as i64 + 1, 1, 1));
        w.append(MAX_CHANGES as i64 + 1, batch);
        assert!(w.changes.len() <= MAX_CHANGES);
        assert_eq!(w.after, 2);
        assert!(w.get(2, 5, false).is_none());
        assert_eq!(revs(&w.get(3, 3, false).unwrap()), [(3, 0)]);

        let mut big = Window::empty_at(0, false);
        big.append(3, vec![change(1, 0, MAX_BYTES), change(2, 0, 10), change(3, 0, 10)]);
        assert_eq!(big.after, 1, "the oversized revision goes, the rest stays");
        assert_eq!(revs(&big.get(2, 3, false).unwrap()), [(2, 0), (3, 0)]);
        big.append(4, vec![change(4, 0, MAX_BYTES * 2)]);
        assert!(big.changes.is_empty());
        assert_eq!(
            (big.after, big.upto),
            (4, 4),
            "nothing fits: empty at the newest revision"
        );
    }
}
