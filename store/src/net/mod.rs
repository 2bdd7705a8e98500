//! Network plumbing beneath the gRPC services, independent of the store.
//!
//! - [`coalesce`]: accepted client connections write a round of small responses (a watch
//!   fan-out's events across the streams of a connection) with one system call.
//! - [`h2_authority`]: accepted client connections, repairing the URL-shaped HTTP/2
//!   `:authority` etcdctl 3.4 sends when it dials an endpoint URL (with its HPACK decoder).
//! - [`tls`]: TLS with etcd's options for the listeners and for dialing peers; the one
//!   connection type ([`tls::Conn`]) every server and the peer client use.

pub mod coalesce;
pub mod h2_authority;
pub mod tls;
