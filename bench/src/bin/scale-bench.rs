//! `scale-bench`: what one pod costs ipamd as the cluster grows. For each N of
//! `--endpoints`, a fresh API server gets N DanmEps of other pods (in the measured pods'
//! namespace, the hardest place for them), one `ipamd --store kube` starts on it, and
//! `--pods` pods are attached, looked up and detached one at a time, as kubelet's ADD, CHECK
//! and DEL would: Attach, Interfaces, Detach. Prints one JSON object: per N, each call's
//! latency (p50/p99/max) and the API requests and response bytes it cost, ipamd's memory,
//! and what that memory grows by per DanmEp (`cache_bytes_per_danmep`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use danm_bench::api::{Counters, Target};
use danm_bench::replicas;
use danm_bench::stats::{Latencies, round2};
use danm_crds::{DanmEp, DanmEpSpec};
use danm_proto::v1 as pb;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// Measures Attach, Interfaces and Detach of one pod against the number of DanmEps.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Numbers of DanmEps of other pods to pre-load, one run each.
    #[arg(long, value_delimiter = ',', default_value = "100,10000,100000")]
    endpoints: Vec<usize>,
    /// Pods attached, looked up and detached in each run.
    #[arg(long, default_value_t = 200)]
    pods: usize,
    /// Concurrent creates while pre-loading.
    #[arg(long, default_value_t = 32)]
    preload_concurrency: usize,
    /// The ipamd binary (default: beside this one).
    #[arg(long)]
    ipamd: Option<PathBuf>,
}

