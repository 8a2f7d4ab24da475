//! The index kept in step change by change: the same rules as an index built from fresh
//! lists, no pod whose rules changed left out of a round, and no pod a change does not
//! affect looked at.

use std::collections::{BTreeMap, BTreeSet};

use danm_core::NetworkKind;
use danm_core::netpol::{Interface, PodRules};
use danm_crds::DanmNetworkPolicySpec;
use danm_runtime::index::Change;
use serde_json::json;

use super::{Endpoint, Index, Labels, PodFacts, PodKey};

const NODE: &str = "n1";

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn key(ns: &str, name: &str) -> PodKey {
    (ns.to_owned(), name.to_owned())
}

fn facts(app: &str) -> PodFacts {
    (labels(&[("app", app)]), Vec::new(), String::new())
}

/// The DanmEp `<pod>-<ifname>` of pod `ns/pod` on `node`, in sandbox `/run/netns/<pod>`.
fn endpoint(
    ns: &str,
    pod: &str,
    ifname: &str,
    node: &str,
    address: &str,
) -> (PodKey, Option<Endpoint>) {
    let network = if ifname == "eth0" {
        "default"
    } else {
        "signal"
    };
    (
        key(ns, &format!("{pod}-{ifname}")),
        Some(Endpoint {
            pod: key(ns, pod),
            host: node.to_owned(),
            netns: format!("/run/netns/{pod}"),
            pod_uid: String::new(),
            interface: Interface {
                ifname: ifname.to_owned(),
                network: (NetworkKind::DanmNet, network.to_owned()),
                addresses: vec![address.parse().unwrap()],
            },
        }),
    )
}

fn spec(value: serde_json::Value) -> DanmNetworkPolicySpec {
    serde_json::from_value(value).unwrap()
}

/// Policies of every peer shape (pods, namespaces, both, networks, ipBlock, any, named
/// ports to anywhere, deny-all).
fn policy_pool() -> Vec<DanmNetworkPolicySpec> {
    let x = json!({"matchLabels": {"app": "x"}});
    [
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        json!({"podSelector": x, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "y"}}}]}]}),
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]}),
        json!({"podSelector": x, "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "z"}}}]}]}),
        json!({"podSelector": x, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}),
        json!({"podSelector": {"matchLabels": {"app": "y"}}, "ingress": [{"from": [{"networkSelector": [{"name": "signal"}]}]}]}),
        json!({"podSelector": x, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "http"}]}]}),
        json!({"podSelector": {"matchLabels": {"app": "z"}}, "policyTypes": ["Egress"], "egress": [{"to": [{"podSelector": {}}]}]}),
    ]
    .into_iter()
    .map(spec)
    .collect()
}

/// The cluster as the test knows it, to build an index from fresh lists.
#[derive(Clone, Default)]
struct Truth {
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<PodKey, PodFacts>,
    endpoints: BTreeMap<PodKey, Option<Endpoint>>,
    policies: BTreeMap<PodKey, DanmNetworkPolicySpec>,
}

impl Truth {
    fn fresh(&self) -> Index {
        let mut index = Index::new(NODE);
        index.on_namespace(Change::Relisted(
            self.namespaces.clone().into_iter().collect(),
        ));
        index.on_pod(Change::Relisted(self.pods.clone().into_iter().collect()));
        index.on_endpoint(Change::Relisted(
            self.endpoints.clone().into_iter().collect(),
        ));
        index.on_policy(Change::Relisted(
            self.policies.clone().into_iter().collect(),
        ));
        index
    }
}

/// A small deterministic generator (no dependency, same sequence every run).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

