//! DanmNetworkPolicy: Kubernetes' NetworkPolicy, on every interface of a pod.
//!
//! The spec is `networking.k8s.io/v1` NetworkPolicy's, field for field (the selectors,
//! ipBlock and ports are Kubernetes' own types), plus DANM's `networkSelector` on a peer
//! and, beyond DANM, `spec.networkSelector`: which interfaces of the selected pods the
//! policy isolates. DANM's manifests (group `danm.k8s.io`) move by changing the
//! `apiVersion` line to `danm.io/v1`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
#[cfg(feature = "kube")]
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A network policy that covers every interface of the pods it selects (or those on
/// `networkSelector`'s networks), whichever CNI made the interface.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "kube", derive(CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "danm.io",
        version = "v1",
        kind = "DanmNetworkPolicy",
        namespaced,
        shortname = "dnetpol",
        printcolumn = r#"{"name":"Pod-Selector","type":"string","jsonPath":".spec.podSelector"}"#,
        printcolumn = r#"{"name":"Types","type":"string","jsonPath":".spec.policyTypes"}"#,
        printcolumn = r#"{"name":"Networks","type":"string","jsonPath":".spec.networkSelector","priority":1}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DanmNetworkPolicySpec {
    /// The pods of the policy's namespace it applies to; empty: every pod of the namespace.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// Which interfaces of the selected pods the policy isolates: those on these networks.
    /// Absent: every interface with an address (as DANM's Policer did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minItems" = 1, "maxItems" = 16))]
    pub network_selector: Option<Vec<NetworkRef>>,
    /// `Ingress`, `Egress` or both. Absent: `Ingress`, plus `Egress` when the policy has
    /// egress rules (as Kubernetes decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxItems" = 2, "x-kubernetes-validations" = [
        {"rule": "self.all(t, t == 'Ingress' || t == 'Egress')", "message": "each policy type must be Ingress or Egress"}
    ]))]
    pub policy_types: Option<Vec<String>>,
    /// Traffic allowed in; any rule that matches allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxItems" = 32))]
    pub ingress: Option<Vec<IngressRule>>,
    /// Traffic allowed out; any rule that matches allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxItems" = 32))]
    pub egress: Option<Vec<EgressRule>>,
}

/// One ingress rule: traffic from any of `from` to any of `ports`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    /// Where the traffic may come from; absent or empty: anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxItems" = 32))]
    pub from: Option<Vec<Peer>>,
    /// The ports it may go to; absent or empty: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxItems" = 32))]
    pub ports: Option<Vec<PolicyPort>>,
}

/// One egress rule: traffic to any of `to` on any of `ports`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// Where the traffic may go; absent or empty: anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxItems" = 32))]
    pub to: Option<Vec<Peer>>,
    /// The ports it may go to; absent or empty: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxItems" = 32))]
    pub ports: Option<Vec<PolicyPort>>,
}

/// A peer, as NetworkPolicy's, plus DANM's network selector. Selectors given together
/// narrow each other; `ipBlock` stands alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.podSelector) || has(self.namespaceSelector) || has(self.ipBlock) || has(self.networkSelector)",
     "message": "a peer needs podSelector, namespaceSelector, ipBlock or networkSelector"},
    {"rule": "!has(self.ipBlock) || !(has(self.podSelector) || has(self.namespaceSelector) || has(self.networkSelector))",
     "message": "ipBlock cannot be given with podSelector, namespaceSelector or networkSelector"}
]))]
pub struct Peer {
    /// Pods (of the policy's namespace, or of `namespaceSelector`'s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces whose pods are peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// A CIDR, minus exceptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
    /// Only the peers' interfaces on these networks (DANM's): with no pod or namespace
    /// selector, the interfaces on these networks of every pod of the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minItems" = 1, "maxItems" = 16))]
    pub network_selector: Option<Vec<NetworkRef>>,
}

/// A CIDR minus exceptions, as NetworkPolicy's `ipBlock`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "isCIDR(self.cidr)", "message": "cidr must be a CIDR, e.g. 10.0.0.0/16 or fd00::/64", "fieldPath": ".cidr"},
    {"rule": "!has(self.except) || !isCIDR(self.cidr) || self.except.all(e, isCIDR(e) && cidr(self.cidr).containsCIDR(e) && cidr(e).prefixLength() > cidr(self.cidr).prefixLength())",
     "message": "each except must be a CIDR strictly inside cidr", "fieldPath": ".except"}
]))]
pub struct IpBlock {
    /// The addresses.
    #[schemars(extend("maxLength" = 64))]
    pub cidr: String,
    /// Addresses of `cidr` left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxItems" = 16, "items" = {"type": "string", "maxLength": 64}))]
    pub except: Option<Vec<String>>,
}

/// A port, as NetworkPolicy's: a protocol and a number (with `endPort`, a range) or a
/// container port's name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.port) || (type(self.port) == int ? (self.port >= 1 && self.port <= 65535) : (size(self.port) <= 15 && self.port.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.port.matches('[a-z]') && !self.port.contains('--')))",
     "message": "port must be a number from 1 to 65535 or a container port's name (at most 15 lowercase letters, digits and '-')", "fieldPath": ".port"},
    {"rule": "!has(self.endPort) || (has(self.port) && type(self.port) == int && self.endPort >= self.port && self.endPort <= 65535)",
     "message": "endPort needs a numbered port and must be at least port and at most 65535", "fieldPath": ".endPort"}
]))]
pub struct PolicyPort {
    /// `TCP` (the default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["TCP", "UDP", "SCTP"]))]
    pub protocol: Option<String>,
    /// A number or a container port's name; absent: every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 15))]
    pub port: Option<IntOrString>,
    /// With a numbered `port`: the last port of the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
}

/// A DANM network by name and kind.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub struct NetworkRef {
    /// The network's name.
    #[schemars(extend("minLength" = 1, "maxLength" = 253))]
    pub name: String,
    /// `DanmNet`, `TenantNetwork` or `ClusterNetwork`; absent: `DanmNet` (as a pod's
    /// `network` field means).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["DanmNet", "TenantNetwork", "ClusterNetwork"]))]
    pub kind: Option<String>,
}
