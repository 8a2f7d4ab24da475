//! Node identity by ServiceAccount token (`ipamd --node-identity sa-token`, issue 24), on
//! the real API server, for clusters whose kubelet certificates the plugin cannot present.
//!
//! The node agents (the CNI installer's pods, one bound to each node) hold pod-bound
//! tokens of their ServiceAccount for the audience `danm-ipamd`; the `danm-ipam` plugin on
//! node A reads A's token from the file `ipamdTLS.token` names and sends it. ipamd reviews
//! it with the API server: A's plugin allocates for A's pod, and is refused B's; a token of
//! another account, of another audience, made up, or node A's with a forged signature is
//! refused; a caller with neither token nor certificate is refused; the administrator
//! keeps its client certificate.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use danm_e2e::cluster::binary;
use danm_proto::v1 as pb;
use danm_testkit::control_plane::{ControlPlane, Options, free_port};
use danm_testkit::pki::{TestCa, Usage};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const NS: &str = "tokens";
const AGENT: &str = "danm-cni-installer";

/// A pod-bound token of `account` for `audience`, bound to pod `pod`.
async fn token(client: &kube::Client, account: &str, pod: &str, audience: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let uid = pods.get(pod).await.unwrap().metadata.uid.unwrap();
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": {
            "audiences": [audience],
            "expirationSeconds": 3600,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": uid},
        }
    }))
    .unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token of {account} bound to {pod}: {e}"))
        .status
        .unwrap()
        .token
}

