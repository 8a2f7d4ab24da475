//! `./demo.sh --real-node`: the suite as a cluster operator installs it, on a real node of
//! this machine (kubelet and containerd 1.6, no CNI before DANM's): `deploy/crds` and
//! `deploy/base` applied unchanged from images built here, the node labelled, the networks
//! admitted by the webhook, a pod started through the installed `danm`; then what an
//! operator would look at, and the cluster stays up until Ctrl-C. When the machine cannot
//! run a real node, [`machine_allows`] says why.

use std::path::Path;

use danm_testkit::control_plane::binaries;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use super::Containerd;
use super::suite::{
    BareBed, apply_base, deployment_serves, diagnose, job_completes, networks, node_ready, opt_in,
    start_plane,
};
use crate::cluster::binary;
use crate::pods::{eventually, ready};

/// Why this machine cannot run a real node, if it cannot: root, containerd 1.6 with runc,
/// nftables, Debian's static busybox (the installer image's shell), the reference CNI
/// plugins, and kubelet in the control plane's cache.
pub fn machine_allows() -> Result<(), String> {
    if !crate::fabric::is_root() {
        return Err("a real node needs root (kubelet, containerd, runc)".into());
    }
    if Containerd::find_debian().is_none() {
        return Err("containerd 1.6, its shim, ctr and runc are not on PATH: `apt-get install containerd runc`".into());
    }
    for (program, package) in [
        ("/usr/sbin/nft", "nftables"),
        ("/bin/busybox", "busybox-static"),
        ("/usr/lib/cni/loopback", "containernetworking-plugins"),
    ] {
        if !Path::new(program).exists() {
            return Err(format!("{program} is missing: `apt-get install {package}`"));
        }
    }
    let cache = binaries().map_err(|e| format!("the control plane is not built: {e}"))?;
    if !cache.join("kubelet").is_file() {
        return Err(format!(
            "no kubelet in {}: run testkit/k8s/build.sh",
            cache.display()
        ));
    }
    Ok(())
}

fn section(title: &str) {
    println!("\n=== {title}");
}

/// The demo; see the module overview.
pub async fn run() {
    if let Err(why) = machine_allows() {
        eprintln!(
            "demo --real-node: this machine cannot run a real node: {why}\n\
             (./demo.sh without --real-node runs the suite with nodes as network namespaces)"
        );
        std::process::exit(1);
    }
    eprintln!("demo: starting the control plane and node real-1 (kubelet, containerd 1.6)...");
    let plane = start_plane().await;
    let bed = BareBed::start(&plane).await;
    let node = &bed.node;
    node.import(&plane, "netcheck");
    let client = plane.client().await;
    let diagnose = || diagnose(&plane, node);
    section(
        "kubectl apply --server-side -k deploy/crds; kubectl apply --server-side -k deploy/base",
    );
    apply_base(&plane, node);
    job_completes(&client, "danm-certs", diagnose).await;
    section("kubectl label node real-1 danm.io/cni=enabled");
    opt_in(&plane, "real-1");
    for name in ["danm-ipamd", "danm-webhook"] {
        deployment_serves(&client, name, diagnose).await;
    }
    section("kubectl apply -f <networks> (a DanmNet `default` in danm-system and in real-node)");
    let networks = networks(&bed.link);
    let applied = eventually(90, "the webhook admits the networks", diagnose, || async {
        plane.kubectl_apply(&networks).ok()
    })
    .await;
    print!("{applied}");
    eventually(120, "the installer makes the node Ready", diagnose, || {
        node_ready(&client, "real-1")
    })
    .await;
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: real-node}\n\
               spec:\n  automountServiceAccountToken: false\n  containers:\n  - name: web\n    \
               image: danm.test/netcheck:1\n    imagePullPolicy: Never\n    args: [serve, \"8080\"]\n";
    section("kubectl apply -f <a pod with no annotation: its namespace's default network>");
    print!("{}", plane.kubectl_apply(pod).unwrap_or_else(|e| e));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "real-node");
    eventually(120, "the pod is Ready", diagnose, || async {
        pods.get_opt("web").await.ok().flatten().filter(ready)
    })
    .await;

    let kubectl = |args: &[&str]| plane.kubectl_with_input(args, "").unwrap_or_else(|e| e);
    section("kubectl get nodes -o wide");
    print!("{}", kubectl(&["get", "nodes", "-o", "wide"]));
    section("kubectl get pods -A -o wide");
    print!("{}", kubectl(&["get", "pods", "-A", "-o", "wide"]));
    section("kubectl get danmnets,danmeps -A");
    print!("{}", kubectl(&["get", "danmnets,danmeps", "-A"]));
    section("/etc/cni/net.d/00-danm.conf, as the installer wrote it");
    print!(
        "{}",
        std::fs::read_to_string(node.cni_dir().join("00-danm.conf")).unwrap_or_default()
    );
    section("kubectl showalloc --dnet default -n real-node");
    let out = std::process::Command::new(binary("kubectl-showalloc"))
        .env("KUBECONFIG", plane.kubeconfig())
        .args(["--dnet", "default", "-n", "real-node"])
        .output()
        .expect("showalloc runs");
    print!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    until_stopped(&plane).await;
    eprintln!("demo: stopping (the node's processes, folders, cgroups, links and tables go)");
    drop(bed);
    drop(plane);
    eprintln!("demo: stopped");
}

/// Says how to reach `plane` with kubectl, then waits for Ctrl-C or SIGTERM.
pub async fn until_stopped(plane: &danm_testkit::control_plane::ControlPlane) {
    println!(
        "\nThe cluster stays up until Ctrl-C. Poke at it with:\n  export KUBECONFIG={}\n  {} get pods -A -o wide",
        plane.kubeconfig().display(),
        plane.binary("kubectl").display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
