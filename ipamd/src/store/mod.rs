//! Where ipamd keeps its state: networks, AllocationShards and endpoint records.
//!
//! The [`Store`] trait offers single-object operations only, with compare-and-swap on a
//! version for shards: exactly what the Kubernetes API offers (resourceVersion), so the
//! allocation engine runs unchanged on every backend. Backends: [`memory`] (tests) and
//! [`file`] (an embedded redb database), both built on the key-value core in [`kv`]. Every
//! backend must pass the conformance suite in `tests/store_conformance.rs`.

pub mod file;
pub mod kube;
pub mod kv;
pub mod memory;
pub mod select;
pub mod summary;
#[cfg(test)]
pub(crate) mod troubled;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use danm_core::layout::shard_name;
use danm_core::{Family, NetworkKey, NetworkKind, OwnerKey};
use danm_crds::{AllocationShardSpec, DanmEpSpec, NetworkSpec};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use summary::EndpointSummary;

/// Opaque version of a stored object (a resourceVersion).
pub type Version = String;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The object changed since the version the caller read (compare-and-swap lost).
    #[error("{0} was modified concurrently (version conflict)")]
    Conflict(String),
    /// The object to create exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The object to update does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The backend failed or cannot be reached; the outcome of a write is unknown.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored record cannot be read.
    #[error("stored record {key} is unreadable: {reason}")]
    Unreadable {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A network as stored: identity, UID and spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkObject {
    /// Identity.
    pub key: NetworkKey,
    /// UID of the object (for owner references).
    #[serde(default)]
    pub uid: String,
    /// The spec.
    pub spec: NetworkSpec,
}

/// Identity of one shard: network, family and index in the layout.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardKey {
    /// The network.
    pub network: NetworkKey,
    /// The family.
    pub family: Family,
    /// The index (see `danm_core::layout`).
    pub index: u128,
}

impl ShardKey {
    /// The AllocationShard object name.
    pub fn name(&self) -> String {
        shard_name(&self.network, self.family, self.index)
    }
}

impl fmt::Display for ShardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AllocationShard {} of {}", self.name(), self.network)
    }
}

/// A stored shard with its version.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredShard {
    /// Identity.
    pub key: ShardKey,
    /// Version for compare-and-swap.
    pub version: Version,
    /// The object's spec.
    pub spec: AllocationShardSpec,
}

/// One pod interface: who holds which addresses on which network (a DanmEp). Its spec
/// agrees with `owner` and `network` (`CID`, `Interface.Name`, `NetworkName`, `apiType`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// The owner key.
    pub owner: OwnerKey,
    /// The network.
    pub network: NetworkKey,
    /// Namespace of the pod (where the DanmEp lives).
    pub namespace: String,
    /// The DanmEp spec (addresses with prefix in `Interface.Address`/`AddressIPv6`).
    pub spec: DanmEpSpec,
}

impl EndpointRecord {
    /// The addresses the record names (`Interface.Address`, then `AddressIPv6`), without
    /// their prefix lengths; text that is no address is skipped.
    pub fn addresses(&self) -> impl Iterator<Item = std::net::IpAddr> + '_ {
        [
            &self.spec.interface.address,
            &self.spec.interface.address_ipv6,
        ]
        .into_iter()
        .filter_map(|text| danm_core::addr::parse_addr_lenient(text).ok())
    }
}

/// What the API says of a pod: its UID, node and `danm.io/interfaces` annotation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// UID.
    pub uid: String,
    /// `spec.nodeName` (empty while unscheduled).
    pub node_name: String,
    /// The annotation, if the pod has one.
    pub interfaces: Option<String>,
}

/// What changed in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreEvent {
    /// A network was created, changed or deleted.
    Network(NetworkKey),
    /// A shard was written.
    Shard(ShardKey),
    /// An endpoint was written or deleted.
    Endpoint(OwnerKey),
}

