//! The cleaner on the real API server with ipamd: exactly what is leaked is freed, in every
//! way it can leak, and nothing else; a dry run frees nothing; a second pass finds nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::{Bed, TURN};
use danm_core::OwnerKey;
use danm_crds::{AllocationShard, DanmEp, DanmNet};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::Value;

const CONCURRENCY: usize = 32;

/// The `cleaner` binary, `--once` with no grace period; its JSON report and exit status.
fn cleaner(bed: &Bed, extra: &[&str]) -> (Value, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_cleaner"))
        .args([
            "--once",
            "-o",
            "json",
            "--grace",
            "0s",
            "--ipamd",
            &bed.ipamd_url,
        ])
        .args(extra)
        .env("KUBECONFIG", &bed.cleaner_kubeconfig)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("cleaner printed no JSON ({e}); its log:\n{stderr}"));
    assert!(
        stderr.contains("cleaner") && stderr.contains("scanned"),
        "the summary line is logged: {stderr}"
    );
    (report, out.status.code().unwrap_or(-1))
}

/// The findings of a report that concern namespace `ns` (the cleaner sees the whole
/// cluster), without shards of deleted networks (the garbage collector may or may not
/// have removed them first), as (reason, outcome) counts.
fn ours(report: &Value, ns: &str) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for f in report["findings"].as_array().unwrap() {
        let mine = f["namespace"] == ns
            || f["network"]
                .as_str()
                .is_some_and(|n| n.contains(&format!(" {ns}/")));
        if mine && f["kind"] != "AllocationShard" {
            let key = (
                f["reason"].as_str().unwrap().to_owned(),
                f["outcome"].as_str().unwrap().to_owned(),
            );
            *counts.entry(key).or_default() += 1;
        }
    }
    counts
}

async fn endpoint_names(bed: &Bed) -> BTreeSet<String> {
    Api::<DanmEp>::namespaced(bed.client.clone(), &bed.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.metadata.name.unwrap())
        .collect()
}

fn ep_name(cid: &str) -> String {
    OwnerKey::new(cid, "eth0").unwrap().endpoint_name()
}

