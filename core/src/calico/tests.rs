use std::collections::BTreeMap;

use danm_crds::foreign::calico::{AllocationAttribute, IPAMBlockSpec, IPAMHandleSpec};

use super::*;

fn attribute(handle: &str, namespace: &str, pod: &str) -> AllocationAttribute {
    let mut secondary = BTreeMap::from([
        ("node".to_owned(), "node-1".to_owned()),
        (
            "timestamp".to_owned(),
            "2026-12-07 10:00:00 +0000 UTC".to_owned(),
        ),
    ]);
    if !pod.is_empty() {
        secondary.insert("namespace".into(), namespace.into());
        secondary.insert("pod".into(), pod.into());
    }
    AllocationAttribute {
        handle_id: Some(handle.to_owned()),
        secondary: Some(secondary),
        rest: BTreeMap::new(),
    }
}

/// A /26 as Calico's IPAM leaves it after allocating, in order: ordinals 0 and 1 to the
/// sandbox `dead` of pod ns/web (one shared attribute), 2 to `live` (ns/db), 3 to `dead`
/// but recorded for another pod, and 4 to `dead` with no pod recorded.
fn block() -> IPAMBlockSpec {
    let mut allocations = vec![None; 64];
    allocations[0] = Some(0);
    allocations[1] = Some(0);
    allocations[2] = Some(1);
    allocations[3] = Some(2);
    allocations[4] = Some(3);
    IPAMBlockSpec {
        cidr: "10.0.0.0/26".into(),
        affinity: Some("host:node-1".into()),
        allocations,
        unallocated: (5..64).collect(),
        attributes: vec![
            attribute("k8s-pod-network.dead", "ns", "web"),
            attribute("k8s-pod-network.live", "ns", "db"),
            attribute("k8s-pod-network.dead", "other", "web"),
            attribute("k8s-pod-network.dead", "", ""),
        ],
        sequence_number: 1_700_000_000_000_000_005,
        sequence_number_for_allocation: Some(
            (0..5)
                .map(|o| (o.to_string(), 1_700_000_000_000_000_000 + o))
                .collect(),
        ),
        deleted: false,
        strict_affinity: false,
        rest: BTreeMap::from([("affinityClaimTime".into(), "2026-12-07T10:00:00Z".into())]),
    }
}

const WEB: PodOf<'static> = PodOf {
    namespace: "ns",
    pod: "web",
};

#[test]
fn a_handle_belongs_to_a_container_by_its_suffix_only() {
    assert!(handle_of_container("k8s-pod-network.abc123", "abc123"));
    assert!(handle_of_container("sig-calico.abc123", "abc123"));
    assert!(!handle_of_container("k8s-pod-network.xabc123", "abc123"));
    assert!(!handle_of_container("abc123", "abc123"));
    assert!(!handle_of_container(".abc123", "abc123"));
    assert!(!handle_of_container("k8s-pod-network.", ""));
    assert!(!handle_of_container("ipip-tunnel-addr-node-1", "node-1"));
    assert_eq!(handle_name("k8s-pod-network.ABC"), "k8s-pod-network.abc");
}

#[test]
fn block_names_are_calicos() {
    assert_eq!(block_name("10.0.0.0/26").unwrap(), "10-0-0-0-26");
    assert_eq!(block_name("10.0.0.5/26").unwrap(), "10-0-0-0-26");
    assert_eq!(block_name("fd00::/122").unwrap(), "fd00---122");
    assert_eq!(
        block_name("fd00:10:244::40/122").unwrap(),
        "fd00-10-244--40-122"
    );
    assert!(block_name("10.0.0.0").is_err());
}

#[test]
fn a_release_changes_the_block_as_calicos_own_does() {
    let mut b = block();
    let released = release_handle(&mut b, "k8s-pod-network.dead", WEB).unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        released.addresses,
        vec![ip("10.0.0.0"), ip("10.0.0.1"), ip("10.0.0.4")]
    );
    assert_eq!(
        released.foreign,
        vec![ip("10.0.0.3")],
        "another pod's record"
    );
    // The freed ordinals are appended, in order, after the free ones.
    assert_eq!(&b.unallocated[..59], &(5..64).collect::<Vec<_>>()[..]);
    assert_eq!(&b.unallocated[59..], &[0, 1, 4]);
    // The attributes only freed allocations used are gone; the others keep their order.
    assert_eq!(b.attributes.len(), 2);
    assert_eq!(
        b.attributes[0].handle_id.as_deref(),
        Some("k8s-pod-network.live")
    );
    assert_eq!(b.allocations[2], Some(0));
    assert_eq!(b.allocations[3], Some(1));
    assert_eq!(b.allocations[0], None);
    assert_eq!(b.allocations[1], None);
    assert_eq!(b.allocations[4], None);
    let seq = b.sequence_number_for_allocation.as_ref().unwrap();
    assert_eq!(seq.keys().collect::<Vec<_>>(), vec!["2", "3"]);
    assert_eq!(
        b.sequence_number, 1_700_000_000_000_000_006,
        "one bump per write"
    );
    assert_eq!(
        b.rest,
        block().rest,
        "fields this suite does not use are kept"
    );
    check_block(&b).unwrap();
    assert_eq!(
        handle_counts(&b),
        BTreeMap::from([
            ("k8s-pod-network.dead".to_owned(), 1),
            ("k8s-pod-network.live".to_owned(), 1)
        ])
    );
    assert!(!block_is_empty(&b));
}

