//! The per-network allocation worker: shard cache, address picking and group commit.
//!
//! Every network has one worker task. Requests queue up while the worker is writing; the
//! next round takes all of them at once (up to `max_batch`), picks addresses for every
//! request on working copies of the cached shards, and writes each touched shard once,
//! all shards in parallel, with compare-and-swap. So N concurrent requests that land on one
//! shard cost one write, not N.
//!
//! When a write fails (version conflict with another replica, an unknown outcome after a
//! store error), the shard is read again, and the rule is: **a pick is committed exactly
//! when the shard as re-read holds the request's owner fingerprint at that offset**. Picks
//! that did not land are made again on the fresh state. A request that fails after part of
//! it was committed (the IPv6 half of a dual-stack request, say) gives back what it got
//! before its error is returned, so a refused request changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use danm_core::codec::{BitsError, CodecError};
use danm_core::layout::{local_offset, shard_first, shard_index, shard_len};
use danm_core::policy::{ShardView, check_static, describe_pool, find_free, pool_point};
use danm_core::{AddressRequest, AllocError, Family, NetworkPlan, ShardBits};
use danm_crds::{AllocationShardSpec, ShardNetworkRef};
use futures::future::join_all;
use tokio::sync::{mpsc, oneshot};

use crate::engine::{EngineError, Metrics};
use crate::store::{ShardKey, Store, StoreError, StoredShard, Version};

/// Addresses (offsets in the family's CIDR) held by one request, IPv4 then IPv6.
pub type Held = [Option<u128>; 2];

/// A request to the worker.
#[derive(Debug)]
pub enum Job {
    /// Take addresses for an owner.
    Allocate {
        /// Owner fingerprint.
        fingerprint: u64,
        /// IPv4 and IPv6 requests.
        requests: [AddressRequest; 2],
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Held, EngineError>>,
    },
    /// Give addresses back (only those the owner still holds are freed).
    Release {
        /// Owner fingerprint.
        fingerprint: u64,
        /// Addresses to free.
        addresses: Vec<(Family, u128)>,
        /// Where the answer goes: the addresses this owner no longer holds.
        reply: oneshot::Sender<Result<Vec<(Family, u128)>, EngineError>>,
    },
    /// Replace the network plan (the network object changed).
    Replan(Arc<NetworkPlan>),
}

/// Tunables of a worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Most requests taken into one round.
    pub max_batch: usize,
    /// Rounds a request may take part in before it is refused as UNAVAILABLE.
    pub max_attempts: u32,
    /// Where dynamic allocation starts in each pool (replicas start in different places so
    /// they rarely collide), as a fraction of the pool in 1/65536.
    pub start_hint: u16,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_batch: 1024,
            max_attempts: 32,
            start_hint: 0,
        }
    }
}

#[derive(Debug)]
enum Cached {
    Good { version: Version, bits: ShardBits },
    Corrupt { reason: String },
}

/// Starts a worker; returns the queue to send it jobs.
pub fn spawn(
    plan: Arc<NetworkPlan>,
    uid: String,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    config: WorkerConfig,
) -> mpsc::UnboundedSender<Job> {
    let (tx, rx) = mpsc::unbounded_channel();
    let hop_state = 0x9e37_79b9_7f4a_7c15
        ^ u64::from(config.start_hint)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut worker = Worker {
        cursors: [
            start_cursor(&plan, Family::V4, config.start_hint),
            start_cursor(&plan, Family::V6, config.start_hint),
        ],
        plan,
        uid,
        store,
        metrics,
        config,
        shards: HashMap::new(),
        stale: Default::default(),
        fresh: Default::default(),
        hop_state,
        loaded: false,
    };
    tokio::spawn(async move { worker.run(rx).await });
    tx
}

fn start_cursor(plan: &NetworkPlan, family: Family, hint: u16) -> u128 {
    match plan.family(family).and_then(|f| f.pool) {
        Some((first, last)) => pool_point(first, last, hint),
        None => 0,
    }
}

