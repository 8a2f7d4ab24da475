//! Node-scoped authorization over real mutual TLS, with the ipamd binary on the real API
//! server (`--store kube --authorization nodes`): the CNI of node N (a certificate for
//! `system:node:N` in `system:nodes`, as every kubelet has) may attach, allocate, detach and
//! release only for pods bound to N; the cleaner's identity may release for any node;
//! anyone else, no certificate, a certificate of an unknown CA and plaintext are refused,
//! and nothing is allocated for a refused call. The admin port's metrics show it all.
//! ipamctl and showalloc reach that ipamd with the same identities.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use danm_crds::DanmEp;
use danm_proto::v1 as pb;
use danm_proto::v1::ipam_client::IpamClient;
use danm_testkit::control_plane::ControlPlane;
use danm_testkit::pki::{TestCa, Usage};
use danm_testkit::process::{KillOnDrop, free_addr};
use kube::api::{Api, ListParams};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Two CAs (ipamd trusts both: the cluster's, for kubelets, and DANM's, for the cleaner)
/// and a third nobody trusts; the server's certificate and one per client identity.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = |name: &str| TestCa::new(dir.path(), name);
        let (cluster, danm, stranger) = (ca("cluster-ca"), ca("danm-ca"), ca("stranger-ca"));
        // A CA ipamd trusts (as it trusts the cluster's) whose name is DANM's CA's: its
        // certificates name DANM's CA as their issuer, and only the chain tells them apart.
        let impostor = TestCa::named(dir.path(), "impostor-ca", "danm-ca");
        impostor.issue_files("impostor-cleaner", "danm-cleaner", None, &[], Usage::Client);
        danm.issue_files("server", "danm-ipamd", None, &["localhost"], Usage::Server);
        let clients: [(&str, &TestCa, &str, Option<&str>); 8] = [
            (
                "node-a",
                &cluster,
                "system:node:node-a",
                Some("system:nodes"),
            ),
            (
                "node-b",
                &cluster,
                "system:node:node-b",
                Some("system:nodes"),
            ),
            // A node name without the nodes group: not a node.
            ("fake-node", &danm, "system:node:node-a", None),
            ("cleaner", &danm, "danm-cleaner", None),
            ("stranger", &stranger, "danm-cleaner", None),
            ("someone", &danm, "someone", None),
            // The right names from the wrong CA: the administrator's name from the cluster
            // CA, a node identity from DANM's (which issues administrators only).
            ("cluster-cleaner", &cluster, "danm-cleaner", None),
            (
                "danm-node",
                &danm,
                "system:node:node-a",
                Some("system:nodes"),
            ),
        ];
        for (stem, ca, cn, org) in clients {
            ca.issue_files(stem, cn, org, &[], Usage::Client);
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

struct Ipamd {
    _child: KillOnDrop,
    grpc: String,
    admin: String,
    log: PathBuf,
}

fn start_ipamd(kubeconfig: &Path, pki: &Pki, namespace: &str, log: &Path) -> Ipamd {
    let (grpc, admin) = (free_addr(), free_addr());
    let path = |n: &str| pki.path(n).to_string_lossy().into_owned();
    let child = Command::new(env!("CARGO_BIN_EXE_ipamd"))
        .args(["--store", "kube", "--namespace", namespace])
        .args(["--listen", &grpc, "--admin-listen", &admin])
        .args(["--orphan-grace-seconds", "0"])
        .args([
            "--tls-cert",
            &path("server.pem"),
            "--tls-key",
            &path("server-key.pem"),
        ])
        .args(["--tls-client-ca", &path("cluster-ca.pem")])
        .args(["--tls-client-ca", &path("danm-ca.pem")])
        .args(["--tls-client-ca", &path("impostor-ca.pem")])
        .args([
            "--authorization",
            "nodes",
            "--admin-clients",
            "danm-cleaner",
        ])
        .args(["--admin-client-ca", &path("danm-ca.pem")])
        .env("KUBECONFIG", kubeconfig)
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Ipamd {
        _child: KillOnDrop(child),
        grpc,
        admin,
        log: log.to_owned(),
    }
}

/// A client presenting `identity` (a file stem of [`Pki`]), or none.
async fn client(
    pki: &Pki,
    ipamd: &Ipamd,
    identity: Option<&str>,
) -> Result<IpamClient<Channel>, tonic::transport::Error> {
    let ca = std::fs::read(pki.path("danm-ca.pem")).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(id) = identity {
        let cert = std::fs::read(pki.path(&format!("{id}.pem"))).unwrap();
        let key = std::fs::read(pki.path(&format!("{id}-key.pem"))).unwrap();
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{}", ipamd.grpc))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(IpamClient::new(channel))
}

/// A namespace with DanmNet `network` on `cidr` and `pods` (name, node) that ask for it, and
/// the ipamd binary serving it with node authorization; its namespace name.
async fn setup(
    plane: &ControlPlane,
    network: &str,
    cidr: &str,
    pods: &[(&str, &str)],
    pki: &Pki,
) -> (String, Ipamd) {
    let ns = plane.namespace(network).await;
    let ipamd_ns = plane.namespace(&format!("{network}-ipamd")).await;
    let annotation = format!(r#"[{{"network":"{network}","ip":"dynamic"}}]"#);
    let mut manifest = format!(
        "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: {network}, namespace: {ns}}}\nspec: {{NetworkID: {network}, NetworkType: macvlan, Options: {{cidr: {cidr}}}}}\n"
    );
    for (pod, node) in pods {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, annotations: {{danm.io/interfaces: '{annotation}'}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: pause}}]}}\n"
        ));
    }
    plane.kubectl_apply(&manifest).unwrap();
    // ipamd's own identity when the tests run as the manifests' ServiceAccounts.
    let kubeconfig = danm_testkit::identity::kubeconfig_for(plane, "ipamd", &[]).await;
    let ipamd = start_ipamd(&kubeconfig, pki, &ipamd_ns, &pki.path("ipamd.log"));
    (ns, ipamd)
}

