//! The policer's decisions: which DanmNetworkPolicies isolate which interface of a pod,
//! and which traffic they allow there. Kubernetes' NetworkPolicy semantics, applied to every
//! interface rather than the primary one:
//!
//! * A policy selects the pods of its namespace its `podSelector` matches, and of those
//!   pods the interfaces on its `spec.networkSelector`'s networks (absent: every interface
//!   with an address). A selected interface is isolated for a direction when the policy's
//!   types name it (absent: `Ingress`, plus `Egress` when it has egress rules).
//! * Policies add up: the traffic allowed on an isolated interface is the union of the rules
//!   of every policy that isolates it. A rule allows traffic from (to) any of its peers on
//!   any of its ports; no peers means any address, no ports any port; a direction with no
//!   rule allows nothing.
//! * A peer's selectors narrow each other: pods of the policy's namespace (or of the
//!   namespaces `namespaceSelector` matches), their interfaces on `networkSelector`'s
//!   networks (absent: all of them); `ipBlock` is a CIDR minus its exceptions.
//! * A named port is the container port of that name of the pod the traffic goes to: the
//!   selected pod for ingress, each peer pod for egress (an ipBlock peer has none).
//!
//! Interfaces no policy isolates get no rule, and a pod with none gets no table
//! ([`PodRules::is_empty`]). What is always allowed (loopback, established and related
//! traffic, DNS out) and how a refusal is sent are the enforcement's (the policer's
//! ruleset), not decisions of a policy.

mod addrset;
mod select;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::IpAddr;

use danm_crds::{DanmNetworkPolicySpec, NetworkRef, Peer, PolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub use addrset::{AddressSet, Ranges};
pub use select::{SelectorError, invalid_selectors, selector_matches};

use crate::NetworkKind;

/// A transport protocol a rule names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses a NetworkPolicy protocol (`TCP`, `UDP`, `SCTP`); absent is TCP.
    pub fn parse(protocol: Option<&str>) -> Option<Protocol> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// One container port of a pod, as its spec declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    /// The port's name.
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its number.
    pub port: u16,
}

/// One interface of a pod, as its DanmEp records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its name in the pod (`eth0`, `net1`...).
    pub ifname: String,
    /// The network's kind and name.
    pub network: (NetworkKind, String),
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
}

/// What the decisions need of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodView {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its containers' named ports.
    pub ports: Vec<NamedPort>,
    /// Its interfaces.
    pub interfaces: Vec<Interface>,
}

/// What the decisions need of a policy.
#[derive(Clone, Copy, Debug)]
pub struct PolicyView<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its spec.
    pub spec: &'a DanmNetworkPolicySpec,
}

/// The pods and namespaces peers are looked for in (the policer's indexes).
pub trait Cluster {
    /// Every namespace's name and labels.
    fn namespaces(&self) -> Vec<(&str, &BTreeMap<String, String>)>;
    /// The pods of namespace `name`.
    fn pods_in(&self, namespace: &str) -> Vec<&PodView>;
}

/// Which ports a rule allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports {
    /// Every port of every protocol (and traffic with no port: ICMP...).
    Any,
    /// Only these, as (protocol, first, last) ranges; empty: nothing (named ports that
    /// resolved to none).
    Only(Vec<(Protocol, u16, u16)>),
}

/// Which remote addresses a rule allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers {
    /// Any address.
    Any,
    /// Only these.
    Only(AddressSet),
}

/// One allowance on an isolated interface: traffic with a remote address in `peers` and a
/// port in `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowance {
    /// The remote addresses.
    pub peers: Peers,
    /// The ports of the pod (ingress) or of the remote side (egress).
    pub ports: Ports,
}

/// An interface isolated for one direction, and what is allowed on it (nothing, when
/// empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isolated {
    /// The interface's name in the pod.
    pub ifname: String,
    /// What is allowed.
    pub allow: Vec<Allowance>,
}

/// Everything the policies decide for one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRules {
    /// Interfaces isolated for ingress, in the pod's order.
    pub ingress: Vec<Isolated>,
    /// Interfaces isolated for egress, in the pod's order.
    pub egress: Vec<Isolated>,
}

impl PodRules {
    /// Whether no interface is isolated: the pod gets no table at all.
    pub fn is_empty(&self) -> bool {
        self.ingress.is_empty() && self.egress.is_empty()
    }
}

