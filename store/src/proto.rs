//! Generated protobuf and gRPC code: etcd's v3 client API (`etcdserverpb`, `mvccpb`,
//! `authpb`, `v3lockpb`, `v3electionpb`) and Lodestone's internal peer protocol (`lodestone`).

#![allow(clippy::all, missing_docs, rust_2018_idioms)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
pub mod lodestone {
    tonic::include_proto!("lodestone");
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
