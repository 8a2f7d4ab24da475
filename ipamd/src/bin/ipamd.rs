//! ipamd: serves the danm.ipam.v1 gRPC API on a store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use danm_ipamd::engine::{Engine, EngineConfig};
use danm_ipamd::worker::WorkerConfig;
use danm_ipamd::{networks, server, store};

/// The cluster-wide IP address management service of DANM.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Where state lives: `file:PATH` (embedded redb database), `memory` (lost on exit,
    /// for tests) or `kube` (the Kubernetes API: in-cluster config or KUBECONFIG).
    #[arg(
        long,
        env = "IPAMD_STORE",
        default_value = "file:/var/lib/danm/ipamd.redb"
    )]
    store: String,
    /// Folder of network manifests (DanmNet, TenantNetwork, ClusterNetwork YAML, as for
    /// kubectl) loaded into the store at start. Networks already in the store but not in
    /// the folder are kept.
    #[arg(long, env = "IPAMD_NETWORKS")]
    networks: Option<PathBuf>,
    /// ipamd's own namespace (with --store kube, ClusterNetwork shards live here).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    namespace: String,
    /// gRPC listen address.
    #[arg(long, env = "IPAMD_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    /// Log format: `text` or `json`.
    #[arg(long, env = "IPAMD_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Addresses held with no endpoint record (left by a crash between the shard write and
    /// the record write) are freed once seen so for this many seconds; 0 disables.
    #[arg(long, env = "IPAMD_ORPHAN_GRACE_SECONDS", default_value_t = 600)]
    orphan_grace_seconds: u64,
    /// Where this replica starts dynamic allocation in each pool, 0-65535 (a fraction of
    /// the pool): give replicas different values so they rarely touch the same shard.
    #[arg(long, env = "IPAMD_START_HINT", default_value_t = 0)]
    start_hint: u16,
    /// Most network connections one pod's `danm.io/interfaces` annotation may ask for; a
    /// longer list is refused before anything is allocated.
    #[arg(long, env = "IPAMD_MAX_INTERFACES_PER_POD", default_value_t = danm_ipamd::engine::DEFAULT_MAX_INTERFACES_PER_POD as u64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_interfaces_per_pod: u64,
    /// Serve gRPC over TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "IPAMD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "IPAMD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this PEM CA (mutual TLS; needs --tls-cert).
    #[arg(long, env = "IPAMD_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ipamd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain on one line: "what failed: why: why".
            eprintln!("ipamd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match args.log_format.as_str() {
        "json" => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        "text" => tracing_subscriber::fmt().with_env_filter(filter).init(),
        other => anyhow::bail!("--log-format {other:?} is not one of: text, json"),
    }

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            server::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            }
            .load()?,
        ),
        _ => None,
    };
    // Mistakes no retry can fix end ipamd at once; an unreachable store is waited for.
    store::select::check(&args.store)?;
    let manifests = match &args.networks {
        Some(dir) => networks::load_dir(dir)?,
        None => Vec::new(),
    };
    let mut pause = Duration::from_secs(1);
    let (store, engine) = loop {
        match start(&args, &manifests).await {
            Ok(started) => break started,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), retry_in = ?pause, "cannot start on the store yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = danm_runtime::shutdown_signal() => anyhow::bail!("stopped before the store could be used: {e:#}"),
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    };
    if args.orphan_grace_seconds > 0 {
        let grace = std::time::Duration::from_secs(args.orphan_grace_seconds);
        let engine = std::sync::Arc::clone(&engine);
        tokio::spawn(async move {
            // The first scan after one period: at start the DanmEp cache is still filling.
            let period = grace / 2;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tick.tick().await;
                if let Err(e) = engine.reclaim_orphans(grace).await {
                    tracing::warn!(error = %e, "orphan scan failed; next scan retries");
                }
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        store = %store.describe(),
        networks = engine.networks().len(),
        tls = tls.is_some(),
        mutual_tls = args.tls_client_ca.is_some(),
        "ipamd serving"
    );
    Ok(server::serve_with_tls(engine, listener, tls, danm_runtime::shutdown_signal()).await?)
}

/// Opens the store, puts the `--networks` manifests in it and starts the engine.
async fn start(
    args: &Args,
    manifests: &[store::NetworkObject],
) -> anyhow::Result<(Arc<dyn store::Store>, Arc<Engine>)> {
    let store = store::select::open(&args.store, &args.namespace).await?;
    if let Some(dir) = &args.networks {
        tracing::info!(count = manifests.len(), dir = %dir.display(), "loading networks");
    }
    for net in manifests {
        store.put_network(net.clone()).await?;
    }
    let engine = Engine::start(
        store.clone(),
        EngineConfig {
            worker: WorkerConfig {
                start_hint: args.start_hint,
                ..WorkerConfig::default()
            },
            max_interfaces_per_pod: args.max_interfaces_per_pod as usize,
        },
    )
    .await?;
    Ok((store, engine))
}
