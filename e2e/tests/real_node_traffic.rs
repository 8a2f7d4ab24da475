//! Traffic between containers on a real node (containerd 1.6), as DANM's svcwatcher demo
//! has it: a server container listens on a pod with two interfaces (`eth0` on the
//! namespace's default network, `eth1` on `internal`), a headless Service selects it on
//! `internal` through DANM's annotations, svcwatcher publishes the server's `internal`
//! address in the Service's EndpointSlice, and a client container connects to that
//! address and gets the server's answer. Every container runs as the manifests run ours:
//! non-root, read-only root file system, no capabilities, no privilege escalation. A
//! client aimed at a port nothing listens on fails, so the check is not vacuous.

use std::time::{Duration, Instant};

use danm_e2e::cluster::Cluster;
use danm_e2e::fabric::is_root;
use danm_e2e::pods::{phase_when_done, ready};
use danm_e2e::real_node::Containerd;
use danm_e2e::real_node::bed::{HostLink, default_network, diagnose, host_link, start_node};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};

const SECURITY: &str = "{runAsNonRoot: true, runAsUser: 65535, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}";

fn internal_network(link: &HostLink) -> String {
    format!(
        r#"
apiVersion: danm.io/v1
kind: DanmNet
metadata: {{name: internal, namespace: real-node}}
spec:
  NetworkID: internal
  NetworkType: macvlan
  Options:
    host_device: {host}
    cidr: 198.18.9.0/24
    allocation_pool: {{start: 198.18.9.10, end: 198.18.9.20}}
---
apiVersion: v1
kind: Service
metadata:
  name: server
  namespace: real-node
  annotations:
    danm.io/selector: '{{"app":"server"}}'
    danm.io/network: internal
spec:
  clusterIP: None
  ports: [{{name: check, port: 5555, protocol: TCP}}]
"#,
        host = link.name
    )
}

fn server() -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: real-node
  labels: {{app: server}}
  annotations:
    danm.io/interfaces: '[{{"network":"default","ip":"dynamic"}},{{"network":"internal","ip":"dynamic"}}]'
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: server
    image: danm.test/netcheck:1
    imagePullPolicy: Never
    args: [serve, "5555"]
    securityContext: {SECURITY}
"#
    )
}

fn client(name: &str, target: &str, tries: u32) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: real-node
  annotations:
    danm.io/interfaces: '[{{"network":"default","ip":"dynamic"}},{{"network":"internal","ip":"dynamic"}}]'
spec:
  automountServiceAccountToken: false
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: danm.test/netcheck:1
    imagePullPolicy: Never
    args: [dial, "{target}", "{tries}"]
    securityContext: {SECURITY}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_container_reaches_a_server_container_through_svcwatchers_slice() {
    danm_e2e::pods::init_logs();
    assert!(
        is_root(),
        "a real node needs root (kubelet, containerd, runc)"
    );
    let containerd = Containerd::debian();
    let cluster = Cluster::start_for_real_nodes().await;
    let (management, data) = (host_link(), host_link());
    cluster.kubectl(&["apply", "-f", "-"], &default_network(&management, 20));
    cluster.kubectl(&["apply", "-f", "-"], &internal_network(&data));
    let node = start_node(&cluster, containerd).await;
    node.import(&cluster.plane, "netcheck");
    let client_api = cluster.plane.client().await;
    let pods: Api<Pod> = Api::namespaced(client_api.clone(), "real-node");
    let slices: Api<EndpointSlice> = Api::namespaced(client_api.clone(), "real-node");
    let diagnose = || diagnose(&cluster, &node);

    cluster.kubectl(&["apply", "-f", "-"], &server());
    let deadline = Instant::now() + Duration::from_secs(90);
    let address = loop {
        let running = pods
            .get_opt("server")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| ready(&p));
        let published: Vec<String> = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=server"))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|s| s.endpoints)
            .flat_map(|e| e.addresses)
            .collect();
        if running && let [address] = &published[..] {
            break address.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the server is not Ready with its address in the Service's slice: {published:?}\n{}",
            diagnose()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        address.starts_with("198.18.9."),
        "the slice holds the server's internal address: {address}"
    );

    cluster.kubectl(
        &["apply", "-f", "-"],
        &client("client", &format!("{address}:5555"), 30),
    );
    assert_eq!(
        phase_when_done(&pods, "client", diagnose).await,
        "Succeeded",
        "the client got the server's answer over internal\n{}",
        diagnose()
    );
    cluster.kubectl(
        &["apply", "-f", "-"],
        &client("nobody-listens", &format!("{address}:5556"), 3),
    );
    assert_eq!(
        phase_when_done(&pods, "nobody-listens", diagnose).await,
        "Failed",
        "a client of a port nothing listens on fails"
    );

    for pod in ["client", "nobody-listens", "server"] {
        cluster.kubectl(
            &["delete", "pod", pod, "-n", "real-node", "--wait=true"],
            "",
        );
    }
    let held: Vec<String> = cluster
        .allocations()
        .await
        .into_iter()
        .filter(|a| a.starts_with("real-node/"))
        .collect();
    assert!(held.is_empty(), "nothing held: {held:?}");
    drop(node);
    drop((management, data));
}
