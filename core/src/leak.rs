//! Which allocations are leaked: the cleaner's decisions, as pure functions over what it
//! read from the API.
//!
//! The model is Calico's, not DANM's: an allocation is valid until proven leaked. A DanmEp
//! is leaked when its network is gone, when no pod of its name exists, when the pod of its
//! name is another pod (another UID: a StatefulSet pod re-created under the same name), when
//! its pod has finished, or when its node is gone. A pod on a NotReady or partitioned node
//! keeps its addresses: only a deleted Node object counts. Nothing is decided by a pod's name
//! alone: a DanmEp that records no pod UID and whose pod name exists is kept. An address set
//! in a shard is an orphan when no DanmEp of its network and owner names it.
//!
//! These are only the candidates: the cleaner reads everything again right before it frees,
//! and frees through ipamd with the owner key, so an address that has gone to a new owner in
//! between is never touched.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::{NetworkKey, OwnerKey};

/// Why something is leaked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// No pod of the DanmEp's name exists.
    PodGone,
    /// The pod of that name is another pod (another UID).
    PodReplaced,
    /// The pod has finished (phase Succeeded or Failed): its sandbox is gone.
    PodFinished,
    /// The pod's node (the DanmEp's `Host`) no longer exists.
    NodeGone,
    /// The DanmEp's network no longer exists.
    NetworkGone,
    /// An address set in a shard that no DanmEp names.
    Orphan,
}

impl Reason {
    /// Every reason, in report order.
    pub const ALL: [Reason; 6] = [
        Reason::PodGone,
        Reason::PodReplaced,
        Reason::PodFinished,
        Reason::NodeGone,
        Reason::NetworkGone,
        Reason::Orphan,
    ];

    /// The reason as reports and metric labels spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PodGone => "pod-gone",
            Reason::PodReplaced => "pod-replaced",
            Reason::PodFinished => "pod-finished",
            Reason::NodeGone => "node-gone",
            Reason::NetworkGone => "network-gone",
            Reason::Orphan => "orphan",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the cleaner needs of one DanmEp.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointFacts {
    /// Namespace of the DanmEp (the pod's).
    pub namespace: String,
    /// Name of the DanmEp object.
    pub name: String,
    /// The network it names.
    pub network: Option<NetworkKey>,
    /// Whether the record says the network's kind (ipamd's label or `apiType`:
    /// [`crate::endpoint::kind_recorded`]); DANM's records without it are taken to be on a
    /// DanmNet, which is only a guess.
    pub kind_recorded: bool,
    /// `Pod`.
    pub pod: String,
    /// `PodUID`; empty in records written before UIDs were recorded.
    pub pod_uid: String,
    /// `Host`: the node.
    pub host: String,
    /// `CID`.
    pub container_id: String,
    /// `Interface.Name`.
    pub ifname: String,
    /// `Interface.Address` (with prefix), `none` or empty.
    pub ip: String,
    /// `Interface.AddressIPv6` (with prefix), `none` or empty.
    pub ip6: String,
    /// `NetworkType`: `calico` when Calico's IPAM gave the interface its addresses.
    pub network_type: String,
}

impl EndpointFacts {
    /// The owner key (container id + interface name), when both are recorded.
    pub fn owner(&self) -> Option<OwnerKey> {
        OwnerKey::new(&self.container_id, &self.ifname).ok()
    }

    /// The addresses it names (without prefix).
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        [&self.ip, &self.ip6]
            .into_iter()
            .filter_map(|a| a.split('/').next().and_then(|ip| ip.parse::<IpAddr>().ok()))
    }
}

/// What the cleaner needs of one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// UID.
    pub uid: String,
    /// `spec.nodeName` (empty while unscheduled).
    pub node: String,
    /// Phase Succeeded or Failed.
    pub finished: bool,
}

/// What the cleaner concluded about one DanmEp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// In use: kept.
    Live,
    /// Leaked, for this reason.
    Leaked(Reason),
}

/// Judges one DanmEp. `pod` is the pod of the DanmEp's namespace and `Pod` name, if one
/// exists; `network_exists` and `node_exists` answer from the same read.
pub fn judge_endpoint(
    ep: &EndpointFacts,
    network_exists: impl Fn(&NetworkKey) -> bool,
    pod: Option<&PodFacts>,
    node_exists: impl Fn(&str) -> bool,
) -> Verdict {
    let network_gone = ep.network.as_ref().is_some_and(|n| !network_exists(n));
    if network_gone && ep.kind_recorded {
        return Verdict::Leaked(Reason::NetworkGone);
    }
    let Some(pod) = pod else {
        return Verdict::Leaked(Reason::PodGone);
    };
    if !ep.pod_uid.is_empty() && ep.pod_uid != pod.uid {
        return Verdict::Leaked(Reason::PodReplaced);
    }
    // The pod's own node: the record's `Host` is the host name the CNI saw, which may not
    // be the Node's name (--hostname-override, FQDNs); it is used only for an unscheduled pod.
    let node = if pod.node.is_empty() {
        &ep.host
    } else {
        &pod.node
    };
    if !node.is_empty() && !node_exists(node) {
        return Verdict::Leaked(Reason::NodeGone);
    }
    // Without a recorded UID the pod of that name may be a new one: its phase says
    // nothing about the sandbox this record belongs to.
    if pod.finished && !ep.pod_uid.is_empty() {
        return Verdict::Leaked(Reason::PodFinished);
    }
    Verdict::Live
}