fn family_index(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

struct Worker {
    plan: Arc<NetworkPlan>,
    uid: String,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    config: WorkerConfig,
    shards: HashMap<(Family, u128), Cached>,
    /// Shards whose state is unknown (a write and the re-read after it failed): read again
    /// before they are used.
    stale: std::collections::BTreeSet<(Family, u128)>,
    /// Shards read from the store at the start of this round: their "not held" is final.
    fresh: std::collections::BTreeSet<(Family, u128)>,
    cursors: [u128; 2],
    /// State of the generator that picks where to move after losing a shard.
    hop_state: u64,
    loaded: bool,
}

/// One request inside a round.
struct Pending {
    fingerprint: u64,
    kind: PendingKind,
    attempts: u32,
}

enum PendingKind {
    Allocate {
        requests: [AddressRequest; 2],
        held: Held,
        /// Set once the request has failed: what it holds is then given back first.
        error: Option<EngineError>,
        reply: oneshot::Sender<Result<Held, EngineError>>,
    },
    Release {
        todo: Vec<(Family, u128)>,
        done: Vec<(Family, u128)>,
        error: Option<EngineError>,
        reply: oneshot::Sender<Result<Vec<(Family, u128)>, EngineError>>,
    },
}

/// A tentative change of one round.
#[derive(Clone, Copy)]
struct Op {
    pending: usize,
    family: Family,
    offset: u128,
    insert: bool,
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
            self.metrics.rounds.fetch_add(1, Ordering::Relaxed);
            queue = self.round(queue).await;
        }
    }

    fn accept(&mut self, job: Job, queue: &mut Vec<Pending>) {
        match job {
            Job::Allocate {
                fingerprint,
                requests,
                reply,
            } => queue.push(Pending {
                fingerprint,
                attempts: 0,
                kind: PendingKind::Allocate {
                    requests,
                    held: [None, None],
                    error: None,
                    reply,
                },
            }),
            Job::Release {
                fingerprint,
                addresses,
                reply,
            } => queue.push(Pending {
                fingerprint,
                attempts: 0,
                kind: PendingKind::Release {
                    todo: addresses,
                    done: Vec::new(),
                    error: None,
                    reply,
                },
            }),
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

    fn cache(&mut self, shard: StoredShard) {
        let key = (shard.key.family, shard.key.index);
        match decode_shard(&shard) {
            Ok(bits) => {
                self.shards.insert(
                    key,
                    Cached::Good {
                        version: shard.version,
                        bits,
                    },
                );
            }
            Err(reason) => {
                self.metrics.corrupt_shards.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    shard = %shard.key.name(),
                    network = %self.plan.key,
                    %reason,
                    "shard refused: it will not be used until repaired by an operator"
                );
                self.shards.insert(key, Cached::Corrupt { reason });
            }
        }
    }

    fn shard_key(&self, family: Family, index: u128) -> ShardKey {
        ShardKey {
            network: self.plan.key.clone(),
            family,
            index,
        }
    }

    fn unusable(&self, family: Family, index: u128, reason: &str) -> EngineError {
        EngineError::Alloc(AllocError::ShardUnusable {
            network: self.plan.key.to_string(),
            shard: self.shard_key(family, index).name(),
            reason: reason.to_owned(),
        })
    }

    /// One round: plan every pending request, write every touched shard once, settle.
    /// Returns the requests that must go on to the next round.
    async fn round(&mut self, mut pending: Vec<Pending>) -> Vec<Pending> {
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
        let mut work: BTreeMap<(Family, u128), ShardBits> = BTreeMap::new();
        let mut ops: Vec<Op> = Vec::new();
        for (index, p) in pending.iter_mut().enumerate() {
            self.plan_one(index, p, &mut work, &mut ops);
        }

        // Write each touched shard once, all in parallel.
        let keys: Vec<(Family, u128)> = ops
            .iter()
            .map(|op| (op.family, shard_index(op.offset)))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let writes = keys.iter().map(|&(family, index)| {
            let bits = &work[&(family, index)];
            let spec = self.shard_spec(family, index, bits);
            let key = self.shard_key(family, index);
            let expected = match self.shards.get(&(family, index)) {
                Some(Cached::Good { version, .. }) => Some(version.clone()),
                _ => None,
            };
            let store = Arc::clone(&self.store);
            async move {
                match expected {
                    Some(v) => store.update_shard(&key, spec, &v).await,
                    None => store.create_shard(&key, spec).await,
                }
            }
        });
        let results = join_all(writes).await;
        self.metrics
            .shard_writes
            .fetch_add(keys.len() as u64, Ordering::Relaxed);

        let mut store_trouble = None;
        for ((family, index), result) in keys.iter().copied().zip(results) {
            let shard_ops = ops
                .iter()
                .filter(|op| op.family == family && shard_index(op.offset) == index);
            match result {
                Ok(version) => {
                    let bits = work.remove(&(family, index)).expect("written shard");
                    self.shards
                        .insert((family, index), Cached::Good { version, bits });
                    for op in shard_ops {
                        settle(&mut pending[op.pending], *op, true);
                    }
                }
                Err(e) => {
                    if matches!(e, StoreError::Conflict(_) | StoreError::AlreadyExists(_)) {
                        self.metrics.conflicts.fetch_add(1, Ordering::Relaxed);
                        // Another replica writes this shard: take new addresses elsewhere,
                        // or the replica that re-reads first keeps winning it.
                        if ops.iter().any(|op| {
                            op.insert && op.family == family && shard_index(op.offset) == index
                        }) {
                            self.hop(family);
                        }
                    } else {
                        tracing::warn!(shard = %self.shard_key(family, index).name(), error = %e, "shard write failed, re-reading it");
                        store_trouble = Some(e.clone());
                    }
                    // Re-read: what landed is what the store holds.
                    let fresh = self.store.get_shard(&self.shard_key(family, index)).await;
                    match fresh {
                        Ok(Some(shard)) => self.cache(shard),
                        Ok(None) => {
                            self.shards.remove(&(family, index));
                        }
                        Err(e) => {
                            store_trouble = Some(e);
                            // Outcome unknown and unreadable: read it again before use.
                            self.stale.insert((family, index));
                            self.shards.remove(&(family, index));
                        }
                    }
                    for op in shard_ops {
                        if self.stale.contains(&(family, index)) {
                            continue; // unknown: decided after the next read
                        }
                        let landed = match self.shards.get(&(family, index)) {
                            Some(Cached::Good { bits, .. }) => {
                                let owner = bits.owner_of(local_offset(op.offset));
                                (owner == Some(pending[op.pending].fingerprint)) == op.insert
                            }
                            _ => false,
                        };
                        settle(&mut pending[op.pending], *op, landed);
                    }
                }
            }
        }

        // Answer what is finished; keep the rest for the next round.
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
            self.metrics.retries.fetch_add(1, Ordering::Relaxed);
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
            self.cursors[family_index(family)] = pool_point(first, last, (x >> 48) as u16);
        }
    }

    /// Plans one request on the working copies.
    fn plan_one(
        &mut self,
        index: usize,
        p: &mut Pending,
        work: &mut BTreeMap<(Family, u128), ShardBits>,
        ops: &mut Vec<Op>,
    ) {
        let fingerprint = p.fingerprint;
        let mut nothing_to_write: Vec<Op> = Vec::new();
        let mut remove = |this: &mut Self,
                          family: Family,
                          offset: u128,
                          work: &mut BTreeMap<(Family, u128), ShardBits>,
                          ops: &mut Vec<Op>| {
            match this.plan_remove(index, fingerprint, family, offset, work) {
                Some(op) => ops.push(op),
                // Unknown state: try again next round.
                None if this.stale.contains(&(family, shard_index(offset))) => {}
                None => nothing_to_write.push(Op {
                    pending: index,
                    family,
                    offset,
                    insert: false,
                }),
            }
        };
        match &mut p.kind {
            PendingKind::Allocate {
                requests,
                held,
                error,
                ..
            } => {
                if error.is_some() {
                    // Failed: give back what it holds.
                    for family in FAMILIES {
                        if let Some(offset) = held[family_index(family)] {
                            remove(self, family, offset, work, ops);
                        }
                    }
                }
                let mark = ops.len();
                for family in FAMILIES {
                    let fi = family_index(family);
                    if error.is_some() || held[fi].is_some() || !requests[fi].needs_address() {
                        continue;
                    }
                    match self.pick(fingerprint, family, requests[fi], work) {
                        Ok(Pick::Already(offset)) => held[fi] = Some(offset),
                        Ok(Pick::Deferred) => {}
                        Ok(Pick::New(offset)) => ops.push(Op {
                            pending: index,
                            family,
                            offset,
                            insert: true,
                        }),
                        Err(e) => {
                            // Undo this round's picks of this request.
                            for op in ops.drain(mark..) {
                                if let Some(bits) =
                                    work.get_mut(&(op.family, shard_index(op.offset)))
                                {
                                    let _ = bits.remove(local_offset(op.offset), fingerprint);
                                }
                            }
                            *error = Some(e);
                            for family in FAMILIES {
                                if let Some(offset) = held[family_index(family)] {
                                    remove(self, family, offset, work, ops);
                                }
                            }
                        }
                    }
                }
            }
            PendingKind::Release { todo, error, .. } => {
                for &(family, offset) in todo.iter() {
                    let si = shard_index(offset);
                    if let Some(Cached::Corrupt { reason }) = self.shards.get(&(family, si)) {
                        *error = Some(self.unusable(family, si, &reason.clone()));
                        continue;
                    }
                    remove(self, family, offset, work, ops);
                }
            }
        }
        for op in nothing_to_write {
            settle(p, op, true);
        }
    }

    /// Plans freeing `offset` if `fingerprint` holds it. Returns the op when that changes
    /// the shard; `None` when the owner does not hold it (nothing to write) or when that is
    /// not known yet: the cache may predate an allocation made by another replica, so "not
    /// held" is only believed from a shard read this round (else it is marked stale and the
    /// release waits a round).
    fn plan_remove(
        &mut self,
        index: usize,
        fingerprint: u64,
        family: Family,
        offset: u128,
        work: &mut BTreeMap<(Family, u128), ShardBits>,
    ) -> Option<Op> {
        let si = shard_index(offset);
        if self.stale.contains(&(family, si)) {
            return None;
        }
        let holds = match work.get(&(family, si)) {
            Some(bits) => bits.owner_of(local_offset(offset)) == Some(fingerprint),
            None => match self.shards.get(&(family, si)) {
                Some(Cached::Good { bits, .. }) => {
                    bits.owner_of(local_offset(offset)) == Some(fingerprint)
                }
                _ => false,
            },
        };
        if !holds {
            if !self.fresh.contains(&(family, si))
                && !matches!(self.shards.get(&(family, si)), Some(Cached::Corrupt { .. }))
            {
                self.stale.insert((family, si));
            }
            return None;
        }
        let bits = self.working_copy(family, si, work)?;
        bits.remove(local_offset(offset), fingerprint).ok()?;
        Some(Op {
            pending: index,
            family,
            offset,
            insert: false,
        })
    }

    /// The working copy of a shard (created empty when the shard does not exist yet);
    /// `None` when the shard is corrupt.
    fn working_copy<'w>(
        &self,
        family: Family,
        index: u128,
        work: &'w mut BTreeMap<(Family, u128), ShardBits>,
    ) -> Option<&'w mut ShardBits> {
        match work.entry((family, index)) {
            std::collections::btree_map::Entry::Occupied(e) => Some(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(e) => {
                let bits = match self.shards.get(&(family, index)) {
                    Some(Cached::Good { bits, .. }) => bits.clone(),
                    Some(Cached::Corrupt { .. }) => return None,
                    None => ShardBits::new(),
                };
                Some(e.insert(bits))
            }
        }
    }

    fn pick(
        &mut self,
        fingerprint: u64,
        family: Family,
        request: AddressRequest,
        work: &mut BTreeMap<(Family, u128), ShardBits>,
    ) -> Result<Pick, EngineError> {
        let network = self.plan.key.to_string();
        let plan = self.plan.family(family).ok_or_else(|| {
            EngineError::Alloc(AllocError::NoSubnet {
                network: network.clone(),
                family,
            })
        })?;
        let offset = match request {
            AddressRequest::Static(ip) => {
                let offset = check_static(&network, plan, ip).map_err(EngineError::Alloc)?;
                let si = shard_index(offset);
                if let Some(Cached::Corrupt { reason }) = self.shards.get(&(family, si)) {
                    return Err(self.unusable(family, si, &reason.clone()));
                }
                if self.stale.contains(&(family, si)) {
                    return Ok(Pick::Deferred);
                }
                let bits = self.working_copy(family, si, work).expect("not corrupt");
                return match bits.insert(local_offset(offset), fingerprint) {
                    Ok(()) => Ok(Pick::New(offset)),
                    Err(BitsError::Taken { owner }) if owner == fingerprint => {
                        Ok(Pick::Already(offset))
                    }
                    Err(_) => Err(EngineError::Alloc(AllocError::InUse {
                        network,
                        address: ip,
                    })),
                };
            }
            AddressRequest::Dynamic => {
                let cursor = self.cursors[family_index(family)];
                let shards = &self.shards;
                let stale = &self.stale;
                let view = |index: u128| match work.get(&(family, index)) {
                    _ if stale.contains(&(family, index)) => ShardView::Unusable,
                    Some(bits) => ShardView::Present(bits),
                    None => match shards.get(&(family, index)) {
                        Some(Cached::Good { bits, .. }) => ShardView::Present(bits),
                        Some(Cached::Corrupt { .. }) => ShardView::Unusable,
                        None => ShardView::Absent,
                    },
                };
                find_free(plan, cursor, view).ok_or_else(|| {
                    EngineError::Alloc(AllocError::Exhausted {
                        network: network.clone(),
                        family,
                        pool: describe_pool(plan),
                    })
                })?
            }
            AddressRequest::None | AddressRequest::Skip => unreachable!("no address needed"),
        };
        self.cursors[family_index(family)] = offset + 1;
        let bits = self
            .working_copy(family, shard_index(offset), work)
            .expect("find_free skips corrupt shards");
        bits.insert(local_offset(offset), fingerprint)
            .expect("find_free returns a free offset");
        Ok(Pick::New(offset))
    }

    fn shard_spec(&self, family: Family, index: u128, bits: &ShardBits) -> AllocationShardSpec {
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
        }
    }
}

