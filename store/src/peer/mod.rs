//! The peer transport between members, over tonic gRPC on the peer URLs.
//!
//! - [`envelope`]: how every peer request is addressed (cluster, sender, target) and how
//!   every refusal comes back: one convention for all RPCs.
//! - [`client`]: the member's one cache of connections to its peers.
//! - [`service`]: the server side: Raft RPCs (handed to the consensus facade), streamed
//!   snapshots, and what followers route to the leader (writes, ReadIndex, lease queries,
//!   membership changes), the cluster view for joiners and HashKV for the corruption check.
//!
//! `envelope` and `client` sit below consensus (openraft's replication uses them, through
//! `raft::network`); `service` sits above the member, like the client API.

pub mod client;
pub mod envelope;
pub mod service;

/// Log entries one AppendEntries carries at most (openraft's `max_payload_entries`), so a
/// peer message has a size bound: see [`max_message`].
pub const MAX_APPEND_ENTRIES: u64 = 64;
/// Snapshots stream between members in pieces of this size.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Room for an entry's log id and framing beside its command.
const ENTRY_OVERHEAD: usize = 4 << 10;
/// Raft RPC replies (votes, append and snapshot results) are small; this bounds them.
pub const MAX_RAFT_REPLY: usize = 4 << 20;

/// The largest message a member accepts from a peer: a full AppendEntries of commands of at
/// most `--max-request-bytes` each, or a snapshot chunk, with framing. Anything larger is
/// refused before it is buffered.
pub fn max_message(max_request_bytes: usize) -> usize {
    let append = MAX_APPEND_ENTRIES as usize * (max_request_bytes + ENTRY_OVERHEAD);
    append.max(SNAPSHOT_CHUNK) + (64 << 10)
}
