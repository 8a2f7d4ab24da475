//! `admission-bench`: what the webhook adds to a create, through a real API server.
//!
//! Starts the real control plane (etcd with fsync, kube-apiserver), `--replicas` webhook
//! processes behind a round-robin forwarder, and measures `create` calls as a client sees
//! them: DanmNets before the webhook is registered (the API server alone), DanmNets with
//! it (validation and defaults), and TenantNetworks that each reserve a VxLAN id in the
//! TenantConfig (one by one, then `--concurrency` at a time). One JSON object is printed.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use danm_bench::stats::{Latencies, round2};
use danm_crds::{
    DanmNet, NetworkOptions, NetworkSpec, TenantConfig, TenantNetwork, TenantNetworkSpec,
};
use danm_testkit::control_plane::{ControlPlane, Options, free_port};
use kube::api::{Api, PostParams};
use serde_json::json;

/// Measures admission latency through a real API server.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Webhook replicas (processes).
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Creates per measured series.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Concurrent creates of the concurrent TenantNetwork series.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The webhook binary (default: beside this one).
    #[arg(long)]
    webhook: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.replicas == 0 || args.requests == 0 || args.concurrency == 0 {
        bail!("--replicas, --requests and --concurrency must be at least 1");
    }
    let webhook = match &args.webhook {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("webhook"),
    };
    if !webhook.exists() {
        bail!(
            "{} is missing: cargo build --release -p danm-webhook",
            webhook.display()
        );
    }
    let plane = ControlPlane::start(Options {
        etcd_fsync: true,
        ..Options::default()
    })
    .await
    .context("starting the real control plane (testkit/k8s/build.sh builds it)")?;
    let client = plane.client().await;
    let dir = tempfile::tempdir()?;
    let cert = plane.serving_cert(&["127.0.0.1"]);
    std::fs::write(dir.path().join("tls.crt"), &cert.cert_pem)?;
    std::fs::write(dir.path().join("tls.key"), &cert.key_pem)?;

    let dns: Api<DanmNet> = Api::namespaced(client.clone(), "default");
    let danmnet = |i: usize| {
        let mut net = DanmNet::new(&format!("dn-{i}"), Default::default());
        net.spec.network = NetworkSpec {
            network_id: format!("dn{i}"),
            network_type: "macvlan".into(),
            options: NetworkOptions {
                host_device: Some("ens3".into()),
                cidr: Some("10.0.0.0/24".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        net
    };
    // The first create after the CRDs are established waits for the API server's
    // discovery; it is not what a create costs.
    dns.create(&PostParams::default(), &danmnet(3 * args.requests))
        .await?;
    let mut without = Latencies::default();
    for i in 0..args.requests {
        let started = Instant::now();
        dns.create(&PostParams::default(), &danmnet(i)).await?;
        without.push(started.elapsed());
    }

    let mut processes = Vec::new();
    let mut backends = Vec::new();
    for i in 0..args.replicas {
        let port = free_port();
        let mut command = Command::new(&webhook);
        command
            .env("KUBECONFIG", plane.kubeconfig())
            .env("RUST_LOG", "warn")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"));
        processes.push(plane.spawn_beside(&format!("webhook-{i}"), command)?);
        backends.push(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let forwarder = danm_testkit::webhook::round_robin(backends)?;
    let configurations = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/base/webhook/webhook-configurations.yaml");
    danm_testkit::webhook::register(&plane, &configurations, forwarder).await?;
    let tc: TenantConfig = serde_json::from_value(json!({
        "apiVersion": "danm.io/v1", "kind": "TenantConfig", "metadata": {"name": "bench"},
        "hostDevices": [{"name": "ens4", "vniType": "vxlan", "vniRange": "1-1000000"}],
    }))?;
    Api::<TenantConfig>::all(client.clone())
        .create(&PostParams::default(), &tc)
        .await?;
    let tns: Api<TenantNetwork> = Api::namespaced(client.clone(), "default");
    let tenant_network = |i: usize| {
        TenantNetwork::new(
            &format!("tn-{i}"),
            TenantNetworkSpec {
                network: NetworkSpec {
                    network_id: format!("tn{i}"),
                    ..Default::default()
                },
            },
        )
    };
    // Until the API server calls the webhook and the webhook sees the TenantConfig.
    let probe = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = tns.create(&probe, &tenant_network(0)).await;
        if ready.is_ok_and(|tn| tn.spec.network.options.vxlan.is_some()) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the webhook never answered for TenantNetworks");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut with = Latencies::default();
    for i in 0..args.requests {
        let started = Instant::now();
        dns.create(&PostParams::default(), &danmnet(args.requests + i))
            .await?;
        with.push(started.elapsed());
    }
    let mut reserving = Latencies::default();
    for i in 0..args.requests {
        let started = Instant::now();
        tns.create(&PostParams::default(), &tenant_network(i))
            .await?;
        reserving.push(started.elapsed());
    }
    let writes_before = tenant_config_writes(&client).await?;
    let started = Instant::now();
    let results = futures::future::join_all((0..args.concurrency).map(|worker| {
        let tns = tns.clone();
        let (requests, concurrency) = (args.requests, args.concurrency);
        async move {
            let mut samples = Latencies::default();
            let mut i = requests + worker;
            while i < 2 * requests {
                let started = Instant::now();
                tns.create(&PostParams::default(), &tenant_network(i))
                    .await?;
                samples.push(started.elapsed());
                i += concurrency;
            }
            anyhow::Ok(samples)
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let writes_after = tenant_config_writes(&client).await?;
    let mut concurrent = Latencies::default();
    for r in results {
        concurrent.extend(r?);
    }
    let report = json!({
        "setup": {
            "api": "real kube-apiserver and etcd (fsync on)",
            "webhook_replicas": args.replicas,
            "requests": args.requests,
            "concurrency": args.concurrency,
            "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        },
        "danmnet_create_ms_without_webhook": without.summary(),
        "danmnet_create_ms_with_webhook": with.summary(),
        "tenantnetwork_create_reserving_an_id_ms": reserving.summary(),
        "tenantnetwork_create_reserving_an_id_concurrent": {
            "latency_ms": concurrent.summary(),
            "creates_per_second": round2(concurrent.len() as f64 / elapsed.as_secs_f64()),
            "tenant_config_writes": writes_after.0 - writes_before.0,
            "tenant_config_conflicts": writes_after.1 - writes_before.1,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(processes);
    Ok(())
}

/// TenantConfig writes the API server applied and refused with 409, from its own
/// `apiserver_request_total`.
async fn tenant_config_writes(client: &kube::Client) -> anyhow::Result<(u64, u64)> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let (mut applied, mut conflicts) = (0, 0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        if !labels.contains(r#"resource="tenantconfigs""#) || !labels.contains(r#"verb="PUT""#) {
            continue;
        }
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        if labels.contains(r#"code="200""#) {
            applied += n;
        } else if labels.contains(r#"code="409""#) {
            conflicts += n;
        }
    }
    Ok((applied, conflicts))
}
