//! Applying committed commands: what each replicated [`pb::Command`] does to the MVCC
//! store, and the alarm gates in front of it.
//!
//! In front of every client command stands the auth gate ([`authorize`]): with auth enabled
//! it is checked against the auth state at its point in the log, so every member decides the
//! same. Auth changes themselves are commands too.
//!
//! This is the state machine's meaning, apart from its Raft plumbing (`raft::state_machine`
//! batches entries and calls [`apply_command`] for each). It also answers what a command
//! costs against the space quota, which the member checks before proposing, so the quota and
//! the NOSPACE gate agree on what "adds data" means.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::auth::tokens::SimpleTokens;
use crate::auth::{AuthState, requests};
use crate::error::StoreError;
use crate::mvcc::WriteTxn;
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::{AlarmMember, AlarmRequest, AlarmResponse, AlarmType, RequestOp, TxnRequest};
use crate::proto::lodestone::{self as pb, command::Kind, command_result::Kind as ResKind};

/// What a member published about itself (name and client URLs), keyed by member id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttributes {
    pub name: String,
    pub client_urls: Vec<String>,
}

/// The replicated state a command may change besides the MVCC data: published member
/// attributes, active alarms and the auth store (staged with the batch here; the caller
/// publishes them once the batch is written); and this member's simple tokens, which an
/// applied Authenticate teaches it.
pub struct Applying<'a> {
    pub members: &'a mut BTreeMap<u64, MemberAttributes>,
    pub alarms: &'a mut Vec<AlarmMember>,
    pub auth: &'a mut Arc<AuthState>,
    pub tokens: &'a SimpleTokens,
}

/// A command's failure as its result: how apply errors, and a forwarded batch's refusals,
/// travel (see [`outcome`]).
pub fn refused(e: StoreError) -> pb::CommandResult {
    pb::CommandResult {
        kind: Some(ResKind::Error(pb::ApplyError {
            code: e.code(),
            message: e.to_string(),
        })),
        log_index: 0,
    }
}

/// A command's result as its caller sees it: the error it carries, or the result itself.
pub fn outcome(r: pb::CommandResult) -> Result<pb::CommandResult, StoreError> {
    match r.kind {
        Some(ResKind::Error(e)) => Err(StoreError::from_code(e.code, &e.message)),
        _ => Ok(r),
    }
}

/// The result of an entry that carries no command (a blank or membership entry).
pub fn empty() -> pb::CommandResult {
    pb::CommandResult {
        kind: Some(ResKind::Empty(pb::Empty {})),
        log_index: 0,
    }
}

/// Why an active alarm refuses `cmd`, if it does: with CORRUPT nothing changes any more;
/// with NOSPACE, nothing that adds data.
pub fn alarm_gate(alarms: &[AlarmMember], cmd: &pb::Command) -> Option<StoreError> {
    let has = |t: AlarmType| alarms.iter().any(|a| a.alarm == t as i32);
    match &cmd.kind {
        Some(Kind::Put(_) | Kind::DeleteRange(_) | Kind::Txn(_) | Kind::Compaction(_) | Kind::LeaseGrant(_))
            if has(AlarmType::Corrupt) =>
        {
            Some(StoreError::Corrupt)
        }
        Some(Kind::Put(_) | Kind::LeaseGrant(_)) if has(AlarmType::Nospace) => Some(StoreError::NoSpace),
        Some(Kind::Txn(t)) if has(AlarmType::Nospace) && txn_has_put(t) => Some(StoreError::NoSpace),
        _ => None,
    }
}