/// The addresses DanmEps name, by network and owner fingerprint: what tells an orphan.
#[derive(Debug, Default)]
pub struct Named {
    by_owner: HashMap<(NetworkKey, u64), Vec<IpAddr>>,
}

impl Named {
    /// Records what one DanmEp names.
    pub fn add(&mut self, ep: &EndpointFacts) {
        let (Some(network), Some(owner)) = (&ep.network, ep.owner()) else {
            return;
        };
        self.by_owner
            .entry((network.clone(), owner.fingerprint()))
            .or_default()
            .extend(ep.addresses());
    }

    /// Whether a DanmEp of `network` whose owner has `fingerprint` names `address`.
    pub fn names(&self, network: &NetworkKey, fingerprint: u64, address: IpAddr) -> bool {
        self.by_owner
            .get(&(network.clone(), fingerprint))
            .is_some_and(|a| a.contains(&address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetworkKind;

    fn net() -> NetworkKey {
        NetworkKey::new(NetworkKind::DanmNet, "ns", "internal")
    }

    fn ep() -> EndpointFacts {
        EndpointFacts {
            namespace: "ns".into(),
            name: "ep-1".into(),
            network: Some(net()),
            kind_recorded: true,
            pod: "web-0".into(),
            pod_uid: "uid-a".into(),
            host: "node-1".into(),
            container_id: "cid-a".into(),
            ifname: "eth0".into(),
            ip: "198.18.0.5/24".into(),
            ip6: String::new(),
            network_type: "ipvlan".into(),
        }
    }

    fn pod(uid: &str) -> PodFacts {
        PodFacts {
            uid: uid.into(),
            node: "node-1".into(),
            finished: false,
        }
    }

    fn judge(ep: &EndpointFacts, pod: Option<&PodFacts>, nodes: &[&str]) -> Verdict {
        judge_endpoint(ep, |n| *n == net(), pod, |n| nodes.contains(&n))
    }

    #[test]
    fn a_live_pod_keeps_its_endpoint_on_any_existing_node_ready_or_not() {
        assert_eq!(
            judge(&ep(), Some(&pod("uid-a")), &["node-1"]),
            Verdict::Live
        );
    }

    #[test]
    fn each_way_of_leaking_is_told_apart() {
        let leaked = |r| Verdict::Leaked(r);
        assert_eq!(judge(&ep(), None, &["node-1"]), leaked(Reason::PodGone));
        assert_eq!(
            judge(&ep(), Some(&pod("uid-b")), &["node-1"]),
            leaked(Reason::PodReplaced)
        );
        assert_eq!(
            judge(&ep(), Some(&pod("uid-a")), &[]),
            leaked(Reason::NodeGone)
        );
        let finished = PodFacts {
            finished: true,
            ..pod("uid-a")
        };
        assert_eq!(
            judge(&ep(), Some(&finished), &["node-1"]),
            leaked(Reason::PodFinished)
        );
        let elsewhere = EndpointFacts {
            network: Some(NetworkKey::new(NetworkKind::DanmNet, "ns", "gone")),
            ..ep()
        };
        assert_eq!(
            judge(&elsewhere, Some(&pod("uid-a")), &["node-1"]),
            leaked(Reason::NetworkGone)
        );
    }

    #[test]
    fn nothing_is_decided_by_the_pod_name_alone() {
        // A record without a UID whose pod name exists is kept, even when that pod has
        // finished: it may be a new pod of the same name.
        let no_uid = EndpointFacts {
            pod_uid: String::new(),
            ..ep()
        };
        let finished = PodFacts {
            finished: true,
            ..pod("uid-b")
        };
        assert_eq!(judge(&no_uid, Some(&finished), &["node-1"]), Verdict::Live);
        // The node is the pod's: a record whose Host is a host name and not the Node's
        // name is live while its pod's node exists.
        let hostname = EndpointFacts {
            host: "node-1.example.com".into(),
            ..ep()
        };
        assert_eq!(
            judge(&hostname, Some(&pod("uid-a")), &["node-1"]),
            Verdict::Live
        );
        assert_eq!(
            judge(&hostname, Some(&pod("uid-a")), &[]),
            Verdict::Leaked(Reason::NodeGone)
        );
        // A network guessed (no apiType) is not enough to call it gone: the pod decides.
        let guessed = EndpointFacts {
            network: Some(NetworkKey::new(NetworkKind::DanmNet, "ns", "gone")),
            kind_recorded: false,
            ..ep()
        };
        assert_eq!(
            judge(&guessed, Some(&pod("uid-a")), &["node-1"]),
            Verdict::Live
        );
        assert_eq!(
            judge(&guessed, None, &["node-1"]),
            Verdict::Leaked(Reason::PodGone)
        );
    }

    #[test]
    fn named_addresses_are_per_network_and_owner() {
        let mut named = Named::default();
        let dual = EndpointFacts {
            ip6: "fd00:198::5/64".into(),
            ..ep()
        };
        named.add(&dual);
        let fp = dual.owner().unwrap().fingerprint();
        let v4: IpAddr = "198.18.0.5".parse().unwrap();
        let v6: IpAddr = "fd00:198::5".parse().unwrap();
        assert!(named.names(&net(), fp, v4));
        assert!(named.names(&net(), fp, v6));
        assert!(!named.names(&net(), fp ^ 1, v4), "another owner");
        let other = NetworkKey::new(NetworkKind::DanmNet, "ns", "other");
        assert!(!named.names(&other, fp, v4), "another network");
        // An empty IPv6 slot names nothing and does not stop the IPv4 one from counting.
        named.add(&ep());
        assert!(named.names(&net(), fp, v4));
    }
}
