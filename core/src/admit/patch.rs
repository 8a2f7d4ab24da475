//! The JSONPatch of a network mutation.
//!
//! Values are set with RFC 6902 `add`, which creates a member or replaces it (DANM sent
//! `replace`, which fails on a member that does not exist yet, such as `Options` of a
//! network written without it); a missing parent (`spec`, `spec.Options`,
//! `metadata.annotations`) is added first. The one `remove` drops a reservation
//! annotation a created TenantNetwork copied from another and gets no id for.

use danm_crds::NetworkSpec;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
use serde::Serialize;
use serde_json::{Value, json};

use super::vni::VNI_RESERVATION_ANNOTATION;

/// What becomes of the reservation annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenAnnotation<'a> {
    /// Set to this token.
    Set(&'a str),
    /// Removed if present (a created network that holds no id: a copied manifest may carry
    /// another network's token).
    Strip,
    /// Left as it is.
    Keep,
}

/// The patch that turns `object` (whose spec is `before`) into one whose spec is `after`,
/// with the reservation annotation as `annotation` says.
pub fn network_patch(
    object: &Value,
    before: &NetworkSpec,
    after: &NetworkSpec,
    annotation: TokenAnnotation,
) -> Patch {
    let mut ops = Vec::new();
    let spec = object.get("spec");
    let spec_exists = spec.is_some_and(Value::is_object);
    let options_exist = spec
        .and_then(|s| s.get("Options"))
        .is_some_and(Value::is_object);

    let mut top = Vec::new();
    if before.network_type != after.network_type {
        top.push(("NetworkType", json!(after.network_type)));
    }
    if before.network_id != after.network_id {
        top.push(("NetworkID", json!(after.network_id)));
    }
    let (b, a) = (&before.options, &after.options);
    let mut options = Vec::new();
    changed(&mut options, "host_device", &b.host_device, &a.host_device);
    changed(&mut options, "vlan", &b.vlan, &a.vlan);
    changed(&mut options, "vxlan", &b.vxlan, &a.vxlan);
    changed(
        &mut options,
        "allocation_pool",
        &b.allocation_pool,
        &a.allocation_pool,
    );
    changed(
        &mut options,
        "allocation_pool_v6",
        &b.allocation_pool_v6,
        &a.allocation_pool_v6,
    );

    if !spec_exists && (!top.is_empty() || !options.is_empty()) {
        ops.push(add(&["spec"], json!({})));
    }
    for (field, value) in top {
        ops.push(add(&["spec", field], value));
    }
    if !options_exist && !options.is_empty() {
        ops.push(add(&["spec", "Options"], json!({})));
    }
    for (field, value) in options {
        ops.push(add(&["spec", "Options", field], value));
    }
    let annotations = object.pointer("/metadata/annotations");
    if annotation == TokenAnnotation::Strip
        && annotations.is_some_and(|a| a.get(VNI_RESERVATION_ANNOTATION).is_some())
    {
        ops.push(PatchOperation::Remove(RemoveOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations", VNI_RESERVATION_ANNOTATION]),
        }));
    }
    if let TokenAnnotation::Set(token) = annotation {
        if !object.get("metadata").is_some_and(Value::is_object) {
            ops.push(add(
                &["metadata"],
                json!({ "annotations": { VNI_RESERVATION_ANNOTATION: token } }),
            ));
        } else if annotations.is_some_and(Value::is_object) {
            ops.push(add(
                &["metadata", "annotations", VNI_RESERVATION_ANNOTATION],
                json!(token),
            ));
        } else {
            ops.push(add(
                &["metadata", "annotations"],
                json!({ VNI_RESERVATION_ANNOTATION: token }),
            ));
        }
    }
    Patch(ops)
}

fn changed<T: PartialEq + Serialize>(
    ops: &mut Vec<(&'static str, Value)>,
    field: &'static str,
    before: &Option<T>,
    after: &Option<T>,
) {
    if before != after
        && let Some(value) = after
    {
        ops.push((
            field,
            serde_json::to_value(value).expect("spec fields serialize"),
        ));
    }
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}
