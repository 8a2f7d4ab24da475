//! NetworkPolicy's semantics on every interface, case by case.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;

/// Namespaces `a` (team=a), `b` (team=b) and `c` (no label); in each, pods `x` (app=x), `y`
/// (app=y) and `z` (app=z) with `eth0` on the namespace's default DanmNet, `net1` on DanmNet
/// `signal` and `net2` on ClusterNetwork `media`; `z` declares container port `http` (TCP
/// 8080) and `dns` (UDP 5353).
struct World {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods: Vec<PodView>,
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The address of `pod` in namespace `ns` on interface `index` (0: eth0, 1: net1, 2: net2).
fn ip(ns: &str, pod: &str, index: usize) -> IpAddr {
    let n = ["a", "b", "c"].iter().position(|x| *x == ns).unwrap() + 1;
    let p = ["x", "y", "z"].iter().position(|x| *x == pod).unwrap() + 1;
    format!("10.{}.{n}.{p}", index + 1).parse().unwrap()
}

fn world() -> World {
    let mut namespaces = BTreeMap::new();
    namespaces.insert("a".to_owned(), labels(&[("team", "a")]));
    namespaces.insert("b".to_owned(), labels(&[("team", "b")]));
    namespaces.insert("c".to_owned(), labels(&[]));
    let mut pods = Vec::new();
    for ns in ["a", "b", "c"] {
        for name in ["x", "y", "z"] {
            let networks = [
                (NetworkKind::DanmNet, "default"),
                (NetworkKind::DanmNet, "signal"),
                (NetworkKind::ClusterNetwork, "media"),
            ];
            pods.push(PodView {
                namespace: ns.into(),
                name: name.into(),
                labels: labels(&[("app", name)]),
                ports: if name == "z" {
                    vec![
                        NamedPort {
                            name: "http".into(),
                            protocol: Protocol::Tcp,
                            port: 8080,
                        },
                        NamedPort {
                            name: "dns".into(),
                            protocol: Protocol::Udp,
                            port: 5353,
                        },
                    ]
                } else {
                    Vec::new()
                },
                interfaces: networks
                    .iter()
                    .enumerate()
                    .map(|(i, (kind, network))| Interface {
                        ifname: if i == 0 {
                            "eth0".into()
                        } else {
                            format!("net{i}")
                        },
                        network: (*kind, (*network).into()),
                        addresses: vec![ip(ns, name, i)],
                    })
                    .collect(),
            });
        }
    }
    World { namespaces, pods }
}

impl Cluster for World {
    fn namespaces(&self) -> Vec<(&str, &BTreeMap<String, String>)> {
        self.namespaces
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect()
    }
    fn pods_in(&self, namespace: &str) -> Vec<&PodView> {
        self.pods
            .iter()
            .filter(|p| p.namespace == namespace)
            .collect()
    }
}

impl World {
    fn pod(&self, ns: &str, name: &str) -> &PodView {
        self.pods
            .iter()
            .find(|p| p.namespace == ns && p.name == name)
            .unwrap()
    }

