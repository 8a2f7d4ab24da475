//! One pod's [`PodRules`] as one nftables table, `inet danm_policer`:
//!
//! ```text
//! chain input   (hook input)    iif lo, established/related, ICMPv6 neighbour discovery,
//!                               the node's addresses: accept; iifname <isolated> jump in_<k>
//! chain output  (hook output)   the same, oifname <isolated> jump out_<k>
//! chain forward (hook forward)  established/related accept; iifname jump fin_<k>, then
//!                               oifname jump fout_<k>: the same rules, `return` for accept
//! chain in_<k>  per allowance: ip saddr @in_<k>_<j>_4 [meta l4proto tcp th dport {..}]
//!               accept (and ip6 with _6); then reject (TCP reset, else ICMP unreachable)
//! chain out_<k> DNS (TCP and UDP 53) accept; per allowance with daddr; then reject
//! ```
//!
//! Chains and sets are named by index only; interface names and addresses are values in
//! the typed JSON, never text of a rule.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use danm_core::netpol::{AddressSet, Isolated, Peers, PodRules, Ports, Protocol, Ranges};
use nftables::batch::Batch;
use nftables::expr::{
    CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, SetItem,
};
use nftables::schema::{
    Chain, NfCmd, NfListObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{JumpTarget, Match, Operator, Reject, RejectType, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode};

/// The table of ours in every pod namespace the policer isolates.
pub const TABLE: &str = "danm_policer";

const FAMILY: NfFamily = NfFamily::INet;

/// The transaction that replaces the pod's table with `rules`' (or removes it when `rules`
/// isolate nothing), traffic with the `node`'s addresses always allowed: one `nft` batch, so the kernel applies all of it or none.
pub fn replace(rules: &PodRules, node: &[IpAddr]) -> Nftables<'static> {
    let mut batch = Batch::new();
    // Adding first makes the delete succeed whether or not the table exists.
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    if !rules.is_empty() {
        batch.add(NfListObject::Table(table()));
        for object in objects(rules, node) {
            batch.add(object);
        }
    }
    batch.to_nftables()
}

/// The transaction that gives a sandbox with no table of ours its first one: `create`
/// (which the kernel refuses when the table exists, so nothing is ever added to a table it
/// did not build) and no delete. A transaction that deletes anything waits for the kernel's
/// grace period (about 12 ms here), one that only adds does not: a new pod's first table
/// loads about three times faster than a replacement ([`replace`]).
pub fn create(rules: &PodRules, node: &[IpAddr]) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add_cmd(NfCmd::Create(NfListObject::Table(table())));
    for object in objects(rules, node) {
        batch.add(object);
    }
    batch.to_nftables()
}

/// The transaction that removes the pod's table, whether or not it exists.
pub fn remove() -> Nftables<'static> {
    replace(&PodRules::default(), &[])
}

/// How many rules the table of `rules` holds (0 when it has none).
pub fn rule_count(rules: &PodRules) -> usize {
    if rules.is_empty() {
        return 0;
    }
    objects(rules, &[])
        .iter()
        .filter(|o| matches!(o, NfListObject::Rule(_)))
        .count()
}

fn table() -> Table<'static> {
    Table {
        family: FAMILY,
        name: TABLE.into(),
        handle: None,
    }
}

/// Which way a chain looks at packets.
#[derive(Clone, Copy)]
enum Direction {
    In,
    Out,
}

impl Direction {
    fn prefix(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
    /// The interface a packet has in this direction.
    fn ifname(self) -> MetaKey {
        match self {
            Direction::In => MetaKey::Iifname,
            Direction::Out => MetaKey::Oifname,
        }
    }
    /// The remote address's field in this direction.
    fn remote(self) -> &'static str {
        match self {
            Direction::In => "saddr",
            Direction::Out => "daddr",
        }
    }
}

