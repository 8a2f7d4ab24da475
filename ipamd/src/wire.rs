//! The wire contract of the `danm.ipam.v1` API on ipamd's side: decoding requests' network
//! references, encoding networks, and the one place gRPC status codes are chosen.
//!
//! `INVALID_ARGUMENT` for malformed requests (bad owner, bad address, unknown field, address
//! outside the network), `NOT_FOUND` for an unknown network or owner, `ALREADY_EXISTS` for a
//! static address in use, `RESOURCE_EXHAUSTED` for a full pool, `FAILED_PRECONDITION` for a
//! state that forbids the call (invalid network spec, corrupt shard, tenant not allowed),
//! `PERMISSION_DENIED` for a caller that may not make the call, `UNAVAILABLE` when the store
//! fails (retry).

use danm_core::{AllocError, Family, NetworkKey, NetworkPlan};
use danm_proto::v1 as pb;
use tonic::Status;

use crate::engine::EngineError;

/// The gRPC status of an engine error.
pub fn status(error: &EngineError) -> Status {
    use tonic::Code;
    let code = match error {
        EngineError::NetworkNotFound(_)
        | EngineError::NotAllocated(_)
        | EngineError::PodNotFound(_) => Code::NotFound,
        EngineError::NetworkInvalid(_)
        | EngineError::TenantNotAllowed { .. }
        | EngineError::OwnerElsewhere { .. }
        | EngineError::CheckFailed(_)
        | EngineError::NoDefaultNetwork(_) => Code::FailedPrecondition,
        EngineError::Owner(_)
        | EngineError::Interfaces(_)
        | EngineError::TooManyInterfaces { .. }
        | EngineError::DuplicateInterface { .. }
        | EngineError::DuplicateAddress { .. } => Code::InvalidArgument,
        EngineError::Alloc(a) => match a {
            AllocError::BadRequest { .. }
            | AllocError::NoSubnet { .. }
            | AllocError::OutsideCidr { .. }
            | AllocError::OutsidePool { .. }
            | AllocError::PrefixMismatch { .. }
            | AllocError::Reserved { .. } => Code::InvalidArgument,
            AllocError::InUse { .. } => Code::AlreadyExists,
            AllocError::Exhausted { .. } => Code::ResourceExhausted,
            AllocError::ShardUnusable { .. } => Code::FailedPrecondition,
        },
        EngineError::Attach { source, .. } => status(source).code(),
        EngineError::PodOnOtherNode { .. } => Code::PermissionDenied,
        EngineError::OwnerOfAnotherPod { .. } => Code::FailedPrecondition,
        EngineError::Store(_)
        | EngineError::Contention { .. }
        | EngineError::ShuttingDown
        | EngineError::Migrating(_) => Code::Unavailable,
        EngineError::Migration { .. } | EngineError::BitArrays(_) => Code::FailedPrecondition,
    };
    Status::new(code, error.to_string())
}

/// A PERMISSION_DENIED status.
pub fn denied(message: String) -> Status {
    Status::permission_denied(message)
}

/// An INVALID_ARGUMENT status naming `field`.
pub fn invalid(field: &str, message: &str) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

/// Decodes a network reference; `field` names it in errors.
pub fn network_key(r: Option<&pb::NetworkRef>, field: &str) -> Result<NetworkKey, Status> {
    let r = r.ok_or_else(|| invalid(field, "is required"))?;
    let kind = danm_proto::network::kind_from_wire(r.kind).ok_or_else(|| {
        invalid(
            &format!("{field}.kind"),
            "must be DANM_NET, TENANT_NETWORK or CLUSTER_NETWORK",
        )
    })?;
    if r.name.is_empty() {
        return Err(invalid(&format!("{field}.name"), "must not be empty"));
    }
    for (part, text) in [("name", &r.name), ("namespace", &r.namespace)] {
        danm_core::input::exact(text)
            .map_err(|e| invalid(&format!("{field}.{part}"), &e.to_string()))?;
    }
    if kind.namespaced() && r.namespace.is_empty() {
        return Err(invalid(
            &format!("{field}.namespace"),
            &format!("is required for a {kind}"),
        ));
    }
    Ok(NetworkKey::new(kind, &r.namespace, &r.name))
}

/// What ipamd's GetNetwork answers, from a network's plan, its allocated addresses per
/// family and the payload sizes of its shards.
pub fn network_info(
    plan: &NetworkPlan,
    allocated: impl Fn(Family) -> u64,
    shard_sizes: &[(Family, usize)],
) -> pb::NetworkInfo {
    let family = |family: Family| {
        plan.family(family).map(|fp| {
            let sizes = shard_sizes.iter().filter(|(f, _)| *f == family);
            pb::FamilyInfo {
                cidr: fp.cidr.to_string(),
                pool_start: fp.pool_start().map(|a| a.to_string()).unwrap_or_default(),
                pool_end: fp.pool_end().map(|a| a.to_string()).unwrap_or_default(),
                reserved: fp
                    .reserved
                    .iter()
                    .filter_map(|(o, why)| {
                        fp.cidr.addr_at(*o).map(|a| pb::Reserved {
                            address: a.to_string(),
                            reason: why.to_string(),
                        })
                    })
                    .collect(),
                allocated: allocated(family),
                capacity: u64::try_from(fp.capacity()).unwrap_or(u64::MAX),
                shards: sizes.clone().count() as u32,
                largest_shard_bytes: sizes.map(|(_, b)| *b as u64).max().unwrap_or(0),
            }
        })
    };
    pb::NetworkInfo {
        network: Some(pb::NetworkRef::from(&plan.key)),
        network_type: plan.network_type().to_owned(),
        network_id: plan.spec.network_id.clone(),
        v4: family(Family::V4),
        v6: family(Family::V6),
    }
}