enum Pick {
    /// A new tentative allocation.
    New(u128),
    /// The owner already holds this static address.
    Already(u128),
    /// The shard's state is unknown: try again next round.
    Deferred,
}

/// Decodes a stored shard, refusing a bad CRC or a shard of another layout.
pub fn decode_shard(shard: &StoredShard) -> Result<ShardBits, String> {
    if Family::parse(&shard.spec.family) != Some(shard.key.family) {
        return Err(format!(
            "family {:?} does not match its key",
            shard.spec.family
        ));
    }
    ShardBits::decode(&shard.spec.payload, shard.spec.crc32).map_err(|e| match e {
        CodecError::CrcMismatch { .. } => format!("corrupt payload: {e}"),
        other => other.to_string(),
    })
}

/// Records the outcome of one op.
fn settle(p: &mut Pending, op: Op, landed: bool) {
    match &mut p.kind {
        PendingKind::Allocate { held, .. } => {
            let slot = &mut held[family_index(op.family)];
            if op.insert && landed {
                *slot = Some(op.offset);
            } else if !op.insert && landed {
                *slot = None;
            }
        }
        PendingKind::Release { todo, done, .. } => {
            if landed {
                todo.retain(|a| *a != (op.family, op.offset));
                done.push((op.family, op.offset));
            }
        }
    }
}

