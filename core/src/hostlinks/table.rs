//! [`LinkTable`]: the host links every network asks for, by name and by segment (parent
//! device and id), so that admission answers "who else wants this link?" with one lookup.
//!
//! The rule it serves ([`LinkTable::clashes`]): a TenantNetwork never shares a link or a
//! segment with another network (a tenant must not join another tenant's or the platform's
//! segment, nor take a link over), and no network asks for a link name another network
//! already asks for with another device or id. Networks of the administrators' kinds may
//! share one link by asking exactly the same thing (DANM's behaviour).

use std::collections::{BTreeMap, HashMap, HashSet};

use danm_crds::NetworkSpec;

use super::{LinkSpec, network_links};
use crate::{NetworkKey, NetworkKind};

/// See the module overview.
#[derive(Clone, Debug, Default)]
pub struct LinkTable {
    /// Every network recorded, with links or not (a policy's network selector names them).
    known: HashSet<NetworkKey>,
    by_network: HashMap<NetworkKey, Vec<(String, LinkSpec)>>,
    by_name: HashMap<String, BTreeMap<NetworkKey, LinkSpec>>,
    by_segment: BTreeMap<LinkSpec, BTreeMap<NetworkKey, String>>,
}

/// Why a network's links cannot be admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkClash {
    /// Another network asks for the link name: with another device or id (`shared` false),
    /// or with the same one where a TenantNetwork is involved (`shared` true).
    Name {
        /// The link.
        name: String,
        /// The other network.
        holder: NetworkKey,
        /// Whether both ask for the same device and id.
        shared: bool,
    },
    /// Another network's link, under another name, is on the same device with the same id,
    /// and a TenantNetwork is involved.
    Segment {
        /// This network's link.
        name: String,
        /// The other network.
        holder: NetworkKey,
    },
}

impl LinkTable {
    /// Records (or replaces) the links of `key`; a network whose links cannot be worked
    /// out (a bad id) holds none.
    pub fn insert(&mut self, key: &NetworkKey, spec: &NetworkSpec) {
        self.remove(key);
        self.known.insert(key.clone());
        let links = network_links(spec).unwrap_or_default();
        for (name, link) in &links {
            self.by_name
                .entry(name.clone())
                .or_default()
                .insert(key.clone(), link.clone());
            self.by_segment
                .entry(link.clone())
                .or_default()
                .insert(key.clone(), name.clone());
        }
        if !links.is_empty() {
            self.by_network.insert(key.clone(), links);
        }
    }

    /// Forgets the links of `key`.
    pub fn remove(&mut self, key: &NetworkKey) {
        self.known.remove(key);
        let Some(links) = self.by_network.remove(key) else {
            return;
        };
        for (name, link) in links {
            if let Some(holders) = self.by_name.get_mut(&name) {
                holders.remove(key);
                if holders.is_empty() {
                    self.by_name.remove(&name);
                }
            }
            if let Some(holders) = self.by_segment.get_mut(&link) {
                holders.remove(key);
                if holders.is_empty() {
                    self.by_segment.remove(&link);
                }
            }
        }
    }

