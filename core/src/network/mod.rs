//! A network spec validated and defaulted into a [`NetworkPlan`].
//!
//! Follows DANM: the IPv4 pool defaults to the CIDR minus its network and broadcast
//! addresses; the IPv6 pool defaults to the first /106 of `net6` minus its first and last
//! address (DANM's `allocation_pool_v6` default). Gateways named in `routes`/`routes6` are
//! reserved. Unlike DANM there is no size limit: a pool may be as wide as its CIDR.
//!
//! This module holds the types (kinds, keys, plans, rules, problems); [`plan`] and its
//! per-family checks are in `plan.rs`; [`status`] decides what a network's `status` shows
//! (its pools' use, the `Ready` condition and its reason).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use danm_crds::{NetworkSpec, StaticScope};
use serde::{Deserialize, Serialize};

use crate::addr::{Cidr, Family};

/// The three network kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NetworkKind {
    /// Namespaced, lightweight API.
    DanmNet,
    /// Namespaced, production API.
    TenantNetwork,
    /// Cluster scoped, production API.
    ClusterNetwork,
}

impl NetworkKind {
    /// Every kind, in the order a pod's default network is looked for: the namespace's
    /// DanmNet, its TenantNetwork, then the ClusterNetwork.
    pub const ALL: [NetworkKind; 3] = [
        NetworkKind::DanmNet,
        NetworkKind::TenantNetwork,
        NetworkKind::ClusterNetwork,
    ];

    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkKind::DanmNet => "DanmNet",
            NetworkKind::TenantNetwork => "TenantNetwork",
            NetworkKind::ClusterNetwork => "ClusterNetwork",
        }
    }
    /// Short tag used in object names.
    pub fn tag(self) -> &'static str {
        match self {
            NetworkKind::DanmNet => "dn",
            NetworkKind::TenantNetwork => "tn",
            NetworkKind::ClusterNetwork => "cn",
        }
    }
    /// Parses a kind name.
    pub fn parse(s: &str) -> Option<NetworkKind> {
        match s {
            "DanmNet" => Some(NetworkKind::DanmNet),
            "TenantNetwork" => Some(NetworkKind::TenantNetwork),
            "ClusterNetwork" => Some(NetworkKind::ClusterNetwork),
            _ => None,
        }
    }
    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, NetworkKind::ClusterNetwork)
    }
}

impl fmt::Display for NetworkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of a default network: a pod with no `danm.io/interfaces` annotation gets its
/// namespace's `default` DanmNet or TenantNetwork, else the `default` ClusterNetwork.
pub const DEFAULT_NETWORK_NAME: &str = "default";

/// Identity of a network: kind, namespace (empty for a ClusterNetwork) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkKey {
    /// Kind.
    pub kind: NetworkKind,
    /// Namespace; empty for a ClusterNetwork.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl NetworkKey {
    /// Builds a key; the namespace is dropped for a ClusterNetwork.
    pub fn new(kind: NetworkKind, namespace: &str, name: &str) -> NetworkKey {
        let namespace = if kind.namespaced() { namespace } else { "" };
        NetworkKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.namespaced() {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        } else {
            write!(f, "{} {}", self.kind, self.name)
        }
    }
}

/// Why an address of a network is never handed out dynamically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// The IPv4 network base address.
    NetworkAddress,
    /// The IPv4 broadcast address.
    Broadcast,
    /// The IPv6 subnet-router anycast address (the base of `net6`).
    SubnetRouterAnycast,
    /// The gateway of a route to the given destination.
    Gateway(String),
}

impl fmt::Display for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reservation::NetworkAddress => f.write_str("network base address"),
            Reservation::Broadcast => f.write_str("broadcast address"),
            Reservation::SubnetRouterAnycast => f.write_str("subnet-router anycast address"),
            Reservation::Gateway(dest) => write!(f, "gateway of route {dest}"),
        }
    }
}

/// One family of a network: its CIDR, dynamic pool and reserved addresses.
///
/// Offsets are counted from the CIDR's base address; shards are laid out over the whole
/// CIDR, so static addresses outside the pool are tracked too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyPlan {
    /// The family.
    pub family: Family,
    /// The network's CIDR (`cidr` or `net6`).
    pub cidr: Cidr,
    /// First and last offset of the dynamic pool; `None` when the pool is empty.
    pub pool: Option<(u128, u128)>,
    /// Offsets never handed out dynamically, and why.
    pub reserved: BTreeMap<u128, Reservation>,
    /// Where a static address may be: inside the pool, or anywhere in the CIDR.
    pub statics: StaticScope,
}

impl FamilyPlan {
    /// First address of the pool.
    pub fn pool_start(&self) -> Option<IpAddr> {
        self.pool.and_then(|(first, _)| self.cidr.addr_at(first))
    }
    /// Last address of the pool.
    pub fn pool_end(&self) -> Option<IpAddr> {
        self.pool.and_then(|(_, last)| self.cidr.addr_at(last))
    }
    /// Whether an offset is inside the dynamic pool.
    pub fn in_pool(&self, offset: u128) -> bool {
        self.pool
            .is_some_and(|(first, last)| (first..=last).contains(&offset))
    }
    /// Addresses of the dynamic pool that are not reserved.
    pub fn capacity(&self) -> u128 {
        let Some((first, last)) = self.pool else {
            return 0;
        };
        let reserved = self.reserved.keys().filter(|o| self.in_pool(**o)).count();
        (last - first + 1).saturating_sub(reserved as u128)
    }
}

