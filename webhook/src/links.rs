//! Which host links the networks ask for: a [`LinkTable`] of every DanmNet, TenantNetwork
//! and ClusterNetwork, fed by three watches, so that admission finds out with one lookup
//! whether a NetworkID would name another network's link (`vx_<NetworkID>`,
//! `<NetworkID>.<id>`) or a TenantNetwork would join another network's segment.
//!
//! Like any watch-fed cache it may lag behind a network created a moment ago: between
//! TenantNetworks the TenantConfig's reservations close that gap (checked in the write
//! that reserves the id); for the rest, netwatcher never hands an existing link to a
//! newcomer and the CNI refuses a parent whose id is not the network's.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use danm_core::hostlinks::LinkTable;
use danm_core::{NetworkKey, NetworkKind};
use danm_crds::{ClusterNetwork, DanmNet, NetworkSpec, TenantNetwork};
use danm_runtime::index::{Change, Synced, follow};
use kube::api::Api;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// See the module overview.
#[derive(Debug)]
pub struct Links {
    table: Arc<RwLock<LinkTable>>,
    synced: Arc<Synced>,
}

/// A network kind the index follows.
trait Network: Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned {
    const KIND: NetworkKind;
    fn spec(&self) -> &NetworkSpec;
}

impl Network for DanmNet {
    const KIND: NetworkKind = NetworkKind::DanmNet;
    fn spec(&self) -> &NetworkSpec {
        &self.spec.network
    }
}

impl Network for TenantNetwork {
    const KIND: NetworkKind = NetworkKind::TenantNetwork;
    fn spec(&self) -> &NetworkSpec {
        &self.spec.network
    }
}

impl Network for ClusterNetwork {
    const KIND: NetworkKind = NetworkKind::ClusterNetwork;
    fn spec(&self) -> &NetworkSpec {
        &self.spec.network
    }
}

fn key_of<K: Network>(network: &K) -> NetworkKey {
    NetworkKey::new(
        K::KIND,
        &network.namespace().unwrap_or_default(),
        &network.name_any(),
    )
}

impl Links {
    /// The index, fed by watches of the three kinds for as long as the runtime runs.
    pub fn start(client: Client) -> Arc<Links> {
        let links = Arc::new(Links {
            table: Arc::default(),
            synced: Arc::new(Synced::new(3)),
        });
        links.feed::<DanmNet>(&client);
        links.feed::<TenantNetwork>(&client);
        links.feed::<ClusterNetwork>(&client);
        links
    }

    fn feed<K>(&self, client: &Client)
    where
        K: Network + Send + Sync + 'static,
    {
        let table = Arc::clone(&self.table);
        follow(
            Api::<K>::all(client.clone()),
            K::KIND.as_str(),
            Arc::clone(&self.synced),
            move |change| {
                let mut table = table.write().expect("lock");
                match change {
                    Change::Relisted(all) => {
                        let keyed: Vec<(NetworkKey, &NetworkSpec)> =
                            all.iter().map(|n| (key_of(n), n.spec())).collect();
                        table.replace_kind(K::KIND, keyed.iter().map(|(k, s)| (k, *s)));
                    }
                    Change::Applied(n) => table.insert(&key_of(&n), n.spec()),
                    Change::Deleted(n) => table.remove(&key_of(&n)),
                }
            },
        );
    }

    /// Whether every kind has been listed once.
    pub fn is_synced(&self) -> bool {
        self.synced.is_synced()
    }

    /// The table, for one decision.
    pub fn read(&self) -> RwLockReadGuard<'_, LinkTable> {
        self.table.read().expect("lock")
    }
}
