//! The one registry of everything ipamd reports: the engine's counters, the RPC metrics
//! and the pools' gauges (read from the engine at scrape time);
//! `danm_runtime::metrics::encode` renders it.
//! It sits above the engine (it reads it); the counters themselves are in
//! [`crate::metrics`], below the engine and the workers that count.

use std::sync::Arc;

use danm_core::Family as IpFamily;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::engine::Engine;
use crate::metrics::RpcMetrics;

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
