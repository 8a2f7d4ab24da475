//! What the policer knows of the cluster, fed by watches: namespaces' labels, pods' labels
//! and named ports, every DanmEp (a pod's interfaces, addresses and network namespace) and
//! every DanmNetworkPolicy. Objects are reduced to those facts as they arrive, and each
//! change updates only what it touches: the view of the one pod it concerns (from that pod's
//! own DanmEps, found by an index, not a scan) and the record of what changed since the last
//! round. A round then asks [`Index::take_changed`] for the pods of this node whose rules may
//! have changed (the pods a changed policy selects before or after, the changed pods
//! themselves, and the pods selected by the policies a changed pod or namespace may be a
//! peer of: [`danm_core::netpol::may_peer`]) and computes the rules of those only, so the
//! work of a change does not grow with the pods it does not affect.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use danm_core::netpol::{Interface, NamedPort, PodView, Protocol};
use danm_core::{NetworkKey, NetworkKind};
use danm_crds::{DanmEp, DanmNetworkPolicy, DanmNetworkPolicySpec};
use danm_runtime::index::Change;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;

/// A pod, by namespace and name.
pub type PodKey = (String, String);

/// One DanmEp's facts.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// The pod it belongs to.
    pub pod: PodKey,
    /// The node the pod runs on.
    pub host: String,
    /// The pod's network namespace, as the CNI recorded it.
    pub netns: String,
    /// The UID of the pod it was made for (empty in DANM's own records).
    pub pod_uid: String,
    /// The interface.
    pub interface: Interface,
}

/// A pod's sandbox, as the CNI plugin names it to the gate before it builds the
/// interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's UID (empty: any).
    pub uid: String,
    /// The sandbox's container id.
    pub container_id: String,
    /// Its network namespace, as ipamd recorded it.
    pub netns: String,
    /// The interfaces ipamd recorded for it.
    pub interfaces: Vec<String>,
}

/// The index.
#[derive(Debug, Default)]
pub struct Index {
    /// This node: its pods' sandboxes are the ones the policer keeps tables in.
    node: String,
    namespaces: HashMap<String, Labels>,
    pods: HashMap<PodKey, PodFacts>,
    /// By the DanmEp's namespace and name (None: on no network this build knows).
    endpoints: HashMap<PodKey, Option<Endpoint>>,
    policies: HashMap<PodKey, DanmNetworkPolicySpec>,
    // Kept in step with the four maps above by every change.
    /// Each pod's DanmEps, by name.
    endpoints_of: HashMap<PodKey, BTreeSet<String>>,
    /// The pods with an interface, as the decisions see them.
    views: HashMap<PodKey, PodView>,
    /// The names of the pods with a view, by namespace.
    in_namespace: HashMap<String, BTreeSet<String>>,
    /// This node's pods with their sandboxes (network namespaces; a pod whose sandbox is
    /// being re-created may briefly have two: each gets the table).
    local: BTreeMap<PodKey, BTreeSet<String>>,
    /// How many sandboxes `local` holds.
    sandbox_count: usize,
    /// The names of the policies, by namespace.
    policies_in: HashMap<String, BTreeSet<String>>,
    /// Every DanmNet, TenantNetwork and ClusterNetwork.
    networks: HashSet<NetworkKey>,
    /// The network kinds listed at least once: a network of another is not known missing.
    networks_listed: HashSet<NetworkKind>,
    /// The networks each policy names that do not exist (with the field naming each).
    missing: BTreeMap<PodKey, Vec<(String, NetworkKey)>>,
    changes: Changes,
}

/// What changed since the last round, each with its state before the first change.
#[derive(Debug, Default)]
struct Changes {
    /// A kind was listed afresh: every pod of this node is looked at.
    everything: bool,
    /// Pods (their view, None: they had none; whether they had a sandbox on this node).
    pods: HashMap<PodKey, (Option<PodView>, bool)>,
    /// The pods that had a sandbox on this node when a fresh list rebuilt the views: each
    /// may have lost it.
    lost: BTreeSet<PodKey>,
    namespaces: HashMap<String, Option<Labels>>,
    policies: HashMap<PodKey, Option<DanmNetworkPolicySpec>>,
}

/// What one watched change did to a map of the index.
enum Applied<K, V> {
    /// A fresh list replaced the map.
    Relisted,
    /// The key holds what it held (a change to a field the index does not keep).
    Same,
    /// The key, and what it held before (None: nothing).
    Changed(K, Option<V>),
}