/// The directions a policy isolates: (ingress, egress). An absent or empty `policyTypes`
/// is defaulted as Kubernetes does: `Ingress`, plus `Egress` when the policy has at least
/// one egress rule.
pub fn directions(spec: &DanmNetworkPolicySpec) -> (bool, bool) {
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// Whether `policy` selects `pod` (same namespace, pod selector matches).
pub fn selects(policy: PolicyView<'_>, pod: &PodView) -> bool {
    policy.namespace == pod.namespace
        && selector_matches(&policy.spec.pod_selector, &pod.labels).unwrap_or(false)
}

/// The interfaces of a pod `policy` selects that it covers.
pub fn covered<'p>(policy: PolicyView<'_>, pod: &'p PodView) -> Vec<&'p Interface> {
    pod.interfaces
        .iter()
        .filter(|i| !i.addresses.is_empty())
        .filter(|i| on_networks(i, policy.spec.network_selector.as_deref()))
        .collect()
}

fn on_networks(interface: &Interface, networks: Option<&[NetworkRef]>) -> bool {
    let Some(networks) = networks else {
        return true;
    };
    networks.iter().any(|n| {
        let kind = n
            .kind
            .as_deref()
            .map_or(Some(NetworkKind::DanmNet), NetworkKind::parse);
        kind == Some(interface.network.0) && n.name == interface.network.1
    })
}

/// Everything `policies` decide for `pod`, with peers looked for in `cluster`.
pub fn pod_rules(pod: &PodView, policies: &[PolicyView<'_>], cluster: &dyn Cluster) -> PodRules {
    let mut rules = PodRules::default();
    for interface in &pod.interfaces {
        let mut ingress: Option<Vec<Allowance>> = None;
        let mut egress: Option<Vec<Allowance>> = None;
        for &policy in policies {
            if !selects(policy, pod) || !covered(policy, pod).contains(&interface) {
                continue;
            }
            let (isolates_in, isolates_out) = directions(policy.spec);
            if isolates_in {
                let allow = ingress.get_or_insert_with(Vec::new);
                for rule in policy.spec.ingress.iter().flatten() {
                    let peers = peers(policy, rule.from.as_deref(), cluster);
                    let ports = resolve(rule.ports.as_deref(), &pod.ports);
                    allow.push(Allowance { peers, ports });
                }
            }
            if isolates_out {
                let allow = egress.get_or_insert_with(Vec::new);
                for rule in policy.spec.egress.iter().flatten() {
                    allow.extend(egress_allowances(
                        policy,
                        rule.to.as_deref(),
                        rule.ports.as_deref(),
                        cluster,
                    ));
                }
            }
        }
        let isolated = |allow: Vec<Allowance>| Isolated {
            ifname: interface.ifname.clone(),
            allow: allow.into_iter().filter(useful).collect(),
        };
        rules.ingress.extend(ingress.map(isolated));
        rules.egress.extend(egress.map(isolated));
    }
    rules
}

/// An allowance that can match something.
fn useful(allow: &Allowance) -> bool {
    let peers = match &allow.peers {
        Peers::Any => true,
        Peers::Only(set) => !set.is_empty(),
    };
    let ports = match &allow.ports {
        Ports::Any => true,
        Ports::Only(ports) => !ports.is_empty(),
    };
    peers && ports
}

/// Whether a pod of `namespace` (whose labels are `namespace_labels`) with `labels` can be
/// one of `policy`'s peers: only then can a change to that pod (its labels, interfaces or
/// addresses) change the rules of the pods `policy` selects. It over-approximates (a
/// network selector is not looked at), never under: the policer recomputes only the pods
/// of the policies for which this holds.
pub fn may_peer(
    policy: PolicyView<'_>,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    if resolves_named_ports_anywhere(policy.spec) {
        return true;
    }
    peers_of(policy.spec).into_iter().any(|(_, peer)| {
        if peer.pod_selector.is_none()
            && peer.namespace_selector.is_none()
            && peer.network_selector.is_none()
        {
            return false;
        }
        let in_namespace = match &peer.namespace_selector {
            None => namespace == policy.namespace,
            Some(selector) => selector_matches(selector, namespace_labels).unwrap_or(false),
        };
        in_namespace
            && peer
                .pod_selector
                .as_ref()
                .is_none_or(|s| selector_matches(s, labels).unwrap_or(false))
    })
}

/// Whether the pods of a namespace whose labels are `namespace_labels` can be `policy`'s
/// peers through a namespace selector: only then can a change of those labels change the
/// rules of the pods `policy` selects (a peer without one looks in the policy's own
/// namespace, whatever its labels).
pub fn may_peer_namespace(
    policy: PolicyView<'_>,
    namespace_labels: &BTreeMap<String, String>,
) -> bool {
    resolves_named_ports_anywhere(policy.spec)
        || peers_of(policy.spec).into_iter().any(|(_, peer)| {
            peer.namespace_selector
                .as_ref()
                .is_some_and(|s| selector_matches(s, namespace_labels).unwrap_or(false))
        })
}

/// An egress rule to any destination with a named port resolves the name against every pod
/// of the cluster ([`pod_rules`]), so any pod may change it.
fn resolves_named_ports_anywhere(spec: &DanmNetworkPolicySpec) -> bool {
    spec.egress.iter().flatten().any(|rule| {
        matches!(rule.to.as_deref(), None | Some([]))
            && rule
                .ports
                .iter()
                .flatten()
                .any(|p| matches!(p.port, Some(IntOrString::String(_))))
    })
}

/// The addresses a peer list allows; no list, or an empty one, is any address.
fn peers(policy: PolicyView<'_>, list: Option<&[Peer]>, cluster: &dyn Cluster) -> Peers {
    let list = match list {
        None | Some([]) => return Peers::Any,
        Some(list) => list,
    };
    let mut set = AddressSet::default();
    for peer in list {
        if let Some(block) = &peer.ip_block {
            set.extend(&ip_block(&block.cidr, block.except.as_deref()));
        }
        for (_, interface) in peer_interfaces(policy, peer, cluster) {
            for &ip in &interface.addresses {
                set.insert(ip);
            }
        }
    }
    Peers::Only(set)
}

/// A CIDR minus its exceptions; an unparsable one is nothing (admission refuses it).
pub fn ip_block(cidr: &str, except: Option<&[String]>) -> AddressSet {
    let mut set = AddressSet::default();
    let Ok(net) = cidr.parse::<ipnet::IpNet>() else {
        return set;
    };
    set.insert_net(net);
    for except in except.into_iter().flatten() {
        if let Ok(hole) = except.parse::<ipnet::IpNet>() {
            set.remove_net(hole);
        }
    }
    set
}

/// The pods and interfaces a peer's selectors choose (none for an ipBlock-only peer).
fn peer_interfaces<'c>(
    policy: PolicyView<'_>,
    peer: &Peer,
    cluster: &'c dyn Cluster,
) -> Vec<(&'c PodView, &'c Interface)> {
    if peer.pod_selector.is_none()
        && peer.namespace_selector.is_none()
        && peer.network_selector.is_none()
    {
        return Vec::new();
    }
    let namespaces: Vec<&str> = match &peer.namespace_selector {
        None => vec![policy.namespace],
        Some(selector) => cluster
            .namespaces()
            .into_iter()
            .filter(|(_, labels)| selector_matches(selector, labels).unwrap_or(false))
            .map(|(name, _)| name)
            .collect(),
    };
    let mut out = Vec::new();
    for namespace in namespaces {
        for pod in cluster.pods_in(namespace) {
            let chosen = peer
                .pod_selector
                .as_ref()
                .is_none_or(|s| selector_matches(s, &pod.labels).unwrap_or(false));
            if !chosen {
                continue;
            }
            for interface in &pod.interfaces {
                if on_networks(interface, peer.network_selector.as_deref()) {
                    out.push((pod, interface));
                }
            }
        }
    }
    out
}

