//! The webhook's Prometheus metrics, served at `/metrics`.

use danm_runtime::metrics::register;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of one admission.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `/netvalidation`, `/confvalidation` or `/netdeletion`.
    pub path: &'static str,
    /// The object's kind.
    pub kind: String,
    /// CREATE, UPDATE or DELETE.
    pub operation: String,
    /// `allowed`, `denied` or `error` (the webhook could not decide: try again).
    pub result: &'static str,
}

/// Labels of a denial's rule.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// The rule a denied object broke (one count per problem found).
    pub rule: String,
}

/// Labels of an admission's duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// The path.
    pub path: &'static str,
}

/// Labels of freed ids.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FreedLabels {
    /// `deleted` (its TenantNetwork is gone), `expired` (no TenantNetwork ever carried it),
    /// `legacy` (a DANM-era bit).
    pub reason: &'static str,
}

/// Labels of a request refused before it was read.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `unauthenticated` (an admission path without the API server's certificate),
    /// `too_large` (a body over 4 MiB), `busy` (no room in the memory budget in time),
    /// `connections` (too many connections from one address, or in all), `handshake` (a
    /// TLS handshake that failed or took over 10 s).
    pub reason: &'static str,
}

type HistogramFamily = Family<PathLabels, Histogram, fn() -> Histogram>;

/// Every metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Admissions by path, kind, operation and result.
    pub admissions: Family<AdmissionLabels, Counter>,
    /// Problems found in denied objects, by rule.
    pub denials: Family<RuleLabels, Counter>,
    /// Seconds per admission, by path.
    pub duration: HistogramFamily,
    /// Ids reserved for TenantNetworks.
    pub reserved: Counter,
    /// Ids freed, by reason.
    pub freed: Family<FreedLabels, Counter>,
    /// TenantConfig writes that lost to a concurrent writer (and were retried).
    pub conflicts: Counter,
    /// Requests and connections refused before being read, by reason.
    pub refused: Family<RefusedLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn duration_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("danm_webhook");
        let admissions: Family<AdmissionLabels, Counter> = register(
            &mut registry,
            "admissions",
            "Admission requests answered, by path, kind, operation and result",
        );
        let denials: Family<RuleLabels, Counter> = register(
            &mut registry,
            "denials",
            "Problems found in denied objects, by the rule they break",
        );
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission request",
            duration.clone(),
        );
        let reserved: Counter = register(
            &mut registry,
            "vni_reserved",
            "VLAN/VxLAN ids reserved for TenantNetworks",
        );
        let freed: Family<FreedLabels, Counter> = register(
            &mut registry,
            "vni_freed",
            "VLAN/VxLAN ids freed, by reason",
        );
        let conflicts: Counter = register(
            &mut registry,
            "tenantconfig_conflicts",
            "TenantConfig writes that lost to a concurrent writer and were retried",
        );
        let refused: Family<RefusedLabels, Counter> = register(
            &mut registry,
            "refused",
            "Requests and connections refused before being read, by reason",
        );
        Metrics {
            registry,
            admissions,
            denials,
            duration,
            reserved,
            freed,
            conflicts,
            refused,
        }
    }

    /// Exports when `cert` (the one served) expires:
    /// `danm_webhook_certificate_expiry_timestamp_seconds`.
    pub fn track_certificate(&mut self, cert: &std::sync::Arc<danm_runtime::tls::ReloadingCert>) {
        self.registry
            .register_collector(Box::new(cert.expiry_collector()));
    }

    /// The metrics in Prometheus' text format.
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
