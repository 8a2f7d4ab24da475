//! `bench --peer whereabouts`: Whereabouts (the IPAM most Multus users run) and danm-ipam
//! with one ipamd, measured the same way in the same run. Each plugin's CNI binary is
//! called as a container runtime calls it (a process per call, the network configuration on
//! standard input, `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_IFNAME`, and `CNI_ARGS` naming a
//! pod that exists), `--peer-adds` ADDs then as many DELs, by 1, 8 and 32 concurrent
//! callers, each run on a fresh real API server (etcd with fsync on) and a /16 of its own,
//! the plugins' order alternating from one caller count to the next. danm-ipam's calls go
//! to `--peer-replicas` ipamd processes in turn (one by default; three is production's
//! shape).
//!
//! Whereabouts is built from the Go module proxy at the version `testkit/peers/whereabouts`
//! pins (its `build.sh`, cached), its CRDs (`testkit/fixtures/whereabouts/`) applied to the
//! API server. Reported per run: allocations per second, ADD and DEL p50/p99, API requests,
//! writes and response bytes per allocation (from the API server's own counters),
//! duplicates among the ADDs' addresses, and what is left allocated after the DELs.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use danm_crds::{AllocationShard, DanmNet, DanmNetSpec, NetworkOptions, NetworkSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DynamicObject, ListParams, ObjectMeta, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use crate::api::{Counters, Target};
use crate::replicas;
use crate::stats::{Latencies, round2};

/// The namespace of the pods and of danm-ipam's network.
const NAMESPACE: &str = "peer";

/// A plugin under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    /// danm-ipam with one ipamd (`--store kube`).
    DanmIpam,
    /// Whereabouts' CNI binary.
    Whereabouts,
}

impl Plugin {
    fn name(self) -> &'static str {
        match self {
            Plugin::DanmIpam => "danm-ipam",
            Plugin::Whereabouts => "whereabouts",
        }
    }
}

/// What a peer run needs.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// ADDs (then DELs) per run.
    pub adds: usize,
    /// Concurrent callers, one run each.
    pub callers: Vec<usize>,
    /// ipamd replicas behind danm-ipam (call `i` goes to replica `i % replicas`).
    pub replicas: usize,
    /// The ipamd binary.
    pub ipamd: PathBuf,
    /// The danm-ipam binary.
    pub danm_ipam: PathBuf,
}

/// Builds (or finds cached) Whereabouts' CNI binary with `testkit/peers/whereabouts/build.sh`.
pub fn whereabouts_binary() -> anyhow::Result<PathBuf> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../testkit/peers/whereabouts/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// Every run, and the ratios at each caller count. One JSON object.
pub async fn run(config: &PeerConfig) -> anyhow::Result<Value> {
    let whereabouts = whereabouts_binary()?;
    let mut runs = Vec::new();
    let mut ratios = Vec::new();
    for (i, &callers) in config.callers.iter().enumerate() {
        let order = if i % 2 == 0 {
            [Plugin::Whereabouts, Plugin::DanmIpam]
        } else {
            [Plugin::DanmIpam, Plugin::Whereabouts]
        };
        let mut rates = [0.0f64; 2];
        for plugin in order {
            eprintln!(
                "bench --peer: {} with {callers} callers, {} ADDs and DELs",
                plugin.name(),
                config.adds
            );
            let result = one_run(config, plugin, callers, &whereabouts).await?;
            rates[usize::from(plugin == Plugin::DanmIpam)] =
                result["allocations_per_second"].as_f64().unwrap_or(0.0);
            runs.push(result);
        }
        ratios.push(json!({
            "callers": callers,
            "danm_ipam_over_whereabouts": if rates[0] > 0.0 { round2(rates[1] / rates[0]) } else { 0.0 },
        }));
    }
    Ok(json!({
        "setup": {
            "api": "real kube-apiserver and etcd (fsync on), a fresh one per run",
            "adds": config.adds,
            "cidr": "10.64.0.0/16 (each plugin its own)",
            "ipamd_replicas": config.replicas,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "whereabouts": whereabouts.display().to_string(),
        },
        "runs": runs,
        "ratios": ratios,
    }))
}