/// Applies one watched change to `map`.
fn apply<K: std::hash::Hash + Eq + Clone, V: PartialEq>(
    map: &mut HashMap<K, V>,
    change: Change<(K, V)>,
) -> Applied<K, V> {
    let (key, old) = match change {
        Change::Relisted(all) => {
            *map = all.into_iter().collect();
            return Applied::Relisted;
        }
        Change::Applied((key, value)) => {
            let old = map.insert(key.clone(), value);
            (key, old)
        }
        Change::Deleted((key, _)) => {
            let old = map.remove(&key);
            (key, old)
        }
    };
    if old.as_ref() == map.get(&key) {
        Applied::Same
    } else {
        Applied::Changed(key, old)
    }
}

/// A policy (by namespace and name) that names networks that do not exist (by field).
pub type MissingNetworks<'a> = (PodKey, &'a [(String, NetworkKey)]);

/// Labels.
pub type Labels = BTreeMap<String, String>;

/// A pod's labels, named ports and UID.
pub type PodFacts = (Labels, Vec<NamedPort>, String);

/// A namespace reduced to its facts.
pub fn namespace(ns: Namespace) -> (String, Labels) {
    (ns.name_any(), ns.metadata.labels.unwrap_or_default())
}

/// A pod reduced to its facts.
pub fn pod(pod: Pod) -> (PodKey, PodFacts) {
    let key = (pod.namespace().unwrap_or_default(), pod.name_any());
    let ports = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone()?,
                protocol: Protocol::parse(p.protocol.as_deref())?,
                port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    (key, (pod.metadata.labels.unwrap_or_default(), ports, uid))
}

/// A DanmEp reduced to its facts; None when it names no network this build knows.
pub fn endpoint(ep: DanmEp) -> (PodKey, Option<Endpoint>) {
    let namespace = ep.namespace().unwrap_or_default();
    let key = (namespace.clone(), ep.name_any());
    let kind = danm_core::endpoint::kind(&ep);
    let spec = ep.spec;
    let addresses: Vec<IpAddr> = [&spec.interface.address, &spec.interface.address_ipv6]
        .into_iter()
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect();
    let facts = kind.map(|kind: NetworkKind| Endpoint {
        pod: (namespace, spec.pod.clone()),
        host: spec.host.clone(),
        netns: spec.netns.clone(),
        pod_uid: spec.pod_uid.clone(),
        interface: Interface {
            ifname: spec.interface.name.clone(),
            network: (kind, spec.network_name.clone()),
            addresses,
        },
    });
    (key, facts)
}

/// A network (`K`: DanmNet, TenantNetwork or ClusterNetwork) reduced to its key: all a
/// policy's reference to it needs.
pub fn network<K: kube::Resource<DynamicType = ()>>(object: K) -> (NetworkKey, ()) {
    let namespace = object.meta().namespace.clone().unwrap_or_default();
    let name = object.meta().name.clone().unwrap_or_default();
    (NetworkKey::new(network_kind::<K>(), &namespace, &name), ())
}

fn network_kind<K: kube::Resource<DynamicType = ()>>() -> NetworkKind {
    NetworkKind::parse(&K::kind(&())).expect("K is one of the three network kinds")
}

/// A policy reduced to its facts.
pub fn policy(policy: DanmNetworkPolicy) -> (PodKey, DanmNetworkPolicySpec) {
    (
        (policy.namespace().unwrap_or_default(), policy.name_any()),
        policy.spec,
    )
}

impl Index {
    /// An empty index for the policer of `node`.
    pub fn new(node: &str) -> Index {
        Index {
            node: node.to_owned(),
            ..Index::default()
        }
    }

    /// A namespace changed; whether anything the decisions read did.
    pub fn on_namespace(&mut self, change: Change<(String, Labels)>) -> bool {
        match apply(&mut self.namespaces, change) {
            Applied::Relisted => self.changes.everything = true,
            Applied::Same => return false,
            Applied::Changed(name, old) => {
                self.changes.namespaces.entry(name).or_insert(old);
            }
        }
        true
    }

    /// A pod changed; whether anything the decisions read did (a status update does not).
    pub fn on_pod(&mut self, change: Change<(PodKey, PodFacts)>) -> bool {
        match apply(&mut self.pods, change) {
            Applied::Relisted => self.rebuild(),
            Applied::Same => return false,
            Applied::Changed(key, _) => self.refresh(&key),
        }
        true
    }

