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

/// Runs showalloc with `kubeconfig`; its exit status, standard output and standard error.
fn run_showalloc(kubeconfig: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_showalloc"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("DANM_IPAMD")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The summary of every network (the kubeconfig context's namespace by default, another
/// context's with `--context`, every namespace with `-A`), `--ip` in any network, the
/// output formats and the exit codes, as a kubectl user expects them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_network_named_showalloc_summarizes_the_namespace_and_finds_an_address() {
    let plane = ControlPlane::shared().await;
    let ns_a = plane.namespace("sum-a").await;
    let ns_b = plane.namespace("sum-b").await;
    let ipamd_ns = plane.namespace("sum-ipamd").await;
    let cnet = format!("media-{ns_a}");
    let dnet = |ns: &str, name: &str, options: &str| {
        format!(
            "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{NetworkID: {name}, NetworkType: macvlan, Options: {{{options}}}}}\n---\n"
        )
    };
    plane
        .kubectl_apply(&format!(
            "{}{}{}apiVersion: danm.io/v1\nkind: ClusterNetwork\nmetadata: {{name: {cnet}}}\nspec: {{NetworkID: media, NetworkType: macvlan, Options: {{cidr: 10.88.0.0/28}}}}\n",
            dnet(&ns_a, "sig", "cidr: 10.87.0.0/24, net6: 'fd00:87::/64'"),
            dnet(&ns_a, "broken", "cidr: 10.87.1.0/33"),
            // The same subnet in another namespace: --ip -A finds both holders.
            dnet(&ns_b, "sig", "cidr: 10.87.0.0/24"),
        ))
        .unwrap();

    // ipamd allocates, then stops: showalloc reads the API alone.
    let ipamd_client = danm_testkit::identity::client_for(plane, "ipamd", &[]).await;
    let store: Arc<dyn Store> = Arc::new(KubeStore::new(ipamd_client, &ipamd_ns).await);
    let engine = Engine::start(store, EngineConfig::default()).await.unwrap();
    let server = LocalServer::start(engine).await.unwrap();
    let mut ipamd = IpamClient::connect(server.url()).await.unwrap();
    let reference = |kind: pb::NetworkKind, ns: &str, name: &str| {
        Some(pb::NetworkRef {
            kind: kind as i32,
            namespace: ns.into(),
            name: name.into(),
        })
    };
    let asks = [
        (
            reference(pb::NetworkKind::DanmNet, &ns_a, "sig"),
            &ns_a,
            "web-0",
            "cid-web",
            "dynamic",
        ),
        (
            reference(pb::NetworkKind::DanmNet, &ns_b, "sig"),
            &ns_b,
            "db-0",
            "cid-db",
            "",
        ),
        (
            reference(pb::NetworkKind::ClusterNetwork, "", &cnet),
            &ns_a,
            "web-0",
            "cid-web-media",
            "",
        ),
        (
            reference(pb::NetworkKind::ClusterNetwork, "", &cnet),
            &ns_b,
            "db-0",
            "cid-db-media",
            "",
        ),
    ];
    let mut held = Vec::new();
    for (network, ns, pod, cid, ip6) in asks {
        let request = pb::AllocateRequest {
            network,
            owner: owner(ns, pod, cid),
            ip: "dynamic".into(),
            ip6: ip6.into(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let answer = loop {
            match ipamd.allocate(request.clone()).await {
                Ok(a) => break a.into_inner(),
                Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        held.push(answer.ip);
    }
    drop(ipamd);
    server.stop().await.unwrap();
    let web_ip = held[0].split('/').next().unwrap().to_owned();
    let db_ip = held[1].split('/').next().unwrap().to_owned();
    assert_eq!(web_ip, db_ip, "both pools start at their first address");

    // A kubeconfig whose current context is in ns_a, with a second context in ns_b.
    let mut kubeconfig = kube::config::Kubeconfig::read_from(plane.kubeconfig()).unwrap();
    let current = kubeconfig.current_context.clone().unwrap();
    let mut other = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == current)
        .unwrap()
        .clone();
    for c in &mut kubeconfig.contexts {
        if c.name == current {
            c.context.as_mut().unwrap().namespace = Some(ns_a.clone());
        }
    }
    other.name = "other".into();
    other.context.as_mut().unwrap().namespace = Some(ns_b.clone());
    kubeconfig.contexts.push(other);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_string(&kubeconfig).unwrap()).unwrap();
    let kc = file.path();

    // The context's namespace by default: its networks and the ClusterNetworks.
    let (code, table, err) = run_showalloc(kc, &[]);
    assert_eq!(code, 0, "{err}");
    eprint!("{table}");
    let row = |table: &str, kind: &str, ns: &str, name: &str| -> Option<Vec<String>> {
        table
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|cells| {
                cells.len() >= 3 && cells[0] == kind && cells[1] == ns && cells[2] == name
            })
    };
    assert_eq!(
        table
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["KIND", "NAMESPACE", "NAME", "READY", "USED", "CAPACITY"]
    );
    assert_eq!(
        row(&table, "DanmNet", &ns_a, "sig").unwrap()[3..],
        ["True", "1", "254"]
    );
    assert_eq!(
        row(&table, "DanmNet", &ns_a, "broken").unwrap()[3..],
        ["False", "-", "-"]
    );
    assert_eq!(
        row(&table, "ClusterNetwork", "-", &cnet).unwrap()[3..],
        ["True", "2", "14"]
    );
    assert!(row(&table, "DanmNet", &ns_b, "sig").is_none(), "{table}");

    // Another context, and -A.
    let (code, table, _) = run_showalloc(kc, &["--context", "other"]);
    assert_eq!(code, 0);
    assert!(row(&table, "DanmNet", &ns_b, "sig").is_some(), "{table}");
    assert!(row(&table, "DanmNet", &ns_a, "sig").is_none(), "{table}");
    let (code, json, _) = run_showalloc(kc, &["-A", "-o", "json"]);
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let sig_a = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["namespace"] == ns_a.as_str() && r["name"] == "sig")
        .unwrap();
    assert_eq!(sig_a["status"]["ipv4"]["used"], 1);
    assert_eq!(sig_a["status"]["ipv6"]["used"], 1);
    assert_eq!(sig_a["status"]["conditions"][0]["reason"], "Served");
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["namespace"] == ns_b.as_str())
    );
    let (code, yaml, _) = run_showalloc(kc, &["-o", "yaml"]);
    assert_eq!(code, 0);
    let parsed: Vec<serde_json::Value> = serde_saphyr::from_str(&yaml).unwrap();
    assert!(parsed.iter().any(|r| r["name"] == "broken"), "{yaml}");
    let (_, wide, _) = run_showalloc(kc, &["-o", "wide"]);
    assert!(
        wide.lines()
            .any(|l| l.contains("broken") && l.contains("Invalid")),
        "{wide}"
    );

    // --ip: who holds it in the namespace; with -A in every namespace.
    let (code, found, err) = run_showalloc(kc, &["--ip", &web_ip]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        found,
        format!(
            "{web_ip} : DanmNet {ns_a}/sig : allocated (Pod: {ns_a}/web-0, CID: cid-web, if: eth0, host: -)\n"
        )
    );
    let (code, found, _) = run_showalloc(kc, &["-A", "--ip", &web_ip]);
    assert_eq!(code, 0);
    assert!(
        found.contains(&format!("DanmNet {ns_b}/sig : allocated (Pod: {ns_b}/db-0")),
        "{found}"
    );
    // Nobody holds it: exit 3, with what each network says of it.
    let (code, found, _) = run_showalloc(kc, &["--ip", "10.87.0.200"]);
    assert_eq!(
        (code, found.as_str()),
        (3, &*format!("10.87.0.200 : DanmNet {ns_a}/sig : free\n"))
    );
    let (code, found, _) = run_showalloc(kc, &["--ip", "10.87.0.0"]);
    assert_eq!(code, 3);
    assert!(found.contains("reserved (network base address)"), "{found}");
    let (code, _, err) = run_showalloc(kc, &["--ip", "192.0.2.1"]);
    assert_eq!(code, 3);
    assert!(
        err.contains("a network whose CIDR holds 192.0.2.1"),
        "{err}"
    );

    // One network, -o wide: the whole container id and the host.
    let (code, text, _) = run_showalloc(kc, &["--dnet", "sig", "-o", "wide"]);
    assert_eq!(code, 0);
    assert!(
        text.contains(&format!(
            "{web_ip} : allocated (Pod: {ns_a}/web-0, CID: cid-web, if: eth0, host: -, netns: -)"
        )),
        "{text}"
    );
    // Exit codes: a network that does not exist 3, flags that contradict 2.
    assert_eq!(run_showalloc(kc, &["--dnet", "nope"]).0, 3);
    assert_eq!(run_showalloc(kc, &["--dnet", "sig", "--cnet", &cnet]).0, 2);
    assert_eq!(run_showalloc(kc, &["-A", "--dnet", "sig"]).0, 2);
}
