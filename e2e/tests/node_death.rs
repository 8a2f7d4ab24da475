//! A node dies (its agent and namespaces vanish, its Node object is deleted): Kubernetes'
//! pod garbage collector deletes its pods, the ReplicaSet makes replacements, and the
//! cleaner frees the dead pods' addresses, whose CNI DEL never ran. The pool holds exactly
//! as many addresses as the Deployment has pods, so the replacements can start only once
//! the cleaner has freed them.

use std::time::{Duration, Instant};

use danm_crds::DanmEp;
use danm_e2e::cluster::Cluster;
use danm_e2e::pods::{node_of, ready, wait_ready};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: e2e-death}
---
apiVersion: danm.io/v1
kind: DanmNet
metadata: {name: tight, namespace: e2e-death}
spec:
  NetworkID: tight
  NetworkType: macvlan
  Options:
    host_device: eth1
    cidr: 198.18.3.0/24
    allocation_pool: {start: 198.18.3.10, end: 198.18.3.15}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: six, namespace: e2e-death}
spec:
  replicas: 6
  selector: {matchLabels: {app: six}}
  template:
    metadata:
      labels: {app: six}
      annotations:
        danm.io/interfaces: '[{"network":"tight","ip":"dynamic"}]'
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: registry.invalid/six:1}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_addresses_are_freed_by_the_cleaner_and_its_pods_replaced() {
    danm_e2e::pods::init_logs();
    let mut cluster = Cluster::start(2).await;
    let client = cluster.plane.client().await;
    cluster.kubectl(&["apply", "-f", "-"], MANIFESTS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "e2e-death");
    let eps: Api<DanmEp> = Api::namespaced(client.clone(), "e2e-death");
    let before = wait_ready(&cluster, &pods, "app=six", 6, 90).await;
    let dead: Vec<&Pod> = before.iter().filter(|p| node_of(p) == "node-2").collect();
    assert!(!dead.is_empty(), "the scheduler put some pods on node-2");
    let dead_uids: Vec<String> = dead.iter().filter_map(|p| p.metadata.uid.clone()).collect();

    cluster.kill_node("node-2").await;
    // The pod garbage collector deletes the dead node's pods (after its 40 s quarantine);
    // their replacements land on node-1 and wait: the pool is full of the dead pods'
    // addresses, whose DanmEps nobody deleted.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = pods
            .list(&ListParams::default().labels("app=six"))
            .await
            .unwrap()
            .items;
        let gone = !list
            .iter()
            .any(|p| dead_uids.contains(p.metadata.uid.as_ref().unwrap()));
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead node's pods are not deleted\n{}",
            cluster.diagnose()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let leaked = eps.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(leaked.len(), 6, "the dead pods' DanmEps are still there");
    let list = pods
        .list(&ListParams::default().labels("app=six"))
        .await
        .unwrap()
        .items;
    assert!(
        list.iter().filter(|p| ready(p)).count() < 6,
        "the replacements cannot start yet"
    );

    let report = cluster.run_cleaner().await;
    let text = report.to_string();
    assert!(
        text.contains("pod-gone") || text.contains("node-gone"),
        "{report:#}"
    );
    let after = wait_ready(&cluster, &pods, "app=six", 6, 90).await;
    assert!(
        after.iter().all(|p| node_of(p) == "node-1"),
        "every pod now runs on node-1"
    );
    let records = eps.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(
        records.len(),
        6,
        "one DanmEp per live pod, none of the dead ones"
    );
    for record in &records {
        assert!(!dead_uids.contains(&record.spec.pod_uid), "{record:?}");
    }
}
