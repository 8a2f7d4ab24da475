//! webhook: DANM's admission webhook for the network APIs and TenantConfigs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use danm_runtime::tls::{ReloadingCert, ReloadingClientCas, TlsFiles};
use danm_webhook::links::Links;
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
    /// Answer the admission paths only for clients whose certificate chains to this PEM
    /// CA: the API server, which presents one when its AdmissionConfiguration gives
    /// webhooks a `kubeConfigFile` (see docs/security.md). Without it any caller that
    /// reaches the port may send reviews, and a TenantNetwork create review reserves an
    /// id (freed after --reservation-grace-seconds, bounded by
    /// --max-pending-per-namespace). Repeat for several CAs; re-read when the files
    /// change.
    #[arg(long, env = "WEBHOOK_CLIENT_CA", value_delimiter = ',')]
    client_ca: Vec<PathBuf>,
    /// With --client-ca: the common names accepted (repeatable); none: any certificate
    /// the CAs signed.
    #[arg(
        long,
        env = "WEBHOOK_CLIENT_NAME",
        value_delimiter = ',',
        requires = "client_ca"
    )]
    client_name: Vec<String>,
    /// Ids reserved for TenantNetworks of one namespace that no TenantNetwork carries yet
    /// (creates in flight, or reviews that never became objects): past it, a create of that
    /// namespace is answered "try again" until they are stored or freed. Above the largest
    /// burst of creates one namespace makes at once (the watch sees a stored TenantNetwork
    /// a moment after it is stored).
    #[arg(long, env = "WEBHOOK_MAX_PENDING_PER_NAMESPACE", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    max_pending_per_namespace: u64,
    /// Kubeconfig file (default: $KUBECONFIG or ~/.kube/config, else the in-cluster config).
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Log format (to standard error).
    #[arg(long, env = "WEBHOOK_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: danm_runtime::LogFormat,
    /// Admin HTTP listen address, e.g. 10.0.0.7:9093: /metrics (as on the HTTPS port, for
    /// scrapers that do not speak TLS), /healthz, /readyz. Plaintext on the host network:
    /// bind it to the node's address (`$(NODE_IP):9093` in the Deployment). None by
    /// default.
    #[arg(long, env = "WEBHOOK_ADMIN_LISTEN", value_parser = danm_runtime::parse_listen)]
    admin_listen: Option<SocketAddr>,
}

fn main() -> std::process::ExitCode {
    danm_runtime::main("webhook", run(danm_runtime::args::parse::<Args>()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    danm_runtime::logging(args.log_format);
    let cert = ReloadingCert::start(
        TlsFiles {
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
        },
        Duration::from_secs(args.tls_reload_seconds),
    )?;
    let client = danm_runtime::kube_client(args.kubeconfig.as_deref()).await?;
    let mut metrics = Metrics::new();
    metrics.track_certificate(&cert);
    let metrics = Arc::new(metrics);
    if let Some(addr) = args.admin_listen {
        let served = Arc::clone(&metrics);
        danm_runtime::serve_admin(addr, move || served.encode()).await?;
    }
    let links = Links::start(client.clone());
    let tenants = Tenants::start(
        client.clone(),
        Arc::clone(&links),
        Arc::clone(&metrics),
        TenantsConfig {
            grace: Duration::from_secs(args.reservation_grace_seconds),
            interval: Duration::from_secs(args.reconcile_seconds),
            max_pending_per_namespace: args.max_pending_per_namespace as usize,
            ..TenantsConfig::default()
        },
    );
    let usage = Usage::start(client);
    let callers = server::Callers {
        cas: if args.client_ca.is_empty() {
            None
        } else {
            Some(
                ReloadingClientCas::start(
                    args.client_ca.clone(),
                    true,
                    Duration::from_secs(args.tls_reload_seconds),
                )
                .context("--client-ca")?,
            )
        },
        names: args.client_name.clone(),
    };
    if callers.cas.is_none() {
        tracing::warn!(
            "no --client-ca: the admission paths answer any caller that reaches the port (see docs/security.md)"
        );
    }
    let admission = Arc::new(Admission {
        tenants,
        usage,
        links,
        metrics: Arc::clone(&metrics),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, cert = %args.tls_cert.display(), "webhook serving");
    server::serve(
        listener,
        cert,
        callers,
        server::router(admission),
        metrics,
        danm_runtime::shutdown_signal(),
    )
    .await;
    Ok(())
}
