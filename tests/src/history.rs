//! What the fault suite's clients did and saw: one [`Operation`] per request, with the
//! times it was sent and answered, and one [`WatchSession`] per watch stream. The checkers
//! ([`crate::linearizability`], [`crate::validate`]) read nothing else.
//!
//! Times are nanoseconds since the run began, from one monotonic clock shared by every
//! client. A write whose outcome the client never learned (an error or a timeout) is
//! [`Response::Unknown`] and has no return time ([`NEVER`]): it may have taken effect at any
//! point after it was sent, or not at all. A read that failed is not recorded: it observed
//! nothing.

/// Nanoseconds since the run began.
pub type Time = u64;

/// The return time of an operation whose outcome is unknown.
pub const NEVER: Time = Time::MAX;

/// A request of the traffic model: single-key operations on a small key space, so that the
/// history partitions by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A range of one key; `serializable` reads may be stale and are not linearizable.
    Get {
        key: String,
        serializable: bool,
    },
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// `Txn(If value(key) == expect, or the key is absent when None) Then Put(key, value)`.
    Cas {
        key: String,
        expect: Option<String>,
        value: String,
    },
}

impl Request {
    pub fn key(&self) -> &str {
        match self {
            Request::Get { key, .. }
            | Request::Put { key, .. }
            | Request::Delete { key }
            | Request::Cas { key, .. } => key,
        }
    }

    pub fn is_write(&self) -> bool {
        !matches!(self, Request::Get { .. })
    }

    /// The unique value this request writes, if it writes one.
    pub fn written_value(&self) -> Option<&str> {
        match self {
            Request::Put { value, .. } | Request::Cas { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// What the server answered, with the revision of the response header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Get {
        value: Option<String>,
        revision: i64,
    },
    Put {
        revision: i64,
    },
    Delete {
        deleted: bool,
        revision: i64,
    },
    Cas {
        succeeded: bool,
        revision: i64,
    },
    /// An error or a timeout: the write may or may not have been applied.
    Unknown,
}

impl Response {
    pub fn revision(&self) -> Option<i64> {
        match self {
            Response::Get { revision, .. }
            | Response::Put { revision }
            | Response::Delete { revision, .. }
            | Response::Cas { revision, .. } => Some(*revision),
            Response::Unknown => None,
        }
    }

    /// Whether the response says the request created a revision.
    pub fn changed(&self) -> bool {
        match self {
            Response::Put { .. } => true,
            Response::Delete { deleted, .. } => *deleted,
            Response::Cas { succeeded, .. } => *succeeded,
            Response::Get { .. } | Response::Unknown => false,
        }
    }
}

/// One request of one client, from sending to answer.
#[derive(Debug, Clone)]
pub struct Operation {
    pub client: usize,
    /// The member that answered, when the client talks to one member only (None when it
    /// spreads its requests over several).
    pub member: Option<usize>,
    pub request: Request,
    pub response: Response,
    pub call: Time,
    /// [`NEVER`] when the outcome is unknown.
    pub ret: Time,
}

/// A change to a key as watch reports it: `value` is None for a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub revision: i64,
    pub key: String,
    pub value: Option<String>,
}

/// One watch stream: opened on `prefix` at `start_revision`, it delivered `events` in order
/// until it ended (an error, a member going away, or the end of the run).
#[derive(Debug, Clone)]
pub struct WatchSession {
    pub client: usize,
    pub prefix: String,
    pub start_revision: i64,
    pub events: Vec<Event>,
    /// For each event, what the stream said came before it: the previous value (`prev_kv`;
    /// None when the key did not exist) and whether the event created the key.
    pub before: Vec<(Option<String>, bool)>,
}
