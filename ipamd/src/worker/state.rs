//! A worker's state: its network's plan, its cache of the network's shards and what is
//! known of each, and its search cursors.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use danm_core::policy::pool_point;
use danm_core::{AllocError, Family, NetworkPlan, PerFamily, ShardBits};

use crate::error::EngineError;
use crate::metrics::{Metrics, PoolUsage};
use crate::store::{ShardKey, Store, StoredShard, Version};

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
pub(super) enum Cached {
    Good {
        version: Version,
        revision: u64,
        bits: ShardBits,
    },
    Corrupt {
        reason: String,
    },
}

pub(super) struct Worker {
    pub(super) plan: Arc<NetworkPlan>,
    pub(super) uid: String,
    pub(super) store: Arc<dyn Store>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) config: WorkerConfig,
    pub(super) shards: HashMap<(Family, u128), Cached>,
    /// Shards whose state is unknown (a write and the re-read after it failed): read again
    /// before they are used.
    pub(super) stale: BTreeSet<(Family, u128)>,
    /// Shards read from the store at the start of this round: their "not held" is final.
    pub(super) fresh: BTreeSet<(Family, u128)>,
    pub(super) cursors: PerFamily<u128>,
    /// State of the generator that picks where to move after losing a shard.
    pub(super) hop_state: u64,
    pub(super) loaded: bool,
    /// Addresses held per family, published after every round for the metrics.
    pub(super) usage: Arc<PoolUsage>,
}

fn start_cursor(plan: &NetworkPlan, family: Family, hint: u16) -> u128 {
    match plan.family(family).and_then(|f| f.pool) {
        Some((first, last)) => pool_point(first, last, hint),
        None => 0,
    }
}

impl Worker {
    pub(super) fn new(
        plan: Arc<NetworkPlan>,
        uid: String,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        config: WorkerConfig,
    ) -> Worker {
        let hop_state = 0x9e37_79b9_7f4a_7c15
            ^ u64::from(config.start_hint)
            ^ u64::from(std::process::id()).rotate_left(32);
        Worker {
            cursors: PerFamily::new(
                start_cursor(&plan, Family::V4, config.start_hint),
                start_cursor(&plan, Family::V6, config.start_hint),
            ),
            plan,
            uid,
            store,
            metrics,
            config,
            shards: HashMap::new(),
            stale: BTreeSet::new(),
            fresh: BTreeSet::new(),
            hop_state,
            loaded: false,
            usage: Arc::default(),
        }
    }

    pub(super) fn cache(&mut self, shard: StoredShard) {
        let key = (shard.key.family, shard.key.index);
        match decode_shard(&shard) {
            Ok(bits) => {
                self.shards.insert(
                    key,
                    Cached::Good {
                        version: shard.version,
                        revision: shard.spec.revision,
                        bits,
                    },
                );
            }
            Err(reason) => {
                self.metrics.corrupt_shards.inc();
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

    /// Publishes what the cached shards hold (cheap: a count per cached shard).
    pub(super) fn publish_usage(&self) {
        let held = |family: Family| -> u64 {
            self.shards
                .iter()
                .filter(|((f, _), _)| *f == family)
                .map(|(_, cached)| match cached {
                    Cached::Good { bits, .. } => u64::from(bits.len()),
                    Cached::Corrupt { .. } => 0,
                })
                .sum()
        };
        self.usage
            .set(PerFamily::new(held(Family::V4), held(Family::V6)));
    }

    pub(super) fn shard_key(&self, family: Family, index: u128) -> ShardKey {
        ShardKey {
            network: self.plan.key.clone(),
            family,
            index,
        }
    }

    pub(super) fn unusable(&self, family: Family, index: u128, reason: &str) -> EngineError {
        EngineError::Alloc(AllocError::ShardUnusable {
            network: self.plan.key.to_string(),
            shard: self.shard_key(family, index).name(),
            reason: reason.to_owned(),
        })
    }
}

/// Decodes a stored shard, refusing a bad CRC or a shard of another family than its key's
/// (the rule the cleaner uses too: [`danm_core::codec::decode_shard`]).
pub fn decode_shard(shard: &StoredShard) -> Result<ShardBits, String> {
    danm_core::codec::decode_shard(&shard.spec, shard.key.family).map_err(|e| e.to_string())
}
