//! [`plan`]: the validation and defaulting of a network spec, per family.

use std::collections::BTreeMap;

use danm_crds::{NetworkSpec, StaticScope};

use super::{
    FamilyPlan, FieldProblem, NetworkError, NetworkKey, NetworkKind, NetworkPlan, Reservation,
    Rule, default_v6_pool_cidr, effective_network_type, is_dynamic_backend, static_scope,
};
use crate::addr::{Cidr, Family, parse_addr_lenient};
use crate::names;

/// The longest `container_prefix`: two bytes are left for the sequence number within the
/// kernel's 15-byte interface names.
pub const MAX_CONTAINER_PREFIX: usize = 13;

/// Validates and defaults a network spec.
pub fn plan(key: NetworkKey, spec: &NetworkSpec) -> Result<NetworkPlan, NetworkError> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, rule: Rule, message: String| {
        problems.push(FieldProblem {
            field: field.to_owned(),
            message,
            rule,
        })
    };
    let opts = &spec.options;

    // Both become file and program names on every node (`<cniDir>/<NetworkID>.conf`,
    // `<CNI_PATH>/<NetworkType>`) and NetworkID a part of link names: one path component.
    for (field, value) in [
        ("spec.NetworkType", &spec.network_type),
        ("spec.NetworkID", &spec.network_id),
    ] {
        if !value.is_empty()
            && let Err(e) = names::plain(value)
        {
            problem(field, Rule::Ours, e.to_string());
        }
    }
    if let Some(prefix) = opts.container_prefix.as_deref().filter(|p| !p.is_empty()) {
        match names::plain(prefix) {
            Err(e) => problem("spec.Options.container_prefix", Rule::Ours, e.to_string()),
            Ok(()) if prefix.len() > MAX_CONTAINER_PREFIX => problem(
                "spec.Options.container_prefix",
                Rule::Ours,
                format!(
                    "{prefix:?} is longer than {MAX_CONTAINER_PREFIX} bytes: with a sequence \
                     number it would not fit the kernel's 15-byte interface names"
                ),
            ),
            Ok(()) => {}
        }
    }
    if key.kind == NetworkKind::TenantNetwork && opts.static_scope == Some(StaticScope::Cidr) {
        problem(
            "spec.Options.static_scope",
            Rule::Ours,
            "a TenantNetwork keeps static addresses inside its allocation pool (\"pool\"): \
             addresses outside it may belong to routers or appliances of the segment"
                .into(),
        );
    }

    // Bytes, not characters: the limit is the kernel's for the host interface names
    // (`<NetworkID>.<vlan>`, `vx_<NetworkID>`).
    if spec.network_id.len() > 10 && is_dynamic_backend(&spec.network_type) {
        problem(
            "spec.NetworkID",
            Rule::DanmNet(18),
            format!(
                "{:?} is longer than 10 bytes, the limit for NetworkType {:?}",
                spec.network_id,
                effective_network_type(&spec.network_type)
            ),
        );
    }
    if key.kind != NetworkKind::ClusterNetwork && spec.allowed_tenants.is_some() {
        problem(
            "spec.AllowedTenants",
            Rule::DanmNet(19),
            format!(
                "only valid for the ClusterNetwork API, not for {}",
                key.kind
            ),
        );
    }
    if opts.vlan.is_some() && opts.vxlan.is_some() {
        problem(
            "spec.Options.vlan",
            Rule::DanmNet(17),
            "vlan and vxlan cannot be provided together".into(),
        );
    }
    if let Some(vlan) = opts.vlan
        && !(1..=4094).contains(&vlan)
    {
        problem(
            "spec.Options.vlan",
            Rule::Ours,
            format!("{vlan} is outside 1-4094"),
        );
    }
    if let Some(vxlan) = opts.vxlan
        && !(1..=16_777_214).contains(&vxlan)
    {
        problem(
            "spec.Options.vxlan",
            Rule::Ours,
            format!("{vxlan} is outside 1-16777214"),
        );
    }
    // Linux's routing table ids are 32-bit; 253-255 are its default, main and local tables,
    // which a pod's policy routes must not land in. (DANM's own demo uses table 300.)
    if let Some(table) = opts.rt_tables
        && (!(0..=i64::from(u32::MAX)).contains(&table) || (253..=255).contains(&table))
    {
        problem(
            "spec.Options.rt_tables",
            Rule::Ours,
            format!(
                "{table} is not a usable routing table: 0 (none) or 1-4294967295 but 253-255 (the kernel's default, main and local tables)"
            ),
        );
    }

    let statics = static_scope(key.kind, spec);
    let v4 = plan_v4(spec, statics, &mut problem);
    let v6 = plan_v6(spec, statics, &mut problem);
    // A pool whose every address is reserved (only the broadcast address, say) could never
    // give a pod an address: refused, as an empty one would be.
    for (family, field) in [
        (&v4, "spec.Options.allocation_pool"),
        (&v6, "spec.Options.allocation_pool_v6"),
    ] {
        if let Some(fp) = family
            && fp.pool.is_some()
            && fp.capacity() == 0
        {
            problem(
                field,
                Rule::Ours,
                format!(
                    "{} holds no usable address: every address of it is reserved (network, \
                     broadcast or gateway addresses)",
                    crate::policy::describe_pool(fp)
                ),
            );
        }
    }

    if !problems.is_empty() {
        return Err(NetworkError::Invalid {
            network: key.to_string(),
            problems,
        });
    }
    Ok(NetworkPlan {
        key,
        spec: spec.clone(),
        v4,
        v6,
    })
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parse_in(
    text: &str,
    cidr: &Cidr,
    field: &str,
    rule: Rule,
    problem: &mut impl FnMut(&str, Rule, String),
) -> Option<u128> {
    match parse_addr_lenient(text) {
        Ok(ip) => match cidr.offset_of(ip) {
            Some(offset) => Some(offset),
            None => {
                problem(field, rule, format!("{text:?} is not inside {cidr}"));
                None
            }
        },
        Err(e) => {
            problem(field, rule, e.to_string());
            None
        }
    }
}