    /// The rules of pod `ns/name` under `policies` (each of namespace `a`).
    fn rules(&self, ns: &str, name: &str, policies: &[serde_json::Value]) -> PodRules {
        let specs: Vec<DanmNetworkPolicySpec> = policies
            .iter()
            .map(|p| serde_json::from_value(p.clone()).unwrap())
            .collect();
        let views: Vec<PolicyView<'_>> = specs
            .iter()
            .map(|spec| PolicyView {
                namespace: "a",
                spec,
            })
            .collect();
        pod_rules(self.pod(ns, name), &views, self)
    }
}

/// Whether `rules` allow a connection from `remote` to port `port`/`protocol` on the pod's
/// interface `ifname` (ingress); `None` when the interface is not isolated.
fn allows(
    isolated: &[Isolated],
    ifname: &str,
    remote: IpAddr,
    protocol: Protocol,
    port: u16,
) -> Option<bool> {
    let interface = isolated.iter().find(|i| i.ifname == ifname)?;
    Some(interface.allow.iter().any(|a| {
        let peer = match &a.peers {
            Peers::Any => true,
            Peers::Only(set) => set.contains(remote),
        };
        let port = match &a.ports {
            Ports::Any => true,
            Ports::Only(list) => list
                .iter()
                .any(|&(p, first, last)| p == protocol && first <= port && port <= last),
        };
        peer && port
    }))
}

const TCP: Protocol = Protocol::Tcp;

#[test]
fn a_pod_no_policy_selects_gets_no_rule() {
    let w = world();
    let deny = json!({"podSelector": {"matchLabels": {"app": "x"}}, "policyTypes": ["Ingress"]});
    assert!(w.rules("a", "y", std::slice::from_ref(&deny)).is_empty());
    assert!(w.rules("b", "x", &[deny]).is_empty(), "another namespace");
    assert!(w.rules("a", "x", &[]).is_empty());
}

#[test]
fn deny_all_isolates_every_interface_with_an_address() {
    let mut w = world();
    w.pods[0].interfaces.push(Interface {
        ifname: "l2only".into(),
        network: (NetworkKind::DanmNet, "l2".into()),
        addresses: Vec::new(),
    });
    let rules = w.rules(
        "a",
        "x",
        &[json!({"podSelector": {}, "policyTypes": ["Ingress"]})],
    );
    let names: Vec<&str> = rules.ingress.iter().map(|i| i.ifname.as_str()).collect();
    assert_eq!(names, ["eth0", "net1", "net2"]);
    assert!(rules.ingress.iter().all(|i| i.allow.is_empty()));
    assert!(rules.egress.is_empty(), "policyTypes says Ingress only");
}

#[test]
fn policy_types_default_as_kubernetes_decides() {
    let w = world();
    let ingress_only = json!({"podSelector": {}});
    let rules = w.rules("a", "x", &[ingress_only]);
    assert_eq!((rules.ingress.len(), rules.egress.len()), (3, 0));
    let with_egress = json!({"podSelector": {}, "egress": [{"to": [{"podSelector": {}}]}]});
    let rules = w.rules("a", "x", &[with_egress]);
    assert_eq!((rules.ingress.len(), rules.egress.len()), (3, 3));
    assert!(
        rules.ingress.iter().all(|i| i.allow.is_empty()),
        "ingress denied"
    );
}

#[test]
fn an_empty_from_allows_everything_and_an_empty_rule_list_nothing() {
    let w = world();
    let all = json!({"podSelector": {}, "ingress": [{}]});
    let rules = w.rules("a", "x", &[all]);
    assert_eq!(
        allows(
            &rules.ingress,
            "net1",
            "192.0.2.1".parse().unwrap(),
            Protocol::Udp,
            9
        ),
        Some(true)
    );
    let none = json!({"podSelector": {}, "ingress": []});
    let rules = w.rules("a", "x", &[none]);
    assert_eq!(
        allows(&rules.ingress, "net1", ip("a", "y", 1), TCP, 80),
        Some(false)
    );
}

#[test]
fn pod_selector_peers_are_every_interface_of_the_matching_pods_of_the_namespace() {
    let w = world();
    let policy = json!({"podSelector": {"matchLabels": {"app": "x"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "y"}}}]}]});
    let rules = w.rules("a", "x", &[policy]);
    for ifname in ["eth0", "net1", "net2"] {
        for index in 0..3 {
            assert_eq!(
                allows(&rules.ingress, ifname, ip("a", "y", index), TCP, 80),
                Some(true)
            );
            assert_eq!(
                allows(&rules.ingress, ifname, ip("a", "z", index), TCP, 80),
                Some(false)
            );
            assert_eq!(
                allows(&rules.ingress, ifname, ip("b", "y", index), TCP, 80),
                Some(false)
            );
        }
    }
}

