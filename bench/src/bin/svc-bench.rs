//! `svc-bench`: svcwatcher on the real API server with one Service selecting `--pods` pods
//! (one DanmEp each on the Service's network). Measures the time from the Service's creation
//! until its EndpointSlices hold every pod, then the writes svcwatcher makes (EndpointSlices
//! and Endpoints, from its own metrics) per pod deleted and per pod turning not ready.

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
    /// Pod changes measured, of each kind (deletes, readiness flips).
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// The svcwatcher binary (default: beside this one).
    #[arg(long)]
    svcwatcher: Option<PathBuf>,
}

const NS: &str = "svc";

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
    let pods: Vec<(String, String)> = futures::stream::iter(0..args.pods)
        .map(|i| {
            let api = api.clone();
            async move { create_ready_pod(&api, &format!("pod-{i}")).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    preload_danmeps(&client, NS, NS, Some(&pods), args.pods, 32).await?;
    let kubeconfig = std::env::temp_dir().join(format!("svc-bench-{}", std::process::id()));
    server.write_kubeconfig(&kubeconfig)?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    let mut child = std::process::Command::new(&binary)
        .args(["--namespace", NS, "--admin-listen", &admin])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // Once it holds the Lease and has its caches, create the Service.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "bench", "annotations": {"danm.io/selector": "{\"app\":\"bench\"}", "danm.io/network": NS}},
        "spec": {"clusterIP": "None", "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}]}
    }))?;
    let started = Instant::now();
    Api::<Service>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &service)
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
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&kubeconfig);
    println!(
        "{:#}",
        json!({
            "pods": args.pods,
            "converge_seconds": (converge * 100.0).round() / 100.0,
            "writes_per_pod_deleted": (after_deletes - before) as f64 / args.changes as f64,
            "writes_per_pod_not_ready": (after_flips - after_deletes) as f64 / args.changes as f64,
            "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        })
    );
    Ok(())
}

async fn create_ready_pod(api: &Api<Pod>, name: &str) -> anyhow::Result<(String, String)> {
    let pod = pods::pod(name, "bench-node", &[("app", "bench")]);
    let created = api.create(&PostParams::default(), &pod).await?;
    pods::set_ready(api, name, true).await?;
    Ok((name.to_owned(), created.metadata.uid.unwrap_or_default()))
}

/// Waits until the Service's slices hold (endpoints, not ready) satisfying `done`.
async fn wait_endpoints(
    client: &kube::Client,
    done: impl Fn(usize, usize) -> bool,
) -> anyhow::Result<()> {
    let api = Api::<EndpointSlice>::namespaced(client.clone(), NS);
    let select = ListParams::default().labels("kubernetes.io/service-name=bench");
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

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