fn reserve_gateways(
    routes: &Option<BTreeMap<String, String>>,
    cidr: &Cidr,
    field: &str,
    rule: Rule,
    reserved: &mut BTreeMap<u128, Reservation>,
    problem: &mut impl FnMut(&str, Rule, String),
) {
    for (dest, gw) in routes.iter().flatten() {
        let path = format!("{field}[{dest}]");
        if let Err(e) = Cidr::parse_family(dest, cidr.family()) {
            problem(&path, rule, format!("route destination: {e}"));
        }
        if let Some(offset) = parse_in(gw, cidr, &path, rule, problem) {
            reserved.insert(offset, Reservation::Gateway(dest.clone()));
        }
    }
}

/// The rules a family's pool answers to: start inside, end inside.
struct PoolRules {
    start: Rule,
    end: Rule,
}

fn pool_bounds(
    start: Option<&str>,
    end: Option<&str>,
    range: &Cidr,
    within: &Cidr,
    field: &str,
    rules: PoolRules,
    problem: &mut impl FnMut(&str, Rule, String),
) -> Option<(u128, u128)> {
    // Default bounds: the range minus its first and last address.
    let range_first = within.offset_of(range.base())?;
    let range_last = range_first + range.last_offset();
    let start = match start {
        Some(text) => parse_in(text, range, &format!("{field}.start"), rules.start, problem)
            .map(|o| o + range_first),
        None => Some(range_first + 1),
    };
    let end = match end {
        Some(text) => parse_in(text, range, &format!("{field}.end"), rules.end, problem)
            .map(|o| o + range_first),
        None => range_last.checked_sub(1),
    };
    let (start, end) = (start?, end?);
    if start > end {
        return None;
    }
    Some((start, end))
}

