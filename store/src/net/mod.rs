//! Network plumbing beneath the gRPC services, independent of the store.
//!
//! - [`h2_authority`]: accepted client connections, repairing the URL-shaped HTTP/2
//!   `:authority` etcdctl 3.4 sends when it dials an endpoint URL (with its HPACK decoder).

pub mod h2_authority;
