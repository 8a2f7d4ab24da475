//! The whole suite on one machine: the real control plane with kube-scheduler and
//! kube-controller-manager (Deployments, ReplicaSets, scheduling and garbage collection are
//! Kubernetes' own), N nodes ([`crate::node`]) on the test's bridges ([`crate::fabric`]),
//! and DANM's components as processes with the flags, identities and RBAC of `deploy/`:
//! ipamd (three replicas, `--store kube`, mutual TLS with node authorization, behind a
//! round-robin forwarder that stands for the `danm-ipamd` Service).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use danm_testkit::control_plane::{ControlPlane, Options, Spawned, free_port};
use danm_testkit::pki::{TestCa, Usage};
use serde_json::json;

use crate::fabric::{Fabric, Machine};
use crate::node::{NodeAgent, NodeConfig};
use crate::tunnel;

/// The namespace of DANM's components, as in `deploy/base`.
pub const SYSTEM_NAMESPACE: &str = "danm-system";
/// The name ipamd's certificate carries, as the CNI installer's `serverName`.
const IPAMD_NAME: &str = "danm-ipamd.danm-system.svc";

/// The workspace's binaries, in `target/<profile>/`: beside this executable, or one level
/// up from a test's (`target/<profile>/deps/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("this executable's path");
    let mut dir = exe.parent().expect("a folder").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: `cargo build --workspace --bins` (`cargo test --workspace` does)",
        path.display()
    );
    path
}

/// The suite's certificates: one CA for all (the cluster's and DANM's), ipamd's serving
/// certificate, one client certificate per node (CN `system:node:<node>`, as kubelets'),
/// the cleaner's.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    ca: TestCa,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let pki = Pki {
            dir: dir.to_owned(),
            ca: TestCa::new(dir, "ca"),
        };
        pki.issue("ipamd", IPAMD_NAME, None, true);
        pki.issue("cleaner", "danm-cleaner", None, false);
        pki
    }

    /// Writes `<file>.pem` (certificate then key, as the kubelet's
    /// `kubelet-client-current.pem`) and returns its path.
    fn issue(&self, file: &str, cn: &str, org: Option<&str>, server: bool) -> PathBuf {
        // A server certificate also names 127.0.0.1: the cleaner reaches ipamd there, with
        // no server-name override.
        let issued = if server {
            self.ca.issue(cn, org, &[cn, "127.0.0.1"], Usage::Server)
        } else {
            self.ca.issue(cn, org, &[], Usage::Client)
        };
        let path = self.dir.join(format!("{file}.pem"));
        std::fs::write(&path, format!("{}{}", issued.cert_pem, issued.key_pem)).expect("a PEM");
        path
    }

    /// A node's client certificate and key in one PEM file (CN `system:node:<node>` in
    /// `system:nodes`, as the kubelet's `kubelet-client-current.pem`).
    pub fn node_certificate(&self, node: &str) -> PathBuf {
        self.issue(
            node,
            &format!("system:node:{node}"),
            Some("system:nodes"),
            false,
        )
    }

    /// The CA's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A file of [`Pki`] by stem.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(format!("{file}.pem"))
    }
}

