//! The allocation engine: networks, owners and endpoint records around the per-network
//! workers of [`crate::worker`].
//!
//! An allocation is tied to its owner twice: the shard stores the owner's fingerprint
//! beside the address (the proof of ownership: only that owner can free it), and an
//! endpoint record (DanmEp) named after the owner key stores the addresses (so a retry finds
//! them). Order of writes:
//!
//! * Allocate: look up the owner's record (a retry returns what it holds); else take the
//!   addresses in the shards, then create the record. If the record already exists by then
//!   (a concurrent retry won), give back what was just taken and return the winner's.
//! * Release: read the record, free the addresses in the shards (only where the owner's
//!   fingerprint still stands), then delete the record. A stale or repeated release finds no
//!   record, or finds addresses now held by another fingerprint, and frees nothing.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use danm_core::interfaces::{Connection, NamingScheme, interface_name, parse_annotation};
use danm_core::network::{NetworkError, is_dynamic_backend, plan};
use danm_core::owner::OwnerError;
use danm_core::{
    AddressRequest, AllocError, Family, NetworkKey, NetworkKind, NetworkPlan, OwnerKey,
};
use danm_crds::{DanmEpIface, DanmEpSpec};
use tokio::sync::{mpsc, oneshot};

use crate::store::{EndpointRecord, NetworkObject, Store, StoreError, StoreEvent};
use crate::worker::{self, Held, Job, WorkerConfig};

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
    /// Migrating the network from DANM's bit arrays failed.
    #[error("migration from DANM failed: {0}")]
    Migration(String),
    /// The engine is shutting down.
    #[error("ipamd is shutting down")]
    ShuttingDown,
}

/// Counters of the engine (exposed by Status and logs).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Shard writes attempted.
    pub shard_writes: AtomicU64,
    /// Shard writes that lost a compare-and-swap.
    pub conflicts: AtomicU64,
    /// Requests carried over to another round.
    pub retries: AtomicU64,
    /// Rounds (group commits) run.
    pub rounds: AtomicU64,
    /// Shards refused because their payload is corrupt.
    pub corrupt_shards: AtomicU64,
    /// Addresses handed out.
    pub allocations: AtomicU64,
}

/// Who asks: the owner key plus what is recorded about the pod.
#[derive(Clone, Debug, Default)]
pub struct OwnerInfo {
    /// Container (sandbox) id.
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod UID.
    pub pod_uid: String,
    /// Netns path.
    pub netns: String,
    /// Node.
    pub host: String,
}

/// Addresses given to one owner on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// IPv4 with prefix, `none`, or empty.
    pub ip: String,
    /// IPv6 with prefix, `none`, or empty.
    pub ip6: String,
}

/// One interface of an attached pod.
#[derive(Clone, Debug)]
pub struct PlannedInterface {
    /// Position in the pod's list.
    pub sequence: usize,
    /// Interface name.
    pub ifname: String,
    /// The network plan.
    pub network: Arc<NetworkPlan>,
    /// The connection as asked.
    pub connection: Connection,
    /// What was allocated.
    pub addresses: Addresses,
}

/// Everything Attach needs.
#[derive(Clone, Debug, Default)]
pub struct AttachInput {
    /// The pod (container id, namespace, name, uid, netns, host; ifname unused).
    pub pod: OwnerInfo,
    /// The danm.io/interfaces annotation.
    pub interfaces_json: String,
    /// Naming scheme.
    pub naming: NamingScheme,
}

/// One allocated address as listed.
#[derive(Clone, Debug)]
pub struct ListedAllocation {
    /// The network.
    pub network: NetworkKey,
    /// The address.
    pub address: IpAddr,
    /// Owner fingerprint stored in the shard.
    pub fingerprint: u64,
    /// The endpoint record naming this address, when there is one.
    pub endpoint: Option<EndpointRecord>,
}

struct NetworkRuntime {
    plan: Arc<NetworkPlan>,
    queue: mpsc::UnboundedSender<Job>,
}

