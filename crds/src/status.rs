//! The `status` of the three network kinds: what ipamd's elected status writer reports
//! (pools' capacity and use, whether ipamd serves the network and why not). Written only
//! through the `status` subresource; `kubectl get danmnets` shows it in printer columns.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `status` of a DanmNet, TenantNetwork or ClusterNetwork.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The IPv4 pool (absent when the network has no `cidr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<PoolStatus>,
    /// The IPv6 pool (absent when the network has no `net6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<PoolStatus>,
    /// The network's host links over the nodes that report them (absent when no node
    /// keeps a VLAN or VxLAN link for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<LinkSummary>,
    /// `Ready`: `True` when ipamd serves the network; `False` with the reason `Invalid`
    /// (and every refused field in the message), `Migrating` (DANM's allocations are being
    /// moved into shards) or `CorruptShards`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<NetworkCondition>,
}

/// One family's pool, as the shards hold it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// Addresses of the dynamic pool, reserved ones excluded, in decimal (an IPv6 pool's
    /// may not fit 64 bits).
    pub capacity: String,
    /// Addresses held in the network, static ones outside the pool included.
    pub used: u64,
}

/// A condition, shaped as Kubernetes' `metav1.Condition`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkCondition {
    /// The condition's type (`Ready`).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase word saying why.
    pub reason: String,
    /// For humans: what is wrong and where.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A network's host links summed over the nodes' [`crate::NodeLinkReport`]s.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkSummary {
    /// Nodes whose netwatcher keeps the network's link.
    pub nodes_ready: u32,
    /// Nodes whose netwatcher cannot.
    pub nodes_failing: u32,
    /// The first failing node (by name) and its reason: `node-3: HostDeviceMissing: ...`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub first_failure: String,
}
