//! The allocation engine: networks, owners and endpoint records around the per-network
//! workers of [`crate::worker`].
//!
//! An allocation is tied to its owner twice: the shard stores the owner's fingerprint
//! beside the address (the proof of ownership: only that owner can free it), and an
//! endpoint record (DanmEp) named after the owner key stores the addresses (so a retry finds
//! them). Where each rule lives:
//!
//! * this file: the engine, the state of every network ([`NetworkState`]: serving,
//!   migrating, failed migration, invalid) in one map, per-owner locks, readiness;
//! * [`allocation`](self::allocation): Allocate, Release and Check of one owner on one network;
//! * [`attach`](self::attach): Attach, Detach, Interfaces and Gc of a whole pod;
//! * [`orphans`](self::orphans): listing allocations, and freeing what a crash left unrecorded;
//! * [`migration`](self::migration): DANM's `alloc`/`alloc6` bit arrays into shards;
//! * [`records`](self::records): endpoint records and addresses as the engine reads and
//!   writes them.

mod allocation;
mod attach;
mod migration;
mod orphans;
mod records;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use danm_core::interfaces::{Connection, NamingScheme};
use danm_core::network::{DEFAULT_NETWORK_NAME, NetworkError, plan};
use danm_core::{Family, NetworkKey, NetworkPlan, OwnerKey};

pub use crate::error::EngineError;
pub use crate::metrics::Metrics;
use crate::store::{EndpointSummary, NetworkObject, Store, StoreEvent};
use crate::worker::{WorkerConfig, WorkerHandle};

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
    /// With node authorization, the caller's node: the pod must be bound to it.
    pub required_node: Option<String>,
}

/// One pool of a served network, as the metrics report it.
#[derive(Clone, Debug)]
pub struct PoolReport {
    /// The network.
    pub network: NetworkKey,
    /// The family.
    pub family: Family,
    /// Addresses of the dynamic pool, reserved ones excluded.
    pub capacity: u128,
    /// Addresses held (static ones too), as the worker's cache last saw them; None before
    /// the worker has served the network once.
    pub used: Option<u64>,
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
    /// What the store knows of the endpoint record naming this address, when there is one.
    pub endpoint: Option<Arc<EndpointSummary>>,
}

/// What the engine knows of one network.
#[derive(Clone, Debug)]
pub enum NetworkState {
    /// Valid and served by its worker.
    Serving {
        /// The plan in use.
        plan: Arc<NetworkPlan>,
        /// Its worker.
        worker: WorkerHandle,
    },
    /// Its DANM bit arrays are being moved into shards: not served yet.
    Migrating,
    /// Moving its DANM bit arrays failed: not served, with why.
    MigrationFailed(Box<EngineError>),
    /// Its spec is invalid: not served, with why.
    Invalid(NetworkError),
}

/// How an engine runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How its workers run.
    pub worker: WorkerConfig,
    /// Most connections one pod's annotation may ask for (a tenant who can create pods
    /// must not drain a shared network with one of them).
    pub max_interfaces_per_pod: usize,
}

/// The default of `--max-interfaces-per-pod`.
pub const DEFAULT_MAX_INTERFACES_PER_POD: usize = 32;

