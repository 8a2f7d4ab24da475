//! svcwatcher's decisions, as pure functions: which Services are DANM's (their annotations),
//! and which endpoints each should have, grouped as EndpointSlices are.
//!
//! A Service is DANM's when it carries `danm.io/selector` (a JSON object of labels) and one of
//! `danm.io/network`, `danm.io/tenantNetwork`, `danm.io/clusterNetwork` (DANM 4.x's
//! `danm.k8s.io/` prefix is read too). Its endpoints are the addresses of the interfaces that
//! the pods of its namespace matching the selector have on that network (from their DanmEps),
//! with the Service's ports (`targetPort` resolved against each pod's named container ports;
//! DANM used `port`, which is what an omitted `targetPort` means).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::{Family, NetworkKey, NetworkKind};

/// The current annotation prefix and DANM 4.x's.
pub const PREFIXES: [&str; 2] = ["danm.io/", "danm.k8s.io/"];
/// Most endpoints in one EndpointSlice (Kubernetes' own controller's default).
pub const MAX_PER_SLICE: usize = 100;

/// A Service's DANM annotations, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// Labels a pod must carry (all of them).
    pub selector: BTreeMap<String, String>,
    /// The network whose interfaces are published.
    pub network: NetworkKey,
}

/// Why a Service's annotations cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    /// The selector is not a JSON object of strings.
    #[error("annotation {annotation}: {reason}")]
    Selector {
        /// The annotation.
        annotation: String,
        /// Why.
        reason: String,
    },
    /// A selector but no network, or several networks.
    #[error("{0}")]
    Network(String),
}

/// Reads a Service's annotations: `Ok(None)` when it is not DANM's (no `selector`
/// annotation): such a Service is never touched.
pub fn selection(
    namespace: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<Selection>, SelectionError> {
    let get = |key: &str| {
        PREFIXES.iter().find_map(|p| {
            let name = format!("{p}{key}");
            annotations.get(&name).map(|v| (name, v))
        })
    };
    let Some((annotation, text)) = get("selector") else {
        return Ok(None);
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| SelectionError::Selector {
            annotation: annotation.clone(),
            reason: e.to_string(),
        })?;
    let object = value.as_object().ok_or_else(|| SelectionError::Selector {
        annotation: annotation.clone(),
        reason: "must be a JSON object of label names to values".into(),
    })?;
    let mut selector = BTreeMap::new();
    for (k, v) in object {
        let v = v.as_str().ok_or_else(|| SelectionError::Selector {
            annotation: annotation.clone(),
            reason: format!("label {k:?} must have a string value"),
        })?;
        selector.insert(k.clone(), v.to_owned());
    }
    let networks: Vec<(NetworkKind, &String)> = [
        (NetworkKind::DanmNet, "network"),
        (NetworkKind::TenantNetwork, "tenantNetwork"),
        (NetworkKind::ClusterNetwork, "clusterNetwork"),
    ]
    .into_iter()
    .filter_map(|(kind, key)| get(key).map(|(_, v)| (kind, v)))
    .filter(|(_, v)| !v.is_empty())
    .collect();
    match networks.as_slice() {
        [(kind, name)] => Ok(Some(Selection {
            selector,
            network: NetworkKey::new(*kind, namespace, name),
        })),
        [] => Err(SelectionError::Network(format!(
            "{annotation} needs one of danm.io/network, danm.io/tenantNetwork, danm.io/clusterNetwork"
        ))),
        _ => Err(SelectionError::Network(
            "give only one of danm.io/network, danm.io/tenantNetwork, danm.io/clusterNetwork"
                .into(),
        )),
    }
}

/// Whether `labels` carry every label of `selector` (an empty selector selects nothing, as
/// DANM: a Service must say which pods it wants).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A Service port, as the Service declares it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePort {
    /// Name (may be empty for a single port).
    pub name: String,
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// `port`.
    pub port: i32,
    /// `targetPort`: a number, a container port name, or none (then `port`).
    pub target: Target,
}

/// A `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Not given: the Service port.
    Same,
    /// A number.
    Number(i32),
    /// A named container port of the pod.
    Named(String),
}

/// A port resolved for one pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResolvedPort {
    /// Name.
    pub name: String,
    /// Protocol.
    pub protocol: String,
    /// The port the pod listens on.
    pub port: i32,
}

/// What the endpoints need of one selected pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodEndpoint {
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Node.
    pub node: String,
    /// The Ready condition is true.
    pub ready: bool,
    /// Being deleted.
    pub terminating: bool,
    /// Named container ports: (name, protocol, port).
    pub named_ports: Vec<(String, String, i32)>,
    /// The addresses of its interfaces on the Service's network.
    pub addresses: Vec<IpAddr>,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// The address.
    pub address: IpAddr,
    /// Pod name.
    pub pod: String,
    /// Pod UID.
    pub uid: String,
    /// Node.
    pub node: String,
    /// Ready (and not terminating), or published regardless (`publishNotReadyAddresses`).
    pub ready: bool,
    /// Serving: the pod is Ready, terminating or not.
    pub serving: bool,
    /// Terminating.
    pub terminating: bool,
}