#[test]
fn namespace_selectors_alone_and_with_pod_selectors() {
    let w = world();
    let from_b = json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]});
    let rules = w.rules("a", "x", &[from_b]);
    assert_eq!(
        allows(&rules.ingress, "eth0", ip("b", "z", 0), TCP, 1),
        Some(true)
    );
    assert_eq!(
        allows(&rules.ingress, "eth0", ip("a", "z", 0), TCP, 1),
        Some(false)
    );
    assert_eq!(
        allows(&rules.ingress, "eth0", ip("c", "z", 0), TCP, 1),
        Some(false)
    );
    // Both in one peer narrow; in two peers they add up.
    let narrow = json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "y"}}}]}]});
    let rules = w.rules("a", "x", &[narrow]);
    for ns in ["a", "b", "c"] {
        assert_eq!(
            allows(&rules.ingress, "eth0", ip(ns, "y", 0), TCP, 1),
            Some(true)
        );
        assert_eq!(
            allows(&rules.ingress, "eth0", ip(ns, "z", 0), TCP, 1),
            Some(false)
        );
    }
    let union = json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "b"}}},
        {"podSelector": {"matchLabels": {"app": "y"}}}]}]});
    let rules = w.rules("a", "x", &[union]);
    assert_eq!(
        allows(&rules.ingress, "eth0", ip("b", "z", 0), TCP, 1),
        Some(true)
    );
    assert_eq!(
        allows(&rules.ingress, "eth0", ip("a", "y", 0), TCP, 1),
        Some(true)
    );
    assert_eq!(
        allows(&rules.ingress, "eth0", ip("a", "z", 0), TCP, 1),
        Some(false)
    );
}

#[test]
fn ip_blocks_minus_their_exceptions() {
    let w = world();
    let policy = json!({"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.2.0.0/16", "except": ["10.2.2.0/24"]}},
        {"ipBlock": {"cidr": "fd00::/64"}}]}]});
    let rules = w.rules("a", "x", &[policy]);
    assert_eq!(
        allows(&rules.ingress, "net1", ip("a", "y", 1), TCP, 1),
        Some(true)
    );
    assert_eq!(
        allows(&rules.ingress, "net1", ip("b", "y", 1), TCP, 1),
        Some(false)
    );
    assert_eq!(
        allows(&rules.ingress, "net1", ip("a", "y", 0), TCP, 1),
        Some(false)
    );
    assert_eq!(
        allows(&rules.ingress, "net1", "fd00::7".parse().unwrap(), TCP, 1),
        Some(true)
    );
}

#[test]
fn ports_protocols_end_ports_and_named_ports_on_the_selected_pod() {
    let w = world();
    let policy = json!({"podSelector": {}, "ingress": [{"ports": [
        {"port": 80}, {"port": 9000, "endPort": 9010, "protocol": "UDP"},
        {"port": "http"}, {"port": "dns", "protocol": "UDP"}, {"protocol": "SCTP"}]}]});
    let z = w.rules("a", "z", std::slice::from_ref(&policy));
    let anyone: IpAddr = "192.0.2.1".parse().unwrap();
    assert_eq!(allows(&z.ingress, "eth0", anyone, TCP, 80), Some(true));
    assert_eq!(
        allows(&z.ingress, "eth0", anyone, Protocol::Udp, 80),
        Some(false)
    );
    assert_eq!(
        allows(&z.ingress, "eth0", anyone, Protocol::Udp, 9005),
        Some(true)
    );
    assert_eq!(
        allows(&z.ingress, "eth0", anyone, Protocol::Udp, 9011),
        Some(false)
    );
    assert_eq!(allows(&z.ingress, "eth0", anyone, TCP, 8080), Some(true));
    assert_eq!(
        allows(&z.ingress, "eth0", anyone, Protocol::Udp, 5353),
        Some(true)
    );
    assert_eq!(
        allows(&z.ingress, "eth0", anyone, Protocol::Sctp, 3868),
        Some(true)
    );
    // x declares no named port: "http" opens nothing on it.
    let x = w.rules("a", "x", &[policy]);
    assert_eq!(allows(&x.ingress, "eth0", anyone, TCP, 8080), Some(false));
    assert_eq!(allows(&x.ingress, "eth0", anyone, TCP, 80), Some(true));
}

