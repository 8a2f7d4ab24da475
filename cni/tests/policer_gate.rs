//! Isolation from a pod's first packet: with `policer` in `00-danm.conf`, `danm` ADD asks the
//! node's policer for the pod's rules after ipamd's Attach and before it builds any
//! interface. On the real API server, with ipamd on its Kubernetes store and the policer's
//! controller in this process: a pod a policy selects has its table when ADD returns, a pod
//! no policy selects gets none, and without a policer to answer ADD fails, builds nothing
//! and leaves nothing allocated. As root, with `ip` and `nft`.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use danm_crds::DanmEp;
use danm_ipamd::store::Store;
use danm_ipamd::store::kube::KubeStore;
use danm_policer::controller::{Config, run};
use danm_policer::metrics::Metrics;
use danm_testkit::control_plane::ControlPlane;
use kube::api::{Api, ListParams};
use serde_json::json;

/// The policer's table in `netns`, as `nft` lists it (empty when there is none).
fn table_in(netns: &Netns) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &netns.name, "nft", "list", "table", "inet"])
        .arg("danm_policer")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pod(namespace: &str, name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels: {{app: {app}}}\n  annotations:\n    danm.io/interfaces: '[{{\"network\":\"gate\",\"ip\":\"dynamic\"}}]'\nspec:\n  containers: [{{name: app, image: busybox:latest}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_builds_interfaces_only_after_the_policer_loaded_the_pods_rules() {
    danm_testkit::netns::require_root();
    let plane = ControlPlane::shared().await;
    let namespace = plane.namespace("gate").await;
    let ipamd_namespace = plane.namespace("danm-system").await;
    let parent = veth();
    plane
        .kubectl_apply(&format!(
            "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: gate, namespace: {namespace}}}\nspec:\n  NetworkID: gate\n  NetworkType: macvlan\n  Options: {{host_device: {}, cidr: 10.58.0.0/24}}\n",
            parent.name
        ))
        .unwrap();
    for (name, app) in [
        ("pod-gate-srv", "server"),
        ("pod-gate-cli", "client"),
        ("pod-gate-off", "server"),
    ] {
        plane.kubectl_apply(&pod(&namespace, name, app)).unwrap();
    }
    // Every server isolated: no ingress at all.
    plane
        .kubectl_apply(&format!(
            "apiVersion: danm.io/v1\nkind: DanmNetworkPolicy\nmetadata: {{name: deny, namespace: {namespace}}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n"
        ))
        .unwrap();
    let client = plane.client().await;
    let store: Arc<dyn Store> = Arc::new(KubeStore::new(client.clone(), &ipamd_namespace).await);
    let ipamd = ipamd_on(store).await;

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("policer.sock");
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = Config {
        node: danm_cni::ipamd::host_name(),
        nft: None,
        netns_root: "/var/run/netns".into(),
        settle: Duration::from_millis(50),
        parallel: 4,
        node_addresses: Vec::new(),
        gate_socket: Some(socket.clone()),
        gate_wait: Duration::from_secs(8),
    };
    let policer = tokio::spawn(run(client.clone(), config, Arc::clone(&metrics), async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics.readiness().is_err() || !socket.exists() {
        assert!(Instant::now() < deadline, "the policer did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let conf = json!({
        "cniVersion": "1.1.0", "name": "danm", "type": "danm",
        "ipamd": ipamd.url(), "cniDir": dir.path(), "policer": socket,
    });

    // A pod the policy selects: its table is in its namespace when ADD returns (the gate
    // answered before any interface was built: the last case shows nothing is built
    // without that answer).
    let server = netns();
    let add = danm_for_pod("ADD", "gate-srv", &server.path(), &conf, &namespace).await;
    assert!(add.ok, "ADD failed: {} {}", add.stdout, add.stderr);
    let table = table_in(&server);
    assert!(
        table.contains("table inet danm_policer") && table.contains("\"eth0\""),
        "no table isolating eth0 when ADD returned: {table:?}"
    );
    let text = metrics.encode();
    assert!(
        text.contains("danm_policer_gate_calls_total{result=\"isolated\"} 1"),
        "{text}"
    );

    // A pod no policy selects: ADD waits for the policer's decision, which loads nothing.
    let other = netns();
    let add = danm_for_pod("ADD", "gate-cli", &other.path(), &conf, &namespace).await;
    assert!(add.ok, "ADD failed: {} {}", add.stdout, add.stderr);
    assert_eq!(
        table_in(&other),
        "",
        "a pod no policy selects holds no table"
    );
    assert!(
        metrics
            .encode()
            .contains("danm_policer_gate_calls_total{result=\"open\"} 1")
    );

    // No policer to answer: ADD fails, naming the socket, builds nothing and releases
    // what ipamd gave.
    let _ = stop.send(());
    policer.await.unwrap().unwrap();
    assert!(
        !socket.exists(),
        "the policer removes its socket when it stops"
    );
    let orphan = netns();
    let add = danm_for_pod("ADD", "gate-off", &orphan.path(), &conf, &namespace).await;
    assert!(!add.ok && add.stdout["code"] == 11, "{}", add.stdout);
    let details = add.stdout["details"].as_str().unwrap_or_default();
    assert!(
        details.contains(&socket.display().to_string()) && details.contains("No such file"),
        "the error names the socket and why: {details}"
    );
    assert_eq!(orphan.links(), ["lo"], "no interface without the rules");
    let eps = Api::<DanmEp>::namespaced(client.clone(), &namespace);
    let left: Vec<String> = eps
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.spec.pod)
        .collect();
    assert!(
        !left.iter().any(|p| p == "pod-gate-off"),
        "the refused ADD left its records: {left:?}"
    );
    let held = ipamd.engine.list_allocations(None).await.unwrap();
    assert_eq!(
        held.iter()
            .filter(|a| a.network.namespace == namespace)
            .count(),
        2,
        "only the two attached pods hold addresses: {held:?}"
    );

    for (cid, ns) in [("gate-srv", &server), ("gate-cli", &other)] {
        let del = danm_for_pod("DEL", cid, &ns.path(), &conf, &namespace).await;
        assert!(del.ok, "DEL failed: {} {}", del.stdout, del.stderr);
    }
}
