use danm_crds::{AllocationShardSpec, NetworkOptions, NetworkSpec, ShardNetworkRef};

use super::*;
use crate::NetworkKind;
use crate::codec::ShardBits;

fn key() -> NetworkKey {
    NetworkKey::new(NetworkKind::DanmNet, "telco", "sig")
}

fn spec(cidr: &str, net6: Option<&str>) -> NetworkSpec {
    NetworkSpec {
        network_id: "sig".into(),
        options: NetworkOptions {
            cidr: Some(cidr.into()),
            net6: net6.map(str::to_owned),
            ..NetworkOptions::default()
        },
        ..NetworkSpec::default()
    }
}

/// A shard of `key()` holding `held` addresses, written as ipamd writes one.
fn shard(family: &str, cidr: &str, uid: &str, held: u32) -> AllocationShardSpec {
    let mut bits = ShardBits::new();
    for local in 0..held {
        bits.insert(local + 1, 7).unwrap();
    }
    let encoded = bits.encode();
    AllocationShardSpec {
        network: ShardNetworkRef {
            kind: "DanmNet".into(),
            namespace: "telco".into(),
            name: "sig".into(),
            uid: uid.into(),
        },
        family: family.into(),
        cidr: cidr.into(),
        first: String::new(),
        size: 256,
        allocated: encoded.allocated,
        crc32: encoded.crc32,
        payload: encoded.payload,
        revision: 1,
    }
}

fn ready(status: &NetworkStatus) -> &NetworkCondition {
    status.conditions.iter().find(|c| c.type_ == READY).unwrap()
}

#[test]
fn a_served_network_shows_its_pools_and_counts_only_its_current_shards() {
    let spec = spec("10.20.0.0/24", Some("fd00:20::/64"));
    let mut corrupt = shard("IPv4", "10.20.0.0/24", "u1", 1);
    corrupt.crc32 ^= 1;
    let facts: Vec<ShardFacts> = [
        shard("IPv4", "10.20.0.0/24", "u1", 3),
        shard("IPv6", "fd00:20::/64", "u1", 2),
        // An older CIDR's layout, and an earlier network of the same name: not counted.
        shard("IPv4", "10.19.0.0/24", "u1", 5),
        shard("IPv4", "10.20.0.0/24", "u0", 9),
    ]
    .iter()
    .map(ShardFacts::of)
    .collect();
    let counted = tally(&spec, &key(), "u1", &facts);
    assert_eq!(counted.held, PerFamily::new(3, 2));
    assert_eq!(counted.corrupt, 0);

    let status = desired(&key(), &spec, Some(4), &counted, None);
    assert_eq!(status.observed_generation, Some(4));
    assert_eq!(
        status.ipv4,
        Some(PoolStatus {
            capacity: "254".into(),
            used: 3
        })
    );
    // DANM's default IPv6 pool: the first /106, minus its first and last address.
    assert_eq!(
        status.ipv6,
        Some(PoolStatus {
            capacity: ((1u64 << 22) - 2).to_string(),
            used: 2
        })
    );
    assert_eq!(ready(&status).status, "True");
    assert_eq!(ready(&status).reason, "Served");

    // A shard whose payload fails its CRC is counted as corrupt, and the network says so.
    let with_corrupt: Vec<ShardFacts> = facts
        .iter()
        .cloned()
        .chain([ShardFacts::of(&corrupt)])
        .collect();
    let counted = tally(&spec, &key(), "u1", &with_corrupt);
    assert_eq!(counted.corrupt, 1);
    let status = desired(&key(), &spec, Some(4), &counted, None);
    assert_eq!(ready(&status).status, "False");
    assert_eq!(ready(&status).reason, "CorruptShards");
    assert!(ready(&status).message.starts_with("1 AllocationShard(s)"));
}

#[test]
fn an_invalid_network_names_every_refused_field_and_its_rule() {
    let mut spec = spec("10.20.0.0/33", None);
    spec.network_type = "../../bin/sh".into();
    let status = desired(&key(), &spec, Some(2), &Tally::default(), None);
    let condition = ready(&status);
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "Invalid")
    );
    assert!(
        condition.message.contains("spec.Options.cidr: ")
            && condition.message.contains("spec.NetworkType: "),
        "{}",
        condition.message
    );
    assert!(
        condition.message.contains("not a DANM rule"),
        "{}",
        condition.message
    );
    assert_eq!(condition.observed_generation, Some(2));
    assert_eq!((&status.ipv4, &status.ipv6), (&None, &None));
}

#[test]
fn a_network_with_danm_arrays_is_migrating() {
    let mut spec = spec("10.20.0.0/24", None);
    spec.options.alloc = Some("AAAA".into());
    let status = desired(&key(), &spec, None, &Tally::default(), None);
    assert_eq!(ready(&status).reason, "Migrating");
    assert_eq!(ready(&status).status, "False");
}

#[test]
fn transition_times_move_only_when_the_condition_changes_and_never_cause_a_write() {
    let spec = spec("10.20.0.0/24", None);
    let first = settle(
        None,
        desired(&key(), &spec, Some(1), &Tally::default(), None),
        "2026-12-07T10:00:00Z",
    );
    assert_eq!(ready(&first).last_transition_time, "2026-12-07T10:00:00Z");

    // More addresses held: a write, but the condition keeps its time.
    let busier = Tally {
        held: PerFamily::new(10, 0),
        corrupt: 0,
    };
    let again = desired(&key(), &spec, Some(1), &busier, None);
    assert!(differs(Some(&first), &again));
    let second = settle(Some(&first), again, "2026-12-07T11:00:00Z");
    assert_eq!(ready(&second).last_transition_time, "2026-12-07T10:00:00Z");

    // Nothing but the time differs: no write.
    let same = desired(&key(), &spec, Some(1), &busier, None);
    assert!(!differs(Some(&second), &same));
    assert!(differs(None, &same));

    // The condition turns False: its time moves.
    let mut broken = spec.clone();
    broken.options.cidr = Some("nonsense".into());
    let third = settle(
        Some(&second),
        desired(&key(), &broken, Some(2), &busier, None),
        "2026-12-07T12:00:00Z",
    );
    assert_eq!(ready(&third).last_transition_time, "2026-12-07T12:00:00Z");
}

#[test]
fn a_shard_naming_no_network_or_family_counts_for_none() {
    let mut odd = shard("IPv5", "10.20.0.0/24", "u1", 1);
    odd.network.kind = "Pod".into();
    let facts = ShardFacts::of(&odd);
    assert_eq!(
        (&facts.network, facts.family, facts.held),
        (&None, None, None)
    );
    let counted = tally(&spec("10.20.0.0/24", None), &key(), "u1", [&facts]);
    assert_eq!(counted, Tally::default());
}

#[test]
fn the_nodes_link_summary_is_part_of_the_status_and_its_change_a_write() {
    let spec = spec("10.20.0.0/24", None);
    let links = Some(danm_crds::LinkSummary {
        nodes_ready: 2,
        nodes_failing: 1,
        first_failure: "node-2: HostDeviceMissing: no device ens9".into(),
    });
    let with = desired(&key(), &spec, Some(1), &Tally::default(), links.clone());
    assert_eq!(with.links, links);
    let without = desired(&key(), &spec, Some(1), &Tally::default(), None);
    assert!(differs(Some(&with), &without));
}
