//! Admission of a TenantConfig (DANM's `/confvalidation`, and its DELETE on
//! `/netdeletion`): its four rules, the checks DANM's webhook made without numbering them,
//! and ours that keep reservations from being lost: a profile holding ids cannot go, an
//! UPDATE that leaves them out gets them back, a TenantConfig holding ids cannot be
//! deleted, and a second TenantConfig is refused.

use std::collections::{BTreeMap, BTreeSet};

use danm_crds::{IfaceProfile, TenantConfig};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::Value;

use super::vni::{VniRange, VniType};
use super::{Admitted, Denial, Operation, parse_object};
use crate::network::{FieldProblem, Rule, is_dynamic_backend};

/// A TenantConfig request: the object sent, the stored one (UPDATE), and the name of
/// another TenantConfig that exists already, if any.
#[derive(Clone, Copy, Debug)]
pub struct TenantConfigRequest<'a> {
    /// CREATE or UPDATE.
    pub operation: Operation,
    /// The object sent.
    pub object: &'a Value,
    /// The stored object (UPDATE).
    pub old: Option<&'a Value>,
    /// Another TenantConfig of the cluster (TenantNetworks use one: a second is refused).
    pub other: Option<&'a str>,
}

/// Validates a TenantConfig CREATE or UPDATE. The patch restores what an UPDATE left out
/// but the stored object holds: a profile's `reservations` and DANM-era `alloc`. A
/// `kubectl apply` or `replace` of the original manifest replaces the whole `hostDevices`
/// list (it has no merge key), which would otherwise forget every id handed out; removing
/// them takes an explicit `reservations: {}` or `alloc: ""`.
pub fn admit_tenant_config(request: &TenantConfigRequest) -> Result<Admitted, Denial> {
    let object = request.object;
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let subject = format!("TenantConfig {name}");
    let config: TenantConfig =
        parse_object(object, "").map_err(|p| Denial::new(subject.clone(), vec![p]))?;
    let old: Option<TenantConfig> = match (request.operation, request.old) {
        (Operation::Update, Some(old)) => {
            Some(parse_object(old, "").map_err(|p| Denial::new(subject.clone(), vec![p]))?)
        }
        _ => None,
    };
    let mut problems = problems(request.operation, &config, old.as_ref());
    if request.operation == Operation::Create
        && let Some(other) = request.other.filter(|o| *o != name)
    {
        problems.push(FieldProblem {
            field: "metadata.name".into(),
            message: format!(
                "TenantConfig {other} exists: TenantNetworks take their profiles from one \
                 TenantConfig, so edit that one"
            ),
            rule: Rule::Ours,
        });
    }
    if !problems.is_empty() {
        return Err(Denial::new(subject, problems));
    }
    Ok(Admitted {
        patch: old.map_or_else(Patch::default, |old| restore_patch(object, &config, &old)),
        warnings: range_warnings(&config),
        ..Admitted::default()
    })
}

/// Warnings for ids a profile's `vniRange` names outside the protocol's bounds (a
/// TenantConfig carried over from DANM, which took VLAN ids up to 5000): they are never
/// handed out.
fn range_warnings(config: &TenantConfig) -> Vec<String> {
    let mut out = Vec::new();
    for (i, profile) in config.host_devices.iter().enumerate() {
        let Some(vni_type) = VniType::parse(&profile.vni_type) else {
            continue;
        };
        let Ok(range) = VniRange::parse(&profile.vni_range, vni_type) else {
            continue;
        };
        if range.outside().is_empty() {
            continue;
        }
        let (min, max) = vni_type.bounds();
        let named: Vec<String> = range
            .outside()
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        out.push(format!(
            "hostDevices[{i}].vniRange: {} outside {min}-{max} (the {vni_type} ids) will never \
             be handed out",
            named.join(",")
        ));
    }
    out
}

