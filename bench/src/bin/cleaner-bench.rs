//! `cleaner-bench`: one cleaner pass over a cluster of `--endpoints` DanmEps on the real API
//! server. The DanmEps belong to `--pods` live pods (many interfaces each), so the pass reads
//! everything and finds nothing to free: the cost measured is the survey, which every pass
//! pays. Runs the `cleaner` binary (`--once --dry-run -o json`) and prints its wall time,
//! its peak resident memory (VmHWM, polled) and what it scanned, as JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use danm_bench::api::{Target, preload_danmeps};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::json;

/// Times one cleaner pass over many DanmEps.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// DanmEps in the cluster.
    #[arg(long, default_value_t = 100_000)]
    endpoints: usize,
    /// Live pods they belong to.
    #[arg(long, default_value_t = 1_000)]
    pods: usize,
    /// Concurrent creates while pre-loading.
    #[arg(long, default_value_t = 32)]
    preload_concurrency: usize,
    /// Objects per list request, one pass each.
    #[arg(long, value_delimiter = ',', default_value = "500,2000,5000")]
    page_sizes: Vec<u32>,
    /// The cleaner binary (default: beside this one).
    #[arg(long)]
    cleaner: Option<PathBuf>,
}

const NAMESPACE: &str = "bench";
const NETWORK: &str = "bench";
const NODE: &str = "bench-node";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cleaner = match &args.cleaner {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("cleaner"),
    };
    if !cleaner.exists() {
        bail!(
            "{} not found: cargo build --release -p danm-cleaner",
            cleaner.display()
        );
    }
    let server = Target::start(Duration::ZERO).await?;
    let client = server.client().await;
    danm_bench::api::namespaces_and_danmnet(&client, &[NAMESPACE], NETWORK).await?;
    let node = Node {
        metadata: ObjectMeta {
            name: Some(NODE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await?;
    let started = Instant::now();
    let pods = create_pods(&client, args.pods).await?;
    preload_danmeps(
        &client,
        NAMESPACE,
        NETWORK,
        Some(&pods),
        args.endpoints,
        args.preload_concurrency,
    )
    .await?;
    eprintln!(
        "cleaner-bench: {} pods and {} DanmEps pre-loaded in {:.0} s",
        args.pods,
        args.endpoints,
        started.elapsed().as_secs_f64()
    );
    let kubeconfig = tempfile_path("cleaner-bench-kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let mut passes = Vec::new();
    for page in &args.page_sizes {
        passes.push(pass(&cleaner, &kubeconfig, *page)?);
    }
    let _ = std::fs::remove_file(&kubeconfig);
    println!(
        "{:#}",
        json!({
            "endpoints": args.endpoints,
            "pods": args.pods,
            "cpus": std::thread::available_parallelism().map_or(0, usize::from),
            "passes": passes,
        })
    );
    Ok(())
}

/// One `cleaner --once --dry-run` pass: wall time, peak memory, what it scanned and the
/// seconds of each list (from its debug log).
fn pass(
    cleaner: &std::path::Path,
    kubeconfig: &std::path::Path,
    page: u32,
) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let mut child = std::process::Command::new(cleaner)
        .args(["--once", "--dry-run", "-o", "json", "--log-format", "json"])
        .args([
            "--ipamd",
            "http://127.0.0.1:1",
            "--page-size",
            &page.to_string(),
        ])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "danm_cleaner=debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stderr = child.stderr.take().expect("piped");
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let mut peak_kib = 0u64;
    let status = loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            for line in status.lines() {
                if let Some(v) = line.strip_prefix("VmHWM:") {
                    let kib = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak_kib = peak_kib.max(kib);
                }
            }
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("piped"), &mut out)?;
    let logs = logs.join().unwrap_or_default();
    if !status.success() {
        bail!("cleaner failed: {status}: {logs}");
    }
    let report: serde_json::Value = serde_json::from_str(&out)?;
    let mut lists = serde_json::Map::new();
    for line in logs.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["fields"]["message"] == "listed" {
            let kind = v["fields"]["kind"].as_str().unwrap_or("?").to_owned();
            lists.insert(
                kind,
                json!({
                    "seconds": v["fields"]["seconds"],
                    "requests": v["fields"]["requests"],
                }),
            );
        }
    }
    Ok(json!({
        "page_size": page,
        "pass_seconds": (seconds * 100.0).round() / 100.0,
        "peak_rss_mib": peak_kib / 1024,
        "scanned": report["scanned"],
        "found": report["summary"]["found"],
        "lists": lists,
    }))
}

fn tempfile_path(stem: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{stem}-{}", std::process::id()))
}

/// `count` pods on the bench node; their names and UIDs.
async fn create_pods(client: &kube::Client, count: usize) -> anyhow::Result<Vec<(String, String)>> {
    let api = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let pod = danm_testkit::pods::pod(&format!("pod-{i}"), NODE, &[]);
        let created = api.create(&PostParams::default(), &pod).await?;
        out.push((format!("pod-{i}"), created.metadata.uid.unwrap_or_default()));
    }
    Ok(out)
}
