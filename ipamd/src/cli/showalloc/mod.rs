//! showalloc's output, in DANM's format:
//!
//! ```text
//! DANM network Kind: DanmNet
//! IP version: IPv4
//! CIDR: 10.100.100.0/24
//! Pool start: 10.100.100.1
//! Pool end: 10.100.100.254
//! Capacity: 254, allocated: 1, free: 253
//! Shards: 1, largest: 24 bytes
//! --------------------------------------------------------------
//! 10.100.100.0 : reserved (network base address)
//! 10.100.100.1 : allocated (Pod: default/web-0, CID: 3f2a9c1b7d4e, if: eth0)
//! 10.100.100.255 : reserved (broadcast address)
//! ```
//!
//! With `-a` free and out-of-pool addresses are listed too (at most [`MAX_LISTED`] of
//! them: narrow a large network down with `--show-cidr`). [`json`] gives the same for
//! scripts. The first six lines are DANM's; capacity and shards are ours.
//!
//! Where the listing comes from: [`cli`] asks a running ipamd (`--ipamd`) or reads the
//! AllocationShards and DanmEps from the Kubernetes API ([`api`]), which works while ipamd
//! is down. With no network named, [`overview`] shows every network's pools, or with
//! `--ip` who holds one address.

pub mod api;
pub mod cli;
pub mod overview;

use std::collections::BTreeMap;
use std::net::IpAddr;

use danm_core::Cidr;
use danm_core::addr::{AddrError, ip_to_u128};
use danm_proto::v1 as pb;
use serde_json::{Value, json};

/// Why showalloc cannot show a network.
#[derive(Debug, thiserror::Error)]
pub enum ShowallocError {
    /// The flags do not name one network.
    #[error("{0}")]
    Usage(&'static str),
    /// ipamd cannot be reached or refused.
    #[error("ipamd: {0}")]
    Ipamd(String),
    /// No usable Kubernetes configuration.
    #[error(transparent)]
    Kubeconfig(#[from] danm_runtime::RuntimeError),
    /// The API refused a read.
    #[error("Kubernetes API: {0}")]
    Api(String),
    /// The network does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The network's spec is invalid.
    #[error("invalid network {0}")]
    InvalidNetwork(String),
    /// A shard's payload does not match its CRC32 (it is never used; see ipamd's log).
    #[error("corrupt AllocationShard {0}")]
    CorruptShard(String),
    /// The network has no subnet of the family asked for.
    #[error("{0}")]
    NoFamily(String),
    /// The listing cannot be rendered.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// `--ip`: networks hold the address in their CIDR, but none has it allocated (the
    /// text says what each has: free or reserved).
    #[error("{0}")]
    NotAllocated(String),
}

impl ShowallocError {
    /// The exit status: 2 for bad flags, 3 for "not found" (the network, or an address
    /// nobody holds), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ShowallocError::Usage(_) => 2,
            ShowallocError::NotFound(_) | ShowallocError::NotAllocated(_) => 3,
            _ => 1,
        }
    }
}

/// Why a listing cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The network's CIDR as ipamd sent it does not parse.
    #[error("network CIDR {cidr:?}")]
    NetworkCidr {
        /// The text.
        cidr: String,
        /// Why.
        #[source]
        source: AddrError,
    },
    /// `--show-cidr` does not parse.
    #[error("--show-cidr")]
    ShowCidr(#[source] AddrError),
    /// `--show-cidr` is not inside the network.
    #[error("--show-cidr: {sub} is not inside the network's CIDR {cidr}")]
    ShowCidrOutside {
        /// What was asked.
        sub: Cidr,
        /// The network's CIDR.
        cidr: Cidr,
    },
    /// `-a` over a range too large to print.
    #[error(
        "-a would list {count} addresses of {range}: narrow it with --show-cidr (at most {MAX_LISTED} addresses)"
    )]
    TooMany {
        /// Addresses in the range.
        count: u128,
        /// The range.
        range: Cidr,
    },
}

/// Most addresses `-a` lists in one run.
pub const MAX_LISTED: u128 = 1 << 16;

