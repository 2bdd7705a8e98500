//! The one place where domain errors become gRPC statuses: etcd's codes and messages.

use tonic::{Code, Status};

use crate::error::StoreError;

pub fn to_status(e: StoreError) -> Status {
    let code = match &e {
        StoreError::EmptyKey
        | StoreError::KeyNotFound
        | StoreError::ValueProvided
        | StoreError::LeaseProvided
        | StoreError::TooManyOps
        | StoreError::DuplicateKey
        | StoreError::RequestTooLarge
        | StoreError::MemberBadUrls
        | StoreError::UserEmpty
        | StoreError::RoleEmpty
        | StoreError::AuthFailed
        | StoreError::InvalidAuthMgmt
        | StoreError::AuthOldRevision => Code::InvalidArgument,
        StoreError::Compacted | StoreError::FutureRev | StoreError::LeaseTtlTooLarge => Code::OutOfRange,
        StoreError::NoSpace | StoreError::TooManyRequests => Code::ResourceExhausted,
        StoreError::LeaseNotFound | StoreError::MemberNotFound => Code::NotFound,
        StoreError::NotLeader
        | StoreError::LeaseExist
        | StoreError::MemberExist
        | StoreError::PeerUrlExist
        | StoreError::MemberNotEnoughStarted
        | StoreError::MemberNotLearner
        | StoreError::LearnerNotReady
        | StoreError::TooManyLearners
        | StoreError::BadLeaderTransferee
        | StoreError::MemberRemoved
        | StoreError::Misaddressed(_)
        | StoreError::RootUserNotExist
        | StoreError::RootRoleNotExist
        | StoreError::UserAlreadyExist
        | StoreError::UserNotFound
        | StoreError::RoleAlreadyExist
        | StoreError::RoleNotFound
        | StoreError::RoleNotGranted
        | StoreError::PermissionNotGranted
        | StoreError::AuthNotEnabled => Code::FailedPrecondition,
        StoreError::Corrupt => Code::DataLoss,
        StoreError::PermissionDenied => Code::PermissionDenied,
        StoreError::InvalidAuthToken => Code::Unauthenticated,
        StoreError::WatchCanceled => Code::Cancelled,
        StoreError::NoLeader
        | StoreError::LeaderChanged
        | StoreError::Stopped
        | StoreError::Timeout
        | StoreError::TimeoutWaitAppliedIndex
        | StoreError::NotSupportedForLearner
        | StoreError::Unhealthy => Code::Unavailable,
        // etcd's concurrency recipes return plain errors, which gRPC reports as Unknown.
        StoreError::ElectionNotLeader
        | StoreError::ElectionNoLeader
        | StoreError::MissingLeaderKey
        | StoreError::SessionExpired
        | StoreError::Storage(_)
        | StoreError::Internal(_) => Code::Unknown,
    };
    Status::new(code, e.to_string())
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        to_status(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_codes_and_messages() {
        let cases = [
            (
                StoreError::RootUserNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
            (
                StoreError::RootRoleNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not have root role",
            ),
            (
                StoreError::UserAlreadyExist,
                Code::FailedPrecondition,
                "etcdserver: user name already exists",
            ),
            (
                StoreError::UserEmpty,
                Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                StoreError::UserNotFound,
                Code::FailedPrecondition,
                "etcdserver: user name not found",
            ),
            (
                StoreError::RoleAlreadyExist,
                Code::FailedPrecondition,
                "etcdserver: role name already exists",
            ),
            (
                StoreError::RoleNotFound,
                Code::FailedPrecondition,
                "etcdserver: role name not found",
            ),
            (
                StoreError::RoleEmpty,
                Code::InvalidArgument,
                "etcdserver: role name is empty",
            ),
            (
                StoreError::AuthFailed,
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                StoreError::PermissionDenied,
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                StoreError::RoleNotGranted,
                Code::FailedPrecondition,
                "etcdserver: role is not granted to the user",
            ),
            (
                StoreError::PermissionNotGranted,
                Code::FailedPrecondition,
                "etcdserver: permission is not granted to the role",
            ),
            (
                StoreError::AuthNotEnabled,
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            (
                StoreError::InvalidAuthToken,
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                StoreError::InvalidAuthMgmt,
                Code::InvalidArgument,
                "etcdserver: invalid auth management",
            ),
            (
                StoreError::AuthOldRevision,
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
            (
                StoreError::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                StoreError::KeyNotFound,
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                StoreError::ValueProvided,
                Code::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                StoreError::LeaseProvided,
                Code::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                StoreError::TooManyOps,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                StoreError::DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                StoreError::Compacted,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                StoreError::FutureRev,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                StoreError::NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                StoreError::LeaseNotFound,
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                StoreError::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                StoreError::TooManyRequests,
                Code::ResourceExhausted,
                "etcdserver: too many requests",
            ),
            (StoreError::NoLeader, Code::Unavailable, "etcdserver: no leader"),
            (
                StoreError::NotLeader,
                Code::FailedPrecondition,
                "etcdserver: not leader",
            ),
            (
                StoreError::LeaderChanged,
                Code::Unavailable,
                "etcdserver: leader changed",
            ),
            (StoreError::Stopped, Code::Unavailable, "etcdserver: server stopped"),
            (StoreError::Timeout, Code::Unavailable, "etcdserver: request timed out"),
            (
                StoreError::MemberNotFound,
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                StoreError::NotSupportedForLearner,
                Code::Unavailable,
                "etcdserver: rpc not supported for learner",
            ),
            (
                StoreError::LeaseExist,
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                StoreError::LeaseTtlTooLarge,
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                StoreError::MemberExist,
                Code::FailedPrecondition,
                "etcdserver: member ID already exist",
            ),
            (
                StoreError::PeerUrlExist,
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (
                StoreError::MemberNotEnoughStarted,
                Code::FailedPrecondition,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            (
                StoreError::MemberBadUrls,
                Code::InvalidArgument,
                "etcdserver: given member URLs are invalid",
            ),
            (
                StoreError::MemberNotLearner,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            (
                StoreError::LearnerNotReady,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (
                StoreError::TooManyLearners,
                Code::FailedPrecondition,
                "etcdserver: too many learner members in cluster",
            ),
            (StoreError::Corrupt, Code::DataLoss, "etcdserver: corrupt cluster"),
            (
                StoreError::BadLeaderTransferee,
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            (StoreError::WatchCanceled, Code::Cancelled, "etcdserver: watch canceled"),
            (
                StoreError::Unhealthy,
                Code::Unavailable,
                "etcdserver: unhealthy cluster",
            ),
        ];
        for (e, code, msg) in cases {
            let s = to_status(e);
            assert_eq!(s.code(), code, "{msg}");
            assert_eq!(s.message(), msg);
        }
    }
}