/// Refuses to delete a TenantConfig whose profiles hold ids of TenantNetworks (reserved,
/// or set in a DANM-era `alloc`): they would be handed out again once a TenantConfig is
/// created anew.
pub fn admit_tenant_config_delete(old: &Value) -> Result<(), Denial> {
    let name = old
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let subject = format!("TenantConfig {name}");
    // What does not parse holds nothing this webhook could lose.
    let Ok(config) = serde_json::from_value::<TenantConfig>(old.clone()) else {
        return Ok(());
    };
    let held = super::vni::reservations(&config);
    let legacy = config
        .host_devices
        .iter()
        .filter(|p| super::vni::legacy_ids_held(p))
        .map(|p| p.name.as_str())
        .next();
    let message = match (held.first(), legacy) {
        (Some(h), _) => format!(
            "{} id(s) are reserved for TenantNetworks, e.g. {} of profile {:?} for {}: \
             delete those TenantNetworks first",
            held.len(),
            h.id,
            h.profile,
            h.holder.network
        ),
        (None, Some(profile)) => format!(
            "profile {profile:?} still marks ids of DANM-era TenantNetworks in its alloc: \
             delete those TenantNetworks first"
        ),
        (None, None) => return Ok(()),
    };
    Err(Denial::new(
        subject,
        vec![FieldProblem {
            field: "hostDevices".into(),
            message,
            rule: Rule::Ours,
        }],
    ))
}

/// `add` operations for the `reservations` and `alloc` of profiles the UPDATE left out.
fn restore_patch(object: &Value, config: &TenantConfig, old: &TenantConfig) -> Patch {
    let mut ops = Vec::new();
    for (i, profile) in config.host_devices.iter().enumerate() {
        let Some(before) = old
            .host_devices
            .iter()
            .find(|p| p.name == profile.name && p.vni_type == profile.vni_type)
        else {
            continue;
        };
        let sent = object.pointer(&format!("/hostDevices/{i}"));
        let left_out = |key: &str| sent.and_then(|p| p.get(key)).is_none_or(Value::is_null);
        if left_out("reservations") && !before.reservations.is_empty() {
            ops.push(add(
                [&i.to_string(), "reservations"],
                serde_json::to_value(&before.reservations).expect("reservations serialize"),
            ));
        }
        if left_out("alloc") && !before.alloc.is_empty() {
            ops.push(add(
                [&i.to_string(), "alloc"],
                Value::String(before.alloc.clone()),
            ));
        }
    }
    Patch(ops)
}

/// `add` at `/hostDevices/<index>/<key>`.
fn add(under_profile: [&str; 2], value: Value) -> PatchOperation {
    let [index, key] = under_profile;
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(["hostDevices", index, key]),
        value,
    })
}

