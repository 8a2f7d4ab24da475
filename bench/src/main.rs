//! `bench`: ipamd against DANM's algorithm, side by side, on the same Kubernetes API server
//! and the same clients.
//!
//! One run starts a real etcd and kube-apiserver (see [`danm_bench::api`]; with
//! `--write-latency-ms`, testkit's fault proxy in front adds that delay to every write),
//! `--replicas` real ipamd processes on it (`--store kube`),
//! and `--clients` concurrent callers on one DanmNet of `--cidr`: they fill it with `--fill`
//! allocations, then churn (release the oldest, allocate a new one) `--churn` times. Then
//! the same load runs against DANM's algorithm ([`danm_baseline`]) on a fresh API server
//! of the same setup. One JSON object is printed.

mod danm_baseline;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use danm_crds::{AllocationShard, DanmNet, DanmNetSpec, NetworkOptions, NetworkSpec};
use ipnet::Ipv4Net;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use danm_bench::api::Target;
use danm_bench::load::{self, LoadResult, round2};
use danm_bench::replicas;

/// Measures ipamd (sharded, batched, replicated) against DANM's single-object algorithm.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// ipamd replicas (processes).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// The network's IPv4 CIDR (the pool is all of it).
    #[arg(long, default_value = "10.64.0.0/16")]
    cidr: Ipv4Net,
    /// Delay added to every write, in milliseconds, by testkit's fault proxy in front of the
    /// API server (0: none, the clients talk to the API server directly, and etcd's own
    /// commit latency is the write latency).
    #[arg(long, default_value_t = 0)]
    write_latency_ms: u64,
    /// Allocations of the fill phase.
    #[arg(long, default_value_t = 5000)]
    fill: usize,
    /// Release-then-allocate pairs of the churn phase.
    #[arg(long, default_value_t = 2500)]
    churn: usize,
    /// Skip the DANM baseline (for ipamd-only runs such as the 1,000,000-allocation one).
    #[arg(long)]
    no_baseline: bool,
    /// Skip ipamd (baseline only).
    #[arg(long)]
    no_ipamd: bool,
    /// The ipamd binary (default: beside this one).
    #[arg(long)]
    ipamd: Option<PathBuf>,
    /// Instead of DANM's algorithm, measure a peer beside danm-ipam (with one ipamd): each
    /// plugin's CNI binary called as a runtime calls it, --peer-adds ADDs then DELs at each
    /// of --peer-callers, a fresh API server per run (see danm_bench::peer).
    #[arg(long, value_enum)]
    peer: Option<Peer>,
    /// ADDs (then DELs) per peer run.
    #[arg(long, default_value_t = 1000)]
    peer_adds: usize,
    /// Concurrent callers of the peer runs, one run per plugin each.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    peer_callers: Vec<usize>,
    /// ipamd replicas behind danm-ipam in the peer runs.
    #[arg(long, default_value_t = 1)]
    peer_replicas: usize,
    /// The danm-ipam binary (default: beside this one).
    #[arg(long)]
    danm_ipam: Option<PathBuf>,
}

/// A peer `--peer` measures.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Peer {
    /// Whereabouts' CNI binary (built from the Go module proxy, testkit/peers/whereabouts).
    Whereabouts,
}

