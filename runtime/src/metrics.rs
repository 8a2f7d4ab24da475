//! Prometheus metrics, as every binary registers and serves them: [`register`] creates a
//! metric and registers it in one call, [`encode`] renders a registry for `/metrics`.

use prometheus_client::registry::{Metric, Registry};

/// A new metric of type `M` (a `Counter`, `Gauge`, `Family`...), registered in `registry`
/// as `name` (after the registry's prefix) with `help`; the returned handle updates it.
pub fn register<M>(registry: &mut Registry, name: &str, help: &str) -> M
where
    M: Metric + Clone + Default,
{
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// `registry` in Prometheus' text exposition format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn a_registered_metric_is_rendered_with_the_prefix_and_help() {
        let mut registry = Registry::with_prefix("danm_test");
        let passes: Counter = register(&mut registry, "passes", "Passes completed");
        passes.inc();
        let text = encode(&registry);
        assert!(
            text.contains("# HELP danm_test_passes Passes completed"),
            "{text}"
        );
        assert!(text.contains("danm_test_passes_total 1"), "{text}");
    }
}