const NAMESPACE: &str = "scale";
const NETWORK: &str = "scale";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.pods == 0 {
        bail!("--pods must be at least 1");
    }
    let ipamd = replicas::locate_ipamd(args.ipamd.as_deref())?;
    let mut runs = Vec::new();
    for &n in &args.endpoints {
        eprintln!("scale-bench: {n} DanmEps of other pods");
        runs.push(
            run(&args, &ipamd, n)
                .await
                .with_context(|| format!("run with {n} DanmEps"))?,
        );
    }
    let report = json!({
        "cache_bytes_per_danmep": cache_bytes_per_danmep(&runs),
        "setup": {
            "api": "real kube-apiserver and etcd (fsync on)",
            "pods": args.pods,
            "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        },
        "runs": runs,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn run(args: &Args, ipamd: &std::path::Path, endpoints: usize) -> anyhow::Result<Value> {
    let server = Target::start(Duration::ZERO).await?;
    let client = server.client().await;
    danm_bench::api::namespaces_and_danmnet(&client, &[NAMESPACE, "danm-system"], NETWORK).await?;
    let started = Instant::now();
    danm_bench::api::preload_danmeps(
        &client,
        NAMESPACE,
        NETWORK,
        None,
        endpoints,
        args.preload_concurrency,
    )
    .await?;
    let preload_seconds = started.elapsed().as_secs_f64();
    eprintln!("scale-bench: pre-loaded {endpoints} DanmEps in {preload_seconds:.0} s");
    // Pods without their sandboxes: what Attach reads.
    for i in 0..args.pods {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": format!("measured-{i}"),
                "annotations": {"danm.io/interfaces": format!(r#"[{{"network":"{NETWORK}","ip":"dynamic"}}]"#)},
            },
            "spec": {"containers": [{"name": "app", "image": "busybox:latest"}]},
        }))?;
        Api::<Pod>::namespaced(client.clone(), NAMESPACE)
            .create(&PostParams::default(), &pod)
            .await?;
    }

    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let replica = replicas::start(ipamd, &kubeconfig, 1, 1).await?;
    let mut ipam = replica[0].client();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !ipam.status(pb::StatusRequest {}).await?.into_inner().ready {
        if Instant::now() > deadline {
            bail!("ipamd was not ready within 300 s of listing {endpoints} DanmEps");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_ready = replica[0].rss_bytes()?;

    let baseline = api_baseline(&client, args.pods).await?;
    let mut calls: BTreeMap<&str, Value> = BTreeMap::new();
    let cid = |i: usize| format!("measured-cid-{i}");
    for (name, call) in [("attach", 0), ("interfaces", 1), ("detach", 2)] {
        let before = server.counters().await?;
        let mut latencies = Latencies::default();
        for i in 0..args.pods {
            let t = Instant::now();
            match call {
                0 => {
                    let planned = ipam
                        .attach(pb::AttachRequest {
                            pod_namespace: NAMESPACE.into(),
                            pod_name: format!("measured-{i}"),
                            container_id: cid(i),
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    if planned.interfaces.len() != 1 {
                        bail!("attach of pod {i}: {} interfaces", planned.interfaces.len());
                    }
                }
                1 => {
                    let found = ipam
                        .interfaces(pb::InterfacesRequest {
                            container_id: cid(i),
                            pod_namespace: NAMESPACE.into(),
                        })
                        .await?
                        .into_inner();
                    if found.interfaces.len() != 1 {
                        bail!("interfaces of pod {i}: {} found", found.interfaces.len());
                    }
                }
                _ => {
                    let released = ipam
                        .detach(pb::DetachRequest {
                            container_id: cid(i),
                            pod_namespace: NAMESPACE.into(),
                            pod_name: format!("measured-{i}"),
                        })
                        .await?
                        .into_inner();
                    if released.released.len() != 1 {
                        bail!("detach of pod {i}: {} released", released.released.len());
                    }
                }
            }
            latencies.push(t.elapsed());
        }
        let after = server.counters().await?;
        calls.insert(name, per_call(latencies, &before, &after, args.pods));
    }
    Ok(json!({
        "danmeps_of_other_pods": endpoints,
        "preload_seconds": round2(preload_seconds),
        "ipamd_rss_bytes_when_ready": rss_ready,
        "ipamd_rss_mib_when_ready": round2(rss_ready as f64 / 1_048_576.0),
        "ipamd_peak_rss_mib": round2(replica[0].peak_rss_bytes()? as f64 / 1_048_576.0),
        "calls": calls,
        "api_server_alone_ms": baseline,
    }))
}

/// What ipamd's memory grows by per DanmEp of other pods, from the smallest run to the
/// largest (its DanmEp cache; the rest of ipamd does not grow with them). Null with fewer
/// than two sizes.
fn cache_bytes_per_danmep(runs: &[Value]) -> Value {
    let point = |run: &Value| {
        Some((
            run["danmeps_of_other_pods"].as_f64()?,
            run["ipamd_rss_bytes_when_ready"].as_f64()?,
        ))
    };
    let mut points: Vec<(f64, f64)> = runs.iter().filter_map(point).collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    match (points.first(), points.last()) {
        (Some(small), Some(large)) if large.0 > small.0 => {
            json!(((large.1 - small.1) / (large.0 - small.0)).round())
        }
        _ => Value::Null,
    }
}

/// What the API server alone takes, at this size, for the kinds of request ipamd makes: a
/// GET of a pod, and a create and a delete of a DanmEp in the measured namespace.
async fn api_baseline(client: &kube::Client, count: usize) -> anyhow::Result<Value> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let eps: Api<DanmEp> = Api::namespaced(client.clone(), NAMESPACE);
    let (mut get, mut create, mut delete) = (
        Latencies::default(),
        Latencies::default(),
        Latencies::default(),
    );
    for i in 0..count {
        let t = Instant::now();
        pods.get(&format!("measured-{i}")).await?;
        get.push(t.elapsed());
        let ep = DanmEp::new(
            &format!("baseline-{i}"),
            DanmEpSpec {
                cid: format!("baseline-{i}"),
                ..Default::default()
            },
        );
        let t = Instant::now();
        eps.create(&PostParams::default(), &ep).await?;
        create.push(t.elapsed());
        let t = Instant::now();
        eps.delete(&format!("baseline-{i}"), &Default::default())
            .await?;
        delete.push(t.elapsed());
    }
    Ok(json!({
        "get_pod": get.summary(),
        "create_danmep": create.summary(),
        "delete_danmep": delete.summary(),
    }))
}

/// One call's figures: latency, and API requests and bytes per call (less the one read of
/// the counters themselves).
fn per_call(mut latencies: Latencies, before: &Counters, after: &Counters, calls: usize) -> Value {
    let per = |a: u64, b: u64| round2(a.saturating_sub(b) as f64 / calls as f64);
    json!({
        "ms": latencies.summary(),
        "api_requests_per_call": per(after.requests.saturating_sub(1), before.requests),
        "api_response_bytes_per_call": match (after.response_bytes, before.response_bytes) {
            (Some(a), Some(b)) => json!(per(a, b)),
            _ => Value::Null,
        },
    })
}
