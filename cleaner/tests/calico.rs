//! `cleaner --calico` for real: Calico's IPAM CRDs (written from Calico's published
//! schemas, `testkit/fixtures/calico/`) applied to the real API server, blocks and handles
//! written as Calico's IPAM writes them, and a leaked DanmEp of a network delegated to
//! Calico. Its sandbox's addresses are freed under every handle of its container id
//! (whatever the CNI network name), Calico's block invariants hold after every release, the
//! handle counts match the blocks, an emptied block without affinity and an emptied handle
//! are deleted, and what a live pod, or another pod's record under the same handle, holds is
//! never touched.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{Bed, TURN};
use danm_cleaner::metrics::Metrics;
use danm_cleaner::{Freer, Outcome, PassConfig, Sightings};
use danm_core::calico::{check_block, handle_counts};
use danm_crds::DanmEp;
use danm_crds::foreign::calico::{IPAMBlock, IPAMHandle};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const DEAD: &str = "k8s-pod-network.cid-calico-dead";
const OTHER_NAME: &str = "sig-calico.cid-calico-dead";
const LIVE: &str = "k8s-pod-network.cid-calico-live";

fn attribute(handle: &str, ns: &str, pod: &str) -> Value {
    json!({"handle_id": handle, "secondary": {
        "namespace": ns, "pod": pod, "node": "calico-node",
        "timestamp": "2026-12-07 10:00:00.000000001 +0000 UTC"}})
}

/// A /26 as Calico's IPAM leaves it: `allocated` is (ordinal, attribute index).
fn block(
    cidr: &str,
    affinity: Option<&str>,
    attributes: Vec<Value>,
    allocated: &[(usize, i64)],
) -> Value {
    let mut allocations = vec![Value::Null; 64];
    let mut seq = serde_json::Map::new();
    for (o, a) in allocated {
        allocations[*o] = json!(a);
        seq.insert(
            o.to_string(),
            json!(1_765_000_000_000_000_000u64 + *o as u64),
        );
    }
    let unallocated: Vec<usize> = (0..64)
        .filter(|o| !allocated.iter().any(|(a, _)| a == o))
        .collect();
    let mut spec = json!({
        "cidr": cidr, "allocations": allocations, "unallocated": unallocated,
        "attributes": attributes, "sequenceNumber": 1_765_000_000_000_000_100u64,
        "sequenceNumberForAllocation": seq, "deleted": false, "strictAffinity": false,
    });
    if let Some(a) = affinity {
        spec["affinity"] = json!(a);
    }
    json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPAMBlock",
        "metadata": {"name": danm_core::calico::block_name(cidr).unwrap()}, "spec": spec})
}

fn handle(id: &str, blocks: Value) -> Value {
    json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPAMHandle",
        "metadata": {"name": id.to_lowercase()},
        "spec": {"handleID": id, "block": blocks, "deleted": false}})
}

fn danmep(ns: &str, name: &str, pod: &str, uid: &str, cid: &str) -> DanmEp {
    serde_json::from_value(json!({
        "apiVersion": "danm.io/v1", "kind": "DanmEp",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"NetworkName": "calico-net", "NetworkType": "calico", "apiType": "DanmNet",
            "EndpointID": name, "Interface": {"Name": "eth1", "Address": "", "AddressIPv6": ""},
            "Host": "calico-node", "Pod": pod, "PodUID": uid, "CID": cid}
    }))
    .unwrap()
}