    /// A DanmEp changed; whether anything the decisions read did.
    pub fn on_endpoint(&mut self, change: Change<(PodKey, Option<Endpoint>)>) -> bool {
        let (key, old) = match apply(&mut self.endpoints, change) {
            Applied::Relisted => {
                self.rebuild();
                return true;
            }
            Applied::Same => return false,
            Applied::Changed(key, old) => (key, old),
        };
        let pod_of = |ep: Option<&Option<Endpoint>>| ep.cloned().flatten().map(|ep| ep.pod);
        if let Some(pod) = pod_of(old.as_ref()) {
            if let Some(names) = self.endpoints_of.get_mut(&pod) {
                names.remove(&key.1);
                if names.is_empty() {
                    self.endpoints_of.remove(&pod);
                }
            }
            self.refresh(&pod);
        }
        if let Some(pod) = pod_of(self.endpoints.get(&key)) {
            self.endpoints_of
                .entry(pod.clone())
                .or_default()
                .insert(key.1.clone());
            self.refresh(&pod);
        }
        true
    }

    /// A DanmNetworkPolicy changed; whether its spec did.
    pub fn on_policy(&mut self, change: Change<(PodKey, DanmNetworkPolicySpec)>) -> bool {
        match apply(&mut self.policies, change) {
            Applied::Relisted => {
                self.policies_in.clear();
                for (namespace, name) in self.policies.keys() {
                    self.policies_in
                        .entry(namespace.clone())
                        .or_default()
                        .insert(name.clone());
                }
                self.missing.clear();
                let policies: Vec<PodKey> = self.policies.keys().cloned().collect();
                for policy in &policies {
                    self.check_networks(policy);
                }
                self.changes.everything = true;
            }
            Applied::Same => return false,
            Applied::Changed(key, old) => {
                let names = self.policies_in.entry(key.0.clone()).or_default();
                if self.policies.contains_key(&key) {
                    names.insert(key.1.clone());
                } else {
                    names.remove(&key.1);
                }
                self.check_networks(&key);
                self.changes.policies.entry(key).or_insert(old);
            }
        }
        true
    }

    /// A network of kind `K` came or went; whether a policy's missing networks changed.
    pub fn on_network<K: kube::Resource<DynamicType = ()>>(
        &mut self,
        change: Change<(NetworkKey, ())>,
    ) -> bool {
        let key = match change {
            Change::Relisted(all) => {
                let kind = network_kind::<K>();
                self.networks_listed.insert(kind);
                self.networks.retain(|key| key.kind != kind);
                self.networks.extend(all.into_iter().map(|(key, ())| key));
                let policies: Vec<PodKey> = self.policies.keys().cloned().collect();
                self.missing.clear();
                for policy in &policies {
                    self.check_networks(policy);
                }
                return true;
            }
            Change::Applied((key, ())) => {
                if !self.networks.insert(key.clone()) {
                    return false;
                }
                key
            }
            Change::Deleted((key, ())) => {
                if !self.networks.remove(&key) {
                    return false;
                }
                key
            }
        };
        // The policies that name it (a ClusterNetwork may be named from any namespace).
        let naming: Vec<PodKey> = self
            .policies
            .iter()
            .filter(|((namespace, _), spec)| {
                danm_core::netpol::named_networks(spec, namespace)
                    .iter()
                    .any(|(_, named)| *named == key)
            })
            .map(|(policy, _)| policy.clone())
            .collect();
        for policy in &naming {
            self.check_networks(policy);
        }
        !naming.is_empty()
    }

