//! ipamd as the bench runs it: `n` real `ipamd --store kube` processes on one API server, and
//! the [`Ipam`] that calls them over gRPC (caller `i` always talks to replica `i % n`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use danm_proto::v1 as pb;
use danm_proto::v1::ipam_client::IpamClient;
use tonic::transport::Channel;

use crate::load::Ipam;

/// A running ipamd process, killed on drop.
#[derive(Debug)]
pub struct Replica {
    child: Child,
    client: IpamClient<Channel>,
    address: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    /// Its gRPC address (`127.0.0.1:port`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A gRPC client of this replica.
    pub fn client(&self) -> IpamClient<Channel> {
        self.client.clone()
    }

    /// Peak resident set size (VmHWM) in bytes, read from /proc.
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        self.status_kib("VmHWM:").map(|kib| kib * 1024)
    }

    /// Resident set size now (VmRSS) in bytes, read from /proc.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        self.status_kib("VmRSS:").map(|kib| kib * 1024)
    }

    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        Ok(status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .with_context(|| format!("no {field} in /proc/<pid>/status"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?)
    }

    /// The replica's counters (Status RPC).
    pub async fn counters(&self) -> anyhow::Result<pb::Counters> {
        let status = self.client.clone().status(pb::StatusRequest {}).await?;
        Ok(status.into_inner().counters.unwrap_or_default())
    }
}

/// Where the ipamd binary is: `--ipamd`, else beside this executable (`cargo build` puts
/// every binary of the workspace in the same directory; tests run from its `deps/`).
pub fn locate_ipamd(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    for candidate in [dir.join("ipamd"), dir.join("../ipamd")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no ipamd binary beside {}: build it (cargo build --release -p danm-ipamd) or pass --ipamd PATH",
        exe.display()
    )
}

/// Starts `count` replicas against the API server of `kubeconfig` and waits until each
/// serves `networks` networks.
pub async fn start(
    ipamd: &Path,
    kubeconfig: &Path,
    count: usize,
    networks: u32,
) -> anyhow::Result<Vec<Replica>> {
    let mut replicas = Vec::new();
    for i in 0..count {
        let addr = format!(
            "127.0.0.1:{}",
            std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port()
        );
        // Spread the replicas' first shards over the pool so they rarely write the same one.
        let hint = (i * 65_536 / count).min(65_535);
        let child = Command::new(ipamd)
            .args([
                "--store",
                "kube",
                "--namespace",
                "danm-system",
                "--listen",
                &addr,
            ])
            .args(["--start-hint", &hint.to_string()])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", ipamd.display()))?;
        let mut replica = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while replica.is_none() {
            if let Ok(mut c) = IpamClient::connect(format!("http://{addr}")).await
                && let Ok(s) = c.status(pb::StatusRequest {}).await
                && s.get_ref().networks == networks
            {
                replica = Some(Replica {
                    child,
                    client: c,
                    address: addr.clone(),
                });
                break;
            }
            if Instant::now() > deadline {
                bail!("ipamd replica {i} on {addr} did not come up within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        replicas.extend(replica);
    }
    Ok(replicas)
}

/// Callers of the replicas for one network.
#[derive(Debug)]
pub struct IpamdCallers {
    clients: Vec<IpamClient<Channel>>,
    network: pb::NetworkRef,
    namespace: String,
}

impl IpamdCallers {
    /// Callers of `replicas` on the DanmNet `namespace/name`.
    pub fn new(replicas: &[Replica], namespace: &str, name: &str) -> IpamdCallers {
        IpamdCallers {
            clients: replicas.iter().map(|r| r.client.clone()).collect(),
            network: pb::NetworkRef {
                kind: pb::NetworkKind::DanmNet as i32,
                namespace: namespace.into(),
                name: name.into(),
            },
            namespace: namespace.into(),
        }
    }

    fn owner(&self, cid: &str) -> Option<pb::Owner> {
        Some(pb::Owner {
            container_id: cid.into(),
            ifname: "eth0".into(),
            pod_namespace: self.namespace.clone(),
            pod_name: format!("pod-{cid}"),
            ..Default::default()
        })
    }
}

#[async_trait]
impl Ipam for IpamdCallers {
    async fn allocate(&self, caller: usize, cid: &str) -> anyhow::Result<String> {
        let mut client = self.clients[caller % self.clients.len()].clone();
        let reply = client
            .allocate(pb::AllocateRequest {
                network: Some(self.network.clone()),
                owner: self.owner(cid),
                ip: "dynamic".into(),
                ip6: String::new(),
            })
            .await
            .with_context(|| format!("allocate for {cid}"))?;
        Ok(reply.into_inner().ip)
    }

    async fn release(&self, caller: usize, cid: &str, _ip: &str) -> anyhow::Result<()> {
        let mut client = self.clients[caller % self.clients.len()].clone();
        client
            .release(pb::ReleaseRequest {
                network: Some(self.network.clone()),
                owner: self.owner(cid),
            })
            .await
            .with_context(|| format!("release of {cid}"))?;
        Ok(())
    }
}
