//! Which pods are connected to which network: an index of every DanmEp by network, fed by
//! a watch (a fresh list at start and after a 410, then events), so that the delete and
//! update guards (DANM's rules 21 and 22) read one map entry instead of listing every
//! DanmEp of the cluster per request, as DANM did.
//!
//! Like any watch-fed cache it may lag behind a DanmEp written a moment ago; a pod whose
//! interface is being set up while its network is deleted fails its CNI ADD (ipamd finds
//! no network), as it would with DANM.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use danm_core::NetworkKey;
use danm_crds::DanmEp;
use danm_runtime::index::{Change, Synced, follow};
use kube::api::Api;
use kube::{Client, ResourceExt};

/// Namespace and name of a DanmEp.
type EndpointRef = (String, String);

#[derive(Debug, Default)]
struct Index {
    /// Network → its endpoints → the endpoint's pod (`namespace/name`).
    by_network: HashMap<NetworkKey, BTreeMap<EndpointRef, String>>,
    /// Endpoint → its network, to move or drop it on change.
    network_of: HashMap<EndpointRef, NetworkKey>,
}

impl Index {
    fn insert(&mut self, ep: &DanmEp) {
        let at = (ep.namespace().unwrap_or_default(), ep.name_any());
        self.remove(&at);
        // The network as every component reads it: a DANM-era DanmEp without `apiType`
        // keeps its DanmNet, as the cleaner and svcwatcher count it.
        let Some(key) = danm_core::endpoint::network(ep) else {
            return;
        };
        let pod = format!("{}/{}", at.0, ep.spec.pod);
        self.by_network
            .entry(key.clone())
            .or_default()
            .insert(at.clone(), pod);
        self.network_of.insert(at, key);
    }

    fn remove(&mut self, at: &EndpointRef) {
        let Some(key) = self.network_of.remove(at) else {
            return;
        };
        if let Some(eps) = self.by_network.get_mut(&key) {
            eps.remove(at);
            if eps.is_empty() {
                self.by_network.remove(&key);
            }
        }
    }
}

/// The index; see the module overview.
#[derive(Debug)]
pub struct Usage {
    index: Arc<RwLock<Index>>,
    synced: Arc<Synced>,
}

impl Usage {
    /// An index fed by a watch of every DanmEp; the watch runs as long as the runtime.
    pub fn start(client: Client) -> Arc<Usage> {
        let index: Arc<RwLock<Index>> = Arc::default();
        let synced = Arc::new(Synced::new(1));
        let fed = Arc::clone(&index);
        follow(
            Api::<DanmEp>::all(client),
            "DanmEp",
            Arc::clone(&synced),
            move |change| {
                let mut index = fed.write().expect("lock");
                match change {
                    Change::Relisted(all) => {
                        *index = Index::default();
                        for ep in &all {
                            index.insert(ep);
                        }
                    }
                    Change::Applied(ep) => index.insert(&ep),
                    Change::Deleted(ep) => {
                        index.remove(&(ep.namespace().unwrap_or_default(), ep.name_any()))
                    }
                }
            },
        );
        Arc::new(Usage { index, synced })
    }

    /// Whether the first full list is in.
    pub fn is_synced(&self) -> bool {
        self.synced.is_synced()
    }

    /// A pod connected to the network (`namespace/name`), if any.
    pub fn connected_pod(&self, network: &NetworkKey) -> Option<String> {
        let index = self.index.read().expect("lock");
        index
            .by_network
            .get(network)
            .and_then(|eps| eps.values().next().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use danm_core::NetworkKind;
    use danm_crds::DanmEpSpec;

    fn ep(ns: &str, name: &str, kind: &str, network: &str) -> DanmEp {
        let mut ep = DanmEp::new(
            name,
            DanmEpSpec {
                network_name: network.into(),
                api_type: kind.into(),
                pod: format!("pod-{name}"),
                ..Default::default()
            },
        );
        ep.metadata.namespace = Some(ns.into());
        ep
    }

    #[test]
    fn endpoints_are_found_by_network_and_move_with_their_changes() {
        let mut index = Index::default();
        index.insert(&ep("a", "e1", "DanmNet", "net"));
        index.insert(&ep("b", "e2", "ClusterNetwork", "cnet"));
        index.insert(&ep("c", "e3", "ClusterNetwork", "cnet"));
        let dn = NetworkKey::new(NetworkKind::DanmNet, "a", "net");
        let cn = NetworkKey::new(NetworkKind::ClusterNetwork, "", "cnet");
        assert_eq!(index.by_network[&dn].len(), 1);
        assert_eq!(index.by_network[&cn].len(), 2);
        // The same DanmNet name in another namespace is another network.
        assert!(
            !index
                .by_network
                .contains_key(&NetworkKey::new(NetworkKind::DanmNet, "b", "net"))
        );
        index.insert(&ep("a", "e1", "DanmNet", "other"));
        assert!(!index.by_network.contains_key(&dn));
        index.remove(&("b".into(), "e2".into()));
        index.remove(&("c".into(), "e3".into()));
        assert_eq!(index.by_network.len(), 1, "only DanmNet a/other is used");
        index.insert(&ep("a", "e9", "NotAKind", "net"));
        assert_eq!(
            index.network_of.len(),
            1,
            "an endpoint of no known kind is skipped"
        );
    }
}
