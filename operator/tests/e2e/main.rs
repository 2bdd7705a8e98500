//! The operator end to end: its real reconcile, on [`platform::ProcessPlatform`] (the
//! StatefulSet as local `lodestone` processes), with its real etcd calls. Each scenario runs a
//! writer and checks, after every reconcile, the invariants of a membership change; at the
//! end, that no acknowledged write was lost.
//!
//! What this cannot show, with no API server here: a real StatefulSet controller, kubelet,
//! cluster DNS, PVC protection and the scheduler. `ProcessPlatform` imitates each; the request
//! sequences of `KubePlatform` are tested against a stand-in API server in the operator's unit
//! tests.

mod harness;
mod platform;
mod scenarios;
