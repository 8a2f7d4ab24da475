//! The per-network allocation worker: shard cache, address picking and group commit.
//!
//! Every network has one worker task, reached through its [`WorkerHandle`]. Requests queue
//! up while the worker is writing; the next round takes all of them at once (up to
//! `max_batch`), plans every request on working copies of the cached shards
//! (`plan.rs`), and writes each touched shard once, all shards in parallel, with
//! compare-and-swap. So N concurrent requests that land on one shard cost one write, not N.
//!
//! When a write fails (version conflict with another replica, an unknown outcome after a
//! store error), the shard is read again, and the rule is: **a change is committed exactly
//! when the shard as re-read shows it** (the owner's fingerprint at that offset for an
//! insert, its absence for a removal). Changes that did not land are planned again on the
//! fresh state. A request that fails after part of it was committed (the IPv6 half of a
//! dual-stack request, say) gives back what it got before its error is returned, so a
//! refused request changes nothing. Every write bumps the shard's `revision`, so that even a
//! write that changes no address changes the object's version.

mod pending;
mod plan;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use danm_core::layout::{shard_first, shard_index, shard_len};
use danm_core::policy::pool_point;
use danm_core::{AddressRequest, Family, NetworkKey, NetworkPlan, PerFamily, ShardBits};
use danm_crds::{AllocationShardSpec, ShardNetworkRef};
use futures::future::join_all;
use tokio::sync::{mpsc, oneshot};

use crate::error::EngineError;
use crate::metrics::{Metrics, PoolUsage};
use crate::store::{Store, StoreError, Version};
use pending::{Change, Op, Pending, PendingKind};
pub use pending::{Granted, Held};
use plan::Work;
use state::{Cached, Worker};
pub use state::{WorkerConfig, decode_shard};

/// A request to the worker.
enum Job {
    Request(Box<Pending>),
    Replan(Arc<NetworkPlan>),
}

/// The way to a network's worker. Cloning it is cheap; the worker ends when every handle
/// is dropped.
#[derive(Clone, Debug)]
pub struct WorkerHandle {
    network: NetworkKey,
    queue: mpsc::UnboundedSender<Job>,
    usage: Arc<PoolUsage>,
}

impl WorkerHandle {
    /// Starts the worker of `plan`'s network; `uid` is the network object's (for the shards'
    /// owner references).
    pub fn spawn(
        plan: Arc<NetworkPlan>,
        uid: String,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        config: WorkerConfig,
    ) -> WorkerHandle {
        let (queue, rx) = mpsc::unbounded_channel();
        let network = plan.key.clone();
        let mut worker = Worker::new(plan, uid, store, metrics, config);
        let usage = Arc::clone(&worker.usage);
        tokio::spawn(async move { worker.run(rx).await });
        WorkerHandle {
            network,
            queue,
            usage,
        }
    }

    /// Addresses held per family, as the worker's cache saw them after its last round;
    /// None before its first round (shards are loaded on the first request).
    pub fn usage(&self) -> Option<PerFamily<u64>> {
        self.usage.get()
    }

    async fn ask<T>(
        &self,
        fingerprint: u64,
        kind: impl FnOnce(oneshot::Sender<Result<T, EngineError>>) -> PendingKind,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job::Request(Box::new(Pending::new(
                fingerprint,
                kind(reply),
            ))))
            .map_err(|_| EngineError::ShuttingDown)?;
        answer.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// Takes addresses for the owner `fingerprint`: for each family, what `requests` asks.
    pub async fn allocate(
        &self,
        fingerprint: u64,
        requests: PerFamily<AddressRequest>,
    ) -> Result<Granted, EngineError> {
        if !requests.any(|_, r| r.needs_address()) {
            return Ok(Granted::default());
        }
        self.ask(fingerprint, |reply| PendingKind::Allocate {
            requests,
            held: Held::default(),
            reused: PerFamily::default(),
            error: None,
            reply,
        })
        .await
    }

    /// Frees the addresses the owner still holds among `addresses`; returns those it no
    /// longer holds (freed now, or already).
    pub async fn release(
        &self,
        fingerprint: u64,
        addresses: Vec<(Family, u128)>,
    ) -> Result<Vec<(Family, u128)>, EngineError> {
        if addresses.is_empty() {
            return Ok(Vec::new());
        }
        self.ask(fingerprint, |reply| PendingKind::Release {
            todo: addresses,
            done: Vec::new(),
            error: None,
            reply,
        })
        .await
    }

    /// Writes the shard of `offset` so that the owner holds it, with a new version whether
    /// or not the owner held it already: called after the owner's record names an address
    /// it found already held, this write fences off an orphan reclaim that decided on the
    /// shard as it was before ([`WorkerHandle::reclaim`] frees only at the version it saw).
    /// Fails with `InUse` if another owner took it meanwhile.
    pub async fn renew(
        &self,
        fingerprint: u64,
        family: Family,
        offset: u128,
    ) -> Result<(), EngineError> {
        self.ask(fingerprint, |reply| PendingKind::Renew {
            family,
            offset,
            done: false,
            error: None,
            reply,
        })
        .await
    }