/// Where one family's part of a spec is, and the rule each of its checks enforces.
struct FamilyFields {
    family: Family,
    /// The subnet's field (`cidr`, `net6`) and its rule.
    net: (&'static str, Rule),
    /// The allocation pool's field and the rule refusing it without a subnet.
    pool: (&'static str, Rule),
    /// The routes' field and their rule.
    routes: (&'static str, Rule),
    /// The rules of the pool's start, end and their order.
    start: Rule,
    end: Rule,
    order: Rule,
    /// The rule of the pool's own CIDR (IPv6 only).
    pool_cidr: Rule,
}

const V4_FIELDS: FamilyFields = FamilyFields {
    family: Family::V4,
    net: ("spec.Options.cidr", Rule::DanmNet(1)),
    pool: ("spec.Options.allocation_pool", Rule::DanmNet(7)),
    routes: ("spec.Options.routes", Rule::DanmNet(2)),
    start: Rule::DanmNet(8),
    end: Rule::DanmNet(9),
    order: Rule::DanmNet(10),
    pool_cidr: Rule::Unnumbered,
};

const V6_FIELDS: FamilyFields = FamilyFields {
    family: Family::V6,
    net: ("spec.Options.net6", Rule::DanmNet(3)),
    pool: ("spec.Options.allocation_pool_v6", Rule::DanmNet(11)),
    routes: ("spec.Options.routes6", Rule::DanmNet(4)),
    start: Rule::DanmNet(12),
    end: Rule::DanmNet(13),
    order: Rule::DanmNet(14),
    pool_cidr: Rule::DanmNet(15),
};

/// One family's part of a spec, as written.
struct FamilyText<'s> {
    net: Option<&'s str>,
    pool_cidr: Option<&'s str>,
    pool_start: Option<&'s str>,
    pool_end: Option<&'s str>,
    routes: &'s Option<BTreeMap<String, String>>,
}

fn plan_v4(
    spec: &NetworkSpec,
    statics: StaticScope,
    problem: &mut impl FnMut(&str, Rule, String),
) -> Option<FamilyPlan> {
    let opts = &spec.options;
    let pool = opts.allocation_pool.as_ref();
    let text = FamilyText {
        net: nonempty(&opts.cidr),
        pool_cidr: None,
        pool_start: pool.and_then(|p| nonempty(&p.start)),
        pool_end: pool.and_then(|p| nonempty(&p.end)),
        routes: &opts.routes,
    };
    plan_family(&V4_FIELDS, &text, statics, problem)
}

fn plan_v6(
    spec: &NetworkSpec,
    statics: StaticScope,
    problem: &mut impl FnMut(&str, Rule, String),
) -> Option<FamilyPlan> {
    let opts = &spec.options;
    let pool = opts.allocation_pool_v6.as_ref();
    let text = FamilyText {
        net: nonempty(&opts.net6),
        pool_cidr: pool.and_then(|p| nonempty(&p.cidr)),
        pool_start: pool.and_then(|p| nonempty(&p.start)),
        pool_end: pool.and_then(|p| nonempty(&p.end)),
        routes: &opts.routes6,
    };
    plan_family(&V6_FIELDS, &text, statics, problem)
}

/// One family's plan: its subnet, the range its pool is drawn from (IPv4: the subnet; IPv6:
/// the pool's CIDR, else DANM's default part of the subnet), the addresses no pod gets
/// (IPv4: network and broadcast addresses up to a /30; IPv6: the subnet-router anycast
/// address up to a /126; every route's gateway) and the pool's bounds.
fn plan_family(
    fields: &FamilyFields,
    text: &FamilyText<'_>,
    statics: StaticScope,
    problem: &mut impl FnMut(&str, Rule, String),
) -> Option<FamilyPlan> {
    let (pool_field, routes_field) = (fields.pool.0, fields.routes.0);
    let Some(net_text) = text.net else {
        if text.pool_cidr.is_some() || text.pool_start.is_some() || text.pool_end.is_some() {
            let without = format!("cannot be defined without {}", fields.net.0);
            problem(pool_field, fields.pool.1, without);
        }
        if text.routes.as_ref().is_some_and(|r| !r.is_empty()) {
            let without = format!("cannot be defined without {}", fields.net.0);
            problem(routes_field, fields.routes.1, without);
        }
        return None;
    };
    let net = match Cidr::parse_family(net_text, fields.family) {
        Ok(c) => c,
        Err(e) => {
            problem(fields.net.0, fields.net.1, e.to_string());
            return None;
        }
    };
    let range = match (fields.family, text.pool_cidr) {
        (Family::V4, _) => net,
        (Family::V6, None) => default_v6_pool_cidr(&net),
        (Family::V6, Some(pool_cidr)) => {
            let field = format!("{pool_field}.cidr");
            match Cidr::parse_family(pool_cidr, Family::V6) {
                Ok(c) if net.contains_cidr(&c) => c,
                Ok(c) => {
                    problem(
                        &field,
                        fields.pool_cidr,
                        format!("{c} is not inside net6 {net}"),
                    );
                    return None;
                }
                Err(e) => {
                    problem(&field, fields.pool_cidr, e.to_string());
                    return None;
                }
            }
        }
    };
    let mut reserved = BTreeMap::new();
    match fields.family {
        Family::V4 if net.prefix() <= 30 => {
            reserved.insert(0, Reservation::NetworkAddress);
            reserved.insert(net.last_offset(), Reservation::Broadcast);
        }
        Family::V6 if net.prefix() < 127 => {
            reserved.insert(0, Reservation::SubnetRouterAnycast);
        }
        _ => {}
    }
    reserve_gateways(
        text.routes,
        &net,
        routes_field,
        fields.routes.1,
        &mut reserved,
        problem,
    );
    let rules = PoolRules {
        start: fields.start,
        end: fields.end,
    };
    let bounds = pool_bounds(
        text.pool_start,
        text.pool_end,
        &range,
        &net,
        pool_field,
        rules,
        problem,
    );
    let explicit = text.pool_start.is_some() || text.pool_end.is_some();
    if explicit && bounds.is_none() {
        if let (Some(s), Some(e)) = (text.pool_start, text.pool_end)
            && range.contains(parse_addr_lenient(s).ok()?)
            && range.contains(parse_addr_lenient(e).ok()?)
        {
            problem(
                pool_field,
                fields.order,
                format!("end {e} is before start {s}"),
            );
        }
        return None;
    }
    Some(FamilyPlan {
        family: fields.family,
        cidr: net,
        pool: bounds,
        reserved,
        statics,
    })
}

#[cfg(test)]
mod tests;
