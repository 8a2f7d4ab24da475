//! The policer: DanmNetworkPolicies enforced inside each pod's network namespace, on every
//! interface, whichever CNI made it (DANM's danm-utils Policer, rebuilt on nftables).
//!
//! * [`ruleset`]: one pod's decisions (`danm_core::netpol::PodRules`) as one nftables
//!   table of ours, `inet danm_policer`: a chain per isolated interface and direction,
//!   the allowed peers in named interval sets, a REJECT at the end.
//! * [`index`] and [`controller`]: namespaces, pods, DanmEps, DanmNetworkPolicies and the
//!   networks followed with watches; each change starts a round that recomputes the
//!   decisions of the pods of this node it may affect and applies those that changed;
//!   [`metrics`]: what it did, for Prometheus; [`events`]: Warning Events on what failed and
//!   on policies naming networks that do not exist.
//! * [`gate`]: isolation from a pod's first packet: the `danm` CNI plugin asks, over a
//!   unix socket, for a new sandbox's table before it builds the interfaces.
//! * [`apply`]: that table replaced atomically in a pod's network namespace (one `nft`
//!   transaction), or removed; nothing else in the namespace is touched.
//!
//! Why `nft` and its JSON rather than netlink from Rust: the netlink crates either are
//! GPL-3.0 (rustables; this suite is BSD-3-Clause) or cannot build interval sets, which an
//! `ipBlock` with `except` needs (nftnl, bindings to libnftnl, builds only anonymous
//! constant sets). The `nftables` crate (MIT/Apache-2.0) types the JSON schema, so no string
//! from a pod or a policy is ever spliced into a rule's text, and `nft -j -f -` applies a
//! whole table in one kernel transaction: a pod never holds half a ruleset.

pub mod apply;
pub mod controller;
pub mod events;
pub mod gate;
pub mod index;
pub mod metrics;
pub mod ruleset;
