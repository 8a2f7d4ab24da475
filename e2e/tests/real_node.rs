//! Pods on a real node: kubelet and containerd (Debian's 1.6, or 2.4.2 as
//! `testkit/k8s/build.sh` builds it) start them, and containerd calls the `danm` plugin with `00-danm.conf` rendered from
//! `deploy/base/cni/00-danm.conf.template` as the CNI installer renders it (only the
//! node's paths differ). The plugin reaches ipamd over mutual TLS with the node's
//! certificate, and ipamd authorizes the node for the pod as in production.
//!
//! The first contact of the suite with a container runtime found that containerd 1.6 ran
//! ADD and then refused every sandbox with `unsupported CNI result version "1.1.0"`; the
//! first tests here are that pod, on both runtimes, Running with its address from ipamd and
//! gone without a trace when deleted. Then: an ipamd outage (nodes stay Ready, new pods
//! wait), and kubelet and containerd restarted under a StatefulSet pod with a static
//! address.

use std::time::{Duration, Instant};

use danm_crds::DanmEp;
use danm_e2e::cluster::Cluster;
use danm_e2e::fabric::is_root;
use danm_e2e::pods::{eventually, pod_ip, ready};
use danm_e2e::real_node::bed::{default_network, diagnose, host_link, node_config, start_node};
use danm_e2e::real_node::{Containerd, HostSnapshot, PAUSE_IMAGE, RealNode, RealNodeConfig};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};

