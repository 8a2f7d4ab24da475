//! One look at the cluster: what is leaked, read from the API with paginated lists (no
//! object is held longer than its page) and judged by [`danm_core::leak`].
//!
//! The lists are read in the order that keeps a fresh allocation from looking leaked:
//! shards first, then DanmEps (an address set before the shard list has its DanmEp written
//! by the time DanmEps are listed), then pods (every DanmEp listed belongs to a pod created
//! before it), then nodes and networks.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use danm_core::codec::decode_shard;
use danm_core::leak::{EndpointFacts, Named, PodFacts, Reason, Verdict, judge_endpoint};
use danm_core::{Family, NetworkKey, NetworkKind, ShardBits};
use danm_crds::{AllocationShard, ClusterNetwork, DanmEp, DanmNet, TenantNetwork};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::facts;
use crate::{CleanerError, Finding, Subject};

/// Objects per page of every list, unless told otherwise.
pub const DEFAULT_PAGE: u32 = 2000;

/// What one look found.
#[derive(Debug, Default)]
pub struct Survey {
    /// What is leaked, in the order found.
    pub findings: Vec<Finding>,
    /// Objects read.
    pub scanned: Scanned,
    /// Addresses no DanmEp names that are not older than the grace period yet.
    pub young_orphans: usize,
    /// Shards refused because their payload does not match its CRC32 (never touched).
    pub corrupt_shards: Vec<String>,
}

/// Objects read, by kind.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Scanned {
    /// DanmEps.
    pub danmeps: usize,
    /// Pods.
    pub pods: usize,
    /// Nodes.
    pub nodes: usize,
    /// Networks of the three kinds.
    pub networks: usize,
    /// AllocationShards.
    pub shards: usize,
    /// Addresses set in them.
    pub addresses: usize,
}

/// When the cleaner first saw each address that no DanmEp names: in `--watch` mode an
/// orphan on a busy shard (written too recently to prove its age) becomes due after the
/// grace period of sightings.
#[derive(Debug, Default)]
pub struct Sightings(HashMap<(NetworkKey, IpAddr, u64), Instant>);

/// Looks at the whole cluster once. `grace`: how old an address no DanmEp names must be
/// before it is an orphan (by its shard's last write, or by `sightings`).
pub async fn survey(
    client: &kube::Client,
    grace: Duration,
    page: u32,
    sightings: &mut Sightings,
) -> Result<Survey, CleanerError> {
    let mut out = Survey::default();
    let shards: Vec<ShardFacts> = list(Api::<AllocationShard>::all(client.clone()), page, |s| {
        Some(shard_facts(s))
    })
    .await?;
    out.scanned.shards = shards.len();
    let endpoints: Vec<EndpointFacts> = list(Api::<DanmEp>::all(client.clone()), page, |e| {
        Some(facts::endpoint(e))
    })
    .await?;
    out.scanned.danmeps = endpoints.len();
    let pods: HashMap<(String, String), PodFacts> =
        list(Api::<Pod>::all(client.clone()), page, |p| {
            Some((
                (p.namespace().unwrap_or_default(), p.name_any()),
                facts::pod(p),
            ))
        })
        .await?
        .into_iter()
        .collect();
    out.scanned.pods = pods.len();
    let nodes: HashSet<String> = list(Api::<Node>::all(client.clone()), page, |n| {
        Some(n.name_any())
    })
    .await?
    .into_iter()
    .collect();
    out.scanned.nodes = nodes.len();
    let networks = networks(client, page).await?;
    out.scanned.networks = networks.len();

    let mut named = Named::default();
    for ep in endpoints {
        named.add(&ep);
        let pod = pods.get(&(ep.namespace.clone(), ep.pod.clone()));
        let verdict = judge_endpoint(
            &ep,
            |n| networks.contains_key(n),
            pod,
            |n| nodes.contains(n),
        );
        if let Verdict::Leaked(reason) = verdict {
            out.findings.push(Finding {
                reason,
                subject: Subject::Endpoint(Box::new(ep)),
            });
        }
    }
    drop(pods);

    let now = Instant::now();
    let wall = Timestamp::now();
    let old_enough = |written: Option<Timestamp>| {
        written.is_some_and(|t| wall.duration_since(t).unsigned_abs() >= grace && t <= wall)
    };
    let mut seen_now = HashMap::new();
    for shard in shards {
        let Some(network) = shard.network.clone() else {
            continue;
        };
        // Only a shard whose network key no longer exists is a leftover: ipamd serves the
        // shards of a network re-created under the same key (and writes its new UID on them).
        let current = networks.contains_key(&network);
        if !current {
            if old_enough(shard.written) {
                out.findings.push(Finding {
                    reason: Reason::NetworkGone,
                    subject: Subject::Shard {
                        namespace: shard.namespace,
                        name: shard.name,
                        uid: shard.uid,
                        network,
                    },
                });
            }
            continue;
        }
        let bits = match shard.bits {
            Ok(bits) => bits,
            Err(reason) => {
                tracing::error!(shard = %shard.name, namespace = %shard.namespace, %reason, "corrupt shard: not used, not touched");
                out.corrupt_shards
                    .push(format!("{}/{}", shard.namespace, shard.name));
                continue;
            }
        };
        out.scanned.addresses += bits.len() as usize;
        let shard_old = old_enough(shard.written);
        for (local, fingerprint) in bits.iter() {
            let Some(address) = facts::address_at(shard.first, local) else {
                continue;
            };
            if named.names(&network, fingerprint, address) {
                continue;
            }
            let key = (network.clone(), address, fingerprint);
            let first = sightings.0.get(&key).copied().unwrap_or(now);
            seen_now.insert(key, first);
            if shard_old || now.duration_since(first) >= grace {
                out.findings.push(Finding {
                    reason: Reason::Orphan,
                    subject: Subject::Address {
                        network: network.clone(),
                        address,
                        fingerprint,
                        shard: shard.name.clone(),
                    },
                });
            } else {
                out.young_orphans += 1;
            }
        }
    }
    sightings.0 = seen_now;
    Ok(out)
}