#[test]
fn egress_named_ports_resolve_on_each_peer_pod() {
    let w = world();
    let policy = json!({"podSelector": {"matchLabels": {"app": "x"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": "http"}]}]});
    let rules = w.rules("a", "x", &[policy]);
    assert!(rules.ingress.is_empty());
    assert_eq!(
        allows(&rules.egress, "eth0", ip("a", "z", 0), TCP, 8080),
        Some(true)
    );
    assert_eq!(
        allows(&rules.egress, "eth0", ip("a", "y", 0), TCP, 8080),
        Some(false)
    );
}

#[test]
fn policies_add_up() {
    let w = world();
    let from_y = json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "y"}}}], "ports": [{"port": 80}]}]});
    let from_z = json!({"podSelector": {"matchLabels": {"app": "x"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "z"}}}], "ports": [{"port": 81}]}]});
    let rules = w.rules("a", "x", &[from_y, from_z]);
    assert_eq!(
        allows(&rules.ingress, "eth0", ip("a", "y", 0), TCP, 80),
        Some(true)
    );
    assert_eq!(
        allows(&rules.ingress, "eth0", ip("a", "y", 0), TCP, 81),
        Some(false)
    );
    assert_eq!(
        allows(&rules.ingress, "eth0", ip("a", "z", 0), TCP, 81),
        Some(true)
    );
    assert_eq!(
        allows(&rules.ingress, "eth0", ip("a", "z", 0), TCP, 80),
        Some(false)
    );
}

#[test]
fn a_network_selector_on_the_spec_isolates_only_those_interfaces() {
    let w = world();
    let policy = json!({"podSelector": {}, "policyTypes": ["Ingress"],
        "networkSelector": [{"name": "signal", "type": "DanmNet"}, {"name": "media", "type": "ClusterNetwork"}]});
    let rules = w.rules("a", "x", &[policy]);
    let names: Vec<&str> = rules.ingress.iter().map(|i| i.ifname.as_str()).collect();
    assert_eq!(names, ["net1", "net2"]);
    // The type defaults to DanmNet: "media" alone names no ClusterNetwork.
    let untyped = json!({"podSelector": {}, "policyTypes": ["Ingress"], "networkSelector": [{"name": "media"}]});
    assert!(w.rules("a", "x", &[untyped]).is_empty());
    // A network that does not exist selects nothing (it may come later).
    let later = json!({"podSelector": {}, "networkSelector": [{"name": "later"}]});
    assert!(w.rules("a", "x", &[later]).is_empty());
}

#[test]
fn a_peer_network_selector_chooses_the_peers_interfaces() {
    let w = world();
    // DANM's: a network selector alone is every pod of the namespace, on that network.
    let policy = json!({"podSelector": {}, "ingress": [{"from": [
        {"networkSelector": [{"name": "signal", "type": "DanmNet"}]}]}]});
    let rules = w.rules("a", "x", &[policy]);
    assert_eq!(
        allows(&rules.ingress, "eth0", ip("a", "y", 1), TCP, 1),
        Some(true)
    );
    assert_eq!(
        allows(&rules.ingress, "eth0", ip("a", "y", 0), TCP, 1),
        Some(false)
    );
    assert_eq!(
        allows(&rules.ingress, "eth0", ip("b", "y", 1), TCP, 1),
        Some(false)
    );
    // With a pod selector: the AND of both.
    let policy = json!({"podSelector": {}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"app": "z"}}, "networkSelector": [{"name": "media", "type": "ClusterNetwork"}]}]}]});
    let rules = w.rules("a", "x", &[policy]);
    assert_eq!(
        allows(&rules.ingress, "net1", ip("a", "z", 2), TCP, 1),
        Some(true)
    );
    assert_eq!(
        allows(&rules.ingress, "net1", ip("a", "y", 2), TCP, 1),
        Some(false)
    );
    assert_eq!(
        allows(&rules.ingress, "net1", ip("a", "z", 1), TCP, 1),
        Some(false)
    );
}

#[test]
fn label_selector_operators() {
    let l = labels(&[("app", "x"), ("tier", "db")]);
    let sel = |v: serde_json::Value| -> LabelSelectorFixture { serde_json::from_value(v).unwrap() };
    type LabelSelectorFixture = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let cases = [
        (json!({}), Ok(true)),
        (json!({"matchLabels": {"app": "x"}}), Ok(true)),
        (json!({"matchLabels": {"app": "y"}}), Ok(false)),
        (
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["x", "y"]}]}),
            Ok(true),
        ),
        (
            json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["x"]}]}),
            Ok(false),
        ),
        (
            json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["x"]}]}),
            Ok(true),
        ),
        (
            json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}),
            Ok(true),
        ),
        (
            json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
            Ok(false),
        ),
        (
            json!({"matchLabels": {"app": "x"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]}),
            Ok(false),
        ),
    ];
    for (selector, expected) in cases {
        assert_eq!(
            selector_matches(&sel(selector.clone()), &l),
            expected,
            "{selector}"
        );
    }
    let bad =
        sel(json!({"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["x"]}]}));
    assert!(matches!(
        selector_matches(&bad, &l),
        Err(SelectorError::Operator { .. })
    ));
    let bad = sel(json!({"matchExpressions": [{"key": "app", "operator": "In"}]}));
    assert!(matches!(
        selector_matches(&bad, &l),
        Err(SelectorError::Values { .. })
    ));
    // A policy with an invalid selector selects nothing.
    let w = world();
    let policy = json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["x"]}]}});
    assert!(w.rules("a", "x", &[policy]).is_empty());
}

