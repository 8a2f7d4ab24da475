//! Calico's IPAM in its Kubernetes datastore (`crd.projectcalico.org/v1`, cluster scoped),
//! field for field as Calico's libcalico-go stores it: an [`IPAMBlock`] is one CIDR (a /26
//! by default) with, per address (ordinal), an index into its `attributes` or null; an
//! [`IPAMHandle`] counts, per block CIDR, the addresses one handle (`k8s-pod-network.<container
//! id>` for a pod) holds. Unknown fields are kept (`rest`).

use std::collections::BTreeMap;

#[cfg(feature = "kube")]
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A field Calico may write as `null` (a nil Go slice or map), read as its default.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One block of Calico's addresses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "crd.projectcalico.org",
        version = "v1",
        kind = "IPAMBlock",
        plural = "ipamblocks",
        schema = "disabled"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMBlockSpec {
    /// The block's CIDR, masked (`10.0.0.0/26`).
    pub cidr: String,
    /// `host:<node>` when the block is affine to a node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// Per ordinal: the index of its attribute, or null when free. One entry per address.
    #[serde(default, deserialize_with = "null_as_default")]
    pub allocations: Vec<Option<i64>>,
    /// Free ordinals, in the order they are handed out (front first).
    #[serde(default, deserialize_with = "null_as_default")]
    pub unallocated: Vec<i64>,
    /// Who holds allocations (several ordinals may share one).
    #[serde(default, deserialize_with = "null_as_default")]
    pub attributes: Vec<AllocationAttribute>,
    /// Bumped on every write of the block.
    #[serde(default)]
    pub sequence_number: u64,
    /// Per ordinal (as a decimal string): the sequence number when it was allocated.
    #[serde(default)]
    pub sequence_number_for_allocation: Option<BTreeMap<String, u64>>,
    /// Set before a delete (Calico's two-step delete): such a block is gone.
    #[serde(default)]
    pub deleted: bool,
    /// Deprecated, always written.
    #[serde(default)]
    pub strict_affinity: bool,
    /// Fields this suite does not use.
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

/// The holder of one or more allocations of a block.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocationAttribute {
    /// The handle (`k8s-pod-network.<container id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,
    /// `namespace`, `pod`, `node`, `timestamp`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<BTreeMap<String, String>>,
    /// Fields this suite does not use.
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

/// The addresses one handle holds, counted per block.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "crd.projectcalico.org",
        version = "v1",
        kind = "IPAMHandle",
        plural = "ipamhandles",
        schema = "disabled"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMHandleSpec {
    /// The handle id (the object's name is its lower-case form).
    #[serde(rename = "handleID")]
    pub handle_id: String,
    /// Per block CIDR (`10.0.0.0/26`): how many of its addresses the handle holds.
    #[serde(default, deserialize_with = "null_as_default")]
    pub block: BTreeMap<String, i64>,
    /// Set before a delete (Calico's two-step delete): such a handle is gone.
    #[serde(default)]
    pub deleted: bool,
    /// Fields this suite does not use.
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}
