//! The three network kinds and the DanmEp record.

use std::collections::BTreeMap;

#[cfg(feature = "kube")]
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The spec shared by DanmNet, TenantNetwork and ClusterNetwork, field for field as DANM's
/// `DanmNetSpec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkSpec {
    /// Second identifier of the network: names the CNI config file of static delegates and
    /// prefixes or suffixes the VLAN/VxLAN host links.
    #[serde(rename = "NetworkID", default)]
    pub network_id: String,
    /// Backend that builds the interface: `ipvlan` (default), `macvlan`, `sriov`, or the name
    /// of any CNI binary to delegate to.
    #[serde(
        rename = "NetworkType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub network_type: String,
    /// Namespaces allowed to connect to a ClusterNetwork (empty: all).
    #[serde(
        rename = "AllowedTenants",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub allowed_tenants: Option<Vec<String>>,
    /// Backend and addressing options.
    #[serde(rename = "Options", default)]
    pub options: NetworkOptions,
}

/// `spec.Options` of a network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkOptions {
    /// Parent host device of ipvlan/macvlan sub-interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_device: Option<String>,
    /// Device plugin resource pool (SR-IOV and other device networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_pool: Option<String>,
    /// VxLAN id of the host link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<i64>,
    /// VLAN id of the host link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<i64>,
    /// Prefix of the interface name inside the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_prefix: Option<String>,
    /// IPv4 subnet of the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// IPv4 dynamic allocation pool (defaults to the CIDR minus network and broadcast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_pool: Option<IpPool>,
    /// IPv6 subnet of the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net6: Option<String>,
    /// IPv6 dynamic allocation pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_pool_v6: Option<IpPoolV6>,
    /// IPv4 routes (`destination CIDR: gateway`) for every pod of the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<BTreeMap<String, String>>,
    /// IPv6 routes (`destination CIDR: gateway`) for every pod of the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes6: Option<BTreeMap<String, String>>,
    /// Routing table of the policy-based routes (`proutes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rt_tables: Option<i64>,
    /// Where a pod may ask for a static address: `pool` (inside the allocation pool
    /// only) or `cidr` (anywhere in the subnet but its reserved addresses, as DANM
    /// allowed). Default: `pool` for a TenantNetwork (which may not choose `cidr`), `cidr`
    /// for a DanmNet or ClusterNetwork. Not one of DANM's fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_scope: Option<StaticScope>,
    /// DANM's IPv4 allocation bit array (base64). Legacy: migrated into AllocationShards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc: Option<String>,
    /// DANM's IPv6 allocation bit array (base64). Legacy: migrated into AllocationShards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc6: Option<String>,
}

/// Where static addresses may be taken (`spec.Options.static_scope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StaticScope {
    /// Inside the allocation pool only: the addresses outside it (a router's, an
    /// appliance's) cannot be claimed by a pod.
    Pool,
    /// Anywhere in the CIDR but its reserved addresses (DANM's behaviour).
    Cidr,
}

/// An address range `start`..=`end`; `lastIp` is DANM's dynamic allocation cursor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IpPool {
    /// First address of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Last address of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Last address handed out by DANM (legacy cursor).
    #[serde(rename = "lastIp", default, skip_serializing_if = "Option::is_none")]
    pub last_ip: Option<String>,
}

/// The IPv6 pool: a range, optionally inside a narrower allocation CIDR.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IpPoolV6 {
    /// Allocation CIDR inside `net6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// First address of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Last address of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Last address handed out by DANM (legacy cursor).
    #[serde(rename = "lastIp", default, skip_serializing_if = "Option::is_none")]
    pub last_ip: Option<String>,
}