/// Every set, chain and rule of the table, in the order `nft` needs them (sets and
/// chains before the rules that use them).
fn objects(rules: &PodRules, node: &[IpAddr]) -> Vec<NfListObject<'static>> {
    let mut sets = Vec::new();
    let mut chains = Vec::new();
    let mut rule_list = Vec::new();
    for (hook, name) in [
        (NfHook::Input, "input"),
        (NfHook::Output, "output"),
        (NfHook::Forward, "forward"),
    ] {
        chains.push(base_chain(name, hook));
    }
    for (chain, direction) in [("input", Direction::In), ("output", Direction::Out)] {
        rule_list.push(rule(
            chain,
            vec![is(meta(direction.ifname()), "lo"), accept()],
        ));
        rule_list.push(rule(chain, vec![established(), accept()]));
        rule_list.push(rule(chain, vec![neighbour_discovery(), accept()]));
        // Traffic with the pod's own node is always allowed, as Kubernetes requires
        // (kubelet's probes).
        for (protocol, addresses) in node_sets(node) {
            rule_list.push(rule(
                chain,
                vec![
                    Statement::Match(Match {
                        left: payload(protocol, direction.remote()),
                        right: Expression::Named(NamedExpression::Set(addresses)),
                        op: Operator::EQ,
                    }),
                    accept(),
                ],
            ));
        }
    }
    rule_list.push(rule("forward", vec![established(), accept()]));
    for (direction, isolated, base) in [
        (Direction::In, &rules.ingress, "input"),
        (Direction::Out, &rules.egress, "output"),
    ] {
        for (k, interface) in isolated.iter().enumerate() {
            let chain = format!("{}_{k}", direction.prefix());
            // A forwarded packet crosses two interfaces: it must pass the ingress chain of
            // the one it came in on and the egress chain of the one it leaves by, so the
            // forward variants `return` what they allow instead of accepting it.
            let forward = format!("f{chain}");
            for (base, target) in [(base, &chain), ("forward", &forward)] {
                chains.push(regular_chain(target));
                rule_list.push(rule(
                    base,
                    vec![
                        is(meta(direction.ifname()), &interface.ifname),
                        Statement::Jump(JumpTarget {
                            target: target.clone().into(),
                        }),
                    ],
                ));
            }
            chain_rules(
                direction,
                &chain,
                &chain,
                interface,
                accept(),
                Some(&mut sets),
                &mut rule_list,
            );
            chain_rules(
                direction,
                &forward,
                &chain,
                interface,
                Statement::Return(None),
                None,
                &mut rule_list,
            );
        }
    }
    sets.into_iter().chain(chains).chain(rule_list).collect()
}

/// The node's addresses as anonymous sets, per payload protocol.
fn node_sets(node: &[IpAddr]) -> Vec<(&'static str, Vec<SetItem<'static>>)> {
    let mut out = Vec::new();
    for (protocol, v4) in [("ip", true), ("ip6", false)] {
        let items: Vec<SetItem<'static>> = node
            .iter()
            .filter(|a| a.is_ipv4() == v4)
            .map(|a| SetItem::Element(Expression::String(a.to_string().into())))
            .collect();
        if !items.is_empty() {
            out.push((protocol, items));
        }
    }
    out
}

/// The rules of one isolated interface's chain, ending each allowance with `verdict`, and
/// (when `sets` is given) the sets they look up, named after `set_prefix`.
fn chain_rules(
    direction: Direction,
    chain: &str,
    set_prefix: &str,
    interface: &Isolated,
    verdict: Statement<'static>,
    mut sets: Option<&mut Vec<NfListObject<'static>>>,
    rules: &mut Vec<NfListObject<'static>>,
) {
    if let Direction::Out = direction {
        // DNS out is always allowed (as DANM's Policer did).
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            rules.push(rule(
                chain,
                vec![
                    is(meta(MetaKey::L4proto), l4proto(protocol)),
                    Statement::Match(Match {
                        left: payload("th", "dport"),
                        right: Expression::Number(53),
                        op: Operator::EQ,
                    }),
                    verdict.clone(),
                ],
            ));
        }
    }
    for (j, allowance) in interface.allow.iter().enumerate() {
        let remotes: Vec<Option<Statement<'static>>> = match &allowance.peers {
            Peers::Any => vec![None],
            Peers::Only(addresses) => family_sets(set_prefix, j, addresses)
                .into_iter()
                .map(|(protocol, set)| {
                    let name = set_name(&set);
                    if let Some(sets) = sets.as_deref_mut() {
                        sets.push(NfListObject::Set(Box::new(set)));
                    }
                    Some(Statement::Match(Match {
                        left: payload(protocol, direction.remote()),
                        right: Expression::String(format!("@{name}").into()),
                        op: Operator::EQ,
                    }))
                })
                .collect(),
        };
        let port_matches: Vec<Vec<Statement<'static>>> = match &allowance.ports {
            Ports::Any => vec![Vec::new()],
            Ports::Only(ports) => by_protocol(ports)
                .into_iter()
                .map(|(protocol, ranges)| port_match(protocol, &ranges))
                .collect(),
        };
        for remote in &remotes {
            for ports in &port_matches {
                let mut statements: Vec<Statement<'static>> = remote.iter().cloned().collect();
                statements.extend(ports.iter().cloned());
                statements.push(verdict.clone());
                rules.push(rule(chain, statements));
            }
        }
    }
    rules.push(rule(
        chain,
        vec![
            is(meta(MetaKey::L4proto), "tcp"),
            Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None))),
        ],
    ));
    rules.push(rule(
        chain,
        vec![Statement::Reject(Some(Reject::new(
            Some(RejectType::ICMPX),
            Some(RejectCode::PortUnreach),
        )))],
    ));
}

