//! Addresses as offsets from a CIDR's base address.
//!
//! Every address of a network is handled as a `u128` offset from the network's base address,
//! for both families, so a /8 and an IPv6 /64 (or wider) use the same arithmetic.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Number of bits of an address.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
    /// `IPv4` / `IPv6`, as written in AllocationShard objects.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
    /// Short tag used in object names: `v4` / `v6`.
    pub fn tag(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
    /// Parses `IPv4` / `IPv6`.
    pub fn parse(s: &str) -> Option<Family> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }
    /// Family of an address.
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];
}

/// One value per address family: what an interface asks or holds for IPv4 and for IPv6.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PerFamily<T> {
    /// The IPv4 value.
    pub v4: T,
    /// The IPv6 value.
    pub v6: T,
}

impl<T> PerFamily<T> {
    /// A pair from its two values.
    pub fn new(v4: T, v6: T) -> PerFamily<T> {
        PerFamily { v4, v6 }
    }

    /// The value of `family`.
    pub fn get(&self, family: Family) -> &T {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// The value of `family`, to change.
    pub fn get_mut(&mut self, family: Family) -> &mut T {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    /// Both values with their family, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = (Family, &T)> {
        [(Family::V4, &self.v4), (Family::V6, &self.v6)].into_iter()
    }

    /// A pair of `f` applied to each value with its family.
    pub fn map<U>(self, mut f: impl FnMut(Family, T) -> U) -> PerFamily<U> {
        PerFamily {
            v4: f(Family::V4, self.v4),
            v6: f(Family::V6, self.v6),
        }
    }

    /// Whether `f` holds for both values.
    pub fn all(&self, mut f: impl FnMut(Family, &T) -> bool) -> bool {
        f(Family::V4, &self.v4) && f(Family::V6, &self.v6)
    }

    /// Whether `f` holds for either value.
    pub fn any(&self, mut f: impl FnMut(Family, &T) -> bool) -> bool {
        f(Family::V4, &self.v4) || f(Family::V6, &self.v6)
    }
}

/// Why a CIDR or address did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// The text is not `address/prefix`.
    #[error("{0:?} is not a valid CIDR (expected address/prefix, e.g. 10.0.0.0/24)")]
    BadCidr(String),
    /// The text is not an IP address.
    #[error("{0:?} is not a valid IP address")]
    BadAddress(String),
    /// The CIDR is of the other family.
    #[error("{text:?} is not an {expected} CIDR")]
    WrongFamily {
        /// The offending text.
        text: String,
        /// The family that was expected.
        expected: Family,
    },
}

/// A CIDR: base address (host bits cleared) and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    family: Family,
    base: u128,
    prefix: u8,
}

impl Cidr {
    /// Builds a CIDR, clearing host bits (as Go's `net.ParseCIDR` does, which DANM used).
    pub fn new(ip: IpAddr, prefix: u8) -> Option<Cidr> {
        let family = Family::of(&ip);
        if prefix > family.bits() {
            return None;
        }
        let host_bits = u32::from(family.bits() - prefix);
        let raw = ip_to_u128(ip);
        let base = if host_bits >= 128 {
            0
        } else {
            raw & !((1u128 << host_bits) - 1)
        };
        Some(Cidr {
            family,
            base,
            prefix,
        })
    }

    /// Parses `address/prefix` of the given family.
    pub fn parse_family(text: &str, family: Family) -> Result<Cidr, AddrError> {
        let cidr: Cidr = text.parse()?;
        if cidr.family != family {
            return Err(AddrError::WrongFamily {
                text: text.to_owned(),
                expected: family,
            });
        }
        Ok(cidr)
    }