/// One real node runs at a time (a lock on the host); the tests of this binary also start
/// their clusters one at a time, so that no control plane idles while another test runs.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pod(name: &str, node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: real-node}}
spec:
  nodeName: {node}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers: [{{name: app, image: "{PAUSE_IMAGE}", imagePullPolicy: Never, command: [/pause]}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_1_6_starts_a_pod_whose_network_danm_built_and_deletes_it_leaving_nothing() {
    assert!(
        is_root(),
        "a real node needs root (kubelet, containerd, runc)"
    );
    let _serial = SERIAL.lock().await;
    let containerd = Containerd::debian();
    a_pod_lives_and_goes(Cluster::start_for_real_nodes().await, containerd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_2_starts_a_pod_whose_network_danm_built_and_deletes_it_leaving_nothing() {
    assert!(
        is_root(),
        "a real node needs root (kubelet, containerd, runc)"
    );
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_for_real_nodes().await;
    let containerd = Containerd::built(&cluster.plane);
    assert!(
        containerd.minor_version().starts_with("2."),
        "{}",
        containerd.version
    );
    a_pod_lives_and_goes(cluster, containerd).await;
}

/// One pod on a real node with `containerd`: Running with an address of the default
/// network from ipamd and a DanmEp on the node; deleted, nothing held; and once the node
/// is gone, the host is as it was (cgroups, network namespaces, shim sockets, kubelet's
/// log links, mounts).
async fn a_pod_lives_and_goes(cluster: Cluster, containerd: Containerd) {
    danm_e2e::pods::init_logs();
    let host_before = HostSnapshot::take();
    let link = host_link();
    cluster.kubectl(&["apply", "-f", "-"], &default_network(&link, 20));
    let node = start_node(&cluster, containerd).await;
    let diagnose = || diagnose(&cluster, &node);
    let client = cluster.plane.client().await;
    // The node says which runtime it runs: the one under test.
    let reported = Api::<Node>::all(client.clone())
        .get("real-1")
        .await
        .unwrap()
        .status
        .and_then(|s| s.node_info)
        .map(|i| i.container_runtime_version)
        .unwrap_or_default();
    let minor = node.containerd.minor_version();
    assert!(
        reported.starts_with(&format!("containerd://{minor}."))
            || reported.starts_with(&format!("containerd://v{minor}.")),
        "the node runs containerd {minor}: {reported}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "real-node");
    let eps: Api<DanmEp> = Api::namespaced(client.clone(), "real-node");

    cluster.kubectl(&["apply", "-f", "-"], &pod("web-0", "real-1"));
    let running = eventually(90, "web-0 Running and Ready", diagnose, || async {
        let pod = pods.get_opt("web-0").await.ok()??;
        ready(&pod).then_some(pod)
    })
    .await;
    let address = pod_ip(&running);
    assert!(
        address.starts_with("198.18.7."),
        "the pod's IP is the default network's, from ipamd: {address:?}"
    );
    let records = eps.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(records.len(), 1, "one DanmEp: {records:?}");
    assert_eq!(records[0].spec.host, "real-1");
    assert!(
        cluster
            .allocations()
            .await
            .contains(&format!("real-node/default {address}")),
        "ipamd holds the address"
    );

    cluster.kubectl(
        &["delete", "pod", "web-0", "-n", "real-node", "--wait=true"],
        "",
    );
    eventually(60, "web-0's DanmEp and address freed", diagnose, || async {
        let records = eps.list(&ListParams::default()).await.ok()?.items;
        let held = cluster
            .allocations()
            .await
            .iter()
            .any(|a| a.starts_with("real-node/"));
        (records.is_empty() && !held).then_some(())
    })
    .await;
    drop(node);
    drop(link);
    assert_eq!(
        HostSnapshot::take(),
        host_before,
        "the real node left something on the host"
    );
}

/// ipamd down (every replica) on a node whose containerd (2.4.2) calls STATUS: the node's
/// configuration is a `.conflist` at `cniVersion` 1.1.0 (libcni asks STATUS of nothing
/// older), and every call of `danm` is timed, so the test sees the STATUS calls happen
/// during the outage, and succeed. The node stays Ready and its running pod stays Running;
/// a new pod waits, with an event that names ipamd, and starts once ipamd is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipamd_outage_keeps_the_node_ready_and_new_pods_wait_for_it() {
    danm_e2e::pods::init_logs();
    assert!(
        is_root(),
        "a real node needs root (kubelet, containerd, runc)"
    );
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start_for_real_nodes().await;
    let containerd = Containerd::built(&cluster.plane);
    let link = host_link();
    cluster.kubectl(&["apply", "-f", "-"], &default_network(&link, 20));
    let node = RealNode::start(
        &cluster.plane,
        containerd,
        RealNodeConfig {
            cni_timing: true,
            conflist_version: Some("1.1.0".into()),
            ..node_config(&cluster)
        },
    )
    .await;
    let client = cluster.plane.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "real-node");
    let nodes: Api<Node> = Api::all(client.clone());
    let logs = |cluster: &Cluster| diagnose(cluster, &node);
    cluster.kubectl(&["apply", "-f", "-"], &pod("web-0", "real-1"));
    let first = eventually(
        90,
        "web-0 Running",
        || logs(&cluster),
        || async {
            let pod = pods.get_opt("web-0").await.ok()??;
            ready(&pod).then_some(pod)
        },
    )
    .await;

    cluster.ipamd.clear();
    cluster.kubectl(&["apply", "-f", "-"], &pod("web-1", "real-1"));
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(client.clone(), "real-node");
    let message = eventually(
        60,
        "an event on web-1 naming ipamd",
        || logs(&cluster),
        || async {
            let list = events
                .list(&ListParams::default().fields("involvedObject.name=web-1"))
                .await
                .ok()?;
            list.items.into_iter().find_map(|e| {
                let message = e.message.unwrap_or_default();
                (e.reason.as_deref() == Some("FailedCreatePodSandBox") && message.contains("ipamd"))
                    .then_some(message)
            })
        },
    )
    .await;
    assert!(message.contains("danm"), "{message}");
    // 40 s of outage: eight of containerd's 5 s network-status rounds and of kubelet's
    // node-status updates (5 s here).
    let outage = Instant::now();
    let status_calls = |node: &RealNode| {
        node.cni_timings()
            .into_iter()
            .filter(|t| t.command == "STATUS")
            .collect::<Vec<_>>()
    };
    let asked_before = status_calls(&node).len();
    while outage.elapsed() < Duration::from_secs(40) {
        let status = nodes
            .get("real-1")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        let ready_condition = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .expect("a Ready condition");
        assert_eq!(
            ready_condition.status,
            "True",
            "the node went NotReady during the ipamd outage: {ready_condition:?}\n{}",
            logs(&cluster)
        );
        let web0 = pods.get("web-0").await.unwrap();
        assert!(ready(&web0), "web-0 is no longer ready: {:?}", web0.status);
        assert_eq!(
            web0.metadata.uid, first.metadata.uid,
            "web-0 was not replaced"
        );
        let web1 = pods.get("web-1").await.unwrap();
        assert!(!ready(&web1), "web-1 started without ipamd");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let asked = status_calls(&node);
    assert!(
        asked.len() >= asked_before + 4,
        "containerd asked STATUS {} times during the 40 s outage (expected one every few \
         seconds): the test would not see a STATUS that failed",
        asked.len() - asked_before
    );
    let failed: Vec<_> = asked.iter().filter(|t| t.status != 0).collect();
    assert!(failed.is_empty(), "STATUS failed: {failed:?}");

    cluster.restart_ipamd().await;
    let second = eventually(
        120,
        "web-1 Running after ipamd returned",
        || logs(&cluster),
        || async {
            let pod = pods.get_opt("web-1").await.ok()??;
            ready(&pod).then_some(pod)
        },
    )
    .await;
    assert!(pod_ip(&second).starts_with("198.18.7."));
    assert_ne!(pod_ip(&second), pod_ip(&first));
    for name in ["web-0", "web-1"] {
        cluster.kubectl(
            &["delete", "pod", name, "-n", "real-node", "--wait=true"],
            "",
        );
    }
    eventually(
        30,
        "nothing held after both pods went",
        || logs(&cluster),
        || async {
            let held = cluster.allocations().await;
            (!held.iter().any(|a| a.starts_with("real-node/"))).then_some(())
        },
    )
    .await;
    drop(node);
    drop(link);
}

const STATEFUL_SET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: real-node}
spec:
  replicas: 1
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata:
      labels: {app: db}
      annotations:
        danm.io/interfaces: '[{"network":"default","ip":"198.18.7.15/24"}]'
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      containers: [{name: db, image: "danm.test/pause:1", imagePullPolicy: Never, command: [/pause]}]
"#;

/// On containerd 1.6: a StatefulSet pod with a static address; kubelet and containerd
/// restarted under it lose nothing (same pod, same sandbox, CHECK passes, one address
/// held); the pod deleted comes back from its StatefulSet with the same address; scaled to
/// zero, nothing is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_restart_loses_nothing_and_a_statefulset_pod_keeps_its_static_address() {
    danm_e2e::pods::init_logs();
    assert!(
        is_root(),
        "a real node needs root (kubelet, containerd, runc)"
    );
    let _serial = SERIAL.lock().await;
    let containerd = Containerd::debian();
    let cluster = Cluster::start_for_real_nodes().await;
    let link = host_link();
    cluster.kubectl(&["apply", "-f", "-"], &default_network(&link, 20));
    let mut node = start_node(&cluster, containerd).await;
    let client = cluster.plane.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "real-node");
    let eps: Api<DanmEp> = Api::namespaced(client.clone(), "real-node");
    let diagnose = |node: &RealNode| diagnose(&cluster, node);
    cluster.kubectl(&["apply", "-f", "-"], STATEFUL_SET);
    let first = eventually(
        90,
        "db-0 Running",
        || diagnose(&node),
        || async {
            let pod = pods.get_opt("db-0").await.ok()??;
            ready(&pod).then_some(pod)
        },
    )
    .await;
    assert_eq!(pod_ip(&first), "198.18.7.15");
    let held = vec!["real-node/default 198.18.7.15".to_owned()];
    assert_eq!(cluster.allocations().await, held);
    let sandboxes = node.sandboxes();
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
    let records: Vec<String> = eps
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|e| e.metadata.uid.clone())
        .collect();

    node.restart_runtime(&cluster.plane).await;
    // For 15 s after the new kubelet's first report (three of its 5 s pod syncs and node
    // status updates): the same pod, Ready, with its address, on the same sandbox.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(15) {
        let after = pods.get("db-0").await.unwrap();
        assert!(
            ready(&after),
            "db-0 not ready after the restart: {:?}\n{}",
            after.status,
            diagnose(&node)
        );
        assert_eq!(after.metadata.uid, first.metadata.uid, "the same pod");
        assert_eq!(pod_ip(&after), "198.18.7.15");
        assert_eq!(
            node.sandboxes(),
            sandboxes,
            "the same sandbox, not a new one"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let check = node.cni("CHECK", &sandboxes[0]);
    assert!(
        check.ok,
        "CHECK after the restart: {} {}",
        check.stdout, check.stderr
    );
    assert_eq!(
        cluster.allocations().await,
        held,
        "no address taken or leaked"
    );
    let records_after: Vec<String> = eps
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|e| e.metadata.uid.clone())
        .collect();
    assert_eq!(records_after, records, "the same DanmEp");

    cluster.kubectl(
        &["delete", "pod", "db-0", "-n", "real-node", "--wait=true"],
        "",
    );
    let second = eventually(
        90,
        "db-0 re-created and Running",
        || diagnose(&node),
        || async {
            let pod = pods.get_opt("db-0").await.ok()??;
            (ready(&pod) && pod.metadata.uid != first.metadata.uid).then_some(pod)
        },
    )
    .await;
    assert_eq!(
        pod_ip(&second),
        "198.18.7.15",
        "the static address came back"
    );

    cluster.kubectl(
        &[
            "scale",
            "statefulset",
            "db",
            "-n",
            "real-node",
            "--replicas=0",
        ],
        "",
    );
    eventually(
        60,
        "db-0 gone and nothing held",
        || diagnose(&node),
        || async {
            let gone = pods.get_opt("db-0").await.ok()?.is_none();
            let held = cluster
                .allocations()
                .await
                .iter()
                .any(|a| a.starts_with("real-node/"));
            let records = eps.list(&ListParams::default()).await.ok()?.items.len();
            (gone && !held && records == 0).then_some(())
        },
    )
    .await;
    drop(node);
    drop(link);
}
