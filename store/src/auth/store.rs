//! The auth store: users (bcrypt password hashes, granted roles), roles (key permissions),
//! whether auth is enabled, and the auth revision, with etcd's rules for changing them and
//! for deciding what a user may do.
//!
//! The state machine owns it: every change arrives as a replicated command and is applied in
//! log order on every member (`apply`), and the whole store is persisted as one record with
//! the batch. Checks read an immutable [`AuthState`] (shared behind an `Arc` and replaced on
//! change), so the hot path takes no lock beyond cloning that `Arc`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use super::perms::{Access, RangeSet, is_valid_range};
use crate::error::{Result, StoreError};
use crate::proto::authpb::{self, Permission, permission::Type as PermType};
use crate::proto::lodestone as pb;

/// The special user and role: a user holding the `root` role may do anything.
pub const ROOT: &str = "root";

/// Who a request runs as: the user and the auth revision its credentials were checked at.
/// Revision 0 means no credentials (the request carries no user).
pub type AuthInfo = pb::AuthInfo;

/// One user's permissions, merged (see `perms`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct UserPerms {
    root: bool,
    read: RangeSet,
    write: RangeSet,
}

/// Users, roles, whether auth is enabled, and the auth revision (1 on a new store, bumped by
/// every change).
#[derive(Debug, Clone, PartialEq)]
pub struct AuthState {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, authpb::User>,
    roles: BTreeMap<String, Vec<Permission>>,
    /// Derived from users and roles after every change.
    perms: HashMap<String, Arc<UserPerms>>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            perms: HashMap::new(),
        }
    }
}

