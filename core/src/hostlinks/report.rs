//! What one node's netwatcher reports of its links ([`report`]), and one network's links
//! summed over every node's report ([`summary`]), for the network's `status.links`.

use std::collections::{BTreeMap, BTreeSet};

use danm_crds::{LinkFailure, LinkSummary, NodeLinkReportSpec};

use super::{Action, LinkOwner, WantedLink};
use crate::NetworkKey;

/// The longest reason a report or an Event carries, in bytes (the NodeLinkReport schema's
/// limit): a reason quoting what a NetworkAttachmentDefinition's owner wrote is cut there.
pub const MAX_REASON: usize = 1024;

/// `reason`, cut to at most [`MAX_REASON`] bytes (at a character boundary, with `...`).
pub fn bounded(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON - 3;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str("...");
    }
    reason
}

/// The link a failed action was about (None for a host device brought up: it serves every
/// link on it, and its failure shows as theirs at the next sync).
pub fn action_link(action: &Action) -> Option<&str> {
    match action {
        Action::Create { name, .. } | Action::Delete { name, .. } | Action::Up(name) => Some(name),
        Action::DeviceUp(_) => None,
    }
}

/// The report of a node after a sync: every network that wants a link here is ready unless
/// it has a problem (`problems`: network and `reason: text`, the first one kept) or the
/// link it uses is among `failed_links` (an action on it failed with the given text).
pub fn report<'a>(
    wanted: &BTreeMap<String, WantedLink>,
    problems: impl IntoIterator<Item = (&'a LinkOwner, String)>,
    failed_links: &BTreeMap<String, String>,
) -> NodeLinkReportSpec {
    let mut failing: BTreeMap<String, String> = BTreeMap::new();
    for (key, reason) in problems {
        failing
            .entry(key.to_string())
            .or_insert_with(|| bounded(reason));
    }
    let mut ready = BTreeSet::new();
    for link in wanted.values() {
        for key in &link.networks {
            match failed_links.get(&link.name) {
                Some(error) => {
                    failing.entry(key.to_string()).or_insert_with(|| {
                        bounded(format!("NetlinkFailed: {}: {error}", link.name))
                    });
                }
                None => {
                    ready.insert(key.to_string());
                }
            }
        }
    }
    let ready: Vec<String> = ready
        .into_iter()
        .filter(|k| !failing.contains_key(k))
        .collect();
    let failing: Vec<LinkFailure> = failing
        .into_iter()
        .map(|(network, reason)| LinkFailure { network, reason })
        .collect();
    NodeLinkReportSpec {
        ready_count: ready.len() as u32,
        failing_count: failing.len() as u32,
        ready,
        failing,
    }
}

/// `key`'s links over the nodes' reports (node name, report); None when no node reports it.
pub fn summary<'a>(
    key: &NetworkKey,
    reports: impl IntoIterator<Item = (&'a str, &'a NodeLinkReportSpec)>,
) -> Option<LinkSummary> {
    let name = key.to_string();
    let mut out = LinkSummary::default();
    let mut first: Option<(&str, &str)> = None;
    for (node, report) in reports {
        if report.ready.contains(&name) {
            out.nodes_ready += 1;
        } else if let Some(f) = report.failing.iter().find(|f| f.network == name) {
            out.nodes_failing += 1;
            if first.is_none_or(|(n, _)| node < n) {
                first = Some((node, &f.reason));
            }
        }
    }
    if let Some((node, reason)) = first {
        out.first_failure = format!("{node}: {reason}");
    }
    (out.nodes_ready + out.nodes_failing > 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetworkKind;
    use crate::hostlinks::LinkSpec;

    #[test]
    fn a_reason_is_cut_to_the_schemas_limit() {
        assert_eq!(bounded("short".into()), "short");
        let long = bounded(format!("BadAttachmentConfig: {}", "é".repeat(2000)));
        assert!(
            long.len() <= MAX_REASON && long.ends_with("..."),
            "{}",
            long.len()
        );
    }

    fn key(name: &str) -> LinkOwner {
        NetworkKey::new(NetworkKind::DanmNet, "telco", name).into()
    }

    fn wanted(links: &[(&str, &[&str])]) -> BTreeMap<String, WantedLink> {
        links
            .iter()
            .map(|(name, nets)| {
                (
                    (*name).to_owned(),
                    WantedLink {
                        name: (*name).to_owned(),
                        spec: LinkSpec::Vlan {
                            parent: "ens9".into(),
                            id: 7,
                        },
                        networks: nets.iter().map(|n| key(n)).collect(),
                        rivals: Vec::new(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_node_reports_each_network_once_ready_or_failing_with_its_first_reason() {
        let links = wanted(&[("vx_a", &["a", "a2"]), ("vx_b", &["b"]), ("vx_c", &["c"])]);
        let missing = key("d");
        let conflicted = key("b");
        let failed: BTreeMap<String, String> =
            [("vx_c".to_owned(), "operation not permitted".to_owned())].into();
        let spec = report(
            &links,
            [
                (&missing, "HostDeviceMissing: no device ens9".to_owned()),
                (
                    &conflicted,
                    "LinkNameConflict: vx_b is another's".to_owned(),
                ),
                (&conflicted, "a second reason".to_owned()),
            ],
            &failed,
        );
        assert_eq!(spec.ready, ["DanmNet telco/a", "DanmNet telco/a2"]);
        let failing: Vec<(&str, &str)> = spec
            .failing
            .iter()
            .map(|f| (f.network.as_str(), f.reason.as_str()))
            .collect();
        assert_eq!(
            failing,
            [
                ("DanmNet telco/b", "LinkNameConflict: vx_b is another's"),
                (
                    "DanmNet telco/c",
                    "NetlinkFailed: vx_c: operation not permitted"
                ),
                ("DanmNet telco/d", "HostDeviceMissing: no device ens9"),
            ]
        );
        assert_eq!((spec.ready_count, spec.failing_count), (2, 3));
    }

    #[test]
    fn a_network_sums_the_nodes_and_names_the_first_failing_node() {
        let ok = NodeLinkReportSpec {
            ready: vec!["DanmNet telco/a".into()],
            ..NodeLinkReportSpec::default()
        };
        let bad = |reason: &str| NodeLinkReportSpec {
            failing: vec![LinkFailure {
                network: "DanmNet telco/a".into(),
                reason: reason.into(),
            }],
            ..NodeLinkReportSpec::default()
        };
        let (b, c) = (bad("HostDeviceMissing: b"), bad("HostDeviceMissing: c"));
        let reports = [
            ("node-1", &ok),
            ("node-3", &c),
            ("node-2", &b),
            ("node-4", &ok),
        ];
        assert_eq!(
            summary(
                &NetworkKey::new(NetworkKind::DanmNet, "telco", "a"),
                reports
            ),
            Some(LinkSummary {
                nodes_ready: 2,
                nodes_failing: 2,
                first_failure: "node-2: HostDeviceMissing: b".into(),
            })
        );
        // A network no node reports has no summary.
        assert_eq!(
            summary(
                &NetworkKey::new(NetworkKind::DanmNet, "telco", "other"),
                reports
            ),
            None
        );
    }
}
