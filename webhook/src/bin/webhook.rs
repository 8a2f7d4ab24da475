//! webhook: DANM's admission webhook for the network APIs and TenantConfigs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use danm_runtime::tls::{ReloadingCert, TlsFiles};
use danm_webhook::metrics::Metrics;
use danm_webhook::review::Admission;
use danm_webhook::server;
use danm_webhook::tenants::{Tenants, TenantsConfig};
use danm_webhook::usage::Usage;

/// Validates and mutates DanmNet, TenantNetwork, ClusterNetwork and TenantConfig objects,
/// hands TenantNetworks their VLAN/VxLAN ids from the TenantConfig, and refuses to delete
/// or rewire networks pods are connected to. Serves DANM's paths (/netvalidation,
/// /confvalidation, /netdeletion) over HTTPS only, plus /metrics, /healthz and /readyz.
/// Talks to the API server with the in-cluster configuration or KUBECONFIG.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// HTTPS listen address.
    #[arg(long, env = "WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain to serve (reloaded when the file changes).
    #[arg(long, env = "WEBHOOK_TLS_CERT")]
    tls_cert: PathBuf,
    /// PEM private key of --tls-cert (reloaded when the file changes).
    #[arg(long, env = "WEBHOOK_TLS_KEY")]
    tls_key: PathBuf,
    /// How often the certificate files are checked for a change, in seconds.
    #[arg(long, env = "WEBHOOK_TLS_RELOAD_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    tls_reload_seconds: u64,
    /// A reserved VLAN/VxLAN id that no TenantNetwork carries (its create failed after
    /// admission) is freed once this many seconds old. Keep it above the API server's
    /// request timeout (60 s by default).
    #[arg(long, env = "WEBHOOK_RESERVATION_GRACE_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    reservation_grace_seconds: u64,
    /// How often reservations are reconciled against the TenantNetworks that exist, in
    /// seconds (a deleted TenantNetwork's id is freed at once, through the watch).
    #[arg(long, env = "WEBHOOK_RECONCILE_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    reconcile_seconds: u64,
    /// Log format (to standard output).
    #[arg(long, env = "WEBHOOK_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: danm_runtime::LogFormat,
    /// Admin HTTP listen address, e.g. 0.0.0.0:9090: /metrics (as on the HTTPS port, for
    /// scrapers that do not speak TLS), /healthz, /readyz. None by default.
    #[arg(long, env = "WEBHOOK_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("webhook: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webhook: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    danm_runtime::logging_to(args.log_format, std::io::stdout);
    let cert = ReloadingCert::start(
        TlsFiles {
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
        },
        Duration::from_secs(args.tls_reload_seconds),
    )?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = args.admin_listen {
        let served = Arc::clone(&metrics);
        danm_runtime::serve_admin(addr, move || served.encode()).await?;
    }
    let tenants = Tenants::start(
        client.clone(),
        Arc::clone(&metrics),
        TenantsConfig {
            grace: Duration::from_secs(args.reservation_grace_seconds),
            interval: Duration::from_secs(args.reconcile_seconds),
            ..TenantsConfig::default()
        },
    );
    let usage = Usage::start(client);
    let admission = Arc::new(Admission {
        tenants,
        usage,
        metrics,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, cert = %args.tls_cert.display(), "webhook serving");
    server::serve(
        listener,
        cert,
        server::router(admission),
        danm_runtime::shutdown_signal(),
    )
    .await;
    Ok(())
}
