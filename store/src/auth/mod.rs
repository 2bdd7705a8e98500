//! etcd's Auth: who may do what.
//!
//! - [`store`]: users, roles and permissions, auth enabled or not, the auth revision; etcd's
//!   rules for changing them and the checks every request passes.
//! - [`perms`]: whether a user's merged permissions cover a requested key range.
//! - [`requests`]: the permissions each KV request needs (txns with everything nested).
//! - [`tokens`]: simple and JWT tokens, password hashing.

pub mod perms;
pub mod requests;
pub mod store;
pub mod tokens;

pub use perms::Access;
pub use store::{AuthInfo, AuthState, ROOT};