/// 1,000 DanmEps of which 300 are leaked (pod gone 100, pod replaced under its name 60, pod
/// finished 40, node gone 60, network gone 40), 50 leaked on a NotReady node's live pods
/// kept, plus 50 addresses no DanmEp names: a dry run frees nothing, a pass frees exactly
/// the leaked ones, a second pass finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_what_is_leaked_is_freed_and_a_second_run_frees_nothing() {
    let _turn = TURN.lock().await;
    let bed = Bed::start("leaks").await;
    let ns = bed.ns.clone();
    let leaky = bed.danmnet("leaky", "10.80.0.0/20", None).await;
    let doomed = bed.danmnet("doomed", "10.81.0.0/24", None).await;
    let (ready, not_ready, gone) = (
        format!("{ns}-ready"),
        format!("{ns}-notready"),
        format!("{ns}-gone"),
    );
    bed.node(&ready, true).await;
    bed.node(&not_ready, false).await;
    bed.node(&gone, true).await;

    // Pods: 650 live on the Ready node, 50 live on the NotReady one, 60 that replaced an
    // earlier pod of their name, 40 that finished, 60 on the node that will go.
    let mut pods: Vec<(String, String)> = Vec::new();
    for i in 0..650 {
        pods.push((format!("live-{i}"), ready.clone()));
    }
    for i in 0..50 {
        pods.push((format!("unready-{i}"), not_ready.clone()));
    }
    for i in 0..60 {
        pods.push((format!("replaced-{i}"), ready.clone()));
    }
    for i in 0..40 {
        pods.push((format!("finished-{i}"), ready.clone()));
    }
    for i in 0..60 {
        pods.push((format!("stranded-{i}"), gone.clone()));
    }
    let uids: BTreeMap<String, String> = futures::stream::iter(pods.clone())
        .map(|(name, node)| {
            let bed = &bed;
            async move { (name.clone(), bed.pod(&name, &node).await) }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for i in 0..40 {
        bed.pod_phase(&format!("finished-{i}"), "Succeeded").await;
    }

    // Allocations: (network, cid, pod, uid recorded, node).
    let mut asks: Vec<(bool, String, String, String, String)> = Vec::new();
    for (name, node) in &pods {
        let uid = if name.starts_with("replaced-") {
            format!("earlier-{name}")
        } else {
            uids[name].clone()
        };
        asks.push((true, format!("cid-{name}"), name.clone(), uid, node.clone()));
    }
    for i in 0..100 {
        let name = format!("vanished-{i}");
        asks.push((
            true,
            format!("cid-{name}"),
            name,
            format!("uid-{i}"),
            ready.clone(),
        ));
    }
    for i in 0..40 {
        let name = format!("live-{i}");
        asks.push((
            false,
            format!("cid-doomed-{i}"),
            name.clone(),
            uids[&name].clone(),
            ready.clone(),
        ));
    }
    for i in 0..50 {
        asks.push((
            true,
            format!("cid-orphan-{i}"),
            format!("live-{i}"),
            String::new(),
            ready.clone(),
        ));
    }
    let given: Vec<(String, String)> = futures::stream::iter(asks)
        .map(|(on_leaky, cid, pod, uid, node)| {
            let bed = &bed;
            let network = if on_leaky {
                leaky.clone()
            } else {
                doomed.clone()
            };
            async move {
                let a = bed
                    .allocate(&network, &cid, &pod, &uid, &node, "dynamic", "")
                    .await
                    .unwrap_or_else(|e| panic!("allocate {cid}: {e}"));
                (cid, a.ip)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    assert_eq!(given.len(), 1050);
    // The orphans: their DanmEps vanish (as if ipamd died before writing them).
    let eps = Api::<DanmEp>::namespaced(bed.client.clone(), &ns);
    for i in 0..50 {
        eps.delete(
            &ep_name(&format!("cid-orphan-{i}")),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    }
    bed.delete_node(&gone).await;
    Api::<DanmNet>::namespaced(bed.client.clone(), &ns)
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();

    let live_cids: BTreeSet<String> = pods
        .iter()
        .filter(|(n, _)| n.starts_with("live-") || n.starts_with("unready-"))
        .map(|(n, _)| format!("cid-{n}"))
        .collect();
    assert_eq!(live_cids.len(), 700);
    let before_eps = endpoint_names(&bed).await;
    assert_eq!(before_eps.len(), 1000);
    let before_leaky = bed.allocations(&leaky).await;
    assert_eq!(before_leaky.len(), 1010);

    let expected = |outcome: &str| -> BTreeMap<(String, String), usize> {
        [
            ("pod-gone", 100),
            ("pod-replaced", 60),
            ("pod-finished", 40),
            ("node-gone", 60),
            ("network-gone", 40),
            ("orphan", 50),
        ]
        .into_iter()
        .map(|(r, n)| ((r.to_owned(), outcome.to_owned()), n))
        .collect()
    };

    // A dry run: the same findings, nothing freed.
    let (dry, status) = cleaner(&bed, &["--dry-run"]);
    assert_eq!(status, 0, "{dry:#}");
    assert_eq!(ours(&dry, &ns), expected("would-free"));
    assert_eq!(
        endpoint_names(&bed).await,
        before_eps,
        "a dry run deletes nothing"
    );
    assert_eq!(
        bed.allocations(&leaky).await,
        before_leaky,
        "a dry run frees nothing"
    );

    // The pass: exactly the leaked ones go.
    let (run, status) = cleaner(&bed, &[]);
    assert_eq!(status, 0, "{run:#}");
    assert_eq!(ours(&run, &ns), expected("freed"));
    let live_eps: BTreeSet<String> = live_cids.iter().map(|c| ep_name(c)).collect();
    assert_eq!(endpoint_names(&bed).await, live_eps);
    let held: BTreeSet<String> = bed
        .allocations(&leaky)
        .await
        .into_iter()
        .map(|(_, cid)| cid)
        .collect();
    assert_eq!(held, live_cids, "only the live pods hold addresses");
    let freed_addresses: usize = run["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["namespace"] == ns.as_str() || f["kind"] == "Address")
        .map(|f| f["freed"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(
        freed_addresses,
        260 + 50,
        "every leaked address on the live network"
    );

    // A second pass finds nothing of ours.
    let (again, status) = cleaner(&bed, &[]);
    assert_eq!(status, 0);
    assert_eq!(ours(&again, &ns), BTreeMap::new(), "{again:#}");
    assert_eq!(endpoint_names(&bed).await, live_eps);
}

/// A shard ipamd refuses (its spec says another family than its name) is one the cleaner
/// refuses too (another family than its first address): reported as corrupt, nothing freed
/// from it, even an address no DanmEp names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_of_the_wrong_family_is_reported_and_nothing_is_freed_from_it() {
    let _turn = TURN.lock().await;
    let bed = Bed::start("family").await;
    let net = bed.danmnet("family", "10.77.0.0/24", None).await;
    bed.node("family-node", true).await;
    bed.allocate(
        &net,
        "cid-family",
        "gone",
        "uid-gone",
        "family-node",
        "dynamic",
        "",
    )
    .await
    .unwrap();
    // Its DanmEp gone, the address is one no DanmEp names.
    Api::<DanmEp>::namespaced(bed.client.clone(), &bed.ns)
        .delete(&ep_name("cid-family"), &DeleteParams::default())
        .await
        .unwrap();
    // A DanmNet's shards are in its namespace.
    let shards: Api<AllocationShard> = Api::namespaced(bed.client.clone(), &bed.ns);
    let listed = shards
        .list(&ListParams::default().labels("danm.io/network-name=family"))
        .await
        .unwrap()
        .items;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let shard = listed[0].metadata.name.clone().unwrap();
    let wrong = serde_json::json!({"spec": {"family": "IPv6"}});
    shards
        .patch(&shard, &PatchParams::default(), &Patch::Merge(&wrong))
        .await
        .unwrap();

    let report = bed.pass(false).await;
    let named = format!("{}/{shard}", bed.ns);
    assert!(
        report.corrupt_shards.contains(&named),
        "{named} not reported: {:?}",
        report.corrupt_shards
    );
    let from_it: Vec<_> = report
        .settled
        .iter()
        .filter(|s| format!("{:?}", s.finding.subject).contains(&shard))
        .collect();
    assert!(
        from_it.is_empty(),
        "freed from a refused shard: {from_it:?}"
    );
    // Leave no corrupt shard for the other tests' passes.
    shards
        .delete(&shard, &DeleteParams::default())
        .await
        .unwrap();
}
