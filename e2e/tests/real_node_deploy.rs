//! `deploy/crds` and `deploy/base` applied unchanged (`kubectl apply --server-side -k`) to a
//! fresh cluster whose one node (kubelet and containerd 1.6, [`RealNode::start_bare`]) has
//! no CNI yet: the images are the ones `danm_e2e::real_node::images` builds under the
//! manifests' names, and everything else is the manifests'. The test bed adds only what a
//! cluster provides and this machine lacks: Services without kube-proxy
//! ([`ServiceProxy`]), and the networks (`host_device` and address ranges are the
//! machine's).
//!
//! In order, as a cluster operator would see it: the danm-certs Job issues the
//! certificates; the CNI installer stays off the node until it is labelled
//! `danm.io/cni=enabled`; ipamd and the webhook become ready on the host network; the
//! installer waits, writing no `00-danm.conf`, while ipamd serves no default network; the
//! webhook admits the networks, and the installer makes `danm` the node's CNI and the
//! node goes Ready; netwatcher and svcwatcher (a pod on DANM's own network, reaching the
//! API server through its route) become ready; a pod gets its address from ipamd through
//! the installed `danm`, and gives it back when deleted; a leaked address is freed by the
//! cleaner's Job; with ipamd gone, a restarted installer rewrites the node's
//! configuration at once instead of waiting; the suite deleted, `deploy/uninstall` takes
//! danm off the node and the state stays.

use danm_e2e::pods::{eventually, pod_ip, ready};
use danm_e2e::real_node::suite::{
    BareBed, SYSTEM, apply_base, deployment_serves, installer_pod, job_completes, kustomize,
    networks, node_ready, opt_in, start_plane,
};
use danm_e2e::real_node::{HostSnapshot, suite};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

