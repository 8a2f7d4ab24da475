//! `policer-bench`: the policer's controller on the real API server with `--pods` pods on
//! one node (each a real network namespace, one interface recorded by a DanmEp) and
//! `--policies` DanmNetworkPolicies. Measures the first round over every pod, the time
//! until the policies reach every pod (each pod's first table), then the time from one
//! policy change that touches `--touched` pods to the last of them applied (replacing their
//! tables) and how many pods the rounds of that change looked at, the time of one apply in
//! each phase (one nft transaction) and the process's memory. As root.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use danm_bench::api::Target;
use danm_crds::{DanmEp, DanmEpIface, DanmEpSpec, DanmNetworkPolicy};
use danm_policer::controller::{Config, run};
use danm_policer::metrics::Metrics;
use danm_testkit::netns::Netns;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;

/// Times the policer on one node with many pods and policies.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Pods on the node.
    #[arg(long, default_value_t = 1_000)]
    pods: usize,
    /// Policies, each selecting pods/policies pods.
    #[arg(long, default_value_t = 100)]
    policies: usize,
    /// Pods the measured change touches.
    #[arg(long, default_value_t = 100)]
    touched: usize,
    /// Tables applied at once (the policer's --parallel).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
}

const NS: &str = "policer-bench";
const NODE: &str = "bench-node";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !danm_testkit::netns::is_root() {
        bail!("policer-bench makes network namespaces: run it as root");
    }
    if args.touched > args.pods || args.policies == 0 {
        bail!("--touched must be at most --pods, and --policies at least 1");
    }
    let server = Target::start(Duration::ZERO).await?;
    let client = server.client().await;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
        )
        .await?;
    let started = Instant::now();
    let namespaces: Vec<Netns> = (0..args.pods).map(|_| Netns::new("pb")).collect();
    let pods_api = Api::<Pod>::namespaced(client.clone(), NS);
    let eps_api = Api::<DanmEp>::namespaced(client.clone(), NS);
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..args.pods)
        .map(|i| {
            let (pods_api, eps_api) = (pods_api.clone(), eps_api.clone());
            let netns = namespaces[i].path();
            let group = format!("p{}", i % args.policies);
            let hot = if i < args.touched { "yes" } else { "no" };
            async move {
                let name = format!("pod-{i}");
                let pod = danm_testkit::pods::pod(&name, NODE, &[("group", &group), ("hot", hot)]);
                pods_api.create(&PostParams::default(), &pod).await?;
                let ep = DanmEp::new(
                    &format!("{name}-0"),
                    DanmEpSpec {
                        network_name: "bench".into(),
                        network_type: "macvlan".into(),
                        interface: DanmEpIface {
                            name: "eth0".into(),
                            address: format!(
                                "10.{}.{}.{}/8",
                                100 + (i >> 16),
                                (i >> 8) & 255,
                                i & 255
                            ),
                            ..Default::default()
                        },
                        host: NODE.into(),
                        pod: name,
                        netns,
                        api_type: "DanmNet".into(),
                        ..Default::default()
                    },
                );
                eps_api.create(&PostParams::default(), &ep).await?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let setup_seconds = started.elapsed().as_secs_f64();

    let rss_before = rss_kib()?;
    let metrics = Arc::new(Metrics::new());
    let config = Config {
        node: NODE.into(),
        nft: None,
        netns_root: "/var/run/netns".into(),
        settle: Duration::from_millis(100),
        parallel: args.parallel,
        node_addresses: Vec::new(),
        gate_socket: None,
        gate_wait: Duration::from_secs(20),
    };
    let started = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(run(client.clone(), config, Arc::clone(&metrics), async {
        let _ = stopped.await;
    }));
    wait(&metrics, "the first round", |m| m.readiness().is_ok()).await?;
    let first_round = started.elapsed().as_secs_f64();
    let clear = apply_seconds(&metrics);

    // Every pod selected by one policy, allowing ingress from the next group on TCP 80.
    let policies = Api::<DanmNetworkPolicy>::namespaced(client.clone(), NS);
    let before = applies_ok(&metrics);
    let started = Instant::now();
    for k in 0..args.policies {
        let policy = serde_json::from_value(json!({
            "apiVersion": "danm.io/v1", "kind": "DanmNetworkPolicy",
            "metadata": {"name": format!("policy-{k}")},
            "spec": {"podSelector": {"matchLabels": {"group": format!("p{k}")}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"group": format!("p{}", (k + 1) % args.policies)}}}],
                                  "ports": [{"port": 80}]}]}
        }))?;
        policies.create(&PostParams::default(), &policy).await?;
    }
    let pods = args.pods as u64;
    wait(&metrics, "every pod's table", |m| {
        applies_ok(m) >= before + pods
    })
    .await?;
    let all_policies = started.elapsed().as_secs_f64();
    let created = apply_seconds(&metrics);

    // One change touching `touched` pods: a policy selecting the hot ones.
    let before = applies_ok(&metrics);
    let evaluated_before = value(&metrics, "danm_policer_pods_evaluated_total");
    let started = Instant::now();
    let policy = serde_json::from_value(json!({
        "apiVersion": "danm.io/v1", "kind": "DanmNetworkPolicy",
        "metadata": {"name": "hot"},
        "spec": {"podSelector": {"matchLabels": {"hot": "yes"}}, "policyTypes": ["Egress"]}
    }))?;
    policies.create(&PostParams::default(), &policy).await?;
    let touched = args.touched as u64;
    wait(&metrics, "the touched pods' tables", |m| {
        applies_ok(m) >= before + touched
    })
    .await?;
    let change = started.elapsed().as_secs_f64();
    let evaluated = value(&metrics, "danm_policer_pods_evaluated_total") - evaluated_before;
    let rss_after = rss_kib()?;
    let replaced = apply_seconds(&metrics);
    let _ = stop.send(());
    controller.await??;
    drop(namespaces);
    println!(
        "{:#}",
        json!({
            "pods": args.pods,
            "policies": args.policies,
            "touched": args.touched,
            "parallel": args.parallel,
            "setup_seconds": round(setup_seconds),
            "first_round_seconds": round(first_round),
            "all_policies_applied_seconds": round(all_policies),
            "change_applied_seconds": round(change),
            "change_pods_evaluated": evaluated,
            "first_round_ms_per_pod": mean_ms((0.0, 0.0), clear),
            "first_table_ms_per_pod": mean_ms(clear, created),
            "replace_ms_per_pod": mean_ms(created, replaced),
            "applies": replaced.1,
            "controller_rss_mib": round((rss_after.saturating_sub(rss_before)) as f64 / 1024.0),
            "process_rss_mib": round(rss_after as f64 / 1024.0),
            "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        })
    );
    Ok(())
}

/// The mean duration, in ms, of the applies between two readings of (sum, count).
fn mean_ms(from: (f64, f64), to: (f64, f64)) -> f64 {
    let count = to.1 - from.1;
    round(if count > 0.0 {
        (to.0 - from.0) / count * 1000.0
    } else {
        0.0
    })
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Waits (at most 10 minutes) until `done` holds of the metrics.
async fn wait(
    metrics: &Metrics,
    what: &str,
    done: impl Fn(&Metrics) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !done(metrics) {
        if Instant::now() > deadline {
            bail!(
                "{what} not applied within 10 minutes:\n{}",
                metrics.encode()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A series' value in the metrics' text.
fn value(metrics: &Metrics, series: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn applies_ok(metrics: &Metrics) -> u64 {
    value(metrics, "danm_policer_applies_total{result=\"ok\"}") as u64
}

fn apply_seconds(metrics: &Metrics) -> (f64, f64) {
    (
        value(metrics, "danm_policer_apply_seconds_sum"),
        value(metrics, "danm_policer_apply_seconds_count"),
    )
}

/// This process's resident memory, in KiB.
fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .context("no VmRSS in /proc/self/status")
}