/// One plugin, one caller count, on a fresh API server.
async fn one_run(
    config: &PeerConfig,
    plugin: Plugin,
    callers: usize,
    whereabouts: &Path,
) -> anyhow::Result<Value> {
    let target = Target::start(Duration::ZERO).await?;
    let client = target.client().await;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    target.write_kubeconfig(&kubeconfig)?;
    // The pods' namespace, and ipamd's (where it keeps its status Lease).
    for ns in [NAMESPACE, "danm-system"] {
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta {
                        name: Some(ns.into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await?;
    }
    let uids = create_pods(&client, config.adds).await?;
    // The plugin's binary and its network configuration; ipamd kept alive for the run.
    let mut _ipamd = None;
    let (binary, confs) = match plugin {
        Plugin::Whereabouts => {
            let crds = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../testkit/fixtures/whereabouts/crds.yaml");
            target
                .kubectl_apply(&std::fs::read_to_string(&crds)?)
                .map_err(|e| anyhow::anyhow!("applying {}: {e}", crds.display()))?;
            let flat = dir.path().join("whereabouts.conf");
            std::fs::write(
                &flat,
                json!({"kubernetes": {"kubeconfig": kubeconfig}}).to_string(),
            )?;
            (
                whereabouts.to_owned(),
                vec![
                    json!({"cniVersion": "1.0.0", "name": "peer", "type": "macvlan",
                    "ipam": {"type": "whereabouts", "range": "10.64.0.0/16",
                        "configuration_path": flat, "log_level": "error"}}),
                ],
            )
        }
        Plugin::DanmIpam => {
            let spec = NetworkSpec {
                network_id: "peer".into(),
                network_type: "macvlan".into(),
                options: NetworkOptions {
                    cidr: Some("10.64.0.0/16".into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            Api::<DanmNet>::namespaced(client.clone(), NAMESPACE)
                .create(
                    &PostParams::default(),
                    &DanmNet::new("peer", DanmNetSpec { network: spec }),
                )
                .await?;
            let replicas =
                replicas::start(&config.ipamd, &kubeconfig, config.replicas.max(1), 1).await?;
            let confs = replicas
                .iter()
                .map(|r| {
                    json!({"cniVersion": "1.0.0", "name": "peer", "type": "macvlan",
                        "ipam": {"type": "danm-ipam", "ipamd": format!("http://{}", r.address()),
                            "network": "peer", "kind": "DanmNet", "namespace": NAMESPACE}})
                })
                .collect();
            _ipamd = Some(replicas);
            (config.danm_ipam.clone(), confs)
        }
    };
    let confs: Vec<Vec<u8>> = confs
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<_, _>>()?;
    let conf = Arc::new(confs);
    let uids = Arc::new(uids);
    let before = target.counters().await?;
    let started = Instant::now();
    let (adds, addresses) = phase(&binary, &conf, &uids, callers, "ADD").await?;
    let add_seconds = started.elapsed().as_secs_f64();
    let after_adds = target.counters().await?;
    let largest = largest_object(&client, plugin).await?;
    let (dels, _) = phase(&binary, &conf, &uids, callers, "DEL").await?;
    let after_dels = target.counters().await?;
    let distinct: HashSet<&String> = addresses.iter().collect();
    let left = leftovers(&client, plugin).await?;
    let per = |a: Counters, b: Counters| {
        let n = config.adds as f64;
        json!({
            "api_requests": round2((b.requests - a.requests) as f64 / n),
            "api_writes": round2((b.writes - a.writes) as f64 / n),
            "api_response_bytes": b.response_bytes.zip(a.response_bytes).map(|(b, a)| round2((b - a) as f64 / n)),
        })
    };
    let (mut adds, mut dels) = (adds, dels);
    Ok(json!({
        "plugin": plugin.name(),
        "callers": callers,
        "allocations_per_second": round2(config.adds as f64 / add_seconds),
        "add_ms": adds.summary(),
        "del_ms": dels.summary(),
        "per_add": per(before, after_adds),
        "per_del": per(after_adds, after_dels),
        "duplicates": addresses.len() - distinct.len(),
        "largest_object_bytes_after_adds": largest,
        "left_after_del": left,
    }))
}

/// `count` pods of `NAMESPACE` (`pod-0`...), created 32 at a time; their UIDs.
async fn create_pods(client: &kube::Client, count: usize) -> anyhow::Result<Vec<String>> {
    use futures::StreamExt as _;
    let api = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let created: Vec<anyhow::Result<String>> = futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("pod-{i}")},
                    "spec": {"containers": [{"name": "c", "image": "pause"}]},
                }))?;
                let pod = api.create(&PostParams::default(), &pod).await?;
                Ok(pod.metadata.uid.unwrap_or_default())
            }
        })
        .buffered(32)
        .collect()
        .await;
    created.into_iter().collect()
}

