//! Moving a running node from flannel to DANM with `deploy/base` unchanged, as
//! docs/install.md tells an operator to: the node already runs pods on its primary CNI
//! (flannel's configuration list, `/etc/cni/net.d/10-flannel.conflist`, network `cbr0`);
//! the suite is applied and the node labelled; the `default` ClusterNetwork delegates to
//! that list (`NetworkID: 10-flannel`), so pods with no annotation stay on the same pod
//! network.
//!
//! flannel's own plugin needs flanneld (not built here); it delegates to the `bridge`
//! plugin with `host-local`, so the list here runs Debian's `bridge` and `host-local`
//! directly, under flannel's file and network names. What the test proves:
//!
//! * the node stays Ready throughout, and its first `00-danm.conf` is written only once
//!   ipamd serves the default network;
//! * a pod created through `danm` gets its address from the previous CNI's IPAM, on the
//!   same bridge, and another reaches the pod created before DANM;
//! * the pod created before DANM, deleted after, gets its DEL from `danm`, which runs
//!   `cbr0`'s from libcni's cache (`danm_cni::previous`): its host-local reservation and
//!   cache entry are gone; the pod created through `danm` is released the same way;
//! * the node gone, the host is as before.

use std::path::Path;

use danm_e2e::fabric::{ip, unique};
use danm_e2e::pods::{eventually, phase_when_done, pod_ip, ready};
use danm_e2e::real_node::bed::HostLink;
use danm_e2e::real_node::services::ServiceProxy;
use danm_e2e::real_node::suite::{
    apply_base, deployment_serves, job_completes, node_ready, opt_in, start_plane,
};
use danm_e2e::real_node::{Containerd, HostSnapshot, RealNode, suite};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

/// host-local's store for flannel's network `cbr0`.
const RESERVATIONS: &str = "/var/lib/cni/networks/cbr0";

/// flannel's configuration list, with the plugins its own delegates to.
fn flannel_conflist(bridge: &str) -> String {
    serde_json::json!({
        "name": "cbr0",
        "cniVersion": "0.3.1",
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "hairpinMode": true,
            "ipam": {"type": "host-local", "subnet": "10.244.0.0/24"}
        }]
    })
    .to_string()
}

/// The `default` ClusterNetwork of a cluster moving from flannel: delegated to its list.
const DEFAULT_NETWORK: &str = r#"
apiVersion: danm.io/v1
kind: ClusterNetwork
metadata: {name: default}
spec:
  NetworkID: 10-flannel
  NetworkType: flannel
"#;

const SECURITY: &str = "{runAsNonRoot: true, runAsUser: 65535, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}";

fn server(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: migration}}\n\
         spec:\n  automountServiceAccountToken: false\n  terminationGracePeriodSeconds: 1\n  \
         containers:\n  - name: server\n    image: danm.test/netcheck:1\n    \
         imagePullPolicy: Never\n    args: [serve, \"8080\"]\n    securityContext: {SECURITY}\n"
    )
}

fn dialer(name: &str, target: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: migration}}\n\
         spec:\n  automountServiceAccountToken: false\n  restartPolicy: Never\n  \
         terminationGracePeriodSeconds: 1\n  containers:\n  - name: client\n    \
         image: danm.test/netcheck:1\n    imagePullPolicy: Never\n    \
         args: [dial, \"{target}\", \"30\"]\n    securityContext: {SECURITY}\n"
    )
}

/// host-local's reservation of `address` on `cbr0`.
fn reserved(address: &str) -> bool {
    Path::new(RESERVATIONS).join(address).exists()
}

