//! Certificates renewed and the CA rotated under live traffic (issue 24), with lifetimes
//! shortened by danm-certs' flags: leaves last 20 s (re-issued 10 s before their end), the
//! CA 60 s (a next CA joins the trust bundle 32 s before its end, signs 6 s later, and the
//! previous one leaves the bundle 6 s after that). In 80 s the CA changes at least twice
//! and the leaves about eight times.
//!
//! Beside it, as in a cluster: the webhook and ipamd serve the Secrets' files (a task of
//! the test plays kubelet, copying each Secret and the ConfigMap to files every half
//! second, as its volume sync does, slower) and re-read them; the CNI installer's copy of
//! the ConfigMap is what `danm-ipam` trusts. And two kinds of clients that must never fail:
//!
//! * CNI traffic: `danm-ipam` ADD and DEL through ipamd over mutual TLS, trusting the
//!   node's copy of the bundle, presenting a node certificate of the cluster CA;
//! * admissions: reviews sent to the webhook as the API server sends them: trusting the
//!   `caBundle` danm-certs writes into the MutatingWebhookConfiguration (read afresh for
//!   each call), checking the Service's name `danm-webhook.danm-system.svc`. (The API
//!   server itself cannot be the client here: it would dial the Service through
//!   kube-proxy, which this machine does not run.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use danm_e2e::cluster::binary;
use danm_testkit::control_plane::{ControlPlane, Options, free_port};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use serde_json::{Value, json};

const NAMESPACE: &str = "danm-system";
const RUN_FOR: Duration = Duration::from_secs(80);

const NETWORK: &str = "
apiVersion: danm.io/v1
kind: DanmNet
metadata: {name: rot, namespace: default}
spec:
  NetworkID: rot
  NetworkType: macvlan
  Options:
    cidr: 10.66.0.0/24
";

