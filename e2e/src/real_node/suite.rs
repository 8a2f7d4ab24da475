//! `deploy/base` on a bare real node, as an operator brings it up: apply it unchanged,
//! wait for its Jobs and Deployments, label the node, find the installer's pod, and say
//! what the cluster and the node were doing when a wait fails.

use danm_testkit::control_plane::{ControlPlane, Options};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};

use super::RealNode;
use super::images::{deploy_images, repository_file};
use crate::pods::eventually;

/// The namespace of `deploy/base`.
pub const SYSTEM: &str = "danm-system";

/// The node label that lets the CNI installer on a node.
pub const OPT_IN: &str = "danm.io/cni=enabled";

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
    for image in deploy_images() {
        node.import_image(&image);
    }
    for dir in ["deploy/crds", "deploy/base"] {
        kustomize(plane, "apply", dir);
    }
}

/// `kubectl <verb> -k <dir>` (`apply` server-side), `dir` relative to the repository.
pub fn kustomize(plane: &ControlPlane, verb: &str, dir: &str) {
    let path = repository_file(dir).display().to_string();
    let mut args = vec![verb];
    if verb == "apply" {
        args.push("--server-side");
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