    /// The family.
    pub fn family(&self) -> Family {
        self.family
    }
    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    /// The base (network) address.
    pub fn base(&self) -> IpAddr {
        u128_to_ip(self.base, self.family)
    }
    /// Offset of the last address (size - 1; a /0 IPv6 has 2^128 addresses).
    pub fn last_offset(&self) -> u128 {
        let host_bits = u32::from(self.family.bits() - self.prefix);
        if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        }
    }
    /// The address at `offset`, if inside the CIDR.
    pub fn addr_at(&self, offset: u128) -> Option<IpAddr> {
        (offset <= self.last_offset()).then(|| u128_to_ip(self.base + offset, self.family))
    }
    /// Offset of `ip` in the CIDR, if inside.
    pub fn offset_of(&self, ip: IpAddr) -> Option<u128> {
        if Family::of(&ip) != self.family {
            return None;
        }
        let raw = ip_to_u128(ip);
        let offset = raw.checked_sub(self.base)?;
        (offset <= self.last_offset()).then_some(offset)
    }
    /// Whether `ip` is inside the CIDR.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.offset_of(ip).is_some()
    }
    /// Whether `other` lies wholly inside this CIDR.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.family == self.family && other.prefix >= self.prefix && self.contains(other.base())
    }
    /// `address/prefix` for an address of this CIDR, as DANM reports allocations.
    pub fn with_prefix(&self, ip: IpAddr) -> String {
        format!("{ip}/{}", self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = AddrError;
    fn from_str(text: &str) -> Result<Cidr, AddrError> {
        let bad = || AddrError::BadCidr(text.to_owned());
        let (addr, prefix) = text.trim().split_once('/').ok_or_else(bad)?;
        let ip: IpAddr = addr.parse().map_err(|_| bad())?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        Cidr::new(ip, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base(), self.prefix)
    }
}

/// Parses an address, accepting and ignoring a `/prefix` suffix (DANM accepted static
/// addresses in CIDR notation).
pub fn parse_addr_lenient(text: &str) -> Result<IpAddr, AddrError> {
    let trimmed = text.trim();
    let addr = match trimmed.split_once('/') {
        Some((addr, prefix))
            if !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit()) =>
        {
            addr
        }
        Some(_) => return Err(AddrError::BadAddress(text.to_owned())),
        None => trimmed,
    };
    addr.parse()
        .map_err(|_| AddrError::BadAddress(text.to_owned()))
}

/// An address as an unsigned integer.
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// An unsigned integer as an address of `family` (IPv4 keeps the low 32 bits).
pub fn u128_to_ip(raw: u128, family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(raw as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(raw)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks_like_go() {
        let c: Cidr = "10.1.2.3/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.2.0/24");
        assert_eq!(c.last_offset(), 255);
        assert_eq!(c.offset_of("10.1.2.255".parse().unwrap()), Some(255));
        assert_eq!(c.offset_of("10.1.3.0".parse().unwrap()), None);
        let v6: Cidr = "2a00:8a00:a000:1193::3e:1010/106".parse().unwrap();
        assert_eq!(v6.to_string(), "2a00:8a00:a000:1193::/106");
        assert_eq!(v6.last_offset(), (1 << 22) - 1);
    }

    #[test]
    fn extreme_prefixes() {
        let all: Cidr = "::/0".parse().unwrap();
        assert_eq!(all.last_offset(), u128::MAX);
        assert_eq!(
            all.addr_at(u128::MAX).unwrap().to_string(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        let host: Cidr = "10.0.0.7/32".parse().unwrap();
        assert_eq!(host.last_offset(), 0);
        let v4all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(v4all.last_offset(), u128::from(u32::MAX));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0/24",
            "x/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "::/129",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} parsed");
        }
        assert!(matches!(
            Cidr::parse_family("::/64", Family::V4),
            Err(AddrError::WrongFamily { .. })
        ));
    }

    #[test]
    fn lenient_address() {
        assert_eq!(
            parse_addr_lenient("10.0.0.5/24").unwrap().to_string(),
            "10.0.0.5"
        );
        assert_eq!(
            parse_addr_lenient("fe80::1").unwrap().to_string(),
            "fe80::1"
        );
        assert!(parse_addr_lenient("10.0.0.5/").is_err());
        assert!(parse_addr_lenient("dynamic").is_err());
    }
}
