//! Allocation requests (`dynamic`, a static address, `none`) and the search for a free
//! address.
//!
//! The search is DANM's (next free address after a cursor, wrapping around the pool), run
//! over shards: a shard that does not exist yet is wholly free, a full or unusable shard is
//! skipped. Its cost depends on the runs of allocated addresses it crosses, not on the pool
//! size, so a /8 and a /64 cost the same as a /24.

use std::net::IpAddr;

use crate::addr::Family;
use crate::codec::ShardBits;
use crate::layout::{SHARD_SIZE, local_offset, shard_first, shard_index};
use crate::network::FamilyPlan;
use danm_crds::StaticScope;

/// What a pod asked for one family of one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressRequest {
    /// Nothing asked (empty field): no address of this family.
    Skip,
    /// `none`: explicitly no address (an L2-only interface).
    None,
    /// `dynamic`: the next free address of the pool.
    Dynamic,
    /// A static address, bare or with a `/prefix` (which must then be the network's, as
    /// DANM required).
    Static {
        /// The address.
        ip: IpAddr,
        /// The prefix length it was written with, if any.
        prefix: Option<u8>,
    },
}

impl AddressRequest {
    /// Parses the `ip` (`family` V4) or `ip6` (V6) field of a request: empty, `none`,
    /// `dynamic`, an address, or an address with a prefix length. Surrounding whitespace is
    /// refused, as in every field of a request: `" dynamic"` is a typo, not a request.
    pub fn parse(field: &str, text: &str, family: Family) -> Result<AddressRequest, AllocError> {
        let bad = |message: String| AllocError::BadRequest {
            field: field.to_owned(),
            message,
        };
        crate::input::exact(text).map_err(|e| bad(e.to_string()))?;
        match text {
            "" => Ok(AddressRequest::Skip),
            "none" => Ok(AddressRequest::None),
            "dynamic" => Ok(AddressRequest::Dynamic),
            _ => {
                let (address, prefix) = match text.split_once('/') {
                    Some((address, prefix)) => {
                        let valid = prefix.bytes().all(|b| b.is_ascii_digit())
                            && !prefix.is_empty()
                            && prefix.len() <= 3;
                        match prefix.parse::<u8>() {
                            Ok(p) if valid && p <= family.bits() => (address, Some(p)),
                            _ => {
                                return Err(bad(format!(
                                    "{text:?}: /{prefix} is not a valid {family} prefix length (0 to {})",
                                    family.bits()
                                )));
                            }
                        }
                    }
                    None => (text, None),
                };
                let ip: IpAddr = address.parse().map_err(|_| {
                    bad(format!(
                        "{text:?} is not a valid IP address; expected \"dynamic\", \"none\" or an address"
                    ))
                })?;
                if Family::of(&ip) != family {
                    return Err(bad(format!("{text:?} is not an {family} address")));
                }
                Ok(AddressRequest::Static { ip, prefix })
            }
        }
    }

    /// Whether an address must be taken from the network.
    pub fn needs_address(&self) -> bool {
        matches!(
            self,
            AddressRequest::Dynamic | AddressRequest::Static { .. }
        )
    }
}