#[test]
fn a_changed_index_decides_as_a_fresh_one_and_every_pod_whose_rules_changed_is_in_the_round() {
    let pool = policy_pool();
    let (namespaces, apps, teams) = (["a", "b", "c"], ["x", "y", "z"], ["a", "b", ""]);
    let mut truth = Truth::default();
    let mut index = Index::new(NODE);
    for ns in namespaces {
        let l = labels(&[("team", ns)]);
        truth.namespaces.insert(ns.to_owned(), l.clone());
        index.on_namespace(Change::Applied((ns.to_owned(), l)));
    }
    index.take_changed();
    let mut rng = Lcg(7);
    let mut last: BTreeMap<PodKey, PodRules> = BTreeMap::new();
    let mut looked_at = 0;
    for step in 0..400 {
        for _ in 0..=rng.below(3) {
            let ns = namespaces[rng.below(3)];
            let pod = format!("p{}", rng.below(4));
            match rng.below(8) {
                // A watch restarted: a fresh list of one kind, which brings what the watch
                // missed while it was down (here an object deleted meanwhile).
                7 => match rng.below(3) {
                    0 => {
                        truth.pods.remove(&key(ns, &pod));
                        index.on_pod(Change::Relisted(truth.pods.clone().into_iter().collect()));
                    }
                    1 => {
                        let ifname = ["eth0", "net1"][rng.below(2)];
                        truth.endpoints.remove(&key(ns, &format!("{pod}-{ifname}")));
                        let all = truth.endpoints.clone().into_iter().collect();
                        index.on_endpoint(Change::Relisted(all));
                    }
                    _ => {
                        let all = truth.namespaces.clone().into_iter().collect();
                        index.on_namespace(Change::Relisted(all));
                    }
                },
                0 => {
                    let l = labels(&[("team", teams[rng.below(3)])]);
                    truth.namespaces.insert(ns.to_owned(), l.clone());
                    index.on_namespace(Change::Applied((ns.to_owned(), l)));
                }
                1 | 2 => {
                    let f = facts(apps[rng.below(3)]);
                    truth.pods.insert(key(ns, &pod), f.clone());
                    index.on_pod(Change::Applied((key(ns, &pod), f)));
                }
                3 => {
                    if let Some(f) = truth.pods.remove(&key(ns, &pod)) {
                        index.on_pod(Change::Deleted((key(ns, &pod), f)));
                    }
                }
                4 => {
                    let ifname = ["eth0", "net1"][rng.below(2)];
                    let node = ["n1", "n2"][rng.below(2)];
                    let address = format!(
                        "10.{}.{}.{}",
                        rng.below(2),
                        rng.below(3),
                        rng.below(250) + 1
                    );
                    let (k, ep) = endpoint(ns, &pod, ifname, node, &address);
                    truth.endpoints.insert(k.clone(), ep.clone());
                    index.on_endpoint(Change::Applied((k, ep)));
                }
                5 => {
                    let ifname = ["eth0", "net1"][rng.below(2)];
                    let k = key(ns, &format!("{pod}-{ifname}"));
                    if let Some(ep) = truth.endpoints.remove(&k) {
                        index.on_endpoint(Change::Deleted((k, ep)));
                    }
                }
                _ => {
                    let k = key(ns, &format!("pol{}", rng.below(3)));
                    if rng.below(4) == 0 {
                        if let Some(s) = truth.policies.remove(&k) {
                            index.on_policy(Change::Deleted((k, s)));
                        }
                    } else {
                        let s = pool[rng.below(pool.len())].clone();
                        truth.policies.insert(k.clone(), s.clone());
                        index.on_policy(Change::Applied((k, s)));
                    }
                }
            }
        }
        let changed = index.take_changed();
        looked_at += changed.len();
        let fresh = truth.fresh();
        assert_eq!(
            index.local, fresh.local,
            "step {step}: this node's sandboxes"
        );
        assert_eq!(index.sandbox_count(), fresh.sandbox_count(), "step {step}");
        for pod in fresh.local.keys() {
            let rules = fresh.rules(pod);
            assert_eq!(
                index.rules(pod),
                rules,
                "step {step}: {pod:?} decided differently"
            );
            if last.get(pod) != Some(&rules) {
                assert!(
                    changed.contains(pod),
                    "step {step}: the rules of {pod:?} changed but the round leaves it out"
                );
            }
            last.insert(pod.clone(), rules);
        }
        for pod in last
            .keys()
            .filter(|p| !fresh.local.contains_key(*p))
            .cloned()
            .collect::<Vec<_>>()
        {
            assert!(
                changed.contains(&pod),
                "step {step}: {pod:?} lost its sandbox but the round leaves it out"
            );
            last.remove(&pod);
        }
    }
    assert!(looked_at > 200, "the steps must change rules ({looked_at})");
}

