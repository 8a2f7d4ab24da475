//! Networks written by DANM: their `alloc`/`alloc6` bit arrays are moved into shards
//! before the network is served.

use std::collections::HashMap;
use std::sync::Arc;

use danm_core::{AddressRequest, AllocError, Family, NetworkPlan, OwnerKey, PerFamily};

use super::records::offsets_in;
use super::{Engine, NetworkState};
use crate::error::EngineError;
use crate::store::NetworkObject;
use crate::worker::WorkerHandle;

impl Engine {
    /// Moves a DANM network's `alloc`/`alloc6` allocations into shards, then clears those
    /// fields (only after every shard write landed). Each address goes to the owner whose
    /// endpoint record names it, else to a deterministic legacy owner, so a re-run after a
    /// crash, or by another replica, finds them already in place. The network stays
    /// [`NetworkState::Migrating`] until the cleared object comes back from the store.
    pub(super) async fn migrate(self: Arc<Self>, net: NetworkObject, plan: Arc<NetworkPlan>) {
        let key = net.key.clone();
        match self.migrate_once(&net, &plan).await {
            Ok(count) => {
                tracing::info!(network = %key, count, "DANM allocations migrated into shards");
            }
            Err(e) => {
                tracing::error!(network = %key, error = %e, "migration from DANM failed; the network stays unserved");
                self.set_state(&key, NetworkState::MigrationFailed(Box::new(e)));
            }
        }
    }

    async fn migrate_once(
        &self,
        net: &NetworkObject,
        plan: &Arc<NetworkPlan>,
    ) -> Result<usize, EngineError> {
        let legacy = danm_core::migrate::legacy_allocations(plan)?;
        let mut owners: HashMap<(Family, u128), u64> = HashMap::new();
        for record in self.store.list_endpoints().await? {
            if *record.network() == plan.key {
                for at in offsets_in(plan, record.addresses()) {
                    owners.insert(at, record.owner().fingerprint());
                }
            }
        }
        let worker = WorkerHandle::spawn(
            Arc::clone(plan),
            net.uid.clone(),
            Arc::clone(&self.store),
            Arc::clone(&self.metrics),
            self.config.worker.clone(),
        );
        let moves = legacy.iter().map(|&(family, offset)| {
            let fp = plan
                .family(family)
                .expect("legacy_allocations checked the family");
            let ip = fp.cidr.addr_at(offset).expect("offset in cidr");
            let fingerprint = owners.get(&(family, offset)).copied().unwrap_or_else(|| {
                OwnerKey::new(&format!("danm-migrated-{ip}"), "legacy")
                    .expect("valid key")
                    .fingerprint()
            });
            let mut requests = PerFamily::new(AddressRequest::Skip, AddressRequest::Skip);
            *requests.get_mut(family) = AddressRequest::Static { ip, prefix: None };
            let worker = &worker;
            async move { (ip, worker.allocate(fingerprint, requests).await) }
        });
        for (ip, result) in futures::future::join_all(moves).await {
            match result {
                Ok(_) => {}
                // Already held by another owner in the shards: the shards win, say so.
                Err(EngineError::Alloc(AllocError::InUse { .. })) => {
                    tracing::warn!(network = %plan.key, address = %ip, "DANM marks this address allocated but the shards give it to another owner; kept as the shards say");
                }
                Err(e) => return Err(e),
            }
        }
        drop(worker);
        let mut cleared = net.clone();
        cleared.spec.options.alloc = None;
        cleared.spec.options.alloc6 = None;
        self.store.put_network(cleared).await?;
        Ok(legacy.len())
    }
}
