use super::*;

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn danms_annotations_and_the_4x_prefix_are_read() {
    let s = selection(
        "example-vnf",
        &annotations(&[
            ("danm.io/selector", r#"{"app":"loadbalancer"}"#),
            ("danm.io/network", "internal"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(s.selector, annotations(&[("app", "loadbalancer")]));
    assert_eq!(
        s.network,
        NetworkKey::new(NetworkKind::DanmNet, "example-vnf", "internal")
    );
    let old = selection(
        "ns",
        &annotations(&[
            ("danm.k8s.io/selector", r#"{"a":"b"}"#),
            ("danm.k8s.io/clusterNetwork", "external"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        old.network,
        NetworkKey::new(NetworkKind::ClusterNetwork, "", "external")
    );
    assert_eq!(selection("ns", &annotations(&[("other", "x")])), Ok(None));
}

#[test]
fn bad_annotations_name_what_is_wrong() {
    let e = selection(
        "ns",
        &annotations(&[("danm.io/selector", "[1]"), ("danm.io/network", "n")]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("danm.io/selector"), "{e}");
    let e = selection(
        "ns",
        &annotations(&[("danm.io/selector", r#"{"a":1}"#), ("danm.io/network", "n")]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("\"a\""), "{e}");
    let e = selection("ns", &annotations(&[("danm.io/selector", r#"{"a":"b"}"#)])).unwrap_err();
    assert!(e.to_string().contains("danm.io/network"), "{e}");
    let e = selection(
        "ns",
        &annotations(&[
            ("danm.io/selector", r#"{"a":"b"}"#),
            ("danm.io/network", "n"),
            ("danm.io/tenantNetwork", "t"),
        ]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("only one"), "{e}");
}

#[test]
fn a_selector_needs_every_label() {
    let sel = annotations(&[("app", "lb"), ("tier", "front")]);
    assert!(selects(
        &sel,
        &annotations(&[("app", "lb"), ("tier", "front"), ("x", "y")])
    ));
    assert!(!selects(&sel, &annotations(&[("app", "lb")])));
    assert!(!selects(&BTreeMap::new(), &annotations(&[("app", "lb")])));
}

fn pod(name: &str, ready: bool, addresses: &[&str]) -> PodEndpoint {
    PodEndpoint {
        name: name.into(),
        uid: format!("uid-{name}"),
        node: "node-1".into(),
        ready,
        terminating: false,
        named_ports: vec![("zmq".into(), "TCP".into(), 6555)],
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

fn port(target: Target) -> ServicePort {
    ServicePort {
        name: "zeromq".into(),
        protocol: "TCP".into(),
        port: 5555,
        target,
    }
}

#[test]
fn slices_group_by_family_and_ports_with_conditions_from_the_pod() {
    let pods = [
        pod("a", true, &["10.0.0.2", "fd00::2"]),
        pod("b", false, &["10.0.0.3"]),
    ];
    let made = slices("svc", &[port(Target::Same)], false, &pods, &[]);
    assert_eq!(made.len(), 2);
    let v4 = made.iter().find(|s| s.family == Family::V4).unwrap();
    assert!(
        v4.name.starts_with("svc-danm-v4-") && v4.name.ends_with("-0"),
        "{}",
        v4.name
    );
    assert_eq!(v4.ports[0].port, 5555);
    assert_eq!(v4.endpoints.len(), 2);
    assert!(v4.endpoints[0].ready && v4.endpoints[0].serving);
    assert!(!v4.endpoints[1].ready && !v4.endpoints[1].serving);
    // publishNotReadyAddresses: every endpoint ready.
    let published = slices_of(true, &pods);
    assert!(
        published
            .iter()
            .all(|s| s.endpoints.iter().all(|e| e.ready))
    );
    // A terminating pod: serving while Ready, never ready.
    let mut going = pod("c", true, &["10.0.0.4"]);
    going.terminating = true;
    let s = slices("svc", &[port(Target::Same)], false, &[going], &[]);
    assert!(!s[0].endpoints[0].ready && s[0].endpoints[0].serving && s[0].endpoints[0].terminating);
}

fn slices_of(publish: bool, pods: &[PodEndpoint]) -> Vec<SliceSpec> {
    slices("svc", &[port(Target::Same)], publish, pods, &[])
}

#[test]
fn target_ports_resolve_per_pod_and_names_stay_stable() {
    let named = [port(Target::Named("zmq".into()))];
    let mut other = pod("b", true, &["10.0.0.3"]);
    other.named_ports = vec![("zmq".into(), "TCP".into(), 7555)];
    let mut missing = pod("c", true, &["10.0.0.4"]);
    missing.named_ports.clear();
    let s = slices(
        "svc",
        &named,
        false,
        &[pod("a", true, &["10.0.0.2"]), other, missing],
        &[],
    );
    assert_eq!(
        s.len(),
        2,
        "two port sets, the pod without the named port left out"
    );
    let mut ports: Vec<i32> = s.iter().map(|s| s.ports[0].port).collect();
    ports.sort();
    assert_eq!(ports, [6555, 7555]);
    assert_ne!(s[0].name, s[1].name);
    let again = slices("svc", &named, false, &[pod("a", true, &["10.0.0.2"])], &[]);
    assert!(
        s.iter().any(|x| x.name == again[0].name),
        "names do not depend on the endpoints"
    );
    let numbered = slices(
        "svc",
        &[port(Target::Number(9000))],
        false,
        &[pod("a", true, &["10.0.0.2"])],
        &[],
    );
    assert_eq!(numbered[0].ports[0].port, 9000);
}

#[test]
fn large_groups_are_cut_into_slices_of_a_hundred() {
    let pods: Vec<PodEndpoint> = (0..250)
        .map(|i| {
            pod(
                &format!("p{i}"),
                true,
                &[&format!("10.0.{}.{}", i / 200, i % 200 + 1)],
            )
        })
        .collect();
    let s = slices_of(false, &pods);
    assert_eq!(
        s.iter().map(|s| s.endpoints.len()).collect::<Vec<_>>(),
        [100, 100, 50]
    );
    assert!(s[2].name.ends_with("-2"));
}

#[test]
fn a_pod_change_rewrites_only_the_slice_it_is_in() {
    let pods: Vec<PodEndpoint> = (0..250)
        .map(|i| {
            pod(
                &format!("p{i}"),
                true,
                &[&format!("10.0.{}.{}", i / 200, i % 200 + 1)],
            )
        })
        .collect();
    let first = slices_of(false, &pods);
    let stored: Vec<StoredSlice> = first
        .iter()
        .map(|s| StoredSlice {
            name: s.name.clone(),
            family: s.family,
            ports: s.ports.clone(),
            addresses: s.endpoints.iter().map(|e| e.address).collect(),
        })
        .collect();
    // The first pod goes: only the first slice changes.
    let fewer = slices("svc", &[port(Target::Same)], false, &pods[1..], &stored);
    let changed: Vec<&String> = fewer
        .iter()
        .filter(|s| !first.contains(s))
        .map(|s| &s.name)
        .collect();
    assert_eq!(changed, [&first[0].name]);
    // A new pod fills the room that left, in that slice.
    let mut more = pods[1..].to_vec();
    more.push(pod("new", true, &["10.0.9.9"]));
    let after = slices("svc", &[port(Target::Same)], false, &more, &stored);
    let changed: Vec<&String> = after
        .iter()
        .filter(|s| !first.contains(s))
        .map(|s| &s.name)
        .collect();
    assert_eq!(changed, [&first[0].name]);
    assert_eq!(after.len(), 3);
    // Every endpoint gone from a slice: the slice is not returned (to be deleted).
    let only_last = slices("svc", &[port(Target::Same)], false, &pods[200..], &stored);
    assert_eq!(
        only_last.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        [first[2].name.clone()]
    );
}