/// A namespaced network of DANM's lightweight API.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "kube", derive(CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "danm.io",
        version = "v1",
        kind = "DanmNet",
        status = "crate::NetworkStatus",
        namespaced,
        shortname = "dn",
        shortname = "dnet",
        printcolumn = r#"{"name":"NetworkID","type":"string","jsonPath":".spec.NetworkID"}"#,
        printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.NetworkType"}"#,
        printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.Options.cidr"}"#,
        printcolumn = r#"{"name":"Net6","type":"string","jsonPath":".spec.Options.net6","priority":1}"#,
        printcolumn = r#"{"name":"Device","type":"string","jsonPath":".spec.Options.host_device"}"#,
        printcolumn = r#"{"name":"VLAN","type":"integer","jsonPath":".spec.Options.vlan"}"#,
        printcolumn = r#"{"name":"VxLAN","type":"integer","jsonPath":".spec.Options.vxlan"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.ipv4.used"}"#,
        printcolumn = r#"{"name":"Capacity","type":"string","jsonPath":".status.ipv4.capacity"}"#,
        printcolumn = r#"{"name":"Used6","type":"integer","jsonPath":".status.ipv6.used","priority":1}"#,
        printcolumn = r#"{"name":"Capacity6","type":"string","jsonPath":".status.ipv6.capacity","priority":1}"#,
        printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
        printcolumn = r#"{"name":"LinksReady","type":"integer","jsonPath":".status.links.nodesReady","priority":1}"#,
        printcolumn = r#"{"name":"LinksFailing","type":"integer","jsonPath":".status.links.nodesFailing","priority":1}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
pub struct DanmNetSpec {
    /// The network definition.
    #[serde(flatten)]
    pub network: NetworkSpec,
}

/// A namespaced network of DANM's production API, managed by tenants.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "kube", derive(CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "danm.io",
        version = "v1",
        kind = "TenantNetwork",
        status = "crate::NetworkStatus",
        namespaced,
        shortname = "tn",
        shortname = "tnet",
        printcolumn = r#"{"name":"NetworkID","type":"string","jsonPath":".spec.NetworkID"}"#,
        printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.NetworkType"}"#,
        printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.Options.cidr"}"#,
        printcolumn = r#"{"name":"Net6","type":"string","jsonPath":".spec.Options.net6","priority":1}"#,
        printcolumn = r#"{"name":"Device","type":"string","jsonPath":".spec.Options.host_device"}"#,
        printcolumn = r#"{"name":"VLAN","type":"integer","jsonPath":".spec.Options.vlan"}"#,
        printcolumn = r#"{"name":"VxLAN","type":"integer","jsonPath":".spec.Options.vxlan"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.ipv4.used"}"#,
        printcolumn = r#"{"name":"Capacity","type":"string","jsonPath":".status.ipv4.capacity"}"#,
        printcolumn = r#"{"name":"Used6","type":"integer","jsonPath":".status.ipv6.used","priority":1}"#,
        printcolumn = r#"{"name":"Capacity6","type":"string","jsonPath":".status.ipv6.capacity","priority":1}"#,
        printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
        printcolumn = r#"{"name":"LinksReady","type":"integer","jsonPath":".status.links.nodesReady","priority":1}"#,
        printcolumn = r#"{"name":"LinksFailing","type":"integer","jsonPath":".status.links.nodesFailing","priority":1}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
pub struct TenantNetworkSpec {
    /// The network definition.
    #[serde(flatten)]
    pub network: NetworkSpec,
}

