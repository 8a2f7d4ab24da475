//! The label and annotation names that more than one component writes or reads on pods,
//! networks, DanmEps and AllocationShards: the wire contract between ipamd, the webhook, the
//! cleaner, the watchers and `showalloc`, in one place. Names one component keeps to itself
//! stay with it: svcwatcher's Service annotations and `managed-by` value
//! (`danm_core::services`, `watchers/src/svcwatcher`), danm-certs' CA annotations
//! (`danm_certs`). The gRPC request-id header is in `danm_proto::client`.

/// The pod annotation that lists a pod's network connections.
pub const INTERFACES_ANNOTATION: &str = "danm.io/interfaces";

/// On DanmEps and AllocationShards (ipamd): the network's kind.
pub const NETWORK_KIND_LABEL: &str = "danm.io/network-kind";
/// On DanmEps and AllocationShards (ipamd): the network's namespace (a DanmEp is in its
/// pod's namespace, which an `Allocate` call may choose apart from the network's).
pub const NETWORK_NAMESPACE_LABEL: &str = "danm.io/network-namespace";
/// On DanmEps and AllocationShards (ipamd): the network's name.
pub const NETWORK_NAME_LABEL: &str = "danm.io/network-name";
/// On AllocationShards (ipamd): the address family, `v4` or `v6`.
pub const FAMILY_LABEL: &str = "danm.io/family";
/// On AllocationShards (ipamd): the shard's index in its family, in hexadecimal.
pub const SHARD_INDEX_ANNOTATION: &str = "danm.io/shard-index";
/// On DanmEps (ipamd): the container id of its owner.
pub const CONTAINER_ID_LABEL: &str = "danm.io/container-id";
/// On DanmEps (ipamd): the fingerprint of its owner key (namespace, pod, UID, interface).
pub const OWNER_FINGERPRINT_LABEL: &str = "danm.io/owner-fingerprint";
/// On AllocationShards (ipamd): the network, as `Kind/namespace/name`.
pub const NETWORK_ANNOTATION: &str = "danm.io/network";

/// On TenantNetworks (the webhook): the VLAN or VxLAN id reservation a CREATE was given,
/// until the TenantConfig records it.
pub const VNI_RESERVATION_ANNOTATION: &str = "danm.io/vni-reservation";
