//! What a round asks of the index: which pods of this node a change may affect, their
//! sandboxes and decisions, the policies that select a pod, and the policies naming
//! networks that do not exist. The decisions read the index itself as the cluster
//! ([`Cluster`]): no copy of it is made per round.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use danm_core::netpol::{Cluster, PodRules, PodView, PolicyView};
use danm_crds::DanmNetworkPolicySpec;

use super::{Index, Labels, MissingNetworks, PodKey};

impl Index {
    /// The pods of this node whose rules may have changed since the last call (every one
    /// after a fresh list), and the pods that had a sandbox here and may have lost it;
    /// forgets the changes. The work is in the changes and the policies they concern, not
    /// in the pods they do not affect.
    pub fn take_changed(&mut self) -> BTreeSet<PodKey> {
        let changes = std::mem::take(&mut self.changes);
        if changes.everything {
            let lost = changes.pods.into_iter().filter(|(_, (_, was))| *was);
            return self
                .local
                .keys()
                .cloned()
                .chain(changes.lost)
                .chain(lost.map(|(pod, _)| pod))
                .collect();
        }
        let mut out = BTreeSet::new();
        for (key, old) in &changes.policies {
            for spec in [old.as_ref(), self.policies.get(key)].into_iter().flatten() {
                self.add_selected(&key.0, spec, &mut out);
            }
        }
        let no_labels = Labels::new();
        for (pod, (old, was_local)) in &changes.pods {
            if *was_local || self.local.contains_key(pod) {
                out.insert(pod.clone());
            }
            let labels: Vec<&Labels> = [old.as_ref(), self.views.get(pod)]
                .into_iter()
                .flatten()
                .map(|view| &view.labels)
                .collect();
            if labels.is_empty() {
                continue; // no interface before or after: no one's peer
            }
            let namespace_labels = self.namespaces.get(&pod.0).unwrap_or(&no_labels);
            for ((namespace, _), spec) in &self.policies {
                let policy = PolicyView { namespace, spec };
                if labels
                    .iter()
                    .any(|l| danm_core::netpol::may_peer(policy, &pod.0, namespace_labels, l))
                {
                    self.add_selected(namespace, spec, &mut out);
                }
            }
        }
        for (name, old) in &changes.namespaces {
            let labels: Vec<&Labels> = [old.as_ref(), self.namespaces.get(name)]
                .into_iter()
                .flatten()
                .collect();
            for ((namespace, _), spec) in &self.policies {
                let policy = PolicyView { namespace, spec };
                if labels
                    .iter()
                    .any(|l| danm_core::netpol::may_peer_namespace(policy, l))
                {
                    self.add_selected(namespace, spec, &mut out);
                }
            }
        }
        out
    }

    /// Adds the pods of this node that `spec`, a policy of `namespace`, selects.
    fn add_selected(
        &self,
        namespace: &str,
        spec: &DanmNetworkPolicySpec,
        out: &mut BTreeSet<PodKey>,
    ) {
        let policy = PolicyView { namespace, spec };
        let from = (namespace.to_owned(), String::new());
        for (key, _) in self
            .local
            .range((Bound::Included(from), Bound::Unbounded))
            .take_while(|(key, _)| key.0 == namespace)
        {
            if self
                .views
                .get(key)
                .is_some_and(|view| danm_core::netpol::selects(policy, view))
            {
                out.insert(key.clone());
            }
        }
    }

    /// The sandboxes of pod `key` on this node.
    pub fn sandboxes(&self, key: &PodKey) -> BTreeSet<String> {
        self.local.get(key).cloned().unwrap_or_default()
    }

    /// How many sandboxes this node has.
    pub fn sandbox_count(&self) -> usize {
        self.sandbox_count
    }

    /// The decisions for pod `key`.
    pub fn rules(&self, key: &PodKey) -> PodRules {
        let Some(view) = self.views.get(key) else {
            return PodRules::default();
        };
        danm_core::netpol::pod_rules(view, &self.policies_of(&key.0), self)
    }

    /// The policies that name networks that do not exist and select a pod of this node
    /// (where it matters: an interface not covered, a peer that allows nothing), with those
    /// networks by field; none until the three network kinds have been listed.
    pub fn missing_networks(&self) -> Vec<MissingNetworks<'_>> {
        // Not before every kind is listed: a note written from part of the networks would
        // stand (the recorder folds repeats into the first note).
        if self.networks_listed.len() < 3 {
            return Vec::new();
        }
        self.missing
            .iter()
            .filter_map(|(policy, missing)| {
                let spec = self.policies.get(policy)?;
                let mut selected = BTreeSet::new();
                self.add_selected(&policy.0, spec, &mut selected);
                (!selected.is_empty()).then(|| (policy.clone(), missing.as_slice()))
            })
            .collect()
    }

    /// The names of the policies that select pod `key` (whose failures concern them).
    pub fn selecting(&self, key: &PodKey) -> Vec<String> {
        let Some(view) = self.views.get(key) else {
            return Vec::new();
        };
        let namespace = key.0.as_str();
        self.policies_in
            .get(namespace)
            .into_iter()
            .flatten()
            .filter(|name| {
                self.policies
                    .get(&(namespace.to_owned(), (*name).clone()))
                    .is_some_and(|spec| {
                        danm_core::netpol::selects(PolicyView { namespace, spec }, view)
                    })
            })
            .cloned()
            .collect()
    }

    fn policies_of<'s>(&'s self, namespace: &'s str) -> Vec<PolicyView<'s>> {
        self.policies_in
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|name| {
                let spec = self.policies.get(&(namespace.to_owned(), name.clone()))?;
                Some(PolicyView { namespace, spec })
            })
            .collect()
    }
}

impl Cluster for Index {
    /// Sorted by name: the decisions come out the same however the map hashes, so a
    /// recomputed pod whose rules did not change is not replaced.
    fn namespaces(&self) -> Vec<(&str, &BTreeMap<String, String>)> {
        let mut all: Vec<(&str, &BTreeMap<String, String>)> = self
            .namespaces
            .iter()
            .map(|(name, labels)| (name.as_str(), labels))
            .collect();
        all.sort_unstable_by_key(|(name, _)| *name);
        all
    }

    fn pods_in(&self, namespace: &str) -> Vec<&PodView> {
        self.in_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|name| self.views.get(&(namespace.to_owned(), name.clone())))
            .collect()
    }
}