/// Writes `content` to `path` the way kubelet updates a volume: never half-written.
fn write_atomically(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Plays kubelet (Secret volumes) and the CNI installer (the ConfigMap's copy on the node).
async fn sync_files(client: kube::Client, dir: PathBuf) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let maps: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
    loop {
        for name in ["danm-webhook-tls", "danm-ipamd-tls"] {
            if let Ok(Some(secret)) = secrets.get_opt(name).await {
                let folder = dir.join(name);
                std::fs::create_dir_all(&folder).unwrap();
                for (key, value) in secret.data.unwrap_or_default() {
                    let path = folder.join(&key);
                    if std::fs::read(&path).ok().as_deref() != Some(value.0.as_slice()) {
                        write_atomically(&path, &value.0);
                    }
                }
            }
        }
        if let Ok(Some(map)) = maps.get_opt("danm-ca").await
            && let Some(bundle) = map.data.unwrap_or_default().get("ca.crt")
        {
            let path = dir.join("node-ipamd-ca.crt");
            if std::fs::read_to_string(&path).ok().as_deref() != Some(bundle.as_str()) {
                write_atomically(&path, bundle.as_bytes());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One CNI ADD then DEL through `danm-ipam`; an error describes what failed.
fn cni_round(dir: &Path, ipamd: u16, cid: &str) -> Result<(), String> {
    let tls = json!({
        "ca": dir.join("node-ipamd-ca.crt"),
        "cert": dir.join("node.pem"), "key": dir.join("node.pem"),
        "serverName": "danm-ipamd.danm-system.svc",
    });
    let config = json!({"cniVersion": "1.0.0", "name": "rot", "type": "macvlan", "ipam": {
        "type": "danm-ipam", "ipamd": format!("https://127.0.0.1:{ipamd}"),
        "network": "rot", "ipamdTLS": tls}});
    for command in ["ADD", "DEL"] {
        let out = danm_testkit::cni::run(
            &binary("danm-ipam"),
            &danm_testkit::cni::CniCall {
                command,
                container_id: cid,
                netns: "/var/run/netns/none",
                ifname: "net1",
                args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default",
                path: None,
            },
            &config,
        );
        if !out.ok {
            return Err(format!("{command} {cid}: {}", out.stdout));
        }
    }
    Ok(())
}

/// One admission review as the API server sends it (see the module overview).
async fn admission_round(client: &kube::Client, webhook: u16, n: usize) -> Result<(), String> {
    let configuration = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get("danm-webhook")
        .await
        .map_err(|e| e.to_string())?;
    let bundle = configuration.webhooks.unwrap_or_default()[0]
        .client_config
        .ca_bundle
        .clone()
        .ok_or("no caBundle")?;
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .resolve(
            "danm-webhook.danm-system.svc",
            ([127, 0, 0, 1], webhook).into(),
        )
        .timeout(Duration::from_secs(10));
    for cert in reqwest::Certificate::from_pem_bundle(&bundle.0).map_err(|e| e.to_string())? {
        builder = builder.add_root_certificate(cert);
    }
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("00000000-0000-4000-8000-{n:012}"),
            "kind": {"group": "danm.io", "version": "v1", "kind": "DanmNet"},
            "resource": {"group": "danm.io", "version": "v1", "resource": "danmnets"},
            "name": "rot", "namespace": "default", "operation": "CREATE",
            "userInfo": {"username": "tester"}, "dryRun": true,
            "object": {"apiVersion": "danm.io/v1", "kind": "DanmNet",
                "metadata": {"name": "rot", "namespace": "default"},
                "spec": {"NetworkID": "rot", "NetworkType": "macvlan",
                         "Options": {"cidr": "10.66.0.0/24"}}},
        }
    });
    let answer: Value = builder
        .build()
        .map_err(|e| e.to_string())?
        .post(format!(
            "https://danm-webhook.danm-system.svc:{webhook}/netvalidation"
        ))
        .json(&review)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    if answer["response"]["allowed"] == true {
        Ok(())
    } else {
        Err(answer.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_renewals_and_ca_rotations_loses_no_request() {
    let plane = ControlPlane::start(Options::default()).await.unwrap();
    plane.create_namespace(NAMESPACE).await;
    let client = plane.client().await;
    let dir = tempfile::tempdir().unwrap();
    // The nodes' identity (a kubelet certificate of the cluster CA) and the cluster CA.
    let node = plane.client_cert("system:node:n1");
    std::fs::write(
        dir.path().join("node.pem"),
        format!("{}{}", node.cert_pem, node.key_pem),
    )
    .unwrap();
    std::fs::write(dir.path().join("cluster-ca.crt"), plane.ca_pem()).unwrap();
    std::fs::create_dir(dir.path().join("networks")).unwrap();
    std::fs::write(dir.path().join("networks/rot.yaml"), NETWORK).unwrap();

    // The webhook configurations danm-certs keeps the caBundle of (pointed at the
    // webhook: registering needs an address).
    let webhook_port = free_port();
    let configurations = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/base/webhook/webhook-configurations.yaml");
    danm_testkit::webhook::register(
        &plane,
        &configurations,
        ([127, 0, 0, 1], webhook_port).into(),
    )
    .await
    .unwrap();

    let mut certs = Command::new(binary("danm-certs"));
    certs
        .arg("--kubeconfig")
        .arg(plane.kubeconfig())
        .args(["--namespace", NAMESPACE, "--require-webhook-configurations"])
        .args([
            "--every",
            "1s",
            "--leaf-validity",
            "20s",
            "--renew-before",
            "10s",
        ])
        .args([
            "--ca-validity",
            "60s",
            "--ca-renew-before",
            "32s",
            "--ca-overlap",
            "6s",
        ]);
    let certs = plane.spawn_beside("danm-certs", certs).unwrap();
    tokio::spawn(sync_files(client.clone(), dir.path().to_owned()));
    let file = |p: &str| dir.path().join(p);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(file("danm-webhook-tls/tls.key").exists()
        && file("danm-ipamd-tls/tls.key").exists()
        && file("node-ipamd-ca.crt").exists())
    {
        assert!(
            Instant::now() < deadline,
            "no certificates:\n{}",
            certs.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut webhook = Command::new(binary("webhook"));
    webhook
        .env("KUBECONFIG", plane.kubeconfig())
        .args(["--listen", &format!("127.0.0.1:{webhook_port}")])
        .arg("--tls-cert")
        .arg(file("danm-webhook-tls/tls.crt"))
        .arg("--tls-key")
        .arg(file("danm-webhook-tls/tls.key"))
        .args(["--tls-reload-seconds", "1"]);
    let webhook = plane.spawn_beside("webhook", webhook).unwrap();
    let ipamd_port = free_port();
    let mut ipamd = Command::new(binary("ipamd"));
    ipamd
        .args([
            "--store",
            "memory",
            "--listen",
            &format!("127.0.0.1:{ipamd_port}"),
        ])
        .arg("--networks")
        .arg(file("networks"))
        .arg("--tls-cert")
        .arg(file("danm-ipamd-tls/tls.crt"))
        .arg("--tls-key")
        .arg(file("danm-ipamd-tls/tls.key"))
        .arg("--tls-client-ca")
        .arg(file("danm-ipamd-tls/ca.crt"))
        .arg("--tls-client-ca")
        .arg(file("cluster-ca.crt"))
        .args(["--authorization", "any-client", "--tls-reload-seconds", "1"]);
    let ipamd = plane.spawn_beside("ipamd", ipamd).unwrap();

    // Both answer before the traffic starts (the caBundle is danm-certs' by then).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cni = {
            let d = dir.path().to_owned();
            tokio::task::spawn_blocking(move || cni_round(&d, ipamd_port, "c-warmup"))
                .await
                .unwrap()
        };
        let admission = admission_round(&client, webhook_port, 0).await;
        if cni.is_ok() && admission.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not serving: {cni:?} {admission:?}\n{}\n{}",
            webhook.log_tail(20),
            ipamd.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The traffic, and the CAs seen, for RUN_FOR.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let ca_of = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get("ca.crt"))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    };
    let leaf_of = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get("tls.crt"))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    };
    let (cni_ok, admissions_ok) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let until = Instant::now() + RUN_FOR;
    let cni = {
        let (d, ok, failures) = (
            dir.path().to_owned(),
            Arc::clone(&cni_ok),
            Arc::clone(&failures),
        );
        tokio::task::spawn_blocking(move || {
            let mut n = 0;
            while Instant::now() < until {
                n += 1;
                match cni_round(&d, ipamd_port, &format!("c-{n}")) {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failures.lock().unwrap().push(format!("CNI: {e}"));
                        0
                    }
                };
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mut cas = Vec::new();
    let mut leaves = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        match admission_round(&client, webhook_port, n).await {
            Ok(()) => {
                admissions_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => failures.lock().unwrap().push(format!("admission: {e}")),
        }
        if let Ok(ca) = secrets.get("danm-ca").await
            && let Some(pem) = ca_of(&ca)
            && cas.last() != Some(&pem)
        {
            cas.push(pem);
        }
        if let Ok(tls) = secrets.get("danm-webhook-tls").await
            && let Some(pem) = leaf_of(&tls)
            && leaves.last() != Some(&pem)
        {
            leaves.push(pem);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cni.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    println!(
        "{} CNI rounds and {} admissions over {} CAs and {} webhook certificates, {} failures",
        cni_ok.load(Ordering::Relaxed),
        admissions_ok.load(Ordering::Relaxed),
        cas.len(),
        leaves.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "requests failed during the rotations: {failures:#?}\n--- danm-certs\n{}\n--- webhook\n{}\n--- ipamd\n{}",
        certs.log_tail(30),
        webhook.log_tail(30),
        ipamd.log_tail(30)
    );
    assert!(cas.len() >= 3, "the CA rotated {} times", cas.len() - 1);
    assert!(leaves.len() >= 6, "{} webhook certificates", leaves.len());
    assert!(cni_ok.load(Ordering::Relaxed) > 50);
    assert!(admissions_ok.load(Ordering::Relaxed) > 50);
}
