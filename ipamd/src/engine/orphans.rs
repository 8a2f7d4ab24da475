//! Listing allocations, and freeing what a crash left behind: an address held by a
//! fingerprint that no endpoint record names (ipamd died between the shard write and the
//! record write).
//!
//! The reclaimer works from the store's list of records (a watch-fed cache on the
//! Kubernetes store) and frees an orphan only once it has seen it for the grace period and
//! then, in this order: read the orphan's shard (its version), confirm from a fresh read
//! that no record names the address, and free it only if the shard is still at that
//! version. A retried Allocate of the same owner that finds the address already held
//! creates its record first and then writes the shard ([`crate::worker::WorkerHandle::renew`]),
//! so whichever replica runs the reclaimer, the two can never both succeed.

use std::collections::HashMap;
use std::sync::Arc;

use danm_core::layout::{local_offset, shard_first, shard_index};
use danm_core::{Family, NetworkKey, NetworkPlan};

use super::{Engine, ListedAllocation};
use crate::error::EngineError;
use crate::store::{EndpointSummary, ShardKey};
use crate::worker::decode_shard;

/// Reads and checks of one orphan before giving up on a busy shard.
const RECLAIM_ATTEMPTS: usize = 8;

/// A pause of 1 to 20 ms between attempts, so that reclaims of one shard spread out.
fn fastrand_ms() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    1 + u64::from(nanos % 20)
}

/// One try at freeing an orphan.
enum Attempt {
    /// Freed.
    Freed(String),
    /// Not an orphan (any more): another owner, a record names it, or already free.
    NotAnOrphan,
    /// The shard was written between the read and the free: read again.
    ShardChanged,
}