fn problems(
    operation: Operation,
    config: &TenantConfig,
    old: Option<&TenantConfig>,
) -> Vec<FieldProblem> {
    let mut out = Vec::new();
    let mut problem = |field: String, rule: Rule, message: String| {
        out.push(FieldProblem {
            field,
            message,
            rule,
        })
    };
    if config.host_devices.is_empty() && config.network_ids.is_empty() {
        problem(
            "hostDevices".into(),
            Rule::TenantConfig(1),
            "either hostDevices or networkIds must be provided".into(),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, profile) in config.host_devices.iter().enumerate() {
        let at = format!("hostDevices[{i}]");
        profile_problems(operation, profile, old, &at, &mut problem);
        if !seen.insert((profile.name.as_str(), profile.vni_type.as_str())) {
            problem(
                format!("{at}.name"),
                Rule::Ours,
                format!(
                    "profile {:?} with vniType {:?} is listed twice",
                    profile.name, profile.vni_type
                ),
            );
        }
    }
    for (network_type, network_id) in &config.network_ids {
        let at = format!("networkIds[{network_type}]");
        if network_type.is_empty() || network_id.is_empty() {
            problem(
                at.clone(),
                Rule::TenantConfig(3),
                "neither the NetworkType nor the NetworkID of a mapping may be empty".into(),
            );
        }
        // Both become file names on every node, as a TenantNetwork's would.
        for (what, name) in [("NetworkType", network_type), ("NetworkID", network_id)] {
            if !name.is_empty()
                && let Err(e) = crate::names::plain(name)
            {
                problem(at.clone(), Rule::Ours, format!("the {what} {e}"));
            }
        }
        if is_dynamic_backend(&network_type.to_lowercase()) && network_id.len() > 10 {
            problem(
                at,
                Rule::TenantConfig(4),
                format!(
                    "{network_id:?} is longer than 10 bytes, the limit for NetworkType \
                     {network_type:?} (its host interfaces are named after it)"
                ),
            );
        }
    }
    for (i, network_type) in config.allowed_network_types.iter().enumerate() {
        if let Err(e) = crate::names::plain(network_type) {
            problem(
                format!("allowedNetworkTypes[{i}]"),
                Rule::Ours,
                format!("is not a plugin name: {e}"),
            );
        }
    }
    if let Some(old) = old {
        lost_reservations(old, config, &mut problem);
    }
    out
}

fn profile_problems(
    operation: Operation,
    profile: &IfaceProfile,
    old: Option<&TenantConfig>,
    at: &str,
    problem: &mut impl FnMut(String, Rule, String),
) {
    if profile.name.is_empty() {
        problem(
            format!("{at}.name"),
            Rule::Unnumbered,
            "the name of a host device must not be empty".into(),
        );
    } else if let Err(e) = crate::input::exact(&profile.name) {
        problem(format!("{at}.name"), Rule::Ours, e.to_string());
    }
    if profile.vni_type.is_empty() != profile.vni_range.is_empty() {
        problem(
            format!("{at}.vniRange"),
            Rule::TenantConfig(2),
            format!(
                "vniType and vniRange must be given together (profile {:?})",
                profile.name
            ),
        );
    }
    let vni_type = match (profile.vni_type.as_str(), VniType::parse(&profile.vni_type)) {
        ("", _) => None,
        (_, Some(t)) => Some(t),
        (other, None) => {
            problem(
                format!("{at}.vniType"),
                Rule::Unnumbered,
                format!("{other:?} is not one of: vlan, vxlan"),
            );
            None
        }
    };
    if let Some(vni_type) = vni_type
        && !profile.vni_range.is_empty()
        && let Err(message) = VniRange::parse(&profile.vni_range, vni_type)
    {
        problem(format!("{at}.vniRange"), Rule::Unnumbered, message);
    }
    let old_profile = old.and_then(|o| {
        o.host_devices
            .iter()
            .find(|p| p.name == profile.name && p.vni_type == profile.vni_type)
    });
    match operation {
        Operation::Create => {
            if !profile.alloc.is_empty() {
                problem(
                    format!("{at}.alloc"),
                    Rule::Unnumbered,
                    "the allocation bit array cannot be given on creation".into(),
                );
            }
            if !profile.reservations.is_empty() {
                problem(
                    format!("{at}.reservations"),
                    Rule::Ours,
                    "reservations are written by the webhook, not on creation".into(),
                );
            }
        }
        _ => {
            let old_alloc = old_profile.map(|p| p.alloc.as_str()).unwrap_or_default();
            if !profile.alloc.is_empty() && profile.alloc != old_alloc {
                problem(
                    format!("{at}.alloc"),
                    Rule::Ours,
                    "a DANM-era bit array can be kept or removed, not set or changed".into(),
                );
            }
        }
    }
    for (id, holder) in &profile.reservations {
        let path = format!("{at}.reservations[{id}]");
        let valid = vni_type.is_some_and(|t| {
            let (min, max) = t.bounds();
            // "0700" and "+7" parse, but are not the keys the webhook writes.
            id.parse::<u32>()
                .is_ok_and(|n| (min..=max).contains(&n) && n.to_string() == *id)
        });
        if !valid {
            problem(
                path.clone(),
                Rule::Ours,
                format!(
                    "{id:?} is not a {} id",
                    if profile.vni_type.is_empty() {
                        "VLAN or VxLAN"
                    } else {
                        &profile.vni_type
                    }
                ),
            );
        }
        if holder.token.is_empty() || holder.network.is_empty() {
            problem(
                path,
                Rule::Ours,
                "a reservation names its network and token".into(),
            );
        }
    }
}

/// A profile that holds reservations may not disappear (removed, renamed or retyped): its
/// ids would be lost, and handed out twice once the profile came back.
fn lost_reservations(
    old: &TenantConfig,
    new: &TenantConfig,
    problem: &mut impl FnMut(String, Rule, String),
) {
    let kept: BTreeMap<(&str, &str), &IfaceProfile> = new
        .host_devices
        .iter()
        .map(|p| ((p.name.as_str(), p.vni_type.as_str()), p))
        .collect();
    for p in &old.host_devices {
        if p.reservations.is_empty() || kept.contains_key(&(p.name.as_str(), p.vni_type.as_str())) {
            continue;
        }
        let (id, holder) = p.reservations.iter().next().expect("not empty");
        problem(
            "hostDevices".into(),
            Rule::Ours,
            format!(
                "profile {:?} ({}) holds {} reserved id(s), e.g. {id} for TenantNetwork {}: \
                 delete those TenantNetworks before removing or changing the profile",
                p.name,
                p.vni_type,
                p.reservations.len(),
                holder.network
            ),
        );
    }
}
