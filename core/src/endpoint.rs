//! Which network a DanmEp is on: the one answer ipamd, the cleaner, svcwatcher and the
//! webhook's delete guard share, so that a network the cleaner counts as in use is one the
//! webhook refuses to delete. (ipamd reads only the records whose kind is written, see
//! [`kind_recorded`]: one without is not a record of its own.)
//!
//! The kind is, in order: the `danm.io/network-kind` label ipamd writes; the `apiType`
//! field; and, when both are absent, `DanmNet`, because DANM's own records predate
//! `apiType` and were all on DanmNets. A kind that is written but unknown is no network.
//! The network's namespace is the `danm.io/network-namespace` label ipamd writes, else the
//! DanmEp's own (a ClusterNetwork is in none). Only ipamd writes DanmEps (the
//! `danm-danmep-writers` admission policy), so their labels are ipamd's word.

use danm_crds::DanmEp;
use danm_crds::names::{NETWORK_KIND_LABEL, NETWORK_NAMESPACE_LABEL};

use crate::{NetworkKey, NetworkKind};

/// The kind of network `ep` is on; None when it names a kind this build does not know.
pub fn kind(ep: &DanmEp) -> Option<NetworkKind> {
    match (label(ep, NETWORK_KIND_LABEL), ep.spec.api_type.as_str()) {
        (Some(label), _) => NetworkKind::parse(label),
        (None, "") => Some(NetworkKind::DanmNet),
        (None, api_type) => NetworkKind::parse(api_type),
    }
}

/// Whether `ep` says its network's kind (a label or `apiType`), rather than being
/// DANM's record whose kind is inferred.
pub fn kind_recorded(ep: &DanmEp) -> bool {
    !ep.spec.api_type.is_empty() || label(ep, NETWORK_KIND_LABEL).is_some()
}

/// The network `ep` is on; None without a network name or with an unknown kind.
pub fn network(ep: &DanmEp) -> Option<NetworkKey> {
    if ep.spec.network_name.is_empty() {
        return None;
    }
    let namespace = label(ep, NETWORK_NAMESPACE_LABEL)
        .or(ep.metadata.namespace.as_deref())
        .unwrap_or_default();
    Some(NetworkKey::new(kind(ep)?, namespace, &ep.spec.network_name))
}

fn label<'a>(ep: &'a DanmEp, name: &str) -> Option<&'a str> {
    ep.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(name))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use danm_crds::DanmEpSpec;

    fn ep(api_type: &str, label: Option<&str>) -> DanmEp {
        let mut ep = DanmEp::new(
            "e",
            DanmEpSpec {
                network_name: "net".into(),
                api_type: api_type.into(),
                ..Default::default()
            },
        );
        ep.metadata.namespace = Some("ns".into());
        if let Some(label) = label {
            ep.metadata.labels = Some([(NETWORK_KIND_LABEL.to_owned(), label.to_owned())].into());
        }
        ep
    }

    #[test]
    fn a_danm_era_record_is_on_a_danmnet_and_the_label_wins() {
        let danmnet = NetworkKey::new(NetworkKind::DanmNet, "ns", "net");
        assert_eq!(network(&ep("", None)), Some(danmnet.clone()));
        assert!(!kind_recorded(&ep("", None)));
        assert_eq!(network(&ep("DanmNet", None)), Some(danmnet));
        assert_eq!(
            network(&ep("", Some("ClusterNetwork"))),
            Some(NetworkKey::new(NetworkKind::ClusterNetwork, "", "net"))
        );
        assert!(kind_recorded(&ep("", Some("ClusterNetwork"))));
        assert_eq!(
            kind(&ep("DanmNet", Some("TenantNetwork"))),
            Some(NetworkKind::TenantNetwork)
        );
        // ipamd's label names the network's namespace when the pod's is another.
        let mut elsewhere = ep("DanmNet", None);
        elsewhere.metadata.labels =
            Some([(NETWORK_NAMESPACE_LABEL.to_owned(), "other".to_owned())].into());
        assert_eq!(
            network(&elsewhere),
            Some(NetworkKey::new(NetworkKind::DanmNet, "other", "net"))
        );
        // Written but unknown: no network (not a guess).
        assert_eq!(network(&ep("Bogus", None)), None);
        let mut nameless = ep("DanmNet", None);
        nameless.spec.network_name.clear();
        assert_eq!(network(&nameless), None);
    }
}