/// Applies one command. Domain errors (a refused request, nothing changed) become the
/// command's result, so every member answers the same; storage errors abort the batch.
pub fn apply_command(
    txn: &mut WriteTxn,
    state: Applying<'_>,
    cmd: &pb::Command,
) -> Result<pb::CommandResult, StoreError> {
    match authorize(txn, state.auth, cmd) {
        Ok(()) => {}
        Err(e @ (StoreError::Storage(_) | StoreError::Internal(_))) => return Err(e),
        Err(e) => return Ok(refused(e)),
    }
    if let Some(e) = alarm_gate(state.alarms, cmd) {
        return Ok(refused(e));
    }
    let (auth, tokens) = (state.auth, state.tokens);
    let res = match &cmd.kind {
        Some(Kind::Put(p)) => txn.put(p).map(ResKind::Put),
        Some(Kind::DeleteRange(d)) => txn.delete_range(d).map(ResKind::DeleteRange),
        Some(Kind::Txn(t)) => txn.txn(t).map(ResKind::Txn),
        Some(Kind::Compaction(c)) => txn.compact(c.revision).map(ResKind::Compaction),
        Some(Kind::LeaseGrant(g)) => txn.lease_grant(g).map(ResKind::LeaseGrant),
        Some(Kind::LeaseRevoke(r)) => txn.lease_revoke(r).map(ResKind::LeaseRevoke),
        Some(Kind::Alarm(a)) => apply_alarm(txn, state.alarms, a).map(ResKind::Alarm),
        Some(Kind::MemberAttributes(m)) => {
            state.members.insert(
                m.id,
                MemberAttributes {
                    name: m.name.clone(),
                    client_urls: m.client_urls.clone(),
                },
            );
            Ok(ResKind::Empty(pb::Empty {}))
        }
        Some(Kind::AuthEnable(_)) => change_auth(txn, auth, |a| a.enable()),
        Some(Kind::AuthDisable(_)) => {
            tokens.clear();
            change_auth(txn, auth, |a| {
                a.disable();
                Ok(())
            })
        }
        Some(Kind::Authenticate(a)) => {
            if !auth.enabled() {
                Err(StoreError::AuthNotEnabled)
            } else if !auth.has_user(&a.name) {
                // Deleted between the password check and this entry.
                Err(StoreError::AuthFailed)
            } else {
                tokens.assign(&a.token, &a.name, Instant::now());
                Ok(ResKind::Empty(pb::Empty {}))
            }
        }
        Some(Kind::UserAdd(u)) => change_auth(txn, auth, |a| {
            let no_password = u.options.is_some_and(|o| o.no_password);
            a.user_add(&u.name, &u.hashed_password, no_password)
        }),
        Some(Kind::UserDelete(u)) => {
            let r = change_auth(txn, auth, |a| a.user_delete(&u.name));
            if r.is_ok() {
                tokens.invalidate_user(&u.name);
            }
            r
        }
        Some(Kind::UserChangePassword(u)) => {
            let r = change_auth(txn, auth, |a| a.user_change_password(&u.name, &u.hashed_password));
            if r.is_ok() {
                tokens.invalidate_user(&u.name);
            }
            r
        }
        Some(Kind::UserGrantRole(g)) => change_auth(txn, auth, |a| a.user_grant_role(&g.user, &g.role)),
        Some(Kind::UserRevokeRole(r)) => change_auth(txn, auth, |a| a.user_revoke_role(&r.name, &r.role)),
        Some(Kind::RoleAdd(r)) => change_auth(txn, auth, |a| a.role_add(&r.name)),
        Some(Kind::RoleDelete(r)) => change_auth(txn, auth, |a| a.role_delete(&r.role)),
        Some(Kind::RoleGrantPermission(g)) => change_auth(txn, auth, |a| match &g.perm {
            Some(p) => a.role_grant_permission(&g.name, p),
            None => Err(StoreError::InvalidAuthMgmt),
        }),
        Some(Kind::RoleRevokePermission(r)) => {
            change_auth(txn, auth, |a| a.role_revoke_permission(&r.role, &r.key, &r.range_end))
        }
        None => Ok(ResKind::Empty(pb::Empty {})),
    };
    match res {
        // The state machine stamps the entry's log index on the result it answers with.
        Ok(kind) => Ok(pb::CommandResult {
            kind: Some(kind),
            log_index: 0,
        }),
        Err(e @ (StoreError::Storage(_) | StoreError::Internal(_))) => Err(e),
        Err(e) => Ok(refused(e)),
    }
}

