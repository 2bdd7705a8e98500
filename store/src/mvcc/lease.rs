//! The replicated half of leases: which leases exist, with the TTL they were granted, and
//! which keys each one holds. When a lease expires is decided elsewhere (`crate::lease`, on
//! the leader's clock); expiry reaches the state machine as a replicated revoke.
//!
//! The `lease` column family's layout is in [`super::keys`].
//!
//! Lease commands run in a batch of their own (the state machine commits around them), so
//! the checks here can read RocksDB directly and never miss a same-batch change.

use rocksdb::{DB, IteratorMode, ReadOptions};

use super::keys::{LEASE_ATTACHED, LEASE_RECORD, lease_attach_key, lease_prefixed, lease_record_key};
use super::write::{Staged, WriteTxn};
use super::{CF_LEASE, Mvcc};
use crate::error::{Result, StoreError};
use crate::proto::etcdserverpb::{LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse};

fn cf(db: &DB) -> Result<&rocksdb::ColumnFamily> {
    super::cf(db, CF_LEASE)
}

/// Every granted lease as `(id, granted TTL)`.
pub fn leases(db: &DB) -> Result<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(vec![LEASE_RECORD + 1]);
    for item in db.iterator_cf_opt(
        cf(db)?,
        opts,
        IteratorMode::From(&[LEASE_RECORD], rocksdb::Direction::Forward),
    ) {
        let (k, v) = item?;
        if k.len() != 9 || v.len() != 8 {
            return Err(StoreError::Storage("corrupt lease record".into()));
        }
        let id = u64::from_be_bytes(k[1..9].try_into().expect("8 bytes")) as i64;
        let ttl = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
        out.push((id, ttl));
    }
    Ok(out)
}

/// The smallest key above every key that starts with `prefix`, or `None` when there is
/// none (the prefix is all 0xFF bytes).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The keys attached to lease `id`, in key order.
pub fn attached_keys(db: &DB, id: i64) -> Result<Vec<Vec<u8>>> {
    let prefix = lease_prefixed(LEASE_ATTACHED, id);
    let mut opts = ReadOptions::default();
    // Any int64 is a lease id a client may choose, −1 (all 0xFF bytes) included, so the
    // bound is the prefix's successor, not `id + 1`.
    if let Some(end) = prefix_end(&prefix) {
        opts.set_iterate_upper_bound(end);
    }
    let mut out = Vec::new();
    for item in db.iterator_cf_opt(cf(db)?, opts, IteratorMode::From(&prefix, rocksdb::Direction::Forward)) {
        let (k, _) = item?;
        if !k.starts_with(&prefix) {
            break;
        }
        out.push(k[prefix.len()..].to_vec());
    }
    Ok(out)
}

impl Mvcc {
    /// Every granted lease as `(id, granted TTL)`, as of the last applied batch.
    pub fn leases(&self) -> Result<Vec<(i64, i64)>> {
        leases(&self.db())
    }

    /// The keys attached to lease `id`, as of the last applied batch.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        attached_keys(&self.db(), id)
    }
}

impl WriteTxn {
    /// Records a granted lease. The TTL was already bounded by the proposer, so every
    /// member stores the same value whatever its own election timeout.
    pub fn lease_grant(&mut self, req: &LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        self.expect_clean("lease grant")?;
        if self.lease_exists(req.id)? {
            return Err(StoreError::LeaseExist);
        }
        let (id, ttl) = (req.id, req.ttl);
        self.request(|t| t.write(Staged::Put(CF_LEASE, lease_record_key(id), ttl.to_be_bytes().to_vec())))?;
        Ok(LeaseGrantResponse {
            header: self.header(),
            id,
            ttl,
            error: String::new(),
        })
    }

    /// Revokes a lease: every attached key is deleted, all at one revision, and the lease is
    /// forgotten.
    pub fn lease_revoke(&mut self, req: &LeaseRevokeRequest) -> Result<LeaseRevokeResponse> {
        self.expect_clean("lease revoke")?;
        let id = req.id;
        if !self.lease_exists(id)? {
            return Err(StoreError::LeaseNotFound);
        }
        let keys = attached_keys(&self.db, id)?;
        self.request(|t| {
            for key in &keys {
                // An attachment always names a live key holding this lease; check anyway so a
                // damaged index can never delete a key that moved to another lease.
                match t.latest(key)? {
                    Some(kv) if kv.lease == id => t.delete_key(&kv.key, id)?,
                    _ => t.write(Staged::Delete(CF_LEASE, lease_attach_key(id, key)))?,
                }
            }
            t.write(Staged::Delete(CF_LEASE, lease_record_key(id)))
        })?;
        Ok(LeaseRevokeResponse { header: self.header() })
    }

    /// The keys attached to lease `id` as committed, for a check made before a request that
    /// applies alone (so nothing staged can be missed).
    pub fn committed_lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        self.expect_clean("lease key lookup")?;
        attached_keys(&self.db, id)
    }

    fn expect_clean(&self, what: &str) -> Result<()> {
        if self.is_dirty() {
            return Err(StoreError::Internal(format!("{what} inside a dirty batch")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bounds_every_lease_id() {
        assert_eq!(prefix_end(b"k\x00\x01"), Some(b"k\x00\x02".to_vec()));
        assert_eq!(prefix_end(b"k\x00\xff"), Some(b"k\x01".to_vec()));
        // Lease −1: the attachments of every other lease sort before its prefix's end.
        let minus_one = lease_prefixed(LEASE_ATTACHED, -1);
        assert_eq!(prefix_end(&minus_one), Some(vec![LEASE_ATTACHED + 1]));
        assert!(prefix_end(&minus_one).unwrap().as_slice() > lease_attach_key(-1, b"\xff\xff").as_slice());
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