fn set_name(set: &Set<'_>) -> String {
    set.name.to_string()
}

/// The named sets of one allowance, one per family that has addresses, with the payload
/// protocol (`ip`, `ip6`) their rule matches.
fn family_sets(chain: &str, j: usize, addresses: &AddressSet) -> Vec<(&'static str, Set<'static>)> {
    let mut out = Vec::new();
    if !addresses.v4.ranges().is_empty() {
        out.push((
            "ip",
            interval_set(
                format!("{chain}_{j}_4"),
                SetType::Ipv4Addr,
                elements(&addresses.v4, |v| Ipv4Addr::from(v as u32).to_string()),
            ),
        ));
    }
    if !addresses.v6.ranges().is_empty() {
        out.push((
            "ip6",
            interval_set(
                format!("{chain}_{j}_6"),
                SetType::Ipv6Addr,
                elements(&addresses.v6, |v| Ipv6Addr::from(v).to_string()),
            ),
        ));
    }
    out
}

fn elements(ranges: &Ranges, show: impl Fn(u128) -> String) -> Vec<Expression<'static>> {
    ranges
        .ranges()
        .iter()
        .map(|&(first, last)| {
            if first == last {
                Expression::String(show(first).into())
            } else {
                Expression::Range(Box::new(nftables::expr::Range {
                    range: [
                        Expression::String(show(first).into()),
                        Expression::String(show(last).into()),
                    ],
                }))
            }
        })
        .collect()
}

fn interval_set(name: String, kind: SetType, elements: Vec<Expression<'static>>) -> Set<'static> {
    Set {
        family: FAMILY,
        table: TABLE.into(),
        name: name.into(),
        handle: None,
        set_type: SetTypeValue::Single(kind),
        policy: None,
        flags: Some(HashSet::from([SetFlag::Interval])),
        elem: Some(Cow::Owned(elements)),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }
}

fn by_protocol(ports: &[(Protocol, u16, u16)]) -> BTreeMap<Protocol, Vec<(u16, u16)>> {
    let mut out: BTreeMap<Protocol, Vec<(u16, u16)>> = BTreeMap::new();
    for &(protocol, first, last) in ports {
        out.entry(protocol).or_default().push((first, last));
    }
    out
}

/// `meta l4proto <p> th dport { ports }` (every port of `p` when a range is 0-65535).
fn port_match(protocol: Protocol, ranges: &[(u16, u16)]) -> Vec<Statement<'static>> {
    let mut statements = vec![is(meta(MetaKey::L4proto), l4proto(protocol))];
    if ranges
        .iter()
        .any(|&(first, last)| first == 0 && last == u16::MAX)
    {
        return statements;
    }
    let items = ranges
        .iter()
        .map(|&(first, last)| {
            SetItem::Element(if first == last {
                Expression::Number(u32::from(first))
            } else {
                Expression::Range(Box::new(nftables::expr::Range {
                    range: [
                        Expression::Number(u32::from(first)),
                        Expression::Number(u32::from(last)),
                    ],
                }))
            })
        })
        .collect();
    statements.push(Statement::Match(Match {
        left: payload("th", "dport"),
        right: Expression::Named(NamedExpression::Set(items)),
        op: Operator::EQ,
    }));
    statements
}

