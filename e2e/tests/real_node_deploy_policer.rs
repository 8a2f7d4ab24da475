//! `deploy/crds`, `deploy/base` and `deploy/components/policer` applied unchanged (one
//! kustomization naming them, as an operator writes it) to a fresh cluster whose one node
//! runs kubelet and containerd 1.6: the policer's image (`policer` and Debian's `nft`,
//! built here under the manifest's name) runs as its DaemonSet, the CNI installer writes the
//! gate's socket into the node's `00-danm.conf`, and a DanmNetworkPolicy made before the
//! server holds for pods started through containerd: the server's ADD waited for its table
//! (the policer's log), an allowed client gets the server's answer, another is refused.

use danm_e2e::pods::{eventually, phase_when_done, ready};
use danm_e2e::real_node::policy::{internal_and_policy, pod, server_address};
use danm_e2e::real_node::suite::{
    self, BareBed, SYSTEM, apply_base_with, deployment_serves, job_completes, networks, node_ready,
    opt_in, start_plane,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

/// The gate's folder on the host (the DaemonSet's hostPath).
const GATE_DIR: &str = "/var/run/danm";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policer_component_runs_on_a_real_node_and_gates_its_pods() {
    let plane = start_plane().await;
    let gate_dir_existed = std::path::Path::new(GATE_DIR).exists();
    let bed = BareBed::start(&plane).await;
    let node = &bed.node;
    node.import(&plane, "netcheck");
    let client = plane.client().await;
    let diagnose = || suite::diagnose(&plane, node);
    // The DaemonSet mounts /var/run/netns with HostToContainer propagation, which needs
    // the host path on a shared mount: systemd makes / shared, and iproute2's `ip netns
    // add` makes /var/run/netns a shared mount of its own; this VM has neither until a
    // namespace is added, as any node's first `ip netns add` does.
    drop(danm_testkit::netns::Netns::new("polprep"));
    apply_base_with(&plane, node, &["policer"]);
    job_completes(&client, "danm-certs", diagnose).await;
    opt_in(&plane, "real-1");
    for name in ["danm-ipamd", "danm-webhook"] {
        deployment_serves(&client, name, diagnose).await;
    }
    let manifests = format!(
        "{}---{}",
        networks(&bed.link),
        internal_and_policy(&bed.link.name)
    );
    eventually(90, "the webhook admits the networks", diagnose, || async {
        plane.kubectl_apply(&manifests).ok()
    })
    .await;
    eventually(120, "the installer makes the node Ready", diagnose, || {
        node_ready(&client, "real-1")
    })
    .await;
    let conf: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(node.cni_dir().join("00-danm.conf")).expect("00-danm.conf"),
    )
    .expect("JSON");
    assert_eq!(
        conf["policer"],
        format!("{GATE_DIR}/policer.sock"),
        "{conf}"
    );
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), SYSTEM);
    eventually(120, "DaemonSet danm-policer ready", diagnose, || async {
        daemonsets
            .get_opt("danm-policer")
            .await
            .ok()
            .flatten()
            .and_then(|d| d.status)
            .filter(|s| s.number_ready >= 1)
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "real-node");
    plane
        .kubectl_apply(&pod("server", "server", r#"[serve, "5555"]"#))
        .expect("the server");
    eventually(120, "the server is Ready", diagnose, || async {
        pods.get_opt("server").await.ok().flatten().filter(ready)
    })
    .await;
    let system_pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    let policer = system_pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=danm-policer"))
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .and_then(|p| p.metadata.name)
        .expect("the policer's pod");
    let log = node.container_log(SYSTEM, &policer, "policer");
    assert!(
        log.lines()
            .any(|l| l.contains("gate: the sandbox's rules are in place")
                && l.contains("\"pod\":\"server\"")
                && l.contains("\"isolated\":true")),
        "the server's ADD waited for its table:\n{log}"
    );
    let address = server_address(&client).await;

    plane
        .kubectl_apply(&pod(
            "allowed",
            "allowed",
            &format!(r#"[dial, "{address}:5555", "30"]"#),
        ))
        .expect("the allowed client");
    assert_eq!(
        phase_when_done(&pods, "allowed", diagnose).await,
        "Succeeded",
        "an allowed client gets the server's answer\n{}",
        diagnose()
    );
    plane
        .kubectl_apply(&pod(
            "other",
            "other",
            &format!(r#"[dial, "{address}:5555", "3"]"#),
        ))
        .expect("the other client");
    assert_eq!(
        phase_when_done(&pods, "other", diagnose).await,
        "Failed",
        "a client the policy does not allow is refused"
    );
    for name in ["allowed", "other", "server"] {
        plane
            .kubectl_with_input(&["delete", "pod", "-n", "real-node", name, "--wait"], "")
            .expect("the pod is deleted");
    }
    drop(bed);
    if !gate_dir_existed {
        let _ = std::fs::remove_dir_all(GATE_DIR);
    }
}