/// Where static addresses may be taken on a network of `kind`: what `static_scope` says,
/// else inside the pool for a TenantNetwork and anywhere in the CIDR (DANM's behaviour)
/// for the administrators' kinds.
pub fn static_scope(kind: NetworkKind, spec: &NetworkSpec) -> StaticScope {
    spec.options.static_scope.unwrap_or(match kind {
        NetworkKind::TenantNetwork => StaticScope::Pool,
        NetworkKind::DanmNet | NetworkKind::ClusterNetwork => StaticScope::Cidr,
    })
}

/// A validated network, ready for allocation.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkPlan {
    /// Identity.
    pub key: NetworkKey,
    /// The spec it was built from.
    pub spec: NetworkSpec,
    /// IPv4 part, when `cidr` is set.
    pub v4: Option<FamilyPlan>,
    /// IPv6 part, when `net6` is set.
    pub v6: Option<FamilyPlan>,
}

impl NetworkPlan {
    /// The plan of one family.
    pub fn family(&self, family: Family) -> Option<&FamilyPlan> {
        match family {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }
    /// The NetworkType, defaulted to `ipvlan` as DANM does.
    pub fn network_type(&self) -> &str {
        effective_network_type(&self.spec.network_type)
    }
    /// Whether a pod of `namespace` may connect (ClusterNetwork `AllowedTenants`).
    pub fn tenant_allowed(&self, namespace: &str) -> bool {
        match &self.spec.allowed_tenants {
            Some(list) if !list.is_empty() => list.iter().any(|t| t == namespace),
            _ => true,
        }
    }
}

/// One of DANM's validation rules ("List of validation rules" of DANM's user guide): the
/// DanmNet rules 1-22 (which TenantNetworks and ClusterNetworks share in part), the
/// TenantNetwork rules 1-6, the TenantConfig rules 1-4. A denial names its rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// A DanmNet rule (1-22).
    DanmNet(u8),
    /// A TenantNetwork rule (1-6).
    TenantNetwork(u8),
    /// A TenantConfig rule (1-4).
    TenantConfig(u8),
    /// A check DANM's webhook made without numbering it in the guide (a TenantConfig
    /// profile's `vniType` must be `vlan` or `vxlan`, say).
    Unnumbered,
    /// A rule of ours that DANM did not have (a VLAN id outside 1-4094, say).
    Ours,
    /// The object does not fit the API's schema (a field of the wrong type).
    Schema,
}

impl Rule {
    /// A short name for metric labels: `DanmNet-3`, `TenantNetwork-2`, `TenantConfig-1`,
    /// `unnumbered`, `ours`, `schema`.
    pub fn label(&self) -> String {
        match self {
            Rule::DanmNet(n) => format!("DanmNet-{n}"),
            Rule::TenantNetwork(n) => format!("TenantNetwork-{n}"),
            Rule::TenantConfig(n) => format!("TenantConfig-{n}"),
            Rule::Unnumbered => "unnumbered".into(),
            Rule::Ours => "ours".into(),
            Rule::Schema => "schema".into(),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::DanmNet(n) => write!(f, "DANM's DanmNet rule {n}"),
            Rule::TenantNetwork(n) => write!(f, "DANM's TenantNetwork rule {n}"),
            Rule::TenantConfig(n) => write!(f, "DANM's TenantConfig rule {n}"),
            Rule::Unnumbered => f.write_str("a check of DANM's webhook"),
            Rule::Ours => f.write_str("not a DANM rule: see docs/webhook.md"),
            Rule::Schema => f.write_str("the API schema"),
        }
    }
}

/// One problem with one field of a network spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldProblem {
    /// The field, as a path (`spec.Options.cidr`).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// The rule it breaks.
    pub rule: Rule,
}

/// Why a network cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// The spec breaks one or more validation rules.
    #[error("{network} is invalid: {}", problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The network.
        network: String,
        /// Every problem found.
        problems: Vec<FieldProblem>,
    },
}

/// The NetworkType a network of written type `network_type` has: DANM's default, `ipvlan`,
/// when none is written. The one place the default is decided (ipamd, the webhook, the CNI).
pub fn effective_network_type(network_type: &str) -> &str {
    if network_type.is_empty() {
        "ipvlan"
    } else {
        network_type
    }
}

/// NetworkTypes DANM builds itself (NetworkID limited to 10 characters for them).
pub fn is_dynamic_backend(network_type: &str) -> bool {
    matches!(network_type, "" | "ipvlan" | "macvlan" | "sriov")
}

/// Prefix length of DANM's default IPv6 allocation CIDR.
pub const DEFAULT_V6_POOL_PREFIX: u8 = 106;

/// The allocation CIDR of `net6` when `allocation_pool_v6.cidr` is not given: its first
/// /106 (all of it when narrower).
pub fn default_v6_pool_cidr(net6: &Cidr) -> Cidr {
    Cidr::new(net6.base(), net6.prefix().max(DEFAULT_V6_POOL_PREFIX))
        .expect("prefix within 0..=128")
}

mod plan;
pub mod status;

pub use plan::plan;
