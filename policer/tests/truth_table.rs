//! The truth table, probed for real, as Kubernetes' network-policy e2e suite (and Cyclonus)
//! do: three namespaces x, y, z (labelled `ns=<name>`), pods a, b, c in each (`pod=<name>`,
//! container ports `serve-80-tcp`, `serve-80-udp`, `serve-81-tcp`, `serve-81-udp`), each
//! with an interface on three networks: `eth0` on DanmNet `default`, `net1` on DanmNet
//! `alpha`, `net2` on ClusterNetwork `beta` (one bridge each), each with an IPv4 and an IPv6
//! address. The namespaces, pods and DanmEps are objects of a real API server, and the
//! policer's controller runs on them: for every case its policies are created as
//! DanmNetworkPolicies, the test waits until the controller has given every pod the table
//! the decisions imply (`core::netpol` loaded into a scratch namespace by
//! `policer::ruleset`: the oracle), then every pair of pods is probed on every network over
//! IPv4 and IPv6 on TCP and UDP ports 80 and 81; the observed matrix must equal the case's
//! expectation, written here by hand from NetworkPolicy's semantics, not computed by the
//! code under test. As root.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use std::time::{Duration, Instant};

use common::{
    Running, Seen, no_icmp_rate_limit, normalized, serve_echo, tcp_probe, udp_probe_from,
};
use danm_core::NetworkKind;
use danm_core::netpol::{Cluster, Interface, NamedPort, PodView, PolicyView, Protocol, pod_rules};
use danm_crds::{DanmEp, DanmEpIface, DanmEpSpec, DanmNetworkPolicy, DanmNetworkPolicySpec};
use danm_policer::apply::apply;
use danm_policer::ruleset::replace;
use danm_testkit::control_plane::ControlPlane;
use danm_testkit::netns::Netns;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

/// The node the nine pods are on (the controller's).
const NODE: &str = "truth-node";

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
/// (interface, kind, network) of each pod's interfaces, by network index.
const NETWORKS: [(&str, NetworkKind, &str); 3] = [
    ("eth0", NetworkKind::DanmNet, "default"),
    ("net1", NetworkKind::DanmNet, "alpha"),
    ("net2", NetworkKind::ClusterNetwork, "beta"),
];

/// Pod `i` (0..9: x/a, x/b, ... z/c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct P(usize);

impl P {
    fn ns(self) -> &'static str {
        NAMESPACES[self.0 / 3]
    }
    fn pod(self) -> &'static str {
        PODS[self.0 % 3]
    }
    fn is(self, ns: &str, pod: &str) -> bool {
        self.ns() == ns && self.pod() == pod
    }
    /// Its address on network `net`.
    fn ip(self, net: usize) -> IpAddr {
        format!("10.{}.0.{}", 80 + net, self.0 + 10)
            .parse()
            .unwrap()
    }
    /// Its IPv6 address on network `net`.
    fn ip6(self, net: usize) -> IpAddr {
        format!("fd{}::{}", 80 + net, self.0 + 10).parse().unwrap()
    }
}

/// One probe: from, to, network, family, protocol, port.
#[derive(Clone, Copy, Debug)]
struct Probe {
    from: P,
    to: P,
    net: usize,
    v6: bool,
    udp: bool,
    port: u16,
}

impl Probe {
    fn tcp(&self) -> bool {
        !self.udp
    }
}

type Expect = fn(&Probe) -> bool;

