//! What ipamd keeps in memory of each endpoint record: its keys, its node and its
//! addresses, in 136 bytes ([`EndpointSummary`]). The rest of a DanmEp (pod, UID,
//! netns, MAC, routes) is read from the store when a caller needs it.
//!
//! Strings that many records share (namespaces, node names, interface names, networks) are
//! held once through an [`Interner`]; a container id of 64 hex digits (what every runtime
//! writes) is held as its 32 bytes.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use danm_core::{NetworkKey, OwnerKey};

use super::EndpointRecord;

/// A container id: 64 lowercase hex digits as their 32 bytes, anything else as text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) enum ContainerId {
    Hex([u8; 32]),
    Text(Box<str>),
}

impl ContainerId {
    pub(super) fn new(id: &str) -> ContainerId {
        let digits = id.as_bytes();
        let hex = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        if digits.len() == 64 {
            let mut bytes = [0u8; 32];
            let decoded = digits.chunks(2).zip(bytes.iter_mut()).all(|(pair, byte)| {
                match (hex(pair[0]), hex(pair[1])) {
                    (Some(high), Some(low)) => {
                        *byte = high << 4 | low;
                        true
                    }
                    _ => false,
                }
            });
            if decoded {
                return ContainerId::Hex(bytes);
            }
        }
        ContainerId::Text(id.into())
    }

    fn text(&self) -> String {
        match self {
            ContainerId::Hex(bytes) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
            ContainerId::Text(text) => text.to_string(),
        }
    }

    fn is(&self, id: &str) -> bool {
        match self {
            ContainerId::Text(text) => &**text == id,
            hex => id.len() == 64 && *hex == ContainerId::new(id),
        }
    }
}

impl std::fmt::Debug for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.text())
    }
}

/// One endpoint record as ipamd keeps it in memory; see the module overview.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSummary {
    container: ContainerId,
    ifname: Arc<str>,
    namespace: Arc<str>,
    network: Arc<NetworkKey>,
    host: Arc<str>,
    /// `Interface.Address` and `Interface.AddressIPv6`, without their prefix lengths, each
    /// as written (a record whose fields hold the wrong family still names both: the orphan
    /// reclaimer must never free an address a record names).
    addresses: [Option<IpAddr>; 2],
}

impl EndpointSummary {
    /// The summary of a record, its shared strings taken from `interner`.
    pub fn of(record: &EndpointRecord, interner: &mut Interner) -> EndpointSummary {
        let interface = &record.spec.interface;
        let address = |text: &str| danm_core::addr::parse_addr_lenient(text).ok();
        EndpointSummary {
            container: ContainerId::new(&record.owner.container_id),
            ifname: interner.text(&record.owner.ifname),
            namespace: interner.text(&record.namespace),
            network: interner.network(&record.network),
            host: interner.text(&record.spec.host),
            addresses: [
                address(&interface.address),
                address(&interface.address_ipv6),
            ],
        }
    }

    /// The container id as kept.
    pub(super) fn container(&self) -> &ContainerId {
        &self.container
    }

    /// The owner key (container id and interface name).
    pub fn owner(&self) -> OwnerKey {
        OwnerKey {
            container_id: self.container.text(),
            ifname: self.ifname.to_string(),
        }
    }

    /// Whether the owner is `owner`.
    pub fn is_owned_by(&self, owner: &OwnerKey) -> bool {
        *self.ifname == *owner.ifname && self.container.is(&owner.container_id)
    }

    /// Whether the record belongs to the container `container_id`.
    pub fn is_of_container(&self, container_id: &str) -> bool {
        self.container.is(container_id)
    }

    /// The namespace of the pod (where the DanmEp lives).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The network.
    pub fn network(&self) -> &NetworkKey {
        &self.network
    }

    /// The node the record was attached on (empty when unknown).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The addresses the record names (`Interface.Address` first).
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses.iter().flatten().copied()
    }

    /// Whether the record names `address`.
    pub fn names(&self, address: IpAddr) -> bool {
        self.addresses().any(|a| a == address)
    }
}

/// Shared copies of the strings and networks many records repeat, until
/// [`Interner::prune`] forgets those no summary holds.
#[derive(Debug, Default)]
pub struct Interner {
    texts: HashSet<Arc<str>>,
    networks: HashSet<Arc<NetworkKey>>,
}

impl Interner {
    /// Forgets what no summary holds any more.
    pub(super) fn prune(&mut self) {
        self.texts.retain(|t| Arc::strong_count(t) > 1);
        self.networks.retain(|n| Arc::strong_count(n) > 1);
    }

