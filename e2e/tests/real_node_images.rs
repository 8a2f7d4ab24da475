//! The images of `deploy/images` on a real node (containerd 1.6), built here without an
//! engine (`danm_e2e::real_node::images`) and run as `deploy/base` runs them:
//!
//! * every binary of every daemon image answers `--help` in a pod with the pod and
//!   container security contexts of each workload of `deploy/base` that runs that image
//!   (non-root, read-only root file system, every capability dropped, RuntimeDefault
//!   seccomp), as `kubectl kustomize deploy/base` renders them;
//! * the CNI installer's container, exactly as its DaemonSet has it but for the two host
//!   folders (a temporary folder here, not the host's `/opt/cni/bin` and `/etc/cni/net.d`),
//!   installs `danm` and `danm-ipam`, the CA bundle and `00-danm.conf` rendered with the
//!   `danm-ipamd` Service's address. The node already has a `00-danm.conf` (an older one)
//!   and the Service no ipamd behind it: the installer rewrites the file at once rather
//!   than wait for ipamd (a node's first configuration waits: `real_node_deploy.rs`).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use danm_e2e::cluster::{Cluster, binary};
use danm_e2e::fabric::is_root;
use danm_e2e::pods::phase_when_done;
use danm_e2e::real_node::Containerd;
use danm_e2e::real_node::bed::{default_network, diagnose, host_link, start_node};
use danm_e2e::real_node::images::{INSTALLER_IMAGE, daemon_images, deploy_images, repository_file};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::Api;
use serde_json::{Value, json};

const NAMESPACE: &str = "real-node";

/// The pod spec of a workload (Deployment, DaemonSet, Job, CronJob), if it is one.
fn pod_spec(object: &Value) -> Option<&Value> {
    match object["kind"].as_str()? {
        "Deployment" | "DaemonSet" | "Job" => Some(&object["spec"]["template"]["spec"]),
        "CronJob" => Some(&object["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

/// `deploy/base` as kubectl's kustomize renders it, as JSON objects.
fn rendered_base(cluster: &Cluster) -> Vec<Value> {
    let base = repository_file("deploy/base");
    let yaml = cluster.kubectl(&["kustomize", &base.display().to_string()], "");
    // One JSON object after another.
    let objects = cluster.kubectl(
        &["create", "--dry-run=client", "-o", "json", "-f", "-"],
        &yaml,
    );
    serde_json::Deserializer::from_str(&objects)
        .into_iter::<Value>()
        .map(|object| object.expect("kubectl prints JSON"))
        .collect()
}

/// Pods that run `<binary> --help` for every binary of the image of every container of
/// `deploy/base`'s workloads, with that workload's security contexts: (pod, its name).
fn help_pods(base: &[Value]) -> Vec<(Value, String)> {
    let rows = daemon_images();
    let mut pods = Vec::new();
    for object in base {
        let Some(spec) = pod_spec(object) else {
            continue;
        };
        let workload = object["metadata"]["name"].as_str().expect("a name");
        for container in spec["containers"].as_array().expect("containers") {
            let image = container["image"].as_str().expect("an image");
            let Some(row) = rows.iter().find(|row| row.reference == image) else {
                continue;
            };
            for program in &row.binaries {
                let name = format!("{workload}-{program}");
                let pod = json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name, "namespace": NAMESPACE},
                    "spec": {
                        "restartPolicy": "Never",
                        "hostNetwork": true,
                        "automountServiceAccountToken": false,
                        "terminationGracePeriodSeconds": 1,
                        "securityContext": spec["securityContext"],
                        "containers": [{
                            "name": "run",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": [format!("/usr/local/bin/{program}"), "--help"],
                            "securityContext": container["securityContext"],
                        }],
                    },
                });
                pods.push((pod, name));
            }
        }
    }
    pods
}

/// The installer's DaemonSet pod, unchanged but for its host folders, which are under
/// `host`, and for `imagePullPolicy`.
fn installer_pod(base: &[Value], host: &Path) -> Value {
    let daemonset = base
        .iter()
        .find(|o| o["kind"] == "DaemonSet" && o["metadata"]["name"] == "danm-cni-installer")
        .expect("deploy/base has the installer's DaemonSet");
    let mut spec = daemonset["spec"]["template"]["spec"].clone();
    assert_eq!(spec["containers"][0]["image"], INSTALLER_IMAGE);
    spec["containers"][0]["imagePullPolicy"] = json!("Never");
    for volume in spec["volumes"].as_array_mut().expect("volumes") {
        if let Some(path) = volume["hostPath"]["path"].as_str() {
            let inside = host.join(path.trim_start_matches('/'));
            volume["hostPath"]["path"] = json!(inside);
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "installer", "namespace": NAMESPACE},
        "spec": spec,
    })
}