impl Engine {
    /// Frees addresses held by a fingerprint that no endpoint record names, once they have
    /// been seen so for at least `grace` (an allocation between its shard write and its
    /// record write looks the same for a moment). The fingerprint check keeps it from ever
    /// freeing an address of another owner. Returns what was freed.
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
            if let Some(address) = self
                .reclaim_one(&network, family, offset, fingerprint)
                .await?
            {
                tracing::warn!(network = %network, %address, fingerprint = format!("{fingerprint:016x}"), "reclaimed an address no endpoint record names");
                self.metrics.orphans_reclaimed.inc();
                freed.push(address);
            }
            self.orphans_seen
                .lock()
                .expect("lock")
                .remove(&(network, family, offset, fingerprint));
        }
        Ok(freed)
    }

    /// Frees `address` of `network` if `fingerprint` holds it and no record names it (the
    /// cleaner's request, through the same checks as [`Engine::reclaim_orphans`]); the freed
    /// address, or `None` when it is not such an orphan (any more).
    pub async fn reclaim_orphan(
        &self,
        network: &NetworkKey,
        address: std::net::IpAddr,
        fingerprint: u64,
    ) -> Result<Option<String>, EngineError> {
        let plan = self.network(network)?;
        let family = Family::of(&address);
        let Some(offset) = plan.family(family).and_then(|f| f.cidr.offset_of(address)) else {
            return Ok(None);
        };
        let freed = self
            .reclaim_one(network, family, offset, fingerprint)
            .await?;
        if let Some(address) = &freed {
            tracing::warn!(network = %network, %address, fingerprint = format!("{fingerprint:016x}"), "reclaimed an address no endpoint record names, as the cleaner asked");
            self.metrics.orphans_reclaimed.inc();
        }
        Ok(freed)
    }

    /// Frees one orphan if it still is one (see the module overview); the freed address.
    /// When the shard was written between the read and the free (another address of it
    /// changed), everything is read and checked again, a few times.
    async fn reclaim_one(
        &self,
        network: &NetworkKey,
        family: Family,
        offset: u128,
        fingerprint: u64,
    ) -> Result<Option<String>, EngineError> {
        let lock = self.fingerprint_lock(fingerprint);
        let _guard = lock.lock().await;
        for _ in 0..RECLAIM_ATTEMPTS {
            match self
                .reclaim_attempt(network, family, offset, fingerprint)
                .await?
            {
                Attempt::Freed(address) => return Ok(Some(address)),
                Attempt::NotAnOrphan => return Ok(None),
                Attempt::ShardChanged => {
                    tokio::time::sleep(std::time::Duration::from_millis(fastrand_ms())).await;
                }
            }
        }
        Ok(None)
    }

    /// Steps 1 to 3 of the module overview, once.
    async fn reclaim_attempt(
        &self,
        network: &NetworkKey,
        family: Family,
        offset: u128,
        fingerprint: u64,
    ) -> Result<Attempt, EngineError> {
        let Ok((plan, worker)) = self.serving(network) else {
            return Ok(Attempt::NotAnOrphan);
        };
        let Some(address) = plan.family(family).and_then(|f| f.cidr.addr_at(offset)) else {
            return Ok(Attempt::NotAnOrphan);
        };
        // 1. The shard now: the version the free below is conditional on.
        let key = ShardKey {
            network: network.clone(),
            family,
            index: shard_index(offset),
        };
        let Some(shard) = self.store.get_shard(&key).await? else {
            return Ok(Attempt::NotAnOrphan);
        };
        match decode_shard(&shard) {
            Ok(bits) if bits.owner_of(local_offset(offset)) == Some(fingerprint) => {}
            _ => return Ok(Attempt::NotAnOrphan),
        }
        // 2. A record naming it, read afresh, wins.
        let named = self
            .store
            .endpoints_with_fingerprint(fingerprint)
            .await?
            .iter()
            .any(|r| r.network() == network && r.names(address));
        if named {
            return Ok(Attempt::NotAnOrphan);
        }
        // 3. Free it if nothing wrote the shard since 1.
        let freed = worker
            .reclaim(fingerprint, family, offset, shard.version)
            .await?;
        Ok(if freed {
            Attempt::Freed(address.to_string())
        } else {
            Attempt::ShardChanged
        })
    }

    /// The payload size (base64 bytes) of every shard of a network, by family.
    pub async fn shard_sizes(
        &self,
        network: &NetworkKey,
    ) -> Result<Vec<(Family, usize)>, EngineError> {
        Ok(self
            .store
            .list_shards(network)
            .await?
            .iter()
            .map(|s| (s.key.family, s.spec.payload.len()))
            .collect())
    }

    /// Every allocated address (of one network, or of all), read from the shards, each
    /// with the record that names it (from the store's list of records).
    pub async fn list_allocations(
        &self,
        network: Option<&NetworkKey>,
    ) -> Result<Vec<ListedAllocation>, EngineError> {
        let plans: Vec<Arc<NetworkPlan>> = match network {
            Some(key) => vec![self.network(key)?],
            None => self.networks(),
        };
        let mut by_owner: HashMap<(NetworkKey, u64), Vec<Arc<EndpointSummary>>> = HashMap::new();
        for record in self.store.list_endpoints().await? {
            by_owner
                .entry((record.network().clone(), record.owner().fingerprint()))
                .or_default()
                .push(record);
        }
        let mut out = Vec::new();
        for plan in plans {
            for shard in self.store.list_shards(&plan.key).await? {
                let Some(fp) = plan.family(shard.key.family) else {
                    continue;
                };
                let bits = match decode_shard(&shard) {
                    Ok(bits) => bits,
                    Err(reason) => {
                        tracing::error!(shard = %shard.key.name(), %reason, "corrupt shard not listed");
                        continue;
                    }
                };
                let base = shard_first(shard.key.index);
                for (local, fingerprint) in bits.iter() {
                    let Some(address) = fp.cidr.addr_at(base + u128::from(local)) else {
                        continue;
                    };
                    let endpoint = by_owner
                        .get(&(plan.key.clone(), fingerprint))
                        .and_then(|records| records.iter().find(|r| r.names(address)))
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