/// The auth gate: what the user a client command runs as must be allowed, with auth
/// enabled. Commands without a user are the member's own (lease expiry, alarms it raises, its
/// attributes) and pass. Lease-attached keys are read as committed: a command that needs them
/// applies alone ([`applies_alone`]).
pub fn authorize(txn: &WriteTxn, auth: &AuthState, cmd: &pb::Command) -> Result<(), StoreError> {
    let Some(who) = &cmd.auth else {
        return Ok(());
    };
    if !auth.enabled() {
        return Ok(());
    }
    let mut lease_keys = |id: i64| txn.committed_lease_keys(id);
    match &cmd.kind {
        Some(Kind::Put(p)) => requests::check_put(auth, who, p, &mut lease_keys),
        Some(Kind::DeleteRange(d)) => requests::check_delete(auth, who, d),
        Some(Kind::Txn(t)) => requests::check_txn(auth, who, t, &mut lease_keys),
        Some(Kind::Compaction(_) | Kind::LeaseGrant(_)) => auth.check_user(who),
        Some(Kind::LeaseRevoke(r)) => {
            // Revoking deletes every attached key: the user must be allowed to.
            auth.check_user(who)?;
            for k in lease_keys(r.id)? {
                auth.check_range(who, &k, &[], crate::auth::Access::Write)?;
            }
            Ok(())
        }
        // The password was checked where the request arrived.
        Some(Kind::Authenticate(_) | Kind::MemberAttributes(_)) | None => Ok(()),
        // Alarm changes and every auth change.
        Some(_) => auth.check_admin(who),
    }
}

/// Applies a change to the auth store: on success with an effect, the store moves to a new
/// revision and its record is staged with the batch.
fn change_auth(
    txn: &mut WriteTxn,
    auth: &mut Arc<AuthState>,
    f: impl FnOnce(&mut AuthState) -> Result<(), StoreError>,
) -> Result<ResKind, StoreError> {
    let mut next = (**auth).clone();
    f(&mut next)?;
    if next != **auth {
        txn.set_auth_record(&next.to_record());
        *auth = Arc::new(next);
    }
    Ok(ResKind::Empty(pb::Empty {}))
}

/// Activates or deactivates an alarm (replicated, so every member agrees on the set).
fn apply_alarm(
    txn: &mut WriteTxn,
    alarms: &mut Vec<AlarmMember>,
    a: &AlarmRequest,
) -> Result<AlarmResponse, StoreError> {
    let member = AlarmMember {
        member_id: a.member_id,
        alarm: a.alarm,
    };
    let mut resp = AlarmResponse::default();
    match AlarmAction::try_from(a.action).unwrap_or(AlarmAction::Get) {
        AlarmAction::Activate => {
            if a.alarm != AlarmType::None as i32 && !alarms.contains(&member) {
                alarms.push(member);
                txn.set_alarms(alarms)?;
                resp.alarms.push(member);
            }
        }
        AlarmAction::Deactivate => {
            if let Some(pos) = alarms.iter().position(|m| *m == member) {
                alarms.remove(pos);
                txn.set_alarms(alarms)?;
                resp.alarms.push(member);
            }
        }
        AlarmAction::Get => {
            resp.alarms = alarms
                .iter()
                .filter(|m| a.alarm == AlarmType::None as i32 || m.alarm == a.alarm)
                .cloned()
                .collect();
        }
    }
    Ok(resp)
}

/// Commands applied in a RocksDB write of their own: a compaction, so it deletes exactly
/// the same history on every member whatever the batch boundaries; lease grants and revokes,
/// so lease checks can read committed state; and, with auth enabled, a client's put with a
/// lease, whose auth check reads the keys attached to it.
pub fn applies_alone(cmd: &pb::Command, auth_enabled: bool) -> bool {
    match &cmd.kind {
        Some(Kind::Compaction(_) | Kind::LeaseGrant(_) | Kind::LeaseRevoke(_)) => true,
        Some(Kind::Put(p)) => auth_enabled && cmd.auth.is_some() && p.lease != 0,
        Some(Kind::Txn(t)) => auth_enabled && cmd.auth.is_some() && requests::txn_attaches_lease(t),
        _ => false,
    }
}

/// Most operations (txn compares and ops, nested txns included) a light command may hold.
const LIGHT_TXN_OPS: usize = 16;

