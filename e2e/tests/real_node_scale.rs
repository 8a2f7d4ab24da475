//! 100 pods through kubelet and containerd (2.4.2) on one real node, every sandbox's
//! network built by `danm`: how long from create to Ready, and how much of it is the CNI.
//! Each call of `danm` is timed by a wrapper on the node. The numbers are printed (run
//! with `--nocapture`; docs/benchmarks.md has a run's); nothing here asserts a time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use danm_e2e::cluster::Cluster;
use danm_e2e::fabric::is_root;
use danm_e2e::pods::ready;
use danm_e2e::real_node::bed::{default_network, host_link, node_config};
use danm_e2e::real_node::{Containerd, RealNode, RealNodeConfig};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

const PODS: usize = 100;

fn deployment(replicas: usize) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: many, namespace: real-node}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: many}}}}
  template:
    metadata:
      labels: {{app: many}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      containers: [{{name: app, image: "danm.test/pause:1", imagePullPolicy: Never, command: [/pause]}}]
"#
    )
}

/// The `q` quantile of `values` (sorted here).
fn quantile(values: &mut [Duration], q: f64) -> Duration {
    values.sort();
    values
        .get(((values.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_pods_start_and_go_through_kubelet_and_the_cni_share_is_reported() {
    danm_e2e::pods::init_logs();
    assert!(
        is_root(),
        "a real node needs root (kubelet, containerd, runc)"
    );
    let cluster = Cluster::start_for_real_nodes().await;
    let containerd = Containerd::built(&cluster.plane);
    let link = host_link();
    cluster.kubectl(&["apply", "-f", "-"], &default_network(&link, 250));
    let node = RealNode::start(
        &cluster.plane,
        containerd,
        RealNodeConfig {
            cni_timing: true,
            ..node_config(&cluster)
        },
    )
    .await;
    let client = cluster.plane.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "real-node");
    let selector = ListParams::default().labels("app=many");

    // Each pod: when the test first saw it, and when it first saw it Ready (every 200 ms).
    let started = Instant::now();
    cluster.kubectl(&["apply", "-f", "-"], &deployment(PODS));
    let mut seen: BTreeMap<String, (Instant, Option<Instant>)> = BTreeMap::new();
    let deadline = started + Duration::from_secs(300);
    loop {
        let list = pods
            .list(&selector)
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let now = Instant::now();
        for pod in &list {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let entry = seen.entry(name).or_insert((now, None));
            if entry.1.is_none() && ready(pod) {
                entry.1 = Some(now);
            }
        }
        let ready_count = seen.values().filter(|(_, r)| r.is_some()).count();
        if ready_count == PODS {
            break;
        }
        assert!(
            now < deadline,
            "{ready_count} of {PODS} pods ready after 300 s\n{}\n--- kubelet\n{}",
            cluster.diagnose(),
            node.kubelet_log(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_ready = started.elapsed();
    let mut to_ready: Vec<Duration> = seen
        .values()
        .filter_map(|(first, ready)| Some(ready.as_ref()?.duration_since(*first)))
        .collect();
    let addresses = cluster.allocations().await;
    assert_eq!(
        addresses
            .iter()
            .filter(|a| a.starts_with("real-node/"))
            .count(),
        PODS,
        "one address per pod: {addresses:?}"
    );

    let deleting = Instant::now();
    cluster.kubectl(&["apply", "-f", "-"], &deployment(0));
    loop {
        let left = pods
            .list(&selector)
            .await
            .map(|l| l.items.len())
            .unwrap_or(PODS);
        let held = cluster
            .allocations()
            .await
            .iter()
            .filter(|a| a.starts_with("real-node/"))
            .count();
        if left == 0 && held == 0 {
            break;
        }
        assert!(
            deleting.elapsed() < Duration::from_secs(300),
            "{left} pods and {held} addresses left after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_gone = deleting.elapsed();

    let timings = node.cni_timings();
    let failed: Vec<_> = timings.iter().filter(|t| t.status != 0).collect();
    let mut adds: Vec<Duration> = timings
        .iter()
        .filter(|t| t.command == "ADD" && t.status == 0)
        .map(|t| t.took)
        .collect();
    let mut dels: Vec<Duration> = timings
        .iter()
        .filter(|t| t.command == "DEL")
        .map(|t| t.took)
        .collect();
    assert_eq!(
        adds.len(),
        PODS,
        "one successful ADD per pod; failed calls: {failed:?}"
    );
    let add_total: Duration = adds.iter().sum();
    let ready_total: Duration = to_ready.iter().sum();
    println!(
        "{PODS} pods on one real node (containerd {}, kubelet v1.34.4):\n\
         all Ready {:.1} s after the apply; per pod, first seen to Ready: median {:.2} s, p95 {:.2} s, max {:.2} s\n\
         danm ADD: median {} ms, p95 {} ms, max {} ms; the CNI's share of the pods' time to Ready: {:.1} %\n\
         danm DEL: {} calls, median {} ms, p95 {} ms; all gone (pods and addresses) {:.1} s after scaling to 0; failed calls: {}",
        node.containerd.minor_version(),
        all_ready.as_secs_f64(),
        quantile(&mut to_ready, 0.5).as_secs_f64(),
        quantile(&mut to_ready, 0.95).as_secs_f64(),
        quantile(&mut to_ready, 1.0).as_secs_f64(),
        quantile(&mut adds, 0.5).as_millis(),
        quantile(&mut adds, 0.95).as_millis(),
        quantile(&mut adds, 1.0).as_millis(),
        100.0 * add_total.as_secs_f64() / ready_total.as_secs_f64().max(f64::EPSILON),
        dels.len(),
        quantile(&mut dels, 0.5).as_millis(),
        quantile(&mut dels, 0.95).as_millis(),
        all_gone.as_secs_f64(),
        failed.len(),
    );
    drop(node);
    drop(link);
}