#[test]
fn a_release_that_frees_nothing_changes_nothing() {
    let mut b = block();
    let released = release_handle(&mut b, "k8s-pod-network.gone", WEB).unwrap();
    assert_eq!(released, Released::default());
    assert_eq!(b, block());
    // Only another pod's allocations under that handle: nothing freed either.
    let other = PodOf {
        namespace: "ns",
        pod: "db",
    };
    let released = release_handle(&mut b, "k8s-pod-network.live", other).unwrap();
    assert_eq!(released.addresses.len(), 1);
    let mut c = block();
    let released = release_handle(&mut c, "k8s-pod-network.live", WEB).unwrap();
    assert!(released.addresses.is_empty());
    assert_eq!(released.foreign.len(), 1);
    assert_eq!(c, block());
}

#[test]
fn an_inconsistent_block_is_refused_and_left_alone() {
    let broken = [
        |b: &mut IPAMBlockSpec| b.allocations[10] = Some(9),
        |b: &mut IPAMBlockSpec| b.unallocated.push(0),
        |b: &mut IPAMBlockSpec| {
            b.unallocated.pop();
        },
        |b: &mut IPAMBlockSpec| b.allocations.truncate(32),
        |b: &mut IPAMBlockSpec| b.attributes.push(attribute("x.y", "ns", "p")),
        |b: &mut IPAMBlockSpec| b.unallocated.push(64),
    ];
    for (i, breaks) in broken.iter().enumerate() {
        let mut b = block();
        breaks(&mut b);
        let before = b.clone();
        let e = release_handle(&mut b, "k8s-pod-network.dead", WEB).unwrap_err();
        assert!(
            matches!(e, CalicoError::Inconsistent { .. }),
            "case {i}: {e}"
        );
        assert_eq!(b, before, "case {i}");
    }
}

#[test]
fn an_emptied_block_without_affinity_is_calicos_to_delete() {
    let mut b = block();
    b.affinity = None;
    release_handle(&mut b, "k8s-pod-network.dead", WEB).unwrap();
    assert!(!block_is_empty(&b));
    release_handle(
        &mut b,
        "k8s-pod-network.live",
        PodOf {
            namespace: "ns",
            pod: "db",
        },
    )
    .unwrap();
    assert!(!block_is_empty(&b), "another pod's address is left");
    release_handle(
        &mut b,
        "k8s-pod-network.dead",
        PodOf {
            namespace: "other",
            pod: "web",
        },
    )
    .unwrap();
    assert!(block_is_empty(&b));
    check_block(&b).unwrap();
    assert!(b.attributes.is_empty());
}

#[test]
fn a_handle_counts_what_the_block_holds_and_goes_when_empty() {
    let mut h = IPAMHandleSpec {
        handle_id: "k8s-pod-network.dead".into(),
        block: BTreeMap::from([("10.0.0.0/26".into(), 3), ("10.0.1.0/26".into(), 1)]),
        ..Default::default()
    };
    assert!(!recount_handle(&mut h, "10.0.0.0/26", 1));
    assert_eq!(h.block["10.0.0.0/26"], 1);
    assert!(!recount_handle(&mut h, "10.0.0.0/26", 0));
    assert!(!h.block.contains_key("10.0.0.0/26"));
    assert!(recount_handle(&mut h, "10.0.1.0/26", 0));
}

#[test]
fn calicos_json_reads_and_writes_back_unchanged() {
    let json = serde_json::json!({
        "cidr": "10.0.0.0/30",
        "affinity": "host:node-1",
        "allocations": [0, null, null, null],
        "unallocated": [1, 2, 3],
        "attributes": [{"handle_id": "k8s-pod-network.abc", "secondary": {"namespace": "ns", "pod": "p", "node": "n"}, "alternateOwnerAttrs": {"x": "y"}}],
        "sequenceNumber": 7,
        "sequenceNumberForAllocation": {"0": 6},
        "deleted": false,
        "strictAffinity": false,
        "affinityClaimTime": "2026-12-07T10:00:00Z"
    });
    let spec: IPAMBlockSpec = serde_json::from_value(json.clone()).unwrap();
    check_block(&spec).unwrap();
    assert_eq!(serde_json::to_value(&spec).unwrap(), json);
    // A nil Go map is written as null, an attribute may have no secondary, lists may be
    // null: read as empty, written back as Calico writes them.
    let json = serde_json::json!({
        "cidr": "fd00::/126",
        "allocations": [0, null, null, null],
        "unallocated": [1, 2, 3],
        "attributes": [{"handle_id": "k8s-pod-network.abc"}],
        "sequenceNumber": 0,
        "sequenceNumberForAllocation": null,
        "deleted": false,
        "strictAffinity": false
    });
    let spec: IPAMBlockSpec = serde_json::from_value(json.clone()).unwrap();
    check_block(&spec).unwrap();
    assert_eq!(serde_json::to_value(&spec).unwrap(), json);
    let nulls: IPAMBlockSpec = serde_json::from_value(serde_json::json!({
        "cidr": "10.0.0.0/30", "allocations": null, "unallocated": null, "attributes": null
    }))
    .unwrap();
    assert!(nulls.allocations.is_empty() && nulls.attributes.is_empty());
    let handle: IPAMHandleSpec =
        serde_json::from_value(serde_json::json!({"handleID": "h", "block": null})).unwrap();
    assert!(handle.block.is_empty());
}
