//! ipamd: the service that owns every IP allocation of the cluster. Its modules are in
//! layers, each using only those below it (`tests/layers.rs` keeps it so), from the bottom:
//!
//! * [`store`]: the [`store::Store`] trait (networks, AllocationShards with
//!   compare-and-swap, endpoint records, change events) and its backends; [`metrics`]: the
//!   counters the engine and its workers keep.
//! * [`error`]: what the engine and its workers refuse; [`networks`]: networks from YAML
//!   manifests (the embedded store's `--networks DIR`).
//! * [`worker`]: one task per network that caches its shards, picks addresses and commits
//!   every round of concurrent requests with one write per touched shard (group commit).
//! * [`engine`]: owners, idempotency, endpoint records, Attach/Detach/Gc/Check, the orphan
//!   reclaimer and the migration from DANM; beside it, [`status`]: the elected writer of
//!   the networks' `status` (pools' use, `Ready` and why), off the allocation path.
//! * [`wire`]: conversions to and from `danm.ipam.v1` and the one place status codes are
//!   chosen; [`tls`]: the gRPC port's TLS (a renewed certificate served without a restart);
//!   [`observe`]: every RPC's request id, latency and code; [`registry`]: the one metrics
//!   registry and its encoding.
//! * [`tokens`]: a node's identity from its ServiceAccount token (TokenReview).
//! * [`authz`]: who may call what (node-scoped, by client certificate or token).
//! * [`service`]: the `danm.ipam.v1.Ipam` gRPC service.
//! * [`server`]: serves it with gRPC health and reflection.
//! * [`cli`]: the command-line tools, showalloc (DANM's format, from the API or from ipamd)
//!   and ipamctl.
//! * [`run`]: the composition root of the `ipamd` binary: flags, TLS, store, engine,
//!   reclaimer, one metrics registry, server.
//!
//! Every binary's `main` is one call into [`run`] or [`cli`]; those two are the binaries'
//! bodies and, as binaries do, report errors with `anyhow`. The layers below have typed
//! errors.

pub mod authz;
pub mod cli;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod networks;
pub mod observe;
pub mod registry;
pub mod run;
pub mod server;
pub mod service;
pub mod status;
pub mod store;
pub mod tls;
pub mod tokens;
pub mod wire;
pub mod worker;
