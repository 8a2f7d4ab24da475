//! How the Kubernetes store's objects look: the labels and annotations it writes, and the
//! conversions between AllocationShards and DanmEps and the store's types.

use std::collections::BTreeMap;

use danm_core::{Family, NetworkKey, NetworkKind, OwnerKey};
use danm_crds::{AllocationShard, DanmEp};
use kube::ResourceExt;

use crate::store::{EndpointRecord, ShardKey, StoreError, StoreResult, StoredShard};

pub(super) const LABEL_KIND: &str = danm_crds::NETWORK_KIND_LABEL;
pub(super) const LABEL_NAMESPACE: &str = danm_crds::NETWORK_NAMESPACE_LABEL;
pub(super) const LABEL_NAME: &str = "danm.io/network-name";
pub(super) const LABEL_FAMILY: &str = "danm.io/family";
pub(super) const LABEL_CONTAINER: &str = "danm.io/container-id";
pub(super) const LABEL_FINGERPRINT: &str = "danm.io/owner-fingerprint";
pub(super) const ANNOTATION_INDEX: &str = "danm.io/shard-index";
pub(super) const ANNOTATION_NETWORK: &str = "danm.io/network";

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
        (LABEL_KIND.to_owned(), key.kind.as_str().to_owned()),
        (LABEL_NAMESPACE.to_owned(), label_value(&key.namespace)),
        (LABEL_NAME.to_owned(), label_value(&key.name)),
    ])
}

pub(super) fn network_selector(key: &NetworkKey) -> String {
    format!(
        "{LABEL_KIND}={},{LABEL_NAMESPACE}={},{LABEL_NAME}={}",
        key.kind.as_str(),
        label_value(&key.namespace),
        label_value(&key.name)
    )
}

/// The record a DanmEp holds; its network as every component reads it
/// ([`danm_core::endpoint::network`]).
pub(super) fn to_record(ep: DanmEp) -> StoreResult<EndpointRecord> {
    let name = ep.name_any();
    let network = danm_core::endpoint::network(&ep).ok_or_else(|| StoreError::Unreadable {
        key: name.clone(),
        reason: "no network (name, or a known kind)".into(),
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
        .get(ANNOTATION_NETWORK)
        .and_then(|n| {
            let mut parts = n.splitn(3, '/');
            let kind = NetworkKind::parse(parts.next()?)?;
            Some(NetworkKey::new(kind, parts.next()?, parts.next()?))
        })
        .ok_or_else(|| unreadable("no danm.io/network annotation"))?;
    let family = Family::parse(&object.spec.family).ok_or_else(|| unreadable("unknown family"))?;
    let index = object
        .annotations()
        .get(ANNOTATION_INDEX)
        .and_then(|i| u128::from_str_radix(i, 16).ok())
        .ok_or_else(|| unreadable("no shard index annotation"))?;
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
