//! The AllocationShard kind: one slice of one address family of one network.

#[cfg(feature = "kube")]
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One slice of the addresses of one network and family.
///
/// `payload` is base64 of the shard codec's bytes (a serialized roaring bitmap of the
/// allocated offsets followed by one owner fingerprint per allocated offset), and `crc32` is
/// the CRC32 (IEEE) of those bytes. A shard whose CRC does not match is never used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "kube", derive(CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "danm.io",
        version = "v1",
        kind = "AllocationShard",
        namespaced,
        shortname = "ashard",
        shortname = "ash",
        printcolumn = r#"{"name":"Network","type":"string","jsonPath":".spec.network.name"}"#,
        printcolumn = r#"{"name":"Family","type":"string","jsonPath":".spec.family"}"#,
        printcolumn = r#"{"name":"First","type":"string","jsonPath":".spec.first"}"#,
        printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".spec.size"}"#,
        printcolumn = r#"{"name":"Allocated","type":"integer","jsonPath":".spec.allocated"}"#
    )
)]
pub struct AllocationShardSpec {
    /// The network this shard belongs to.
    pub network: ShardNetworkRef,
    /// `IPv4` or `IPv6`.
    pub family: String,
    /// The CIDR the shard layout was computed over (the network's `cidr`, or its IPv6
    /// allocation CIDR). A shard whose layout CIDR no longer matches the network is stale.
    pub cidr: String,
    /// First address covered by the shard.
    pub first: String,
    /// Number of consecutive addresses covered.
    pub size: u32,
    /// Number of allocated addresses (for humans and printer columns; the payload rules).
    pub allocated: u32,
    /// CRC32 (IEEE) of the decoded payload bytes.
    pub crc32: u32,
    /// Base64 of the shard codec bytes.
    pub payload: String,
    /// Writes of this shard so far: every write changes it, so that a write that changes
    /// no address still changes the object (ipamd's renewal of an owner's claim relies on
    /// it; the API server answers a write that changes nothing without a new
    /// resourceVersion).
    #[serde(default)]
    pub revision: u64,
}

/// Reference from a shard to its network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct ShardNetworkRef {
    /// `DanmNet`, `TenantNetwork` or `ClusterNetwork`.
    pub kind: String,
    /// Namespace of the network; empty for a ClusterNetwork.
    #[serde(default)]
    pub namespace: String,
    /// Name of the network.
    pub name: String,
    /// UID of the network object, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}
