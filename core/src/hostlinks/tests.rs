use super::*;
use crate::NetworkKind;
use danm_crds::NetworkOptions;

fn key(name: &str) -> LinkOwner {
    NetworkKey::new(NetworkKind::DanmNet, "ns", name).into()
}

/// The claims of networks, as netwatcher makes them.
fn wanted_links<'a>(
    networks: impl IntoIterator<Item = (&'a LinkOwner, &'a NetworkSpec, &'a str)>,
) -> (BTreeMap<String, WantedLink>, Vec<(LinkOwner, LinkProblem)>) {
    super::wanted_links(networks.into_iter().map(|(owner, spec, created)| Claim {
        owner: owner.clone(),
        links: network_links(spec),
        created: created.to_owned(),
    }))
}

fn spec(id: &str, device: &str, vlan: Option<i64>, vxlan: Option<i64>) -> NetworkSpec {
    NetworkSpec {
        network_id: id.into(),
        network_type: "ipvlan".into(),
        options: NetworkOptions {
            host_device: Some(device.into()),
            vlan,
            vxlan,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn device(index: u32) -> Device {
    Device {
        index,
        up: true,
        v4: Some(Ipv4Addr::new(198, 18, 0, 1)),
        v6: None,
        addresses: vec!["198.18.0.1".parse().unwrap()],
    }
}

#[test]
fn danms_names_and_group() {
    let links = network_links(&spec("internal", "ens4", Some(200), None)).unwrap();
    assert_eq!(
        links,
        vec![(
            "internal.200".to_owned(),
            LinkSpec::Vlan {
                parent: "ens4".into(),
                id: 200
            }
        )]
    );
    let links = network_links(&spec("internal", "ens4", None, Some(500))).unwrap();
    assert_eq!(links[0].0, "vx_internal");
    // go-cidr's Host(239.0.0.0/8, 500), as DANM computes it.
    assert_eq!(group_v4(500), Ipv4Addr::new(239, 0, 1, 244));
    assert_eq!(group_v6(500), "ff02::1f4".parse::<Ipv6Addr>().unwrap());
    // No device, or no id: no link.
    assert!(
        network_links(&spec("internal", "", Some(200), None))
            .unwrap()
            .is_empty()
    );
    assert!(
        network_links(&spec("internal", "ens4", Some(0), None))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn bad_ids_and_long_names_are_reported() {
    let too_long = network_links(&spec("averylongnetid", "ens4", None, Some(5))).unwrap_err();
    assert_eq!(
        too_long,
        LinkProblem::NameTooLong("vx_averylongnetid".into())
    );
    assert!(matches!(
        network_links(&spec("n", "ens4", Some(4095), None)),
        Err(LinkProblem::BadId(_))
    ));
    assert!(matches!(
        network_links(&spec("n", "ens4", None, Some(1 << 24))),
        Err(LinkProblem::BadId(_))
    ));
}

#[test]
fn networks_sharing_a_link_share_it_and_a_mismatch_is_a_conflict() {
    let (a, b, c) = (
        spec("shared", "ens4", None, Some(700)),
        spec("shared", "ens4", None, Some(700)),
        spec("shared", "ens4", None, Some(701)),
    );
    let (ka, kb, kc) = (key("a"), key("b"), key("c"));
    let (wanted, problems) = wanted_links([(&kb, &b, ""), (&ka, &a, ""), (&kc, &c, "")]);
    assert!(problems.is_empty());
    assert_eq!(wanted.len(), 1);
    assert_eq!(wanted["vx_shared"].networks, vec![ka.clone(), kb]);
    assert_eq!(wanted["vx_shared"].rivals[0].networks, vec![kc.clone()]);
    let devices = HashMap::from([("ens4".to_owned(), device(7))]);
    let (actions, problems) = plan(&wanted, &devices, &[]);
    assert_eq!(
        actions,
        vec![Action::Create {
            name: "vx_shared".into(),
            params: vx_params(700)
        }]
    );
    assert_eq!(
        problems,
        vec![(
            vec![kc],
            LinkProblem::Conflict {
                name: "vx_shared".into(),
                holder: ka
            }
        )]
    );
}

/// The attack of one tenant on another's VxLAN: the same NetworkID with another VNI. The
/// link on the node stays with the network that holds it, whoever sorts first, and is
/// never re-created; a link not made yet goes to the administrators' kinds, then to the
/// older network.
#[test]
fn a_contested_link_stays_with_its_holder() {
    let holder: LinkOwner = NetworkKey::new(NetworkKind::TenantNetwork, "zz-victim", "net").into();
    let attacker: LinkOwner =
        NetworkKey::new(NetworkKind::TenantNetwork, "aa-attacker", "net").into();
    let (held, taken) = (
        spec("shared", "ens4", None, Some(500)),
        spec("shared", "ens4", None, Some(501)),
    );
    // The attacker's network is newer but sorts first by name.
    let (wanted, _) = wanted_links([
        (&holder, &held, "2026-01-01T00:00:00Z"),
        (&attacker, &taken, "2026-06-01T00:00:00Z"),
    ]);
    assert_eq!(
        wanted["vx_shared"].networks,
        vec![holder.clone()],
        "older first"
    );
    let devices = HashMap::from([("ens4".to_owned(), device(7))]);
    let on_node = ObservedLink {
        name: "vx_shared".into(),
        ours: true,
        up: true,
        params: Some(vx_params(500)),
    };
    // Even were the attacker first by precedence, the node's link fits the holder.
    let (wanted, _) = wanted_links([
        (&holder, &held, "2026-06-01T00:00:00Z"),
        (&attacker, &taken, "2026-01-01T00:00:00Z"),
    ]);
    assert_eq!(wanted["vx_shared"].networks, vec![attacker.clone()]);
    let (actions, problems) = plan(&wanted, &devices, std::slice::from_ref(&on_node));
    assert!(
        actions.is_empty(),
        "the holder's link is touched: {actions:?}"
    );
    assert_eq!(
        problems,
        vec![(
            vec![attacker.clone()],
            LinkProblem::Conflict {
                name: "vx_shared".into(),
                holder: holder.clone()
            }
        )]
    );
    // The Event on the attacker's network does not name the other tenant's network.
    let said = problems[0].1.to_string();
    assert!(!said.contains("zz-victim"), "{said}");
    // An administrator's network goes before any TenantNetwork, old or new.
    let platform: LinkOwner = NetworkKey::new(NetworkKind::ClusterNetwork, "", "platform").into();
    let (wanted, _) = wanted_links([
        (&holder, &held, "2020-01-01T00:00:00Z"),
        (&platform, &taken, "2026-06-01T00:00:00Z"),
    ]);
    assert_eq!(wanted["vx_shared"].networks, vec![platform]);
}

fn wanted_vx(vni: u32) -> BTreeMap<String, WantedLink> {
    let s = spec("net", "ens4", None, Some(i64::from(vni)));
    let k = key("net");
    wanted_links([(&k, &s, "")]).0
}

fn vx_params(vni: u32) -> LinkParams {
    LinkParams::Vxlan {
        parent: 7,
        vni,
        local: "198.18.0.1".parse().unwrap(),
        group: IpAddr::V4(group_v4(vni)),
        port: VXLAN_PORT,
    }
}

#[test]
fn the_plan_creates_recreates_removes_and_leaves_foreign_links_alone() {
    let devices = HashMap::from([("ens4".to_owned(), device(7))]);
    // Missing: created.
    let (actions, problems) = plan(&wanted_vx(500), &devices, &[]);
    assert!(problems.is_empty());
    assert_eq!(
        actions,
        vec![Action::Create {
            name: "vx_net".into(),
            params: vx_params(500)
        }]
    );
    // Ours with another VNI: re-created.
    let stale = ObservedLink {
        name: "vx_net".into(),
        ours: true,
        up: true,
        params: Some(vx_params(400)),
    };
    let (actions, _) = plan(&wanted_vx(500), &devices, std::slice::from_ref(&stale));
    assert_eq!(
        actions,
        vec![Action::Delete {
            name: "vx_net".into(),
            recreate: Some(vx_params(500))
        }]
    );
    // Right but down: brought up. Ours and no longer wanted: removed.
    let down = ObservedLink {
        up: false,
        params: Some(vx_params(500)),
        ..stale.clone()
    };
    let leftover = ObservedLink {
        name: "vx_gone".into(),
        ..stale.clone()
    };
    let (actions, _) = plan(&wanted_vx(500), &devices, &[down, leftover]);
    assert_eq!(
        actions,
        vec![
            Action::Up("vx_net".into()),
            Action::Delete {
                name: "vx_gone".into(),
                recreate: None
            }
        ]
    );
    // Not ours: used as it is when exactly right (never marked), else reported and left
    // alone; never removed.
    let danms = ObservedLink {
        ours: false,
        ..stale.clone()
    };
    let (actions, problems) = plan(&wanted_vx(400), &devices, std::slice::from_ref(&danms));
    assert!(actions.is_empty());
    assert!(problems.is_empty());
    let (actions, problems) = plan(&wanted_vx(500), &devices, std::slice::from_ref(&danms));
    assert!(actions.is_empty());
    assert_eq!(
        problems,
        vec![(vec![key("net")], LinkProblem::Foreign("vx_net".into()))]
    );
    let (actions, _) = plan(&BTreeMap::new(), &devices, &[danms]);
    assert!(
        actions.is_empty(),
        "a link that is not ours is never removed"
    );
}

#[test]
fn a_missing_or_address_less_device_is_reported_and_a_down_one_brought_up() {
    let (actions, problems) = plan(&wanted_vx(500), &HashMap::new(), &[]);
    assert!(actions.is_empty());
    assert_eq!(
        problems,
        vec![(vec![key("net")], LinkProblem::NoDevice("ens4".into()))]
    );
    let bare = HashMap::from([(
        "ens4".to_owned(),
        Device {
            v4: None,
            ..device(7)
        },
    )]);
    let (_, problems) = plan(&wanted_vx(500), &bare, &[]);
    assert_eq!(
        problems,
        vec![(vec![key("net")], LinkProblem::NoAddress("ens4".into()))]
    );
    // IPv6 only: the IPv6 local address and group.
    let v6 = HashMap::from([(
        "ens4".to_owned(),
        Device {
            v4: None,
            v6: Some("fd00::1".parse().unwrap()),
            up: false,
            ..device(7)
        },
    )]);
    let (actions, _) = plan(&wanted_vx(500), &v6, &[]);
    assert_eq!(actions[0], Action::DeviceUp("ens4".into()));
    assert!(matches!(
        &actions[1],
        Action::Create { params: LinkParams::Vxlan { local: IpAddr::V6(_), group, .. }, .. } if *group == IpAddr::V6(group_v6(500))
    ));
}

#[test]
fn a_vxlan_is_not_re_created_while_its_local_address_is_still_on_the_device() {
    // The device got another first address; the link's local one is still there.
    let mut moved = HashMap::from([("ens4".to_owned(), device(7))]);
    let d = moved.get_mut("ens4").unwrap();
    d.v4 = Some(Ipv4Addr::new(198, 18, 0, 9));
    d.addresses.insert(0, "198.18.0.9".parse().unwrap());
    let kept = ObservedLink {
        name: "vx_net".into(),
        ours: true,
        up: true,
        params: Some(vx_params(500)),
    };
    let (actions, _) = plan(&wanted_vx(500), &moved, std::slice::from_ref(&kept));
    assert!(actions.is_empty(), "{actions:?}");
    // Gone from the device: re-created on the new one.
    moved.get_mut("ens4").unwrap().addresses.truncate(1);
    let (actions, _) = plan(&wanted_vx(500), &moved, &[kept]);
    assert!(
        matches!(
            &actions[0],
            Action::Delete {
                recreate: Some(_),
                ..
            }
        ),
        "{actions:?}"
    );
}