fn l4proto(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn base_chain(name: &'static str, hook: NfHook) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: FAMILY,
        table: TABLE.into(),
        name: name.into(),
        _type: Some(NfChainType::Filter),
        hook: Some(hook),
        prio: Some(0),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

fn regular_chain(name: &str) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: FAMILY,
        table: TABLE.into(),
        name: name.to_owned().into(),
        ..Chain::default()
    })
}

fn rule(chain: &str, statements: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: FAMILY,
        table: TABLE.into(),
        chain: chain.to_owned().into(),
        expr: Cow::Owned(statements),
        ..Rule::default()
    })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn is(left: Expression<'static>, value: &str) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right: Expression::String(value.to_owned().into()),
        op: Operator::EQ,
    })
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

/// `ct state established,related`.
fn established() -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::CT(CT {
            key: "state".into(),
            family: None,
            dir: None,
        })),
        right: Expression::List(vec![
            Expression::String("established".into()),
            Expression::String("related".into()),
        ]),
        op: Operator::IN,
    })
}

/// ICMPv6 neighbour and router discovery, without which IPv6 stops working on the link.
fn neighbour_discovery() -> Statement<'static> {
    let types = [
        "nd-neighbor-solicit",
        "nd-neighbor-advert",
        "nd-router-solicit",
        "nd-router-advert",
    ];
    Statement::Match(Match {
        left: payload("icmpv6", "type"),
        right: Expression::Named(NamedExpression::Set(
            types
                .iter()
                .map(|t| SetItem::Element(Expression::String((*t).into())))
                .collect(),
        )),
        op: Operator::EQ,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use danm_core::netpol::Allowance;

    fn json(rules: &PodRules) -> serde_json::Value {
        serde_json::to_value(replace(rules, &[])).unwrap()
    }

    /// The commands of a batch (`add`, `delete`, `create`), in order.
    fn commands(batch: &serde_json::Value) -> Vec<String> {
        batch["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_object().unwrap().keys().next().unwrap().clone())
            .collect()
    }

    #[test]
    fn a_pod_with_nothing_isolated_has_its_table_removed_only() {
        assert_eq!(commands(&json(&PodRules::default())), ["add", "delete"]);
    }

    #[test]
    fn a_first_table_is_created_and_nothing_is_deleted() {
        let rules = PodRules {
            ingress: vec![Isolated {
                ifname: "eth0".into(),
                allow: Vec::new(),
            }],
            egress: Vec::new(),
        };
        let batch = serde_json::to_value(create(&rules, &[])).unwrap();
        let commands = commands(&batch);
        assert_eq!(commands[0], "create");
        assert!(commands[1..].iter().all(|c| c == "add"), "{commands:?}");
        assert_eq!(
            batch["nftables"][0]["create"]["table"]["name"], TABLE,
            "{batch}"
        );
    }

    /// An interface name is a value matched against, never a name in the table: a hostile
    /// one cannot add a rule, a chain or a set.
    #[test]
    fn interface_names_are_values_never_names() {
        let hostile = "x\"; flush ruleset";
        let rules = PodRules {
            ingress: vec![Isolated {
                ifname: hostile.into(),
                allow: vec![Allowance {
                    peers: Peers::Only({
                        let mut set = AddressSet::default();
                        set.insert("10.0.0.1".parse().unwrap());
                        set
                    }),
                    ports: Ports::Any,
                }],
            }],
            egress: Vec::new(),
        };
        let batch = json(&rules);
        let mut names = Vec::new();
        for command in batch["nftables"].as_array().unwrap() {
            let (_, object) = command.as_object().unwrap().iter().next().unwrap();
            let (kind, body) = object.as_object().unwrap().iter().next().unwrap();
            if kind != "rule" {
                names.push(body["name"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(
            names,
            [
                TABLE, TABLE, TABLE, "in_0_0_4", "input", "output", "forward", "in_0", "fin_0"
            ]
        );
        let text = batch.to_string();
        assert_eq!(
            text.matches(&serde_json::to_string(hostile).unwrap())
                .count(),
            2,
            "only as the iifname matched by input and forward: {text}"
        );
    }
}
