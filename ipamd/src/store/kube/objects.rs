//! How the Kubernetes store's objects look: the labels and annotations it writes, and the
//! conversions between AllocationShards and DanmEps and the store's types.

use std::collections::BTreeMap;

use danm_core::{Family, NetworkKey, NetworkKind, OwnerKey};
use danm_crds::{AllocationShard, DanmEp};
use kube::ResourceExt;

use crate::store::{EndpointRecord, ShardKey, StoreError, StoreResult, StoredShard};

pub(super) use danm_crds::names::{
    CONTAINER_ID_LABEL, FAMILY_LABEL, NETWORK_ANNOTATION, NETWORK_KIND_LABEL, NETWORK_NAME_LABEL,
    NETWORK_NAMESPACE_LABEL, OWNER_FINGERPRINT_LABEL, SHARD_INDEX_ANNOTATION,
};

pub(super) fn map_err(what: impl Fn() -> String) -> impl Fn(kube::Error) -> StoreError {
    move |e| match &e {
        kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists" => {
            StoreError::AlreadyExists(what())
        }
        kube::Error::Api(s) if s.code == 409 => StoreError::Conflict(what()),
        kube::Error::Api(s) if s.code == 404 => StoreError::NotFound(what()),
        _ => StoreError::Unavailable(format!("{}: {e}", what())),
    }
}

pub(super) fn label_value(text: &str) -> String {
    // Label values: at most 63 characters of [A-Za-z0-9._-]; names and namespaces fit.
    text.chars().take(63).collect()
}

pub(super) fn fingerprint_label(fingerprint: u64) -> String {
    format!("{fingerprint:016x}")
}

pub(super) fn network_labels(key: &NetworkKey) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NETWORK_KIND_LABEL.to_owned(), key.kind.as_str().to_owned()),
        (
            NETWORK_NAMESPACE_LABEL.to_owned(),
            label_value(&key.namespace),
        ),
        (NETWORK_NAME_LABEL.to_owned(), label_value(&key.name)),
    ])
}

pub(super) fn network_selector(key: &NetworkKey) -> String {
    format!(
        "{NETWORK_KIND_LABEL}={},{NETWORK_NAMESPACE_LABEL}={},{NETWORK_NAME_LABEL}={}",
        key.kind.as_str(),
        label_value(&key.namespace),
        label_value(&key.name)
    )
}

/// The record a DanmEp holds; its network as every component reads it
/// ([`danm_core::endpoint::network`]).
pub(super) fn to_record(ep: DanmEp) -> StoreResult<EndpointRecord> {
    let name = ep.name_any();
    // ipamd reads, as it always did, only the records that say their kind (its own, and
    // DANM's with `apiType`): one without is left to the cleaner and the webhook, which
    // count it on a DanmNet, and ipamd neither serves nor releases it.
    let network = danm_core::endpoint::network(&ep)
        .filter(|_| danm_core::endpoint::kind_recorded(&ep))
        .ok_or_else(|| StoreError::Unreadable {
            key: name.clone(),
            reason: "no network kind (neither its label nor apiType)".into(),
        })?;
    let namespace = ep.namespace().unwrap_or_default();
    let owner = OwnerKey::new(&ep.spec.cid, &ep.spec.interface.name).map_err(|e| {
        StoreError::Unreadable {
            key: name,
            reason: e.to_string(),
        }
    })?;
    Ok(EndpointRecord {
        owner,
        network,
        namespace,
        spec: ep.spec,
    })
}

pub(super) fn to_stored(object: AllocationShard) -> StoreResult<StoredShard> {
    let name = object.name_any();
    let unreadable = |reason: &str| StoreError::Unreadable {
        key: name.clone(),
        reason: reason.to_owned(),
    };
    let network = object
        .annotations()
        .get(NETWORK_ANNOTATION)
        .and_then(|n| {
            let mut parts = n.splitn(3, '/');
            let kind = NetworkKind::parse(parts.next()?)?;
            Some(NetworkKey::new(kind, parts.next()?, parts.next()?))
        })
        .ok_or_else(|| unreadable("no danm.io/network annotation"))?;
    let index = object
        .annotations()
        .get(SHARD_INDEX_ANNOTATION)
        .and_then(|i| u128::from_str_radix(i, 16).ok())
        .ok_or_else(|| unreadable("no shard index annotation"))?;
    // The key's family comes from what ipamd wrote when it created the object (its name,
    // which cannot change, else its danm.io/family label), never from the spec: the spec's
    // `family` is then checked against it (core::codec::decode_shard), so a shard whose
    // spec says another family is refused as corrupt.
    let family = Family::ALL
        .into_iter()
        .find(|f| {
            ShardKey {
                network: network.clone(),
                family: *f,
                index,
            }
            .name()
                == name
        })
        .or_else(|| {
            let tag = object.labels().get(FAMILY_LABEL)?;
            Family::ALL.into_iter().find(|f| f.tag() == tag)
        })
        .ok_or_else(|| {
            unreadable("neither its name nor its danm.io/family label names a family")
        })?;
    Ok(StoredShard {
        key: ShardKey {
            network,
            family,
            index,
        },
        version: object.resource_version().unwrap_or_default(),
        spec: object.spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use danm_core::codec::{ShardError, decode_shard};
    use danm_crds::AllocationShardSpec;

    #[test]
    fn a_shards_family_is_its_names_and_a_spec_saying_otherwise_is_refused() {
        let network = NetworkKey::new(NetworkKind::DanmNet, "ns", "net");
        let key = ShardKey {
            network: network.clone(),
            family: Family::V4,
            index: 0,
        };
        let bits = danm_core::ShardBits::new().encode();
        let mut object = AllocationShard::new(
            &key.name(),
            AllocationShardSpec {
                family: "IPv6".into(),
                first: "10.0.0.0".into(),
                crc32: bits.crc32,
                payload: bits.payload,
                ..Default::default()
            },
        );
        object.metadata.annotations = Some(
            [
                (NETWORK_ANNOTATION.to_owned(), "DanmNet/ns/net".to_owned()),
                (SHARD_INDEX_ANNOTATION.to_owned(), "0".to_owned()),
            ]
            .into(),
        );
        let stored = to_stored(object.clone()).unwrap();
        assert_eq!(stored.key, key, "the family of the name, not of the spec");
        assert!(matches!(
            decode_shard(&stored.spec, stored.key.family),
            Err(ShardError::Family { .. })
        ));
        // Without a name of ipamd's, the label says it.
        object.metadata.name = Some("renamed".into());
        object.metadata.labels = Some([(FAMILY_LABEL.to_owned(), "v4".to_owned())].into());
        assert_eq!(to_stored(object.clone()).unwrap().key.family, Family::V4);
        object.metadata.labels = None;
        assert!(to_stored(object).is_err());
    }
}