    fn text(&mut self, text: &str) -> Arc<str> {
        if let Some(known) = self.texts.get(text) {
            return Arc::clone(known);
        }
        let new: Arc<str> = text.into();
        self.texts.insert(Arc::clone(&new));
        new
    }

    fn network(&mut self, key: &NetworkKey) -> Arc<NetworkKey> {
        if let Some(known) = self.networks.get(key) {
            return Arc::clone(known);
        }
        let new = Arc::new(key.clone());
        self.networks.insert(Arc::clone(&new));
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use danm_core::NetworkKind;
    use danm_crds::{DanmEpIface, DanmEpSpec};

    fn record(container_id: &str, address: &str, address6: &str) -> EndpointRecord {
        let owner = OwnerKey::new(container_id, "net1").unwrap();
        EndpointRecord {
            network: NetworkKey::new(NetworkKind::DanmNet, "ns", "internal"),
            namespace: "ns".into(),
            spec: DanmEpSpec {
                host: "node-1".into(),
                pod: "pod".into(),
                interface: DanmEpIface {
                    name: owner.ifname.clone(),
                    address: address.into(),
                    address_ipv6: address6.into(),
                    ..Default::default()
                },
                ..Default::default()
            },
            owner,
        }
    }

    #[test]
    fn a_runtime_container_id_is_kept_as_bytes_and_given_back_exactly() {
        let id = "0123456789abcdef".repeat(4);
        let summary = EndpointSummary::of(&record(&id, "", ""), &mut Interner::default());
        assert!(matches!(summary.container, ContainerId::Hex(_)));
        assert_eq!(summary.owner(), OwnerKey::new(&id, "net1").unwrap());
        assert!(summary.is_of_container(&id));
        assert!(!summary.is_of_container(&id.to_uppercase()));
        assert!(!summary.is_of_container(&id[..63]));
    }

    #[test]
    fn any_other_container_id_is_kept_as_text() {
        let mut interner = Interner::default();
        for id in [
            "pod-a",
            &"0123456789ABCDEF".repeat(4),
            &"0123456789abcdeg".repeat(4),
            &"ab".repeat(40),
        ] {
            let summary = EndpointSummary::of(&record(id, "", ""), &mut interner);
            assert!(matches!(summary.container, ContainerId::Text(_)), "{id}");
            assert_eq!(summary.owner().container_id, id);
            assert!(summary.is_of_container(id));
            assert!(summary.is_owned_by(&OwnerKey::new(id, "net1").unwrap()));
            assert!(!summary.is_owned_by(&OwnerKey::new(id, "net2").unwrap()));
        }
    }

    #[test]
    fn addresses_are_kept_without_prefix_and_junk_is_dropped() {
        let summary = EndpointSummary::of(
            &record("c", "10.0.0.5/24", "fd00::7/64"),
            &mut Interner::default(),
        );
        let kept: Vec<String> = summary.addresses().map(|a| a.to_string()).collect();
        assert_eq!(kept, ["10.0.0.5", "fd00::7"]);
        assert!(summary.names("10.0.0.5".parse().unwrap()));
        assert!(!summary.names("10.0.0.6".parse().unwrap()));
        // Both fields are named even when they hold one family: nothing they name may be
        // taken for an orphan.
        let odd = EndpointSummary::of(
            &record("c", "fd00::1", "fd00::2/64"),
            &mut Interner::default(),
        );
        assert!(odd.names("fd00::1".parse().unwrap()) && odd.names("fd00::2".parse().unwrap()));
        let none = EndpointSummary::of(&record("c", "none", ""), &mut Interner::default());
        assert_eq!(none.addresses().count(), 0);
    }

    #[test]
    fn shared_strings_are_held_once_and_a_summary_stays_small() {
        let mut interner = Interner::default();
        let a = EndpointSummary::of(&record("a", "", ""), &mut interner);
        let b = EndpointSummary::of(&record("b", "", ""), &mut interner);
        assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
        assert!(Arc::ptr_eq(&a.host, &b.host));
        assert!(Arc::ptr_eq(&a.ifname, &b.ifname));
        assert!(Arc::ptr_eq(&a.network, &b.network));
        assert!(std::mem::size_of::<EndpointSummary>() <= 136);
        drop(b);
        interner.prune();
        assert_eq!(
            interner.texts.len(),
            3,
            "held by a: namespace, node, interface"
        );
        drop(a);
        interner.prune();
        assert!(interner.texts.is_empty() && interner.networks.is_empty());
    }
}