/// What the installer's pod needs in its namespace, as `deploy/base` has it: its
/// ServiceAccount, the template's ConfigMap, the CA bundle's ConfigMap and the Service
/// whose ports `grpc` and `health` kubelet turns into `DANM_IPAMD_SERVICE_*`.
fn installer_surroundings(cluster: &Cluster) -> Value {
    let template =
        std::fs::read_to_string(repository_file("deploy/base/cni/00-danm.conf.template"))
            .expect("the template");
    let ca = std::fs::read_to_string(cluster.pki.ca()).expect("the CA");
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "danm-cni-installer", "namespace": NAMESPACE},
         "automountServiceAccountToken": false},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "danm-cni-config", "namespace": NAMESPACE},
         "data": {"00-danm.conf.template": template}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "danm-ca", "namespace": NAMESPACE},
         "data": {"ca.crt": ca}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "danm-ipamd", "namespace": NAMESPACE},
         "spec": {"selector": {"app": "nothing"},
                  "ports": [{"name": "grpc", "port": 9443, "targetPort": 9443},
                            {"name": "health", "port": 9444, "targetPort": 9444}]}},
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_run_as_deploy_base_runs_them_and_the_installer_installs_danm() {
    danm_e2e::pods::init_logs();
    assert!(
        is_root(),
        "a real node needs root (kubelet, containerd, runc)"
    );
    let containerd = Containerd::debian();
    let cluster = Cluster::start_for_real_nodes().await;
    let link = host_link();
    cluster.kubectl(&["apply", "-f", "-"], &default_network(&link, 20));
    let node = start_node(&cluster, containerd).await;
    for image in deploy_images() {
        node.import_image(&image);
    }
    let pods: Api<Pod> = Api::namespaced(cluster.plane.client().await, NAMESPACE);
    let base = rendered_base(&cluster);

    // Every binary of every daemon image, as each workload runs its image.
    let runs = help_pods(&base);
    let workloads = base.iter().filter_map(pod_spec).count();
    // 12: every binary of each workload's image (ipamd's four, the webhook's, danm-certs'
    // in its Job and CronJob, the watchers' two in each of their two workloads, the
    // cleaner's), so a binary left out of its image shows here.
    assert!(
        runs.len() >= 12 && workloads >= 8,
        "{} runs from {workloads} workloads",
        runs.len()
    );
    let items: Vec<Value> = runs.iter().map(|(pod, _)| pod.clone()).collect();
    cluster.kubectl(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    );
    for (_, name) in &runs {
        let phase = phase_when_done(&pods, name, || diagnose(&cluster, &node)).await;
        let log = node.container_log(NAMESPACE, name, "run");
        assert_eq!(
            phase,
            "Succeeded",
            "{name}:\n{log}\n{}",
            diagnose(&cluster, &node)
        );
        assert!(log.contains("Usage:"), "{name} printed no usage:\n{log}");
    }

    // The installer, as its DaemonSet runs it, on a node that opted in.
    cluster.kubectl(&["label", "node", "real-1", "danm.io/cni=enabled"], "");
    cluster.kubectl(
        &["apply", "-f", "-"],
        &installer_surroundings(&cluster).to_string(),
    );
    let services: Api<Service> = Api::namespaced(cluster.plane.client().await, NAMESPACE);
    let cluster_ip = services
        .get("danm-ipamd")
        .await
        .expect("the Service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP");
    let host = tempfile::tempdir().expect("a temporary folder");
    let conf = host.path().join("etc/cni/net.d/00-danm.conf");
    std::fs::create_dir_all(conf.parent().unwrap()).expect("the node's net.d");
    std::fs::write(&conf, "{\"previous\": true}").expect("an older 00-danm.conf");
    cluster.kubectl(
        &["apply", "-f", "-"],
        &installer_pod(&base, host.path()).to_string(),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while std::fs::read_to_string(&conf).is_ok_and(|text| text.contains("previous")) {
        assert!(
            Instant::now() < deadline,
            "00-danm.conf not rewritten after 90 s:\n{}\n{}",
            node.container_log(NAMESPACE, "installer", "install"),
            diagnose(&cluster, &node)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for plugin in ["danm", "danm-ipam"] {
        let installed = host.path().join("opt/cni/bin").join(plugin);
        assert_eq!(
            std::fs::read(&installed).expect("the plugin is installed"),
            std::fs::read(binary(plugin)).unwrap(),
            "{plugin} is the workspace's"
        );
        let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{plugin}'s mode");
    }
    assert_eq!(
        std::fs::read(host.path().join("etc/cni/net.d/danm/ipamd-ca.crt")).expect("the CA"),
        std::fs::read(cluster.pki.ca()).unwrap()
    );
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&conf).unwrap()).expect("JSON");
    assert_eq!(written["ipamd"], format!("https://{cluster_ip}:9443"));
    assert_eq!(written["type"], "danm");
    // The script says so after its last rename; the log reaches the file a moment later.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = node.container_log(NAMESPACE, "installer", "install");
        if log.contains("install-cni: installed danm and danm-ipam") {
            assert!(
                log.contains("00-danm.conf exists: rewritten at once, without waiting for ipamd"),
                "{log}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the installer's log says nothing:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    cluster.kubectl(
        &["delete", "pod", "-n", NAMESPACE, "installer", "--wait"],
        "",
    );
}
