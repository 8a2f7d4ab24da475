//! Criterion microbenches of the pure core: one allocation (next free address after the
//! cursor, set in its shard) on a /24, /16, /8 and an IPv6 /64 (whose pool is its first
//! /106, DANM's default) at 0%, 50% and 99% fill, and shard encode / decode.
//!
//! The fill is spread uniformly (a fixed pseudo-random pattern), the cursor walks forward
//! as ipamd's does, and each allocated address is released again in the same iteration so
//! the fill stays put: one iteration is "allocate + release".
//!
//! Run: `cargo bench -p danm-bench --bench core`.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use danm_core::layout::{local_offset, shard_index};
use danm_core::policy::{ShardView, find_free};
use danm_core::{FamilyPlan, NetworkKey, NetworkKind, ShardBits};
use danm_crds::{NetworkOptions, NetworkSpec};

const OWNER: u64 = 0x5eed;

/// A deterministic pseudo-random number in `0..1_000_000` for an offset (splitmix64).
fn spread(offset: u128) -> u64 {
    let mut z = (offset as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) % 1_000_000
}

struct Pool {
    plan: FamilyPlan,
    shards: HashMap<u128, ShardBits>,
    cursor: u128,
}

impl Pool {
    fn new(cidr: &str, fill_percent: u64) -> Pool {
        let v6 = cidr.contains(':');
        let options = if v6 {
            NetworkOptions {
                net6: Some(cidr.into()),
                ..Default::default()
            }
        } else {
            NetworkOptions {
                cidr: Some(cidr.into()),
                ..Default::default()
            }
        };
        let spec = NetworkSpec {
            network_id: "bench".into(),
            options,
            ..Default::default()
        };
        let net = danm_core::network::plan(NetworkKey::new(NetworkKind::DanmNet, "d", "n"), &spec)
            .expect("valid network");
        let plan = if v6 { net.v6 } else { net.v4 }.expect("family planned");
        let (first, last) = plan.pool.expect("pool");
        let mut shards: HashMap<u128, ShardBits> = HashMap::new();
        if fill_percent > 0 {
            for offset in first..=last {
                if spread(offset) < fill_percent * 10_000 && !plan.reserved.contains_key(&offset) {
                    shards
                        .entry(shard_index(offset))
                        .or_default()
                        .insert(local_offset(offset), OWNER)
                        .expect("fresh");
                }
            }
        }
        Pool {
            cursor: first,
            plan,
            shards,
        }
    }

    /// One allocation (search and set), then its release.
    fn allocate_and_release(&mut self) -> u128 {
        let shards = &self.shards;
        let offset = find_free(&self.plan, self.cursor, |i| {
            shards.get(&i).map_or(ShardView::Absent, ShardView::Present)
        })
        .expect("a free address");
        let shard = self.shards.entry(shard_index(offset)).or_default();
        shard.insert(local_offset(offset), 1).expect("free");
        shard.remove(local_offset(offset), 1).expect("held");
        self.cursor = offset + 1;
        offset
    }
}

fn allocation(c: &mut Criterion) {
    let mut group = c.benchmark_group("allocate+release");
    for cidr in ["10.0.0.0/24", "10.0.0.0/16", "10.0.0.0/8", "2001:db8::/64"] {
        for fill in [0, 50, 99] {
            let mut pool = Pool::new(cidr, fill);
            group.bench_with_input(
                BenchmarkId::new(cidr.replace('/', "_"), format!("{fill}%")),
                &(),
                |b, _| b.iter(|| black_box(pool.allocate_and_release())),
            );
        }
    }
    group.finish();
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard codec");
    for filled in [512u32, 1024] {
        let mut bits = ShardBits::new();
        for local in 0..1024u32 {
            if filled == 1024 || spread(u128::from(local)) < 500_000 {
                bits.insert(local, spread(u128::from(local) + 7))
                    .expect("fresh");
            }
        }
        let encoded = bits.encode();
        group.bench_with_input(BenchmarkId::new("encode", bits.len()), &bits, |b, bits| {
            b.iter(|| black_box(bits.encode()))
        });
        group.bench_with_input(
            BenchmarkId::new("decode", bits.len()),
            &encoded,
            |b, encoded| {
                b.iter(|| {
                    black_box(ShardBits::decode(&encoded.payload, encoded.crc32).expect("valid"))
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, allocation, codec);
criterion_main!(benches);