fn name(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl AuthState {
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The record the state machine stores.
    pub fn to_record(&self) -> pb::AuthStore {
        pb::AuthStore {
            enabled: self.enabled,
            revision: self.revision,
            users: self.users.values().cloned().collect(),
            roles: self
                .roles
                .iter()
                .map(|(n, perms)| authpb::Role {
                    name: Bytes::from(n.clone().into_bytes()),
                    key_permission: perms.clone(),
                })
                .collect(),
        }
    }

    /// The store from its record (`None`: a store that never had auth changes).
    pub fn from_record(r: Option<pb::AuthStore>) -> AuthState {
        let Some(r) = r else {
            return AuthState::default();
        };
        let mut s = AuthState {
            enabled: r.enabled,
            revision: r.revision.max(1),
            users: r.users.into_iter().map(|u| (name(&u.name), u)).collect(),
            roles: r.roles.into_iter().map(|r| (name(&r.name), r.key_permission)).collect(),
            perms: HashMap::new(),
        };
        s.derive();
        s
    }

    /// Recomputes every user's merged permissions.
    fn derive(&mut self) {
        let mut perms = HashMap::with_capacity(self.users.len());
        for (n, u) in &self.users {
            let granted: Vec<&Permission> = u.roles.iter().filter_map(|r| self.roles.get(r)).flatten().collect();
            let of = |t: PermType| {
                RangeSet::new(
                    granted
                        .iter()
                        .filter(|p| p.perm_type == PermType::Readwrite as i32 || p.perm_type == t as i32)
                        .map(|p| (p.key.as_ref(), p.range_end.as_ref())),
                )
            };
            perms.insert(
                n.clone(),
                Arc::new(UserPerms {
                    root: u.roles.iter().any(|r| r == ROOT),
                    read: of(PermType::Read),
                    write: of(PermType::Write),
                }),
            );
        }
        self.perms = perms;
    }

    /// Records a change: a new revision and fresh derived permissions.
    fn changed(&mut self) {
        self.revision += 1;
        self.derive();
    }

    // ---- changes (applied from the log) ----

    /// AuthEnable: needs a `root` user holding the `root` role. Enabling twice is a no-op.
    pub fn enable(&mut self) -> Result<()> {
        if self.enabled {
            return Ok(());
        }
        let root = self.users.get(ROOT).ok_or(StoreError::RootUserNotExist)?;
        if !root.roles.iter().any(|r| r == ROOT) {
            return Err(StoreError::RootRoleNotExist);
        }
        self.enabled = true;
        self.changed();
        Ok(())
    }

    /// AuthDisable; disabling twice is a no-op.
    pub fn disable(&mut self) {
        if self.enabled {
            self.enabled = false;
            self.changed();
        }
    }

    /// UserAdd with an already hashed password (empty with `no_password`).
    pub fn user_add(&mut self, user: &str, hashed: &str, no_password: bool) -> Result<()> {
        if user.is_empty() {
            return Err(StoreError::UserEmpty);
        }
        if self.users.contains_key(user) {
            return Err(StoreError::UserAlreadyExist);
        }
        let u = authpb::User {
            name: Bytes::from(user.to_string().into_bytes()),
            password: if no_password {
                Bytes::new()
            } else {
                Bytes::from(hashed.to_string().into_bytes())
            },
            roles: Vec::new(),
            options: Some(authpb::UserAddOptions { no_password }),
        };
        self.users.insert(user.to_string(), u);
        self.changed();
        Ok(())
    }

    /// UserDelete: `root` cannot go while auth is enabled.
    pub fn user_delete(&mut self, user: &str) -> Result<()> {
        if self.enabled && user == ROOT {
            return Err(StoreError::InvalidAuthMgmt);
        }
        self.users.remove(user).ok_or(StoreError::UserNotFound)?;
        self.changed();
        Ok(())
    }

    pub fn user_change_password(&mut self, user: &str, hashed: &str) -> Result<()> {
        let u = self.users.get_mut(user).ok_or(StoreError::UserNotFound)?;
        u.password = Bytes::from(hashed.to_string().into_bytes());
        u.options = Some(authpb::UserAddOptions { no_password: false });
        self.changed();
        Ok(())
    }

    /// UserGrantRole: the role must exist, except `root`. Granting a held role is a no-op.
    pub fn user_grant_role(&mut self, user: &str, role: &str) -> Result<()> {
        if !self.users.contains_key(user) {
            return Err(StoreError::UserNotFound);
        }
        if role != ROOT && !self.roles.contains_key(role) {
            return Err(StoreError::RoleNotFound);
        }
        let u = self.users.get_mut(user).expect("checked above");
        match u.roles.binary_search_by(|r| r.as_str().cmp(role)) {
            Ok(_) => return Ok(()),
            Err(at) => u.roles.insert(at, role.to_string()),
        }
        self.changed();
        Ok(())
    }

    /// UserRevokeRole: `root` keeps `root` while auth is enabled.
    pub fn user_revoke_role(&mut self, user: &str, role: &str) -> Result<()> {
        if self.enabled && user == ROOT && role == ROOT {
            return Err(StoreError::InvalidAuthMgmt);
        }
        let u = self.users.get_mut(user).ok_or(StoreError::UserNotFound)?;
        let at = u
            .roles
            .iter()
            .position(|r| r == role)
            .ok_or(StoreError::RoleNotGranted)?;
        u.roles.remove(at);
        self.changed();
        Ok(())
    }

    pub fn role_add(&mut self, role: &str) -> Result<()> {
        if role.is_empty() {
            return Err(StoreError::RoleEmpty);
        }
        if self.roles.contains_key(role) {
            return Err(StoreError::RoleAlreadyExist);
        }
        self.roles.insert(role.to_string(), Vec::new());
        self.changed();
        Ok(())
    }

    /// RoleDelete: also revokes the role from every user; `root` stays while auth is enabled.
    pub fn role_delete(&mut self, role: &str) -> Result<()> {
        if self.enabled && role == ROOT {
            return Err(StoreError::InvalidAuthMgmt);
        }
        self.roles.remove(role).ok_or(StoreError::RoleNotFound)?;
        for u in self.users.values_mut() {
            u.roles.retain(|r| r != role);
        }
        self.changed();
        Ok(())
    }

    /// RoleGrantPermission: a grant on the same range replaces the type; permissions stay
    /// sorted by key. A range naming no key is refused (etcd #15621).
    pub fn role_grant_permission(&mut self, role: &str, perm: &Permission) -> Result<()> {
        let perms = self.roles.get_mut(role).ok_or(StoreError::RoleNotFound)?;
        if !is_valid_range(&perm.key, &perm.range_end) {
            return Err(StoreError::InvalidAuthMgmt);
        }
        match perms.binary_search_by(|p| (&p.key, &p.range_end).cmp(&(&perm.key, &perm.range_end))) {
            Ok(at) => perms[at].perm_type = perm.perm_type,
            Err(at) => perms.insert(at, perm.clone()),
        }
        self.changed();
        Ok(())
    }

    pub fn role_revoke_permission(&mut self, role: &str, key: &[u8], range_end: &[u8]) -> Result<()> {
        let perms = self.roles.get_mut(role).ok_or(StoreError::RoleNotFound)?;
        let at = perms
            .iter()
            .position(|p| p.key.as_ref() == key && p.range_end.as_ref() == range_end)
            .ok_or(StoreError::PermissionNotGranted)?;
        perms.remove(at);
        self.changed();
        Ok(())
    }

    // ---- reads ----

    /// The roles granted to `user`.
    pub fn user_get(&self, user: &str) -> Result<Vec<String>> {
        self.users
            .get(user)
            .map(|u| u.roles.clone())
            .ok_or(StoreError::UserNotFound)
    }

    pub fn user_list(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// The permissions of `role`.
    pub fn role_get(&self, role: &str) -> Result<Vec<Permission>> {
        self.roles.get(role).cloned().ok_or(StoreError::RoleNotFound)
    }

    pub fn role_list(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// The stored bcrypt hash of `user`, for a password check; `AuthFailed` for an unknown
    /// user or one without a password (so a caller cannot tell which).
    pub fn password_hash(&self, user: &str) -> Result<String> {
        let u = self.users.get(user).ok_or(StoreError::AuthFailed)?;
        if u.options.is_some_and(|o| o.no_password) || u.password.is_empty() {
            return Err(StoreError::AuthFailed);
        }
        Ok(name(&u.password))
    }

    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    // ---- checks ----

    /// An admin operation: with auth enabled, only a user holding `root`.
    pub fn check_admin(&self, who: &AuthInfo) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if who.username.is_empty() {
            return Err(StoreError::UserEmpty);
        }
        let p = self.perms.get(&who.username).ok_or(StoreError::UserNotFound)?;
        if !p.root {
            return Err(StoreError::PermissionDenied);
        }
        Ok(())
    }

    /// An operation any authenticated user may make (leases, member list, alarms list,
    /// compaction).
    pub fn check_user(&self, who: &AuthInfo) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if who.username.is_empty() || who.revision == 0 {
            return Err(StoreError::UserEmpty);
        }
        if !self.perms.contains_key(&who.username) {
            return Err(StoreError::PermissionDenied);
        }
        Ok(())
    }

    /// Access to the range `key`/`range_end` (etcd's naming): a user holding `root`, or one
    /// whose permissions cover the whole range. Credentials older than the auth store are
    /// refused (`AuthOldRevision`), so a token issued before a change cannot outlive it.
    pub fn check_range(&self, who: &AuthInfo, key: &[u8], range_end: &[u8], access: Access) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if who.revision == 0 || who.username.is_empty() {
            return Err(StoreError::UserEmpty);
        }
        if who.revision < self.revision {
            return Err(StoreError::AuthOldRevision);
        }
        let p = self.perms.get(&who.username).ok_or(StoreError::PermissionDenied)?;
        let allowed = p.root
            || match access {
                Access::Read => p.read.covers(key, range_end),
                Access::Write => p.write.covers(key, range_end),
            };
        if allowed {
            Ok(())
        } else {
            Err(StoreError::PermissionDenied)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str, s: &AuthState) -> AuthInfo {
        AuthInfo {
            username: user.into(),
            revision: s.revision(),
        }
    }

    fn perm(t: PermType, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: t as i32,
            key: Bytes::from(key.to_string()),
            range_end: Bytes::from(end.to_string()),
        }
    }

    fn with_root() -> AuthState {
        let mut s = AuthState::default();
        s.user_add(ROOT, "h", false).unwrap();
        s.user_grant_role(ROOT, ROOT).unwrap();
        s
    }

    #[test]
    fn enabling_needs_root_with_the_root_role() {
        let mut s = AuthState::default();
        assert_eq!(s.revision(), 1);
        assert_eq!(s.enable(), Err(StoreError::RootUserNotExist));
        s.user_add(ROOT, "h", false).unwrap();
        assert_eq!(s.enable(), Err(StoreError::RootRoleNotExist));
        s.user_grant_role(ROOT, ROOT).unwrap();
        let before = s.revision();
        s.enable().unwrap();
        assert!(s.enabled());
        assert_eq!(s.revision(), before + 1);
        s.enable().unwrap();
        assert_eq!(s.revision(), before + 1, "enabling twice changes nothing");
        assert_eq!(s.user_delete(ROOT), Err(StoreError::InvalidAuthMgmt));
        assert_eq!(s.user_revoke_role(ROOT, ROOT), Err(StoreError::InvalidAuthMgmt));
        assert_eq!(s.role_delete(ROOT), Err(StoreError::InvalidAuthMgmt));
        s.disable();
        assert!(!s.enabled());
        s.user_revoke_role(ROOT, ROOT).unwrap();
    }

    #[test]
    fn user_and_role_errors_are_etcds() {
        let mut s = AuthState::default();
        assert_eq!(s.user_add("", "h", false), Err(StoreError::UserEmpty));
        s.user_add("u", "h", false).unwrap();
        assert_eq!(s.user_add("u", "h", false), Err(StoreError::UserAlreadyExist));
        assert_eq!(s.user_delete("x"), Err(StoreError::UserNotFound));
        assert_eq!(s.user_grant_role("x", "r"), Err(StoreError::UserNotFound));
        assert_eq!(s.user_grant_role("u", "r"), Err(StoreError::RoleNotFound));
        assert_eq!(s.role_add(""), Err(StoreError::RoleEmpty));
        s.role_add("r").unwrap();
        assert_eq!(s.role_add("r"), Err(StoreError::RoleAlreadyExist));
        s.user_grant_role("u", "r").unwrap();
        let rev = s.revision();
        s.user_grant_role("u", "r").unwrap();
        assert_eq!(s.revision(), rev, "a second grant changes nothing");
        assert_eq!(s.user_revoke_role("u", "other"), Err(StoreError::RoleNotGranted));
        assert_eq!(
            s.role_revoke_permission("r", b"k", b""),
            Err(StoreError::PermissionNotGranted)
        );
        assert_eq!(
            s.role_grant_permission("r", &perm(PermType::Read, "b", "a")),
            Err(StoreError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.role_grant_permission("x", &perm(PermType::Read, "a", "")),
            Err(StoreError::RoleNotFound)
        );
        s.role_delete("r").unwrap();
        assert_eq!(
            s.user_get("u").unwrap(),
            Vec::<String>::new(),
            "deleting a role revokes it"
        );
        assert_eq!(s.role_get("r"), Err(StoreError::RoleNotFound));
        assert_eq!(s.password_hash("u").unwrap(), "h");
        assert_eq!(s.password_hash("nobody"), Err(StoreError::AuthFailed));
        s.user_add("np", "", true).unwrap();
        assert_eq!(s.password_hash("np"), Err(StoreError::AuthFailed));
    }

    #[test]
    fn permissions_decide_access() {
        let mut s = with_root();
        s.user_add("u", "h", false).unwrap();
        s.role_add("r").unwrap();
        s.role_grant_permission("r", &perm(PermType::Read, "a", "m")).unwrap();
        s.role_grant_permission("r", &perm(PermType::Write, "k", "")).unwrap();
        // A second grant on the same range replaces the type.
        s.role_grant_permission("r", &perm(PermType::Readwrite, "k", ""))
            .unwrap();
        assert_eq!(s.role_get("r").unwrap().len(), 2);
        s.user_grant_role("u", "r").unwrap();
        s.enable().unwrap();
        let u = who("u", &s);
        assert_eq!(s.check_range(&u, b"b", b"", Access::Read), Ok(()));
        assert_eq!(
            s.check_range(&u, b"b", b"", Access::Write),
            Err(StoreError::PermissionDenied)
        );
        assert_eq!(s.check_range(&u, b"k", b"", Access::Write), Ok(()));
        assert_eq!(
            s.check_range(&u, b"a", b"\0", Access::Read),
            Err(StoreError::PermissionDenied)
        );
        assert_eq!(s.check_range(&who("root", &s), b"", b"\0", Access::Write), Ok(()));
        assert_eq!(
            s.check_range(&AuthInfo::default(), b"b", b"", Access::Read),
            Err(StoreError::UserEmpty)
        );
        let stale = AuthInfo {
            username: "u".into(),
            revision: s.revision() - 1,
        };
        assert_eq!(
            s.check_range(&stale, b"b", b"", Access::Read),
            Err(StoreError::AuthOldRevision)
        );
        assert_eq!(s.check_admin(&u), Err(StoreError::PermissionDenied));
        assert_eq!(s.check_admin(&who("root", &s)), Ok(()));
        assert_eq!(s.check_admin(&AuthInfo::default()), Err(StoreError::UserEmpty));
        assert_eq!(s.check_admin(&who("ghost", &s)), Err(StoreError::UserNotFound));
        assert_eq!(s.check_user(&u), Ok(()));
        assert_eq!(s.check_user(&AuthInfo::default()), Err(StoreError::UserEmpty));
        // Revoking the permission takes effect at once.
        s.role_revoke_permission("r", b"a", b"m").unwrap();
        assert_eq!(
            s.check_range(&who("u", &s), b"b", b"", Access::Read),
            Err(StoreError::PermissionDenied)
        );
    }

    #[test]
    fn the_record_round_trips() {
        let mut s = with_root();
        s.role_add("r").unwrap();
        s.role_grant_permission("r", &perm(PermType::Write, "x", "\0")).unwrap();
        s.user_add("u", "h", false).unwrap();
        s.user_grant_role("u", "r").unwrap();
        s.enable().unwrap();
        let back = AuthState::from_record(Some(s.to_record()));
        assert_eq!(back, s);
        assert_eq!(AuthState::from_record(None), AuthState::default());
    }
}