/// The ports a rule's list allows, named ports resolved against `named`; no list, or an
/// empty one, is every port.
pub fn resolve(ports: Option<&[PolicyPort]>, named: &[NamedPort]) -> Ports {
    let ports = match ports {
        None | Some([]) => return Ports::Any,
        Some(ports) => ports,
    };
    let mut out = Vec::new();
    for port in ports {
        let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else {
            continue;
        };
        match &port.port {
            // A protocol with no port: every port of that protocol.
            None => out.push((protocol, 0, u16::MAX)),
            Some(IntOrString::Int(first)) => {
                let Ok(first) = u16::try_from(*first) else {
                    continue;
                };
                let last = port
                    .end_port
                    .and_then(|end| u16::try_from(end).ok())
                    .unwrap_or(first);
                if first <= last {
                    out.push((protocol, first, last));
                }
            }
            Some(IntOrString::String(name)) => out.extend(
                named
                    .iter()
                    .filter(|p| &p.name == name && p.protocol == protocol)
                    .map(|p| (protocol, p.port, p.port)),
            ),
        }
    }
    Ports::Only(merged(out))
}

/// Port ranges sorted, overlapping and adjacent ones of a protocol merged (an nftables
/// interval set refuses overlapping elements).
fn merged(mut ports: Vec<(Protocol, u16, u16)>) -> Vec<(Protocol, u16, u16)> {
    ports.sort_unstable();
    let mut out: Vec<(Protocol, u16, u16)> = Vec::with_capacity(ports.len());
    for (protocol, first, last) in ports {
        match out.last_mut() {
            Some((p, _, end)) if *p == protocol && u32::from(first) <= u32::from(*end) + 1 => {
                *end = (*end).max(last);
            }
            _ => out.push((protocol, first, last)),
        }
    }
    out
}

