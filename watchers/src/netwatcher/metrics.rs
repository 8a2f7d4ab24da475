//! netwatcher's Prometheus metrics, served at `/metrics` on its admin port, and its
//! readiness, served at `/readyz`: ready once a sync has succeeded, until one fails.

use danm_core::hostlinks::Action;
use danm_runtime::metrics::register;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of a failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `HostDeviceMissing`, `HostDeviceWithoutAddress`, `LinkNameTooLong`, `BadLinkId`,
    /// `LinkConflict`, `ForeignLink`, `BadAttachmentConfig`, `NetlinkFailed` or
    /// `AttachmentWriteFailed`.
    pub reason: &'static str,
}

/// Every metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    created: Counter,
    removed: Counter,
    failed: Family<ReasonLabels, Counter>,
    sync_failures: Counter,
    managed: Gauge,
    rewritten: Counter,
    /// Why the node's links are not known to be right: `None` after a successful sync.
    not_ready: std::sync::Mutex<Option<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("danm_netwatcher");
        let created: Counter = register(
            &mut registry,
            "links_created",
            "Host links created (re-creations included)",
        );
        let removed: Counter = register(
            &mut registry,
            "links_removed",
            "Host links removed (re-creations included)",
        );
        let failed: Family<ReasonLabels, Counter> = register(
            &mut registry,
            "link_failures",
            "Host links that could not be kept, by reason (counted at every sync they fail)",
        );
        let sync_failures: Counter = register(
            &mut registry,
            "sync_failures",
            "Syncs that failed and were retried",
        );
        let managed: Gauge = register(
            &mut registry,
            "links_wanted",
            "Host links the networks ask for on this node, at the last sync",
        );
        let rewritten: Counter = register(
            &mut registry,
            "attachments_rewritten",
            "NetworkAttachmentDefinitions whose master this netwatcher rewrote to their host link",
        );
        Metrics {
            registry,
            rewritten,
            created,
            removed,
            failed,
            sync_failures,
            managed,
            not_ready: std::sync::Mutex::new(Some("no sync yet".to_owned())),
        }
    }

    /// An action carried out.
    pub fn applied(&self, action: &Action) {
        match action {
            Action::Create { .. } => {
                self.created.inc();
            }
            Action::Delete { recreate, .. } => {
                self.removed.inc();
                if recreate.is_some() {
                    self.created.inc();
                }
            }
            Action::DeviceUp(_) | Action::Up(_) => {}
        }
    }

    /// A link that cannot be kept, or a netlink failure.
    pub fn problem(&self, reason: &'static str) {
        self.failed.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A sync failed, for `why`: not ready until one succeeds.
    pub fn sync_failed(&self, why: &str) {
        self.sync_failures.inc();
        *self.not_ready.lock().expect("not poisoned") =
            Some(format!("the last sync failed: {why}"));
    }

    /// A sync succeeded: ready.
    pub fn synced(&self) {
        *self.not_ready.lock().expect("not poisoned") = None;
    }

    /// Ready (the last sync succeeded), or why not.
    pub fn readiness(&self) -> Result<(), String> {
        match &*self.not_ready.lock().expect("not poisoned") {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    /// A NetworkAttachmentDefinition's master rewritten to its link.
    pub fn attachment_rewritten(&self) {
        self.rewritten.inc();
    }

    /// Links wanted at the last sync.
    pub fn managed(&self, count: usize) {
        self.managed.set(count as i64);
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

    #[test]
    fn ready_after_a_sync_until_one_fails() {
        let metrics = Metrics::new();
        assert_eq!(metrics.readiness(), Err("no sync yet".to_owned()));
        metrics.synced();
        assert_eq!(metrics.readiness(), Ok(()));
        metrics.sync_failed("netlink: permission denied");
        assert_eq!(
            metrics.readiness(),
            Err("the last sync failed: netlink: permission denied".to_owned())
        );
        assert!(
            metrics
                .encode()
                .contains("danm_netwatcher_sync_failures_total 1")
        );
        metrics.synced();
        assert_eq!(metrics.readiness(), Ok(()));
    }
}