fn attach_request(ns: &str, pod: &str, cid: &str) -> pb::AttachRequest {
    pb::AttachRequest {
        container_id: cid.into(),
        pod_namespace: ns.into(),
        pod_name: pod.into(),
        host: "whatever-the-caller-says".into(),
        ..Default::default()
    }
}

fn owner(ns: &str, pod: &str, cid: &str) -> Option<pb::Owner> {
    Some(pb::Owner {
        container_id: cid.into(),
        ifname: "eth0".into(),
        pod_namespace: ns.into(),
        pod_name: pod.into(),
        ..Default::default()
    })
}

async fn danmeps(plane: &ControlPlane, ns: &str) -> Vec<DanmEp> {
    Api::<DanmEp>::namespaced(plane.client().await, ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(answer) => panic!("expected a refusal, got {answer:?}"),
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipamd_authorizes_every_call_by_the_callers_node() {
    let plane = ControlPlane::shared().await;
    let pki = Pki::new();
    let pods = [("on-a", "node-a"), ("on-b", "node-b"), ("on-a-2", "node-a")];
    let (ns, ipamd) = setup(plane, "authz", "10.79.0.0/24", &pods, &pki).await;

    // node-a attaches its own pod, once ipamd serves.
    let deadline = Instant::now() + Duration::from_secs(30);
    let attached = loop {
        if let Ok(mut a) = client(&pki, &ipamd, Some("node-a")).await
            && let Ok(answer) = a.attach(attach_request(&ns, "on-a", "cid-a")).await
        {
            break answer.into_inner();
        }
        assert!(
            Instant::now() < deadline,
            "ipamd did not serve node-a within 30 s: {}",
            std::fs::read_to_string(&ipamd.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        attached.interfaces[0].ip.starts_with("10.79.0."),
        "{attached:?}"
    );
    let eps = danmeps(plane, &ns).await;
    assert_eq!(eps.len(), 1);
    assert_eq!(
        eps[0].spec.host, "node-a",
        "the record's host is the caller's node, not what it said"
    );

    let mut a = client(&pki, &ipamd, Some("node-a")).await.unwrap();
    let mut b = client(&pki, &ipamd, Some("node-b")).await.unwrap();
    // node-b may not attach, allocate for, look at, detach or release node-a's pods...
    let refused = b
        .attach(attach_request(&ns, "on-a-2", "cid-b-steals"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("node-b") && refused.message().contains("node-a"),
        "{refused:?}"
    );
    let allocate = pb::AllocateRequest {
        network: Some(pb::NetworkRef {
            kind: pb::NetworkKind::DanmNet as i32,
            namespace: ns.clone(),
            name: "authz".into(),
        }),
        owner: owner(&ns, "on-a-2", "cid-b-alloc"),
        ip: "dynamic".into(),
        ip6: String::new(),
    };
    assert_eq!(
        code(b.allocate(allocate.clone()).await),
        Code::PermissionDenied
    );
    let interfaces = pb::InterfacesRequest {
        container_id: "cid-a".into(),
        pod_namespace: ns.clone(),
    };
    assert_eq!(
        code(b.interfaces(interfaces.clone()).await),
        Code::PermissionDenied
    );
    let detach = pb::DetachRequest {
        container_id: "cid-a".into(),
        pod_namespace: ns.clone(),
        pod_name: "on-a".into(),
    };
    assert_eq!(code(b.detach(detach.clone()).await), Code::PermissionDenied);
    let release = pb::ReleaseRequest {
        network: allocate.network.clone(),
        owner: owner(&ns, "on-a", "cid-a"),
    };
    assert_eq!(
        code(b.release(release.clone()).await),
        Code::PermissionDenied
    );
    // ...its GC passes over them, and it may not list or reclaim for the cluster.
    let gc = b.gc(pb::GcRequest::default()).await.unwrap().into_inner();
    assert!(gc.released.is_empty(), "{gc:?}");
    let list = pb::ListAllocationsRequest::default();
    assert_eq!(
        code(b.list_allocations(list.clone()).await),
        Code::PermissionDenied
    );
    // Nothing of that changed anything.
    let eps = danmeps(plane, &ns).await;
    assert_eq!(eps.len(), 1, "{eps:?}");

    // node-a naming node-a's other pod but the container of its first pod gets nothing of
    // it, and a failed attach rolls none of it back.
    let refused = a
        .attach(attach_request(&ns, "on-a-2", "cid-a"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("held by pod"), "{refused:?}");
    assert_eq!(
        danmeps(plane, &ns).await.len(),
        1,
        "on-a's record is intact"
    );
    // A node reads what nodes read, not what administrators do.
    let network_ref = pb::GetNetworkRequest {
        network: allocate.network.clone(),
    };
    a.get_network(network_ref).await.unwrap();
    a.status(pb::StatusRequest {}).await.unwrap();
    let reclaim = pb::ReclaimOrphanRequest {
        network: allocate.network.clone(),
        address: "10.79.0.9".into(),
        fingerprint: "0000000000000001".into(),
    };
    assert_eq!(
        code(a.reclaim_orphan(reclaim).await),
        Code::PermissionDenied
    );
    // The caller's request id comes back, and is on ipamd's log lines of the call.
    let mut traced = tonic::Request::new(pb::StatusRequest {});
    traced
        .metadata_mut()
        .insert("x-request-id", "e2e-trace-42".parse().unwrap());
    let answer = a.status(traced).await.unwrap();
    assert_eq!(
        answer.metadata().get("x-request-id").unwrap(),
        "e2e-trace-42"
    );

    // node-b attaches its own pod; node-a may allocate for its other pod.
    b.attach(attach_request(&ns, "on-b", "cid-b"))
        .await
        .unwrap();
    a.allocate(allocate).await.unwrap();
    assert_eq!(
        a.interfaces(interfaces)
            .await
            .unwrap()
            .into_inner()
            .interfaces
            .len(),
        1
    );

    // Identities that are neither a node nor an administrator, and a node name without
    // the nodes group, are refused whatever they call.
    for id in [
        "someone",
        "fake-node",
        "cluster-cleaner",
        "danm-node",
        "impostor-cleaner",
    ] {
        let mut c = client(&pki, &ipamd, Some(id)).await.unwrap();
        assert_eq!(
            code(c.status(pb::StatusRequest {}).await),
            Code::PermissionDenied,
            "{id}"
        );
        assert_eq!(
            code(c.release(release.clone()).await),
            Code::PermissionDenied,
            "{id}"
        );
    }
    // No certificate, or one of a CA ipamd does not trust: the handshake fails, no RPC runs.
    for id in [None, Some("stranger")] {
        let refused = match client(&pki, &ipamd, id).await {
            Err(_) => true,
            Ok(mut c) => c.status(pb::StatusRequest {}).await.is_err(),
        };
        assert!(refused, "{id:?} was served");
    }
    // Plaintext to the TLS port: refused.
    let plain = async {
        IpamClient::connect(format!("http://{}", ipamd.grpc))
            .await
            .ok()?
            .status(pb::StatusRequest {})
            .await
            .ok()
    };
    assert!(plain.await.is_none(), "plaintext was served");

    // The cleaner (an administrator, signed by the other CA) releases for any node and
    // lists everything; node-a detaches its own.
    let mut cleaner = client(&pki, &ipamd, Some("cleaner")).await.unwrap();
    // (This network's: the other tests of this binary allocate on the same cluster.)
    let ours = pb::ListAllocationsRequest {
        network: release.network.clone(),
    };
    let listed = cleaner.list_allocations(ours).await.unwrap().into_inner();
    use futures::StreamExt;
    assert_eq!(listed.collect::<Vec<_>>().await.len(), 3);
    let mut traced = tonic::Request::new(release);
    traced
        .metadata_mut()
        .insert("x-request-id", "cleaner-trace-7".parse().unwrap());
    let released = cleaner.release(traced).await.unwrap().into_inner();
    assert_eq!(released.released.len(), 1, "{released:?}");
    let detach_own = pb::DetachRequest {
        container_id: "cid-b-alloc".into(),
        pod_namespace: ns.clone(),
        pod_name: "on-a-2".into(),
    };
    a.detach(detach_own.clone()).await.unwrap();
    // A second DEL of the same container succeeds and frees nothing (CNI DEL is idempotent).
    let again = a.detach(detach_own).await.unwrap().into_inner();
    assert!(again.released.is_empty(), "{again:?}");
    let left: Vec<String> = danmeps(plane, &ns)
        .await
        .into_iter()
        .map(|e| e.spec.pod)
        .collect();
    assert_eq!(left, ["on-b"]);

    // The admin port: every series the dashboards use, with this test's traffic in them.
    let metrics = reqwest::get(format!("http://{}/metrics", ipamd.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "danm_ipamd_allocations_total 3",
        "danm_ipamd_releases_total 2",
        "danm_ipamd_authorization_denied_total{method=\"Attach\"} 1",
        "danm_ipamd_rpc_duration_seconds_count{method=\"Attach\",code=\"Ok\"}",
        "danm_ipamd_rpc_duration_seconds_count{method=\"Release\",code=\"PermissionDenied\"}",
        "danm_ipamd_batch_size_count",
        "danm_ipamd_shard_writes_total",
        "danm_ipamd_conflicts_total",
        "danm_ipamd_retries_total",
        "danm_ipamd_corrupt_shards_total 0",
        &format!(
            "danm_ipamd_pool_capacity{{kind=\"DanmNet\",namespace=\"{ns}\",network=\"authz\",family=\"ipv4\"}} 254"
        ),
        &format!(
            "danm_ipamd_pool_used{{kind=\"DanmNet\",namespace=\"{ns}\",network=\"authz\",family=\"ipv4\"}} 1"
        ),
    ] {
        assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    }
    // The callers without a certificate, with one of an unknown CA, and in plaintext.
    let failed_handshakes = metrics
        .lines()
        .find_map(|l| l.strip_prefix("danm_ipamd_tls_handshake_failures_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(
        failed_handshakes.is_some_and(|n| n >= 3),
        "failed handshakes not counted:\n{metrics}"
    );
    let ready = reqwest::get(format!("http://{}/readyz", ipamd.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // Every RPC's log lines carry its request id.
    let log = std::fs::read_to_string(&ipamd.log).unwrap();
    assert!(
        log.lines().any(|l| l.contains("request_id=")
            && l.contains("method=Attach")
            && l.contains("allocated")),
        "no request id on the allocation's log line:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("request_id=cleaner-trace-7") && l.contains("released")),
        "the caller's request id is not on the release's log line:\n{log}"
    );
}

/// Runs one of the crate's command-line tools against `ipamd` with the TLS files of
/// `identity` (a file stem of [`Pki`]): its exit status, stdout and stderr.
fn tool(
    pki: &Pki,
    ipamd: &Ipamd,
    exe: &str,
    identity: Option<&str>,
    args: &[&str],
) -> (bool, String, String) {
    let path = |n: &str| pki.path(n).to_string_lossy().into_owned();
    let mut command = Command::new(exe);
    command.args(["--ipamd", &ipamd.grpc]);
    if let Some(id) = identity {
        command
            .args(["--ipamd-ca", &path("danm-ca.pem")])
            .args(["--ipamd-cert", &path(&format!("{id}.pem"))])
            .args(["--ipamd-key", &path(&format!("{id}-key.pem"))])
            .args(["--ipamd-server-name", "localhost"]);
    }
    let out = command.args(args).env("NO_COLOR", "1").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// ipamctl and showalloc reach a production ipamd (mutual TLS, node authorization) through
/// the one ipamd client: a node attaches its own pod with ipamctl and may not attach
/// another node's; the cleaner's administrator identity lists allocations with showalloc,
/// which a node may not; plaintext to the TLS port and TLS settings over `http://` fail
/// with an error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipamctl_and_showalloc_reach_ipamd_over_mutual_tls() {
    let plane = ControlPlane::shared().await;
    let pki = Pki::new();
    let (ns, ipamd) = setup(plane, "tools", "10.78.0.0/24", &[("on-a", "node-a")], &pki).await;
    let ipamctl = env!("CARGO_BIN_EXE_ipamctl");
    let showalloc = env!("CARGO_BIN_EXE_showalloc");

    // node-a attaches its own pod with ipamctl, once ipamd serves.
    let attach = [
        "attach",
        "-n",
        &ns,
        "--pod",
        "on-a",
        "--container-id",
        "cid-tools",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let attached = loop {
        let (ok, out, err) = tool(&pki, &ipamd, ipamctl, Some("node-a"), &attach);
        if ok {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "ipamctl could not attach within 30 s: {err}\n{}",
            std::fs::read_to_string(&ipamd.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(attached.contains("ip=10.78.0."), "{attached}");
    let address = attached
        .split("ip=")
        .nth(1)
        .and_then(|rest| rest.split(['/', ' ']).next())
        .unwrap()
        .to_owned();
    // node-b may not attach node-a's pod.
    let attach_b = [
        "attach",
        "-n",
        &ns,
        "--pod",
        "on-a",
        "--container-id",
        "cid-b",
    ];
    let (ok, _, err) = tool(&pki, &ipamd, ipamctl, Some("node-b"), &attach_b);
    assert!(
        !ok && err.contains("PermissionDenied") && err.contains("node-b"),
        "{err}"
    );

    // The administrator lists who holds what; a node may not.
    let list = ["--dnet", "tools", "-n", &ns, "-o", "json"];
    let (ok, out, err) = tool(&pki, &ipamd, showalloc, Some("cleaner"), &list);
    assert!(ok, "showalloc as the administrator: {err}");
    let listing: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listing["allocated"], 1, "{listing}");
    assert!(out.contains(&address) && out.contains("on-a"), "{out}");
    let (ok, _, err) = tool(&pki, &ipamd, showalloc, Some("node-a"), &list);
    assert!(!ok && err.contains("administrators"), "{err}");
    let (ok, out, _) = tool(&pki, &ipamd, ipamctl, Some("cleaner"), &["status"]);
    assert!(ok && !out.is_empty(), "ipamctl status as the administrator");

    // Plaintext to the TLS port, and TLS settings with an http:// address: errors.
    let (ok, _, err) = tool(&pki, &ipamd, showalloc, None, &list);
    assert!(!ok && err.contains("ipamd"), "plaintext was served: {err}");
    let path = |n: &str| pki.path(n).to_string_lossy().into_owned();
    let out = Command::new(ipamctl)
        .args(["--ipamd", &format!("http://{}", ipamd.grpc)])
        .args(["--ipamd-ca", &path("danm-ca.pem")])
        .arg("status")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not https://"),
        "{err}"
    );
}

/// Node authorization needs the pods' nodeName: with a store that has no pods, ipamd
/// refuses to start and says what to do.
#[test]
fn node_authorization_without_the_kube_store_is_refused_at_start() {
    let pki = Pki::new();
    let path = |n: &str| pki.path(n).to_string_lossy().into_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_ipamd"))
        .args(["--store", "memory", "--listen", &free_addr()])
        .args([
            "--tls-cert",
            &path("server.pem"),
            "--tls-key",
            &path("server-key.pem"),
        ])
        .args(["--tls-client-ca", &path("cluster-ca.pem")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--authorization nodes")
            && stderr.contains("--store kube")
            && stderr.contains("any-client"),
        "{stderr}"
    );
}
