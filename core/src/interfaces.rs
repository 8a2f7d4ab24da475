//! The `danm.io/interfaces` pod annotation and DANM's interface naming.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::addr::{Cidr, Family};
use crate::network::{NetworkKey, NetworkKind};
use crate::policy::{AddressRequest, AllocError};

/// One entry of the annotation, as written by users.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceEntry {
    /// A DanmNet of the pod's namespace.
    #[serde(default)]
    pub network: Option<String>,
    /// A TenantNetwork of the pod's namespace.
    #[serde(rename = "tenantNetwork", default)]
    pub tenant_network: Option<String>,
    /// A ClusterNetwork.
    #[serde(rename = "clusterNetwork", default)]
    pub cluster_network: Option<String>,
    /// IPv4 request: `dynamic`, `none`, or an address.
    #[serde(default)]
    pub ip: Option<String>,
    /// IPv6 request: `dynamic`, `none`, or an address.
    #[serde(default)]
    pub ip6: Option<String>,
    /// IPv4 policy-based routes (`destination: gateway`).
    #[serde(default)]
    pub proutes: Option<BTreeMap<String, String>>,
    /// IPv6 policy-based routes.
    #[serde(default)]
    pub proutes6: Option<BTreeMap<String, String>>,
}

/// One resolved connection of a pod to a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Position in the annotation (DANM's sequence id): 0 is the pod's `eth0`.
    pub sequence: usize,
    /// The network.
    pub network: NetworkKey,
    /// IPv4 request.
    pub ip: AddressRequest,
    /// IPv6 request.
    pub ip6: AddressRequest,
    /// IPv4 policy-based routes.
    pub proutes: BTreeMap<String, String>,
    /// IPv6 policy-based routes.
    pub proutes6: BTreeMap<String, String>,
}

/// Why an annotation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterfacesError {
    /// Not a JSON list of interface objects (or it has unknown fields).
    #[error("annotation danm.io/interfaces is not valid: {0}")]
    BadJson(String),
    /// An entry names zero or several networks.
    #[error(
        "annotation danm.io/interfaces: connection no. {index} names {count} networks; exactly one of network, tenantNetwork or clusterNetwork is required"
    )]
    NetworkCount {
        /// Index of the entry.
        index: usize,
        /// How many networks it names.
        count: usize,
    },
    /// An address request is malformed.
    #[error("annotation danm.io/interfaces: {0}")]
    BadAddress(#[source] AllocError),
    /// A network name is malformed.
    #[error("annotation danm.io/interfaces: interfaces[{index}].{field}: {source}")]
    BadName {
        /// Index of the entry.
        index: usize,
        /// `network`, `tenantNetwork` or `clusterNetwork`.
        field: &'static str,
        /// Why.
        #[source]
        source: crate::input::InputError,
    },
    /// A policy-based route is malformed.
    #[error(
        "annotation danm.io/interfaces: interfaces[{index}].{field}: route {destination:?} via {gateway:?}: {reason}"
    )]
    BadRoute {
        /// Index of the entry.
        index: usize,
        /// `proutes` or `proutes6`.
        field: &'static str,
        /// The destination as written.
        destination: String,
        /// The gateway as written.
        gateway: String,
        /// What is wrong.
        reason: String,
    },
}

/// Parses the annotation of a pod in `namespace` into its connections. An absent or empty
/// list yields no connection (the caller then falls back to the default network).
pub fn parse_annotation(json: &str, namespace: &str) -> Result<Vec<Connection>, InterfacesError> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<InterfaceEntry> =
        serde_json::from_str(json).map_err(|e| InterfacesError::BadJson(e.to_string()))?;
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| connection(index, entry, namespace))
        .collect()
}

fn connection(
    index: usize,
    entry: InterfaceEntry,
    namespace: &str,
) -> Result<Connection, InterfacesError> {
    let named: Vec<(NetworkKind, &'static str, String)> = [
        (NetworkKind::DanmNet, "network", entry.network),
        (
            NetworkKind::TenantNetwork,
            "tenantNetwork",
            entry.tenant_network,
        ),
        (
            NetworkKind::ClusterNetwork,
            "clusterNetwork",
            entry.cluster_network,
        ),
    ]
    .into_iter()
    .filter_map(|(kind, field, name)| name.filter(|n| !n.is_empty()).map(|n| (kind, field, n)))
    .collect();
    let [(kind, field, name)] = named.as_slice() else {
        return Err(InterfacesError::NetworkCount {
            index,
            count: named.len(),
        });
    };
    crate::input::exact(name).map_err(|source| InterfacesError::BadName {
        index,
        field,
        source,
    })?;
    let ip = AddressRequest::parse(
        &format!("interfaces[{index}].ip"),
        entry.ip.as_deref().unwrap_or(""),
        Family::V4,
    )
    .map_err(InterfacesError::BadAddress)?;
    let ip6 = AddressRequest::parse(
        &format!("interfaces[{index}].ip6"),
        entry.ip6.as_deref().unwrap_or(""),
        Family::V6,
    )
    .map_err(InterfacesError::BadAddress)?;
    let proutes = routes(
        index,
        "proutes",
        Family::V4,
        entry.proutes.unwrap_or_default(),
    )?;
    let proutes6 = routes(
        index,
        "proutes6",
        Family::V6,
        entry.proutes6.unwrap_or_default(),
    )?;
    Ok(Connection {
        sequence: index,
        network: NetworkKey::new(*kind, namespace, name),
        ip,
        ip6,
        proutes,
        proutes6,
    })
}

