//! The policer on a real node (kubelet and containerd 1.6, pods in containers): the node's
//! `00-danm.conf` names the policer's gate, so containerd's ADD of every pod waits for the
//! pod's rules. A DanmNetworkPolicy made before the server lets only `app: allowed` pods in,
//! on the `internal` network, on port 5555: the server's ADD passed the gate with its table
//! (the policer counts it isolated), an allowed client container gets the server's answer
//! and another is refused. The policer runs on the host as its ServiceAccount.

use std::time::{Duration, Instant};

use danm_e2e::cluster::{Cluster, binary};
use danm_e2e::fabric::is_root;
use danm_e2e::pods::{phase_when_done, ready};
use danm_e2e::real_node::bed::{default_network, diagnose, host_link, node_config};
use danm_e2e::real_node::policy::{internal_and_policy, pod, server_address};
use danm_e2e::real_node::{Containerd, RealNode};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

/// `/metrics` of the policer's admin port.
fn scrape(admin: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(admin) else {
        return String::new();
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerds_add_waits_for_the_policers_rules_and_the_policy_holds() {
    danm_e2e::pods::init_logs();
    assert!(
        is_root(),
        "a real node needs root (kubelet, containerd, runc)"
    );
    let containerd = Containerd::debian();
    let cluster = Cluster::start_for_real_nodes().await;
    let (management, data) = (host_link(), host_link());
    cluster.kubectl(&["apply", "-f", "-"], &default_network(&management, 20));
    cluster.kubectl(&["apply", "-f", "-"], &internal_and_policy(&data.name));

    // The policer on the host, as its ServiceAccount, serving the gate.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("policer.sock");
    let admin = format!("127.0.0.1:{}", danm_testkit::process::free_port());
    let kubeconfig =
        danm_testkit::identity::service_account_kubeconfig(&cluster.plane, "policer", &[]).await;
    let mut command = std::process::Command::new(binary("policer"));
    command
        .env("KUBECONFIG", &kubeconfig)
        .args(["--node-name", "real-1", "--admin-listen", &admin])
        .arg("--gate-socket")
        .arg(&socket);
    let _policer = cluster
        .plane
        .spawn_beside("policer", command)
        .expect("the policer starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() || !scrape(&admin).contains("danm_policer_rounds_total") {
        assert!(Instant::now() < deadline, "the policer did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut config = node_config(&cluster);
    config.cni_config["policer"] = serde_json::json!(socket);
    let node = RealNode::start(&cluster.plane, containerd, config).await;
    node.import(&cluster.plane, "netcheck");
    let client = cluster.plane.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "real-node");
    let diagnose = || diagnose(&cluster, &node);

    cluster.kubectl(
        &["apply", "-f", "-"],
        &pod("server", "server", r#"[serve, "5555"]"#),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while !pods
        .get_opt("server")
        .await
        .ok()
        .flatten()
        .is_some_and(|p| ready(&p))
    {
        assert!(
            Instant::now() < deadline,
            "the server is not Ready\n{}",
            diagnose()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let metrics = scrape(&admin);
    assert!(
        metrics.contains("danm_policer_gate_calls_total{result=\"isolated\"} 1"),
        "the server's ADD passed the gate with its table: {metrics}"
    );
    let address = server_address(&client).await;

    cluster.kubectl(
        &["apply", "-f", "-"],
        &pod(
            "allowed",
            "allowed",
            &format!(r#"[dial, "{address}:5555", "30"]"#),
        ),
    );
    assert_eq!(
        phase_when_done(&pods, "allowed", diagnose).await,
        "Succeeded",
        "an allowed client gets the server's answer over internal\n{}",
        diagnose()
    );
    cluster.kubectl(
        &["apply", "-f", "-"],
        &pod(
            "other",
            "other",
            &format!(r#"[dial, "{address}:5555", "3"]"#),
        ),
    );
    assert_eq!(
        phase_when_done(&pods, "other", diagnose).await,
        "Failed",
        "a client the policy does not allow is refused"
    );
    let metrics = scrape(&admin);
    assert!(
        metrics.contains("danm_policer_gate_calls_total{result=\"open\"} 2"),
        "the clients' ADDs passed the gate with no table: {metrics}"
    );

    for pod in ["allowed", "other", "server"] {
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