/// Why an allocation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// A request field is malformed.
    #[error("{field}: {message}")]
    BadRequest {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The network has no CIDR of the family asked for.
    #[error("{network} has no {family} subnet: an {family} address cannot be allocated on it")]
    NoSubnet {
        /// The network.
        network: String,
        /// The family.
        family: Family,
    },
    /// A static address outside the network's CIDR.
    #[error("static address {address} is outside the CIDR {cidr} of {network}")]
    OutsideCidr {
        /// The network.
        network: String,
        /// The address.
        address: IpAddr,
        /// The CIDR.
        cidr: String,
    },
    /// A static address outside the allocation pool of a network that keeps static
    /// addresses inside it.
    #[error(
        "static address {address} is outside the allocation pool {pool} of {network}, which keeps static addresses inside it (spec.Options.static_scope: pool)"
    )]
    OutsidePool {
        /// The network.
        network: String,
        /// The address.
        address: IpAddr,
        /// The pool, as `start-end`.
        pool: String,
    },
    /// A static address written with another prefix length than the network's.
    #[error(
        "static address {address}/{prefix} does not have the prefix length of {network}'s CIDR {cidr}: write it as {address} or {address}/{expected}"
    )]
    PrefixMismatch {
        /// The network.
        network: String,
        /// The address.
        address: IpAddr,
        /// The prefix length it was written with.
        prefix: u8,
        /// The network's CIDR.
        cidr: String,
        /// The network's prefix length.
        expected: u8,
    },
    /// A static address that is reserved.
    #[error("static address {address} of {network} is reserved ({why})")]
    Reserved {
        /// The network.
        network: String,
        /// The address.
        address: IpAddr,
        /// Why.
        why: String,
    },
    /// A static address already allocated to another owner.
    #[error("static address {address} of {network} is already in use")]
    InUse {
        /// The network.
        network: String,
        /// The address.
        address: IpAddr,
    },
    /// No free address is left in the pool.
    #[error("{network}: the {family} pool {pool} is exhausted, no free address left")]
    Exhausted {
        /// The network.
        network: String,
        /// The family.
        family: Family,
        /// The pool, as `start-end` (or `empty`).
        pool: String,
    },
    /// The shard holding the address cannot be used (for instance its CRC does not match).
    #[error("{network}: shard {shard} cannot be used: {reason}")]
    ShardUnusable {
        /// The network.
        network: String,
        /// The shard's object name.
        shard: String,
        /// Why.
        reason: String,
    },
}

/// What the search sees of one shard.
#[derive(Clone, Copy, Debug)]
pub enum ShardView<'a> {
    /// No shard object yet: every address of it is free.
    Absent,
    /// A decoded shard.
    Present(&'a ShardBits),
    /// A shard that must not be used (corrupt): skipped.
    Unusable,
}

/// The pool, as `start-end`, for messages.
pub fn describe_pool(plan: &FamilyPlan) -> String {
    match (plan.pool_start(), plan.pool_end()) {
        (Some(s), Some(e)) => format!("{s}-{e}"),
        _ => "(empty)".to_owned(),
    }
}

/// The first free, unreserved offset of the pool at or after `cursor`, wrapping around to
/// the pool's start.
pub fn find_free<'a>(
    plan: &FamilyPlan,
    cursor: u128,
    shard: impl Fn(u128) -> ShardView<'a>,
) -> Option<u128> {
    let (first, last) = plan.pool?;
    let cursor = if (first..=last).contains(&cursor) {
        cursor
    } else {
        first
    };
    search(plan, cursor, last, &shard).or_else(|| {
        if cursor > first {
            search(plan, first, cursor - 1, &shard)
        } else {
            None
        }
    })
}

fn search<'a>(
    plan: &FamilyPlan,
    lo: u128,
    hi: u128,
    shard: &impl Fn(u128) -> ShardView<'a>,
) -> Option<u128> {
    let last_index = shard_index(hi);
    let mut index = shard_index(lo);
    loop {
        let base = shard_first(index);
        let from = local_offset(lo.max(base));
        let to = local_offset(hi.min(base + u128::from(SHARD_SIZE - 1)));
        let usable = |local: u32| !plan.reserved.contains_key(&(base + u128::from(local)));
        let found = match shard(index) {
            ShardView::Absent => (from..=to).find(|l| usable(*l)),
            ShardView::Present(bits) => bits.first_free(from, to, usable),
            ShardView::Unusable => None,
        };
        if let Some(local) = found {
            return Some(base + u128::from(local));
        }
        if index >= last_index {
            return None;
        }
        index += 1;
    }
}

/// The offset `fraction / 65536` of the way through the pool `first..=last`: where a
/// replica starts its dynamic search (replicas start in different places), and where it
/// moves to after losing a shard to another replica.
pub fn pool_point(first: u128, last: u128, fraction: u16) -> u128 {
    let span = last.saturating_sub(first);
    let fraction = u128::from(fraction);
    let at = match span.checked_mul(fraction) {
        Some(product) => product / 65_536,
        None => (span / 65_536) * fraction,
    };
    first + at
}

