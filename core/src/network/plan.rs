//! [`plan`]: the validation and defaulting of a network spec, per family.

use std::collections::BTreeMap;

use danm_crds::{NetworkSpec, StaticScope};

use super::{
    FamilyPlan, FieldProblem, NetworkError, NetworkKey, NetworkKind, NetworkPlan, Reservation,
    Rule, default_v6_pool_cidr, is_dynamic_backend, static_scope,
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
                if spec.network_type.is_empty() {
                    "ipvlan"
                } else {
                    &spec.network_type
                }
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

fn plan_v4(
    spec: &NetworkSpec,
    statics: StaticScope,
    problem: &mut impl FnMut(&str, Rule, String),
) -> Option<FamilyPlan> {
    let opts = &spec.options;
    let pool = opts.allocation_pool.as_ref();
    let pool_start = pool.and_then(|p| nonempty(&p.start));
    let pool_end = pool.and_then(|p| nonempty(&p.end));
    let Some(cidr_text) = nonempty(&opts.cidr) else {
        if pool_start.is_some() || pool_end.is_some() {
            problem(
                "spec.Options.allocation_pool",
                Rule::DanmNet(7),
                "cannot be defined without spec.Options.cidr".into(),
            );
        }
        if opts.routes.as_ref().is_some_and(|r| !r.is_empty()) {
            problem(
                "spec.Options.routes",
                Rule::DanmNet(2),
                "cannot be defined without spec.Options.cidr".into(),
            );
        }
        return None;
    };
    let cidr = match Cidr::parse_family(cidr_text, Family::V4) {
        Ok(c) => c,
        Err(e) => {
            problem("spec.Options.cidr", Rule::DanmNet(1), e.to_string());
            return None;
        }
    };
    let mut reserved = BTreeMap::new();
    if cidr.prefix() <= 30 {
        reserved.insert(0, Reservation::NetworkAddress);
        reserved.insert(cidr.last_offset(), Reservation::Broadcast);
    }
    reserve_gateways(
        &opts.routes,
        &cidr,
        "spec.Options.routes",
        Rule::DanmNet(2),
        &mut reserved,
        problem,
    );
    let explicit = pool_start.is_some() || pool_end.is_some();
    let bounds = pool_bounds(
        pool_start,
        pool_end,
        &cidr,
        &cidr,
        "spec.Options.allocation_pool",
        PoolRules {
            start: Rule::DanmNet(8),
            end: Rule::DanmNet(9),
        },
        problem,
    );
    if explicit && bounds.is_none() {
        if let (Some(s), Some(e)) = (pool_start, pool_end)
            && cidr.contains(parse_addr_lenient(s).ok()?)
            && cidr.contains(parse_addr_lenient(e).ok()?)
        {
            problem(
                "spec.Options.allocation_pool",
                Rule::DanmNet(10),
                format!("end {e} is before start {s}"),
            );
        }
        return None;
    }
    Some(FamilyPlan {
        family: Family::V4,
        cidr,
        pool: bounds,
        reserved,
        statics,
    })
}

fn plan_v6(
    spec: &NetworkSpec,
    statics: StaticScope,
    problem: &mut impl FnMut(&str, Rule, String),
) -> Option<FamilyPlan> {
    let opts = &spec.options;
    let pool = opts.allocation_pool_v6.as_ref();
    let pool_cidr = pool.and_then(|p| nonempty(&p.cidr));
    let pool_start = pool.and_then(|p| nonempty(&p.start));
    let pool_end = pool.and_then(|p| nonempty(&p.end));
    let Some(net6_text) = nonempty(&opts.net6) else {
        if pool_cidr.is_some() || pool_start.is_some() || pool_end.is_some() {
            problem(
                "spec.Options.allocation_pool_v6",
                Rule::DanmNet(11),
                "cannot be defined without spec.Options.net6".into(),
            );
        }
        if opts.routes6.as_ref().is_some_and(|r| !r.is_empty()) {
            problem(
                "spec.Options.routes6",
                Rule::DanmNet(4),
                "cannot be defined without spec.Options.net6".into(),
            );
        }
        return None;
    };
    let net6 = match Cidr::parse_family(net6_text, Family::V6) {
        Ok(c) => c,
        Err(e) => {
            problem("spec.Options.net6", Rule::DanmNet(3), e.to_string());
            return None;
        }
    };
    let range = match pool_cidr {
        Some(text) => match Cidr::parse_family(text, Family::V6) {
            Ok(c) if net6.contains_cidr(&c) => c,
            Ok(c) => {
                problem(
                    "spec.Options.allocation_pool_v6.cidr",
                    Rule::DanmNet(15),
                    format!("{c} is not inside net6 {net6}"),
                );
                return None;
            }
            Err(e) => {
                problem(
                    "spec.Options.allocation_pool_v6.cidr",
                    Rule::DanmNet(15),
                    e.to_string(),
                );
                return None;
            }
        },
        None => default_v6_pool_cidr(&net6),
    };
    let mut reserved = BTreeMap::new();
    if net6.prefix() < 127 {
        reserved.insert(0, Reservation::SubnetRouterAnycast);
    }
    reserve_gateways(
        &opts.routes6,
        &net6,
        "spec.Options.routes6",
        Rule::DanmNet(4),
        &mut reserved,
        problem,
    );
    let explicit = pool_start.is_some() || pool_end.is_some();
    let bounds = pool_bounds(
        pool_start,
        pool_end,
        &range,
        &net6,
        "spec.Options.allocation_pool_v6",
        PoolRules {
            start: Rule::DanmNet(12),
            end: Rule::DanmNet(13),
        },
        problem,
    );
    if explicit && bounds.is_none() {
        if let (Some(s), Some(e)) = (pool_start, pool_end)
            && range.contains(parse_addr_lenient(s).ok()?)
            && range.contains(parse_addr_lenient(e).ok()?)
        {
            problem(
                "spec.Options.allocation_pool_v6",
                Rule::DanmNet(14),
                format!("end {e} is before start {s}"),
            );
        }
        return None;
    }
    Some(FamilyPlan {
        family: Family::V6,
        cidr: net6,
        pool: bounds,
        reserved,
        statics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use danm_crds::{IpPool, IpPoolV6, NetworkOptions};

    fn key() -> NetworkKey {
        NetworkKey::new(NetworkKind::DanmNet, "default", "test")
    }

    fn spec(opts: NetworkOptions) -> NetworkSpec {
        NetworkSpec {
            network_id: "test".into(),
            network_type: "macvlan".into(),
            allowed_tenants: None,
            options: opts,
        }
    }

    #[test]
    fn any_linux_routing_table_but_the_kernels_own_is_accepted() {
        let with_table = |table: i64| {
            plan(
                key(),
                &spec(NetworkOptions {
                    cidr: Some("10.0.0.0/24".into()),
                    rt_tables: Some(table),
                    ..Default::default()
                }),
            )
        };
        // DANM's svcwatcher demo uses table 300.
        for good in [0, 1, 200, 252, 256, 300, i64::from(u32::MAX)] {
            assert!(with_table(good).is_ok(), "{good}");
        }
        for bad in [-1, 253, 254, 255, i64::from(u32::MAX) + 1] {
            let e = with_table(bad).unwrap_err().to_string();
            assert!(e.contains("spec.Options.rt_tables"), "{bad}: {e}");
        }
    }

    #[test]
    fn v4_defaults_to_cidr_minus_network_and_broadcast() {
        let p = plan(
            key(),
            &spec(NetworkOptions {
                cidr: Some("10.0.0.0/24".into()),
                routes: Some([("10.1.0.0/16".to_string(), "10.0.0.65".to_string())].into()),
                ..Default::default()
            }),
        )
        .unwrap();
        let v4 = p.v4.unwrap();
        assert_eq!(v4.pool, Some((1, 254)));
        assert_eq!(v4.reserved.get(&0), Some(&Reservation::NetworkAddress));
        assert_eq!(v4.reserved.get(&255), Some(&Reservation::Broadcast));
        assert_eq!(
            v4.reserved.get(&65),
            Some(&Reservation::Gateway("10.1.0.0/16".into()))
        );
        assert!(p.v6.is_none());
    }

    #[test]
    fn explicit_pool() {
        let p = plan(
            key(),
            &spec(NetworkOptions {
                cidr: Some("10.240.1.0/24".into()),
                allocation_pool: Some(IpPool {
                    start: Some("10.240.1.100".into()),
                    end: Some("10.240.1.200".into()),
                    last_ip: None,
                }),
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(p.v4.unwrap().pool, Some((100, 200)));
    }

    #[test]
    fn v6_defaults_to_first_106() {
        let p = plan(
            key(),
            &spec(NetworkOptions {
                net6: Some("2001:db8::/64".into()),
                ..Default::default()
            }),
        )
        .unwrap();
        let v6 = p.v6.unwrap();
        assert_eq!(v6.pool, Some((1, (1 << 22) - 2)));
        let wide = plan(
            key(),
            &spec(NetworkOptions {
                net6: Some("2001:db8::/64".into()),
                allocation_pool_v6: Some(IpPoolV6 {
                    cidr: Some("2001:db8::/64".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(wide.v6.unwrap().pool, Some((1, (1u128 << 64) - 2)));
    }

    #[test]
    fn every_problem_is_named() {
        let err = plan(
            key(),
            &NetworkSpec {
                network_id: "waytoolongid".into(),
                network_type: "ipvlan".into(),
                allowed_tenants: Some(vec!["a".into()]),
                options: NetworkOptions {
                    cidr: Some("10.0.0/24".into()),
                    net6: Some("2001:db8::/64".into()),
                    allocation_pool_v6: Some(IpPoolV6 {
                        cidr: Some("2001:db9::/80".into()),
                        ..Default::default()
                    }),
                    vlan: Some(5),
                    vxlan: Some(6),
                    ..Default::default()
                },
            },
        )
        .unwrap_err();
        let NetworkError::Invalid { problems, network } = &err;
        assert_eq!(network, "DanmNet default/test");
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        for f in [
            "spec.NetworkID",
            "spec.AllowedTenants",
            "spec.Options.vlan",
            "spec.Options.cidr",
            "spec.Options.allocation_pool_v6.cidr",
        ] {
            assert!(fields.contains(&f), "{f} missing from {err}");
        }
    }

    #[test]
    fn pool_problems() {
        let bad = |pool: IpPool, routes: Option<BTreeMap<String, String>>| {
            plan(
                key(),
                &spec(NetworkOptions {
                    cidr: Some("10.0.0.0/24".into()),
                    allocation_pool: Some(pool),
                    routes,
                    ..Default::default()
                }),
            )
            .unwrap_err()
            .to_string()
        };
        let e = bad(
            IpPool {
                start: Some("10.0.1.1".into()),
                end: Some("10.0.0.9".into()),
                last_ip: None,
            },
            None,
        );
        assert!(e.contains("spec.Options.allocation_pool.start"), "{e}");
        let e = bad(
            IpPool {
                start: Some("10.0.0.9".into()),
                end: Some("10.0.0.1".into()),
                last_ip: None,
            },
            None,
        );
        assert!(e.contains("end 10.0.0.1 is before start 10.0.0.9"), "{e}");
        let e = bad(
            IpPool::default(),
            Some([("10.9.0.0/16".to_string(), "192.168.0.1".to_string())].into()),
        );
        assert!(e.contains("spec.Options.routes[10.9.0.0/16]"), "{e}");
        let e = plan(
            key(),
            &spec(NetworkOptions {
                allocation_pool: Some(IpPool {
                    start: Some("10.0.0.1".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("without spec.Options.cidr"), "{e}");
    }

    #[test]
    fn names_that_become_paths_or_links_must_be_plain() {
        for (field, bad) in [
            ("spec.NetworkType", "/sbin/reboot"),
            ("spec.NetworkType", "../../../usr/bin/x"),
            ("spec.NetworkType", ".."),
            ("spec.NetworkID", "../../etc/passwd"),
            ("spec.NetworkID", "/etc/shadow"),
            ("spec.NetworkID", "a b"),
        ] {
            let mut s = spec(NetworkOptions::default());
            match field {
                "spec.NetworkType" => s.network_type = bad.into(),
                _ => s.network_id = bad.into(),
            }
            for kind in NetworkKind::ALL {
                let e = plan(NetworkKey::new(kind, "t", "n"), &s)
                    .unwrap_err()
                    .to_string();
                assert!(e.contains(field) && e.contains(bad), "{bad}: {e}");
            }
        }
        let mut s = spec(NetworkOptions {
            container_prefix: Some("eth/../x".into()),
            ..Default::default()
        });
        let e = plan(key(), &s).unwrap_err().to_string();
        assert!(e.contains("spec.Options.container_prefix"), "{e}");
        s.options.container_prefix = Some("abcdefghijklmn".into());
        let e = plan(key(), &s).unwrap_err().to_string();
        assert!(e.contains("longer than 13"), "{e}");
        s.options.container_prefix = Some("signalling-a".into());
        s.network_type = "sriov-dpdk_2.1".into();
        s.network_id = "sriov_a".into();
        assert!(plan(key(), &s).is_ok());
        s.network_type = String::new();
        s.network_id = String::new();
        assert!(plan(key(), &s).is_ok(), "empty means default, not a name");
    }

    #[test]
    fn static_scope_defaults_by_kind_and_a_tenant_cannot_widen_it() {
        let mut s = spec(NetworkOptions {
            cidr: Some("10.0.0.0/24".into()),
            ..Default::default()
        });
        let scope = |kind, s: &NetworkSpec| {
            plan(NetworkKey::new(kind, "t", "n"), s)
                .map(|p| p.v4.unwrap().statics)
                .map_err(|e| e.to_string())
        };
        assert_eq!(scope(NetworkKind::TenantNetwork, &s), Ok(StaticScope::Pool));
        assert_eq!(scope(NetworkKind::DanmNet, &s), Ok(StaticScope::Cidr));
        assert_eq!(
            scope(NetworkKind::ClusterNetwork, &s),
            Ok(StaticScope::Cidr)
        );
        s.options.static_scope = Some(StaticScope::Pool);
        assert_eq!(
            scope(NetworkKind::ClusterNetwork, &s),
            Ok(StaticScope::Pool)
        );
        s.options.static_scope = Some(StaticScope::Cidr);
        let e = scope(NetworkKind::TenantNetwork, &s).unwrap_err();
        assert!(e.contains("spec.Options.static_scope"), "{e}");
    }

    #[test]
    fn a_pool_of_reserved_addresses_only_is_refused() {
        let only_broadcast = spec(NetworkOptions {
            cidr: Some("10.0.0.0/24".into()),
            allocation_pool: Some(IpPool {
                start: Some("10.0.0.255".into()),
                end: Some("10.0.0.255".into()),
                last_ip: None,
            }),
            ..Default::default()
        });
        let e = plan(key(), &only_broadcast).unwrap_err().to_string();
        assert!(
            e.contains("spec.Options.allocation_pool") && e.contains("no usable address"),
            "{e}"
        );
        let mut one = only_broadcast.clone();
        one.options.allocation_pool.as_mut().unwrap().start = Some("10.0.0.254".into());
        assert_eq!(plan(key(), &one).unwrap().v4.unwrap().capacity(), 1);
    }

    #[test]
    fn allowed_tenants() {
        let mut s = spec(NetworkOptions::default());
        s.allowed_tenants = Some(vec!["default".into()]);
        let p = plan(
            NetworkKey::new(NetworkKind::ClusterNetwork, "x", "default"),
            &s,
        )
        .unwrap();
        assert_eq!(p.key.namespace, "");
        assert!(p.tenant_allowed("default"));
        assert!(!p.tenant_allowed("kube-system"));
    }
}