/// One EndpointSlice as it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceSpec {
    /// Its name: `<service>-danm-<v4|v6>-<hash of the ports>-<n>`, stable across changes.
    pub name: String,
    /// Its address family.
    pub family: Family,
    /// Its ports.
    pub ports: Vec<ResolvedPort>,
    /// Its endpoints, sorted by address.
    pub endpoints: Vec<Endpoint>,
}

/// The ports of a Service for one pod; `None` when a named `targetPort` is not a port of
/// that pod (the pod is then left out, as Kubernetes' own controller does).
pub fn resolve_ports(ports: &[ServicePort], pod: &PodEndpoint) -> Option<Vec<ResolvedPort>> {
    ports
        .iter()
        .map(|p| {
            let port = match &p.target {
                Target::Same => p.port,
                Target::Number(n) => *n,
                Target::Named(name) => pod
                    .named_ports
                    .iter()
                    .find(|(n, proto, _)| n == name && *proto == p.protocol)
                    .map(|(_, _, port)| *port)?,
            };
            Some(ResolvedPort {
                name: p.name.clone(),
                protocol: p.protocol.clone(),
                port,
            })
        })
        .collect()
}

/// A slice as it is stored: what [`slices`] needs to keep each endpoint where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSlice {
    /// Its name.
    pub name: String,
    /// Its address family.
    pub family: Family,
    /// Its ports.
    pub ports: Vec<ResolvedPort>,
    /// The addresses of its endpoints.
    pub addresses: Vec<IpAddr>,
}

/// The slices a Service should have: one group per address family and resolved ports, in
/// slices of at most [`MAX_PER_SLICE`] endpoints. An endpoint stays in the `stored` slice
/// that holds it; new endpoints fill the group's slices with room, then new slices; a slice
/// left empty is not returned (it is to be deleted). So a pod change rewrites only the slice
/// it is in, as Kubernetes' own EndpointSlice controller does.
pub fn slices(
    service: &str,
    ports: &[ServicePort],
    publish_not_ready: bool,
    pods: &[PodEndpoint],
    stored: &[StoredSlice],
) -> Vec<SliceSpec> {
    let mut groups: BTreeMap<(Family, Vec<ResolvedPort>), Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        let Some(resolved) = resolve_ports(ports, pod) else {
            continue;
        };
        for address in &pod.addresses {
            groups
                .entry((Family::of(address), resolved.clone()))
                .or_default()
                .push(Endpoint {
                    address: *address,
                    pod: pod.name.clone(),
                    uid: pod.uid.clone(),
                    node: pod.node.clone(),
                    ready: publish_not_ready || (pod.ready && !pod.terminating),
                    serving: pod.ready,
                    terminating: pod.terminating,
                });
        }
    }
    let mut out = Vec::new();
    for ((family, ports), mut endpoints) in groups {
        endpoints.sort();
        let canonical: Vec<String> = ports
            .iter()
            .map(|p| format!("{}/{}/{}", p.name, p.protocol, p.port))
            .collect();
        let tag = format!("{:08x}", crc32fast::hash(canonical.join(",").as_bytes()));
        let fam = match family {
            Family::V4 => "v4",
            Family::V6 => "v6",
        };
        let mut placed: Vec<SliceSpec> = stored
            .iter()
            .filter(|s| s.family == family && s.ports == ports)
            .map(|s| SliceSpec {
                name: s.name.clone(),
                family,
                ports: ports.clone(),
                endpoints: Vec::new(),
            })
            .collect();
        placed.sort_by(|a, b| a.name.cmp(&b.name));
        let mut loose = Vec::new();
        for e in endpoints {
            let home = stored.iter().position(|s| {
                s.family == family && s.ports == ports && s.addresses.contains(&e.address)
            });
            let slot = home.and_then(|h| placed.iter().position(|p| p.name == stored[h].name));
            match slot {
                Some(i) if placed[i].endpoints.len() < MAX_PER_SLICE => placed[i].endpoints.push(e),
                _ => loose.push(e),
            }
        }
        for e in loose {
            if let Some(room) = placed
                .iter_mut()
                .find(|p| p.endpoints.len() < MAX_PER_SLICE)
            {
                room.endpoints.push(e);
                continue;
            }
            let n = (0..)
                .map(|n| format!("{service}-danm-{fam}-{tag}-{n}"))
                .find(|name| !placed.iter().any(|p| &p.name == name))
                .expect("a free name");
            placed.push(SliceSpec {
                name: n,
                family,
                ports: ports.clone(),
                endpoints: vec![e],
            });
        }
        for p in &mut placed {
            p.endpoints.sort();
        }
        out.extend(placed.into_iter().filter(|p| !p.endpoints.is_empty()));
    }
    out
}

#[cfg(test)]
mod tests;