/// Checks a static address against the network: inside the CIDR (inside the pool when the
/// network keeps static addresses there) and not reserved. Returns
/// its offset. Whether it is free is the shard's to say.
pub fn check_static(
    network: &str,
    plan: &FamilyPlan,
    address: IpAddr,
    prefix: Option<u8>,
) -> Result<u128, AllocError> {
    if let Some(prefix) = prefix.filter(|p| *p != plan.cidr.prefix()) {
        return Err(AllocError::PrefixMismatch {
            network: network.to_owned(),
            address,
            prefix,
            cidr: plan.cidr.to_string(),
            expected: plan.cidr.prefix(),
        });
    }
    let offset = plan
        .cidr
        .offset_of(address)
        .ok_or_else(|| AllocError::OutsideCidr {
            network: network.to_owned(),
            address,
            cidr: plan.cidr.to_string(),
        })?;
    if let Some(why) = plan.reserved.get(&offset) {
        return Err(AllocError::Reserved {
            network: network.to_owned(),
            address,
            why: why.to_string(),
        });
    }
    if plan.statics == StaticScope::Pool && !plan.in_pool(offset) {
        return Err(AllocError::OutsidePool {
            network: network.to_owned(),
            address,
            pool: describe_pool(plan),
        });
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::addr::Cidr;
    use crate::network::Reservation;

    fn plan(cidr: &str, pool: (u128, u128)) -> FamilyPlan {
        let cidr: Cidr = cidr.parse().unwrap();
        FamilyPlan {
            family: cidr.family(),
            cidr,
            pool: Some(pool),
            reserved: BTreeMap::from([(5, Reservation::Gateway("x".into()))]),
            statics: StaticScope::Cidr,
        }
    }

    #[test]
    fn parses_requests() {
        assert_eq!(
            AddressRequest::parse("ip", "", Family::V4),
            Ok(AddressRequest::Skip)
        );
        assert_eq!(
            AddressRequest::parse("ip", "none", Family::V4),
            Ok(AddressRequest::None)
        );
        assert_eq!(
            AddressRequest::parse("ip", "10.0.0.1/24", Family::V4),
            Ok(AddressRequest::Static {
                ip: "10.0.0.1".parse().unwrap(),
                prefix: Some(24)
            })
        );
        let e = AddressRequest::parse("interfaces[1].ip6", "10.0.0.1", Family::V6).unwrap_err();
        assert!(e.to_string().starts_with("interfaces[1].ip6: "), "{e}");
        assert!(AddressRequest::parse("ip", "dynamc", Family::V4).is_err());
    }

    #[test]
    fn finds_after_cursor_and_wraps() {
        let p = plan("10.0.0.0/16", (1, 3000));
        let mut shards: BTreeMap<u128, ShardBits> = BTreeMap::new();
        fn view(s: &BTreeMap<u128, ShardBits>, i: u128) -> ShardView<'_> {
            s.get(&i).map_or(ShardView::Absent, ShardView::Present)
        }
        assert_eq!(find_free(&p, 0, |i| view(&shards, i)), Some(1));
        assert_eq!(find_free(&p, 4, |i| view(&shards, i)), Some(4));
        assert_eq!(
            find_free(&p, 5, |i| view(&shards, i)),
            Some(6),
            "gateway skipped"
        );
        let mut s0 = ShardBits::new();
        for l in 1..1024 {
            if l != 5 {
                s0.insert(l, 1).unwrap();
            }
        }
        shards.insert(0, s0);
        assert_eq!(find_free(&p, 1, |i| view(&shards, i)), Some(1024));
        assert_eq!(find_free(&p, 2999, |i| view(&shards, i)), Some(2999));
        assert_eq!(
            find_free(&p, 3001, |i| view(&shards, i)),
            Some(1024),
            "cursor outside pool restarts"
        );
        assert_eq!(find_free(&p, 1500, |_| ShardView::Unusable), None);
    }

    #[test]
    fn pool_points_spread_over_small_and_huge_pools() {
        // A /16 pool is smaller than 65536 steps: the point must still move.
        assert_eq!(pool_point(1, 65534, 0), 1);
        assert_eq!(pool_point(1, 65534, 21_845), 1 + 65533 * 21_845 / 65_536);
        assert_eq!(pool_point(1, 254, 32_768), 1 + 253 / 2);
        assert_eq!(pool_point(5, 5, 65_535), 5, "single-address pool");
        // A pool so large that span * fraction overflows u128.
        let last = u128::MAX - 1;
        let half = pool_point(0, last, 32_768);
        assert!(half > u128::MAX / 2 - u128::MAX / 65_536 && half <= u128::MAX / 2);
    }

    #[test]
    fn static_checks() {
        let p = plan("10.0.0.0/24", (1, 254));
        assert_eq!(
            check_static("n", &p, "10.0.0.9".parse().unwrap(), None),
            Ok(9)
        );
        assert_eq!(
            check_static("n", &p, "10.0.0.9".parse().unwrap(), Some(24)),
            Ok(9),
            "the network's own prefix is accepted"
        );
        assert!(matches!(
            check_static("n", &p, "10.0.1.9".parse().unwrap(), None),
            Err(AllocError::OutsideCidr { .. })
        ));
        assert!(matches!(
            check_static("n", &p, "10.0.0.5".parse().unwrap(), None),
            Err(AllocError::Reserved { .. })
        ));
    }

    /// A network that keeps static addresses in its pool refuses the rest of its CIDR (a
    /// router's or an appliance's address), naming the option; DANM's scope allows it.
    #[test]
    fn static_addresses_outside_the_pool_are_refused_where_the_network_says_so() {
        let mut p = plan("10.0.0.0/24", (100, 200));
        let router = "10.0.0.1".parse().unwrap();
        assert_eq!(check_static("n", &p, router, None), Ok(1), "DANM's scope");
        p.statics = StaticScope::Pool;
        let e = check_static("n", &p, router, None).unwrap_err();
        assert!(matches!(e, AllocError::OutsidePool { .. }));
        assert!(
            e.to_string().contains("10.0.0.100-10.0.0.200")
                && e.to_string().contains("spec.Options.static_scope"),
            "{e}"
        );
        assert_eq!(
            check_static("n", &p, "10.0.0.150".parse().unwrap(), None),
            Ok(150)
        );
        for edge in ["10.0.0.100", "10.0.0.200"] {
            assert!(check_static("n", &p, edge.parse().unwrap(), None).is_ok());
        }
        assert!(check_static("n", &p, "10.0.0.201".parse().unwrap(), None).is_err());
    }

    /// DANM refused a static address whose prefix was not its network's ("static ip is
    /// not part of network CIDR/allocation pool"): `10.240.1.123/16` on a /24 names the
    /// wrong network more often than not.
    #[test]
    fn a_static_address_with_another_prefix_is_refused_naming_both() {
        let p = plan("10.240.1.0/24", (1, 254));
        let e =
            check_static("internal", &p, "10.240.1.123".parse().unwrap(), Some(16)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "static address 10.240.1.123/16 does not have the prefix length of internal's CIDR 10.240.1.0/24: write it as 10.240.1.123 or 10.240.1.123/24"
        );
    }

    #[test]
    fn prefixes_that_are_no_prefix_length_and_whitespace_are_refused() {
        for (text, family) in [
            ("10.240.1.120/33", Family::V4),
            ("10.240.1.120/", Family::V4),
            ("10.240.1.120/-1", Family::V4),
            ("10.240.1.120/0024", Family::V4),
            ("10.240.1.120/24/24", Family::V4),
            ("fd00::1/129", Family::V6),
        ] {
            let e = AddressRequest::parse("interfaces[0].ip", text, family).unwrap_err();
            assert!(
                e.to_string().starts_with("interfaces[0].ip: ")
                    && (e.to_string().contains("prefix length")
                        || e.to_string().contains("not a valid IP")),
                "{text}: {e}"
            );
        }
        for text in [" dynamic", "dynamic ", " 10.0.0.1", "none\n"] {
            let e = AddressRequest::parse("ip", text, Family::V4).unwrap_err();
            assert!(e.to_string().contains("whitespace"), "{text:?}: {e}");
        }
        assert_eq!(
            AddressRequest::parse("ip6", "fd00::1/64", Family::V6),
            Ok(AddressRequest::Static {
                ip: "fd00::1".parse().unwrap(),
                prefix: Some(64)
            })
        );
        assert_eq!(
            AddressRequest::parse("ip", "10.0.0.1", Family::V4),
            Ok(AddressRequest::Static {
                ip: "10.0.0.1".parse().unwrap(),
                prefix: None
            }),
            "a bare address is accepted"
        );
    }
}
