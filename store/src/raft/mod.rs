//! Consensus: openraft wired to Lodestone's storage and transport.
//!
//! - [`consensus`]: the facade the member uses: propose, read index, membership changes,
//!   leadership, the state of consensus, and the peer transport's Raft messages as bytes.
//! - [`log_store`]: the write-ahead log (Raft log + vote) with group-committed fsyncs.
//! - [`state_machine`]: openraft's state machine: applies committed batches (through
//!   [`crate::apply`]) and builds/installs snapshots; [`shared`] is its state as the read
//!   path sees it.
//! - [`generations`]: the state machine's `db-<n>` instance directories; [`snapshot_files`]:
//!   which snapshot file is current; [`snapshot`]: the snapshot file format.
//! - [`network`]: openraft's side of the peer transport (tonic gRPC).
//!
//! **This is the only module that names openraft** (its types, errors and metrics, and the
//! aliases below). openraft 0.10 is an alpha, pinned exactly; its churn stays here. The
//! `store/tests/layers.rs` test keeps the rule.

pub mod consensus;
pub mod generations;
pub mod log_store;
pub mod network;
pub mod shared;
pub mod snapshot;
pub mod snapshot_files;
pub mod state_machine;

pub use consensus::{Consensus, Membership, MembershipChange, RaftStatus, StatusWatch};

use std::fmt;

use prost::Message;
use serde::{Deserialize, Serialize};

use crate::proto::lodestone as pb;

/// What the Raft log knows about a member: its name and where peers reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

/// A replicated command: the Raft log payload, stored in its protobuf encoding.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Command(pub pb::Command);

/// The state machine's answer to a [`Command`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CommandResult(pub pb::CommandResult);

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use pb::command::Kind;
        let name = match &self.0.kind {
            Some(Kind::Put(_)) => "put",
            Some(Kind::DeleteRange(_)) => "delete_range",
            Some(Kind::Txn(_)) => "txn",
            Some(Kind::Compaction(_)) => "compaction",
            Some(Kind::MemberAttributes(_)) => "member_attributes",
            Some(Kind::LeaseGrant(_)) => "lease_grant",
            Some(Kind::LeaseRevoke(_)) => "lease_revoke",
            Some(Kind::Alarm(_)) => "alarm",
            Some(Kind::AuthEnable(_)) => "auth_enable",
            Some(Kind::AuthDisable(_)) => "auth_disable",
            Some(Kind::Authenticate(_)) => "authenticate",
            Some(Kind::UserAdd(_)) => "user_add",
            Some(Kind::UserDelete(_)) => "user_delete",
            Some(Kind::UserChangePassword(_)) => "user_change_password",
            Some(Kind::UserGrantRole(_)) => "user_grant_role",
            Some(Kind::UserRevokeRole(_)) => "user_revoke_role",
            Some(Kind::RoleAdd(_)) => "role_add",
            Some(Kind::RoleDelete(_)) => "role_delete",
            Some(Kind::RoleGrantPermission(_)) => "role_grant_permission",
            Some(Kind::RoleRevokePermission(_)) => "role_revoke_permission",
            None => "empty",
        };
        f.write_str(name)
    }
}

macro_rules! serde_as_protobuf {
    ($t:ty, $inner:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0.encode_to_vec())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("protobuf bytes")
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<$t, E> {
                        <$inner>::decode(v).map(|m| <$t>::from(m)).map_err(E::custom)
                    }
                    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<$t, E> {
                        self.visit_bytes(&v)
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<$t, A::Error> {
                        let mut buf = Vec::new();
                        while let Some(b) = seq.next_element::<u8>()? {
                            buf.push(b);
                        }
                        self.visit_bytes(&buf)
                    }
                }
                d.deserialize_byte_buf(V)
            }
        }
        impl From<$inner> for $t {
            fn from(m: $inner) -> Self {
                Self(m)
            }
        }
    };
}

serde_as_protobuf!(Command, pb::Command);
serde_as_protobuf!(CommandResult, pb::CommandResult);

openraft::declare_raft_types!(
    /// Lodestone's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = MemberNode,
);

pub type NodeId = u64;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, snapshot::SnapshotFile>;
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::PutRequest;

    #[test]
    fn command_survives_bincode() {
        let c = Command(pb::Command {
            kind: Some(pb::command::Kind::Put(PutRequest {
                key: "k".into(),
                value: vec![0u8, 1, 2].into(),
                ..Default::default()
            })),
            auth: None,
        });
        let b = bincode::serialize(&c).unwrap();
        let back: Command = bincode::deserialize(&b).unwrap();
        assert_eq!(back, c);
        let j = serde_json::to_string(&c).unwrap();
        let back: Command = serde_json::from_str(&j).unwrap();
        assert_eq!(back, c);
    }
}