/// A cluster-wide network of DANM's production API, managed by operators.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "kube", derive(CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "danm.io",
        version = "v1",
        kind = "ClusterNetwork",
        status = "crate::NetworkStatus",
        shortname = "cn",
        shortname = "cnet",
        printcolumn = r#"{"name":"NetworkID","type":"string","jsonPath":".spec.NetworkID"}"#,
        printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.NetworkType"}"#,
        printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.Options.cidr"}"#,
        printcolumn = r#"{"name":"Net6","type":"string","jsonPath":".spec.Options.net6","priority":1}"#,
        printcolumn = r#"{"name":"Device","type":"string","jsonPath":".spec.Options.host_device"}"#,
        printcolumn = r#"{"name":"VLAN","type":"integer","jsonPath":".spec.Options.vlan"}"#,
        printcolumn = r#"{"name":"VxLAN","type":"integer","jsonPath":".spec.Options.vxlan"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.ipv4.used"}"#,
        printcolumn = r#"{"name":"Capacity","type":"string","jsonPath":".status.ipv4.capacity"}"#,
        printcolumn = r#"{"name":"Used6","type":"integer","jsonPath":".status.ipv6.used","priority":1}"#,
        printcolumn = r#"{"name":"Capacity6","type":"string","jsonPath":".status.ipv6.capacity","priority":1}"#,
        printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
        printcolumn = r#"{"name":"LinksReady","type":"integer","jsonPath":".status.links.nodesReady","priority":1}"#,
        printcolumn = r#"{"name":"LinksFailing","type":"integer","jsonPath":".status.links.nodesFailing","priority":1}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
pub struct ClusterNetworkSpec {
    /// The network definition.
    #[serde(flatten)]
    pub network: NetworkSpec,
}

/// One pod interface, as DANM records it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "kube", derive(CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "danm.io",
        version = "v1",
        kind = "DanmEp",
        namespaced,
        shortname = "de",
        shortname = "dep",
        printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.Pod"}"#,
        printcolumn = r#"{"name":"Interface","type":"string","jsonPath":".spec.Interface.Name"}"#,
        printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.Interface.Address"}"#,
        printcolumn = r#"{"name":"IPv6","type":"string","jsonPath":".spec.Interface.AddressIPv6"}"#,
        printcolumn = r#"{"name":"Network","type":"string","jsonPath":".spec.NetworkName"}"#,
        printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.apiType","priority":1}"#,
        printcolumn = r#"{"name":"Host","type":"string","jsonPath":".spec.Host"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
pub struct DanmEpSpec {
    /// Name of the network the interface is connected to.
    #[serde(rename = "NetworkName", default)]
    pub network_name: String,
    /// NetworkType of that network.
    #[serde(rename = "NetworkType", default)]
    pub network_type: String,
    /// Unique id of the endpoint.
    #[serde(rename = "EndpointID", default)]
    pub endpoint_id: String,
    /// The interface itself.
    #[serde(rename = "Interface", default)]
    pub interface: DanmEpIface,
    /// Node of the pod.
    #[serde(rename = "Host", default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// Pod name.
    #[serde(rename = "Pod", default)]
    pub pod: String,
    /// Pod UID.
    #[serde(rename = "PodUID", default, skip_serializing_if = "String::is_empty")]
    pub pod_uid: String,
    /// Container (sandbox) id: with the interface name, the owner key of the allocation.
    #[serde(rename = "CID", default, skip_serializing_if = "String::is_empty")]
    pub cid: String,
    /// Network namespace path of the pod.
    #[serde(rename = "netns", default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    /// Kind of the network: `DanmNet`, `TenantNetwork` or `ClusterNetwork`.
    #[serde(rename = "apiType", default)]
    pub api_type: String,
}

/// The interface of a DanmEp.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DanmEpIface {
    /// Interface name inside the pod.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// IPv4 address with prefix, `none` or empty.
    #[serde(rename = "Address", default)]
    pub address: String,
    /// IPv6 address with prefix, `none` or empty.
    #[serde(rename = "AddressIPv6", default)]
    pub address_ipv6: String,
    /// MAC address.
    #[serde(rename = "MacAddress", default)]
    pub mac_address: String,
    /// IPv4 policy-based routes.
    #[serde(default)]
    pub proutes: BTreeMap<String, String>,
    /// IPv6 policy-based routes.
    #[serde(default)]
    pub proutes6: BTreeMap<String, String>,
    /// Device id (SR-IOV and other device networks).
    #[serde(rename = "DeviceID", default, skip_serializing_if = "String::is_empty")]
    pub device_id: String,
}