/// What applying `cmd` costs when it is light, in point operations (a put or a single-key
/// delete is one; a txn counts its compares and ops, nested txns included): `None` unless it
/// only costs a few point lookups and writes, whatever the state holds (a put, a single-key
/// delete, or a txn of at most [`LIGHT_TXN_OPS`] of those, single-key reads and single-key
/// compares). The state machine applies a batch of such commands, up to a budget, on its own
/// task instead of handing it to a blocking thread (see `raft::state_machine`); anything
/// that may touch a range of keys, or applies alone, takes the blocking thread.
pub fn light_cost(cmd: &pb::Command, auth_enabled: bool) -> Option<usize> {
    fn txn_ops(t: &TxnRequest, budget: &mut usize) -> bool {
        let n = t.compare.len() + t.success.len() + t.failure.len();
        if n > *budget || t.compare.iter().any(|c| !c.range_end.is_empty()) {
            return false;
        }
        *budget -= n;
        t.success.iter().chain(t.failure.iter()).all(|op| match &op.request {
            Some(Request::RequestPut(_)) => true,
            Some(Request::RequestRange(r)) => r.range_end.is_empty(),
            Some(Request::RequestDeleteRange(d)) => d.range_end.is_empty(),
            Some(Request::RequestTxn(n)) => txn_ops(n, budget),
            None => true,
        })
    }
    if applies_alone(cmd, auth_enabled) {
        return None;
    }
    match &cmd.kind {
        Some(Kind::Put(_)) => Some(1),
        Some(Kind::DeleteRange(d)) if d.range_end.is_empty() => Some(1),
        Some(Kind::Txn(t)) => {
            let mut budget = LIGHT_TXN_OPS;
            // An empty txn still reads and writes its batch's bookkeeping.
            txn_ops(t, &mut budget).then(|| (LIGHT_TXN_OPS - budget).max(1))
        }
        _ => None,
    }
}

/// True when a txn (with everything nested, in either branch) may write a key: what etcd's
/// space quota counts.
pub fn txn_has_put(t: &TxnRequest) -> bool {
    t.success.iter().chain(t.failure.iter()).any(|op| match &op.request {
        Some(Request::RequestPut(_)) => true,
        Some(Request::RequestTxn(n)) => txn_has_put(n),
        _ => false,
    })
}

