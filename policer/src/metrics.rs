//! The policer's Prometheus metrics, served at `/metrics` on its admin port, and its
//! readiness, served at `/readyz`: ready once the first full round has run.

use std::sync::atomic::{AtomicBool, Ordering};

use danm_runtime::metrics::register;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an apply.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok`, `failed` (nft or the namespace refused it: the pod keeps its previous
    /// table) or `refused-netns` (the recorded namespace is not one the policer enters).
    pub result: &'static str,
}

/// Every metric, and readiness.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rounds: Counter,
    evaluated: Counter,
    applies: Family<ResultLabels, Counter>,
    apply_seconds: Histogram,
    local: Gauge,
    isolated: Gauge,
    rules: Gauge,
    failing: Gauge,
    gate_calls: Family<ResultLabels, Counter>,
    gate_seconds: Histogram,
    synced: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("danm_policer");
        let rounds = register(&mut registry, "rounds", "Rounds run (each after a change)");
        let evaluated = register(
            &mut registry,
            "pods_evaluated",
            "Pods whose decisions a round computed: those a change may affect (every pod of \
             this node after the first list or a relist)",
        );
        let applies = register(
            &mut registry,
            "applies",
            "Tables applied to (or removed from) pods, by result",
        );
        let apply_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "apply_seconds",
            "Time to apply one pod's table (one nft transaction in its namespace)",
            apply_seconds.clone(),
        );
        let local = register(
            &mut registry,
            "pods_local",
            "This node's pods with a recorded network namespace, at the last round",
        );
        let isolated = register(
            &mut registry,
            "pods_isolated",
            "This node's pods with at least one isolated interface, at the last round",
        );
        let rules = register(
            &mut registry,
            "rules",
            "Rules in the tables this node's pods hold, at the last round",
        );
        let failing = register(
            &mut registry,
            "pods_failing",
            "This node's pods whose last apply failed, at the last round",
        );
        let gate_calls = register(
            &mut registry,
            "gate_calls",
            "The CNI plugin's calls to the gate, by result: isolated, open (no policy selects \
             the pod), failed (the apply failed), timeout (the pod or its DanmEps did not \
             arrive in time), refused (invalid, or another node's sandbox)",
        );
        let gate_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "gate_seconds",
            "Time from the CNI plugin's call to the gate to its answer",
            gate_seconds.clone(),
        );
        Metrics {
            registry,
            gate_calls,
            gate_seconds,
            rounds,
            evaluated,
            applies,
            apply_seconds,
            local,
            isolated,
            rules,
            failing,
            synced: AtomicBool::new(false),
        }
    }

    /// One apply, with its result and duration.
    pub fn applied(&self, result: &'static str, seconds: f64) {
        self.applies.get_or_create(&ResultLabels { result }).inc();
        if result != "refused-netns" {
            self.apply_seconds.observe(seconds);
        }
    }

    /// One call to the gate, with its result and duration.
    pub fn gate_call(&self, result: &'static str, seconds: f64) {
        self.gate_calls
            .get_or_create(&ResultLabels { result })
            .inc();
        self.gate_seconds.observe(seconds);
    }

    /// A round computed the decisions of `pods` pods (counted before it applies them).
    pub fn evaluated(&self, pods: usize) {
        self.evaluated.inc_by(pods as u64);
    }

    /// A round ended with these counts.
    pub fn round(&self, local: usize, isolated: usize, rules: usize, failing: usize) {
        self.rounds.inc();
        self.local.set(local as i64);
        self.isolated.set(isolated as i64);
        self.rules.set(rules as i64);
        self.failing.set(failing as i64);
        self.synced.store(true, Ordering::Release);
    }

    /// Rounds run.
    pub fn rounds(&self) -> u64 {
        self.rounds.get()
    }

    /// This node's pods holding a table at the last round.
    pub fn isolated(&self) -> i64 {
        self.isolated.get()
    }

    /// Ready (the first full round has run), or why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.synced.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("the first round has not run yet".to_owned())
        }
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
        let metrics = Metrics::new();
        metrics.applied("ok", 0.001);
        danm_testkit::metrics_doc::assert_documented(&metrics.encode());
    }
}