#[test]
fn a_round_looks_only_at_the_pods_a_change_may_affect() {
    let mut index = Index::new(NODE);
    index.on_namespace(Change::Applied(("a".to_owned(), labels(&[("team", "a")]))));
    index.on_namespace(Change::Applied(("bulk".to_owned(), Labels::new())));
    for (k, app) in ["x", "y", "z"].iter().enumerate() {
        index.on_pod(Change::Applied((key("a", app), facts(app))));
        index.on_endpoint(Change::Applied(endpoint(
            "a",
            app,
            "eth0",
            NODE,
            &format!("10.0.0.{}", k + 1),
        )));
    }
    for k in 0..1000 {
        let name = format!("b{k}");
        index.on_pod(Change::Applied((key("bulk", &name), facts("x"))));
        let address = format!("10.1.{}.{}", k / 250, k % 250 + 1);
        index.on_endpoint(Change::Applied(endpoint(
            "bulk", &name, "eth0", NODE, &address,
        )));
    }
    assert_eq!(
        index.take_changed().len(),
        1003,
        "after the first lists: every local pod"
    );
    let pool = policy_pool();
    // A policy of `a` selecting app=x, peers app=y of `a`: only a/x.
    index.on_policy(Change::Applied((key("a", "only-x"), pool[1].clone())));
    assert_eq!(index.take_changed(), BTreeSet::from([key("a", "x")]));
    // Its peer changes: the pods it selects; a pod of another namespace: no one.
    index.on_endpoint(Change::Applied(endpoint(
        "a", "y", "eth0", NODE, "10.0.0.9",
    )));
    assert_eq!(
        index.take_changed(),
        BTreeSet::from([key("a", "x"), key("a", "y")])
    );
    index.on_pod(Change::Applied((key("bulk", "b7"), facts("y"))));
    assert_eq!(index.take_changed(), BTreeSet::from([key("bulk", "b7")]));
    // A status update (same facts) is no change at all.
    assert!(!index.on_pod(Change::Applied((key("bulk", "b8"), facts("x")))));
    assert!(index.take_changed().is_empty());
    // Namespace labels matter only to namespace selectors.
    assert!(index.on_namespace(Change::Applied((
        "bulk".to_owned(),
        labels(&[("team", "b")])
    ))));
    assert!(index.take_changed().is_empty());
    index.on_policy(Change::Applied((key("a", "from-b"), pool[2].clone())));
    assert_eq!(index.take_changed().len(), 3, "selects every pod of a");
    index.on_namespace(Change::Applied(("bulk".to_owned(), Labels::new())));
    assert_eq!(
        index.take_changed().len(),
        3,
        "the peers' namespace lost its label"
    );
    // The decisions read the pods of the namespaces a peer names, no more.
    let rules = index.rules(&key("a", "x"));
    assert!(!rules.is_empty());
}

#[test]
fn the_networks_a_policy_names_that_do_not_exist_follow_the_networks_of_each_kind() {
    use danm_core::NetworkKey;
    use danm_crds::{ClusterNetwork, DanmNet, TenantNetwork};
    let mut index = Index::new(NODE);
    index.on_pod(Change::Applied((key("a", "x"), facts("x"))));
    index.on_endpoint(Change::Applied(endpoint(
        "a", "x", "eth0", NODE, "10.0.0.1",
    )));
    let danmnet = |name: &str| NetworkKey::new(NetworkKind::DanmNet, "a", name);
    let cluster = |name: &str| NetworkKey::new(NetworkKind::ClusterNetwork, "", name);
    index.on_network::<ClusterNetwork>(Change::Relisted(vec![(cluster("media"), ())]));
    index.on_network::<TenantNetwork>(Change::Relisted(Vec::new()));
    let named = spec(json!({
        "podSelector": {},
        "networkSelector": [{"name": "signal"}],
        "ingress": [{"from": [{"networkSelector": [{"name": "media", "type": "ClusterNetwork"}]}]}]
    }));
    index.on_policy(Change::Applied((key("a", "p"), named.clone())));
    assert!(
        index.missing_networks().is_empty(),
        "DanmNets not listed yet: nothing reported"
    );
    index.on_network::<DanmNet>(Change::Relisted(Vec::new()));
    let missing = |index: &Index| -> Vec<(String, NetworkKey)> {
        index
            .missing_networks()
            .into_iter()
            .flat_map(|(_, missing)| missing.to_vec())
            .collect()
    };
    assert_eq!(
        missing(&index),
        [("spec.networkSelector[0]".to_owned(), danmnet("signal"))]
    );
    assert!(index.on_network::<DanmNet>(Change::Applied((danmnet("signal"), ()))));
    assert!(missing(&index).is_empty());
    assert!(
        !index.on_network::<DanmNet>(Change::Applied((danmnet("other"), ()))),
        "named by none"
    );
    // A fresh list of one kind leaves the others' networks.
    index.on_network::<DanmNet>(Change::Relisted(Vec::new()));
    assert_eq!(
        missing(&index).len(),
        1,
        "signal is gone again, media is not"
    );
    assert!(index.on_network::<ClusterNetwork>(Change::Deleted((cluster("media"), ()))));
    assert_eq!(missing(&index).len(), 2);
    // Where it matters only: a policy that selects no pod of this node is not reported.
    index.on_pod(Change::Deleted((key("a", "x"), facts("x"))));
    assert!(index.missing_networks().is_empty());
}
