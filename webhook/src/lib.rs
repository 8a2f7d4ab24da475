//! The admission webhook of DANM: validates and mutates DanmNet, TenantNetwork,
//! ClusterNetwork and TenantConfig, hands tenants their VLAN/VxLAN ids, and refuses to
//! delete or rewire a network pods use.
//!
//! It serves DANM's paths, so DANM's WebhookConfigurations work unchanged:
//! `/netvalidation` (networks, CREATE and UPDATE: validate, then mutate), `/confvalidation`
//! (TenantConfig, CREATE and UPDATE), `/netdeletion` (networks, DELETE).
//!
//! * [`review`]: AdmissionReview in, AdmissionReview out; every rule is a pure function of
//!   `danm_core::admit`, called with what the watches hold.
//! * [`tenants`]: the TenantConfig side: reserving ids with optimistic concurrency, freeing
//!   them when their TenantNetwork goes, reconciling what a failed create left.
//! * [`usage`]: which pods are connected to which network (a DanmEp index).
//! * [`links`]: which host links the networks ask for (an index of the three kinds).
//! * the serving certificate, reloaded when its files change: `danm_runtime::tls`.
//! * [`server`]: HTTPS (rustls) with the admission paths, `/metrics`, `/healthz`, `/readyz`.
//! * [`metrics`]: the Prometheus metrics.

pub mod links;
pub mod metrics;
pub mod review;
pub mod server;
pub mod tenants;
pub mod usage;
