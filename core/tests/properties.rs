//! Property tests of the shard codec and the allocation search.

use std::collections::{BTreeMap, HashMap};

use danm_core::codec::ShardBits;
use danm_core::layout::{SHARD_SIZE, local_offset, shard_index};
use danm_core::network::{NetworkKey, NetworkKind, plan};
use danm_core::policy::{ShardView, find_free};
use danm_core::{CodecError, Family};
use danm_crds::{NetworkOptions, NetworkSpec};
use proptest::prelude::*;

fn bits_from(entries: &[(u32, u64)]) -> ShardBits {
    let mut bits = ShardBits::new();
    for &(local, owner) in entries {
        let _ = bits.insert(local % SHARD_SIZE, owner);
    }
    bits
}

proptest! {
    #[test]
    fn codec_round_trips(entries in prop::collection::vec((0u32..SHARD_SIZE, any::<u64>()), 0..1100)) {
        let bits = bits_from(&entries);
        let encoded = bits.encode();
        prop_assert_eq!(encoded.allocated, bits.len());
        let decoded = ShardBits::decode(&encoded.payload, encoded.crc32).unwrap();
        prop_assert_eq!(decoded, bits);
    }

    #[test]
    fn crc_catches_any_single_bit_flip(
        entries in prop::collection::vec((0u32..SHARD_SIZE, any::<u64>()), 1..300),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        use base64::Engine as _;
        let encoded = bits_from(&entries).encode();
        let mut raw = base64::engine::general_purpose::STANDARD.decode(&encoded.payload).unwrap();
        let i = flip.index(raw.len());
        raw[i] ^= 1 << bit;
        let tampered = base64::engine::general_purpose::STANDARD.encode(&raw);
        let result = ShardBits::decode(&tampered, encoded.crc32);
        prop_assert!(
            matches!(result, Err(CodecError::CrcMismatch { .. })),
            "flip of byte {} bit {} not caught: {:?}", i, bit, result
        );
    }

    #[test]
    fn owners_survive_any_insert_remove_order(ops in prop::collection::vec((0u32..64, 0u64..4, any::<bool>()), 0..400)) {
        let mut bits = ShardBits::new();
        let mut model: HashMap<u32, u64> = HashMap::new();
        for (local, owner, insert) in ops {
            if insert {
                let r = bits.insert(local, owner);
                prop_assert_eq!(r.is_ok(), !model.contains_key(&local));
                model.entry(local).or_insert(owner);
            } else {
                let r = bits.remove(local, owner);
                let holds = model.get(&local) == Some(&owner);
                prop_assert_eq!(r.is_ok(), holds, "only the owner frees");
                if holds {
                    model.remove(&local);
                }
            }
            for l in 0..64 {
                prop_assert_eq!(bits.owner_of(l), model.get(&l).copied());
            }
        }
    }

    /// A sequence of allocations and releases over a multi-shard pool never hands out an
    /// address that is held, never hands out a reserved one, and only reports exhaustion
    /// when the pool is really full.
    #[test]
    fn allocate_release_never_yields_an_address_twice(
        ops in prop::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 1..600),
        start in 0u32..3000,
    ) {
        let spec = NetworkSpec {
            network_id: "p".into(),
            options: NetworkOptions {
                cidr: Some("10.0.0.0/20".into()),
                allocation_pool: Some(danm_crds::IpPool {
                    start: Some(format!("10.0.{}.{}", start / 256, start % 256 + (start % 256 == 0) as u32)),
                    end: Some("10.0.12.10".into()),
                    last_ip: None,
                }),
                routes: Some([("10.1.0.0/16".to_string(), "10.0.4.1".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let Ok(p) = plan(NetworkKey::new(NetworkKind::DanmNet, "ns", "p"), &spec) else {
            return Ok(());
        };
        let fp = p.family(Family::V4).unwrap();
        let (first, last) = fp.pool.unwrap();
        let pool_free = |held: &BTreeMap<u128, ()>| {
            (first..=last).filter(|o| !held.contains_key(o) && !fp.reserved.contains_key(o)).count()
        };
        let mut shards: BTreeMap<u128, ShardBits> = BTreeMap::new();
        let mut held: BTreeMap<u128, ()> = BTreeMap::new();
        let mut cursor = 0u128;
        for (allocate, pick) in ops {
            if allocate || held.is_empty() {
                let found = find_free(fp, cursor, |i| shards.get(&i).map_or(ShardView::Absent, ShardView::Present));
                match found {
                    Some(offset) => {
                        prop_assert!(!held.contains_key(&offset), "{} handed out twice", offset);
                        prop_assert!(!fp.reserved.contains_key(&offset), "reserved {} handed out", offset);
                        prop_assert!((first..=last).contains(&offset));
                        shards.entry(shard_index(offset)).or_default().insert(local_offset(offset), 7).unwrap();
                        held.insert(offset, ());
                        cursor = offset + 1;
                    }
                    None => prop_assert_eq!(pool_free(&held), 0, "exhausted while addresses are free"),
                }
            } else {
                let offset = *held.keys().nth(pick.index(held.len())).unwrap();
                shards.get_mut(&shard_index(offset)).unwrap().remove(local_offset(offset), 7).unwrap();
                held.remove(&offset);
            }
        }
    }
}
