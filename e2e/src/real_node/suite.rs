//! `deploy/base` on a bare real node, as an operator brings it up: the bed (a bare node, a
//! host link for the pods' macvlans with the pods' gateway on it, the Service stand-in),
//! the networks, applying `deploy/crds` and `deploy/base` unchanged, waiting for their Jobs
//! and Deployments, labelling the node, finding the installer's pod, and saying what the
//! cluster and the node were doing when a wait fails.

use danm_testkit::control_plane::{ControlPlane, Options};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};

use super::bed::HostLink;
use super::images::{deploy_images, repository_file};
use super::services::ServiceProxy;
use super::{Containerd, RealNode};
use crate::fabric::ip;
use crate::pods::eventually;

/// The namespace of `deploy/base`.
pub const SYSTEM: &str = "danm-system";

/// The node label that lets the CNI installer on a node.
pub const OPT_IN: &str = "danm.io/cni=enabled";

/// The pods' gateway: the host end of the pods' link, on `danm-system`'s network, where
/// its route to the Services' range leads.
pub const GATEWAY: &str = "198.18.7.1";

/// The networks: `danm-system`'s (its pods reach the Services, the API server among them,
/// through the gateway) and the test namespace's, both macvlan over `link`.
pub fn networks(link: &HostLink) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: real-node}}
---
apiVersion: danm.io/v1
kind: DanmNet
metadata: {{name: default, namespace: danm-system}}
spec:
  NetworkID: system
  NetworkType: macvlan
  Options:
    host_device: {host}
    cidr: 198.18.7.0/24
    allocation_pool: {{start: 198.18.7.10, end: 198.18.7.60}}
    routes: {{10.96.0.0/16: {GATEWAY}}}
---
apiVersion: danm.io/v1
kind: DanmNet
metadata: {{name: default, namespace: real-node}}
spec:
  NetworkID: default
  NetworkType: macvlan
  Options:
    host_device: {host}
    cidr: 198.18.8.0/24
    allocation_pool: {{start: 198.18.8.10, end: 198.18.8.60}}
"#,
        host = link.name
    )
}

/// A bare node `real-1` (containerd 1.6) with the host link its pods' macvlans ride on,
/// the pods' gateway [`GATEWAY`] on the link's other end, and Services through
/// [`ServiceProxy`]. Dropped in that order: the node, the Services, the link.
#[derive(Debug)]
pub struct BareBed {
    /// The node.
    pub node: RealNode,
    /// Services and cluster DNS.
    pub services: ServiceProxy,
    /// The pods' host link ([`networks`] puts them on it).
    pub link: HostLink,
}

impl BareBed {
    /// Starts the bed on `plane`.
    pub async fn start(plane: &ControlPlane) -> BareBed {
        let link = super::bed::host_link();
        let gateway_link = format!("{}p", link.name);
        ip(&[
            "addr",
            "add",
            &format!("{GATEWAY}/24"),
            "dev",
            &gateway_link,
        ]);
        let services = ServiceProxy::start(plane, &gateway_link).await;
        let node = RealNode::start_bare(plane, Containerd::debian(), "real-1").await;
        BareBed {
            node,
            services,
            link,
        }
    }
}

/// A control plane for a bare node running `deploy/base` (scheduler, pod garbage
/// collection, node lifecycle and the CronJob controller), after checking for root (kubelet,
/// containerd and runc need it) and starting the test's logs.
pub async fn start_plane() -> ControlPlane {
    crate::pods::init_logs();
    assert!(
        crate::fabric::is_root(),
        "a real node needs root (kubelet, containerd, runc)"
    );
    ControlPlane::start(Options {
        scheduler: true,
        pod_gc: true,
        node_lifecycle: true,
        cron_jobs: true,
        ..Options::default()
    })
    .await
    .expect("the control plane starts")
}

/// Imports every image of `deploy/images` into `node`, then applies `deploy/crds` and
/// `deploy/base` unchanged, as docs/install.md does.
pub fn apply_base(plane: &ControlPlane, node: &RealNode) {
    apply_base_with(plane, node, &[]);
}

