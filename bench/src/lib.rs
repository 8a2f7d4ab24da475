//! Shared parts of the bench binaries: `bench` (ipamd against DANM's algorithm),
//! `scale-bench` (what one pod's Attach, Interfaces and Detach cost as the cluster grows)
//! and `cni-latency` (the `danm` plugin's ADD and DEL, process start to exit).
//!
//! * [`api`]: the API server a run works against (a fresh real control plane, with the fault
//!   proxy in front when a write latency is asked)
//!   and its request counters.
//! * [`replicas`]: ipamd processes and the gRPC callers of them.
//! * [`load`]: the fill-then-churn client load.
//! * [`stats`]: latency summaries.

pub mod api;
pub mod load;
pub mod peer;
pub mod replicas;
pub mod stats;