/// The allocation engine.
pub struct Engine {
    store: Arc<dyn Store>,
    networks: RwLock<HashMap<NetworkKey, NetworkRuntime>>,
    invalid: RwLock<HashMap<NetworkKey, NetworkError>>,
    /// Per-owner locks, by owner fingerprint (what the orphan reclaimer knows).
    owner_locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// Orphans seen (network, family, offset, fingerprint) and when first seen.
    orphans_seen: Mutex<HashMap<(NetworkKey, Family, u128, u64), std::time::Instant>>,
    /// Networks whose DANM bit arrays are being moved into shards.
    migrating: Mutex<HashSet<NetworkKey>>,
    /// Networks whose migration failed, with why.
    migration_failed: Mutex<HashMap<NetworkKey, String>>,
    config: WorkerConfig,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store.describe())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts an engine on a store: loads every network and follows network changes.
    pub async fn start(
        store: Arc<dyn Store>,
        config: WorkerConfig,
    ) -> Result<Arc<Engine>, EngineError> {
        let engine = Arc::new(Engine {
            store: Arc::clone(&store),
            networks: RwLock::default(),
            invalid: RwLock::default(),
            owner_locks: Mutex::default(),
            orphans_seen: Mutex::default(),
            migrating: Mutex::default(),
            migration_failed: Mutex::default(),
            config,
            metrics: Arc::default(),
        });
        let mut events = store.subscribe();
        for net in store.list_networks().await? {
            engine.apply_network(Some(net));
        }
        let weak = Arc::downgrade(&engine);
        tokio::spawn(async move {
            loop {
                let event = events.recv().await;
                let Some(engine) = weak.upgrade() else { return };
                match event {
                    Ok(StoreEvent::Network(key)) => match engine.store.get_network(&key).await {
                        Ok(Some(net)) => engine.apply_network(Some(net)),
                        Ok(None) => engine.forget_network(&key),
                        Err(e) => {
                            tracing::warn!(network = %key, error = %e, "cannot read changed network")
                        }
                    },
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        match engine.store.list_networks().await {
                            Ok(nets) => {
                                nets.into_iter().for_each(|n| engine.apply_network(Some(n)))
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot re-list networks"),
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(engine)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn apply_network(self: &Arc<Self>, net: Option<NetworkObject>) {
        let Some(net) = net else { return };
        match plan(net.key.clone(), &net.spec) {
            Ok(p) if has_legacy_arrays(&p) => {
                // Not served until its DANM allocations are in shards.
                self.networks.write().expect("lock").remove(&net.key);
                if self.migrating.lock().expect("lock").insert(net.key.clone()) {
                    let engine = Arc::clone(self);
                    tokio::spawn(async move { engine.migrate(net, Arc::new(p)).await });
                }
            }
            Ok(p) => {
                let p = Arc::new(p);
                self.invalid.write().expect("lock").remove(&net.key);
                self.migration_failed.lock().expect("lock").remove(&net.key);
                let mut nets = self.networks.write().expect("lock");
                match nets.get_mut(&net.key) {
                    Some(rt) if *rt.plan == *p => {}
                    Some(rt) => {
                        let _ = rt.queue.send(Job::Replan(Arc::clone(&p)));
                        rt.plan = p;
                    }
                    None => {
                        tracing::info!(network = %net.key, "serving network");
                        let queue = worker::spawn(
                            Arc::clone(&p),
                            net.uid.clone(),
                            Arc::clone(&self.store),
                            Arc::clone(&self.metrics),
                            self.config.clone(),
                        );
                        nets.insert(net.key.clone(), NetworkRuntime { plan: p, queue });
                    }
                }
            }
            Err(e) => {
                tracing::error!(network = %net.key, error = %e, "network refused");
                self.networks.write().expect("lock").remove(&net.key);
                self.invalid.write().expect("lock").insert(net.key, e);
            }
        }
    }

    fn forget_network(&self, key: &NetworkKey) {
        tracing::info!(network = %key, "network deleted");
        self.networks.write().expect("lock").remove(key);
        self.invalid.write().expect("lock").remove(key);
    }

    /// Moves a DANM network's `alloc`/`alloc6` allocations into shards, then clears those
    /// fields (only after every shard write landed). Each address goes to the owner whose
    /// endpoint record names it, else to a deterministic legacy owner, so a re-run after a
    /// crash, or by another replica, finds them already in place.
    async fn migrate(self: Arc<Self>, net: NetworkObject, plan: Arc<NetworkPlan>) {
        let key = net.key.clone();
        let result = self.migrate_once(&net, &plan).await;
        self.migrating.lock().expect("lock").remove(&key);
        match result {
            Ok(count) => {
                tracing::info!(network = %key, count, "DANM allocations migrated into shards");
            }
            Err(e) => {
                tracing::error!(network = %key, error = %e, "migration from DANM failed; the network stays unserved");
                self.migration_failed
                    .lock()
                    .expect("lock")
                    .insert(key, e.to_string());
            }
        }
    }

    async fn migrate_once(
        &self,
        net: &NetworkObject,
        plan: &Arc<NetworkPlan>,
    ) -> Result<usize, EngineError> {
        let legacy = danm_core::migrate::legacy_allocations(plan)
            .map_err(|e| EngineError::Migration(e.to_string()))?;
        let mut owners: HashMap<(Family, u128), u64> = HashMap::new();
        for record in self.store.list_endpoints().await? {
            if record.network == plan.key {
                for at in offsets_in(plan, &record) {
                    owners.insert(at, record.owner.fingerprint());
                }
            }
        }
        let queue = worker::spawn(
            Arc::clone(plan),
            net.uid.clone(),
            Arc::clone(&self.store),
            Arc::clone(&self.metrics),
            self.config.clone(),
        );
        let mut answers = Vec::new();
        for &(family, offset) in &legacy {
            let fp = plan
                .family(family)
                .expect("legacy_allocations checked the family");
            let ip = fp.cidr.addr_at(offset).expect("offset in cidr");
            let fingerprint = owners.get(&(family, offset)).copied().unwrap_or_else(|| {
                OwnerKey::new(&format!("danm-migrated-{ip}"), "legacy")
                    .expect("valid key")
                    .fingerprint()
            });
            let mut requests = [AddressRequest::Skip, AddressRequest::Skip];
            requests[if family == Family::V4 { 0 } else { 1 }] = AddressRequest::Static(ip);
            let (reply, answer) = oneshot::channel();
            queue
                .send(Job::Allocate {
                    fingerprint,
                    requests,
                    reply,
                })
                .map_err(|_| EngineError::ShuttingDown)?;
            answers.push((ip, answer));
        }
        for (ip, answer) in answers {
            match answer.await.map_err(|_| EngineError::ShuttingDown)? {
                Ok(_) => {}
                // Already held by another owner in the shards: the shards win, say so.
                Err(EngineError::Alloc(AllocError::InUse { .. })) => {
                    tracing::warn!(network = %plan.key, address = %ip, "DANM marks this address allocated but the shards give it to another owner; kept as the shards say");
                }
                Err(e) => return Err(e),
            }
        }
        drop(queue);
        let mut cleared = net.clone();
        cleared.spec.options.alloc = None;
        cleared.spec.options.alloc6 = None;
        self.store.put_network(cleared).await?;
        Ok(legacy.len())
    }

    /// The plan of a network.
    pub fn network(&self, key: &NetworkKey) -> Result<Arc<NetworkPlan>, EngineError> {
        if let Some(rt) = self.networks.read().expect("lock").get(key) {
            return Ok(Arc::clone(&rt.plan));
        }
        if self.migrating.lock().expect("lock").contains(key) {
            return Err(EngineError::Migrating(key.to_string()));
        }
        if let Some(e) = self.migration_failed.lock().expect("lock").get(key) {
            return Err(EngineError::Migration(format!("{key}: {e}")));
        }
        if let Some(e) = self.invalid.read().expect("lock").get(key) {
            return Err(EngineError::NetworkInvalid(e.clone()));
        }
        Err(EngineError::NetworkNotFound(key.clone()))
    }

    /// Every valid network.
    pub fn networks(&self) -> Vec<Arc<NetworkPlan>> {
        let mut v: Vec<_> = self
            .networks
            .read()
            .expect("lock")
            .values()
            .map(|rt| Arc::clone(&rt.plan))
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    fn queue(&self, key: &NetworkKey) -> Result<mpsc::UnboundedSender<Job>, EngineError> {
        self.networks
            .read()
            .expect("lock")
            .get(key)
            .map(|rt| rt.queue.clone())
            .ok_or_else(|| EngineError::NetworkNotFound(key.clone()))
    }

    fn owner_lock(&self, owner: &OwnerKey) -> Arc<tokio::sync::Mutex<()>> {
        self.fingerprint_lock(owner.fingerprint())
    }

    fn fingerprint_lock(&self, fingerprint: u64) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.owner_locks.lock().expect("lock");
        if locks.len() > 4096 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        Arc::clone(locks.entry(fingerprint).or_default())
    }

    /// Frees addresses held by a fingerprint that no endpoint record names, once they have
    /// been seen so for at least `grace` (an allocation between its shard write and its
    /// record write looks the same for a moment). This is what a crash between those two
    /// writes leaves behind; the fingerprint check keeps it from ever freeing an address of
    /// another owner. Returns what was freed.
    pub async fn reclaim_orphans(
        &self,
        grace: std::time::Duration,
    ) -> Result<Vec<String>, EngineError> {
        let listed = self.list_allocations(None).await?;
        let now = std::time::Instant::now();
        let mut due = Vec::new();
        {
            let mut seen = self.orphans_seen.lock().expect("lock");
            let mut current = HashMap::new();
            for l in listed.iter().filter(|l| l.endpoint.is_none()) {
                let Ok(plan) = self.network(&l.network) else {
                    continue;
                };
                let family = Family::of(&l.address);
                let Some(offset) = plan
                    .family(family)
                    .and_then(|f| f.cidr.offset_of(l.address))
                else {
                    continue;
                };
                let key = (l.network.clone(), family, offset, l.fingerprint);
                let first = seen.get(&key).copied().unwrap_or(now);
                if now.duration_since(first) >= grace {
                    due.push(key.clone());
                }
                current.insert(key, first);
            }
            *seen = current;
        }
        let mut freed = Vec::new();
        for (network, family, offset, fingerprint) in due {
            let lock = self.fingerprint_lock(fingerprint);
            let _guard = lock.lock().await;
            // Under the owner's lock: a record written since the scan wins.
            let named = self.store.list_endpoints().await?.into_iter().any(|r| {
                r.network == network
                    && r.owner.fingerprint() == fingerprint
                    && recorded_offsets(self, &r).contains(&(family, offset))
            });
            if named {
                continue;
            }
            let done = self
                .submit_release(&network, fingerprint, vec![(family, offset)])
                .await?;
            let plan = self.network(&network)?;
            for (f, o) in done {
                if let Some(a) = plan.family(f).and_then(|fp| fp.cidr.addr_at(o)) {
                    tracing::warn!(network = %network, address = %a, fingerprint = format!("{fingerprint:016x}"), "reclaimed an address no endpoint record names");
                    freed.push(a.to_string());
                }
            }
            self.orphans_seen
                .lock()
                .expect("lock")
                .remove(&(network, family, offset, fingerprint));
        }
        Ok(freed)
    }

    /// Allocates on one network for one owner. Idempotent on the owner key.
    pub async fn allocate(
        &self,
        network: &NetworkKey,
        owner: &OwnerInfo,
        ip: &str,
        ip6: &str,
    ) -> Result<Addresses, EngineError> {
        let key = OwnerKey::new(&owner.container_id, &owner.ifname)?;
        let plan = self.network(network)?;
        let requests = [
            AddressRequest::parse("ip", ip, Family::V4)?,
            AddressRequest::parse("ip6", ip6, Family::V6)?,
        ];
        self.allocate_parsed(&plan, &key, owner, requests).await
    }

    async fn allocate_parsed(
        &self,
        plan: &Arc<NetworkPlan>,
        key: &OwnerKey,
        owner: &OwnerInfo,
        requests: [AddressRequest; 2],
    ) -> Result<Addresses, EngineError> {
        for (family, request) in [(Family::V4, requests[0]), (Family::V6, requests[1])] {
            if request.needs_address() && plan.family(family).is_none() {
                return Err(AllocError::NoSubnet {
                    network: plan.key.to_string(),
                    family,
                }
                .into());
            }
            if let (AddressRequest::Static(ip), Some(fp)) = (request, plan.family(family)) {
                danm_core::policy::check_static(&plan.key.to_string(), fp, ip)?;
            }
        }
        let namespace = Some(owner.pod_namespace.as_str()).filter(|n| !n.is_empty());
        let lock = self.owner_lock(key);
        let _guard = lock.lock().await;
        if let Some(existing) = self.store.get_endpoint(key, namespace).await? {
            return existing_addresses(&existing, &plan.key, key);
        }
        let held = self
            .submit_allocate(&plan.key, key.fingerprint(), requests)
            .await?;
        let addresses = format_addresses(plan, &requests, &held);
        let record = endpoint_record(plan, key, owner, &addresses);
        match self.store.create_endpoint(record).await {
            Ok(()) => {
                self.metrics.allocations.fetch_add(
                    held.iter().filter(|h| h.is_some()).count() as u64,
                    Ordering::Relaxed,
                );
                tracing::info!(network = %plan.key, owner = %key, ip = %addresses.ip, ip6 = %addresses.ip6, "allocated");
                Ok(addresses)
            }
            Err(StoreError::AlreadyExists(_)) => {
                // Either our own create landed and its answer was lost (the client retried
                // it), or a concurrent retry of this owner won. Keep what the record names;
                // give back what we hold only if the record names something else.
                let existing = self
                    .store
                    .get_endpoint(key, namespace)
                    .await?
                    .ok_or_else(|| EngineError::NotAllocated(key.to_string()))?;
                let theirs = existing_addresses(&existing, &plan.key, key)?;
                if theirs != addresses {
                    self.give_back(&plan.key, key, &held).await;
                }
                Ok(theirs)
            }
            Err(e) => {
                // The outcome is unknown (a timeout may have landed): look before giving
                // back, or a retry would find a record naming freed addresses.
                match self.store.get_endpoint(key, namespace).await {
                    Ok(Some(existing)) => {
                        let theirs = existing_addresses(&existing, &plan.key, key)?;
                        if theirs == addresses {
                            return Ok(addresses);
                        }
                        self.give_back(&plan.key, key, &held).await;
                    }
                    Ok(None) => self.give_back(&plan.key, key, &held).await,
                    Err(read) => tracing::warn!(
                        owner = %key, error = %read,
                        "cannot tell whether the endpoint record was written: addresses kept for the orphan reclaimer to judge"
                    ),
                }
                Err(e.into())
            }
        }
    }

    async fn submit_allocate(
        &self,
        network: &NetworkKey,
        fingerprint: u64,
        requests: [AddressRequest; 2],
    ) -> Result<Held, EngineError> {
        if !requests.iter().any(AddressRequest::needs_address) {
            return Ok([None, None]);
        }
        let (reply, answer) = oneshot::channel();
        self.queue(network)?
            .send(Job::Allocate {
                fingerprint,
                requests,
                reply,
            })
            .map_err(|_| EngineError::ShuttingDown)?;
        answer.await.map_err(|_| EngineError::ShuttingDown)?
    }

    async fn submit_release(
        &self,
        network: &NetworkKey,
        fingerprint: u64,
        addresses: Vec<(Family, u128)>,
    ) -> Result<Vec<(Family, u128)>, EngineError> {
        if addresses.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.queue(network)?
            .send(Job::Release {
                fingerprint,
                addresses,
                reply,
            })
            .map_err(|_| EngineError::ShuttingDown)?;
        answer.await.map_err(|_| EngineError::ShuttingDown)?
    }

    async fn give_back(&self, network: &NetworkKey, owner: &OwnerKey, held: &Held) {
        let addresses: Vec<(Family, u128)> = [Family::V4, Family::V6]
            .into_iter()
            .zip(held.iter())
            .filter_map(|(f, h)| h.map(|o| (f, o)))
            .collect();
        if let Err(e) = self
            .submit_release(network, owner.fingerprint(), addresses)
            .await
        {
            tracing::error!(network = %network, owner = %owner, error = %e, "could not give back addresses; garbage collection will");
        }
    }

    /// Releases what an owner holds on a network. Idempotent; returns what was freed.
    /// `namespace` is the pod's, when known (see [`Store::get_endpoint`]).
    pub async fn release(
        &self,
        network: &NetworkKey,
        owner: &OwnerKey,
        namespace: Option<&str>,
    ) -> Result<Vec<String>, EngineError> {
        let lock = self.owner_lock(owner);
        let _guard = lock.lock().await;
        let Some(record) = self.store.get_endpoint(owner, namespace).await? else {
            return Ok(Vec::new());
        };
        if &record.network != network {
            tracing::warn!(owner = %owner, asked = %network, holds = %record.network, "release for another network than the owner's: nothing freed");
            return Ok(Vec::new());
        }
        self.release_record(&record).await
    }

    async fn release_record(&self, record: &EndpointRecord) -> Result<Vec<String>, EngineError> {
        let addresses = recorded_offsets(self, record);
        let mut freed = Vec::new();
        if !addresses.is_empty() {
            match self
                .submit_release(&record.network, record.owner.fingerprint(), addresses)
                .await
            {
                Ok(done) => {
                    let plan = self.network(&record.network)?;
                    freed = done
                        .into_iter()
                        .filter_map(|(f, o)| plan.family(f).and_then(|fp| fp.cidr.addr_at(o)))
                        .map(|a| a.to_string())
                        .collect();
                }
                // The network is gone (its shards with it): only the record is left.
                Err(EngineError::NetworkNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.store
            .delete_endpoint(&record.owner, Some(&record.namespace))
            .await?;
        tracing::info!(network = %record.network, owner = %record.owner, ?freed, "released");
        Ok(freed)
    }

    /// Resolves a pod's interfaces, allocates every address and records every interface.
    /// All or nothing.
    pub async fn attach(&self, input: &AttachInput) -> Result<Vec<PlannedInterface>, EngineError> {
        let pod = &input.pod;
        if pod.container_id.is_empty() {
            return Err(OwnerError::Empty("container_id").into());
        }
        // With an API server, the pod's own annotation is the truth; without one, the
        // caller sends the interface list.
        let (interfaces, pod_uid) = match self.store.pod(&pod.pod_namespace, &pod.pod_name).await {
            Ok(Some(info)) => (info.interfaces.unwrap_or_default(), info.uid),
            Ok(None) => (input.interfaces_json.clone(), pod.pod_uid.clone()),
            Err(StoreError::NotFound(what)) => return Err(EngineError::PodNotFound(what)),
            Err(e) => return Err(e.into()),
        };
        let pod = &OwnerInfo {
            pod_uid: if pod_uid.is_empty() {
                pod.pod_uid.clone()
            } else {
                pod_uid
            },
            ..pod.clone()
        };
        let mut connections = parse_annotation(&interfaces, &pod.pod_namespace)?;
        if connections.is_empty() {
            let default = self.default_network(&pod.pod_namespace)?;
            connections.push(Connection {
                sequence: 0,
                network: default,
                ip: AddressRequest::Dynamic,
                ip6: AddressRequest::Skip,
                proutes: Default::default(),
                proutes6: Default::default(),
            });
        }
        // Resolve and check everything before allocating anything.
        let mut planned = Vec::new();
        for c in connections {
            let wrap = |e: EngineError| EngineError::Attach {
                index: c.sequence,
                network: c.network.to_string(),
                source: Box::new(e),
            };
            let plan = self.network(&c.network).map_err(wrap)?;
            if !plan.tenant_allowed(&pod.pod_namespace) {
                return Err(wrap(EngineError::TenantNotAllowed {
                    namespace: pod.pod_namespace.clone(),
                    network: plan.key.to_string(),
                }));
            }
            let ifname = interface_name(
                input.naming,
                plan.spec.options.container_prefix.as_deref(),
                c.sequence,
            );
            let owner = OwnerKey::new(&pod.container_id, &ifname).map_err(|e| wrap(e.into()))?;
            let requests = effective_requests(&plan, &c);
            for (family, request) in [(Family::V4, requests[0]), (Family::V6, requests[1])] {
                if request.needs_address() && plan.family(family).is_none() {
                    return Err(wrap(
                        AllocError::NoSubnet {
                            network: plan.key.to_string(),
                            family,
                        }
                        .into(),
                    ));
                }
                if let (AddressRequest::Static(ip), Some(fp)) = (request, plan.family(family)) {
                    danm_core::policy::check_static(&plan.key.to_string(), fp, ip)
                        .map_err(|e| wrap(e.into()))?;
                }
            }
            planned.push((c, plan, ifname, owner, requests));
        }
        let mut seen = HashSet::new();
        for (c, _, ifname, ..) in &planned {
            if !seen.insert(ifname.clone()) {
                return Err(EngineError::Attach {
                    index: c.sequence,
                    network: c.network.to_string(),
                    source: Box::new(EngineError::CheckFailed(format!(
                        "interface name {ifname} is used twice (legacy naming scheme with the same container_prefix?)"
                    ))),
                });
            }
        }
        let results =
            futures::future::join_all(planned.iter().map(|(_, plan, ifname, owner, requests)| {
                let info = OwnerInfo {
                    ifname: ifname.clone(),
                    ..pod.clone()
                };
                async move { self.allocate_parsed(plan, owner, &info, *requests).await }
            }))
            .await;
        let failed = results.iter().position(Result::is_err);
        if let Some(index) = failed {
            for ((_, plan, _, owner, _), result) in planned.iter().zip(&results) {
                if result.is_ok()
                    && let Err(e) = self
                        .release(&plan.key, owner, Some(&pod.pod_namespace))
                        .await
                {
                    tracing::error!(owner = %owner, error = %e, "rollback of attach failed");
                }
            }
            let (c, ..) = &planned[index];
            let error = results
                .into_iter()
                .nth(index)
                .expect("index in range")
                .expect_err("failed result");
            return Err(EngineError::Attach {
                index: c.sequence,
                network: c.network.to_string(),
                source: Box::new(error),
            });
        }
        Ok(planned
            .into_iter()
            .zip(results)
            .map(|((connection, network, ifname, ..), r)| PlannedInterface {
                sequence: connection.sequence,
                ifname,
                network,
                connection,
                addresses: r.expect("all succeeded"),
            })
            .collect())
    }

    fn default_network(&self, namespace: &str) -> Result<NetworkKey, EngineError> {
        for kind in [
            NetworkKind::DanmNet,
            NetworkKind::TenantNetwork,
            NetworkKind::ClusterNetwork,
        ] {
            let key = NetworkKey::new(kind, namespace, "default");
            match self.network(&key) {
                Ok(_) => return Ok(key),
                Err(EngineError::NetworkNotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::NoDefaultNetwork(namespace.to_owned()))
    }

    /// The endpoint records of a container, with their networks' plans (None for a network
    /// that no longer exists), in interface-name order.
    pub async fn interfaces(
        &self,
        container_id: &str,
    ) -> Result<Vec<(EndpointRecord, Option<Arc<NetworkPlan>>)>, EngineError> {
        if container_id.is_empty() {
            return Err(OwnerError::Empty("container_id").into());
        }
        let mut records: Vec<_> = self
            .store
            .list_endpoints()
            .await?
            .into_iter()
            .filter(|r| r.owner.container_id == container_id)
            .map(|r| {
                let plan = self.network(&r.network).ok();
                (r, plan)
            })
            .collect();
        records.sort_by(|a, b| a.0.owner.ifname.cmp(&b.0.owner.ifname));
        Ok(records)
    }

    /// Releases every interface of a container.
    pub async fn detach(&self, container_id: &str) -> Result<Vec<String>, EngineError> {
        if container_id.is_empty() {
            return Err(OwnerError::Empty("container_id").into());
        }
        let mut freed = Vec::new();
        for record in self.store.list_endpoints().await? {
            if record.owner.container_id == container_id {
                freed.extend(
                    self.release(&record.network, &record.owner, Some(&record.namespace))
                        .await?,
                );
            }
        }
        Ok(freed)
    }

    /// CNI GC: releases every owner (on `network`, if given) that is not in `valid`.
    pub async fn gc(
        &self,
        valid: &HashSet<OwnerKey>,
        network: Option<&NetworkKey>,
    ) -> Result<Vec<String>, EngineError> {
        let mut freed = Vec::new();
        for record in self.store.list_endpoints().await? {
            if valid.contains(&record.owner) || network.is_some_and(|n| *n != record.network) {
                continue;
            }
            freed.extend(
                self.release(&record.network, &record.owner, Some(&record.namespace))
                    .await?,
            );
        }
        Ok(freed)
    }

    /// Verifies an owner still holds its addresses (in its record and in the shards).
    pub async fn check(
        &self,
        network: &NetworkKey,
        owner: &OwnerKey,
        namespace: Option<&str>,
        expect_ip: &str,
        expect_ip6: &str,
    ) -> Result<Addresses, EngineError> {
        let plan = self.network(network)?;
        let record = self
            .store
            .get_endpoint(owner, namespace)
            .await?
            .ok_or_else(|| EngineError::NotAllocated(owner.to_string()))?;
        let addresses = existing_addresses(&record, network, owner)?;
        for (asked, held) in [(expect_ip, &addresses.ip), (expect_ip6, &addresses.ip6)] {
            if !asked.is_empty() && asked != held {
                return Err(EngineError::CheckFailed(format!(
                    "owner {owner} holds {held:?} on {network}, not {asked:?}"
                )));
            }
        }
        for (family, offset) in recorded_offsets(self, &record) {
            let fp = plan.family(family).expect("recorded family exists");
            let key = crate::store::ShardKey {
                network: network.clone(),
                family,
                index: danm_core::layout::shard_index(offset),
            };
            let address = fp.cidr.addr_at(offset).expect("offset in cidr");
            let shard = self.store.get_shard(&key).await?.ok_or_else(|| {
                EngineError::CheckFailed(format!(
                    "{address} of {owner}: shard {} is missing",
                    key.name()
                ))
            })?;
            let bits = worker::decode_shard(&shard).map_err(|reason| {
                EngineError::Alloc(AllocError::ShardUnusable {
                    network: network.to_string(),
                    shard: key.name(),
                    reason,
                })
            })?;
            let local = danm_core::layout::local_offset(offset);
            if bits.owner_of(local) != Some(owner.fingerprint()) {
                return Err(EngineError::CheckFailed(format!(
                    "{address} is recorded for {owner} but shard {} does not hold it for that owner",
                    key.name()
                )));
            }
        }
        Ok(addresses)
    }

    /// Every allocated address (of one network, or of all), read from the store.
    pub async fn list_allocations(
        &self,
        network: Option<&NetworkKey>,
    ) -> Result<Vec<ListedAllocation>, EngineError> {
        let plans: Vec<Arc<NetworkPlan>> = match network {
            Some(key) => vec![self.network(key)?],
            None => self.networks(),
        };
        let mut by_owner: HashMap<(NetworkKey, u64), Vec<EndpointRecord>> = HashMap::new();
        for record in self.store.list_endpoints().await? {
            by_owner
                .entry((record.network.clone(), record.owner.fingerprint()))
                .or_default()
                .push(record);
        }
        let mut out = Vec::new();
        for plan in plans {
            for shard in self.store.list_shards(&plan.key).await? {
                let Some(fp) = plan.family(shard.key.family) else {
                    continue;
                };
                let bits = match worker::decode_shard(&shard) {
                    Ok(bits) => bits,
                    Err(reason) => {
                        tracing::error!(shard = %shard.key.name(), %reason, "corrupt shard not listed");
                        continue;
                    }
                };
                let base = danm_core::layout::shard_first(shard.key.index);
                for (local, fingerprint) in bits.iter() {
                    let Some(address) = fp.cidr.addr_at(base + u128::from(local)) else {
                        continue;
                    };
                    let endpoint = by_owner
                        .get(&(plan.key.clone(), fingerprint))
                        .and_then(|records| {
                            records
                                .iter()
                                .find(|r| recorded_address_matches(r, address))
                        })
                        .cloned();
                    out.push(ListedAllocation {
                        network: plan.key.clone(),
                        address,
                        fingerprint,
                        endpoint,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// What the annotation asks, adjusted as DANM does: a delegated (static) backend on a
/// network without a subnet of a family keeps its own IPAM for that family.
fn has_legacy_arrays(plan: &NetworkPlan) -> bool {
    let o = &plan.spec.options;
    [&o.alloc, &o.alloc6]
        .iter()
        .any(|a| a.as_deref().is_some_and(|t| !t.trim().is_empty()))
}

fn effective_requests(plan: &NetworkPlan, c: &Connection) -> [AddressRequest; 2] {
    let adjust = |family: Family, request: AddressRequest| {
        if plan.family(family).is_none()
            && !is_dynamic_backend(&plan.spec.network_type)
            && request == AddressRequest::Dynamic
        {
            AddressRequest::Skip
        } else {
            request
        }
    };
    [adjust(Family::V4, c.ip), adjust(Family::V6, c.ip6)]
}

fn format_addresses(plan: &NetworkPlan, requests: &[AddressRequest; 2], held: &Held) -> Addresses {
    let one = |family: Family, request: AddressRequest, offset: Option<u128>| match request {
        AddressRequest::None => "none".to_owned(),
        AddressRequest::Skip => String::new(),
        _ => {
            let fp = plan.family(family).expect("checked before allocation");
            let addr = fp
                .cidr
                .addr_at(offset.expect("allocated"))
                .expect("offset in cidr");
            fp.cidr.with_prefix(addr)
        }
    };
    Addresses {
        ip: one(Family::V4, requests[0], held[0]),
        ip6: one(Family::V6, requests[1], held[1]),
    }
}

fn endpoint_record(
    plan: &NetworkPlan,
    key: &OwnerKey,
    owner: &OwnerInfo,
    addresses: &Addresses,
) -> EndpointRecord {
    EndpointRecord {
        owner: key.clone(),
        network: plan.key.clone(),
        namespace: owner.pod_namespace.clone(),
        spec: DanmEpSpec {
            network_name: plan.key.name.clone(),
            network_type: plan.network_type().to_owned(),
            endpoint_id: key.endpoint_name(),
            interface: DanmEpIface {
                name: key.ifname.clone(),
                address: addresses.ip.clone(),
                address_ipv6: addresses.ip6.clone(),
                ..Default::default()
            },
            host: owner.host.clone(),
            pod: owner.pod_name.clone(),
            pod_uid: owner.pod_uid.clone(),
            cid: key.container_id.clone(),
            netns: owner.netns.clone(),
            api_type: plan.key.kind.as_str().to_owned(),
        },
    }
}

fn existing_addresses(
    record: &EndpointRecord,
    network: &NetworkKey,
    owner: &OwnerKey,
) -> Result<Addresses, EngineError> {
    if &record.network != network {
        return Err(EngineError::OwnerElsewhere {
            owner: owner.to_string(),
            network: record.network.to_string(),
        });
    }
    Ok(Addresses {
        ip: record.spec.interface.address.clone(),
        ip6: record.spec.interface.address_ipv6.clone(),
    })
}

fn recorded_address_matches(record: &EndpointRecord, address: IpAddr) -> bool {
    [
        &record.spec.interface.address,
        &record.spec.interface.address_ipv6,
    ]
    .into_iter()
    .filter_map(|a| danm_core::addr::parse_addr_lenient(a).ok())
    .any(|a| a == address)
}

/// The offsets a record names, in its network's current plan.
fn recorded_offsets(engine: &Engine, record: &EndpointRecord) -> Vec<(Family, u128)> {
    match engine.network(&record.network) {
        Ok(plan) => offsets_in(&plan, record),
        Err(_) => Vec::new(),
    }
}

/// The offsets a record names in `plan`.
fn offsets_in(plan: &NetworkPlan, record: &EndpointRecord) -> Vec<(Family, u128)> {
    [
        (Family::V4, &record.spec.interface.address),
        (Family::V6, &record.spec.interface.address_ipv6),
    ]
    .into_iter()
    .filter_map(|(family, text)| {
        let ip = danm_core::addr::parse_addr_lenient(text).ok()?;
        let offset = plan.family(family)?.cidr.offset_of(ip)?;
        Some((family, offset))
    })
    .collect()
}
