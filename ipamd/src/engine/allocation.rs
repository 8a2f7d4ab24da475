//! Allocate, Release and Check: one owner on one network.
//!
//! * Allocate: under the owner's lock, read the owner's record (a retry returns what it
//!   holds) unless the store knows without a request that there is none
//!   ([`crate::store::Store::may_have_endpoint`]: the common path of a new pod reads
//!   nothing); else take the addresses in the shards, then create the record. If the record
//!   exists by then (a concurrent retry won, our own create's answer was lost, or the
//!   store's hint lagged behind it), keep what it names and give back what was just taken if
//!   it differs. A static address the owner
//!   already held (an earlier attempt whose record was never written) is renewed once the
//!   record names it, which fences off an orphan reclaim decided before (see
//!   [`crate::worker::WorkerHandle::renew`]).
//! * Release: read the record, free the addresses in the shards (only where the owner's
//!   fingerprint still stands), then delete the record. A stale or repeated release finds no
//!   record, or finds addresses now held by another fingerprint, and frees nothing.

use std::sync::Arc;

use danm_core::{AddressRequest, AllocError, Family, NetworkKey, NetworkPlan, OwnerKey, PerFamily};

use super::records::{
    check_requests, endpoint_record, existing_addresses, format_addresses, held_offsets, offsets_in,
};
use super::{Addresses, Engine, OwnerInfo};
use crate::error::EngineError;
use crate::store::{EndpointRecord, ShardKey, StoreError};
use crate::worker::{Granted, WorkerHandle};

impl Engine {
    /// Allocates on one network for one owner. Idempotent on the owner key.
    pub async fn allocate(
        &self,
        network: &NetworkKey,
        owner: &OwnerInfo,
        ip: &str,
        ip6: &str,
    ) -> Result<Addresses, EngineError> {
        let key = OwnerKey::new(&owner.container_id, &owner.ifname)?;
        let (plan, worker) = self.serving(network)?;
        let requests = PerFamily::new(
            AddressRequest::parse("ip", ip, Family::V4)?,
            AddressRequest::parse("ip6", ip6, Family::V6)?,
        );
        check_requests(&plan, &requests)?;
        self.allocate_checked(&plan, &worker, &key, owner, requests)
            .await
            .map(|(addresses, _)| addresses)
    }

    /// Allocates what `requests` asks (already checked against `plan`): the addresses, and
    /// whether this call recorded them (false when the owner already held them).
    pub(super) async fn allocate_checked(
        &self,
        plan: &Arc<NetworkPlan>,
        worker: &WorkerHandle,
        key: &OwnerKey,
        owner: &OwnerInfo,
        requests: PerFamily<AddressRequest>,
    ) -> Result<(Addresses, bool), EngineError> {
        let namespace = Some(owner.pod_namespace.as_str()).filter(|n| !n.is_empty());
        let lock = self.owner_lock(key);
        let _guard = lock.lock().await;
        if self.store.may_have_endpoint(key, namespace).await
            && let Some(existing) = self.store.get_endpoint(key, namespace).await?
        {
            same_pod(&existing, owner, key)?;
            return Ok((existing_addresses(&existing, &plan.key, key)?, false));
        }
        let granted = worker.allocate(key.fingerprint(), requests).await?;
        let addresses = format_addresses(plan, &requests, &granted.held);
        let record = endpoint_record(plan, key, owner, &addresses);
        match self.store.create_endpoint(record).await {
            Ok(()) => {
                self.renew_reused(worker, key, namespace, &granted).await?;
                self.metrics
                    .allocations
                    .inc_by(granted.held.iter().filter(|(_, h)| h.is_some()).count() as u64);
                tracing::info!(network = %plan.key, owner = %key, ip = %addresses.ip, ip6 = %addresses.ip6, "allocated");
                Ok((addresses, true))
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
                let theirs = existing_addresses(&existing, &plan.key, key);
                let ours = theirs.as_ref().is_ok_and(|t| *t == addresses);
                if ours {
                    self.renew_reused(worker, key, namespace, &granted).await?;
                } else {
                    self.give_back(worker, key, &granted).await;
                }
                same_pod(&existing, owner, key)?;
                Ok((theirs?, ours))
            }
            Err(e) => {
                // The outcome is unknown (a timeout may have landed): look before giving
                // back, or a retry would find a record naming freed addresses.
                match self.store.get_endpoint(key, namespace).await {
                    Ok(Some(existing)) => {
                        let theirs = existing_addresses(&existing, &plan.key, key)?;
                        if theirs == addresses {
                            self.renew_reused(worker, key, namespace, &granted).await?;
                            return Ok((addresses, true));
                        }
                        self.give_back(worker, key, &granted).await;
                    }
                    Ok(None) => self.give_back(worker, key, &granted).await,
                    Err(read) => tracing::warn!(
                        owner = %key, error = %read,
                        "cannot tell whether the endpoint record was written: addresses kept for the orphan reclaimer to judge"
                    ),
                }
                Err(e.into())
            }
        }
    }