#[test]
fn empty_policy_types_and_egress_lists_default_as_kubernetes_does() {
    let w = world();
    // policyTypes: [] is absent: Ingress.
    let rules = w.rules("a", "x", &[json!({"podSelector": {}, "policyTypes": []})]);
    assert_eq!((rules.ingress.len(), rules.egress.len()), (3, 0));
    // egress: [] has no egress rule: no Egress type implied.
    let rules = w.rules("a", "x", &[json!({"podSelector": {}, "egress": []})]);
    assert_eq!((rules.ingress.len(), rules.egress.len()), (3, 0));
}

#[test]
fn overlapping_port_ranges_merge() {
    let ports: Vec<PolicyPort> = serde_json::from_value(json!([
        {"port": 80}, {"port": 70, "endPort": 90}, {"port": 91}, {"port": "http"},
        {"port": 80, "protocol": "UDP"}
    ]))
    .unwrap();
    let named = [NamedPort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 85,
    }];
    assert_eq!(
        resolve(Some(&ports), &named),
        Ports::Only(vec![(Protocol::Tcp, 70, 91), (Protocol::Udp, 80, 80)])
    );
}

#[test]
fn the_networks_a_policy_names_are_listed_with_their_fields() {
    let spec: DanmNetworkPolicySpec = serde_json::from_value(json!({
        "podSelector": {},
        "networkSelector": [{"name": "internal"}],
        "ingress": [{"from": [{"podSelector": {}}, {"networkSelector": [
            {"name": "backbone", "type": "ClusterNetwork"},
            {"name": "tenant", "type": "TenantNetwork"}]}]}]
    }))
    .unwrap();
    let named: Vec<(String, String)> = named_networks(&spec, "ns")
        .into_iter()
        .map(|(field, key)| {
            (
                field,
                format!("{:?}/{}/{}", key.kind, key.namespace, key.name),
            )
        })
        .collect();
    assert_eq!(
        named,
        [
            (
                "spec.networkSelector[0]".to_owned(),
                "DanmNet/ns/internal".to_owned()
            ),
            (
                "spec.ingress[0].from[1].networkSelector[0]".to_owned(),
                "ClusterNetwork//backbone".to_owned()
            ),
            (
                "spec.ingress[0].from[1].networkSelector[1]".to_owned(),
                "TenantNetwork/ns/tenant".to_owned()
            ),
        ]
    );
}

/// Policies of namespace `a` of every peer shape, for the tests of [`may_peer`].
fn peer_shapes() -> Vec<serde_json::Value> {
    let x = json!({"matchLabels": {"app": "x"}});
    vec![
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        json!({"podSelector": x, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "y"}}}]}]}),
        json!({"podSelector": x, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]}),
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "z"}}}]}]}),
        json!({"podSelector": x, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]}),
        json!({"podSelector": x, "ingress": [{"from": [{"networkSelector": [{"name": "signal"}]}]}]}),
        json!({"podSelector": x, "ingress": [{}]}),
        json!({"podSelector": x, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "http"}]}]}),
        json!({"podSelector": x, "policyTypes": ["Egress"], "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "z"}}}], "ports": [{"port": "http"}]}]}),
    ]
}

impl World {
    /// The rules of every pod of namespace `a` under `policy`.
    fn rules_of_a(&self, policy: &serde_json::Value) -> Vec<PodRules> {
        let names: Vec<String> = self.pods_in("a").iter().map(|p| p.name.clone()).collect();
        names
            .iter()
            .map(|name| self.rules("a", name, std::slice::from_ref(policy)))
            .collect()
    }
}

