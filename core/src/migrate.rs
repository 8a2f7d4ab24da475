//! Reading DANM's allocation bit arrays (`spec.Options.alloc` / `alloc6`), for migration.
//!
//! DANM kept one bit per address of the allocation CIDR (the network's `cidr` for IPv4, the
//! `allocation_pool_v6.cidr` for IPv6), base64 (standard alphabet), most significant bit
//! first within each byte: address offset `i` is bit `7 - i % 8` of byte `i / 8`. DANM set
//! the first and last bit (network and broadcast) and the route gateways' bits as reserved
//! when it created the array; those are not allocations.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::addr::{Cidr, Family};
use crate::network::{NetworkPlan, default_v6_pool_cidr};

/// Why a DANM bit array could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    /// Not base64.
    #[error("spec.Options.{field} is not valid base64: {message}")]
    Base64 {
        /// `alloc` or `alloc6`.
        field: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// The array names addresses its network does not have.
    #[error("spec.Options.{field} has {bits} bits but its CIDR {cidr} has fewer addresses")]
    TooLong {
        /// `alloc` or `alloc6`.
        field: &'static str,
        /// Bits in the array.
        bits: u128,
        /// The CIDR.
        cidr: String,
    },
    /// The array is set but the network has no subnet of its family.
    #[error("spec.Options.{0} is set but the network has no subnet of that family")]
    NoSubnet(&'static str),
}

/// Positions of the set bits of a DANM bit array.
pub fn set_bits(field: &'static str, text: &str) -> Result<Vec<u128>, MigrateError> {
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|e| MigrateError::Base64 {
            field,
            message: e.to_string(),
        })?;
    let mut out = Vec::new();
    for (i, byte) in bytes.iter().enumerate() {
        for bit in 0..8u32 {
            if byte & (0x80 >> bit) != 0 {
                out.push(i as u128 * 8 + u128::from(bit));
            }
        }
    }
    Ok(out)
}

/// Builds a DANM bit array (for tests and tools): `len` bits, first and last set as DANM's
/// `CreateBitArrayFromIpnet` does, plus `set`.
pub fn danm_bit_array(len: usize, set: &[usize]) -> String {
    let mut bytes = vec![0u8; len.div_ceil(8)];
    for &pos in [0, len - 1].iter().chain(set) {
        bytes[pos / 8] |= 0x80 >> (pos % 8);
    }
    BASE64.encode(bytes)
}

/// The CIDR DANM indexed `alloc6` by: `allocation_pool_v6.cidr`, else the first /106 of
/// `net6` (narrower if `net6` is).
pub fn alloc6_cidr(plan: &NetworkPlan) -> Option<Cidr> {
    let net6 = plan.v6.as_ref()?.cidr;
    let explicit = plan
        .spec
        .options
        .allocation_pool_v6
        .as_ref()
        .and_then(|p| p.cidr.as_deref())
        .and_then(|c| Cidr::parse_family(c, Family::V6).ok());
    explicit.or_else(|| Some(default_v6_pool_cidr(&net6)))
}

/// Whether a network still carries DANM's `alloc`/`alloc6` bit arrays (and so must be
/// migrated into shards before it is served).
pub fn has_legacy_arrays(spec: &danm_crds::NetworkSpec) -> bool {
    [&spec.options.alloc, &spec.options.alloc6]
        .iter()
        .any(|a| a.as_deref().is_some_and(|t| !t.trim().is_empty()))
}

/// The allocations a DANM network's bit arrays hold, as (family, offset in the network's
/// CIDR), without DANM's reserved bits (first, last, gateways).
pub fn legacy_allocations(plan: &NetworkPlan) -> Result<Vec<(Family, u128)>, MigrateError> {
    let mut out = Vec::new();
    let opts = &plan.spec.options;
    let arrays = [
        ("alloc", Family::V4, opts.alloc.as_deref()),
        ("alloc6", Family::V6, opts.alloc6.as_deref()),
    ];
    for (field, family, text) in arrays {
        let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
            continue;
        };
        let fp = plan.family(family).ok_or(MigrateError::NoSubnet(field))?;
        let range = match family {
            Family::V4 => fp.cidr,
            Family::V6 => alloc6_cidr(plan).ok_or(MigrateError::NoSubnet(field))?,
        };
        let base = fp
            .cidr
            .offset_of(range.base())
            .ok_or(MigrateError::NoSubnet(field))?;
        let bits = set_bits(field, text)?;
        let last = range.last_offset();
        for bit in bits {
            if bit > last {
                return Err(MigrateError::TooLong {
                    field,
                    bits: bit + 1,
                    cidr: range.to_string(),
                });
            }
            if bit == 0 || bit == last {
                continue;
            }
            let offset = base + bit;
            if !fp.reserved.contains_key(&offset) {
                out.push((family, offset));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{NetworkKey, NetworkKind, plan};
    use danm_crds::{NetworkOptions, NetworkSpec};

    #[test]
    fn msb_first_like_danm() {
        // DANM: Set(pos) does data[pos/8] |= 0x1 << (7 - pos%8).
        assert_eq!(
            set_bits("alloc", &BASE64.encode([0b1000_0001, 0b0100_0000])).unwrap(),
            vec![0, 7, 9]
        );
        assert!(set_bits("alloc", "***").is_err());
    }

    #[test]
    fn reserved_bits_are_not_allocations() {
        let spec = NetworkSpec {
            network_id: "d".into(),
            options: NetworkOptions {
                cidr: Some("10.0.0.0/24".into()),
                routes: Some([("10.1.0.0/16".to_string(), "10.0.0.65".to_string())].into()),
                alloc: Some(danm_bit_array(256, &[65, 5, 200])),
                net6: Some("2001:db8::/64".into()),
                alloc6: Some(danm_bit_array(1 << 22, &[3])),
                ..Default::default()
            },
            ..Default::default()
        };
        let p = plan(NetworkKey::new(NetworkKind::DanmNet, "ns", "d"), &spec).unwrap();
        assert_eq!(
            legacy_allocations(&p).unwrap(),
            vec![(Family::V4, 5), (Family::V4, 200), (Family::V6, 3)]
        );
    }
}
