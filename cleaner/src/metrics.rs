//! The cleaner's Prometheus metrics (served at `/metrics` in `--watch` mode).

use danm_core::leak::Reason;
use danm_runtime::metrics::register;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::{Outcome, Report};

/// Labels of a counter by reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `pod-gone`, `pod-replaced`, `pod-finished`, `node-gone`, `network-gone` or `orphan`.
    pub reason: &'static str,
}

/// Every metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    found: Family<ReasonLabels, Counter>,
    freed: Family<ReasonLabels, Counter>,
    kept: Family<ReasonLabels, Counter>,
    failed: Family<ReasonLabels, Counter>,
    addresses_freed: Counter,
    passes: Counter,
    pass_failures: Counter,
    last_pass_seconds: Gauge<f64, AtomicU64>,
    young_orphans: Gauge,
    corrupt_shards: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("danm_cleaner");
        type ByReason = Family<ReasonLabels, Counter>;
        let found: ByReason = register(
            &mut registry,
            "found",
            "Leaked DanmEps, addresses and shards found, by reason",
        );
        let freed: ByReason = register(&mut registry, "freed", "Findings freed, by reason");
        let kept: ByReason = register(
            &mut registry,
            "kept",
            "Findings kept because they were in use on re-check, by reason",
        );
        let failed: ByReason = register(
            &mut registry,
            "failed",
            "Findings that could not be freed (retried next pass), by reason",
        );
        let addresses_freed: Counter = register(
            &mut registry,
            "addresses_freed",
            "Addresses freed through ipamd",
        );
        let passes: Counter = register(&mut registry, "passes", "Passes completed");
        let pass_failures: Counter = register(
            &mut registry,
            "pass_failures",
            "Passes that could not read the cluster",
        );
        let last_pass_seconds: Gauge<f64, AtomicU64> = register(
            &mut registry,
            "last_pass_seconds",
            "Duration of the last pass",
        );
        let young_orphans: Gauge = register(
            &mut registry,
            "young_orphans",
            "Addresses no DanmEp names, still within the grace period, at the last pass",
        );
        let corrupt_shards: Gauge = register(
            &mut registry,
            "corrupt_shards",
            "Shards whose payload does not match its CRC32, at the last pass",
        );
        Metrics {
            registry,
            found,
            freed,
            kept,
            failed,
            addresses_freed,
            passes,
            pass_failures,
            last_pass_seconds,
            young_orphans,
            corrupt_shards,
        }
    }

    fn labels(reason: Reason) -> ReasonLabels {
        ReasonLabels {
            reason: reason.as_str(),
        }
    }

    /// A finding.
    pub fn found(&self, reason: Reason) {
        self.found.get_or_create(&Self::labels(reason)).inc();
    }

    /// A finding settled.
    pub fn settled(&self, reason: Reason, outcome: &Outcome) {
        let labels = Self::labels(reason);
        match outcome {
            Outcome::Freed(a) => {
                self.freed.get_or_create(&labels).inc();
                self.addresses_freed.inc_by(a.len() as u64);
            }
            Outcome::Kept(_) => {
                self.kept.get_or_create(&labels).inc();
            }
            Outcome::Failed(_) => {
                self.failed.get_or_create(&labels).inc();
            }
            Outcome::WouldFree | Outcome::Gone => {}
        }
    }

    /// A pass ended.
    pub fn pass_done(&self, report: &Report) {
        self.passes.inc();
        self.last_pass_seconds.set(report.seconds);
        self.young_orphans.set(report.young_orphans as i64);
        self.corrupt_shards.set(report.corrupt_shards.len() as i64);
    }

    /// A pass could not read the cluster.
    pub fn pass_failed(&self) {
        self.pass_failures.inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        danm_runtime::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_in_the_metrics_reference() {
        danm_testkit::metrics_doc::assert_documented(&Metrics::new().encode());
    }
}
