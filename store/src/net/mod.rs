//! Network plumbing beneath the gRPC services, independent of the store.
//!
//! - [`h2_authority`]: accepted client connections, repairing the URL-shaped HTTP/2
//!   `:authority` etcdctl 3.4 sends when it dials an endpoint URL (with its HPACK decoder).
//! - [`tls`]: TLS with etcd's options for the listeners and for dialing peers; the one
//!   connection type ([`tls::Conn`]) every server and the peer client use.

pub mod h2_authority;
pub mod tls;
