//! The real-node scenarios' common ground: a host link for the pods' macvlans, the
//! namespace's `default` DanmNet over it, and node `real-1` with `00-danm.conf` rendered
//! from the installed template.

use super::{Containerd, RealNode, RealNodeConfig};
use crate::cluster::{Cluster, binary};

/// A veth pair in the host's namespace whose first end the pods' macvlans ride on
/// (containerd runs `danm` in the host's namespace); removed on drop.
pub use danm_testkit::netns::HostLink;

/// Creates the host link of a real-node scenario, both ends up.
pub fn host_link() -> HostLink {
    HostLink::veth("drn")
}

/// `00-danm.conf` as `deploy/images/install-cni.sh` renders the template for a node
/// whose ipamd Service is at `ipamd`, with the test's certificates in place of the
/// node's files.
pub fn rendered_template(cluster: &Cluster, node: &str) -> serde_json::Value {
    let template = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/base/cni/00-danm.conf.template"),
    )
    .expect("the template");
    let address = cluster.ipamd_address;
    let text = template
        .replace("${DANM_IPAMD_SERVICE_HOST}", &address.ip().to_string())
        .replace(
            "${DANM_IPAMD_SERVICE_PORT_GRPC}",
            &address.port().to_string(),
        )
        // No policer on these nodes (deploy/components/policer sets it).
        .replace("${DANM_POLICER_SOCKET}", "");
    let mut config: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let cert = cluster.pki.node_certificate(node);
    config["ipamdTLS"]["ca"] = serde_json::json!(cluster.pki.ca());
    config["ipamdTLS"]["cert"] = serde_json::json!(cert);
    config["ipamdTLS"]["key"] = serde_json::json!(cert);
    config
}

/// The namespace `real-node` and its `default` DanmNet: macvlan over `link`, on
/// `198.18.7.0/24` with a pool from `.10` to `.<last>`.
pub fn default_network(link: &HostLink, last: u8) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: real-node}}
---
apiVersion: danm.io/v1
kind: DanmNet
metadata: {{name: default, namespace: real-node}}
spec:
  NetworkID: default
  NetworkType: macvlan
  Options:
    host_device: {host}
    cidr: 198.18.7.0/24
    allocation_pool: {{start: 198.18.7.10, end: 198.18.7.{last}}}
"#,
        host = link.name
    )
}

/// Node `real-1`'s configuration: `00-danm.conf` from the template, the workspace's
/// `danm`, no timing.
pub fn node_config(cluster: &Cluster) -> RealNodeConfig {
    RealNodeConfig {
        name: "real-1".into(),
        danm: binary("danm"),
        cni_config: rendered_template(cluster, "real-1"),
        cni_files: vec![],
        cni_timing: false,
        conflist_version: None,
    }
}

/// The cluster's state, then the ends of `node`'s kubelet and containerd logs: what a
/// real-node test's failure message shows.
pub fn diagnose(cluster: &Cluster, node: &RealNode) -> String {
    format!(
        "{}\n--- kubelet\n{}\n--- containerd ({})\n{}",
        cluster.diagnose(),
        node.kubelet_log(25),
        node.containerd.version,
        node.containerd_log(25)
    )
}

/// Node `real-1` with `containerd` and [`node_config`].
pub async fn start_node(cluster: &Cluster, containerd: Containerd) -> RealNode {
    RealNode::start(&cluster.plane, containerd, node_config(cluster)).await
}
