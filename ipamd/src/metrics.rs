//! The engine's counters, shared by the workers and reported by the Status RPC.

use std::sync::atomic::AtomicU64;

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
    /// Addresses freed by the orphan reclaimer.
    pub orphans_reclaimed: AtomicU64,
}
