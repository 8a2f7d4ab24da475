//! What the cleaner keeps of each API object: the few fields its decisions need
//! ([`danm_core::leak`]), so that a pass over 100,000 DanmEps holds facts, not objects.

use std::net::IpAddr;

use danm_core::leak::{EndpointFacts, PodFacts};
use danm_core::{NetworkKey, NetworkKind};
use danm_crds::{AllocationShard, DanmEp};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ObjectMeta;

/// The facts of one DanmEp; its network as every component reads it
/// ([`danm_core::endpoint`]: a DanmEp without `apiType` is DANM's, on a DanmNet).
pub fn endpoint(ep: &DanmEp) -> EndpointFacts {
    let namespace = ep.metadata.namespace.clone().unwrap_or_default();
    let s = &ep.spec;
    EndpointFacts {
        network: danm_core::endpoint::network(ep),
        kind_recorded: danm_core::endpoint::kind_recorded(ep),
        name: ep.metadata.name.clone().unwrap_or_default(),
        namespace,
        pod: s.pod.clone(),
        pod_uid: s.pod_uid.clone(),
        host: s.host.clone(),
        container_id: s.cid.clone(),
        ifname: s.interface.name.clone(),
        ip: s.interface.address.clone(),
        ip6: s.interface.address_ipv6.clone(),
        network_type: s.network_type.clone(),
    }
}

/// The facts of one pod.
pub fn pod(pod: &Pod) -> PodFacts {
    PodFacts {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        finished: pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed"),
    }
}

/// The network a shard belongs to, if its reference is readable.
pub fn shard_network(shard: &AllocationShard) -> Option<NetworkKey> {
    let n = &shard.spec.network;
    let kind = NetworkKind::parse(&n.kind)?;
    (!n.name.is_empty()).then(|| NetworkKey::new(kind, &n.namespace, &n.name))
}

/// When an object was last written, as far as its metadata tells: the latest time of its
/// managed fields (the API server stamps the writer's entry on every change), else its
/// creation. Every address a shard holds was set at or before that time.
pub fn last_write(meta: &ObjectMeta) -> Option<Timestamp> {
    let written = meta
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.time.as_ref().map(|t| t.0))
        .max();
    written.or_else(|| meta.creation_timestamp.as_ref().map(|t| t.0))
}

/// The address `local` places after `first`.
pub fn address_at(first: IpAddr, local: u32) -> Option<IpAddr> {
    use danm_core::addr::{ip_to_u128, u128_to_ip};
    let family = danm_core::Family::of(&first);
    let raw = ip_to_u128(first).checked_add(u128::from(local))?;
    let max = match family {
        danm_core::Family::V4 => u128::from(u32::MAX),
        danm_core::Family::V6 => u128::MAX,
    };
    (raw <= max).then(|| u128_to_ip(raw, family))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_first_and_stop_at_the_family_end() {
        let first: IpAddr = "198.18.0.0".parse().unwrap();
        assert_eq!(address_at(first, 261), Some("198.18.1.5".parse().unwrap()));
        assert_eq!(address_at("255.255.255.255".parse().unwrap(), 1), None);
        assert_eq!(
            address_at("fd00::".parse().unwrap(), 16),
            Some("fd00::10".parse().unwrap())
        );
    }

    #[test]
    fn a_danm_era_record_without_api_type_is_on_a_danmnet() {
        let mut ep = DanmEp::new("ep", Default::default());
        ep.metadata.namespace = Some("ns".into());
        ep.spec.network_name = "internal".into();
        let facts = endpoint(&ep);
        assert_eq!(
            facts.network,
            Some(NetworkKey::new(NetworkKind::DanmNet, "ns", "internal"))
        );
        ep.spec.api_type = "ClusterNetwork".into();
        assert_eq!(
            endpoint(&ep).network,
            Some(NetworkKey::new(NetworkKind::ClusterNetwork, "", "internal"))
        );
    }
}