/// Renders one family of one network.
pub fn render(
    kind: &str,
    info: &pb::FamilyInfo,
    v6: bool,
    allocations: &[pb::Allocation],
    show_all: bool,
    sub_cidr: Option<&str>,
    wide: bool,
) -> Result<String, RenderError> {
    let cidr: Cidr = info
        .cidr
        .parse()
        .map_err(|source| RenderError::NetworkCidr {
            cidr: info.cidr.clone(),
            source,
        })?;
    let range = match sub_cidr {
        Some(text) => {
            let sub: Cidr = text.parse().map_err(RenderError::ShowCidr)?;
            if !cidr.contains_cidr(&sub) {
                return Err(RenderError::ShowCidrOutside { sub, cidr });
            }
            sub
        }
        None => cidr,
    };
    let mut out = format!(
        "DANM network Kind: {kind}\nIP version: {}\nCIDR: {}\nPool start: {}\nPool end: {}\nCapacity: {}, allocated: {}, free: {}\nShards: {}, largest: {} bytes\n{}\n",
        if v6 { "IPv6" } else { "IPv4" },
        info.cidr,
        info.pool_start,
        info.pool_end,
        info.capacity,
        info.allocated,
        info.capacity.saturating_sub(info.allocated),
        info.shards,
        info.largest_shard_bytes,
        "-".repeat(62)
    );
    let mut lines: BTreeMap<u128, String> = BTreeMap::new();
    for r in &info.reserved {
        if let Ok(ip) = r.address.parse::<IpAddr>()
            && range.contains(ip)
        {
            lines.insert(ip_to_u128(ip), format!("{ip} : reserved ({})", r.reason));
        }
    }
    for a in allocations {
        let Ok(ip) = a.address.parse::<IpAddr>() else {
            continue;
        };
        if !range.contains(ip) {
            continue;
        }
        let owner = match &a.owner {
            Some(o) if wide => format!(
                "Pod: {}/{}, CID: {}, if: {}, host: {}, netns: {}",
                o.pod_namespace,
                o.pod_name,
                o.container_id,
                o.ifname,
                if o.host.is_empty() { "-" } else { &o.host },
                if o.netns.is_empty() { "-" } else { &o.netns }
            ),
            Some(o) => format!(
                "Pod: {}/{}, CID: {}, if: {}",
                o.pod_namespace,
                o.pod_name,
                &o.container_id[..o.container_id.len().min(12)],
                o.ifname
            ),
            None => format!("no endpoint record, owner fingerprint {}", a.fingerprint),
        };
        lines.insert(ip_to_u128(ip), format!("{ip} : allocated ({owner})"));
    }
    if show_all {
        if range.last_offset() >= MAX_LISTED {
            return Err(RenderError::TooMany {
                count: range.last_offset().saturating_add(1),
                range,
            });
        }
        let pool = match (
            info.pool_start.parse::<IpAddr>(),
            info.pool_end.parse::<IpAddr>(),
        ) {
            (Ok(s), Ok(e)) => Some((ip_to_u128(s), ip_to_u128(e))),
            _ => None,
        };
        for offset in 0..=range.last_offset() {
            let ip = range.addr_at(offset).expect("offset in range");
            let raw = ip_to_u128(ip);
            lines.entry(raw).or_insert_with(|| {
                if pool.is_some_and(|(s, e)| (s..=e).contains(&raw)) {
                    format!("{ip} : free")
                } else {
                    format!("{ip} : out of pool range")
                }
            });
        }
    }
    for line in lines.values() {
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// The owner of an allocation as showalloc prints it: `namespace/pod`.
pub(crate) fn owner_json(a: &pb::Allocation) -> Value {
    match &a.owner {
        Some(o) => json!({
            "pod": format!("{}/{}", o.pod_namespace, o.pod_name),
            "containerID": o.container_id,
            "interface": o.ifname,
            "fingerprint": a.fingerprint,
        }),
        None => json!({ "pod": null, "fingerprint": a.fingerprint }),
    }
}

/// One family of one network as JSON: the summary and every allocation.
pub fn json(
    network: &pb::NetworkRef,
    kind: &str,
    info: &pb::FamilyInfo,
    v6: bool,
    allocations: &[pb::Allocation],
) -> Value {
    let mut listed: Vec<(u128, Value)> = allocations
        .iter()
        .filter_map(|a| {
            let ip = a.address.parse::<IpAddr>().ok()?;
            let mut v = owner_json(a);
            v["address"] = json!(a.address);
            Some((ip_to_u128(ip), v))
        })
        .collect();
    listed.sort_by_key(|(k, _)| *k);
    json!({
        "kind": kind,
        "namespace": network.namespace,
        "name": network.name,
        "ipVersion": if v6 { "IPv6" } else { "IPv4" },
        "cidr": info.cidr,
        "poolStart": info.pool_start,
        "poolEnd": info.pool_end,
        "capacity": info.capacity,
        "allocated": info.allocated,
        "free": info.capacity.saturating_sub(info.allocated),
        "shards": info.shards,
        "largestShardBytes": info.largest_shard_bytes,
        "reserved": info.reserved.iter().map(|r| json!({"address": r.address, "reason": r.reason})).collect::<Vec<_>>(),
        "allocations": listed.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> pb::FamilyInfo {
        pb::FamilyInfo {
            cidr: "10.100.100.0/24".into(),
            pool_start: "10.100.100.1".into(),
            pool_end: "10.100.100.254".into(),
            reserved: vec![
                pb::Reserved {
                    address: "10.100.100.0".into(),
                    reason: "network base address".into(),
                },
                pb::Reserved {
                    address: "10.100.100.255".into(),
                    reason: "broadcast address".into(),
                },
            ],
            allocated: 1,
            capacity: 254,
            shards: 1,
            largest_shard_bytes: 24,
        }
    }

    #[test]
    fn danm_format() {
        let alloc = pb::Allocation {
            network: None,
            address: "10.100.100.1".into(),
            owner: Some(pb::Owner {
                container_id: "0123456789abcdef".into(),
                ifname: "eth0".into(),
                pod_namespace: "kube-system".into(),
                pod_name: "danmtest-1".into(),
                ..Default::default()
            }),
            fingerprint: "00".into(),
        };
        let text = render(
            "DanmNet",
            &info(),
            false,
            std::slice::from_ref(&alloc),
            false,
            None,
            false,
        )
        .unwrap();
        assert_eq!(
            text,
            "DANM network Kind: DanmNet\nIP version: IPv4\nCIDR: 10.100.100.0/24\nPool start: 10.100.100.1\nPool end: 10.100.100.254\nCapacity: 254, allocated: 1, free: 253\nShards: 1, largest: 24 bytes\n--------------------------------------------------------------\n10.100.100.0 : reserved (network base address)\n10.100.100.1 : allocated (Pod: kube-system/danmtest-1, CID: 0123456789ab, if: eth0)\n10.100.100.255 : reserved (broadcast address)\n"
        );
        let all = render(
            "DanmNet",
            &info(),
            false,
            &[],
            true,
            Some("10.100.100.0/30"),
            false,
        )
        .unwrap();
        assert!(all.ends_with("10.100.100.0 : reserved (network base address)\n10.100.100.1 : free\n10.100.100.2 : free\n10.100.100.3 : free\n"), "{all}");
        assert!(
            render(
                "DanmNet",
                &info(),
                false,
                &[],
                true,
                Some("10.0.0.0/8"),
                false
            )
            .is_err()
        );
        // -o wide: the whole container id, the host and the netns.
        let mut placed = alloc;
        if let Some(o) = placed.owner.as_mut() {
            o.host = "node-1".into();
        }
        let wide = render("DanmNet", &info(), false, &[placed], false, None, true).unwrap();
        assert!(
            wide.contains("10.100.100.1 : allocated (Pod: kube-system/danmtest-1, CID: 0123456789abcdef, if: eth0, host: node-1, netns: -)"),
            "{wide}"
        );
    }
}
