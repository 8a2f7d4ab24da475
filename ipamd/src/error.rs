//! What can go wrong in the engine, as one typed error. The gRPC layer
//! ([`crate::wire::status`]) maps each variant to a status code a caller can act on.

use danm_core::network::NetworkError;
use danm_core::owner::OwnerError;
use danm_core::{AllocError, NetworkKey};

use crate::store::StoreError;

/// Why an engine operation failed. The gRPC layer maps each variant to a status code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// No such network.
    #[error("{0} not found")]
    NetworkNotFound(NetworkKey),
    /// The network exists but its spec is invalid.
    #[error(transparent)]
    NetworkInvalid(#[from] NetworkError),
    /// The owner key is malformed.
    #[error(transparent)]
    Owner(#[from] OwnerError),
    /// The allocation request was refused.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// The pod's interface list is malformed.
    #[error(transparent)]
    Interfaces(#[from] danm_core::interfaces::InterfacesError),
    /// A ClusterNetwork does not allow the pod's namespace.
    #[error("namespace {namespace} is not in the AllowedTenants of {network}")]
    TenantNotAllowed {
        /// The pod's namespace.
        namespace: String,
        /// The network.
        network: String,
    },
    /// The pod to attach does not exist (Kubernetes store).
    #[error("{0} not found")]
    PodNotFound(String),
    /// The owner key (container id and interface) is recorded for another pod.
    #[error("owner {owner} is held by pod {pod}, not by the pod asking")]
    OwnerOfAnotherPod {
        /// The owner key.
        owner: String,
        /// `namespace/name` of the pod holding it.
        pod: String,
    },
    /// Node authorization: the caller's node is not the pod's.
    #[error("node {caller} may not attach pod {pod}: it is bound to {}", bound.as_deref().map_or("no node this store can tell".to_owned(), |b| format!("{b:?}")))]
    PodOnOtherNode {
        /// `namespace/name`.
        pod: String,
        /// The caller's node.
        caller: String,
        /// The pod's `spec.nodeName`, when the store reads pods.
        bound: Option<String>,
    },
    /// A pod's annotation asks for more interfaces than one pod may have.
    #[error(
        "annotation danm.io/interfaces asks for {count} interfaces; a pod may have at most {limit} (ipamd --max-interfaces-per-pod)"
    )]
    TooManyInterfaces {
        /// Connections asked.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Two connections of one pod would get the same interface name.
    #[error(
        "annotation danm.io/interfaces: interfaces[{first}] and interfaces[{second}] would both be named {ifname} (two networks with the same container_prefix and the legacy naming scheme?)"
    )]
    DuplicateInterface {
        /// The first connection.
        first: usize,
        /// The second one.
        second: usize,
        /// The name.
        ifname: String,
    },
    /// Two connections of one pod ask for the same static address on one network.
    #[error(
        "annotation danm.io/interfaces: interfaces[{first}] and interfaces[{second}] both ask for {address} on {network}"
    )]
    DuplicateAddress {
        /// The first connection.
        first: usize,
        /// The second one.
        second: usize,
        /// The address.
        address: std::net::IpAddr,
        /// The network.
        network: String,
    },
    /// No default network exists for a pod without an interface list.
    #[error(
        "pod in namespace {0} asks for no network and no default network exists (DanmNet or TenantNetwork \"default\" in its namespace, or ClusterNetwork \"default\")"
    )]
    NoDefaultNetwork(String),
    /// The owner already holds an allocation on another network.
    #[error("owner {owner} already holds an allocation on {network}")]
    OwnerElsewhere {
        /// The owner.
        owner: String,
        /// Where it holds it.
        network: String,
    },
    /// Check: the owner has no endpoint record.
    #[error("owner {0} holds nothing")]
    NotAllocated(String),
    /// Check: the owner's state differs from what the caller expects.
    #[error("{0}")]
    CheckFailed(String),
    /// One interface of an Attach failed (everything the Attach took was given back).
    #[error("interface no. {index} ({network}): {source}")]
    Attach {
        /// Index of the connection.
        index: usize,
        /// The network.
        network: String,
        /// What went wrong.
        #[source]
        source: Box<EngineError>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A request could not be committed after many rounds.
    #[error("{network}: gave up after {attempts} attempts{}", last.as_ref().map(|l| format!(" (last store error: {l})")).unwrap_or_default())]
    Contention {
        /// The network.
        network: String,
        /// Rounds tried.
        attempts: u32,
        /// The last store error seen.
        last: Option<String>,
    },
    /// The network is being migrated from DANM's bit arrays; retry shortly.
    #[error("{0} is being migrated from DANM's allocation bit arrays into shards; retry shortly")]
    Migrating(String),
    /// A DANM bit array cannot be read.
    #[error(transparent)]
    BitArrays(#[from] danm_core::migrate::MigrateError),
    /// Migrating the network from DANM's bit arrays failed: it is not served.
    #[error("{network}: migration from DANM's bit arrays failed: {cause}")]
    Migration {
        /// The network.
        network: String,
        /// Why.
        #[source]
        cause: Box<EngineError>,
    },
    /// The engine is shutting down.
    #[error("ipamd is shutting down")]
    ShuttingDown,
}
