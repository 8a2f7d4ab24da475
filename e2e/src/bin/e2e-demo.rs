//! `./demo.sh`: the whole suite on one machine with DANM's svcwatcher demo applied, shown as
//! a user sees it, until Ctrl-C. `./demo.sh --real-node`: `deploy/` on a real node
//! ([`danm_e2e::real_node::demo`]).

use std::time::{Duration, Instant};

use danm_e2e::cluster::{Cluster, binary};

const DEMO: [&str; 4] = [
    "1_namespaces.yaml",
    "2_networks.yaml",
    "3_deployments.yaml",
    "4_services.yaml",
];

fn section(title: &str) {
    println!("\n=== {title}");
}

#[tokio::main]
async fn main() {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("--real-node") => return danm_e2e::real_node::demo::run().await,
        Some(other) => {
            eprintln!(
                "demo: unknown argument {other:?}\nusage: ./demo.sh [--real-node]\n  \
                 (no argument) nodes as network namespaces, DANM's svcwatcher demo\n  \
                 --real-node   deploy/ on a real kubelet and containerd of this machine"
            );
            std::process::exit(2);
        }
    }
    if !danm_e2e::fabric::is_root() {
        eprintln!("demo: network namespaces need root: run it as root");
        std::process::exit(1);
    }
    eprintln!(
        "demo: starting the control plane, ipamd x3, svcwatcher, 2 nodes (netwatcher and a node agent each)..."
    );
    let cluster = Cluster::start(2).await;
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/svcwatcher_demo");
    for file in DEMO {
        let text = std::fs::read_to_string(format!("{fixtures}/{file}")).expect("a demo file");
        section(&format!(
            "kubectl apply -f e2e/fixtures/svcwatcher_demo/{file}"
        ));
        print!("{}", cluster.kubectl(&["apply", "-f", "-"], &text));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pods = cluster.kubectl(&["get", "pods", "-A", "--no-headers"], "");
        let demo: Vec<&str> = pods
            .lines()
            .filter(|l| l.contains("example-vnf") || l.contains("external-client"))
            .collect();
        if demo.len() == 9 && demo.iter().all(|l| l.contains("1/1")) {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "demo: the pods are not ready after 120 s:\n{}",
                cluster.diagnose()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    section("kubectl get pods -o wide (example-vnf, external-client)");
    print!(
        "{}",
        cluster.kubectl(&["get", "pods", "-n", "example-vnf", "-o", "wide"], "")
    );
    print!(
        "{}",
        cluster.kubectl(&["get", "pods", "-n", "external-client", "-o", "wide"], "")
    );
    section("each pod's interfaces (ip -br addr in its network namespace)");
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::all(cluster.plane.client().await);
    let mut list = pods
        .list(&kube::api::ListParams::default().labels("app"))
        .await
        .expect("pods")
        .items;
    list.sort_by_key(|p| p.metadata.name.clone());
    for pod in &list {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let Some(agent) = cluster.nodes.iter().find(|n| n.name == node) else {
            continue;
        };
        let Some(netns) = agent.sandbox_netns(pod.metadata.uid.as_deref().unwrap_or_default())
        else {
            continue;
        };
        println!(
            "{}/{} on {node}:",
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default()
        );
        for line in danm_e2e::fabric::ip(&["-n", &netns, "-br", "addr", "show"])
            .lines()
            .filter(|l| !l.starts_with("lo "))
        {
            println!("    {line}");
        }
    }
    for (flag, network, namespace) in [
        ("--dnet", "internal", "example-vnf"),
        ("--dnet", "external", "example-vnf"),
    ] {
        section(&format!(
            "kubectl showalloc {flag} {network} -n {namespace}"
        ));
        let out = std::process::Command::new(binary("kubectl-showalloc"))
            .env("KUBECONFIG", cluster.plane.kubeconfig())
            .args([flag, network, "-n", namespace])
            .output()
            .expect("showalloc runs");
        print!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    section("kubectl get endpointslices -n example-vnf -o wide");
    print!(
        "{}",
        cluster.kubectl(
            &["get", "endpointslices", "-n", "example-vnf", "-o", "wide"],
            ""
        )
    );
    danm_e2e::real_node::demo::until_stopped(&cluster.plane).await;
    eprintln!("demo: stopping");
    drop(cluster);
    eprintln!("demo: stopped; its namespaces, bridges and processes are gone");
}
