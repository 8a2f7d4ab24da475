//! The planner's tests: each family's subnet, pool, reservations and refusals.

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
