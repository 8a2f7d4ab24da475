//! What the policer knows of the cluster, fed by watches: namespaces' labels, pods' labels
//! and named ports, every DanmEp (a pod's interfaces, addresses and network namespace) and
//! every DanmNetworkPolicy. Objects are reduced to those facts as they arrive.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use danm_core::NetworkKind;
use danm_core::netpol::{Cluster, Interface, NamedPort, PodView, PolicyView, Protocol};
use danm_crds::{DanmEp, DanmNetworkPolicy, DanmNetworkPolicySpec};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;

/// A pod, by namespace and name.
pub type PodKey = (String, String);

/// One DanmEp's facts.
#[derive(Clone, Debug)]
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
    namespaces: HashMap<String, Labels>,
    pods: HashMap<PodKey, PodFacts>,
    endpoints: HashMap<PodKey, Option<Endpoint>>,
    policies: HashMap<PodKey, DanmNetworkPolicySpec>,
}

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

/// A policy reduced to its facts.
pub fn policy(policy: DanmNetworkPolicy) -> (PodKey, DanmNetworkPolicySpec) {
    (
        (policy.namespace().unwrap_or_default(), policy.name_any()),
        policy.spec,
    )
}

impl Index {
    /// Namespaces, by name.
    pub fn namespaces_mut(&mut self) -> &mut HashMap<String, Labels> {
        &mut self.namespaces
    }

    /// Pods, by namespace and name.
    pub fn pods_mut(&mut self) -> &mut HashMap<PodKey, PodFacts> {
        &mut self.pods
    }

    /// DanmEps, by their own namespace and name (None: on no network this build knows).
    pub fn endpoints_mut(&mut self) -> &mut HashMap<PodKey, Option<Endpoint>> {
        &mut self.endpoints
    }

    /// Policies, by namespace and name.
    pub fn policies_mut(&mut self) -> &mut HashMap<PodKey, DanmNetworkPolicySpec> {
        &mut self.policies
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

    /// What one round of decisions reads: every pod with its interfaces, the pods of
    /// `node` with their network namespaces, and the policies.
    pub fn snapshot(&self, node: &str) -> Snapshot {
        let mut views: BTreeMap<PodKey, PodView> = BTreeMap::new();
        let mut local: BTreeSet<(PodKey, String)> = BTreeSet::new();
        for ep in self.endpoints.values().flatten() {
            let Some((labels, ports, uid)) = self.pods.get(&ep.pod) else {
                continue;
            };
            // A record of an earlier pod of the same name (not deleted yet) is not this
            // pod's.
            if !ep.pod_uid.is_empty() && !uid.is_empty() && ep.pod_uid != *uid {
                continue;
            }
            let view = views.entry(ep.pod.clone()).or_insert_with(|| PodView {
                namespace: ep.pod.0.clone(),
                name: ep.pod.1.clone(),
                labels: labels.clone(),
                ports: ports.clone(),
                interfaces: Vec::new(),
            });
            view.interfaces.push(ep.interface.clone());
            if ep.host == node && !ep.netns.is_empty() {
                local.insert((ep.pod.clone(), ep.netns.clone()));
            }
        }
        for view in views.values_mut() {
            view.interfaces.sort_by(|a, b| a.ifname.cmp(&b.ifname));
        }
        let mut by_namespace: BTreeMap<String, Vec<PodKey>> = BTreeMap::new();
        for key in views.keys() {
            by_namespace
                .entry(key.0.clone())
                .or_default()
                .push(key.clone());
        }
        Snapshot {
            namespaces: self
                .namespaces
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            views,
            by_namespace,
            local,
            policies: self
                .policies
                .iter()
                .map(|((ns, name), spec)| (ns.clone(), name.clone(), spec.clone()))
                .collect(),
        }
    }
}

/// One round's view of the cluster.
#[derive(Debug)]
pub struct Snapshot {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    views: BTreeMap<PodKey, PodView>,
    by_namespace: BTreeMap<String, Vec<PodKey>>,
    /// This node's pods with their network namespaces (a pod whose sandbox is being
    /// re-created may briefly have two: each gets the table).
    pub local: BTreeSet<(PodKey, String)>,
    /// (namespace, name, spec).
    policies: Vec<(String, String, DanmNetworkPolicySpec)>,
}

impl Snapshot {
    /// The decisions for local pod `key`.
    pub fn rules(&self, key: &PodKey) -> danm_core::netpol::PodRules {
        let Some(view) = self.views.get(key) else {
            return Default::default();
        };
        danm_core::netpol::pod_rules(view, &self.policies_of(&key.0), self)
    }

    /// The names of the policies that select local pod `key` (whose failures concern them).
    pub fn selecting(&self, key: &PodKey) -> Vec<String> {
        let Some(view) = self.views.get(key) else {
            return Vec::new();
        };
        self.policies
            .iter()
            .filter(|(ns, _, spec)| {
                *ns == key.0
                    && danm_core::netpol::selects(
                        PolicyView {
                            namespace: ns,
                            spec,
                        },
                        view,
                    )
            })
            .map(|(_, name, _)| name.clone())
            .collect()
    }

    fn policies_of<'s>(&'s self, namespace: &str) -> Vec<PolicyView<'s>> {
        self.policies
            .iter()
            .filter(|(ns, _, _)| ns == namespace)
            .map(|(ns, _, spec)| PolicyView {
                namespace: ns,
                spec,
            })
            .collect()
    }
}

impl Cluster for Snapshot {
    fn namespaces(&self) -> Vec<(&str, &BTreeMap<String, String>)> {
        self.namespaces
            .iter()
            .map(|(name, labels)| (name.as_str(), labels))
            .collect()
    }

    fn pods_in(&self, namespace: &str) -> Vec<&PodView> {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|key| self.views.get(key))
            .collect()
    }
}