/// libcni's cache entries of network `cbr0`.
fn cbr0_cache_entries() -> Vec<String> {
    std::fs::read_dir("/var/lib/cni/results")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cbr0-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_moves_from_flannel_to_danm_and_keeps_its_pods() {
    let plane = start_plane().await;
    let before = HostSnapshot::take();
    let bridge = unique("dmf");
    ip(&["link", "add", &bridge, "type", "bridge"]);
    let _bridge = HostLink::adopt(&bridge);
    ip(&["link", "set", &bridge, "up"]);
    let services = ServiceProxy::start(&plane, &bridge).await;
    let node = RealNode::start_bare(&plane, Containerd::debian(), "real-1").await;
    node.import(&plane, "netcheck");
    let client = plane.client().await;
    let diagnose = || suite::diagnose(&plane, &node);

    // The node on flannel, with a pod.
    std::fs::write(
        node.cni_dir().join("10-flannel.conflist"),
        flannel_conflist(&bridge),
    )
    .expect("flannel's configuration");
    eventually(120, "the node is Ready on flannel", diagnose, || {
        node_ready(&client, "real-1")
    })
    .await;
    plane
        .kubectl_with_input(&["create", "namespace", "migration"], "")
        .expect("the namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "migration");
    plane
        .kubectl_apply(&server("old"))
        .expect("a pod on flannel");
    let old = eventually(120, "the flannel pod is Ready", diagnose, || async {
        pods.get_opt("old").await.ok().flatten().filter(ready)
    })
    .await;
    let old_address = pod_ip(&old);
    assert!(old_address.starts_with("10.244.0."), "{old_address}");
    assert!(reserved(&old_address), "host-local holds {old_address}");
    let cached = cbr0_cache_entries();
    assert_eq!(cached.len(), 1, "libcni cached its ADD: {cached:?}");
    let old_entry = cached[0].clone();

    // DANM added: the node stays on flannel until ipamd serves the default network.
    apply_base(&plane, &node);
    job_completes(&client, "danm-certs", diagnose).await;
    opt_in(&plane, "real-1");
    for name in ["danm-ipamd", "danm-webhook"] {
        deployment_serves(&client, name, diagnose).await;
    }
    assert!(!node.cni_dir().join("00-danm.conf").exists());
    assert!(node_ready(&client, "real-1").await.is_some());
    eventually(
        90,
        "the webhook admits the default network",
        diagnose,
        || async { plane.kubectl_apply(DEFAULT_NETWORK).ok() },
    )
    .await;
    eventually(
        120,
        "the installer writes 00-danm.conf",
        diagnose,
        || async { node.cni_dir().join("00-danm.conf").exists().then_some(()) },
    )
    .await;
    assert!(
        node_ready(&client, "real-1").await.is_some(),
        "the node stays Ready"
    );

    // A new pod through danm, on flannel's network.
    plane
        .kubectl_apply(&server("new"))
        .expect("a pod through danm");
    let new = eventually(120, "the pod through danm is Ready", diagnose, || async {
        pods.get_opt("new").await.ok().flatten().filter(ready)
    })
    .await;
    let new_address = pod_ip(&new);
    assert!(new_address.starts_with("10.244.0."), "{new_address}");
    assert!(reserved(&new_address), "host-local holds {new_address}");
    let danmeps = || {
        plane
            .kubectl_with_input(&["get", "danmeps", "-n", "migration", "-o", "name"], "")
            .unwrap_or_default()
    };
    assert_eq!(
        danmeps().lines().count(),
        1,
        "only the new pod is DANM's: {}",
        danmeps()
    );

    // Another, through danm, reaches the old pod (and once its container has ended, kubelet
    // stops its sandbox: danm's DEL releases it).
    plane
        .kubectl_apply(&dialer("probe", &format!("{old_address}:8080")))
        .expect("a dialing pod through danm");
    let phase = phase_when_done(&pods, "probe", diagnose).await;
    assert_eq!(
        phase,
        "Succeeded",
        "{}\n{}",
        node.container_log("migration", "probe", "client"),
        diagnose()
    );
    eventually(60, "the probe's sandbox is released", diagnose, || async {
        (danmeps().lines().count() == 1).then_some(())
    })
    .await;

    // The old pod's DEL goes to danm, which runs flannel's: nothing of it is left.
    plane
        .kubectl_with_input(&["delete", "pod", "-n", "migration", "old", "--wait"], "")
        .expect("the old pod is deleted");
    eventually(
        60,
        "flannel's reservation of the old pod goes",
        diagnose,
        || async {
            (!reserved(&old_address) && !cbr0_cache_entries().contains(&old_entry)).then_some(())
        },
    )
    .await;

    // The new pod's DEL releases its address through the delegation, and its DanmEp.
    plane
        .kubectl_with_input(&["delete", "pod", "-n", "migration", "new", "--wait"], "")
        .expect("the new pod is deleted");
    eventually(
        60,
        "the new pod's reservation and DanmEp go",
        diagnose,
        || async {
            let danmeps = plane
                .kubectl_with_input(&["get", "danmeps", "-n", "migration", "-o", "name"], "")
                .ok()?;
            (!reserved(&new_address) && danmeps.trim().is_empty()).then_some(())
        },
    )
    .await;

    drop(node);
    drop(services);
    assert_eq!(HostSnapshot::take(), before);
}
