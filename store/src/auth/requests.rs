//! The permissions a KV request needs, everything counted: a Put writes its key, reads it
//! with `prev_kv`, and with a lease must be allowed to write every key already attached to
//! that lease (revoking the lease deletes them all); a DeleteRange writes its range and reads
//! it with `prev_kv`; a Range reads its range; a Txn needs read access for each compare and
//! what each op of **both** branches needs, nested txns included, whichever branch runs
//! (etcd's GHSA-rfx7-8w68-q57q and GHSA-x35m-3gp4-4fh5 were holes in exactly these).

use super::perms::Access;
use super::store::{AuthInfo, AuthState};
use crate::error::Result;
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};

/// Looks up the keys attached to a lease (for a Put or a Txn put carrying one).
pub type LeaseKeys<'a> = dyn FnMut(i64) -> Result<Vec<Vec<u8>>> + 'a;

pub fn check_range(auth: &AuthState, who: &AuthInfo, r: &RangeRequest) -> Result<()> {
    auth.check_range(who, &r.key, &r.range_end, Access::Read)
}

pub fn check_put(auth: &AuthState, who: &AuthInfo, p: &PutRequest, lease_keys: &mut LeaseKeys<'_>) -> Result<()> {
    auth.check_range(who, &p.key, &[], Access::Write)?;
    if p.prev_kv {
        auth.check_range(who, &p.key, &[], Access::Read)?;
    }
    if p.lease != 0 {
        for k in lease_keys(p.lease)? {
            auth.check_range(who, &k, &[], Access::Write)?;
        }
    }
    Ok(())
}

pub fn check_delete(auth: &AuthState, who: &AuthInfo, d: &DeleteRangeRequest) -> Result<()> {
    auth.check_range(who, &d.key, &d.range_end, Access::Write)?;
    if d.prev_kv {
        auth.check_range(who, &d.key, &d.range_end, Access::Read)?;
    }
    Ok(())
}

pub fn check_txn(auth: &AuthState, who: &AuthInfo, t: &TxnRequest, lease_keys: &mut LeaseKeys<'_>) -> Result<()> {
    for c in &t.compare {
        auth.check_range(who, &c.key, &c.range_end, Access::Read)?;
    }
    for op in t.success.iter().chain(t.failure.iter()) {
        match &op.request {
            Some(Op::RequestRange(r)) => check_range(auth, who, r)?,
            Some(Op::RequestPut(p)) => check_put(auth, who, p, lease_keys)?,
            Some(Op::RequestDeleteRange(d)) => check_delete(auth, who, d)?,
            Some(Op::RequestTxn(n)) => check_txn(auth, who, n, lease_keys)?,
            None => {}
        }
    }
    Ok(())
}

/// True when a txn (anywhere in it) puts a key with a lease.
pub fn txn_attaches_lease(t: &TxnRequest) -> bool {
    t.success.iter().chain(t.failure.iter()).any(|op| match &op.request {
        Some(Op::RequestPut(p)) => p.lease != 0,
        Some(Op::RequestTxn(n)) => txn_attaches_lease(n),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::error::StoreError;
    use crate::proto::authpb::Permission;
    use crate::proto::authpb::permission::Type as PermType;
    use crate::proto::etcdserverpb::{Compare, RequestOp};

    /// A user "u" who may read and write `a..m` only.
    fn state() -> (AuthState, AuthInfo) {
        let mut s = AuthState::default();
        s.user_add("root", "h", false).unwrap();
        s.user_grant_role("root", "root").unwrap();
        s.user_add("u", "h", false).unwrap();
        s.role_add("r").unwrap();
        s.role_grant_permission(
            "r",
            &Permission {
                perm_type: PermType::Readwrite as i32,
                key: Bytes::from_static(b"a"),
                range_end: Bytes::from_static(b"m"),
            },
        )
        .unwrap();
        s.user_grant_role("u", "r").unwrap();
        s.enable().unwrap();
        let who = AuthInfo {
            username: "u".into(),
            revision: s.revision(),
        };
        (s, who)
    }

    fn put(key: &'static [u8]) -> PutRequest {
        PutRequest {
            key: Bytes::from_static(key),
            ..Default::default()
        }
    }

    fn op(r: Op) -> RequestOp {
        RequestOp { request: Some(r) }
    }

    fn no_leases(_: i64) -> Result<Vec<Vec<u8>>> {
        Ok(Vec::new())
    }

    #[test]
    fn nested_txns_and_untaken_branches_are_checked() {
        let (s, who) = state();
        let ok = TxnRequest {
            success: vec![op(Op::RequestPut(put(b"b")))],
            ..Default::default()
        };
        assert_eq!(check_txn(&s, &who, &ok, &mut no_leases), Ok(()));
        let nested = TxnRequest {
            success: vec![op(Op::RequestTxn(TxnRequest {
                failure: vec![op(Op::RequestPut(put(b"z")))],
                ..Default::default()
            }))],
            ..Default::default()
        };
        assert_eq!(
            check_txn(&s, &who, &nested, &mut no_leases),
            Err(StoreError::PermissionDenied)
        );
        let compare = TxnRequest {
            compare: vec![Compare {
                key: Bytes::from_static(b"z"),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            check_txn(&s, &who, &compare, &mut no_leases),
            Err(StoreError::PermissionDenied)
        );
    }

    #[test]
    fn prev_kv_and_leases_need_their_own_permissions() {
        let (mut s, _) = state();
        // Write-only on "w": a put is fine, a put asking for the previous value is not.
        s.role_grant_permission(
            "r",
            &Permission {
                perm_type: PermType::Write as i32,
                key: Bytes::from_static(b"w"),
                range_end: Bytes::new(),
            },
        )
        .unwrap();
        let who = AuthInfo {
            username: "u".into(),
            revision: s.revision(),
        };
        assert_eq!(check_put(&s, &who, &put(b"w"), &mut no_leases), Ok(()));
        let mut prev = put(b"w");
        prev.prev_kv = true;
        assert_eq!(
            check_put(&s, &who, &prev, &mut no_leases),
            Err(StoreError::PermissionDenied)
        );
        let del = DeleteRangeRequest {
            key: Bytes::from_static(b"w"),
            prev_kv: true,
            ..Default::default()
        };
        assert_eq!(check_delete(&s, &who, &del), Err(StoreError::PermissionDenied));
        // A lease already holding someone else's key cannot be joined.
        let mut leased = put(b"b");
        leased.lease = 7;
        let mut others = |_: i64| Ok(vec![b"secret".to_vec()]);
        assert_eq!(
            check_put(&s, &who, &leased, &mut others),
            Err(StoreError::PermissionDenied)
        );
        let mut mine = |_: i64| Ok(vec![b"c".to_vec()]);
        assert_eq!(check_put(&s, &who, &leased, &mut mine), Ok(()));
        let t = TxnRequest {
            failure: vec![op(Op::RequestPut(leased))],
            ..Default::default()
        };
        assert!(txn_attaches_lease(&t));
        assert_eq!(check_txn(&s, &who, &t, &mut others), Err(StoreError::PermissionDenied));
    }
}
