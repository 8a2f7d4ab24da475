//! ipamd's metrics: the engine's counters (shared by the workers, reported by the Status
//! RPC), each RPC's latency and result, and every pool's usage, in Prometheus' text format
//! on the admin port (`/metrics`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use danm_core::{Family as IpFamily, PerFamily};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::Engine;

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

/// The registry of everything ipamd reports.
/// The registry of ipamd's metrics. `tenant_names`: whether TenantNetworks' pools are
/// named (else summed into one series per family: the metrics port is plaintext).
pub fn registry(engine: &Arc<Engine>, rpc: &RpcMetrics, tenant_names: bool) -> Registry {
    let mut registry = Registry::with_prefix("danm_ipamd");
    let m = &engine.metrics;
    let counters = [
        ("allocations", "Addresses handed out", &m.allocations),
        (
            "releases",
            "Addresses freed by Release, Detach and Gc",
            &m.releases,
        ),
        (
            "shard_writes",
            "AllocationShard writes attempted",
            &m.shard_writes,
        ),
        (
            "conflicts",
            "Shard writes that lost a compare-and-swap to another writer",
            &m.conflicts,
        ),
        (
            "retries",
            "Requests carried over to another round",
            &m.retries,
        ),
        ("rounds", "Rounds (group commits) run", &m.rounds),
        (
            "corrupt_shards",
            "Shards refused because their payload failed its CRC32 or layout check",
            &m.corrupt_shards,
        ),
        (
            "orphans_reclaimed",
            "Addresses held with no endpoint record, freed after the grace period",
            &m.orphans_reclaimed,
        ),
    ];
    for (name, help, counter) in counters {
        registry.register(name, help, counter.clone());
    }
    registry.register(
        "batch_size",
        "Requests committed per round",
        m.batch_size.clone(),
    );
    registry.register(
        "rpc_duration_seconds",
        "Time to answer an RPC, by method and gRPC code",
        rpc.duration.clone(),
    );
    registry.register(
        "authorization_denied",
        "RPCs refused because the caller may not make them, by method",
        rpc.denied.clone(),
    );
    registry.register(
        "tls_handshake_failures",
        "TLS handshakes on the gRPC port that failed or timed out (no or untrusted client certificate, plaintext)",
        rpc.tls_handshake_failures.clone(),
    );
    registry.register_collector(Box::new(Pools {
        engine: Arc::downgrade(engine),
        tenant_names,
    }));
    registry
}

/// Renders a registry in Prometheus' text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// A pool row's labels: kind, namespace, network, family.
type PoolKey = (&'static str, String, String, &'static str);

/// Every pool's capacity and usage, read at scrape time from the engine; TenantNetworks'
/// summed per family unless `tenant_names`.
#[derive(Debug)]
struct Pools {
    engine: std::sync::Weak<Engine>,
    tenant_names: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    kind: &'static str,
    namespace: String,
    network: String,
    family: &'static str,
}

impl Collector for Pools {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(engine) = self.engine.upgrade() else {
            return Ok(());
        };
        let pools = engine.pool_usage();
        // (labels) -> (capacity, used), TenantNetworks folded together when not named.
        let mut rows: std::collections::BTreeMap<PoolKey, (f64, Option<f64>)> =
            std::collections::BTreeMap::new();
        for pool in &pools {
            let kind = pool.network.kind.as_str();
            let named = self.tenant_names || kind != "TenantNetwork";
            let key = (
                kind,
                if named {
                    pool.network.namespace.clone()
                } else {
                    String::new()
                },
                if named {
                    pool.network.name.clone()
                } else {
                    String::new()
                },
                match pool.family {
                    IpFamily::V4 => "ipv4",
                    IpFamily::V6 => "ipv6",
                },
            );
            let row = rows.entry(key).or_insert((0.0, None));
            // f64: an IPv6 pool's capacity does not fit an i64.
            row.0 += pool.capacity as f64;
            if let Some(used) = pool.used {
                row.1 = Some(row.1.unwrap_or(0.0) + used as f64);
            }
        }
        for (name, help, capacity) in [
            (
                "pool_capacity",
                "Addresses of a network's dynamic pool (reserved ones excluded)",
                true,
            ),
            (
                "pool_used",
                "Addresses held in a network, as this replica's cache last saw them (absent until the replica serves the network once)",
                false,
            ),
        ] {
            let gauge = ConstGauge::new(0f64);
            let mut family = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            for ((kind, namespace, network, ip_family), (cap, used)) in &rows {
                let value = if capacity {
                    *cap
                } else {
                    match used {
                        Some(used) => *used,
                        None => continue,
                    }
                };
                let labels = PoolLabels {
                    kind,
                    namespace: namespace.clone(),
                    network: network.clone(),
                    family: ip_family,
                };
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
