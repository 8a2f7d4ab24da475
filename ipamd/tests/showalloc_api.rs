//! showalloc reading the Kubernetes API while ipamd is down: owners of a ClusterNetwork from
//! every namespace as `namespace/pod`, the summary header, `-o json`, and `kubectl showalloc`
//! as a kubectl plugin, on the real API server.

use std::process::Command;
use std::sync::Arc;

use danm_ipamd::engine::{Engine, EngineConfig};
use danm_ipamd::server::LocalServer;
use danm_ipamd::store::Store;
use danm_ipamd::store::kube::KubeStore;
use danm_proto::v1 as pb;
use danm_proto::v1::ipam_client::IpamClient;
use danm_testkit::control_plane::ControlPlane;

fn owner(ns: &str, pod: &str, cid: &str) -> Option<pb::Owner> {
    Some(pb::Owner {
        container_id: cid.into(),
        ifname: "eth0".into(),
        pod_namespace: ns.into(),
        pod_name: pod.into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn showalloc_reads_the_api_while_ipamd_is_down_and_runs_as_a_kubectl_plugin() {
    let plane = ControlPlane::shared().await;
    let tenant_a = plane.namespace("show-a").await;
    let tenant_b = plane.namespace("show-b").await;
    let ipamd_ns = plane.namespace("show-ipamd").await;
    let cnet = format!("ext-{tenant_a}");
    plane
        .kubectl_apply(&format!(
            "apiVersion: danm.io/v1\nkind: ClusterNetwork\nmetadata: {{name: {cnet}}}\nspec: {{NetworkID: ext, NetworkType: macvlan, Options: {{cidr: 10.86.0.0/24, allocation_pool: {{start: 10.86.0.10, end: 10.86.0.19}}}}}}\n"
        ))
        .unwrap();

    // ipamd allocates for pods of two namespaces, then stops.
    // ipamd acts as its identity (danm_testkit::identity); showalloc, a user's tool, as
    // the administrator.
    let ipamd_client = danm_testkit::identity::client_for(plane, "ipamd", &[]).await;
    let store: Arc<dyn Store> = Arc::new(KubeStore::new(ipamd_client, &ipamd_ns).await);
    let engine = Engine::start(store, EngineConfig::default()).await.unwrap();
    let server = LocalServer::start(engine).await.unwrap();
    let mut ipamd = IpamClient::connect(server.url()).await.unwrap();
    let network = Some(pb::NetworkRef {
        kind: pb::NetworkKind::ClusterNetwork as i32,
        namespace: String::new(),
        name: cnet.clone(),
    });
    for _ in 0..100 {
        let asked = pb::GetNetworkRequest {
            network: network.clone(),
        };
        if ipamd.get_network(asked).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for (ns, pod, cid) in [(&tenant_a, "web-0", "cid-a"), (&tenant_b, "db-0", "cid-b")] {
        ipamd
            .allocate(pb::AllocateRequest {
                network: network.clone(),
                owner: owner(ns, pod, cid),
                ip: "dynamic".into(),
                ip6: String::new(),
            })
            .await
            .unwrap();
    }
    drop(ipamd);
    server.stop().await.unwrap();

    let showalloc = |program: &str, args: &[&str]| {
        let out = Command::new(program)
            .args(args)
            .env("KUBECONFIG", plane.kubeconfig())
            .env_remove("DANM_IPAMD")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = showalloc(env!("CARGO_BIN_EXE_showalloc"), &["--cnet", &cnet]);
    eprint!("{text}");
    assert!(
        text.starts_with(
            "DANM network Kind: ClusterNetwork\nIP version: IPv4\nCIDR: 10.86.0.0/24\nPool start: 10.86.0.10\nPool end: 10.86.0.19\nCapacity: 10, allocated: 2, free: 8\nShards: 1, largest: "
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "10.86.0.10 : allocated (Pod: {tenant_a}/web-0, CID: cid-a, if: eth0)"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "10.86.0.11 : allocated (Pod: {tenant_b}/db-0, CID: cid-b, if: eth0)"
        )),
        "{text}"
    );

    let json: serde_json::Value = serde_json::from_str(&showalloc(
        env!("CARGO_BIN_EXE_showalloc"),
        &["-cnet", &cnet, "-o", "json"],
    ))
    .unwrap();
    assert_eq!(json["capacity"], 10);
    assert_eq!(json["allocated"], 2);
    assert_eq!(json["free"], 8);
    assert_eq!(json["shards"], 1);
    assert!(json["largestShardBytes"].as_u64().unwrap() > 0);
    let pods: Vec<&str> = json["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["pod"].as_str().unwrap())
        .collect();
    assert_eq!(
        pods,
        [format!("{tenant_a}/web-0"), format!("{tenant_b}/db-0")]
    );

    // kubectl finds the plugin on the PATH.
    let plugin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-showalloc"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(plane.binary("kubectl"))
        .args(["showalloc", "--cnet", &cnet])
        .env("KUBECONFIG", plane.kubeconfig())
        .env("PATH", path)
        .env_remove("DANM_IPAMD")
        .output()
        .unwrap();
    let via_kubectl = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(via_kubectl, text);

    let out = Command::new(env!("CARGO_BIN_EXE_showalloc"))
        .args(["--dnet", "nope", "-n", &tenant_a])
        .env("KUBECONFIG", plane.kubeconfig())
        .env_remove("DANM_IPAMD")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains(&format!("DanmNet {tenant_a}/nope not found")),
        "{error}"
    );
}
