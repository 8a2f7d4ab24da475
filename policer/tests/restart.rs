//! The `policer` binary killed (SIGKILL) and restarted while policies change, on the real
//! API server with real network namespaces: a pod a policy selects from start to end is
//! never seen without its table (a watcher lists every pod's table all along), and once
//! the changes stop every pod holds exactly the table that the cluster's final state
//! implies (computed afresh from the API and loaded into a scratch namespace to compare).
//! As root, with `nft`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::normalized;
use danm_crds::{DanmEp, DanmEpIface, DanmEpSpec, DanmNetworkPolicy};
use danm_policer::apply::{apply, current};
use danm_policer::index::{self, Index};
use danm_policer::ruleset::replace;
use danm_runtime::index::Change;
use danm_testkit::control_plane::ControlPlane;
use danm_testkit::netns::Netns;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const PODS: usize = 6;

/// The policer binary, killed with SIGKILL when dropped.
struct Policer(Child);

impl Policer {
    fn start(kubeconfig: &Path, node: &str, log: &Path) -> Policer {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Policer(
            Command::new(env!("CARGO_BIN_EXE_policer"))
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["--node-name", node, "--settle", "20ms", "--gate-socket", ""])
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Policer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the cluster's current state implies for each pod's namespace, loaded into
/// `scratch` and listed: from fresh lists, through the same decisions.
async fn expected(
    client: &kube::Client,
    node: &str,
    pods: &[(String, Netns)],
    ns: &str,
    scratch: &Netns,
) -> Vec<Option<Value>> {
    let lp = ListParams::default();
    let mut index = Index::new(node);
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&lp)
        .await
        .unwrap();
    index.on_namespace(Change::Relisted(
        namespaces.items.into_iter().map(index::namespace).collect(),
    ));
    let listed = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .unwrap();
    index.on_pod(Change::Relisted(
        listed.items.into_iter().map(index::pod).collect(),
    ));
    let eps = Api::<DanmEp>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .unwrap();
    index.on_endpoint(Change::Relisted(
        eps.items.into_iter().map(index::endpoint).collect(),
    ));
    let policies = Api::<DanmNetworkPolicy>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .unwrap();
    index.on_policy(Change::Relisted(
        policies.items.into_iter().map(index::policy).collect(),
    ));
    pods.iter()
        .map(|(name, _)| {
            let rules = index.rules(&(ns.to_owned(), name.clone()));
            if rules.is_empty() {
                return None;
            }
            apply(&path_of(scratch), &replace(&rules, &[]), None).expect("the oracle applies");
            normalized(&path_of(scratch))
        })
        .collect()
}

fn path_of(netns: &Netns) -> std::path::PathBuf {
    netns.path().into()
}

fn churn_policy(round: usize) -> DanmNetworkPolicy {
    let group = if round.is_multiple_of(2) { "a" } else { "b" };
    serde_json::from_value(json!({
        "apiVersion": "danm.io/v1", "kind": "DanmNetworkPolicy",
        "metadata": {"name": "churn"},
        "spec": {
            "podSelector": {"matchLabels": {"grp": group}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": format!("10.50.{round}.0/24")}}],
                         "ports": [{"port": 80 + round as i64}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"grp": group}}}]}]
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_policer_converges_and_never_leaves_a_selected_pod_without_its_table() {
    danm_testkit::netns::require_root();
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let ns = plane.namespace("restart").await;
    let node = format!("restart-node-{}", std::process::id());
    let pods: Vec<(String, Netns)> = (0..PODS)
        .map(|i| (format!("pod-{i}"), Netns::new("polk")))
        .collect();
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let eps: Api<DanmEp> = Api::namespaced(client.clone(), &ns);
    for (i, (name, netns)) in pods.iter().enumerate() {
        let group = if i.is_multiple_of(2) { "a" } else { "b" };
        pod_api
            .create(
                &PostParams::default(),
                &danm_testkit::pods::pod(name, &node, &[("app", "srv"), ("grp", group)]),
            )
            .await
            .unwrap();
        let ep = DanmEp::new(
            &format!("{name}-eth0"),
            DanmEpSpec {
                network_name: "signal".into(),
                network_type: "macvlan".into(),
                endpoint_id: format!("{name}-eth0"),
                interface: DanmEpIface {
                    name: "eth0".into(),
                    address: format!("10.98.0.{}/24", 10 + i),
                    ..Default::default()
                },
                host: node.clone(),
                pod: name.clone(),
                netns: netns.path(),
                api_type: "DanmNet".into(),
                ..Default::default()
            },
        );
        eps.create(&PostParams::default(), &ep).await.unwrap();
    }
    let policies: Api<DanmNetworkPolicy> = Api::namespaced(client.clone(), &ns);
    // Every pod is selected from start to end: ingress from the pods of the namespace.
    let base: DanmNetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "danm.io/v1", "kind": "DanmNetworkPolicy",
        "metadata": {"name": "base"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}
    }))
    .unwrap();
    policies
        .create(&PostParams::default(), &base)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("policer.log");
    let mut policer = Some(Policer::start(plane.kubeconfig(), &node, &log));

    // Every pod gets its first table; from then on a watcher lists every table all along.
    let paths: Vec<std::path::PathBuf> = pods.iter().map(|(_, n)| path_of(n)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !paths.iter().all(|p| normalized(p).is_some()) {
        assert!(
            Instant::now() < deadline,
            "no first tables within 30 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, paths) = (Arc::clone(&stop), paths.clone());
        std::thread::spawn(move || {
            let mut sweeps = 0usize;
            let mut missing = Vec::new();
            while !stop.load(Ordering::Acquire) {
                for path in &paths {
                    if current(path, None).expect("nft lists").is_none() {
                        missing.push(path.display().to_string());
                    }
                }
                sweeps += 1;
            }
            (sweeps, missing)
        })
    };

    // Twelve changes, 150 ms apart; the policer killed at the 4th and the 8th, restarted
    // after one more change made while it was down.
    let pp = PatchParams::default();
    for round in 0..12 {
        match round % 3 {
            0 => {
                policies
                    .create(&PostParams::default(), &churn_policy(round))
                    .await
                    .unwrap();
            }
            1 => {
                policies
                    .replace("churn", &PostParams::default(), &{
                        let mut p = churn_policy(round);
                        p.metadata.resource_version = policies
                            .get("churn")
                            .await
                            .unwrap()
                            .metadata
                            .resource_version;
                        p
                    })
                    .await
                    .unwrap();
            }
            _ => {
                policies
                    .delete("churn", &DeleteParams::default())
                    .await
                    .unwrap();
                let (name, _) = &pods[round % PODS];
                let group = if round.is_multiple_of(2) { "b" } else { "a" };
                pod_api
                    .patch(
                        name,
                        &pp,
                        &Patch::Merge(json!({"metadata": {"labels": {"grp": group}}})),
                    )
                    .await
                    .unwrap();
            }
        }
        match round {
            4 | 8 => drop(policer.take()),
            5 | 9 => policer = Some(Policer::start(plane.kubeconfig(), &node, &log)),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // A last change: the final state has the churn policy on group a.
    policies
        .create(&PostParams::default(), &churn_policy(12))
        .await
        .unwrap();

    // Every pod converges to what the final state implies.
    let scratch = Netns::new("polx");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let want = expected(&client, &node, &pods, &ns, &scratch).await;
        let have: Vec<Option<Value>> = paths.iter().map(|p| normalized(p)).collect();
        if want == have {
            assert!(want.iter().all(Option::is_some), "every pod is selected");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not converged within 30 s:\nwant {want:#?}\nhave {have:#?}\nlog {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Release);
    let (sweeps, missing) = watcher.join().unwrap();
    assert!(sweeps > 10, "the watcher ran {sweeps} sweeps only");
    assert!(
        missing.is_empty(),
        "a selected pod was seen without its table {} times in {sweeps} sweeps: {missing:?}",
        missing.len()
    );
    drop(policer);
}
