//! ipamd's metrics: the engine's counters (shared by the workers, reported by the Status
//! RPC), each RPC's latency and result, and every pool's usage. A leaf: the workers and the
//! engine count here, and [`crate::registry`] reports it all in Prometheus' text format on
//! the admin port (`/metrics`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use danm_core::PerFamily;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Counters of the engine and its workers.
#[derive(Debug)]
pub struct Metrics {
    /// Shard writes attempted.
    pub shard_writes: Counter,
    /// Shard writes that lost a compare-and-swap.
    pub conflicts: Counter,
    /// Requests carried over to another round.
    pub retries: Counter,
    /// Rounds (group commits) run.
    pub rounds: Counter,
    /// Requests per round.
    pub batch_size: Histogram,
    /// Shards refused because their payload is corrupt (CRC or layout).
    pub corrupt_shards: Counter,
    /// Addresses handed out.
    pub allocations: Counter,
    /// Addresses freed by Release, Detach and Gc.
    pub releases: Counter,
    /// Addresses freed by the orphan reclaimer.
    pub orphans_reclaimed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            shard_writes: Counter::default(),
            conflicts: Counter::default(),
            retries: Counter::default(),
            rounds: Counter::default(),
            // 1 to 1,024 requests (a round takes at most WorkerConfig::max_batch).
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            corrupt_shards: Counter::default(),
            allocations: Counter::default(),
            releases: Counter::default(),
            orphans_reclaimed: Counter::default(),
        }
    }
}

/// Labels of one RPC's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The method (`Attach`, `Release`...).
    pub method: String,
    /// The gRPC status code (`Ok`, `PermissionDenied`...).
    pub code: String,
}

/// Labels of a refused RPC.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// The method.
    pub method: String,
}

type RpcHistograms = Family<RpcLabels, Histogram, fn() -> Histogram>;

/// Metrics of the gRPC server.
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    /// Seconds per RPC, by method and code.
    pub duration: RpcHistograms,
    /// RPCs refused by authorization, by method.
    pub denied: Family<MethodLabels, Counter>,
    /// TLS handshakes that failed or timed out (no client certificate, an unknown CA,
    /// plaintext on the TLS port).
    pub tls_handshake_failures: Counter,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        fn histogram() -> Histogram {
            // 0.1 ms to about 3 s.
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        }
        RpcMetrics {
            duration: Family::new_with_constructor(histogram),
            denied: Family::default(),
            tls_handshake_failures: Counter::default(),
        }
    }
}

/// Addresses held in one network, per family, as the worker's cache last saw them.
#[derive(Debug, Default)]
pub struct PoolUsage {
    v4: AtomicU64,
    v6: AtomicU64,
    /// Whether the worker has loaded its shards yet (it does on its first request).
    known: AtomicBool,
}

impl PoolUsage {
    /// Records what each family holds now.
    pub fn set(&self, held: PerFamily<u64>) {
        self.v4.store(held.v4, Ordering::Relaxed);
        self.v6.store(held.v6, Ordering::Relaxed);
        self.known.store(true, Ordering::Release);
    }

    /// What each family holds; None before the worker has loaded its shards.
    pub fn get(&self) -> Option<PerFamily<u64>> {
        self.known.load(Ordering::Acquire).then(|| {
            PerFamily::new(
                self.v4.load(Ordering::Relaxed),
                self.v6.load(Ordering::Relaxed),
            )
        })
    }
}