fn view<'a>(spec: &'a DanmNetworkPolicySpec) -> PolicyView<'a> {
    PolicyView {
        namespace: "a",
        spec,
    }
}

/// Sound: whenever removing a pod, or changing its labels, changes the rules of another pod,
/// `may_peer` holds for it (with its labels before or after). The policer recomputes only
/// those, so a miss here would be a pod left with stale rules.
#[test]
fn may_peer_holds_for_every_pod_whose_change_changes_another_pods_rules() {
    let w = world();
    let mut relevant = 0;
    for policy in peer_shapes() {
        let spec: DanmNetworkPolicySpec = serde_json::from_value(policy.clone()).unwrap();
        let before = w.rules_of_a(&policy);
        for (k, pod) in w.pods.iter().enumerate() {
            let ns_labels = &w.namespaces[&pod.namespace];
            let mut gone = world();
            gone.pods.remove(k);
            let mut relabelled = world();
            relabelled.pods[k].labels = labels(&[("app", "other")]);
            for (changed, new_labels) in [
                (&gone, None),
                (&relabelled, Some(labels(&[("app", "other")]))),
            ] {
                // The pod's own rules are recomputed anyway (it changed): compare the others'.
                let others = |world: &World| -> Vec<PodRules> {
                    world
                        .pods_in("a")
                        .iter()
                        .filter(|p| p.name != pod.name || pod.namespace != "a")
                        .map(|p| world.rules("a", &p.name, std::slice::from_ref(&policy)))
                        .collect()
                };
                let mut unchanged = before.clone();
                if pod.namespace == "a" {
                    let at = w
                        .pods_in("a")
                        .iter()
                        .position(|p| p.name == pod.name)
                        .unwrap();
                    unchanged.remove(at);
                }
                if others(changed) != unchanged {
                    relevant += 1;
                    let may = may_peer(view(&spec), &pod.namespace, ns_labels, &pod.labels)
                        || new_labels
                            .is_some_and(|l| may_peer(view(&spec), &pod.namespace, ns_labels, &l));
                    assert!(
                        may,
                        "{policy}: a change of {}/{} changes other pods' rules",
                        pod.namespace, pod.name
                    );
                }
            }
        }
    }
    assert!(
        relevant > 10,
        "the cases must exercise the rule ({relevant})"
    );
}

/// Sound for namespaces the same way, and narrow: a policy without namespace selectors (or
/// named ports to anywhere) never depends on namespace labels, and a deny-all or an ipBlock
/// depends on no other pod.
#[test]
fn may_peer_namespace_holds_when_a_namespace_relabel_changes_rules_and_is_narrow_otherwise() {
    let w = world();
    for policy in peer_shapes() {
        let spec: DanmNetworkPolicySpec = serde_json::from_value(policy.clone()).unwrap();
        let before = w.rules_of_a(&policy);
        for ns in ["a", "b", "c"] {
            let mut relabelled = world();
            let new = labels(&[("team", "other")]);
            relabelled.namespaces.insert(ns.to_owned(), new.clone());
            if relabelled.rules_of_a(&policy) != before {
                assert!(
                    may_peer_namespace(view(&spec), &w.namespaces[ns])
                        || may_peer_namespace(view(&spec), &new),
                    "{policy}: relabelling namespace {ns} changes rules"
                );
            }
        }
    }
    let shapes = peer_shapes();
    let spec =
        |k: usize| -> DanmNetworkPolicySpec { serde_json::from_value(shapes[k].clone()).unwrap() };
    let (deny, same_namespace, ip_block) = (spec(0), spec(1), spec(4));
    for pod in &w.pods {
        let ns_labels = &w.namespaces[&pod.namespace];
        for narrow in [&deny, &ip_block] {
            assert!(!may_peer(
                view(narrow),
                &pod.namespace,
                ns_labels,
                &pod.labels
            ));
            assert!(!may_peer_namespace(view(narrow), ns_labels));
        }
        assert_eq!(
            may_peer(
                view(&same_namespace),
                &pod.namespace,
                ns_labels,
                &pod.labels
            ),
            pod.namespace == "a" && pod.name == "y"
        );
        assert!(!may_peer_namespace(view(&same_namespace), ns_labels));
    }
}