/// An egress rule's allowances: named ports resolve per peer pod, so peers are grouped by
/// what their names resolve to; ipBlocks match numbered ports only.
fn egress_allowances(
    policy: PolicyView<'_>,
    to: Option<&[Peer]>,
    ports: Option<&[PolicyPort]>,
    cluster: &dyn Cluster,
) -> Vec<Allowance> {
    let named = ports
        .into_iter()
        .flatten()
        .any(|p| matches!(p.port, Some(IntOrString::String(_))));
    if !named {
        return vec![Allowance {
            peers: peers(policy, to, cluster),
            ports: resolve(ports, &[]),
        }];
    }
    // Named ports: one allowance per distinct resolution, over the peer pods that give it.
    let mut by_ports: Vec<(Ports, AddressSet)> = Vec::new();
    let mut add = |resolved: Ports, addresses: &AddressSet| match by_ports
        .iter_mut()
        .find(|(p, _)| *p == resolved)
    {
        Some((_, set)) => set.extend(addresses),
        None => by_ports.push((resolved, addresses.clone())),
    };
    match to {
        None | Some([]) => {
            // Any destination: only the numbered ports can be known without a pod; the
            // named ones resolve against every pod of the cluster (what they may reach).
            let mut any = AddressSet::default();
            any.insert_net("0.0.0.0/0".parse().expect("a CIDR"));
            any.insert_net("::/0".parse().expect("a CIDR"));
            add(resolve(ports, &[]), &any);
            for (namespace, _) in cluster.namespaces() {
                for pod in cluster.pods_in(namespace) {
                    let addresses = all_addresses(pod.interfaces.iter());
                    add(resolve(ports, &pod.ports), &addresses);
                }
            }
        }
        Some(list) => {
            for peer in list {
                if let Some(block) = &peer.ip_block {
                    add(
                        resolve(ports, &[]),
                        &ip_block(&block.cidr, block.except.as_deref()),
                    );
                }
                for (pod, interface) in peer_interfaces(policy, peer, cluster) {
                    add(
                        resolve(ports, &pod.ports),
                        &all_addresses(std::iter::once(interface)),
                    );
                }
            }
        }
    }
    by_ports
        .into_iter()
        .map(|(ports, set)| Allowance {
            peers: Peers::Only(set),
            ports,
        })
        .collect()
}

fn all_addresses<'a>(interfaces: impl Iterator<Item = &'a Interface>) -> AddressSet {
    let mut set = AddressSet::default();
    for interface in interfaces {
        for &ip in &interface.addresses {
            set.insert(ip);
        }
    }
    set
}

/// Every network a policy of `namespace` names, with the field that names it
/// (`spec.networkSelector[0]`, `spec.ingress[1].from[0].networkSelector[2]`): a network that
/// does not exist is no error (it may come later) but selects nothing, which the webhook
/// says as an admission warning.
pub fn named_networks(
    spec: &DanmNetworkPolicySpec,
    namespace: &str,
) -> Vec<(String, crate::NetworkKey)> {
    let mut lists: Vec<(String, &[NetworkRef])> = Vec::new();
    if let Some(networks) = &spec.network_selector {
        lists.push(("spec.networkSelector".to_owned(), networks));
    }
    for (field, peer) in peers_of(spec) {
        if let Some(networks) = &peer.network_selector {
            lists.push((format!("{field}.networkSelector"), networks));
        }
    }
    lists
        .into_iter()
        .flat_map(|(field, networks)| {
            networks.iter().enumerate().filter_map(move |(k, n)| {
                let kind = n
                    .kind
                    .as_deref()
                    .map_or(Some(NetworkKind::DanmNet), NetworkKind::parse)?;
                Some((
                    format!("{field}[{k}]"),
                    crate::NetworkKey::new(kind, namespace, &n.name),
                ))
            })
        })
        .collect()
}

/// Every peer of a policy's rules, with its field (`spec.ingress[0].from[1]`,
/// `spec.egress[2].to[0]`).
pub fn peers_of(spec: &DanmNetworkPolicySpec) -> Vec<(String, &Peer)> {
    let ingress = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| (format!("spec.ingress[{i}].from"), r.from.as_deref()));
    let egress = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| (format!("spec.egress[{i}].to"), r.to.as_deref()));
    ingress
        .chain(egress)
        .flat_map(|(field, peers)| {
            peers
                .into_iter()
                .flatten()
                .enumerate()
                .map(move |(j, peer)| (format!("{field}[{j}]"), peer))
        })
        .collect()
}
