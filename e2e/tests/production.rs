//! DANM's production mode on the one-machine cluster: a TenantConfig with a VxLAN profile,
//! a TenantNetwork admitted and mutated by the webhook (registered with the API server,
//! running as its ServiceAccount), netwatcher's `vx_` link on every node (counted on the
//! `/metrics` of its admin server, scraped on the node), and pods on two nodes attached
//! over it that reach each other through the VxLAN.

use std::time::{Duration, Instant};

use danm_crds::TenantNetwork;
use danm_e2e::cluster::Cluster;
use danm_e2e::pods::wait_ready;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

const TENANT_CONFIG: &str = r#"
apiVersion: danm.io/v1
kind: TenantConfig
metadata: {name: tconf}
hostDevices:
- {name: eth1, vniType: vxlan, vniRange: 700-710}
"#;

const TENANT: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: e2e-tenant}
---
apiVersion: danm.io/v1
kind: TenantNetwork
metadata: {name: backend, namespace: e2e-tenant}
spec:
  NetworkID: backend
  NetworkType: macvlan
  Options:
    container_prefix: be
    cidr: 198.18.30.0/24
    allocation_pool: {start: 198.18.30.10, end: 198.18.30.100}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: tenant-app, namespace: e2e-tenant}
spec:
  replicas: 2
  selector: {matchLabels: {app: tenant-app}}
  template:
    metadata:
      labels: {app: tenant-app}
      annotations:
        danm.io/interfaces: '[{"tenantNetwork":"backend","ip":"dynamic"}]'
    spec:
      terminationGracePeriodSeconds: 1
      # One per node: the pods talk to each other across the VxLAN.
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - topologyKey: kubernetes.io/hostname
            labelSelector: {matchLabels: {app: tenant-app}}
      containers: [{name: c, image: registry.invalid/app:1}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_network_gets_a_vxlan_from_the_webhook_and_its_pods_talk_over_it() {
    danm_e2e::pods::init_logs();
    let mut cluster = Cluster::start(2).await;
    cluster.start_webhook().await;
    let client = cluster.plane.client().await;
    cluster.kubectl(&["apply", "-f", "-"], TENANT_CONFIG);
    cluster.kubectl(&["apply", "-f", "-"], TENANT);

    // The webhook chose the profile and the id.
    let network = Api::<TenantNetwork>::namespaced(client.clone(), "e2e-tenant")
        .get("backend")
        .await
        .unwrap();
    let options = &network.spec.network.options;
    assert_eq!(options.host_device.as_deref(), Some("eth1"), "{options:?}");
    let vni = options.vxlan.expect("a VxLAN id from the TenantConfig");
    assert!((700..=710).contains(&vni), "{vni}");
    let link = format!("vx_{}", network.spec.network.network_id);

    // netwatcher's link on every node, with that VNI.
    for node in &cluster.nodes {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let shown = node.machine.ip(&["-d", "link", "show"]);
            if shown.contains(&link) && shown.contains(&format!("vxlan id {vni}")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {link} with VNI {vni}:\n{shown}",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Its admin server, scraped on the node as Prometheus would: the link it created
        // is counted (once its sync has ended), and it is ready.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let metrics = node.machine.http_get(9091, "/metrics").unwrap();
            let ready = node.machine.http_get(9091, "/readyz").unwrap();
            let created = metrics
                .lines()
                .find_map(|l| l.strip_prefix("danm_netwatcher_links_created_total "))
                .and_then(|v| v.trim().parse::<f64>().ok());
            if metrics.starts_with("HTTP/1.1 200")
                && created.is_some_and(|n| n >= 1.0)
                && ready.starts_with("HTTP/1.1 200")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no link counted as created, or not ready:\n{metrics}\n{ready}",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    // The pods come up over it, one per node, and reach each other.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "e2e-tenant");
    let running = wait_ready(&cluster, &pods, "app=tenant-app", 2, 90).await;
    let netns_of = |pod: &Pod| {
        let node_name = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
        let node = cluster.nodes.iter().find(|n| n.name == node_name).unwrap();
        node.sandbox_netns(pod.metadata.uid.as_deref().unwrap())
            .unwrap()
    };
    let (a, b) = (netns_of(&running[0]), netns_of(&running[1]));
    let b_address: std::net::IpAddr = running[1]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        b_address.to_string().starts_with("198.18.30."),
        "{b_address}"
    );
    assert!(
        danm_e2e::tunnel::tcp_reaches(&a, &b, b_address, 8080),
        "no TCP between the tenant's pods across the VxLAN"
    );
}