/// A pod of the test namespace on its default network: a TCP server, as the manifests
/// run containers (non-root, read-only root, no capability).
fn pod(name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: real-node}}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: server
    image: danm.test/netcheck:1
    imagePullPolicy: Never
    args: [serve, "8080"]
    securityContext: {{runAsNonRoot: true, runAsUser: 65535, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_base_applied_unchanged_brings_up_the_suite_on_a_fresh_node() {
    let plane = start_plane().await;
    let before = HostSnapshot::take();
    let bed = BareBed::start(&plane).await;
    let node = &bed.node;
    node.import(&plane, "netcheck");
    let client = plane.client().await;
    let diagnose = || suite::diagnose(&plane, node);
    apply_base(&plane, node);

    // The certificates; no CNI until the node opts in.
    job_completes(&client, "danm-certs", diagnose).await;
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), SYSTEM);
    let scheduled = eventually(
        60,
        "the installer's DaemonSet is seen",
        diagnose,
        || async {
            let status = daemonsets
                .get_opt("danm-cni-installer")
                .await
                .ok()??
                .status?;
            status
                .observed_generation
                .map(|_| status.desired_number_scheduled)
        },
    )
    .await;
    assert_eq!(scheduled, 0, "the installer waits for the node's label");
    assert!(!node.cni_dir().join("00-danm.conf").exists());
    opt_in(&plane, "real-1");

    // ipamd and the webhook serve (host network, so on a node with no CNI yet; one replica
    // each: their host ports allow one per node).
    for name in ["danm-ipamd", "danm-webhook"] {
        deployment_serves(&client, name, diagnose).await;
    }

    // The installer runs, but a node's first 00-danm.conf waits for a default network.
    let system_pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    let first = eventually(60, "the installer runs", diagnose, || {
        installer_pod(&client)
    })
    .await;
    // (Its first reason may be that the health port does not answer yet, while the
    // Service's endpoint is on its way; the reason is logged again when it changes.)
    eventually(60, "the installer says why it waits", diagnose, || async {
        let log = node.container_log("danm-system", &first, "install");
        log.lines()
            .any(|l| {
                l.contains("00-danm.conf not written yet")
                    && l.contains("danm.io/default-network: NOT_SERVING")
            })
            .then_some(())
    })
    .await;
    assert!(!node.cni_dir().join("00-danm.conf").exists());
    let installer_ready = || async {
        system_pods
            .get_opt(&first)
            .await
            .ok()
            .flatten()
            .filter(ready)
    };
    assert!(
        installer_ready().await.is_none(),
        "the installer is Ready with no 00-danm.conf"
    );
    assert!(
        node_ready(&client, "real-1").await.is_none(),
        "Ready with no CNI"
    );

    // The networks, through the webhook (failurePolicy Fail: admitted means it answered).
    let networks = networks(&bed.link);
    eventually(90, "the webhook admits the networks", diagnose, || async {
        plane.kubectl_apply(&networks).ok()
    })
    .await;

    // ipamd serves a default network: the installer makes danm the node's CNI.
    eventually(120, "the installer makes the node Ready", diagnose, || {
        node_ready(&client, "real-1")
    })
    .await;
    assert!(node.cni_dir().join("00-danm.conf").exists());
    let log = node.container_log("danm-system", &first, "install");
    assert!(log.contains("danm.io/default-network: SERVING"), "{log}");
    eventually(30, "the installer is Ready", diagnose, installer_ready).await;

    // netwatcher on the node, svcwatcher on DANM's network.
    eventually(120, "DaemonSet danm-netwatcher ready", diagnose, || async {
        daemonsets
            .get_opt("danm-netwatcher")
            .await
            .ok()
            .flatten()
            .and_then(|d| d.status)
            .filter(|s| s.number_ready >= 1)
    })
    .await;
    deployment_serves(&client, "danm-svcwatcher", diagnose).await;

    // A pod through the installed danm and ipamd.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "real-node");
    plane.kubectl_apply(&pod("web")).expect("the pod");
    let web = eventually(120, "the pod is Ready", diagnose, || async {
        pods.get_opt("web").await.ok().flatten().filter(ready)
    })
    .await;
    let address = pod_ip(&web);
    assert!(address.starts_with("198.18.8."), "{address}");
    let endpoints = plane
        .kubectl_with_input(&["get", "danmeps", "-n", "real-node", "-o", "name"], "")
        .expect("DanmEps");
    assert_eq!(endpoints.lines().count(), 1, "{endpoints}");
    plane
        .kubectl_with_input(&["delete", "pod", "-n", "real-node", "web", "--wait"], "")
        .expect("the pod is deleted");
    eventually(60, "the pod's DanmEp goes", diagnose, || async {
        plane
            .kubectl_with_input(&["get", "danmeps", "-n", "real-node", "-o", "name"], "")
            .ok()
            .filter(|out| out.trim().is_empty())
    })
    .await;

    // The CronJob's own schedule is suspended (as an operator pausing it would), so that
    // the pass below is the one that meets the leak, and its Job, which the CronJob does
    // not own, stays for its log to be read.
    plane
        .kubectl_with_input(
            &[
                "patch",
                "cronjob",
                "-n",
                "danm-system",
                "danm-cleaner",
                "--type=merge",
                "-p",
                r#"{"spec":{"suspend":true}}"#,
            ],
            "",
        )
        .expect("the CronJob is suspended");

    // A leak: a pod force-deleted while its CNI DEL fails (a wrapper refuses that pod's
    // DEL, noting it, and passes every other call on) leaves its DanmEp and address behind.
    plane.kubectl_apply(&pod("leaky")).expect("the leaky pod");
    let leaky = eventually(120, "the leaky pod is Ready", diagnose, || async {
        pods.get_opt("leaky").await.ok().flatten().filter(ready)
    })
    .await;
    let leaked_address = pod_ip(&leaky);
    let plugin = node.cni_bin().join("danm");
    let real = node.cni_bin().join("danm.real");
    let refusals = node.cni_bin().join("danm.refused");
    std::fs::rename(&plugin, &real).expect("the plugin is moved away");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\ncase \"$CNI_COMMAND $CNI_ARGS;\" in DEL*K8S_POD_NAME=leaky\\;*) echo refused >> {}; exit 1;; esac\nexec {} \"$@\"\n",
            refusals.display(),
            real.display()
        ),
    )
    .expect("the wrapper");
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("the wrapper is executable");
    plane
        .kubectl_with_input(
            &[
                "delete",
                "pod",
                "-n",
                "real-node",
                "leaky",
                "--force",
                "--grace-period=0",
            ],
            "",
        )
        .expect("the pod is force-deleted");
    eventually(60, "the leaky pod's DEL is refused", diagnose, || async {
        refusals.exists().then_some(())
    })
    .await;
    let danmeps = || {
        plane
            .kubectl_with_input(&["get", "danmeps", "-n", "real-node", "-o", "name"], "")
            .unwrap_or_default()
    };
    assert_eq!(danmeps().lines().count(), 1, "the leaked DanmEp");

    // The cleaner's CronJob's template, run now as its own Job: it reaches ipamd by the
    // Service's DNS name, with its client certificate, and frees the leak.
    let cronjob: serde_json::Value = serde_json::from_str(
        &plane
            .kubectl_with_input(
                &[
                    "get",
                    "cronjob",
                    "-n",
                    "danm-system",
                    "danm-cleaner",
                    "-o",
                    "json",
                ],
                "",
            )
            .expect("the CronJob"),
    )
    .expect("JSON");
    let job = serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "cleaner-now", "namespace": "danm-system"},
        "spec": cronjob["spec"]["jobTemplate"]["spec"],
    });
    plane
        .kubectl_apply(&job.to_string())
        .expect("a Job from the CronJob's template");
    job_completes(&client, "cleaner-now", diagnose).await;
    assert_eq!(danmeps(), "", "the cleaner freed the leak");
    let cleaner = system_pods
        .list(&ListParams::default().labels("job-name=cleaner-now"))
        .await
        .expect("the cleaner's pod")
        .items
        .into_iter()
        .find_map(|p| p.metadata.name)
        .expect("the cleaner's pod");
    let log = node.container_log("danm-system", &cleaner, "cleaner");
    assert!(
        log.contains(&format!("freed {leaked_address}")),
        "the cleaner does not say it freed {leaked_address}:\n{log}"
    );
    std::fs::rename(&real, &plugin).expect("the plugin is back");

    // ipamd gone and the installer restarted: the node keeps its configuration, rewritten
    // at once (an outage never holds an installer restart back).
    plane
        .kubectl_with_input(
            &[
                "scale",
                "deployment",
                "-n",
                "danm-system",
                "danm-ipamd",
                "--replicas=0",
            ],
            "",
        )
        .expect("ipamd scaled to nothing");
    eventually(90, "ipamd's pods are gone", diagnose, || async {
        let list = system_pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=danm-ipamd"))
            .await
            .ok()?;
        list.items.is_empty().then_some(())
    })
    .await;
    plane
        .kubectl_with_input(
            &["delete", "pod", "-n", "danm-system", &first, "--wait"],
            "",
        )
        .expect("the installer's pod is deleted");
    let second = eventually(60, "the installer runs again", diagnose, || async {
        installer_pod(&client).await.filter(|name| *name != first)
    })
    .await;
    eventually(
        60,
        "the new installer rewrites 00-danm.conf",
        diagnose,
        || async {
            node.container_log("danm-system", &second, "install")
                .contains("00-danm.conf exists: rewritten at once, without waiting for ipamd")
                .then_some(())
        },
    )
    .await;
    assert!(node.cni_dir().join("00-danm.conf").exists());
    assert!(
        node_ready(&client, "real-1").await.is_some(),
        "the node stays Ready"
    );

    // Uninstalling, as docs/install.md says: ipamd back, the pods attached through danm
    // (svcwatcher's) deleted while ipamd serves their DEL, the suite deleted, then
    // deploy/uninstall takes danm off the node; the networks, their allocations and
    // deploy/crds stay.
    plane
        .kubectl_with_input(
            &[
                "scale",
                "deployment",
                "-n",
                SYSTEM,
                "danm-ipamd",
                "--replicas=1",
            ],
            "",
        )
        .expect("ipamd scaled back");
    deployment_serves(&client, "danm-ipamd", diagnose).await;
    plane
        .kubectl_with_input(
            &[
                "delete",
                "deployment",
                "-n",
                SYSTEM,
                "danm-svcwatcher",
                "--cascade=foreground",
            ],
            "",
        )
        .expect("svcwatcher and its pods deleted");
    kustomize(&plane, "delete", "deploy/base");
    kustomize(&plane, "apply", "deploy/uninstall");
    eventually(
        90,
        "the uninstaller takes danm off the node",
        diagnose,
        || async {
            let gone = !node.cni_dir().join("00-danm.conf").exists()
                && !node.cni_dir().join("danm").exists()
                && !node.cni_bin().join("danm").exists()
                && !node.cni_bin().join("danm-ipam").exists();
            gone.then_some(())
        },
    )
    .await;
    let kept = |what: &str| {
        plane
            .kubectl_with_input(&["get", what, "-A", "-o", "name"], "")
            .unwrap_or_default()
    };
    assert_eq!(kept("danmnets").lines().count(), 2, "the networks stay");
    assert!(
        !kept("allocationshards").trim().is_empty(),
        "their allocations stay"
    );
    assert!(kept("namespaces").contains("namespace/danm-system"));
    let uninstaller = eventually(60, "the uninstaller is Ready", diagnose, || async {
        system_pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=danm-cni-uninstaller"))
            .await
            .ok()?
            .items
            .into_iter()
            .find(ready)
    })
    .await;
    let log = node.container_log(
        SYSTEM,
        uninstaller.metadata.name.as_deref().unwrap_or_default(),
        "uninstall",
    );
    assert!(log.contains("install-cni: uninstalled"), "{log}");
    kustomize(&plane, "delete", "deploy/uninstall");

    // The node gone, the host is as before, its CNI, kubelet and nftables state included.
    drop(bed);
    assert_eq!(HostSnapshot::take(), before);
}