/// [`apply_base`] with `components` of `deploy/components` (their images imported too), as
/// an operator's kustomization naming `deploy/base` and them (written in a temporary
/// folder) applies them.
pub fn apply_base_with(plane: &ControlPlane, node: &RealNode, components: &[&str]) {
    for image in deploy_images() {
        node.import_image(&image);
    }
    if components.contains(&"policer") {
        node.import_image(&super::images::policer_image());
    }
    kustomize(plane, "apply", "deploy/crds");
    if components.is_empty() {
        kustomize(plane, "apply", "deploy/base");
        return;
    }
    let dir = danm_testkit::kustomization_with("base", components);
    plane
        .kubectl_with_input(
            &[
                "apply",
                "--server-side",
                "-k",
                &dir.path().display().to_string(),
            ],
            "",
        )
        .unwrap_or_else(|e| panic!("kubectl apply -k deploy/base with {components:?}: {e}"));
}

/// `kubectl <verb> -k <dir>` as docs/install.md runs it (`apply` server-side; `delete`
/// waiting for the workloads' pods, ignoring what is not there), `dir` relative to the
/// repository.
pub fn kustomize(plane: &ControlPlane, verb: &str, dir: &str) {
    let path = repository_file(dir).display().to_string();
    let mut args = vec![verb];
    match verb {
        "apply" => args.push("--server-side"),
        "delete" => args.extend(["--cascade=foreground", "--ignore-not-found"]),
        _ => {}
    }
    args.extend(["-k", &path]);
    plane
        .kubectl_with_input(&args, "")
        .unwrap_or_else(|e| panic!("kubectl {verb} -k {dir}: {e}"));
}

/// Labels `node` so that the CNI installer runs there.
pub fn opt_in(plane: &ControlPlane, node: &str) {
    plane
        .kubectl_with_input(&["label", "node", node, OPT_IN], "")
        .expect("the node opts in");
}

/// The pods, Jobs and latest events of the cluster, then the ends of `node`'s kubelet
/// and containerd logs.
pub fn diagnose(plane: &ControlPlane, node: &RealNode) -> String {
    let pods = plane
        .kubectl_with_input(&["get", "pods,jobs", "-A", "-o", "wide"], "")
        .unwrap_or_default();
    let events = plane
        .kubectl_with_input(&["get", "events", "-A", "--sort-by=.lastTimestamp"], "")
        .unwrap_or_default();
    let events: Vec<&str> = events.lines().rev().take(25).collect();
    format!(
        "{pods}\n--- events, latest first\n{}\n--- kubelet\n{}\n--- containerd\n{}",
        events.join("\n"),
        node.kubelet_log(30),
        node.containerd_log(15)
    )
}

/// Waits until Job `danm-system/name` has a succeeded pod.
pub async fn job_completes(client: &kube::Client, name: &str, diagnose: impl Fn() -> String) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), SYSTEM);
    eventually(180, &format!("Job {name} completes"), diagnose, || async {
        jobs.get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|j| j.status?.succeeded)
            .filter(|n| *n >= 1)
    })
    .await;
}

/// Waits until Deployment `danm-system/name` has a ready replica.
pub async fn deployment_serves(client: &kube::Client, name: &str, diagnose: impl Fn() -> String) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM);
    eventually(
        180,
        &format!("Deployment {name} ready"),
        diagnose,
        || async {
            deployments
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|d| d.status?.ready_replicas)
                .filter(|n| *n >= 1)
        },
    )
    .await;
}

/// `Some` when Node `name` is Ready.
pub async fn node_ready(client: &kube::Client, name: &str) -> Option<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get_opt(name).await.ok().flatten()?;
    node.status?
        .conditions?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
        .then_some(())
}

/// The name of the CNI installer's pod that is not being deleted, if any.
pub async fn installer_pod(client: &kube::Client) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    pods.list(&ListParams::default().labels("app.kubernetes.io/name=danm-cni-installer"))
        .await
        .ok()?
        .items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .and_then(|p| p.metadata.name)
}
