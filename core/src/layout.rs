//! How a family's address space splits into `AllocationShard` objects.
//!
//! A shard covers [`SHARD_SIZE`] consecutive offsets of the network's CIDR (fewer at the end
//! of a small CIDR). Shard `i` covers offsets `i * SHARD_SIZE ..`. Shards are created only
//! when an address in them is first allocated, so an IPv6 /64 costs objects in proportion to
//! the addresses in use, never to its size.
//!
//! Size bound: a full shard holds a roaring bitmap of at most 1,024 offsets (at most 2 KiB
//! serialized, less as a run or array container) and 8 bytes of owner fingerprint per
//! offset (8 KiB): about 10 KiB of payload, 14 KiB in base64, well under the 64 KiB limit
//! for any fill.

use sha2::{Digest, Sha256};

use crate::addr::Family;
use crate::network::NetworkKey;

/// log2 of [`SHARD_SIZE`].
pub const SHARD_BITS: u32 = 10;
/// Addresses per shard.
pub const SHARD_SIZE: u32 = 1 << SHARD_BITS;

/// Index of the shard holding `offset`.
pub fn shard_index(offset: u128) -> u128 {
    offset >> SHARD_BITS
}

/// First offset covered by shard `index`.
pub fn shard_first(index: u128) -> u128 {
    index << SHARD_BITS
}

/// Position of `offset` inside its shard.
pub fn local_offset(offset: u128) -> u32 {
    (offset & u128::from(SHARD_SIZE - 1)) as u32
}

/// Number of offsets shard `index` covers in a CIDR whose last offset is `last_offset`.
pub fn shard_len(index: u128, last_offset: u128) -> u32 {
    let first = shard_first(index);
    if first > last_offset {
        return 0;
    }
    let remaining = last_offset - first;
    if remaining >= u128::from(SHARD_SIZE - 1) {
        SHARD_SIZE
    } else {
        remaining as u32 + 1
    }
}

/// The object name of a shard: `<kind>.<network>.<family>.<index in hex>`, e.g.
/// `dn.internal.v4.0`. Names that would pass Kubernetes' 253-character limit use a hash of
/// the network name instead.
pub fn shard_name(network: &NetworkKey, family: Family, index: u128) -> String {
    let name = format!(
        "{}.{}.{}.{index:x}",
        network.kind.tag(),
        network.name,
        family.tag()
    );
    if name.len() <= 253 {
        return name;
    }
    let digest = Sha256::digest(network.name.as_bytes());
    let hash: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}.{hash}.{}.{index:x}", network.kind.tag(), family.tag())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkKind;

    #[test]
    fn indices() {
        assert_eq!(shard_index(1023), 0);
        assert_eq!(shard_index(1024), 1);
        assert_eq!(shard_first(3), 3072);
        assert_eq!(local_offset(3075), 3);
        assert_eq!(shard_len(0, 255), 256);
        assert_eq!(shard_len(0, 5000), 1024);
        assert_eq!(shard_len(4, 5000), 905);
        assert_eq!(shard_len(5, 5000), 0);
        assert_eq!(shard_len(shard_index(u128::MAX), u128::MAX), 1024);
    }

    #[test]
    fn names() {
        let k = NetworkKey::new(NetworkKind::ClusterNetwork, "", "external");
        assert_eq!(shard_name(&k, Family::V6, 0x1f), "cn.external.v6.1f");
        let long = NetworkKey::new(NetworkKind::DanmNet, "ns", &"a".repeat(250));
        let n = shard_name(&long, Family::V4, u128::MAX);
        assert!(n.len() <= 253 && n.starts_with("dn."), "{n}");
    }
}