impl From<WorkerConfig> for EngineConfig {
    fn from(worker: WorkerConfig) -> EngineConfig {
        EngineConfig {
            worker,
            max_interfaces_per_pod: DEFAULT_MAX_INTERFACES_PER_POD,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        WorkerConfig::default().into()
    }
}

/// Orphans seen (network, family, offset, fingerprint), and when first seen.
type OrphansSeen = HashMap<(NetworkKey, Family, u128, u64), std::time::Instant>;

/// The allocation engine.
pub struct Engine {
    store: Arc<dyn Store>,
    networks: RwLock<HashMap<NetworkKey, NetworkState>>,
    /// Per-owner locks, by owner fingerprint (what the orphan reclaimer knows).
    owner_locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    orphans_seen: Mutex<OrphansSeen>,
    config: EngineConfig,
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
        config: impl Into<EngineConfig>,
    ) -> Result<Arc<Engine>, EngineError> {
        let config = config.into();
        let engine = Arc::new(Engine {
            store: Arc::clone(&store),
            networks: RwLock::default(),
            owner_locks: Mutex::default(),
            orphans_seen: Mutex::default(),
            config,
            metrics: Arc::default(),
        });
        let mut events = store.subscribe();
        for net in store.list_networks().await? {
            engine.apply_network(net);
        }
        let weak = Arc::downgrade(&engine);
        tokio::spawn(async move {
            loop {
                let event = events.recv().await;
                let Some(engine) = weak.upgrade() else { return };
                match event {
                    Ok(StoreEvent::Network(key)) => engine.network_changed(&key).await,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        match engine.store.list_networks().await {
                            Ok(nets) => nets.into_iter().for_each(|n| engine.apply_network(n)),
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

    async fn network_changed(self: &Arc<Self>, key: &NetworkKey) {
        match self.store.get_network(key).await {
            Ok(Some(net)) => self.apply_network(net),
            Ok(None) => {
                tracing::info!(network = %key, "network deleted");
                self.networks.write().expect("lock").remove(key);
            }
            Err(e) => tracing::warn!(network = %key, error = %e, "cannot read changed network"),
        }
    }

    fn set_state(&self, key: &NetworkKey, state: NetworkState) {
        self.networks
            .write()
            .expect("lock")
            .insert(key.clone(), state);
    }

    fn apply_network(self: &Arc<Self>, net: NetworkObject) {
        let plan = match plan(net.key.clone(), &net.spec) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::error!(network = %net.key, error = %e, "network refused");
                return self.set_state(&net.key, NetworkState::Invalid(e));
            }
        };
        let mut networks = self.networks.write().expect("lock");
        if danm_core::migrate::has_legacy_arrays(&plan.spec) {
            // Not served until its DANM allocations are in shards.
            if !matches!(networks.get(&net.key), Some(NetworkState::Migrating)) {
                networks.insert(net.key.clone(), NetworkState::Migrating);
                let engine = Arc::clone(self);
                tokio::spawn(async move { engine.migrate(net, plan).await });
            }
            return;
        }
        match networks.get_mut(&net.key) {
            Some(NetworkState::Serving {
                plan: current,
                worker,
            }) => {
                if **current != *plan {
                    worker.replan(Arc::clone(&plan));
                    *current = plan;
                }
            }
            _ => {
                tracing::info!(network = %net.key, "serving network");
                let worker = WorkerHandle::spawn(
                    Arc::clone(&plan),
                    net.uid.clone(),
                    Arc::clone(&self.store),
                    Arc::clone(&self.metrics),
                    self.config.worker.clone(),
                );
                networks.insert(net.key.clone(), NetworkState::Serving { plan, worker });
            }
        }
    }

    /// The plan and worker of a served network, or why it is not served.
    fn serving(&self, key: &NetworkKey) -> Result<(Arc<NetworkPlan>, WorkerHandle), EngineError> {
        match self.networks.read().expect("lock").get(key) {
            Some(NetworkState::Serving { plan, worker }) => Ok((Arc::clone(plan), worker.clone())),
            Some(NetworkState::Migrating) => Err(EngineError::Migrating(key.to_string())),
            Some(NetworkState::MigrationFailed(e)) => Err(EngineError::Migration {
                network: key.to_string(),
                cause: e.clone(),
            }),
            Some(NetworkState::Invalid(e)) => Err(EngineError::NetworkInvalid(e.clone())),
            None => Err(EngineError::NetworkNotFound(key.clone())),
        }
    }

    /// The plan of a network.
    pub fn network(&self, key: &NetworkKey) -> Result<Arc<NetworkPlan>, EngineError> {
        self.serving(key).map(|(plan, _)| plan)
    }

    /// Every served network.
    pub fn networks(&self) -> Vec<Arc<NetworkPlan>> {
        let mut v: Vec<_> = self
            .networks
            .read()
            .expect("lock")
            .values()
            .filter_map(|state| match state {
                NetworkState::Serving { plan, .. } => Some(Arc::clone(plan)),
                _ => None,
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Every served network's pools: capacity and what is held, per family.
    pub fn pool_usage(&self) -> Vec<PoolReport> {
        let networks = self.networks.read().expect("lock");
        let mut out = Vec::new();
        for state in networks.values() {
            let NetworkState::Serving { plan, worker } = state else {
                continue;
            };
            let used = worker.usage();
            for family in [Family::V4, Family::V6] {
                if let Some(f) = plan.family(family) {
                    out.push(PoolReport {
                        network: plan.key.clone(),
                        family,
                        capacity: f.capacity(),
                        used: used.map(|u| *u.get(family)),
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.network, a.family).cmp(&(&b.network, b.family)));
        out
    }

    /// The default networks it serves (valid, not migrating), in key order: what a pod with
    /// no `danm.io/interfaces` annotation gets (see [`DEFAULT_NETWORK_NAME`]). The CNI
    /// installer waits for one before it makes `danm` a node's CNI.
    pub fn served_default_networks(&self) -> Vec<NetworkKey> {
        let mut keys: Vec<NetworkKey> = self
            .networks
            .read()
            .expect("lock")
            .iter()
            .filter(|(k, s)| {
                k.name == DEFAULT_NETWORK_NAME && matches!(s, NetworkState::Serving { .. })
            })
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Whether the engine can serve: the store answers, networks are loaded (true once
    /// started) and no network waits for its migration from DANM.
    pub async fn ready(&self) -> Result<(), String> {
        if let Some(key) = self
            .networks
            .read()
            .expect("lock")
            .iter()
            .find_map(|(k, s)| matches!(s, NetworkState::Migrating).then_some(k))
        {
            return Err(format!("{key} is being migrated from DANM's bit arrays"));
        }
        self.store.ready().await.map_err(|e| e.to_string())
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
}

#[cfg(test)]
mod tests;
