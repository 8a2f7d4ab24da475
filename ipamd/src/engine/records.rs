//! Endpoint records and addresses as the engine reads and writes them.

use std::net::IpAddr;

use danm_core::interfaces::Connection;
use danm_core::network::is_dynamic_backend;
use danm_core::{AddressRequest, Family, NetworkKey, NetworkPlan, OwnerKey, PerFamily};
use danm_crds::{DanmEpIface, DanmEpSpec};

use super::{Addresses, OwnerInfo};
use crate::error::EngineError;
use crate::store::EndpointRecord;
use crate::worker::Held;

/// What a connection asks, adjusted as DANM does: a delegated (static) backend on a
/// network without a subnet of a family keeps its own IPAM for that family.
pub(super) fn effective_requests(plan: &NetworkPlan, c: &Connection) -> PerFamily<AddressRequest> {
    PerFamily::new(c.ip, c.ip6).map(|family, request| {
        if plan.family(family).is_none()
            && !is_dynamic_backend(&plan.spec.network_type)
            && request == AddressRequest::Dynamic
        {
            AddressRequest::Skip
        } else {
            request
        }
    })
}

/// Checks what `requests` asks of `plan` before anything is allocated: a family the
/// network has no subnet for, a static address outside the network or reserved.
pub(super) fn check_requests(
    plan: &NetworkPlan,
    requests: &PerFamily<AddressRequest>,
) -> Result<(), EngineError> {
    for (family, request) in requests.iter() {
        let subnet = plan.family(family);
        if request.needs_address() && subnet.is_none() {
            return Err(danm_core::AllocError::NoSubnet {
                network: plan.key.to_string(),
                family,
            }
            .into());
        }
        if let (AddressRequest::Static { ip, prefix }, Some(fp)) = (request, subnet) {
            danm_core::policy::check_static(&plan.key.to_string(), fp, *ip, *prefix)?;
        }
    }
    Ok(())
}

/// The addresses as answered and recorded: with the network's prefix, `none`, or empty.
pub(super) fn format_addresses(
    plan: &NetworkPlan,
    requests: &PerFamily<AddressRequest>,
    held: &Held,
) -> Addresses {
    let one = |family: Family| match requests.get(family) {
        AddressRequest::None => "none".to_owned(),
        AddressRequest::Skip => String::new(),
        _ => {
            let fp = plan.family(family).expect("checked before allocation");
            let addr = fp
                .cidr
                .addr_at(held.get(family).expect("allocated"))
                .expect("offset in cidr");
            fp.cidr.with_prefix(addr)
        }
    };
    Addresses {
        ip: one(Family::V4),
        ip6: one(Family::V6),
    }
}

/// The endpoint record of an allocation.
pub(super) fn endpoint_record(
    plan: &NetworkPlan,
    key: &OwnerKey,
    owner: &OwnerInfo,
    addresses: &Addresses,
) -> EndpointRecord {
    EndpointRecord {
        owner: key.clone(),
        network: plan.key.clone(),
        namespace: owner.pod_namespace.clone(),
        spec: DanmEpSpec {
            network_name: plan.key.name.clone(),
            network_type: plan.network_type().to_owned(),
            endpoint_id: key.endpoint_name(),
            interface: DanmEpIface {
                name: key.ifname.clone(),
                address: addresses.ip.clone(),
                address_ipv6: addresses.ip6.clone(),
                ..Default::default()
            },
            host: owner.host.clone(),
            pod: owner.pod_name.clone(),
            pod_uid: owner.pod_uid.clone(),
            cid: key.container_id.clone(),
            netns: owner.netns.clone(),
            api_type: plan.key.kind.as_str().to_owned(),
        },
    }
}

/// The addresses a record gives its owner on `network` (an error if it names another
/// network: an owner holds addresses on one network only).
pub(super) fn existing_addresses(
    record: &EndpointRecord,
    network: &NetworkKey,
    owner: &OwnerKey,
) -> Result<Addresses, EngineError> {
    if &record.network != network {
        return Err(EngineError::OwnerElsewhere {
            owner: owner.to_string(),
            network: record.network.to_string(),
        });
    }
    Ok(Addresses {
        ip: record.spec.interface.address.clone(),
        ip6: record.spec.interface.address_ipv6.clone(),
    })
}

/// The offsets `addresses` (a record's) have in `plan`.
pub(super) fn offsets_in(
    plan: &NetworkPlan,
    addresses: impl IntoIterator<Item = IpAddr>,
) -> Vec<(Family, u128)> {
    addresses
        .into_iter()
        .filter_map(|ip| {
            let family = Family::of(&ip);
            Some((family, plan.family(family)?.cidr.offset_of(ip)?))
        })
        .collect()
}

/// The offsets in `held` with their families.
pub(super) fn held_offsets(held: &Held) -> Vec<(Family, u128)> {
    held.iter()
        .filter_map(|(family, offset)| offset.map(|o| (family, o)))
        .collect()
}