    /// Replaces every network of `kind` by `networks` (a fresh list of that kind).
    pub fn replace_kind<'a>(
        &mut self,
        kind: NetworkKind,
        networks: impl IntoIterator<Item = (&'a NetworkKey, &'a NetworkSpec)>,
    ) {
        let stale: Vec<NetworkKey> = self
            .known
            .iter()
            .filter(|k| k.kind == kind)
            .cloned()
            .collect();
        for key in stale {
            self.remove(&key);
        }
        for (key, spec) in networks {
            self.insert(key, spec);
        }
    }

    /// Whether the network `key` is recorded (with links or not).
    pub fn knows(&self, key: &NetworkKey) -> bool {
        self.known.contains(key)
    }

    /// Networks with links recorded.
    pub fn len(&self) -> usize {
        self.by_network.len()
    }

    /// Whether no network has a link.
    pub fn is_empty(&self) -> bool {
        self.by_network.is_empty()
    }

    /// Whether some network has a link on this device with this id.
    pub fn in_use(&self, segment: &LinkSpec) -> bool {
        self.by_segment.contains_key(segment)
    }

    /// What keeps network `me` from having `links` (its own entries aside).
    pub fn clashes(&self, me: &NetworkKey, links: &[(String, LinkSpec)]) -> Vec<LinkClash> {
        let tenant = |k: &NetworkKey| k.kind == NetworkKind::TenantNetwork;
        let mut out = Vec::new();
        for (name, link) in links {
            for (other, theirs) in self.by_name.get(name).into_iter().flatten() {
                if other == me {
                    continue;
                }
                let shared = theirs == link;
                if !shared || tenant(me) || tenant(other) {
                    out.push(LinkClash::Name {
                        name: name.clone(),
                        holder: other.clone(),
                        shared,
                    });
                }
            }
            for (other, their_name) in self.by_segment.get(link).into_iter().flatten() {
                if other != me && their_name != name && (tenant(me) || tenant(other)) {
                    out.push(LinkClash::Segment {
                        name: name.clone(),
                        holder: other.clone(),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use danm_crds::NetworkOptions;

    fn spec(id: &str, device: &str, vlan: Option<i64>, vxlan: Option<i64>) -> NetworkSpec {
        NetworkSpec {
            network_id: id.into(),
            options: NetworkOptions {
                host_device: Some(device.into()),
                vlan,
                vxlan,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn links(s: &NetworkSpec) -> Vec<(String, LinkSpec)> {
        network_links(s).unwrap()
    }

    #[test]
    fn one_tenant_cannot_take_or_join_another_tenants_link() {
        let a = NetworkKey::new(NetworkKind::TenantNetwork, "tenant-a", "net");
        let b = NetworkKey::new(NetworkKind::TenantNetwork, "tenant-b", "net");
        let mut table = LinkTable::default();
        table.insert(&a, &spec("shared", "eth1", None, Some(700)));
        // Same NetworkID, another VNI: the name is taken.
        let clashes = table.clashes(&b, &links(&spec("shared", "eth1", None, Some(701))));
        assert_eq!(
            clashes,
            vec![LinkClash::Name {
                name: "vx_shared".into(),
                holder: a.clone(),
                shared: false
            }]
        );
        // Same NetworkID and VNI: joining a's segment, refused too.
        let clashes = table.clashes(&b, &links(&spec("shared", "eth1", None, Some(700))));
        assert!(matches!(&clashes[0], LinkClash::Name { shared: true, .. }));
        // Another NetworkID on a's segment.
        let clashes = table.clashes(&b, &links(&spec("other", "eth1", None, Some(700))));
        assert_eq!(
            clashes,
            vec![LinkClash::Segment {
                name: "vx_other".into(),
                holder: a.clone()
            }]
        );
        // Its own links are no clash (an UPDATE), and another device or id is free.
        assert!(
            table
                .clashes(&a, &links(&spec("shared", "eth1", None, Some(700))))
                .is_empty()
        );
        assert!(
            table
                .clashes(&b, &links(&spec("other", "eth1", None, Some(701))))
                .is_empty()
        );
    }

    #[test]
    fn administrators_networks_may_share_a_link_only_by_asking_the_same() {
        let a = NetworkKey::new(NetworkKind::ClusterNetwork, "", "a");
        let b = NetworkKey::new(NetworkKind::DanmNet, "ns", "b");
        let t = NetworkKey::new(NetworkKind::TenantNetwork, "tenant", "t");
        let mut table = LinkTable::default();
        table.insert(&a, &spec("platform", "eth1", Some(100), None));
        assert!(
            table
                .clashes(&b, &links(&spec("platform", "eth1", Some(100), None)))
                .is_empty(),
            "DANM's shared link"
        );
        assert_eq!(
            table
                .clashes(&b, &links(&spec("platform", "eth2", Some(100), None)))
                .len(),
            1,
            "same name, another device"
        );
        // A tenant may neither share the platform's link nor its segment.
        assert_eq!(
            table
                .clashes(&t, &links(&spec("platform", "eth1", Some(100), None)))
                .len(),
            1
        );
        // An administrator may not join a tenant's segment either.
        table.insert(&t, &spec("tenant", "eth1", Some(200), None));
        assert!(table.in_use(&LinkSpec::Vlan {
            parent: "eth1".into(),
            id: 200
        }));
        assert_eq!(
            table
                .clashes(&b, &links(&spec("mine", "eth1", Some(200), None)))
                .len(),
            1
        );
        // Forgotten when removed or relisted.
        table.remove(&t);
        assert!(!table.in_use(&LinkSpec::Vlan {
            parent: "eth1".into(),
            id: 200
        }));
        table.replace_kind(NetworkKind::ClusterNetwork, []);
        assert!(table.is_empty());
    }
}