    /// Renews the addresses the owner already held before this Allocate, now that its
    /// record names them. If one was taken by another owner meanwhile (freed as an orphan
    /// in between), the record is deleted again and the Allocate fails.
    async fn renew_reused(
        &self,
        worker: &WorkerHandle,
        key: &OwnerKey,
        namespace: Option<&str>,
        granted: &Granted,
    ) -> Result<(), EngineError> {
        for (family, offset) in held_offsets(&granted.held) {
            if !granted.reused.get(family) {
                continue;
            }
            if let Err(e) = worker.renew(key.fingerprint(), family, offset).await {
                tracing::warn!(owner = %key, error = %e, "renewing an address the owner already held failed; its record is removed");
                self.store.delete_endpoint(key, namespace).await?;
                return Err(e);
            }
        }
        Ok(())
    }

    pub(super) async fn give_back(
        &self,
        worker: &WorkerHandle,
        owner: &OwnerKey,
        granted: &Granted,
    ) {
        if let Err(e) = worker
            .release(owner.fingerprint(), held_offsets(&granted.held))
            .await
        {
            tracing::error!(network = %worker.network(), owner = %owner, error = %e, "could not give back addresses; garbage collection will");
        }
    }

    /// Releases what an owner holds on a network. Idempotent; returns what was freed.
    /// `namespace` is the pod's, when known (see [`crate::store::Store::get_endpoint`]).
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

    /// Frees what `record` names (where its owner still holds it), then deletes it.
    pub(super) async fn release_record(
        &self,
        record: &EndpointRecord,
    ) -> Result<Vec<String>, EngineError> {
        let mut freed = Vec::new();
        match self.serving(&record.network) {
            Ok((plan, worker)) => {
                let done = worker
                    .release(
                        record.owner.fingerprint(),
                        offsets_in(&plan, record.addresses()),
                    )
                    .await?;
                freed = done
                    .into_iter()
                    .filter_map(|(f, o)| plan.family(f).and_then(|fp| fp.cidr.addr_at(o)))
                    .map(|a| a.to_string())
                    .collect();
            }
            // Not served (gone with its shards, invalid, migrating): only the record is
            // removed; addresses it named, if any are left, become orphans for the
            // reclaimer once the network is served again.
            Err(e) => {
                tracing::warn!(network = %record.network, owner = %record.owner, reason = %e, "releasing on a network that is not served: only the record is removed");
            }
        }
        self.store
            .delete_endpoint(&record.owner, Some(&record.namespace))
            .await?;
        self.metrics.releases.inc_by(freed.len() as u64);
        tracing::info!(network = %record.network, owner = %record.owner, ?freed, "released");
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
        for (family, offset) in offsets_in(&plan, record.addresses()) {
            let fp = plan.family(family).expect("recorded family exists");
            let key = ShardKey {
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
            let bits = crate::worker::decode_shard(&shard).map_err(|reason| {
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
}

/// Refuses an owner key already recorded for another pod: a container id belongs to one
/// pod, so a caller naming another pod's container must get nothing of it (and, on a
/// failed Attach, roll nothing of it back).
fn same_pod(record: &EndpointRecord, owner: &OwnerInfo, key: &OwnerKey) -> Result<(), EngineError> {
    let differ = |a: &str, b: &str| !a.is_empty() && !b.is_empty() && a != b;
    if differ(&record.namespace, &owner.pod_namespace)
        || differ(&record.spec.pod, &owner.pod_name)
        || differ(&record.spec.pod_uid, &owner.pod_uid)
    {
        return Err(EngineError::OwnerOfAnotherPod {
            owner: key.to_string(),
            pod: format!("{}/{}", record.namespace, record.spec.pod),
        });
    }
    Ok(())
}