    /// Records which networks policy `key` names that do not exist.
    fn check_networks(&mut self, key: &PodKey) {
        let missing: Vec<(String, NetworkKey)> = self
            .policies
            .get(key)
            .map(|spec| danm_core::netpol::named_networks(spec, &key.0))
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, network)| {
                self.networks_listed.contains(&network.kind) && !self.networks.contains(network)
            })
            .collect();
        if missing.is_empty() {
            self.missing.remove(key);
        } else {
            self.missing.insert(key.clone(), missing);
        }
    }

    /// Rebuilds pod `key`'s view and sandboxes from its facts and its own DanmEps, noting
    /// what it was before its first change since the last round.
    fn refresh(&mut self, key: &PodKey) {
        let before = (self.views.get(key).cloned(), self.local.contains_key(key));
        self.changes.pods.entry(key.clone()).or_insert(before);
        let (view, sandboxes) = self.build(key);
        match view {
            Some(view) => {
                self.views.insert(key.clone(), view);
                self.in_namespace
                    .entry(key.0.clone())
                    .or_default()
                    .insert(key.1.clone());
            }
            None => {
                self.views.remove(key);
                if let Some(names) = self.in_namespace.get_mut(&key.0) {
                    names.remove(&key.1);
                }
            }
        }
        self.sandbox_count += sandboxes.len();
        let old = if sandboxes.is_empty() {
            self.local.remove(key)
        } else {
            self.local.insert(key.clone(), sandboxes)
        };
        self.sandbox_count -= old.map_or(0, |old| old.len());
    }

    /// Pod `key` as the decisions see it (None: no pod, or no interface), and its sandboxes
    /// on this node.
    fn build(&self, key: &PodKey) -> (Option<PodView>, BTreeSet<String>) {
        let mut sandboxes = BTreeSet::new();
        let Some((labels, ports, uid)) = self.pods.get(key) else {
            return (None, sandboxes);
        };
        let mut interfaces = Vec::new();
        for name in self.endpoints_of.get(key).into_iter().flatten() {
            let Some(Some(ep)) = self.endpoints.get(&(key.0.clone(), name.clone())) else {
                continue;
            };
            // A record of an earlier pod of the same name (not deleted yet) is not this
            // pod's.
            if !ep.pod_uid.is_empty() && !uid.is_empty() && ep.pod_uid != *uid {
                continue;
            }
            interfaces.push(ep.interface.clone());
            if ep.host == self.node && !ep.netns.is_empty() {
                sandboxes.insert(ep.netns.clone());
            }
        }
        if interfaces.is_empty() {
            return (None, sandboxes);
        }
        interfaces.sort_by(|a, b| a.ifname.cmp(&b.ifname));
        let view = PodView {
            namespace: key.0.clone(),
            name: key.1.clone(),
            labels: labels.clone(),
            ports: ports.clone(),
            interfaces,
        };
        (Some(view), sandboxes)
    }

    /// Every view, sandbox and DanmEp list again (after a fresh list of pods or DanmEps);
    /// the next round looks at every pod of this node.
    fn rebuild(&mut self) {
        self.endpoints_of.clear();
        for (key, ep) in &self.endpoints {
            if let Some(ep) = ep {
                self.endpoints_of
                    .entry(ep.pod.clone())
                    .or_default()
                    .insert(key.1.clone());
            }
        }
        self.views.clear();
        self.in_namespace.clear();
        let lost = std::mem::take(&mut self.local).into_keys();
        self.changes.lost.extend(lost);
        self.sandbox_count = 0;
        self.changes.everything = true;
        let pods: Vec<PodKey> = self.endpoints_of.keys().cloned().collect();
        for key in pods {
            self.refresh(&key);
        }
    }

    /// Whether the index holds everything a new sandbox's table depends on: the pod (with
    /// this UID, when given) and the DanmEp of each of `interfaces`, found by the name
    /// ipamd gives it (from the container id and interface name: no scan), recording
    /// `netns`. `Err` when a record says the sandbox is not this policer's (another node).
    pub fn holds_sandbox(&self, sandbox: &Sandbox, node: &str) -> Result<bool, String> {
        let key = (sandbox.namespace.clone(), sandbox.pod.clone());
        match self.pods.get(&key) {
            Some((_, _, uid)) if sandbox.uid.is_empty() || *uid == sandbox.uid => {}
            _ => return Ok(false),
        }
        for ifname in &sandbox.interfaces {
            let name = danm_core::OwnerKey::new(&sandbox.container_id, ifname)
                .map_err(|e| format!("interface {ifname:?}: {e}"))?
                .endpoint_name();
            let Some(Some(ep)) = self.endpoints.get(&(sandbox.namespace.clone(), name)) else {
                return Ok(false);
            };
            if ep.pod != key || ep.netns != sandbox.netns {
                return Ok(false);
            }
            if ep.host != node {
                return Err(format!(
                    "the DanmEp of interface {ifname} names node {:?}, this policer serves {node:?}",
                    ep.host
                ));
            }
        }
        Ok(true)
    }
}

mod round;

#[cfg(test)]
mod tests;
