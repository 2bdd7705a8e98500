//! Paced syncs for large files a member writes while it serves writes: the snapshot it
//! builds and the snapshot it receives from its leader. Shared by the consensus layer and
//! the peer service, which may not name each other.

/// Paces the syncs of a large file written while the member serves writes (a snapshot
/// built, or one received from the leader): the file goes to the disk every
/// [`SYNC_EVERY`] bytes instead of all at the end. One final fsync of a whole snapshot
/// (hundreds of megabytes) queues every one of this member's Raft log fsyncs behind it, and
/// each of those holds up writes: on a loaded 3-member cluster whose members built their
/// snapshots at the same moment, requests waited over half a second. Synced piece by piece,
/// the disk never holds more than a piece of it ahead of a log fsync. RocksDB's
/// `bytes_per_sync` does the same for its own files.
///
/// The pacer only counts; its caller syncs (blocking or async) when told to.
#[derive(Debug, Default)]
pub struct SyncPacer {
    unsynced: usize,
}

/// See [`SyncPacer`].
pub const SYNC_EVERY: usize = 4 << 20;

impl SyncPacer {
    /// Counts `n` bytes written; `true` when the file is due a sync (the count starts over).
    pub fn wrote(&mut self, n: usize) -> bool {
        self.unsynced += n;
        if self.unsynced >= SYNC_EVERY {
            self.unsynced = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_asks_for_a_sync_every_few_megabytes() {
        let mut p = SyncPacer::default();
        let chunk = 64 << 10;
        let due: Vec<usize> = (1..=3 * SYNC_EVERY / chunk).filter(|_| p.wrote(chunk)).collect();
        let per_sync = SYNC_EVERY / chunk;
        assert_eq!(due, vec![per_sync, 2 * per_sync, 3 * per_sync]);
        // One write larger than the interval is due at once, and the count starts over.
        assert!(p.wrote(SYNC_EVERY + 1));
        assert!(!p.wrote(1));
    }
}
