//! Sets of addresses of one family as sorted, disjoint, inclusive ranges: what an
//! nftables interval set holds. A peer list becomes one set (CIDRs minus their exceptions,
//! plus the addresses of pods), so a rule is one lookup however many peers it names.

use std::net::IpAddr;

use ipnet::IpNet;

/// Addresses of both families.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressSet {
    /// IPv4 ranges, as `u32` values widened.
    pub v4: Ranges,
    /// IPv6 ranges.
    pub v6: Ranges,
}

impl AddressSet {
    /// Adds every address of `net`.
    pub fn insert_net(&mut self, net: IpNet) {
        let (first, last) = bounds(net);
        self.family_mut(net.addr()).insert(first, last);
    }

    /// Removes every address of `net`.
    pub fn remove_net(&mut self, net: IpNet) {
        let (first, last) = bounds(net);
        self.family_mut(net.addr()).remove(first, last);
    }

    /// Adds one address.
    pub fn insert(&mut self, ip: IpAddr) {
        let value = value(ip);
        self.family_mut(ip).insert(value, value);
    }

    /// Adds every address of `other`.
    pub fn extend(&mut self, other: &AddressSet) {
        for &(first, last) in &other.v4.0 {
            self.v4.insert(first, last);
        }
        for &(first, last) in &other.v6.0 {
            self.v6.insert(first, last);
        }
    }

    /// Whether `ip` is in the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let value = value(ip);
        match ip {
            IpAddr::V4(_) => self.v4.contains(value),
            IpAddr::V6(_) => self.v6.contains(value),
        }
    }

    /// Whether the set holds no address.
    pub fn is_empty(&self) -> bool {
        self.v4.0.is_empty() && self.v6.0.is_empty()
    }

    fn family_mut(&mut self, ip: IpAddr) -> &mut Ranges {
        match ip {
            IpAddr::V4(_) => &mut self.v4,
            IpAddr::V6(_) => &mut self.v6,
        }
    }
}

/// Sorted, disjoint, non-adjacent inclusive ranges of one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ranges(Vec<(u128, u128)>);

impl Ranges {
    /// The ranges, in order.
    pub fn ranges(&self) -> &[(u128, u128)] {
        &self.0
    }

    fn insert(&mut self, mut first: u128, mut last: u128) {
        let mut kept = Vec::with_capacity(self.0.len() + 1);
        for &(a, b) in &self.0 {
            // Disjoint and not adjacent: kept as it is; otherwise merged into the new one.
            if b.saturating_add(1) < first || last.saturating_add(1) < a {
                kept.push((a, b));
            } else {
                first = first.min(a);
                last = last.max(b);
            }
        }
        kept.push((first, last));
        kept.sort_unstable();
        self.0 = kept;
    }

    fn remove(&mut self, first: u128, last: u128) {
        let mut kept = Vec::with_capacity(self.0.len() + 1);
        for &(a, b) in &self.0 {
            if b < first || last < a {
                kept.push((a, b));
                continue;
            }
            if a < first {
                kept.push((a, first - 1));
            }
            if last < b {
                kept.push((last + 1, b));
            }
        }
        self.0 = kept;
    }

    fn contains(&self, value: u128) -> bool {
        self.0.iter().any(|&(a, b)| a <= value && value <= b)
    }
}

fn value(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn bounds(net: IpNet) -> (u128, u128) {
    let net = net.trunc();
    (value(net.network()), value(net.broadcast()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_cidr_minus_its_exceptions_keeps_the_rest() {
        let mut set = AddressSet::default();
        set.insert_net(net("10.0.0.0/24"));
        set.remove_net(net("10.0.0.128/25"));
        set.remove_net(net("10.0.0.16/28"));
        assert_eq!(
            set.v4.ranges(),
            [(0x0a00_0000, 0x0a00_000f), (0x0a00_0020, 0x0a00_007f)]
        );
        assert!(set.contains("10.0.0.15".parse().unwrap()));
        assert!(!set.contains("10.0.0.16".parse().unwrap()));
        assert!(!set.contains("10.0.0.200".parse().unwrap()));
        assert!(set.v6.ranges().is_empty());
    }

    #[test]
    fn adjacent_and_overlapping_ranges_merge() {
        let mut set = AddressSet::default();
        set.insert("10.0.0.1".parse().unwrap());
        set.insert("10.0.0.2".parse().unwrap());
        set.insert_net(net("10.0.0.0/30"));
        set.insert_net(net("fd00::/127"));
        assert_eq!(set.v4.ranges(), [(0x0a00_0000, 0x0a00_0003)]);
        assert_eq!(set.v6.ranges().len(), 1);
    }

    #[test]
    fn the_whole_space_and_its_edges() {
        let mut set = AddressSet::default();
        set.insert_net(net("0.0.0.0/0"));
        set.remove_net(net("0.0.0.0/32"));
        set.remove_net(net("255.255.255.255/32"));
        assert_eq!(set.v4.ranges(), [(1, u128::from(u32::MAX) - 1)]);
        set.insert_net(net("::/0"));
        set.remove_net(net("::/1"));
        assert_eq!(set.v6.ranges(), [(1u128 << 127, u128::MAX)]);
    }

    proptest! {
        /// Whatever the order of adds and removes, membership is what the operations say
        /// (checked on a small space) and the ranges stay sorted, disjoint, not adjacent.
        #[test]
        fn membership_follows_the_operations(ops in proptest::collection::vec((any::<bool>(), 0u8..=255, 24u8..=32), 0..40)) {
            let mut set = AddressSet::default();
            let mut model = [false; 256];
            for (add, at, prefix) in ops {
                let n: IpNet = format!("10.0.0.{at}/{prefix}").parse().unwrap();
                let n = n.trunc();
                let (a, b) = (value(n.network()) as usize & 255, value(n.broadcast()) as usize & 255);
                for slot in &mut model[a..=b] {
                    *slot = add;
                }
                if add { set.insert_net(n) } else { set.remove_net(n) }
            }
            for (i, &expected) in model.iter().enumerate() {
                let ip: IpAddr = format!("10.0.0.{i}").parse().unwrap();
                prop_assert_eq!(set.contains(ip), expected, "{}", ip);
            }
            for pair in set.v4.ranges().windows(2) {
                prop_assert!(pair[0].1 + 1 < pair[1].0, "{:?}", pair);
            }
        }
    }
}