/// The state ipamd keeps. Single-object operations; shards are compare-and-swap.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Human-readable description (`memory`, `file:/var/lib/danm/ipam.redb`).
    fn describe(&self) -> String;

    /// Every network.
    async fn list_networks(&self) -> StoreResult<Vec<NetworkObject>>;
    /// One network.
    async fn get_network(&self, key: &NetworkKey) -> StoreResult<Option<NetworkObject>>;
    /// Creates or replaces a network.
    async fn put_network(&self, network: NetworkObject) -> StoreResult<()>;
    /// Deletes a network and its shards; false when it did not exist.
    async fn delete_network(&self, key: &NetworkKey) -> StoreResult<bool>;

    /// One shard.
    async fn get_shard(&self, key: &ShardKey) -> StoreResult<Option<StoredShard>>;
    /// Every shard of a network.
    async fn list_shards(&self, network: &NetworkKey) -> StoreResult<Vec<StoredShard>>;
    /// Creates a shard; [`StoreError::AlreadyExists`] when it exists.
    async fn create_shard(&self, key: &ShardKey, spec: AllocationShardSpec)
    -> StoreResult<Version>;
    /// Replaces a shard if its version is still `expected`; [`StoreError::Conflict`] if not.
    async fn update_shard(
        &self,
        key: &ShardKey,
        spec: AllocationShardSpec,
        expected: &Version,
    ) -> StoreResult<Version>;

    /// Creates an endpoint record; [`StoreError::AlreadyExists`] when the owner has one.
    async fn create_endpoint(&self, record: EndpointRecord) -> StoreResult<()>;
    /// The endpoint record of an owner. `namespace` is the pod's namespace when the caller
    /// knows it: a store that keeps records per namespace (the Kubernetes API) then reads one
    /// object instead of searching every namespace.
    async fn get_endpoint(
        &self,
        owner: &OwnerKey,
        namespace: Option<&str>,
    ) -> StoreResult<Option<EndpointRecord>>;
    /// Whether the owner may have an endpoint record, answered without a request where the
    /// store can (the Kubernetes store, from its watch-fed cache): `false` spares the read
    /// of a record that is not there on the common path of an Allocate. Only a hint: the
    /// cache may lag behind a record just written, so a caller that acts on `false` still
    /// creates the record with [`Store::create_endpoint`], whose `AlreadyExists` tells it
    /// the truth. `true` when the store cannot tell without reading.
    async fn may_have_endpoint(&self, owner: &OwnerKey, namespace: Option<&str>) -> bool {
        let _ = (owner, namespace);
        true
    }
    /// Deletes an owner's endpoint record; false when there was none. `namespace` as for
    /// [`Store::get_endpoint`].
    async fn delete_endpoint(&self, owner: &OwnerKey, namespace: Option<&str>)
    -> StoreResult<bool>;
    /// What the store knows of every endpoint record: keys, node and addresses. A store may
    /// answer from a watch-fed cache that lags behind other writers (the Kubernetes store
    /// does): use it to find candidates, and read a record afresh ([`Store::get_endpoint`])
    /// before deciding anything on it.
    async fn list_endpoints(&self) -> StoreResult<Vec<Arc<EndpointSummary>>>;
    /// What the store knows of the records of one container, as [`Store::list_endpoints`]
    /// (this replica's own writes are always in it). `namespace` is the pod's namespace
    /// when the caller knows it.
    async fn summaries_of_container(
        &self,
        container_id: &str,
        namespace: Option<&str>,
    ) -> StoreResult<Vec<Arc<EndpointSummary>>> {
        let _ = namespace;
        let mut all = self.list_endpoints().await?;
        all.retain(|s| s.is_of_container(container_id));
        Ok(all)
    }
    /// The whole endpoint records of one container, read from the store; found as
    /// [`Store::summaries_of_container`] finds them.
    async fn endpoints_of_container(
        &self,
        container_id: &str,
        namespace: Option<&str>,
    ) -> StoreResult<Vec<EndpointRecord>>;
    /// What the store knows of the records whose owner has `fingerprint`, read afresh:
    /// every record written before the call is in the answer (what the orphan reclaimer
    /// decides on).
    async fn endpoints_with_fingerprint(
        &self,
        fingerprint: u64,
    ) -> StoreResult<Vec<Arc<EndpointSummary>>> {
        let mut all = self.list_endpoints().await?;
        all.retain(|s| s.owner().fingerprint() == fingerprint);
        Ok(all)
    }
    /// Every whole endpoint record (of `network`, if given), read from the store: the
    /// operator's listing (ListAllocations), never a request's path.
    async fn read_endpoints(
        &self,
        network: Option<&NetworkKey>,
    ) -> StoreResult<Vec<EndpointRecord>>;

    /// Whether the store can serve now (reachable, caches filled).
    async fn ready(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Change notifications (best effort: a lagging receiver must re-list).
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent>;

    /// A pod, for stores that can read pods (the Kubernetes API): `Ok(None)` when the store
    /// has no pods (the embedded stores: the caller supplies the interface list),
    /// [`StoreError::NotFound`] when it has pods but not this one.
    async fn pod(&self, namespace: &str, name: &str) -> StoreResult<Option<PodInfo>> {
        let _ = (namespace, name);
        Ok(None)
    }
}

/// The storage key of a network: `kind/namespace/name`.
pub fn network_storage_key(key: &NetworkKey) -> String {
    format!("{}/{}/{}", key.kind.as_str(), key.namespace, key.name)
}

/// The storage key of a shard: `kind/namespace/name/family/index` (index as 32 hex digits,
/// so keys sort by index).
pub fn shard_storage_key(key: &ShardKey) -> String {
    format!(
        "{}/{}/{:032x}",
        network_storage_key(&key.network),
        key.family.tag(),
        key.index
    )
}

/// Parses a shard storage key back.
pub fn parse_shard_storage_key(text: &str) -> Option<ShardKey> {
    let mut parts = text.split('/');
    let kind = NetworkKind::parse(parts.next()?)?;
    let namespace = parts.next()?;
    let name = parts.next()?;
    let family = match parts.next()? {
        "v4" => Family::V4,
        "v6" => Family::V6,
        _ => return None,
    };
    let index = u128::from_str_radix(parts.next()?, 16).ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(ShardKey {
        network: NetworkKey::new(kind, namespace, name),
        family,
        index,
    })
}