const NAMESPACE: &str = "default";
const NETWORK: &str = "bench";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Peer::Whereabouts) = args.peer {
        if args.peer_adds == 0 || args.peer_callers.contains(&0) {
            bail!("--peer-adds and every --peer-callers must be at least 1");
        }
        let config = danm_bench::peer::PeerConfig {
            adds: args.peer_adds,
            callers: args.peer_callers.clone(),
            replicas: args.peer_replicas,
            ipamd: replicas::locate_ipamd(args.ipamd.as_deref())?,
            danm_ipam: match &args.danm_ipam {
                Some(p) => p.clone(),
                None => replicas::locate_ipamd(None)?.with_file_name("danm-ipam"),
            },
        };
        let report = danm_bench::peer::run(&config).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if args.clients == 0 || args.replicas == 0 {
        bail!("--clients and --replicas must be at least 1");
    }
    let capacity = (1u64 << (32 - args.cidr.prefix_len())).saturating_sub(2);
    if (args.fill as u64) > capacity {
        bail!(
            "--fill {} does not fit in --cidr {} ({capacity} addresses)",
            args.fill,
            args.cidr
        );
    }
    let mut report = json!({
        "setup": {
            "replicas": args.replicas,
            "clients": args.clients,
            "cidr": args.cidr.to_string(),
            "api": "real kube-apiserver and etcd (fsync on)",
            "added_write_latency_ms": args.write_latency_ms,
            "fill": args.fill,
            "churn": args.churn,
            "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        }
    });
    if !args.no_ipamd {
        report["ipamd"] = run_ipamd(&args).await.context("ipamd run")?;
    }
    if !args.no_baseline {
        report["danm_baseline"] = run_danm(&args).await.context("DANM baseline run")?;
    }
    if let (Some(ours), Some(theirs)) = (report.get("ipamd"), report.get("danm_baseline")) {
        let ratio = |path: &[&str]| {
            let get = |v: &Value| path.iter().fold(v, |v, k| &v[k]).as_f64().unwrap_or(0.0);
            round2(get(ours) / get(theirs).max(f64::MIN_POSITIVE))
        };
        report["ratio"] = json!({
            "fill_allocations_per_second": ratio(&["fill", "allocations_per_second"]),
            "churn_operations_per_second": ratio(&["churn", "operations_per_second"]),
            "fill_p99_latency": ratio(&["fill", "allocate_ms", "p99"]),
        });
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn api_server(args: &Args) -> anyhow::Result<Target> {
    Target::start(Duration::from_millis(args.write_latency_ms)).await
}

async fn run_ipamd(args: &Args) -> anyhow::Result<Value> {
    let ipamd = replicas::locate_ipamd(args.ipamd.as_deref())?;
    let server = api_server(args).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let spec = NetworkSpec {
        network_id: NETWORK.into(),
        options: NetworkOptions {
            cidr: Some(args.cidr.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<DanmNet>::namespaced(server.client().await, NAMESPACE)
        .create(
            &PostParams::default(),
            &DanmNet::new(NETWORK, DanmNetSpec { network: spec }),
        )
        .await?;
    let replicas = replicas::start(&ipamd, &kubeconfig, args.replicas, 1).await?;
    let callers = Arc::new(replicas::IpamdCallers::new(&replicas, NAMESPACE, NETWORK));
    let before = server.counters().await?;
    let mut fill_writes = 0;
    let result = load::run(callers, args.clients, args.fill, args.churn, async || {
        fill_writes = server.counters().await?.writes - before.writes;
        Ok(())
    })
    .await?;
    let after = server.counters().await?;
    let churn_writes = after.writes - before.writes - fill_writes;

    let mut retries = 0;
    let mut shard_conflicts = 0;
    let mut rounds = 0;
    let mut peak_rss = Vec::new();
    for replica in &replicas {
        let c = replica.counters().await?;
        retries += c.retries;
        shard_conflicts += c.shard_conflicts;
        rounds += c.rounds;
        peak_rss.push(replica.peak_rss_bytes()?);
    }
    let shards = Api::<AllocationShard>::all(server.client().await)
        .list(&ListParams::default())
        .await?
        .items;
    let largest_shard = shards
        .iter()
        .map(|s| serde_json::to_vec(s).map(|v| v.len()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let in_shards: u64 = shards.iter().map(|s| u64::from(s.spec.allocated)).sum();
    if in_shards != result.held as u64 {
        bail!(
            "the shards hold {in_shards} addresses for {} live owners: counts must be exact",
            result.held
        );
    }
    let operations =
        result.fill.allocate.len() + result.churn.allocate.len() + result.churn.release.len();
    let mut out = phases(result, fill_writes, churn_writes)?;
    out["api_conflicts"] = json!(after.conflicts - before.conflicts);
    // Every request of the run (reads, watches' lists and the status writer's writes
    // included) per RPC served.
    out["api_requests_per_operation"] = json!(round2(
        (after.requests - before.requests) as f64 / operations.max(1) as f64
    ));
    out["shard_conflicts"] = json!(shard_conflicts);
    out["retries"] = json!(retries);
    out["rounds"] = json!(rounds);
    out["shards"] = json!(shards.len());
    out["largest_object_bytes"] = json!(largest_shard);
    out["peak_rss_mib"] = json!(
        peak_rss
            .iter()
            .map(|b| round2(*b as f64 / 1_048_576.0))
            .collect::<Vec<_>>()
    );
    Ok(out)
}

async fn run_danm(args: &Args) -> anyhow::Result<Value> {
    let server = api_server(args).await?;
    let baseline = Arc::new(
        danm_baseline::DanmBaseline::create(server.client().await, NAMESPACE, NETWORK, args.cidr)
            .await?,
    );
    let before = server.counters().await?;
    let mut fill_writes = 0;
    let result = load::run(
        Arc::clone(&baseline) as Arc<dyn load::Ipam>,
        args.clients,
        args.fill,
        args.churn,
        async || {
            fill_writes = server.counters().await?.writes - before.writes;
            Ok(())
        },
    )
    .await?;
    let after = server.counters().await?;
    let churn_writes = after.writes - before.writes - fill_writes;
    let mut out = phases(result, fill_writes, churn_writes)?;
    out["api_conflicts"] = json!(after.conflicts - before.conflicts);
    out["retries"] = json!(baseline.retries.load(std::sync::atomic::Ordering::Relaxed));
    out["largest_object_bytes"] = json!(baseline.object_bytes().await?);
    out["label"] = json!(
        "reference implementation of nokia/danm pkg/ipam's algorithm, written for this bench"
    );
    Ok(out)
}

/// The per-phase figures both runs share.
fn phases(mut r: LoadResult, fill_writes: u64, churn_writes: u64) -> anyhow::Result<Value> {
    if r.duplicates != 0 {
        bail!("{} addresses are held by two owners", r.duplicates);
    }
    let per_second = |n: usize, d: Duration| round2(n as f64 / d.as_secs_f64().max(1e-9));
    let fill_allocations = r.fill.allocate.len();
    let churn_ops = r.churn.allocate.len() + r.churn.release.len();
    Ok(json!({
        "fill": {
            "allocations": fill_allocations,
            "seconds": round2(r.fill.elapsed.as_secs_f64()),
            "allocations_per_second": per_second(fill_allocations, r.fill.elapsed),
            "allocate_ms": r.fill.allocate.summary(),
            "api_writes_per_allocation": round2(fill_writes as f64 / fill_allocations.max(1) as f64),
        },
        "churn": {
            "operations": churn_ops,
            "seconds": round2(r.churn.elapsed.as_secs_f64()),
            "operations_per_second": per_second(churn_ops, r.churn.elapsed),
            "allocate_ms": r.churn.allocate.summary(),
            "release_ms": r.churn.release.summary(),
            "api_writes_per_operation": round2(churn_writes as f64 / churn_ops.max(1) as f64),
        },
        "live_owners": r.held,
        "duplicates": r.duplicates,
    }))
}
