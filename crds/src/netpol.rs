//! DanmNetworkPolicy: Kubernetes' NetworkPolicy, on every interface of a pod.
//!
//! The spec is `networking.k8s.io/v1` NetworkPolicy's, field for field (the selectors,
//! ipBlock and ports are Kubernetes' own types), plus DANM's `networkSelector` on a peer
//! and, beyond DANM, `spec.networkSelector`: which interfaces of the selected pods the
//! policy isolates. DANM's manifests (group `danm.k8s.io`) move by changing the
//! `apiVersion` line to `danm.io/v1`.

use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A network policy that covers every interface of the pods it selects (or those on
/// `networkSelector`'s networks), whichever CNI made the interface.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "danm.io",
    version = "v1",
    kind = "DanmNetworkPolicy",
    namespaced,
    shortname = "dnetpol",
    printcolumn = r#"{"name":"Pod-Selector","type":"string","jsonPath":".spec.podSelector"}"#,
    printcolumn = r#"{"name":"Types","type":"string","jsonPath":".spec.policyTypes"}"#,
    printcolumn = r#"{"name":"Networks","type":"string","jsonPath":".spec.networkSelector","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DanmNetworkPolicySpec {
    /// The pods of the policy's namespace it applies to; empty: every pod of the namespace.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// Which interfaces of the selected pods the policy isolates: those on these networks.
    /// Absent: every interface with an address (as DANM's Policer did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_selector: Option<Vec<NetworkRef>>,
    /// `Ingress`, `Egress` or both. Absent: `Ingress`, plus `Egress` when the policy has
    /// egress rules (as Kubernetes decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<String>>,
    /// Traffic allowed in; any rule that matches allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    /// Traffic allowed out; any rule that matches allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
}

/// One ingress rule: traffic from any of `from` to any of `ports`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    /// Where the traffic may come from; absent or empty: anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<Peer>>,
    /// The ports it may go to; absent or empty: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

/// One egress rule: traffic to any of `to` on any of `ports`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// Where the traffic may go; absent or empty: anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Peer>>,
    /// The ports it may go to; absent or empty: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

/// A peer, as NetworkPolicy's, plus DANM's network selector. Selectors given together
/// narrow each other; `ipBlock` stands alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Pods (of the policy's namespace, or of `namespaceSelector`'s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces whose pods are peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// A CIDR, minus exceptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IPBlock>,
    /// Only the peers' interfaces on these networks (DANM's): with no pod or namespace
    /// selector, the interfaces on these networks of every pod of the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_selector: Option<Vec<NetworkRef>>,
}

/// A DANM network by name and kind.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub struct NetworkRef {
    /// The network's name.
    pub name: String,
    /// `DanmNet`, `TenantNetwork` or `ClusterNetwork`; absent: `DanmNet` (as a pod's
    /// `network` field means).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}