impl Pending {
    fn is_finished(&self) -> bool {
        match &self.kind {
            PendingKind::Allocate {
                requests,
                held,
                error,
                ..
            } => match error {
                Some(_) => held.iter().all(Option::is_none),
                None => FAMILIES.iter().all(|f| {
                    let i = family_index(*f);
                    !requests[i].needs_address() || held[i].is_some()
                }),
            },
            PendingKind::Release { todo, error, .. } => todo.is_empty() || error.is_some(),
        }
    }

    fn answer(self) {
        match self.kind {
            PendingKind::Allocate {
                held, error, reply, ..
            } => {
                let _ = reply.send(match error {
                    Some(e) => Err(e),
                    None => Ok(held),
                });
            }
            PendingKind::Release {
                done, error, reply, ..
            } => {
                let _ = reply.send(match error {
                    Some(e) => Err(e),
                    None => Ok(done),
                });
            }
        }
    }

    fn fail_now(self, error: EngineError) {
        match self.kind {
            PendingKind::Allocate { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            PendingKind::Release { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }

    fn abandon(self, error: EngineError) {
        if let PendingKind::Allocate { held, .. } = &self.kind
            && held.iter().any(Option::is_some)
        {
            tracing::error!(
                ?held,
                "abandoned request still holds addresses: they stay recorded under its owner \
                 fingerprint and are reclaimed by garbage collection"
            );
        }
        self.fail_now(error);
    }
}