/// Checks policy-based routes: each a destination CIDR and a gateway address, of `family`.
fn routes(
    index: usize,
    field: &'static str,
    family: Family,
    routes: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, InterfacesError> {
    for (destination, gateway) in &routes {
        let bad = |reason: String| InterfacesError::BadRoute {
            index,
            field,
            destination: destination.clone(),
            gateway: gateway.clone(),
            reason,
        };
        for text in [destination, gateway] {
            crate::input::exact(text).map_err(|e| bad(e.to_string()))?;
        }
        let cidr: Cidr = destination
            .parse()
            .map_err(|e: crate::addr::AddrError| bad(format!("the destination: {e}")))?;
        let via: std::net::IpAddr = gateway
            .parse()
            .map_err(|_| bad("the gateway is not an IP address".into()))?;
        if cidr.family() != family || Family::of(&via) != family {
            return Err(bad(format!("{field} takes {family} routes only")));
        }
    }
    Ok(routes)
}

/// How interfaces are named (CNI config `namingScheme`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NamingScheme {
    /// `container_prefix` (default `eth`) plus the sequence number.
    #[default]
    Sequential,
    /// `container_prefix` is the exact name.
    Legacy,
}

impl NamingScheme {
    /// Parses the `namingScheme` value: `legacy`, anything else is the default.
    pub fn parse(s: &str) -> NamingScheme {
        if s == "legacy" {
            NamingScheme::Legacy
        } else {
            NamingScheme::Sequential
        }
    }
}

/// DANM's interface name: the first interface is always `eth0` (kubelet expects it);
/// others are `container_prefix` + sequence (exactly `container_prefix` with the legacy
/// scheme), or `eth` + sequence when the network sets no prefix.
pub fn interface_name(
    scheme: NamingScheme,
    container_prefix: Option<&str>,
    sequence: usize,
) -> String {
    if sequence == 0 {
        return "eth0".to_owned();
    }
    match container_prefix.filter(|p| !p.is_empty()) {
        Some(prefix) if scheme == NamingScheme::Legacy => prefix.to_owned(),
        Some(prefix) => format!("{prefix}{sequence}"),
        None => format!("eth{sequence}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        let c = parse_annotation(
            r#"[{"tenantNetwork":"management", "ip":"dynamic"},
                {"clusterNetwork":"external", "ip":"dynamic", "ip6":"none"},
                {"network":"internal", "ip":"10.0.0.5/24", "proutes":{"10.10.1.0/24":"10.0.0.65"}}]"#,
            "default",
        )
        .unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(
            c[0].network,
            NetworkKey::new(NetworkKind::TenantNetwork, "default", "management")
        );
        assert_eq!(c[1].network.namespace, "");
        assert_eq!(c[1].ip6, AddressRequest::None);
        assert_eq!(
            c[2].ip,
            AddressRequest::Static {
                ip: "10.0.0.5".parse().unwrap(),
                prefix: Some(24)
            }
        );
        assert_eq!(c[2].proutes.len(), 1);
    }

    #[test]
    fn refuses_two_networks_in_one_entry() {
        let e = parse_annotation(
            r#"[{"tenantNetwork":"management", "clusterNetwork":"external", "ip":"dynamic"}]"#,
            "default",
        )
        .unwrap_err();
        assert_eq!(e, InterfacesError::NetworkCount { index: 0, count: 2 });
        assert!(e.to_string().contains("names 2 networks"));
        let e = parse_annotation(r#"[{"ip":"dynamic"}]"#, "default").unwrap_err();
        assert_eq!(e, InterfacesError::NetworkCount { index: 0, count: 0 });
    }

    #[test]
    fn refuses_unknown_fields_and_garbage() {
        assert!(matches!(
            parse_annotation(r#"[{"network":"a","ipp":"dynamic"}]"#, "d"),
            Err(InterfacesError::BadJson(_))
        ));
        assert!(matches!(
            parse_annotation("{", "d"),
            Err(InterfacesError::BadJson(_))
        ));
        assert!(parse_annotation("", "d").unwrap().is_empty());
        assert!(matches!(
            parse_annotation(r#"[{"network":"a","ip":"300.1.1.1"}]"#, "d"),
            Err(InterfacesError::BadAddress(_))
        ));
    }

    #[test]
    fn naming_follows_danm() {
        use NamingScheme::*;
        assert_eq!(interface_name(Sequential, Some("int"), 0), "eth0");
        assert_eq!(interface_name(Sequential, Some("int"), 2), "int2");
        assert_eq!(interface_name(Legacy, Some("int"), 2), "int");
        assert_eq!(interface_name(Sequential, None, 1), "eth1");
        assert_eq!(interface_name(Legacy, None, 3), "eth3");
    }
}
