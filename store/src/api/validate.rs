//! Request checks made before anything is proposed, with etcd's rules and errors: empty
//! keys, `ignore_*` misuse, the txn operation budget, and keys a txn would write twice.

use crate::error::{Result, StoreError};
use crate::mvcc::KeyRange;
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};

pub fn check_range(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(StoreError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(StoreError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    Ok(())
}

/// All of a Txn's checks: shape and budget first, then duplicate writes per branch.
pub fn check_txn(r: &TxnRequest, max_ops: usize) -> Result<()> {
    check_txn_shape(r, max_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

/// The op budget counts `max(compares, success, failure)` per level; nested txns get what
/// is left.
fn check_txn_shape(r: &TxnRequest, max_ops: usize) -> Result<()> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_ops {
        return Err(StoreError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(StoreError::EmptyKey);
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        check_op(op, max_ops - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, budget: usize) -> Result<()> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(p)) => check_put(p),
        Some(Request::RequestDeleteRange(d)) => check_delete(d),
        Some(Request::RequestTxn(t)) => check_txn_shape(t, budget),
        None => Err(StoreError::KeyNotFound),
    }
}

/// Keys put by one branch (including nested txns) and the ranges it deletes. A key may not
/// be put twice or put inside a deleted range; a nested txn's success and failure branches
/// exclude each other, so the same key in both is fine.
fn check_intervals(ops: &[RequestOp]) -> Result<(Vec<Vec<u8>>, Vec<KeyRange>)> {
    let mut dels: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(KeyRange::new(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();
    let hits = |dels: &[KeyRange], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts: Vec<Vec<u8>> = Vec::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || hits(&dels, k) {
                return Err(StoreError::DuplicateKey);
            }
            puts.push(k.clone());
        }
        for k in &puts_else {
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(StoreError::DuplicateKey);
            }
            if hits(&dels, k) {
                return Err(StoreError::DuplicateKey);
            }
            if !puts.contains(k) {
                puts.push(k.clone());
            }
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.iter().any(|k| k.as_slice() == p.key.as_ref()) || hits(&dels, &p.key) {
            return Err(StoreError::DuplicateKey);
        }
        puts.push(p.key.to_vec());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::Compare;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.to_string().into(),
                ..Default::default()
            })),
        }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.to_string().into(),
                range_end: end.to_string().into(),
                ..Default::default()
            })),
        }
    }
    fn get(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: k.to_string().into(),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }
    fn nested(t: TxnRequest) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(t)),
        }
    }

    #[test]
    fn put_checks() {
        assert_eq!(check_put(&PutRequest::default()), Err(StoreError::EmptyKey));
        let p = PutRequest {
            key: "k".into(),
            value: "v".into(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Err(StoreError::ValueProvided));
        let p = PutRequest {
            key: "k".into(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Err(StoreError::LeaseProvided));
        let p = PutRequest {
            key: "k".into(),
            ignore_value: true,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Ok(()));
    }

    #[test]
    fn op_budget_is_the_widest_list_not_the_sum() {
        let ops: Vec<RequestOp> = (0..128).map(|i| get(&format!("k{i}"))).collect();
        let t = TxnRequest {
            compare: vec![],
            success: ops.clone(),
            failure: ops.clone(),
        };
        assert_eq!(check_txn(&t, 128), Ok(()));
        let mut more = ops.clone();
        more.push(get("x"));
        assert_eq!(check_txn(&txn(more, vec![]), 128), Err(StoreError::TooManyOps));
        // Nested txns get the remaining budget: 100 at the top leaves 28 below.
        let inner = txn((0..29).map(|i| get(&format!("n{i}"))).collect(), vec![]);
        let mut top: Vec<RequestOp> = (0..99).map(|i| get(&format!("t{i}"))).collect();
        top.push(nested(inner));
        assert_eq!(check_txn(&txn(top, vec![]), 128), Err(StoreError::TooManyOps));
    }

    #[test]
    fn empty_keys_and_empty_ops() {
        let t = TxnRequest {
            compare: vec![Compare::default()],
            success: vec![],
            failure: vec![],
        };
        assert_eq!(check_txn(&t, 128), Err(StoreError::EmptyKey));
        assert_eq!(check_txn(&txn(vec![put("")], vec![]), 128), Err(StoreError::EmptyKey));
        assert_eq!(
            check_txn(&txn(vec![RequestOp { request: None }], vec![]), 128),
            Err(StoreError::KeyNotFound)
        );
    }

    #[test]
    fn duplicate_keys() {
        assert_eq!(
            check_txn(&txn(vec![put("a"), put("a")], vec![]), 128),
            Err(StoreError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![put("a")], vec![put("a")]), 128),
            Ok(()),
            "branches are separate"
        );
        assert_eq!(
            check_txn(&txn(vec![del("a", "c"), put("b")], vec![]), 128),
            Err(StoreError::DuplicateKey)
        );
        assert_eq!(check_txn(&txn(vec![del("a", "c"), put("c")], vec![]), 128), Ok(()));
        assert_eq!(
            check_txn(&txn(vec![del("a", ""), put("a")], vec![]), 128),
            Err(StoreError::DuplicateKey)
        );
        // Across nesting levels.
        let t = txn(vec![put("a"), nested(txn(vec![put("a")], vec![]))], vec![]);
        assert_eq!(check_txn(&t, 128), Err(StoreError::DuplicateKey));
        let t = txn(vec![del("a", "z"), nested(txn(vec![put("m")], vec![]))], vec![]);
        assert_eq!(check_txn(&t, 128), Err(StoreError::DuplicateKey));
        // Then and else of one nested txn exclude each other.
        let t = txn(vec![nested(txn(vec![put("a")], vec![put("a")]))], vec![]);
        assert_eq!(check_txn(&t, 128), Ok(()));
        // Reads never conflict.
        assert_eq!(check_txn(&txn(vec![put("a"), get("a")], vec![]), 128), Ok(()));
    }
}
