//! ipamd: the service that owns every IP allocation of the cluster.
//!
//! * [`store`]: the [`store::Store`] trait (networks, AllocationShards with
//!   compare-and-swap, endpoint records, change events) and its backends.
//! * [`worker`]: one task per network that caches its shards, picks addresses and commits
//!   every round of concurrent requests with one write per touched shard (group commit).
//! * [`engine`]: owners, idempotency, endpoint records, Attach/Detach/Gc/Check, the orphan
//!   reclaimer and the migration from DANM; [`error`] and [`metrics`] are what it and the
//!   workers share.
//! * [`networks`]: networks from YAML manifests (the embedded store's `--networks DIR`).
//! * [`service`]: the `danm.ipam.v1.Ipam` gRPC service and its status codes;
//!   [`server`] serves it with gRPC health and reflection, over [`tls`] when configured
//!   (a renewed certificate served without a restart); [`authz`] decides who may call
//!   what (node-scoped, by client certificate); [`observe`] gives every RPC a request id,
//!   its latency and code in the metrics.
//! * [`showalloc`]: the showalloc CLI's rendering, in DANM's format.

pub mod authz;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod networks;
pub mod observe;
pub mod server;
pub mod service;
pub mod showalloc;
pub mod store;
pub mod tls;
pub mod tokens;
pub mod worker;