    /// Frees `offset` only if the owner `fingerprint` holds it and its shard is still at
    /// version `observed` (what the orphan reclaimer read before confirming that no record
    /// names it). Returns whether it was freed; a shard written since is left alone.
    pub async fn reclaim(
        &self,
        fingerprint: u64,
        family: Family,
        offset: u128,
        observed: Version,
    ) -> Result<bool, EngineError> {
        self.ask(fingerprint, |reply| PendingKind::Reclaim {
            family,
            offset,
            observed,
            outcome: None,
            reply,
        })
        .await
    }

    /// Hands the worker a new plan (the network object changed).
    pub fn replan(&self, plan: Arc<NetworkPlan>) {
        let _ = self.queue.send(Job::Replan(plan));
    }

    /// The network this worker serves.
    pub fn network(&self) -> &NetworkKey {
        &self.network
    }
}

impl Worker {
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut queue: Vec<Pending> = Vec::new();
        loop {
            if queue.is_empty() {
                match rx.recv().await {
                    Some(job) => self.accept(job, &mut queue),
                    None => return,
                }
            }
            while queue.len() < self.config.max_batch {
                match rx.try_recv() {
                    Ok(job) => self.accept(job, &mut queue),
                    Err(_) => break,
                }
            }
            if queue.is_empty() {
                continue;
            }
            if !self.loaded
                && let Err(e) = self.load().await
            {
                tracing::warn!(network = %self.plan.key, error = %e, "cannot load shards");
                for p in queue.drain(..) {
                    p.abandon(EngineError::Store(e.clone()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            self.metrics.rounds.inc();
            self.metrics.batch_size.observe(queue.len() as f64);
            queue = self.round(queue).await;
            self.publish_usage();
        }
    }

    fn accept(&mut self, job: Job, queue: &mut Vec<Pending>) {
        match job {
            Job::Request(p) => queue.push(*p),
            Job::Replan(plan) => {
                tracing::info!(network = %plan.key, "network changed, new plan in use");
                self.plan = plan;
            }
        }
    }

    async fn load(&mut self) -> Result<(), StoreError> {
        let shards = self.store.list_shards(&self.plan.key).await?;
        for shard in shards {
            self.cache(shard);
        }
        self.loaded = true;
        Ok(())
    }

    /// Reads again the shards whose state is unknown; they are "fresh" for this round.
    async fn refresh_stale(&mut self) {
        self.fresh.clear();
        for (family, index) in std::mem::take(&mut self.stale) {
            match self.store.get_shard(&self.shard_key(family, index)).await {
                Ok(Some(shard)) => {
                    self.cache(shard);
                    self.fresh.insert((family, index));
                }
                Ok(None) => {
                    self.shards.remove(&(family, index));
                    self.fresh.insert((family, index));
                }
                Err(_) => {
                    self.stale.insert((family, index));
                }
            }
        }
    }

    /// One round: plan every pending request, write every touched shard once, settle.
    /// Returns the requests that must go on to the next round.
    async fn round(&mut self, mut pending: Vec<Pending>) -> Vec<Pending> {
        self.refresh_stale().await;
        let mut work: Work = BTreeMap::new();
        let mut ops: Vec<Op> = Vec::new();
        for (index, p) in pending.iter_mut().enumerate() {
            self.plan_one(index, p, &mut work, &mut ops);
        }

        // Write each touched shard once, all in parallel.
        let keys: Vec<(Family, u128)> = ops
            .iter()
            .map(|op| (op.family, shard_index(op.offset)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let writes = keys.iter().map(|&(family, index)| {
            let (expected, revision) = match self.shards.get(&(family, index)) {
                Some(Cached::Good {
                    version, revision, ..
                }) => (Some(version.clone()), *revision),
                _ => (None, 0),
            };
            let spec = self.shard_spec(family, index, &work[&(family, index)], revision + 1);
            let key = self.shard_key(family, index);
            let store = Arc::clone(&self.store);
            async move {
                let written = match &expected {
                    Some(v) => store.update_shard(&key, spec.clone(), v).await,
                    None => store.create_shard(&key, spec.clone()).await,
                };
                written.map(|version| (version, spec.revision))
            }
        });
        let results = join_all(writes).await;
        self.metrics.shard_writes.inc_by(keys.len() as u64);

        let mut store_trouble = None;
        for ((family, index), result) in keys.iter().copied().zip(results) {
            let shard_ops: Vec<Op> = ops
                .iter()
                .filter(|op| op.family == family && shard_index(op.offset) == index)
                .copied()
                .collect();
            match result {
                Ok((version, revision)) => {
                    let bits = work.remove(&(family, index)).expect("written shard");
                    self.shards.insert(
                        (family, index),
                        Cached::Good {
                            version,
                            revision,
                            bits,
                        },
                    );
                    for op in shard_ops {
                        pending[op.pending].settle(op, true);
                    }
                }
                Err(e) => {
                    if matches!(e, StoreError::Conflict(_) | StoreError::AlreadyExists(_)) {
                        self.metrics.conflicts.inc();
                        // Another replica writes this shard: take new addresses elsewhere,
                        // or the replica that re-reads first keeps winning it.
                        if shard_ops.iter().any(|op| op.change == Change::Insert) {
                            self.hop(family);
                        }
                    } else {
                        tracing::warn!(shard = %self.shard_key(family, index).name(), error = %e, "shard write failed, re-reading it");
                        store_trouble = Some(e.clone());
                    }
                    self.reread_after_failed_write(
                        family,
                        index,
                        &shard_ops,
                        &mut pending,
                        &mut store_trouble,
                    )
                    .await;
                }
            }
        }
        self.finish_round(pending, store_trouble).await
    }

    /// After a write of shard `(family, index)` failed: reads it again and settles each of
    /// its changes by what the shard now shows.
    async fn reread_after_failed_write(
        &mut self,
        family: Family,
        index: u128,
        shard_ops: &[Op],
        pending: &mut [Pending],
        store_trouble: &mut Option<StoreError>,
    ) {
        match self.store.get_shard(&self.shard_key(family, index)).await {
            Ok(Some(shard)) => self.cache(shard),
            Ok(None) => {
                self.shards.remove(&(family, index));
            }
            Err(e) => {
                *store_trouble = Some(e);
                // Outcome unknown and unreadable: read it again before use.
                self.stale.insert((family, index));
                self.shards.remove(&(family, index));
            }
        }
        for op in shard_ops {
            let p = &mut pending[op.pending];
            if self.stale.contains(&(family, index)) {
                // Unknown: decided after the next read. A reclaim is not retried.
                if matches!(p.kind, PendingKind::Reclaim { .. }) {
                    p.settle(*op, false);
                }
                continue;
            }
            let owner = match self.shards.get(&(family, index)) {
                Some(Cached::Good { bits, .. }) => {
                    bits.owner_of(danm_core::layout::local_offset(op.offset))
                }
                _ => None,
            };
            let landed = match op.change {
                Change::Insert => owner == Some(p.fingerprint),
                Change::Remove => owner != Some(p.fingerprint),
                // A touch is done only by a write known to have landed: do it again.
                Change::Touch => false,
            };
            match &p.kind {
                // A reclaim that lost its write is over: the shard changed since.
                PendingKind::Reclaim { .. } => p.settle(*op, landed),
                // A renewal that did not land is planned again next round.
                PendingKind::Renew { .. } if !landed => {}
                _ => p.settle(*op, landed),
            }
        }
    }

    /// Answers what is finished; returns the rest for the next round.
    async fn finish_round(
        &mut self,
        pending: Vec<Pending>,
        store_trouble: Option<StoreError>,
    ) -> Vec<Pending> {
        let mut next = Vec::new();
        for mut p in pending {
            if p.is_finished() {
                p.answer();
                continue;
            }
            p.attempts += 1;
            if p.attempts >= self.config.max_attempts {
                let error = EngineError::Contention {
                    network: self.plan.key.to_string(),
                    attempts: p.attempts,
                    last: store_trouble.as_ref().map(ToString::to_string),
                };
                tracing::error!(network = %self.plan.key, %error, "request abandoned");
                p.abandon(error);
                continue;
            }
            self.metrics.retries.inc();
            next.push(p);
        }
        if store_trouble.is_some() && !next.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        next
    }

    /// Moves the dynamic search of `family` to a pseudo-random point of the pool.
    fn hop(&mut self, family: Family) {
        // xorshift64: cheap, and different in every replica (seeded with the start hint
        // and the process id).
        let mut x = self.hop_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.hop_state = x;
        if let Some((first, last)) = self.plan.family(family).and_then(|f| f.pool) {
            *self.cursors.get_mut(family) = pool_point(first, last, (x >> 48) as u16);
        }
    }

    fn shard_spec(
        &self,
        family: Family,
        index: u128,
        bits: &ShardBits,
        revision: u64,
    ) -> AllocationShardSpec {
        let plan = self
            .plan
            .family(family)
            .expect("shards exist only for planned families");
        let encoded = bits.encode();
        AllocationShardSpec {
            network: ShardNetworkRef {
                kind: self.plan.key.kind.as_str().to_owned(),
                namespace: self.plan.key.namespace.clone(),
                name: self.plan.key.name.clone(),
                uid: self.uid.clone(),
            },
            family: family.as_str().to_owned(),
            cidr: plan.cidr.to_string(),
            first: plan
                .cidr
                .addr_at(shard_first(index))
                .map(|a| a.to_string())
                .unwrap_or_default(),
            size: shard_len(index, plan.cidr.last_offset()),
            allocated: encoded.allocated,
            crc32: encoded.crc32,
            payload: encoded.payload,
            revision,
        }
    }
}