/// What the cleaner keeps of a shard.
struct ShardFacts {
    namespace: String,
    name: String,
    uid: String,
    network: Option<NetworkKey>,
    first: IpAddr,
    written: Option<Timestamp>,
    bits: Result<ShardBits, String>,
}

fn shard_facts(s: &AllocationShard) -> ShardFacts {
    let first = s.spec.first.parse::<IpAddr>();
    // ipamd's rule (its family must be its first address's, its CRC right), so that the
    // cleaner never frees from a shard ipamd refuses.
    let bits = match &first {
        Ok(ip) => decode_shard(&s.spec, Family::of(ip)).map_err(|e| e.to_string()),
        Err(_) => Err(format!("first {:?} is not an address", s.spec.first)),
    };
    ShardFacts {
        namespace: s.namespace().unwrap_or_default(),
        name: s.name_any(),
        uid: s.metadata.uid.clone().unwrap_or_default(),
        network: facts::shard_network(s),
        first: first.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        written: facts::last_write(&s.metadata),
        bits,
    }
}

/// Every network of the three kinds, with its UID.
async fn networks(
    client: &kube::Client,
    page: u32,
) -> Result<HashMap<NetworkKey, String>, CleanerError> {
    let mut all = HashMap::new();
    all.extend(network_kind::<DanmNet>(client, page, NetworkKind::DanmNet).await?);
    all.extend(network_kind::<TenantNetwork>(client, page, NetworkKind::TenantNetwork).await?);
    all.extend(network_kind::<ClusterNetwork>(client, page, NetworkKind::ClusterNetwork).await?);
    Ok(all)
}

async fn network_kind<K>(
    client: &kube::Client,
    page: u32,
    kind: NetworkKind,
) -> Result<Vec<(NetworkKey, String)>, CleanerError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    list(Api::<K>::all(client.clone()), page, |n| {
        Some((
            NetworkKey::new(kind, &n.namespace().unwrap_or_default(), &n.name_any()),
            n.meta().uid.clone().unwrap_or_default(),
        ))
    })
    .await
}

/// Lists every object of `api`, `page` objects per request, keeping what `keep` makes of
/// each (the page itself is dropped before the next is read).
pub async fn list<K, T>(
    api: Api<K>,
    page: u32,
    mut keep: impl FnMut(&K) -> Option<T>,
) -> Result<Vec<T>, CleanerError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let started = Instant::now();
    let kind = K::kind(&());
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(page.max(1));
    let mut requests = 0;
    loop {
        let listed = api
            .list(&params)
            .await
            .map_err(|source| CleanerError::Api {
                what: format!("list {kind}"),
                source,
            })?;
        requests += 1;
        out.extend(listed.items.iter().filter_map(&mut keep));
        match listed.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    tracing::debug!(%kind, objects = out.len(), requests, seconds = started.elapsed().as_secs_f64(), "listed");
    Ok(out)
}