/// One phase: `uids.len()` calls of `command` by `callers` concurrent callers; their
/// latencies and, for ADD, the addresses given.
async fn phase(
    binary: &Path,
    conf: &Arc<Vec<Vec<u8>>>,
    uids: &Arc<Vec<String>>,
    callers: usize,
    command: &'static str,
) -> anyhow::Result<(Latencies, Vec<String>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (binary, conf, uids, next) = (
            binary.to_owned(),
            Arc::clone(conf),
            Arc::clone(uids),
            Arc::clone(&next),
        );
        tasks.push(tokio::task::spawn_blocking(
            move || -> anyhow::Result<(Latencies, Vec<String>)> {
                let mut latencies = Latencies::default();
                let mut addresses = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= uids.len() {
                        return Ok((latencies, addresses));
                    }
                    let started = Instant::now();
                    let out = call(&binary, command, i, &uids[i], &conf[i % conf.len()])?;
                    latencies.push(started.elapsed());
                    if command == "ADD" {
                        let result: Value = serde_json::from_slice(&out).with_context(|| {
                            format!("ADD {i}: {}", String::from_utf8_lossy(&out))
                        })?;
                        let address = result["ips"][0]["address"]
                            .as_str()
                            .with_context(|| format!("ADD {i} gave no address: {result}"))?;
                        addresses.push(address.to_owned());
                    }
                }
            },
        ));
    }
    let mut latencies = Latencies::default();
    let mut addresses = Vec::new();
    for task in tasks {
        let (l, a) = task.await??;
        latencies.extend(l);
        addresses.extend(a);
    }
    Ok((latencies, addresses))
}

/// One call of the plugin, as a runtime makes it; its standard output.
fn call(binary: &Path, command: &str, i: usize, uid: &str, conf: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new(binary)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("peer-bench-{i:06}"))
        // A path that is no namespace: neither plugin enters it (an IPAM plugin only
        // allocates), and Whereabouts checks only that it is not its own.
        .env("CNI_NETNS", format!("/var/run/netns/peer-bench-{i}"))
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", binary.parent().unwrap_or(Path::new("/")))
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME=pod-{i};K8S_POD_UID={uid}"
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    child.stdin.take().context("stdin")?.write_all(conf)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} {command} {i} failed ({}): {} {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// The largest object the plugin keeps its allocations in, in bytes of JSON: Whereabouts'
/// IPPool (every allocation of the range in one object), or danm's largest shard.
async fn largest_object(client: &kube::Client, plugin: Plugin) -> anyhow::Result<usize> {
    let sizes: Vec<usize> = match plugin {
        Plugin::Whereabouts => {
            let api: Api<DynamicObject> =
                Api::all_with(client.clone(), &whereabouts("IPPool", "ippools"));
            api.list(&ListParams::default())
                .await?
                .items
                .iter()
                .map(|o| serde_json::to_vec(o).map_or(0, |v| v.len()))
                .collect()
        }
        Plugin::DanmIpam => Api::<AllocationShard>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|o| serde_json::to_vec(o).map_or(0, |v| v.len()))
            .collect(),
    };
    Ok(sizes.into_iter().max().unwrap_or(0))
}

/// A kind of Whereabouts'.
fn whereabouts(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "whereabouts.cni.cncf.io".into(),
        version: "v1alpha1".into(),
        api_version: "whereabouts.cni.cncf.io/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// What is still allocated after the DELs: Whereabouts' pool allocations and reservations,
/// or the addresses set in danm's shards.
async fn leftovers(client: &kube::Client, plugin: Plugin) -> anyhow::Result<u64> {
    match plugin {
        Plugin::Whereabouts => {
            let mut left = 0u64;
            for (kind, plural) in [
                ("IPPool", "ippools"),
                (
                    "OverlappingRangeIPReservation",
                    "overlappingrangeipreservations",
                ),
            ] {
                let api: Api<DynamicObject> =
                    Api::all_with(client.clone(), &whereabouts(kind, plural));
                for o in api.list(&ListParams::default()).await?.items {
                    left += match kind {
                        "IPPool" => o.data["spec"]["allocations"]
                            .as_object()
                            .map_or(0, |a| a.len() as u64),
                        _ => 1,
                    };
                }
            }
            Ok(left)
        }
        Plugin::DanmIpam => Ok(Api::<AllocationShard>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|s| u64::from(s.spec.allocated))
            .sum()),
    }
}