struct Case {
    name: &'static str,
    /// (namespace, spec) of each policy.
    policies: Vec<(&'static str, Value)>,
    /// Whether the target's ingress rules let the probe in.
    ingress: Expect,
    /// Whether the source's egress rules let it out.
    egress: Expect,
}

fn yes(_: &Probe) -> bool {
    true
}

fn sel(pod: &str) -> Value {
    json!({"matchLabels": {"pod": pod}})
}

fn ns_sel(ns: &str) -> Value {
    json!({"matchLabels": {"ns": ns}})
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "no policy",
            policies: vec![],
            ingress: yes,
            egress: yes,
        },
        Case {
            name: "deny all ingress in x",
            policies: vec![("x", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))],
            ingress: |p| p.to.ns() != "x",
            egress: yes,
        },
        Case {
            name: "deny all egress in x",
            policies: vec![("x", json!({"podSelector": {}, "policyTypes": ["Egress"]}))],
            ingress: yes,
            egress: |p| p.from.ns() != "x",
        },
        Case {
            name: "allow all ingress in x",
            policies: vec![("x", json!({"podSelector": {}, "ingress": [{}]}))],
            ingress: yes,
            egress: yes,
        },
        Case {
            name: "x/a from its own namespace",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "ingress": [{"from": [{"podSelector": {}}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a") || p.from.ns() == "x",
            egress: yes,
        },
        Case {
            name: "x/a from namespace y",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "ingress": [{"from": [{"namespaceSelector": ns_sel("y")}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a") || p.from.ns() == "y",
            egress: yes,
        },
        Case {
            name: "x/a from pods b of any namespace",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": sel("b")}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a") || p.from.pod() == "b",
            egress: yes,
        },
        Case {
            name: "x/a from y/b (both selectors in one peer)",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "ingress": [{"from": [{"namespaceSelector": ns_sel("y"), "podSelector": sel("b")}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a") || p.from.is("y", "b"),
            egress: yes,
        },
        Case {
            name: "x/a from namespace y or from x/b (two peers)",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "ingress": [{"from": [{"namespaceSelector": ns_sel("y")}, {"podSelector": sel("b")}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a") || p.from.ns() == "y" || p.from.is("x", "b"),
            egress: yes,
        },
        Case {
            name: "x/a on port 80 (TCP by default)",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "ingress": [{"ports": [{"port": 80}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a") || (p.tcp() && p.port == 80),
            egress: yes,
        },
        Case {
            name: "x/a on UDP 81",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a") || (p.udp && p.port == 81),
            egress: yes,
        },
        Case {
            name: "x/a on the named port serve-81-tcp",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a") || (p.tcp() && p.port == 81),
            egress: yes,
        },
        Case {
            name: "x/a on TCP 80 to 81 (endPort)",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "ingress": [{"ports": [{"port": 80, "endPort": 81}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a") || p.tcp(),
            egress: yes,
        },
        Case {
            name: "x/a from alpha's /24 and /64 except y/b's addresses (ipBlock, both families)",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "ingress": [{"from": [
                    {"ipBlock": {"cidr": "10.81.0.0/24", "except": ["10.81.0.14/32"]}},
                    {"ipBlock": {"cidr": "fd81::/64", "except": ["fd81::14/128"]}}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a") || (p.net == 1 && !p.from.is("y", "b")),
            egress: yes,
        },
        Case {
            name: "policies add up: x/a from y on 80, from z on 81",
            policies: vec![
                (
                    "x",
                    json!({"podSelector": sel("a"), "ingress": [{"from": [{"namespaceSelector": ns_sel("y")}], "ports": [{"port": 80}]}]}),
                ),
                (
                    "x",
                    json!({"podSelector": sel("a"), "ingress": [{"from": [{"namespaceSelector": ns_sel("z")}], "ports": [{"port": 81}]}]}),
                ),
            ],
            ingress: |p| {
                !p.to.is("x", "a")
                    || (p.tcp()
                        && ((p.from.ns() == "y" && p.port == 80)
                            || (p.from.ns() == "z" && p.port == 81)))
            },
            egress: yes,
        },
        Case {
            name: "x/a in from y and out to z (both policy types)",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"namespaceSelector": ns_sel("y")}]}],
                "egress": [{"to": [{"namespaceSelector": ns_sel("z")}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a") || p.from.ns() == "y",
            egress: |p| !p.from.is("x", "a") || p.to.ns() == "z",
        },
        Case {
            name: "x/a out to namespace y only",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": ns_sel("y")}]}]}),
            )],
            ingress: yes,
            egress: |p| !p.from.is("x", "a") || p.to.ns() == "y",
        },
        Case {
            name: "x/a out to beta's IPv4 /24 only (egress ipBlock: IPv6 out denied)",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "10.82.0.0/24"}}]}]}),
            )],
            ingress: yes,
            egress: |p| !p.from.is("x", "a") || (p.net == 2 && !p.v6),
        },
        Case {
            // No policyTypes: Ingress is implied (with no rule: denied), Egress by the rules.
            name: "x/a out on port 81 only, ingress implied and denied",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "egress": [{"ports": [{"port": 81}, {"port": 81, "protocol": "UDP"}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a"),
            egress: |p| !p.from.is("x", "a") || p.port == 81,
        },
        Case {
            name: "x/a out on the peers' named port serve-80-udp",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "serve-80-udp", "protocol": "UDP"}]}]}),
            )],
            ingress: yes,
            egress: |p| !p.from.is("x", "a") || (p.udp && p.port == 80),
        },
        Case {
            name: "deny ingress in x on alpha only (spec.networkSelector)",
            policies: vec![(
                "x",
                json!({"podSelector": {}, "policyTypes": ["Ingress"], "networkSelector": [{"name": "alpha", "type": "DanmNet"}]}),
            )],
            ingress: |p| p.to.ns() != "x" || p.net != 1,
            egress: yes,
        },
        Case {
            name: "deny ingress in x on the ClusterNetwork beta",
            policies: vec![(
                "x",
                json!({"podSelector": {}, "policyTypes": ["Ingress"], "networkSelector": [{"name": "beta", "type": "ClusterNetwork"}]}),
            )],
            ingress: |p| p.to.ns() != "x" || p.net != 2,
            egress: yes,
        },
        Case {
            name: "x/a from x's pods on alpha only (DANM's peer networkSelector)",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "ingress": [{"from": [{"networkSelector": [{"name": "alpha", "type": "DanmNet"}]}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a") || (p.from.ns() == "x" && p.net == 1),
            egress: yes,
        },
        Case {
            name: "x/a isolated on beta only, from y",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "networkSelector": [{"name": "beta", "type": "ClusterNetwork"}],
                "ingress": [{"from": [{"namespaceSelector": ns_sel("y")}]}]}),
            )],
            ingress: |p| !(p.to.is("x", "a") && p.net == 2) || p.from.ns() == "y",
            egress: yes,
        },
        Case {
            name: "deny all ingress in y leaves x alone",
            policies: vec![("y", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))],
            ingress: |p| p.to.ns() != "y",
            egress: yes,
        },
        Case {
            name: "every pod of x but a isolated (NotIn)",
            policies: vec![(
                "x",
                json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]}, "policyTypes": ["Ingress"]}),
            )],
            ingress: |p| p.to.ns() != "x" || p.to.pod() == "a",
            egress: yes,
        },
        Case {
            name: "x isolated both ways, ingress from x only",
            policies: vec![(
                "x",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{"from": [{"podSelector": {}}]}]}),
            )],
            ingress: |p| p.to.ns() != "x" || p.from.ns() == "x",
            egress: |p| p.from.ns() != "x",
        },
        Case {
            name: "x/a on UDP 80 from anywhere",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "ingress": [{"ports": [{"port": 80, "protocol": "UDP"}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a") || (p.udp && p.port == 80),
            egress: yes,
        },
        Case {
            name: "egress denied in x, ingress denied in z",
            policies: vec![
                ("x", json!({"podSelector": {}, "policyTypes": ["Egress"]})),
                ("z", json!({"podSelector": {}, "policyTypes": ["Ingress"]})),
            ],
            ingress: |p| p.to.ns() != "z",
            egress: |p| p.from.ns() != "x",
        },
        Case {
            name: "x/a on SCTP only",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "ingress": [{"ports": [{"protocol": "SCTP"}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a"),
            egress: yes,
        },
        Case {
            name: "x/a from namespaces no one has (selects nothing)",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "ingress": [{"from": [{"namespaceSelector": ns_sel("q")}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a"),
            egress: yes,
        },
        Case {
            name: "x/a from x's b and c (In)",
            policies: vec![(
                "x",
                json!({"podSelector": sel("a"), "ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}}]}]}),
            )],
            ingress: |p| !p.to.is("x", "a") || (p.from.ns() == "x" && p.from.pod() != "a"),
            egress: yes,
        },
    ]
}

/// The nine pods' namespaces on three bridges.
struct Cluster9 {
    _fabric: Netns,
    pods: Vec<Netns>,
    views: Vec<PodView>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl Cluster9 {
    fn new() -> Cluster9 {
        let fabric = Netns::new("ttf");
        for net in 0..3 {
            let bridge = format!("br{net}");
            fabric.ip(&["link", "add", &bridge, "type", "bridge"]);
            fabric.ip(&["link", "set", &bridge, "up"]);
        }
        let mut pods = Vec::new();
        let mut views = Vec::new();
        for i in 0..9 {
            let p = P(i);
            let ns = Netns::new("ttp");
            no_icmp_rate_limit(&ns);
            let mut interfaces = Vec::new();
            for (net, (ifname, kind, network)) in NETWORKS.iter().enumerate() {
                let outside = format!("p{i}n{net}");
                ns.ip(&[
                    "link",
                    "add",
                    ifname,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &outside,
                    "netns",
                    &fabric.name,
                ]);
                ns.ip(&["addr", "add", &format!("{}/24", p.ip(net)), "dev", ifname]);
                let v6 = format!("{}/64", p.ip6(net));
                ns.ip(&["addr", "add", &v6, "dev", ifname, "nodad"]);
                ns.ip(&["link", "set", ifname, "up"]);
                fabric.ip(&["link", "set", &outside, "master", &format!("br{net}"), "up"]);
                interfaces.push(Interface {
                    ifname: (*ifname).into(),
                    network: (*kind, (*network).into()),
                    addresses: vec![p.ip(net), p.ip6(net)],
                });
            }
            serve_echo(&ns, &[80, 81]);
            let ports = [
                ("serve-80-tcp", Protocol::Tcp, 80),
                ("serve-80-udp", Protocol::Udp, 80),
                ("serve-81-tcp", Protocol::Tcp, 81),
                ("serve-81-udp", Protocol::Udp, 81),
            ]
            .iter()
            .map(|(name, protocol, port)| NamedPort {
                name: (*name).into(),
                protocol: *protocol,
                port: *port,
            })
            .collect();
            views.push(PodView {
                namespace: p.ns().into(),
                name: p.pod().into(),
                labels: [("pod".to_owned(), p.pod().to_owned())].into(),
                ports,
                interfaces,
            });
            pods.push(ns);
        }
        let namespaces = NAMESPACES
            .iter()
            .map(|n| ((*n).to_owned(), [("ns".to_owned(), (*n).to_owned())].into()))
            .collect();
        Cluster9 {
            _fabric: fabric,
            pods,
            views,
            namespaces,
        }
    }

    /// Every pod's table as `policies` decide, as `nft` lists it once loaded (into
    /// `scratch`, one after the other): the oracle the controller's tables must equal.
    fn expected(&self, policies: &[(&str, Value)], scratch: &Netns) -> Vec<Option<Value>> {
        let specs: Vec<(&str, DanmNetworkPolicySpec)> = policies
            .iter()
            .map(|(ns, spec)| {
                (
                    *ns,
                    serde_json::from_value(spec.clone()).expect("a policy spec"),
                )
            })
            .collect();
        let views: Vec<PolicyView<'_>> = specs
            .iter()
            .map(|(ns, spec)| PolicyView {
                namespace: ns,
                spec,
            })
            .collect();
        let path = std::path::PathBuf::from(scratch.path());
        self.views
            .iter()
            .map(|view| {
                let rules = pod_rules(view, &views, self);
                if rules.is_empty() {
                    return None;
                }
                apply(&path, &replace(&rules, &[]), None).expect("the oracle's table applies");
                normalized(&path)
            })
            .collect()
    }

    /// Every pod's table as the controller left it.
    fn tables(&self) -> Vec<Option<Value>> {
        self.pods
            .iter()
            .map(|ns| normalized(std::path::Path::new(&ns.path())))
            .collect()
    }

    /// The namespaces, pods (labels, named container ports) and DanmEps (one an interface,
    /// its two addresses, the pod's network namespace) as the API server's objects.
    async fn publish(&self, client: &kube::Client) {
        for ns in NAMESPACES {
            let namespace: Namespace =
                serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"ns": ns}}}))
                    .unwrap();
            Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &namespace)
                .await
                .unwrap();
        }
        for (i, view) in self.views.iter().enumerate() {
            let ports: Vec<Value> = view
                .ports
                .iter()
                .map(|p| {
                    json!({"name": p.name, "containerPort": p.port,
                           "protocol": if p.protocol == Protocol::Udp { "UDP" } else { "TCP" }})
                })
                .collect();
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": view.name, "labels": view.labels},
                "spec": {"nodeName": NODE, "containers": [
                    {"name": "app", "image": "registry.invalid/app", "ports": ports}]}
            }))
            .unwrap();
            Api::<Pod>::namespaced(client.clone(), &view.namespace)
                .create(&PostParams::default(), &pod)
                .await
                .unwrap();
            for (net, interface) in view.interfaces.iter().enumerate() {
                let ep = DanmEp::new(
                    &format!("{}-{}", view.name, interface.ifname),
                    DanmEpSpec {
                        network_name: interface.network.1.clone(),
                        network_type: "veth".into(),
                        interface: DanmEpIface {
                            name: interface.ifname.clone(),
                            address: format!("{}/24", P(i).ip(net)),
                            address_ipv6: format!("{}/64", P(i).ip6(net)),
                            ..Default::default()
                        },
                        host: NODE.into(),
                        pod: view.name.clone(),
                        netns: self.pods[i].path(),
                        api_type: interface.network.0.to_string(),
                        ..Default::default()
                    },
                );
                Api::<DanmEp>::namespaced(client.clone(), &view.namespace)
                    .create(&PostParams::default(), &ep)
                    .await
                    .unwrap();
            }
        }
    }

    /// Probe number `n` of the whole run (UDP probes each get a source port of their own:
    /// see `common::udp_probe_from`).
    fn probe(&self, p: &Probe, n: usize) -> bool {
        let address = if p.v6 {
            p.to.ip6(p.net)
        } else {
            p.to.ip(p.net)
        };
        let target = SocketAddr::new(address, p.port);
        let from = &self.pods[p.from.0];
        let seen = if p.udp {
            // 1,728 probes a case: a port comes back only after 23 cases, for another
            // probe.
            let port = 20_000 + (n % 40_000) as u16;
            udp_probe_from(from, target, port)
        } else {
            tcp_probe(from, target)
        };
        seen == Seen::Answered
    }
}

impl Cluster for Cluster9 {
    fn namespaces(&self) -> Vec<(&str, &BTreeMap<String, String>)> {
        self.namespaces
            .iter()
            .map(|(n, l)| (n.as_str(), l))
            .collect()
    }
    fn pods_in(&self, namespace: &str) -> Vec<&PodView> {
        self.views
            .iter()
            .filter(|v| v.namespace == namespace)
            .collect()
    }
}

fn probes() -> Vec<Probe> {
    let mut out = Vec::new();
    for from in 0..9 {
        for to in 0..9 {
            if from == to {
                continue;
            }
            for net in 0..3 {
                for v6 in [false, true] {
                    for udp in [false, true] {
                        for port in [80, 81] {
                            out.push(Probe {
                                from: P(from),
                                to: P(to),
                                net,
                                v6,
                                udp,
                                port,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_on_every_pair_network_protocol_and_port() {
    let cluster = Cluster9::new();
    let scratch = Netns::new("tts");
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    cluster.publish(&client).await;
    let controller = Running::start(client.clone(), NODE);
    controller.synced().await;
    let all = probes();
    let mut failures = Vec::new();
    let cases = cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut created: Vec<(&str, String)> = Vec::new();
    for (c, case) in cases.iter().enumerate() {
        // The case's policies, through the API server, replace the last case's.
        for (ns, name) in created.drain(..) {
            Api::<DanmNetworkPolicy>::namespaced(client.clone(), ns)
                .delete(&name, &DeleteParams::default())
                .await
                .unwrap();
        }
        for (k, (ns, spec)) in case.policies.iter().enumerate() {
            let name = format!("case{c}-{k}");
            let policy: DanmNetworkPolicy = serde_json::from_value(json!({
                "apiVersion": "danm.io/v1", "kind": "DanmNetworkPolicy",
                "metadata": {"name": name}, "spec": spec
            }))
            .unwrap();
            Api::<DanmNetworkPolicy>::namespaced(client.clone(), ns)
                .create(&PostParams::default(), &policy)
                .await
                .unwrap_or_else(|e| panic!("case {:?}: {e}", case.name));
            created.push((ns, name));
        }
        let expected = cluster.expected(&case.policies, &scratch);
        let deadline = Instant::now() + Duration::from_secs(20);
        while cluster.tables() != expected {
            if Instant::now() > deadline {
                let tables = cluster.tables();
                let differ: Vec<String> = (0..9)
                    .filter(|i| tables[*i] != expected[*i])
                    .map(|i| format!("{}/{}", P(i).ns(), P(i).pod()))
                    .collect();
                panic!(
                    "case {:?}: the controller did not give these pods the tables the \
                     decisions imply within 20 s: {differ:?}",
                    case.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (size, total) = (all.len().div_ceil(8), all.len());
        let observed: Vec<bool> = tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                let chunks: Vec<_> = all
                    .chunks(size)
                    .enumerate()
                    .map(|(k, chunk)| {
                        let cluster = &cluster;
                        scope.spawn(move || {
                            chunk
                                .iter()
                                .enumerate()
                                .map(|(i, p)| cluster.probe(p, c * total + k * size + i))
                                .collect::<Vec<bool>>()
                        })
                    })
                    .collect();
                chunks.into_iter().flat_map(|h| h.join().unwrap()).collect()
            })
        });
        let wrong: Vec<String> = all
            .iter()
            .zip(&observed)
            .filter(|(p, seen)| ((case.ingress)(p) && (case.egress)(p)) != **seen)
            .map(|(p, seen)| {
                format!(
                    "  {}/{} -> {}/{} on {} {} {} {}: expected {}, observed {}",
                    p.from.ns(),
                    p.from.pod(),
                    p.to.ns(),
                    p.to.pod(),
                    NETWORKS[p.net].2,
                    if p.v6 { "IPv6" } else { "IPv4" },
                    if p.udp { "UDP" } else { "TCP" },
                    p.port,
                    if *seen { "blocked" } else { "allowed" },
                    if *seen { "allowed" } else { "blocked" },
                )
            })
            .collect();
        if !wrong.is_empty() {
            failures.push(format!(
                "case {:?}: {} of {} probes differ\n{}",
                case.name,
                wrong.len(),
                all.len(),
                wrong
                    .iter()
                    .take(20)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
    }
    controller.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
