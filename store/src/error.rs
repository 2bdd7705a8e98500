//! The store's domain errors. One enum for everything a request can fail with, below the
//! gRPC boundary; `api::status` maps each to etcd's exact gRPC code and message.

use thiserror::Error;

/// Why a request failed. The display text is etcd's message for the same condition, so the
/// text can travel between members (forwarded writes, apply errors) unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: request timed out, waiting for the applied index took too long")]
    TimeoutWaitAppliedIndex,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: watch canceled")]
    WatchCanceled,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// v3election: Proclaim or Resign by a contender that no longer leads.
    #[error("election: not leader")]
    ElectionNotLeader,
    /// v3election: Leader of an election nobody campaigns in.
    #[error("election: no leader")]
    ElectionNoLeader,
    /// v3election: Proclaim or Resign without the `leader` field.
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    /// v3lock / v3election: the contender's key vanished while it waited (its lease expired,
    /// or it was deleted), so the wait won nothing.
    #[error("session expired")]
    SessionExpired,
    /// Peer transport: the sender is no longer a member (etcd's peers answer a removed
    /// member likewise, and it stops).
    #[error("the member has been permanently removed from the cluster")]
    MemberRemoved,
    /// Peer transport: a message meant for another cluster or another member (stable DNS
    /// names are reused by new members, so an address alone proves nothing).
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    #[error("{0}")]
    Misaddressed(String),
    /// The local storage engine failed; the text says where.
    #[error("{0}")]
    Storage(String),
    /// Anything else unexpected (gRPC code Unknown, as etcd's `togRPCError` does).
    #[error("{0}")]
    Internal(String),
}

impl StoreError {
    /// A stable number for each variant, so an error raised while applying a log entry can be
    /// carried in the replicated result and rebuilt exactly on the member that answers.
    pub fn code(&self) -> u32 {
        match self {
            StoreError::EmptyKey => 1,
            StoreError::KeyNotFound => 2,
            StoreError::ValueProvided => 3,
            StoreError::LeaseProvided => 4,
            StoreError::TooManyOps => 5,
            StoreError::DuplicateKey => 6,
            StoreError::Compacted => 7,
            StoreError::FutureRev => 8,
            StoreError::NoSpace => 9,
            StoreError::LeaseNotFound => 10,
            StoreError::RequestTooLarge => 11,
            StoreError::TooManyRequests => 12,
            StoreError::NoLeader => 13,
            StoreError::NotLeader => 14,
            StoreError::LeaderChanged => 15,
            StoreError::Stopped => 16,
            StoreError::Timeout => 17,
            StoreError::TimeoutWaitAppliedIndex => 18,
            StoreError::MemberNotFound => 19,
            StoreError::NotSupportedForLearner => 20,
            StoreError::LeaseExist => 21,
            StoreError::LeaseTtlTooLarge => 22,
            StoreError::MemberExist => 23,
            StoreError::PeerUrlExist => 24,
            StoreError::MemberNotEnoughStarted => 25,
            StoreError::MemberBadUrls => 26,
            StoreError::MemberNotLearner => 27,
            StoreError::LearnerNotReady => 28,
            StoreError::TooManyLearners => 29,
            StoreError::Corrupt => 30,
            StoreError::BadLeaderTransferee => 31,
            StoreError::WatchCanceled => 32,
            StoreError::Unhealthy => 33,
            StoreError::ElectionNotLeader => 34,
            StoreError::ElectionNoLeader => 35,
            StoreError::MissingLeaderKey => 36,
            StoreError::SessionExpired => 37,
            StoreError::MemberRemoved => 38,
            StoreError::RootUserNotExist => 39,
            StoreError::RootRoleNotExist => 40,
            StoreError::UserAlreadyExist => 41,
            StoreError::UserEmpty => 42,
            StoreError::UserNotFound => 43,
            StoreError::RoleAlreadyExist => 44,
            StoreError::RoleNotFound => 45,
            StoreError::RoleEmpty => 46,
            StoreError::AuthFailed => 47,
            StoreError::PermissionDenied => 48,
            StoreError::RoleNotGranted => 49,
            StoreError::PermissionNotGranted => 50,
            StoreError::AuthNotEnabled => 51,
            StoreError::InvalidAuthToken => 52,
            StoreError::InvalidAuthMgmt => 53,
            StoreError::AuthOldRevision => 54,
            StoreError::Storage(_) => 100,
            StoreError::Internal(_) => 101,
            StoreError::Misaddressed(_) => 102,
        }
    }

