//! Pods as a user runs them, on the one-machine cluster: a Deployment on a macvlan DanmNet
//! over the nodes' `eth1` comes up with its interfaces built by `danm` and addresses from
//! ipamd (through mutual TLS, each node with its kubelet-style certificate), scales to zero
//! leaving nothing behind; a pod with a static address gets it back when re-created.

use danm_crds::DanmEp;
use danm_e2e::cluster::Cluster;
use danm_e2e::pods::{eventually, pod_ip, ready};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

const NETWORK: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: e2e-pods}
---
apiVersion: danm.io/v1
kind: DanmNet
metadata: {name: internal, namespace: e2e-pods}
spec:
  NetworkID: internal
  NetworkType: macvlan
  Options:
    host_device: eth1
    cidr: 198.18.1.0/24
    allocation_pool: {start: 198.18.1.10, end: 198.18.1.200}
    # A subnet of the unique-local /48 of the end-to-end suite.
    net6: fd2e:2e00:e2e0:1::/64
"#;

fn deployment(replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: e2e-pods}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata:
      labels: {{app: web}}
      annotations:
        danm.io/interfaces: '[{{"network":"internal","ip":"dynamic","ip6":"dynamic"}}]'
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{{name: web, image: registry.invalid/web:1}}]
"#
    )
}

const STATIC_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: static-0
  namespace: e2e-pods
  annotations:
    danm.io/interfaces: '[{"network":"internal","ip":"198.18.1.250/24"}]'
spec:
  terminationGracePeriodSeconds: 1
  containers: [{name: db, image: registry.invalid/db:1}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_comes_up_with_danm_interfaces_and_scales_to_zero_leaving_nothing() {
    danm_e2e::pods::init_logs();
    let cluster = Cluster::start(2).await;
    let client = cluster.plane.client().await;
    cluster.kubectl(&["apply", "-f", "-"], NETWORK);
    cluster.kubectl(&["apply", "-f", "-"], &deployment(4));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "e2e-pods");
    let eps: Api<DanmEp> = Api::namespaced(client.clone(), "e2e-pods");
    let running = eventually(
        90,
        "4 web pods ready",
        || cluster.diagnose(),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            (list.items.len() == 4 && list.items.iter().all(ready)).then_some(list.items)
        },
    )
    .await;
    let mut addresses: Vec<String> = running.iter().map(pod_ip).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 4, "4 distinct addresses: {addresses:?}");
    // Dual stack: each pod reports an IPv6 address of the network too, all distinct.
    let v6: std::collections::BTreeSet<String> = running
        .iter()
        .filter_map(|p| {
            let ips = p.status.as_ref()?.pod_ips.clone()?;
            ips.into_iter().map(|i| i.ip).find(|ip| ip.contains(':'))
        })
        .collect();
    assert_eq!(v6.len(), 4, "{v6:?}");
    assert!(
        v6.iter().all(|a| a.starts_with("fd2e:2e00:e2e0:1:")),
        "{v6:?}"
    );
    let nodes: std::collections::BTreeSet<String> = running
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    assert_eq!(nodes.len(), 2, "the scheduler spread them: {nodes:?}");
    for pod in &running {
        let ip = pod_ip(pod);
        assert!(ip.starts_with("198.18.1."), "{ip}");
        // The interface exists in the pod's namespace, as DANM names it, with that address.
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
        let node = cluster.nodes.iter().find(|n| n.name == node_name).unwrap();
        let netns = node
            .sandbox_netns(pod.metadata.uid.as_deref().unwrap())
            .expect("the pod's sandbox");
        let shown = danm_e2e::fabric::ip(&["-n", &netns, "-o", "addr", "show", "dev", "eth0"]);
        assert!(shown.contains(&format!("{ip}/24")), "{shown}");
        let ip6 = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ips.clone())
            .and_then(|ips| ips.into_iter().map(|i| i.ip).find(|ip| ip.contains(':')))
            .unwrap();
        assert!(shown.contains(&format!("{ip6}/64")), "{shown}");
    }
    let records = eps.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(records.len(), 4);
    for record in &records {
        let pod = running
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(&record.spec.pod))
            .unwrap();
        assert_eq!(
            Some(&record.spec.host),
            pod.spec.as_ref().and_then(|s| s.node_name.as_ref()),
            "the record's host is the pod's node"
        );
    }

    cluster.kubectl(&["apply", "-f", "-"], &deployment(0));
    eventually(
        60,
        "every web pod gone and its DanmEp freed",
        || cluster.diagnose(),
        || async {
            let left = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?
                .items
                .len();
            let records = eps.list(&ListParams::default()).await.ok()?.items.len();
            (left == 0 && records == 0).then_some(())
        },
    )
    .await;

    // A static address comes back to a pod re-created under the same name.
    cluster.kubectl(&["apply", "-f", "-"], STATIC_POD);
    let first = eventually(
        60,
        "static-0 ready",
        || cluster.diagnose(),
        || async {
            let pod = pods.get_opt("static-0").await.ok()??;
            ready(&pod).then_some(pod)
        },
    )
    .await;
    assert_eq!(pod_ip(&first), "198.18.1.250");
    cluster.kubectl(
        &["delete", "pod", "static-0", "-n", "e2e-pods", "--wait=true"],
        "",
    );
    cluster.kubectl(&["apply", "-f", "-"], STATIC_POD);
    let second = eventually(
        60,
        "static-0 ready again",
        || cluster.diagnose(),
        || async {
            let pod = pods.get_opt("static-0").await.ok()??;
            (ready(&pod) && pod.metadata.uid != first.metadata.uid).then_some(pod)
        },
    )
    .await;
    assert_eq!(pod_ip(&second), "198.18.1.250");
}
