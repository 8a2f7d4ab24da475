//! `svc-bench`: svcwatcher on the real API server with one Service selecting `--pods` pods
//! (one DanmEp each on the Service's network), beside `--others` pods in ten other Services
//! of another namespace and network (published first). Measures the time from the Service's
//! creation until its EndpointSlices hold every pod, then the writes svcwatcher makes
//! (EndpointSlices and Endpoints, from its own metrics) per pod deleted and per pod turning
//! not ready, and the CPU time svcwatcher spent from the Service's creation to the last
//! change.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use danm_bench::api::{Target, namespaces_and_danmnet, preload_danmeps};
use danm_testkit::pods;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

/// Times svcwatcher on one Service selecting many pods.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Pods the Service selects.
    #[arg(long, default_value_t = 1_000)]
    pods: usize,
    /// Pods in ten other Services, in another namespace on another network: the rest of the
    /// cluster, which must not slow the measured Service down.
    #[arg(long, default_value_t = 0)]
    others: usize,
    /// Pod changes measured, of each kind (deletes, readiness flips).
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// The svcwatcher binary (default: beside this one).
    #[arg(long)]
    svcwatcher: Option<PathBuf>,
}

const NS: &str = "svc";
const OTHERS: &str = "others";
/// The Services of `--others`.
const OTHER_SERVICES: usize = 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = match &args.svcwatcher {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("svcwatcher"),
    };
    if !binary.exists() {
        bail!(
            "{} not found: cargo build --release -p danm-watchers",
            binary.display()
        );
    }
    let server = Target::start(Duration::ZERO).await?;
    let client = server.client().await;
    namespaces_and_danmnet(&client, &[NS], NS).await?;
    let api = Api::<Pod>::namespaced(client.clone(), NS);
    let pods = ready_pods(&api, args.pods, |_| "bench".to_owned()).await?;
    preload_danmeps(&client, NS, NS, Some(&pods), args.pods, 32).await?;
    if args.others > 0 {
        namespaces_and_danmnet(&client, &[OTHERS], OTHERS).await?;
        let others = Api::<Pod>::namespaced(client.clone(), OTHERS);
        let pods = ready_pods(&others, args.others, |i| {
            format!("other-{}", i % OTHER_SERVICES)
        })
        .await?;
        preload_danmeps(&client, OTHERS, OTHERS, Some(&pods), args.others, 32).await?;
        for k in 0..OTHER_SERVICES {
            Api::<Service>::namespaced(client.clone(), OTHERS)
                .create(
                    &PostParams::default(),
                    &service(&format!("other-{k}"), OTHERS),
                )
                .await?;
        }
    }
    let kubeconfig = std::env::temp_dir().join(format!("svc-bench-{}", std::process::id()));
    server.write_kubeconfig(&kubeconfig)?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    let mut child = std::process::Command::new(&binary)
        .args(["--namespace", NS, "--admin-listen", &admin])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // Once it holds the Lease and has its caches (and has published the other Services),
    // create the Service.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let others_started = Instant::now();
    wait_slices(&client, OTHERS, "", |n, _| n == args.others).await?;
    let others_seconds = others_started.elapsed().as_secs_f64();
    let cpu_before = cpu_seconds(child.id())?;
    let started = Instant::now();
    Api::<Service>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &service("bench", NS))
        .await?;
    wait_endpoints(&client, |n, _| n == args.pods).await?;
    let converge = started.elapsed().as_secs_f64();
    let before = writes(&admin).await?;
    for i in 0..args.changes {
        api.delete(
            &format!("pod-{i}"),
            &DeleteParams::default().grace_period(0),
        )
        .await?;
        let left = args.pods - i - 1;
        wait_endpoints(&client, |n, _| n == left).await?;
    }
    let after_deletes = writes(&admin).await?;
    for i in args.changes..2 * args.changes {
        pods::set_ready(&api, &format!("pod-{i}"), false).await?;
        let not_ready = i - args.changes + 1;
        wait_endpoints(&client, |_, nr| nr == not_ready).await?;
    }
    let after_flips = writes(&admin).await?;
    let cpu = cpu_seconds(child.id())? - cpu_before;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&kubeconfig);
    println!(
        "{:#}",
        json!({
            "pods": args.pods,
            "others": args.others,
            "others_published_after_start_seconds": (others_seconds * 100.0).round() / 100.0,
            "converge_seconds": (converge * 100.0).round() / 100.0,
            "svcwatcher_cpu_seconds": (cpu * 100.0).round() / 100.0,
            "writes_per_pod_deleted": (after_deletes - before) as f64 / args.changes as f64,
            "writes_per_pod_not_ready": (after_flips - after_deletes) as f64 / args.changes as f64,
            "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        })
    );
    Ok(())
}

/// Service `name` of `namespace`: DANM's, selecting `app=<name>` on the namespace's network.
fn service(name: &str, namespace: &str) -> Service {
    let selector = json!({ "app": name }).to_string();
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"danm.io/selector": selector, "danm.io/network": namespace}},
        "spec": {"clusterIP": "None", "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}]}
    }))
    .expect("a Service")
}

/// `count` Ready pods `pod-<i>` labelled `app=<app(i)>`: their names and UIDs.
async fn ready_pods(
    api: &Api<Pod>,
    count: usize,
    app: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<(String, String)>> {
    futures::stream::iter(0..count)
        .map(|i| {
            let (api, app) = (api.clone(), app(i));
            async move { create_ready_pod(&api, &format!("pod-{i}"), &app).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

async fn create_ready_pod(
    api: &Api<Pod>,
    name: &str,
    app: &str,
) -> anyhow::Result<(String, String)> {
    let pod = pods::pod(name, "bench-node", &[("app", app)]);
    let created = api.create(&PostParams::default(), &pod).await?;
    pods::set_ready(api, name, true).await?;
    Ok((name.to_owned(), created.metadata.uid.unwrap_or_default()))
}

/// Waits until the measured Service's slices hold (endpoints, not ready) satisfying `done`.
async fn wait_endpoints(
    client: &kube::Client,
    done: impl Fn(usize, usize) -> bool,
) -> anyhow::Result<()> {
    wait_slices(client, NS, "kubernetes.io/service-name=bench", done).await
}

/// Waits until the slices of `namespace` that `labels` select hold (endpoints, not ready)
/// satisfying `done`.
async fn wait_slices(
    client: &kube::Client,
    namespace: &str,
    labels: &str,
    done: impl Fn(usize, usize) -> bool,
) -> anyhow::Result<()> {
    let api = Api::<EndpointSlice>::namespaced(client.clone(), namespace);
    let select = ListParams::default().labels(labels);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let slices = api.list(&select).await?.items;
        let endpoints: Vec<_> = slices.iter().flat_map(|s| s.endpoints.iter()).collect();
        let not_ready = endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(false))
            .count();
        if done(endpoints.len(), not_ready) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "slices hold {} endpoints ({not_ready} not ready) after 300 s",
                endpoints.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// svcwatcher's writes so far: slices written and deleted, Endpoints written.
async fn writes(admin: &str) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("danm_svcwatcher_slices_written_total")
                || l.starts_with("danm_svcwatcher_slices_deleted_total")
                || l.starts_with("danm_svcwatcher_endpoints_written_total")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// The CPU time process `pid` has used (user and system), in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command (in parentheses, which may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |k: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(k)
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: no field {k}"))?
            .parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the command; the
    // kernel counts them in USER_HZ (100 on Linux).
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