    /// Rebuilds an error from [`StoreError::code`] and its message.
    pub fn from_code(code: u32, message: &str) -> StoreError {
        match code {
            1 => StoreError::EmptyKey,
            2 => StoreError::KeyNotFound,
            3 => StoreError::ValueProvided,
            4 => StoreError::LeaseProvided,
            5 => StoreError::TooManyOps,
            6 => StoreError::DuplicateKey,
            7 => StoreError::Compacted,
            8 => StoreError::FutureRev,
            9 => StoreError::NoSpace,
            10 => StoreError::LeaseNotFound,
            11 => StoreError::RequestTooLarge,
            12 => StoreError::TooManyRequests,
            13 => StoreError::NoLeader,
            14 => StoreError::NotLeader,
            15 => StoreError::LeaderChanged,
            16 => StoreError::Stopped,
            17 => StoreError::Timeout,
            18 => StoreError::TimeoutWaitAppliedIndex,
            19 => StoreError::MemberNotFound,
            20 => StoreError::NotSupportedForLearner,
            21 => StoreError::LeaseExist,
            22 => StoreError::LeaseTtlTooLarge,
            23 => StoreError::MemberExist,
            24 => StoreError::PeerUrlExist,
            25 => StoreError::MemberNotEnoughStarted,
            26 => StoreError::MemberBadUrls,
            27 => StoreError::MemberNotLearner,
            28 => StoreError::LearnerNotReady,
            29 => StoreError::TooManyLearners,
            30 => StoreError::Corrupt,
            31 => StoreError::BadLeaderTransferee,
            32 => StoreError::WatchCanceled,
            33 => StoreError::Unhealthy,
            34 => StoreError::ElectionNotLeader,
            35 => StoreError::ElectionNoLeader,
            36 => StoreError::MissingLeaderKey,
            37 => StoreError::SessionExpired,
            38 => StoreError::MemberRemoved,
            39 => StoreError::RootUserNotExist,
            40 => StoreError::RootRoleNotExist,
            41 => StoreError::UserAlreadyExist,
            42 => StoreError::UserEmpty,
            43 => StoreError::UserNotFound,
            44 => StoreError::RoleAlreadyExist,
            45 => StoreError::RoleNotFound,
            46 => StoreError::RoleEmpty,
            47 => StoreError::AuthFailed,
            48 => StoreError::PermissionDenied,
            49 => StoreError::RoleNotGranted,
            50 => StoreError::PermissionNotGranted,
            51 => StoreError::AuthNotEnabled,
            52 => StoreError::InvalidAuthToken,
            53 => StoreError::InvalidAuthMgmt,
            54 => StoreError::AuthOldRevision,
            100 => StoreError::Storage(message.to_string()),
            102 => StoreError::Misaddressed(message.to_string()),
            _ => StoreError::Internal(message.to_string()),
        }
    }
}

impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        StoreError::Storage(format!("storage: {e}"))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        let all = [
            StoreError::EmptyKey,
            StoreError::KeyNotFound,
            StoreError::ValueProvided,
            StoreError::LeaseProvided,
            StoreError::TooManyOps,
            StoreError::DuplicateKey,
            StoreError::Compacted,
            StoreError::FutureRev,
            StoreError::NoSpace,
            StoreError::LeaseNotFound,
            StoreError::RequestTooLarge,
            StoreError::TooManyRequests,
            StoreError::NoLeader,
            StoreError::NotLeader,
            StoreError::LeaderChanged,
            StoreError::Stopped,
            StoreError::Timeout,
            StoreError::TimeoutWaitAppliedIndex,
            StoreError::MemberNotFound,
            StoreError::NotSupportedForLearner,
            StoreError::LeaseExist,
            StoreError::LeaseTtlTooLarge,
            StoreError::MemberExist,
            StoreError::PeerUrlExist,
            StoreError::MemberNotEnoughStarted,
            StoreError::MemberBadUrls,
            StoreError::MemberNotLearner,
            StoreError::LearnerNotReady,
            StoreError::TooManyLearners,
            StoreError::Corrupt,
            StoreError::BadLeaderTransferee,
            StoreError::WatchCanceled,
            StoreError::Unhealthy,
            StoreError::ElectionNotLeader,
            StoreError::ElectionNoLeader,
            StoreError::MissingLeaderKey,
            StoreError::SessionExpired,
            StoreError::MemberRemoved,
            StoreError::RootUserNotExist,
            StoreError::RootRoleNotExist,
            StoreError::UserAlreadyExist,
            StoreError::UserEmpty,
            StoreError::UserNotFound,
            StoreError::RoleAlreadyExist,
            StoreError::RoleNotFound,
            StoreError::RoleEmpty,
            StoreError::AuthFailed,
            StoreError::PermissionDenied,
            StoreError::RoleNotGranted,
            StoreError::PermissionNotGranted,
            StoreError::AuthNotEnabled,
            StoreError::InvalidAuthToken,
            StoreError::InvalidAuthMgmt,
            StoreError::AuthOldRevision,
            StoreError::Misaddressed("for member 2".into()),
            StoreError::Storage("disk on fire".into()),
            StoreError::Internal("odd".into()),
        ];
        for e in all {
            assert_eq!(StoreError::from_code(e.code(), &e.to_string()), e);
        }
    }
}