/// `danm-ipam ADD` for pod `pod` (its name in CNI_ARGS, as the runtime sends it), with the
/// token file `token_file`; its result or its error.
fn cni_add(dir: &Path, ipamd: u16, pod: &str, token_file: &Path) -> Result<Value, Value> {
    let config = json!({"cniVersion": "1.0.0", "name": "tok", "type": "macvlan", "ipam": {
        "type": "danm-ipam", "ipamd": format!("https://127.0.0.1:{ipamd}"),
        "network": "tok", "ipamdTLS": {
            "ca": dir.join("danm-ca.pem"), "token": token_file,
            "serverName": "danm-ipamd.danm-system.svc"}}});
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={pod}");
    let out = danm_testkit::cni::run(
        &binary("danm-ipam"),
        &danm_testkit::cni::CniCall {
            command: "ADD",
            container_id: &format!("cid-{pod}"),
            netns: "/var/run/netns/none",
            ifname: "net1",
            args: &args,
            path: None,
        },
        &config,
    );
    if out.ok {
        Ok(out.stdout)
    } else {
        Err(out.stdout)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_who_its_agents_token_says() {
    let plane = ControlPlane::start(Options::default()).await.unwrap();
    plane.create_namespace(NS).await;
    let client = plane.client().await;
    let annotation = r#"[{"network":"tok","ip":"dynamic"}]"#;
    let mut manifest = format!(
        "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: tok, namespace: {NS}}}\nspec: {{NetworkID: tok, NetworkType: macvlan, Options: {{cidr: 10.81.0.0/24}}}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {AGENT}, namespace: {NS}}}\n"
    );
    for node in ["node-a", "node-b"] {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {node}}}\n"
        ));
        // The node's agent, and a workload pod.
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: agent-{node}, namespace: {NS}}}\nspec: {{nodeName: {node}, serviceAccountName: {AGENT}, containers: [{{name: c, image: pause}}]}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: work-{node}, namespace: {NS}, annotations: {{danm.io/interfaces: '{annotation}'}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: pause}}]}}\n"
        ));
    }
    // A pod of another account on node A (its token names node A too).
    manifest.push_str(&format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: other-node-a, namespace: {NS}}}\nspec: {{nodeName: node-a, containers: [{{name: c, image: pause}}]}}\n"
    ));
    plane.kubectl_apply(&manifest).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "danm-ca");
    ca.issue_files(
        "server",
        "danm-ipamd.danm-system.svc",
        None,
        &["danm-ipamd.danm-system.svc"],
        Usage::Server,
    );
    ca.issue_files("cleaner", "danm-cleaner", None, &[], Usage::Client);
    let file = |p: &str| dir.path().join(p);
    // Node A's agent's token, as the installer copies it onto node A.
    let token_a = token(&client, AGENT, "agent-node-a", "danm-ipamd").await;
    std::fs::write(file("node-a.token"), &token_a).unwrap();

    let port = free_port();
    let mut ipamd = Command::new(binary("ipamd"));
    ipamd
        .env("KUBECONFIG", plane.kubeconfig())
        .env("NO_COLOR", "1")
        .args(["--store", "kube", "--namespace", NS])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(file("server.pem"))
        .arg("--tls-key")
        .arg(file("server-key.pem"))
        .arg("--tls-client-ca")
        .arg(file("danm-ca.pem"))
        .arg("--admin-client-ca")
        .arg(file("danm-ca.pem"))
        .args(["--authorization", "nodes", "--node-identity", "sa-token"])
        .args([
            "--node-token-account",
            &format!("system:serviceaccount:{NS}:{AGENT}"),
        ]);
    let ipamd = plane.spawn_beside("ipamd", ipamd).unwrap();

    // Node A's plugin allocates for node A's pod.
    let deadline = Instant::now() + Duration::from_secs(30);
    let added = loop {
        let d = dir.path().to_owned();
        let outcome = tokio::task::spawn_blocking(move || {
            cni_add(&d, port, "work-node-a", &d.join("node-a.token"))
        })
        .await
        .unwrap();
        match outcome {
            Ok(result) => break result,
            Err(e) if Instant::now() < deadline && e["code"] == 11 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("node A's ADD failed: {e}\n{}", ipamd.log_tail(20)),
        }
    };
    assert!(
        added["ips"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("10.81.0."),
        "{added}"
    );
    // ... and is refused node B's.
    let d = dir.path().to_owned();
    let refused = tokio::task::spawn_blocking(move || {
        cni_add(&d, port, "work-node-b", &d.join("node-a.token"))
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        refused["msg"]
            .as_str()
            .unwrap()
            .contains("node node-a may not"),
        "{refused}"
    );

    // Other tokens, over gRPC directly: each refused, naming why.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(file("danm-ca.pem")).unwrap(),
        ))
        .domain_name("danm-ipamd.danm-system.svc");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let default_token = token(&client, "default", "other-node-a", "danm-ipamd").await;
    let api_audience = token(
        &client,
        AGENT,
        "agent-node-a",
        "https://kubernetes.default.svc.cluster.local",
    )
    .await;
    // Node A's token with its signature altered: its claims are right, so only the API
    // server can tell.
    let forged = {
        let (signed, signature) = token_a.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { "B" } else { "A" };
        format!("{signed}.{flipped}{}", &signature[1..])
    };
    for (what, bearer, says) in [
        (
            "node A's token with a forged signature",
            Some(forged),
            "not valid for audience",
        ),
        (
            "another account's token",
            Some(default_token),
            "not the node agent's",
        ),
        (
            "a token for the API server",
            Some(api_audience),
            "not valid for audience",
        ),
        (
            "a made-up token",
            Some("not.a.token".to_owned()),
            "not valid",
        ),
        (
            "no token and no certificate",
            None,
            "client certificate is required",
        ),
    ] {
        let mut request = tonic::Request::new(pb::AttachRequest {
            pod_namespace: NS.into(),
            pod_name: "work-node-a".into(),
            container_id: format!("cid-{what}").replace(' ', "-"),
            netns: "/var/run/netns/none".into(),
            ..Default::default()
        });
        if let Some(bearer) = bearer {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
        }
        let status = pb::ipam_client::IpamClient::new(channel.clone())
            .attach(request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
        assert!(status.message().contains(says), "{what}: {status:?}");
    }
    // The administrator keeps its certificate.
    let pem = std::fs::read(file("cleaner.pem")).unwrap();
    let key = std::fs::read(file("cleaner-key.pem")).unwrap();
    let admin = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls.identity(Identity::from_pem(pem, key)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut listed = pb::ipam_client::IpamClient::new(admin)
        .list_allocations(pb::ListAllocationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut count = 0;
    while let Some(item) = futures::StreamExt::next(&mut listed).await {
        item.unwrap();
        count += 1;
    }
    assert_eq!(count, 1, "node A's one address");
}
