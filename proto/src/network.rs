//! Networks as the API names them and as the rest of the suite does (`danm_core`): the one
//! place a kind or a network key is converted, for ipamd and every client.

use danm_core::{NetworkKey, NetworkKind};

use crate::v1;

impl From<NetworkKind> for v1::NetworkKind {
    fn from(kind: NetworkKind) -> v1::NetworkKind {
        match kind {
            NetworkKind::DanmNet => v1::NetworkKind::DanmNet,
            NetworkKind::TenantNetwork => v1::NetworkKind::TenantNetwork,
            NetworkKind::ClusterNetwork => v1::NetworkKind::ClusterNetwork,
        }
    }
}

/// A kind as the API carries it (an `i32` on the wire); `None` for the unspecified value
/// and for numbers the API does not define.
pub fn kind_from_wire(kind: i32) -> Option<NetworkKind> {
    match v1::NetworkKind::try_from(kind).ok()? {
        v1::NetworkKind::DanmNet => Some(NetworkKind::DanmNet),
        v1::NetworkKind::TenantNetwork => Some(NetworkKind::TenantNetwork),
        v1::NetworkKind::ClusterNetwork => Some(NetworkKind::ClusterNetwork),
        v1::NetworkKind::Unspecified => None,
    }
}

impl From<&NetworkKey> for v1::NetworkRef {
    fn from(key: &NetworkKey) -> v1::NetworkRef {
        v1::NetworkRef {
            kind: v1::NetworkKind::from(key.kind) as i32,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_goes_to_the_wire_and_back() {
        for kind in NetworkKind::ALL {
            let key = NetworkKey::new(kind, "ns", "net");
            let wire = v1::NetworkRef::from(&key);
            assert_eq!(kind_from_wire(wire.kind), Some(kind));
            assert_eq!((wire.namespace, wire.name), (key.namespace, key.name));
        }
        assert_eq!(kind_from_wire(v1::NetworkKind::Unspecified as i32), None);
        assert_eq!(kind_from_wire(42), None);
    }
}
