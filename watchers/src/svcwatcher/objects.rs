//! The objects svcwatcher writes, built from [`danm_core::services`]' decisions:
//! EndpointSlices (`discovery.k8s.io/v1`) and, as DANM wrote them, Endpoints.

use std::collections::BTreeMap;

use danm_core::Family;
use danm_core::services::{Endpoint, ResolvedPort, SliceSpec, StoredSlice};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use kube::Resource;
use kube::api::ObjectMeta;

/// The `endpointslice.kubernetes.io/managed-by` value of our slices.
pub const MANAGED_BY: &str = "svcwatcher.danm.io";
/// The label naming a slice's Service.
pub const SERVICE_LABEL: &str = "kubernetes.io/service-name";
/// The label naming a slice's controller.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Keeps Kubernetes' EndpointSlice mirroring controller from copying our Endpoints into
/// slices of its own (it mirrors the Endpoints of selectorless Services).
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";

fn meta(service: &Service, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: service.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: service.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

fn target(service: &Service, e: &Endpoint) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: service.metadata.namespace.clone(),
        name: Some(e.pod.clone()),
        uid: Some(e.uid.clone()),
        ..Default::default()
    }
}

fn some_node(node: &str) -> Option<String> {
    (!node.is_empty()).then(|| node.to_owned())
}

/// The EndpointSlice of one [`SliceSpec`] of `service`.
pub fn slice(service: &Service, spec: &SliceSpec) -> EndpointSlice {
    let name = service.metadata.name.clone().unwrap_or_default();
    EndpointSlice {
        metadata: meta(
            service,
            &spec.name,
            BTreeMap::from([
                (SERVICE_LABEL.to_owned(), name),
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            ]),
        ),
        address_type: match spec.family {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
        .into(),
        endpoints: spec
            .endpoints
            .iter()
            .map(|e| SliceEndpoint {
                addresses: vec![e.address.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(e.ready),
                    serving: Some(e.serving),
                    terminating: Some(e.terminating),
                }),
                node_name: some_node(&e.node),
                target_ref: Some(target(service, e)),
                ..Default::default()
            })
            .collect(),
        ports: Some(
            spec.ports
                .iter()
                .map(|p| EndpointPort {
                    name: Some(p.name.clone()),
                    protocol: Some(p.protocol.clone()),
                    port: Some(p.port),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

/// What [`danm_core::services::slices`] needs of a stored slice.
pub fn stored(s: &EndpointSlice) -> Option<StoredSlice> {
    Some(StoredSlice {
        name: s.metadata.name.clone()?,
        family: match s.address_type.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            _ => return None,
        },
        ports: s
            .ports
            .iter()
            .flatten()
            .map(|p| ResolvedPort {
                name: p.name.clone().unwrap_or_default(),
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port: p.port.unwrap_or(0),
            })
            .collect(),
        addresses: s
            .endpoints
            .iter()
            .filter_map(|e| e.addresses.first()?.parse().ok())
            .collect(),
    })
}

/// Whether an existing slice already says what `want` says.
pub fn same_slice(have: &EndpointSlice, want: &EndpointSlice) -> bool {
    let labels = |s: &EndpointSlice| {
        s.metadata.labels.as_ref().map(|l| {
            (
                l.get(SERVICE_LABEL).cloned(),
                l.get(MANAGED_BY_LABEL).cloned(),
            )
        })
    };
    have.address_type == want.address_type
        && have.endpoints == want.endpoints
        && have.ports == want.ports
        && labels(have) == labels(want)
}

/// The Endpoints object of `service` (DANM's output): one subset per port set, ready and
/// not-ready addresses apart.
pub fn endpoints(service: &Service, slices: &[SliceSpec]) -> Endpoints {
    let name = service.metadata.name.clone().unwrap_or_default();
    let mut subsets: BTreeMap<Vec<(String, String, i32)>, EndpointSubset> = BTreeMap::new();
    for s in slices {
        let key: Vec<_> = s
            .ports
            .iter()
            .map(|p| (p.name.clone(), p.protocol.clone(), p.port))
            .collect();
        let subset = subsets.entry(key).or_insert_with(|| EndpointSubset {
            ports: Some(
                s.ports
                    .iter()
                    .map(|p| CorePort {
                        name: Some(p.name.clone()),
                        protocol: Some(p.protocol.clone()),
                        port: p.port,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        for e in &s.endpoints {
            let address = EndpointAddress {
                ip: e.address.to_string(),
                node_name: some_node(&e.node),
                target_ref: Some(target(service, e)),
                ..Default::default()
            };
            let list = if e.ready {
                subset.addresses.get_or_insert_with(Vec::new)
            } else {
                subset.not_ready_addresses.get_or_insert_with(Vec::new)
            };
            list.push(address);
        }
    }
    Endpoints {
        metadata: meta(
            service,
            &name,
            BTreeMap::from([
                (SKIP_MIRROR_LABEL.to_owned(), "true".to_owned()),
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            ]),
        ),
        subsets: (!subsets.is_empty()).then(|| subsets.into_values().collect()),
    }
}