/// etcd's quota cost of a request: 256 + key + value per put (a txn costs its dearer
/// branch), 64 for a lease grant.
pub fn quota_cost(cmd: &pb::Command) -> i64 {
    fn branch(ops: &[RequestOp]) -> i64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Request::RequestPut(p)) => 256 + (p.key.len() + p.value.len()) as i64,
                Some(Request::RequestTxn(n)) => txn_cost(n),
                _ => 0,
            })
            .sum()
    }
    fn txn_cost(t: &TxnRequest) -> i64 {
        branch(&t.success).max(branch(&t.failure))
    }
    match &cmd.kind {
        Some(Kind::Put(p)) => 256 + (p.key.len() + p.value.len()) as i64,
        Some(Kind::Txn(t)) => txn_cost(t),
        Some(Kind::LeaseGrant(_)) => 64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::PutRequest;

    #[test]
    fn quota_cost_is_etcds() {
        use crate::proto::lodestone::Command;
        let put = |k: &str, v: &str| RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.as_bytes().to_vec().into(),
                value: v.as_bytes().to_vec().into(),
                ..Default::default()
            })),
        };
        let cmd = |kind| Command {
            kind: Some(kind),
            auth: None,
        };
        assert_eq!(
            quota_cost(&cmd(Kind::Put(PutRequest {
                key: "ab".into(),
                value: "xyz".into(),
                ..Default::default()
            }))),
            261
        );
        let t = TxnRequest {
            success: vec![put("a", "1"), put("b", "2")],
            failure: vec![put("c", "123456")],
            ..Default::default()
        };
        assert!(txn_has_put(&t));
        assert_eq!(quota_cost(&cmd(Kind::Txn(t))), 2 * 258);
        assert!(!txn_has_put(&TxnRequest::default()));
        assert_eq!(quota_cost(&cmd(Kind::LeaseGrant(Default::default()))), 64);
        assert_eq!(quota_cost(&cmd(Kind::DeleteRange(Default::default()))), 0);
    }

    #[test]
    fn alarm_gates_are_etcds() {
        let alarm = |t: AlarmType| AlarmMember {
            member_id: 1,
            alarm: t as i32,
        };
        let cmd = |kind| pb::Command {
            kind: Some(kind),
            auth: None,
        };
        let put = cmd(Kind::Put(PutRequest::default()));
        let delete = cmd(Kind::DeleteRange(Default::default()));
        let revoke = cmd(Kind::LeaseRevoke(Default::default()));
        let read_only_txn = cmd(Kind::Txn(TxnRequest::default()));
        assert_eq!(alarm_gate(&[], &put), None);
        let corrupt = [alarm(AlarmType::Corrupt)];
        assert_eq!(alarm_gate(&corrupt, &put), Some(StoreError::Corrupt));
        assert_eq!(alarm_gate(&corrupt, &delete), Some(StoreError::Corrupt));
        assert_eq!(alarm_gate(&corrupt, &revoke), None, "revokes free space");
        let nospace = [alarm(AlarmType::Nospace)];
        assert_eq!(alarm_gate(&nospace, &put), Some(StoreError::NoSpace));
        assert_eq!(alarm_gate(&nospace, &delete), None, "deletes free space");
        assert_eq!(alarm_gate(&nospace, &read_only_txn), None);
    }

    #[test]
    fn light_commands_touch_single_keys_only() {
        use crate::proto::etcdserverpb::{Compare, DeleteRangeRequest, RangeRequest};
        let cmd = |kind| pb::Command {
            kind: Some(kind),
            auth: None,
        };
        let op = |r| RequestOp { request: Some(r) };
        let get = |end: &str| {
            op(Request::RequestRange(RangeRequest {
                key: "a".into(),
                range_end: end.as_bytes().to_vec().into(),
                ..Default::default()
            }))
        };
        let del = |end: &str| DeleteRangeRequest {
            key: "a".into(),
            range_end: end.as_bytes().to_vec().into(),
            prev_kv: false,
        };
        let compare = |end: &str| Compare {
            key: "a".into(),
            range_end: end.as_bytes().to_vec().into(),
            ..Default::default()
        };
        let put = || op(Request::RequestPut(PutRequest::default()));
        let txn = |compare: Vec<Compare>, success: Vec<RequestOp>| TxnRequest {
            compare,
            success,
            failure: vec![get("")],
        };

        assert_eq!(light_cost(&cmd(Kind::Put(PutRequest::default())), false), Some(1));
        assert_eq!(light_cost(&cmd(Kind::DeleteRange(del(""))), false), Some(1));
        assert!(
            light_cost(&cmd(Kind::DeleteRange(del("b"))), false).is_none(),
            "a range delete"
        );
        let cas = txn(
            vec![compare("")],
            vec![put(), get(""), op(Request::RequestDeleteRange(del("")))],
        );
        assert_eq!(
            light_cost(&cmd(Kind::Txn(cas.clone())), false),
            Some(5),
            "1 compare, 3 ops, 1 failure op"
        );
        let nested = txn(vec![], vec![op(Request::RequestTxn(cas.clone()))]);
        assert_eq!(
            light_cost(&cmd(Kind::Txn(nested)), false),
            Some(7),
            "the nested txn's 5 and its own 2"
        );
        assert_eq!(
            light_cost(&cmd(Kind::Txn(TxnRequest::default())), false),
            Some(1),
            "an empty txn"
        );
        assert!(
            light_cost(&cmd(Kind::Txn(txn(vec![compare("b")], vec![]))), false).is_none(),
            "a range compare"
        );
        assert!(
            light_cost(&cmd(Kind::Txn(txn(vec![], vec![get("b")]))), false).is_none(),
            "a range read"
        );
        let deep = txn(vec![], vec![op(Request::RequestTxn(txn(vec![], vec![get("\0")])))]);
        assert!(
            light_cost(&cmd(Kind::Txn(deep)), false).is_none(),
            "a range read, nested"
        );
        let many = txn(vec![], (0..LIGHT_TXN_OPS).map(|_| put()).collect());
        assert!(
            light_cost(&cmd(Kind::Txn(many)), false).is_none(),
            "more ops than the budget"
        );
        // Commands that apply alone, and everything else, are never light.
        assert!(light_cost(&cmd(Kind::LeaseGrant(Default::default())), false).is_none());
        assert!(light_cost(&cmd(Kind::Compaction(Default::default())), false).is_none());
        assert!(light_cost(&cmd(Kind::AuthEnable(Default::default())), false).is_none());
        let leased = pb::Command {
            kind: Some(Kind::Put(PutRequest {
                lease: 7,
                ..Default::default()
            })),
            auth: Some(Default::default()),
        };
        assert_eq!(light_cost(&leased, false), Some(1));
        assert!(
            light_cost(&leased, true).is_none(),
            "a leased put with auth enabled applies alone"
        );
    }
}
