//! showalloc's listing read straight from the Kubernetes API (AllocationShards and DanmEps),
//! so that it works while ipamd is down. Each allocated address is matched to the DanmEp whose
//! owner fingerprint and address agree, exactly as ipamd's ListAllocations does.

use std::collections::HashMap;
use std::net::IpAddr;

use danm_core::layout::shard_first;
use danm_core::{Family, NetworkKey};
use danm_proto::v1 as pb;

use super::ShowallocError;
use crate::store::kube::read_network;
use crate::worker::decode_shard;

/// One network as showalloc shows it.
#[derive(Clone, Debug)]
pub struct View {
    /// Pools, reservations and counts.
    pub info: pb::NetworkInfo,
    /// Every allocated address with its owner, when a DanmEp names it.
    pub allocations: Vec<pb::Allocation>,
}

/// Reads one network, its shards and its DanmEps from the API.
pub async fn view(client: &kube::Client, key: &NetworkKey) -> Result<View, ShowallocError> {
    let (network, shards, records) = read_network(client, key)
        .await
        .map_err(|e| ShowallocError::Api(e.to_string()))?
        .ok_or_else(|| ShowallocError::NotFound(key.to_string()))?;
    let plan = danm_core::network::plan(key.clone(), &network.spec)
        .map_err(|e| ShowallocError::InvalidNetwork(format!("{key}: {e}")))?;
    let mut owners: HashMap<(u64, IpAddr), &crate::store::EndpointRecord> = HashMap::new();
    for r in &records {
        for a in [&r.spec.interface.address, &r.spec.interface.address_ipv6] {
            if let Some(Ok(ip)) = a.split('/').next().map(str::parse::<IpAddr>) {
                owners.insert((r.owner.fingerprint(), ip), r);
            }
        }
    }
    let mut allocations = Vec::new();
    let mut sizes = Vec::new();
    for shard in &shards {
        sizes.push((shard.key.family, shard.spec.payload.len()));
        let Some(fp) = plan.family(shard.key.family) else {
            continue;
        };
        let bits = decode_shard(shard).map_err(|reason| {
            ShowallocError::CorruptShard(format!("{}: {reason}", shard.key.name()))
        })?;
        let base = shard_first(shard.key.index);
        for (local, fingerprint) in bits.iter() {
            let Some(address) = fp.cidr.addr_at(base + u128::from(local)) else {
                continue;
            };
            let owner = owners.get(&(fingerprint, address)).map(|r| pb::Owner {
                container_id: r.owner.container_id.clone(),
                ifname: r.owner.ifname.clone(),
                pod_namespace: r.namespace.clone(),
                pod_name: r.spec.pod.clone(),
                pod_uid: r.spec.pod_uid.clone(),
                netns: r.spec.netns.clone(),
                host: r.spec.host.clone(),
            });
            allocations.push(pb::Allocation {
                network: Some(pb::NetworkRef::from(key)),
                address: address.to_string(),
                owner,
                fingerprint: format!("{fingerprint:016x}"),
            });
        }
    }
    let allocated = |family: Family| {
        allocations
            .iter()
            .filter(|a| {
                a.address
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| Family::of(&ip) == family)
            })
            .count() as u64
    };
    let info = crate::wire::network_info(&plan, allocated, &sizes);
    Ok(View { info, allocations })
}