/// See the module overview.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, `node-1`...
    pub nodes: Vec<NodeAgent>,
    /// Each node's netwatcher, in the node's namespace, by node name.
    pub netwatchers: Vec<(String, Spawned)>,
    /// svcwatcher.
    pub svcwatcher: Spawned,
    /// The webhook, once [`Cluster::start_webhook`] has run.
    pub webhook: Option<Spawned>,
    /// Where it listens.
    webhook_address: Option<SocketAddr>,
    /// ipamd's replicas (drop one to kill it).
    pub ipamd: Vec<Spawned>,
    /// Where each replica listens, and its kubeconfig: for [`Cluster::restart_ipamd`].
    ipamd_listen: Vec<SocketAddr>,
    ipamd_kubeconfig: PathBuf,
    /// The forwarder in front of ipamd's replicas (the `danm-ipamd` Service), on the host.
    pub ipamd_address: SocketAddr,
    /// The certificates.
    pub pki: Pki,
    /// The bridges (dropped after the nodes).
    pub fabric: Fabric,
    /// The control plane (dropped last).
    pub plane: ControlPlane,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the control plane, ipamd and `nodes` nodes.
    pub async fn start(nodes: u8) -> Cluster {
        Cluster::start_with(nodes, false).await
    }

    /// Starts the control plane with the node lifecycle controller (which lifts the
    /// `not-ready` taint a kubelet registers with, and evicts the pods of nodes that go
    /// NotReady), and ipamd, for real nodes ([`crate::real_node`]); no agent node.
    pub async fn start_for_real_nodes() -> Cluster {
        Cluster::start_with(0, true).await
    }

    async fn start_with(nodes: u8, node_lifecycle: bool) -> Cluster {
        let plane = ControlPlane::start(Options {
            scheduler: true,
            pod_gc: true,
            node_lifecycle,
            ..Options::default()
        })
        .await
        .expect("the control plane starts");
        plane.create_namespace(SYSTEM_NAMESPACE).await;
        let dir = tempfile::tempdir().expect("a folder");
        let pki = Pki::new(dir.path());
        let fabric = Fabric::new();
        let ipamd_kubeconfig =
            danm_testkit::identity::service_account_kubeconfig(&plane, "ipamd", &[]).await;
        let ipamd_listen: Vec<SocketAddr> = (0..3)
            .map(|_| {
                format!("127.0.0.1:{}", free_port())
                    .parse()
                    .expect("an address")
            })
            .collect();
        let ipamd = ipamd_listen
            .iter()
            .zip(0..)
            .map(|(listen, i)| start_ipamd(&plane, &pki, &ipamd_kubeconfig, i, *listen))
            .collect();
        let ipamd_address =
            danm_testkit::webhook::round_robin(ipamd_listen.clone()).expect("the forwarder starts");
        let svcwatcher = start_svcwatcher(&plane).await;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            netwatchers: Vec::new(),
            svcwatcher,
            webhook: None,
            webhook_address: None,
            ipamd,
            ipamd_listen,
            ipamd_kubeconfig,
            ipamd_address,
            pki,
            fabric,
            plane,
            dir,
        };
        cluster.wait_ipamd_serving().await;
        for index in 1..=nodes {
            cluster.add_node(index).await;
        }
        cluster
    }

    /// Adds node `node-<index>`.
    pub async fn add_node(&mut self, index: u8) {
        let name = format!("node-{index}");
        let machine = Arc::new(Machine::new(&self.fabric, index));
        let cert = self.pki.node_certificate(&name);
        let node_dir = self.dir.path().join(&name);
        let net_d = node_dir.join("net.d");
        std::fs::create_dir_all(&net_d).expect("net.d");
        // ipamd's Service, as the node's processes see it.
        let ipamd_port = tunnel::offer(
            &tunnel::netns_path(&machine.netns),
            &node_dir,
            self.ipamd_address,
        );
        let cni_config = json!({
            "cniVersion": "1.1.0", "name": "danm", "type": "danm",
            "ipamd": format!("https://127.0.0.1:{ipamd_port}"),
            "cniDir": net_d,
            "ipamdTLS": {"ca": self.pki.ca(), "cert": cert, "key": cert, "serverName": IPAMD_NAME},
        });
        std::fs::write(net_d.join("00-danm.conf"), cni_config.to_string()).expect("00-danm.conf");
        // The demo's `management` network is delegated to Debian's bridge plugin (flannel's
        // stand-in), with a subnet per node as flannel gives.
        let management = json!({
            "cniVersion": "1.0.0", "name": "management", "type": "bridge", "bridge": "mgmt0",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("198.19.{index}.0/24")}]],
                     "dataDir": node_dir.join("host-local")},
        });
        std::fs::write(net_d.join("management.conf"), management.to_string())
            .expect("management.conf");
        let netwatcher = self.start_netwatcher(&name, &machine, &node_dir).await;
        self.netwatchers.push((name.clone(), netwatcher));
        let agent = NodeAgent::start(
            self.plane.client().await,
            machine,
            NodeConfig {
                name,
                danm: binary("danm"),
                cni_config,
            },
        )
        .await;
        self.nodes.push(agent);
    }

    /// netwatcher in the node's namespace, as the DaemonSet runs it (host network, its
    /// ServiceAccount), reaching the API server through a tunnel.
    async fn start_netwatcher(&self, node: &str, machine: &Machine, dir: &Path) -> Spawned {
        let kubeconfig =
            danm_testkit::identity::service_account_kubeconfig(&self.plane, "netwatcher", &[])
                .await;
        let api: SocketAddr = self
            .plane
            .url()
            .trim_start_matches("https://")
            .parse()
            .expect("the API server's address");
        let port = tunnel::offer(&tunnel::netns_path(&machine.netns), dir, api);
        let text = std::fs::read_to_string(&kubeconfig)
            .expect("the kubeconfig")
            .replace(self.plane.url(), &format!("https://127.0.0.1:{port}"));
        let inside = dir.join("netwatcher.kubeconfig");
        std::fs::write(&inside, text).expect("the node's kubeconfig");
        let mut command = machine.command(&binary("netwatcher"));
        command
            .arg("--kubeconfig")
            .arg(&inside)
            .args(["--node-name", node, "--resync", "5s"])
            .args(["--admin-listen", "127.0.0.1:9091"]);
        self.plane
            .spawn_beside(&format!("netwatcher-{node}"), command)
            .expect("netwatcher starts")
    }

    /// Starts every ipamd replica again on its address (after a test stopped them all by
    /// clearing [`Cluster::ipamd`]) and waits until they serve.
    pub async fn restart_ipamd(&mut self) {
        self.ipamd.clear();
        self.ipamd = self
            .ipamd_listen
            .iter()
            .zip(0..)
            .map(|(listen, i)| {
                start_ipamd(&self.plane, &self.pki, &self.ipamd_kubeconfig, i, *listen)
            })
            .collect();
        self.wait_ipamd_serving().await;
    }

    /// Waits until every replica answers the health service.
    async fn wait_ipamd_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for replica in &mut self.ipamd {
            while !replica.log().contains("ipamd serving") {
                if let Some(status) = replica.exited() {
                    panic!("ipamd exited ({status}):\n{}", replica.log_tail(30));
                }
                assert!(
                    Instant::now() < deadline,
                    "ipamd not serving after 60 s:\n{}",
                    replica.log_tail(30)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// A gRPC client of ipamd (through the forwarder) with the cleaner's identity, an
    /// administrator: for ListAllocations.
    pub async fn admin_ipamd(
        &self,
    ) -> danm_proto::v1::ipam_client::IpamClient<tonic::transport::Channel> {
        use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
        let read = |p: PathBuf| std::fs::read(p).expect("a PEM");
        let pem = read(self.pki.path("cleaner"));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(self.pki.ca())))
            .identity(Identity::from_pem(&pem, &pem))
            .domain_name(IPAMD_NAME);
        let endpoint = Channel::from_shared(format!("https://{}", self.ipamd_address))
            .expect("a URL")
            .tls_config(tls)
            .expect("TLS settings");
        // The forwarder, as a Service whose endpoints lag, may pick a replica that was
        // killed: the next connection goes to the next one.
        let mut last = None;
        for _ in 0..6 {
            match endpoint.connect().await {
                Ok(channel) => return danm_proto::v1::ipam_client::IpamClient::new(channel),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("ipamd does not answer: {last:?}")
    }

    /// Every address ipamd holds (of every network), as `network address` lines.
    pub async fn allocations(&self) -> Vec<String> {
        use futures::StreamExt;
        let mut stream = self
            .admin_ipamd()
            .await
            .list_allocations(danm_proto::v1::ListAllocationsRequest::default())
            .await
            .expect("ListAllocations")
            .into_inner();
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            let a = item.expect("an allocation");
            let network = a
                .network
                .map(|n| format!("{}/{}", n.namespace, n.name))
                .unwrap_or_default();
            out.push(format!("{network} {}", a.address));
        }
        out
    }

    /// Starts the webhook as its Deployment runs it (its ServiceAccount, TLS only) and
    /// registers `deploy/base/webhook/webhook-configurations.yaml` with the API server,
    /// pointed at it; returns once it answers.
    pub async fn start_webhook(&mut self) {
        let kubeconfig =
            danm_testkit::identity::service_account_kubeconfig(&self.plane, "webhook", &[]).await;
        let cert = self.plane.serving_cert(&["127.0.0.1"]);
        let (crt, key) = (
            self.dir.path().join("webhook.crt"),
            self.dir.path().join("webhook.key"),
        );
        std::fs::write(&crt, &cert.cert_pem).expect("the webhook's certificate");
        std::fs::write(&key, &cert.key_pem).expect("the webhook's key");
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("an address");
        let mut command = Command::new(binary("webhook"));
        command
            .env("KUBECONFIG", &kubeconfig)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--tls-cert")
            .arg(&crt)
            .arg("--tls-key")
            .arg(&key);
        let process = self
            .plane
            .spawn_beside("webhook", command)
            .expect("the webhook starts");
        self.webhook_address = Some(listen);
        self.register_webhook().await;
        // Ready once it decides: its watches have listed (a dry run reserves nothing).
        let probe = "apiVersion: danm.io/v1\nkind: TenantConfig\nmetadata: {name: danm-readiness-probe}\nnetworkIds: {flannel: flannel}\n";
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let outcome = self
                .plane
                .kubectl_with_input(&["create", "--dry-run=server", "-f", "-"], probe);
            let deciding = match &outcome {
                Ok(_) => true,
                Err(e) => !e.contains("could not decide") && !e.contains("failed calling webhook"),
            };
            if deciding {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the webhook does not decide: {outcome:?}\n{}",
                process.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.webhook = Some(process);
    }

    /// Registers `deploy/base/webhook/webhook-configurations.yaml` with the API server,
    /// pointed at the running webhook (again, after a test deleted the configurations).
    pub async fn register_webhook(&self) {
        let listen = self.webhook_address.expect("the webhook was started");
        let configurations = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/base/webhook/webhook-configurations.yaml");
        danm_testkit::webhook::register(&self.plane, &configurations, listen)
            .await
            .expect("the webhook is registered");
    }

    /// Node `name` dies: its agent stops, its pods' namespaces and its own vanish (no CNI
    /// DEL), and its Node object is deleted, as when a machine is lost and removed.
    pub async fn kill_node(&mut self, name: &str) {
        let index = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"));
        self.nodes.remove(index).kill();
        self.netwatchers.retain(|(node, _)| node != name);
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> =
            kube::Api::all(self.plane.client().await);
        nodes
            .delete(name, &Default::default())
            .await
            .expect("the Node is deleted");
    }

    /// One `cleaner --once` pass as the CronJob runs it (its ServiceAccount, its client
    /// certificate to ipamd), with no grace for orphans; its report (JSON).
    pub async fn run_cleaner(&self) -> serde_json::Value {
        let kubeconfig =
            danm_testkit::identity::service_account_kubeconfig(&self.plane, "cleaner", &[]).await;
        let cleaner = self.pki.path("cleaner");
        let out = Command::new(binary("cleaner"))
            .env("KUBECONFIG", &kubeconfig)
            .args(["--once", "--grace", "0s", "-o", "json"])
            .arg("--ipamd")
            .arg(format!("https://{}", self.ipamd_address))
            .arg("--ipamd-ca")
            .arg(self.pki.ca())
            .arg("--ipamd-cert")
            .arg(&cleaner)
            .arg("--ipamd-key")
            .arg(&cleaner)
            .output()
            .expect("the cleaner runs");
        assert!(
            out.status.success(),
            "cleaner --once failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "the cleaner's report: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// What a user looks at when something does not come up: pods, events, ipamd's logs.
    pub fn diagnose(&self) -> String {
        let get = |args: &[&str]| {
            self.plane
                .kubectl_with_input(args, "")
                .unwrap_or_else(|e| format!("kubectl {}: {e}", args.join(" ")))
        };
        let mut out = get(&["get", "pods", "-A", "-o", "wide"]);
        out.push_str(&get(&["get", "events", "-A"]));
        for (i, replica) in self.ipamd.iter().enumerate() {
            out.push_str(&format!("--- ipamd-{i}\n{}", replica.log_tail(15)));
        }
        out
    }

    /// `kubectl` with `args` and `input`; its output, or a panic with its error.
    pub fn kubectl(&self, args: &[&str], input: &str) -> String {
        self.plane
            .kubectl_with_input(args, input)
            .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
    }
}

/// svcwatcher as its Deployment runs it (its ServiceAccount, its Lease in danm-system).
async fn start_svcwatcher(plane: &ControlPlane) -> Spawned {
    let kubeconfig =
        danm_testkit::identity::service_account_kubeconfig(plane, "svcwatcher", &[]).await;
    let mut command = Command::new(binary("svcwatcher"));
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--namespace", SYSTEM_NAMESPACE])
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{}", free_port()));
    plane
        .spawn_beside("svcwatcher", command)
        .expect("svcwatcher starts")
}

/// Starts ipamd replica `index` as the Deployment does, on `listen` (loopback).
fn start_ipamd(
    plane: &ControlPlane,
    pki: &Pki,
    kubeconfig: &Path,
    index: u16,
    listen: SocketAddr,
) -> Spawned {
    let mut command = Command::new(binary("ipamd"));
    command
        .env("KUBECONFIG", kubeconfig)
        .env("NO_COLOR", "1")
        .args(["--store", "kube", "--namespace", SYSTEM_NAMESPACE])
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--tls-cert")
        .arg(pki.path("ipamd"))
        .arg("--tls-key")
        .arg(pki.path("ipamd"))
        .arg("--tls-client-ca")
        .arg(pki.ca())
        .args([
            "--authorization",
            "nodes",
            "--admin-clients",
            "danm-cleaner",
        ])
        .args(["--start-hint", &(index * 21_845).to_string()]);
    plane
        .spawn_beside(&format!("ipamd-{index}"), command)
        .expect("ipamd starts")
}