async fn pass(bed: &Bed, dry_run: bool) -> danm_cleaner::Report {
    let freer = Freer {
        calico: true,
        ..bed.freer(dry_run)
    };
    let config = PassConfig {
        grace: Duration::from_secs(3600),
        concurrency: 4,
        page: 100,
    };
    danm_cleaner::pass(&freer, &config, &mut Sightings::default(), &Metrics::new())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calicos_addresses_of_a_leaked_sandbox_are_released_as_calico_does() {
    let _turn = TURN.lock().await;
    let bed = Bed::start("calico").await;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testkit/fixtures/calico");
    bed.plane
        .kubectl_apply(&std::fs::read_to_string(fixtures.join("ipam-crds.yaml")).unwrap())
        .unwrap();
    for crd in ["ipamblocks", "ipamhandles"] {
        bed.plane
            .kubectl()
            .args([
                "wait",
                "--for=condition=established",
                &format!("crd/{crd}.crd.projectcalico.org"),
            ])
            .output()
            .unwrap();
    }
    if danm_testkit::identity::as_service_accounts() {
        let rbac =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/components/calico/rbac.yaml");
        bed.plane
            .kubectl_apply(&std::fs::read_to_string(rbac).unwrap())
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let ns = bed.ns.clone();
    bed.plane
        .kubectl_apply(&format!(
            "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: calico-net, namespace: {ns}}}\nspec: {{NetworkID: calico-net, NetworkType: calico}}\n"
        ))
        .unwrap();
    bed.node("calico-node", true).await;
    let live_uid = bed.pod("db", "calico-node").await;

    // Block A (affine to the node): 0 and 1 the dead sandbox's (one shared attribute), 2 the
    // live pod's, 3 under the dead sandbox's handle but recorded for another pod, 4 the dead
    // sandbox's under another CNI network name. Block B (no affinity): 5 the dead one's.
    let a = block(
        "10.77.0.0/26",
        Some("host:calico-node"),
        vec![
            attribute(DEAD, &ns, "web"),
            attribute(LIVE, &ns, "db"),
            attribute(DEAD, &ns, "someone-else"),
            attribute(OTHER_NAME, &ns, "web"),
        ],
        &[(0, 0), (1, 0), (2, 1), (3, 2), (4, 3)],
    );
    let b = block(
        "10.77.0.64/26",
        None,
        vec![attribute(DEAD, &ns, "web")],
        &[(5, 0)],
    );
    let objects = [
        a,
        b,
        handle(DEAD, json!({"10.77.0.0/26": 3, "10.77.0.64/26": 1})),
        handle(OTHER_NAME, json!({"10.77.0.0/26": 1})),
        handle(LIVE, json!({"10.77.0.0/26": 1})),
    ];
    for o in &objects {
        bed.plane.kubectl_apply(&o.to_string()).unwrap();
    }
    let eps = Api::<DanmEp>::namespaced(bed.client.clone(), &ns);
    eps.create(
        &PostParams::default(),
        &danmep(&ns, "web-eth1", "web", "uid-web", "cid-calico-dead"),
    )
    .await
    .unwrap();
    eps.create(
        &PostParams::default(),
        &danmep(&ns, "db-eth1", "db", &live_uid, "cid-calico-live"),
    )
    .await
    .unwrap();
    let blocks = Api::<IPAMBlock>::all(bed.client.clone());
    let handles = Api::<IPAMHandle>::all(bed.client.clone());
    let a_before = blocks.get("10-77-0-0-26").await.unwrap();
    let live_before = handles.get(LIVE).await.unwrap();

    // A dry run frees nothing.
    let report = pass(&bed, true).await;
    assert!(
        report
            .settled
            .iter()
            .any(|s| s.outcome == Outcome::WouldFree)
    );
    assert_eq!(
        blocks.get("10-77-0-0-26").await.unwrap().spec,
        a_before.spec
    );

    let report = pass(&bed, false).await;
    let web = report
        .settled
        .iter()
        .find(|s| s.finding.subject.to_string().contains("web-eth1"))
        .expect("the dead sandbox's DanmEp is found");
    let Outcome::Freed(freed) = &web.outcome else {
        panic!("not freed: {:?}", web.outcome)
    };
    let mut freed = freed.clone();
    freed.sort();
    assert_eq!(
        freed,
        [
            "10.77.0.0 (Calico)",
            "10.77.0.1 (Calico)",
            "10.77.0.4 (Calico)",
            "10.77.0.69 (Calico)"
        ]
    );
    assert!(
        !report
            .settled
            .iter()
            .any(|s| s.finding.subject.to_string().contains("db-eth1")),
        "the live pod's DanmEp is a finding"
    );
    assert!(
        eps.get_opt("web-eth1").await.unwrap().is_none(),
        "the DanmEp went"
    );
    assert!(eps.get_opt("db-eth1").await.unwrap().is_some());

    // Block A, as Calico's own release leaves it.
    let a_after = blocks.get("10-77-0-0-26").await.unwrap();
    check_block(&a_after.spec).unwrap();
    let s = &a_after.spec;
    assert_eq!(s.allocations[..5], [None, None, Some(0), Some(1), None]);
    assert_eq!(
        s.attributes
            .iter()
            .map(|a| a.handle_id.clone().unwrap())
            .collect::<Vec<_>>(),
        [LIVE, DEAD],
        "the attributes no allocation uses went, the others kept their order"
    );
    assert_eq!(
        s.attributes[1].secondary.as_ref().unwrap()["pod"],
        "someone-else"
    );
    assert_eq!(s.unallocated[s.unallocated.len() - 3..], [0, 1, 4]);
    // One write per handle released in it (two handles), each bumping it once.
    assert_eq!(s.sequence_number, a_before.spec.sequence_number + 2);
    assert_eq!(
        s.sequence_number_for_allocation
            .as_ref()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["2", "3"]
    );
    assert_eq!(
        s.affinity.as_deref(),
        Some("host:calico-node"),
        "an affine block stays"
    );
    // Block B, emptied and without affinity: deleted.
    assert!(blocks.get_opt("10-77-0-64-26").await.unwrap().is_none());

    // The handles count what the blocks hold.
    let counts = handle_counts(s);
    let dead = handles.get(DEAD).await.unwrap();
    assert_eq!(
        dead.spec.block,
        BTreeMap::from([("10.77.0.0/26".to_owned(), 1)])
    );
    assert_eq!(counts[DEAD], 1);
    assert!(
        handles
            .get_opt(&OTHER_NAME.to_lowercase())
            .await
            .unwrap()
            .is_none(),
        "emptied: deleted"
    );
    assert!(!counts.contains_key(OTHER_NAME));
    let live_after = handles.get(LIVE).await.unwrap();
    assert_eq!(live_after.spec, live_before.spec);
    assert_eq!(
        live_after.metadata.resource_version,
        live_before.metadata.resource_version
    );
    assert_eq!(counts[LIVE], 1);

    // Another pass finds nothing of Calico's to free, and writes nothing.
    let report = pass(&bed, false).await;
    assert!(
        !report
            .settled
            .iter()
            .any(|s| s.finding.subject.to_string().contains("web-eth1"))
    );
    let again = blocks.get("10-77-0-0-26").await.unwrap();
    assert_eq!(
        again.metadata.resource_version,
        a_after.metadata.resource_version
    );

    for o in ["10-77-0-0-26"] {
        let _ = blocks.delete(o, &Default::default()).await;
    }
    for h in [DEAD, LIVE] {
        let _ = handles.delete(h, &Default::default()).await;
    }
}
