//! showalloc with no network named: every network's pools in one table, as
//! `calicoctl ipam show` does ([`rows`], [`render_rows`]); and `--ip`: who holds one address,
//! in any network ([`find_ip`]). Both read the API, so they work while ipamd is down; the
//! counts and the `Ready` reason are decided by `danm_core::network::status`, the rules
//! ipamd's status writer uses.

use std::net::IpAddr;

use danm_core::network::status::{self as decide, ShardFacts};
use danm_core::{NetworkKey, NetworkKind};
use danm_crds::NetworkStatus;
use danm_proto::v1 as pb;
use serde_json::{Value, json};

use super::ShowallocError;
use crate::store::kube::{list_networks, list_shards};

/// One network of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// The network.
    pub key: NetworkKey,
    /// Its spec.
    pub spec: danm_crds::NetworkSpec,
    /// What its status is, counted from its shards now.
    pub status: NetworkStatus,
}

fn api(e: impl std::fmt::Display) -> ShowallocError {
    ShowallocError::Api(e.to_string())
}

/// Every network of `namespace` (all namespaces: None) and every ClusterNetwork, in key
/// order, with its pools counted from its shards.
pub async fn rows(
    client: &kube::Client,
    namespace: Option<&str>,
) -> Result<Vec<Row>, ShowallocError> {
    let mut out = Vec::new();
    for kind in NetworkKind::ALL {
        for net in list_networks(client, kind, namespace).await.map_err(api)? {
            let shards = list_shards(client, &net.key).await.map_err(api)?;
            let facts: Vec<ShardFacts> = shards.iter().map(|s| ShardFacts::of(&s.spec)).collect();
            let tally = decide::tally(&net.spec, &net.key, &net.uid, &facts);
            let status = decide::desired(&net.key, &net.spec, None, &tally, None);
            out.push(Row {
                key: net.key,
                spec: net.spec,
                status,
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

fn ready(status: &NetworkStatus) -> (&str, &str) {
    status
        .conditions
        .first()
        .map(|c| (c.status.as_str(), c.reason.as_str()))
        .unwrap_or(("Unknown", ""))
}

/// The table: `wide` adds the CIDRs, the IPv6 pool and the reason.
pub fn render_rows(rows: &[Row], wide: bool) -> String {
    let mut table: Vec<Vec<String>> = vec![
        ["KIND", "NAMESPACE", "NAME", "READY", "USED", "CAPACITY"]
            .map(str::to_owned)
            .to_vec(),
    ];
    if wide {
        table[0].extend(["CIDR", "USED6", "CAPACITY6", "NET6", "REASON"].map(str::to_owned));
    }
    let pool = |p: &Option<danm_crds::PoolStatus>| match p {
        Some(p) => (p.used.to_string(), p.capacity.clone()),
        None => ("-".to_owned(), "-".to_owned()),
    };
    for row in rows {
        let (status, reason) = ready(&row.status);
        let (used, capacity) = pool(&row.status.ipv4);
        let mut line = vec![
            row.key.kind.as_str().to_owned(),
            if row.key.namespace.is_empty() {
                "-".to_owned()
            } else {
                row.key.namespace.clone()
            },
            row.key.name.clone(),
            status.to_owned(),
            used,
            capacity,
        ];
        if wide {
            let (used6, capacity6) = pool(&row.status.ipv6);
            let opts = &row.spec.options;
            line.extend([
                opts.cidr.clone().unwrap_or_else(|| "-".into()),
                used6,
                capacity6,
                opts.net6.clone().unwrap_or_else(|| "-".into()),
                reason.to_owned(),
            ]);
        }
        table.push(line);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|c| table.iter().map(|l| l[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for line in &table {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// The table for scripts.
pub fn rows_json(rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "kind": r.key.kind.as_str(),
                    "namespace": r.key.namespace,
                    "name": r.key.name,
                    "cidr": r.spec.options.cidr,
                    "net6": r.spec.options.net6,
                    "status": r.status,
                })
            })
            .collect(),
    )
}

/// Who holds `address` in the networks of `rows` whose CIDR holds it: one entry per such
/// network (several namespaces may reuse a subnet), with the allocation (None: free) and
/// the reservation's reason if the address is reserved.
pub async fn find_ip(
    client: &kube::Client,
    rows: &[Row],
    address: IpAddr,
) -> Result<Vec<(NetworkKey, Option<pb::Allocation>, Option<String>)>, ShowallocError> {
    let mut found = Vec::new();
    for row in rows {
        let Ok(plan) = danm_core::network::plan(row.key.clone(), &row.spec) else {
            continue;
        };
        let holds = plan
            .family(danm_core::Family::of(&address))
            .is_some_and(|f| f.cidr.contains(address));
        if !holds {
            continue;
        }
        let view = super::api::view(client, &row.key).await?;
        let allocation = view
            .allocations
            .into_iter()
            .find(|a| a.address.parse::<IpAddr>() == Ok(address));
        let family = if address.is_ipv6() {
            view.info.v6
        } else {
            view.info.v4
        };
        let reserved = family.and_then(|f| {
            f.reserved
                .into_iter()
                .find(|r| r.address.parse::<IpAddr>() == Ok(address))
                .map(|r| r.reason)
        });
        found.push((row.key.clone(), allocation, reserved));
    }
    Ok(found)
}

/// `--ip`'s answer, one line per network whose CIDR holds the address.
pub fn render_found(
    address: IpAddr,
    found: &[(NetworkKey, Option<pb::Allocation>, Option<String>)],
) -> String {
    let mut out = String::new();
    for (key, allocation, reserved) in found {
        let what = match (allocation, reserved) {
            (Some(a), _) => match &a.owner {
                Some(o) => format!(
                    "allocated (Pod: {}/{}, CID: {}, if: {}, host: {})",
                    o.pod_namespace,
                    o.pod_name,
                    &o.container_id[..o.container_id.len().min(12)],
                    o.ifname,
                    if o.host.is_empty() { "-" } else { &o.host }
                ),
                None => format!(
                    "allocated (no endpoint record, owner fingerprint {})",
                    a.fingerprint
                ),
            },
            (None, Some(reason)) => format!("reserved ({reason})"),
            (None, None) => "free".to_owned(),
        };
        out.push_str(&format!("{address} : {key} : {what}\n"));
    }
    out
}

/// `--ip`'s answer for scripts.
pub fn found_json(
    address: IpAddr,
    found: &[(NetworkKey, Option<pb::Allocation>, Option<String>)],
) -> Value {
    Value::Array(
        found
            .iter()
            .map(|(key, allocation, reserved)| {
                let mut v = json!({
                    "address": address.to_string(),
                    "kind": key.kind.as_str(),
                    "namespace": key.namespace,
                    "name": key.name,
                    "state": match (allocation, reserved) {
                        (Some(_), _) => "allocated",
                        (None, Some(_)) => "reserved",
                        (None, None) => "free",
                    },
                });
                if let Some(a) = allocation {
                    v["owner"] = super::owner_json(a);
                }
                if let Some(r) = reserved {
                    v["reason"] = json!(r);
                }
                v
            })
            .collect(),
    )
}
