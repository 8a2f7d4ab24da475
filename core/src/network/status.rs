//! A network's `status` (ipamd's status writer's decisions): which shards count, what the
//! pools hold, the `Ready` condition and its reason, and whether the status stored on the
//! object must be written again.

use danm_crds::{
    AllocationShardSpec, LinkSummary, NetworkCondition, NetworkSpec, NetworkStatus, PoolStatus,
};

use super::{NetworkError, NetworkKey, plan};
use crate::addr::{Family, PerFamily};
use crate::codec::decode_shard;

/// The condition type the status carries.
pub const READY: &str = "Ready";

/// What one AllocationShard says, kept by the status writer instead of the whole object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardFacts {
    /// The network it belongs to; None when its `spec.network` names no network.
    pub network: Option<NetworkKey>,
    /// The UID of that network when the shard was written (empty: unknown).
    pub network_uid: String,
    /// Its family; None when `spec.family` is neither IPv4 nor IPv6.
    pub family: Option<Family>,
    /// The CIDR its layout was computed over.
    pub cidr: String,
    /// Addresses it holds, or None when its payload is refused (CRC or layout).
    pub held: Option<u64>,
}

impl ShardFacts {
    /// The facts of a stored shard, its payload checked as ipamd checks it.
    pub fn of(spec: &AllocationShardSpec) -> ShardFacts {
        let family = Family::parse(&spec.family);
        let kind = super::NetworkKind::parse(&spec.network.kind);
        ShardFacts {
            network: kind.map(|k| NetworkKey::new(k, &spec.network.namespace, &spec.network.name)),
            network_uid: spec.network.uid.clone(),
            family,
            cidr: spec.cidr.clone(),
            held: family.and_then(|f| decode_shard(spec, f).ok().map(|bits| u64::from(bits.len()))),
        }
    }
}

/// What a network's shards hold, as [`tally`] counts it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Addresses held per family.
    pub held: PerFamily<u64>,
    /// Shards of the network refused (CRC mismatch, undecodable payload).
    pub corrupt: usize,
}

/// Counts the shards of the network `uid` (empty: unknown) whose layout is the one of
/// `spec`'s current CIDRs: a shard of an older CIDR, or of an earlier network of the same
/// name, holds nothing ipamd would serve.
pub fn tally<'a>(
    spec: &NetworkSpec,
    key: &NetworkKey,
    uid: &str,
    shards: impl IntoIterator<Item = &'a ShardFacts>,
) -> Tally {
    let mut out = Tally::default();
    let Ok(plan) = plan(key.clone(), spec) else {
        return out;
    };
    for shard in shards {
        let Some(family) = shard.family else { continue };
        let current = plan
            .family(family)
            .is_some_and(|f| f.cidr.to_string() == shard.cidr);
        let same_network =
            uid.is_empty() || shard.network_uid.is_empty() || shard.network_uid == uid;
        if !current || !same_network {
            continue;
        }
        match shard.held {
            Some(n) => *out.held.get_mut(family) += n,
            None => out.corrupt += 1,
        }
    }
    out
}

/// The status a network of `spec` (at `generation`) should show, its shards counted in
/// `tally` and its host links summed over the nodes in `links`
/// ([`crate::hostlinks::report::summary`]); conditions without a transition time (see
/// [`settle`]).
pub fn desired(
    key: &NetworkKey,
    spec: &NetworkSpec,
    generation: Option<i64>,
    tally: &Tally,
    links: Option<LinkSummary>,
) -> NetworkStatus {
    let ready = |status: bool, reason: &str, message: String| NetworkCondition {
        type_: READY.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: String::new(),
        observed_generation: generation,
    };
    let mut status = NetworkStatus {
        observed_generation: generation,
        links,
        ..NetworkStatus::default()
    };
    let plan = match plan(key.clone(), spec) {
        Ok(plan) => plan,
        Err(NetworkError::Invalid { problems, .. }) => {
            let message = problems
                .iter()
                .map(|p| format!("{}: {} ({})", p.field, p.message, p.rule))
                .collect::<Vec<_>>()
                .join("; ");
            status.conditions = vec![ready(false, "Invalid", message)];
            return status;
        }
    };
    for family in [Family::V4, Family::V6] {
        if let Some(f) = plan.family(family) {
            let pool = PoolStatus {
                capacity: f.capacity().to_string(),
                used: *tally.held.get(family),
            };
            match family {
                Family::V4 => status.ipv4 = Some(pool),
                Family::V6 => status.ipv6 = Some(pool),
            }
        }
    }
    let condition = if crate::migrate::has_legacy_arrays(spec) {
        ready(
            false,
            "Migrating",
            "DANM's alloc/alloc6 arrays are being moved into AllocationShards; not served until done".to_owned(),
        )
    } else if tally.corrupt > 0 {
        ready(
            false,
            "CorruptShards",
            format!(
                "{} AllocationShard(s) of this network fail their CRC32 or layout check: ipamd refuses to allocate from them (docs/troubleshooting.md)",
                tally.corrupt
            ),
        )
    } else {
        ready(true, "Served", String::new())
    };
    status.conditions = vec![condition];
    status
}

/// `desired` with each condition's `lastTransitionTime`: kept from `current` when that
/// condition's status did not change, else `now` (RFC 3339).
pub fn settle(
    current: Option<&NetworkStatus>,
    mut desired: NetworkStatus,
    now: &str,
) -> NetworkStatus {
    for condition in &mut desired.conditions {
        let before = current.and_then(|c| c.conditions.iter().find(|b| b.type_ == condition.type_));
        condition.last_transition_time = match before {
            Some(b) if b.status == condition.status && !b.last_transition_time.is_empty() => {
                b.last_transition_time.clone()
            }
            _ => now.to_owned(),
        };
    }
    desired
}

/// Whether the stored status differs from `desired` in anything but transition times:
/// what decides a write.
pub fn differs(current: Option<&NetworkStatus>, desired: &NetworkStatus) -> bool {
    let Some(current) = current else { return true };
    let strip = |s: &NetworkStatus| {
        let mut s = s.clone();
        s.conditions
            .iter_mut()
            .for_each(|c| c.last_transition_time.clear());
        s
    };
    strip(current) != strip(desired)
}

#[cfg(test)]
mod tests;
