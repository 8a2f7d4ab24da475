//! Process plumbing shared by every long-running binary (ipamd, webhook, netwatcher,
//! cleaner), so that each `main.rs` only wires things together:
//!
//! * [`logging`]: `tracing` to standard error, as text or JSON, filtered by `RUST_LOG`
//!   (default `info`);
//! * [`kube_client`]: a client from `--kubeconfig`, else `$KUBECONFIG` or `~/.kube/config`,
//!   else the in-cluster config ([`kube_config`]: the same with a `--context`, and the
//!   context's namespace);
//! * [`serve_admin`]: the admin server, `/metrics` (Prometheus text), `/healthz` and
//!   `/readyz`, on a port of its own;
//! * [`main`]: a binary's async body run, and its outcome turned into the exit status;
//! * [`shutdown_signal`]: SIGTERM or Ctrl-C, for graceful shutdown;
//! * [`parse_duration`]: durations as flags take them (`10m`, `90s`);
//! * [`ClusterArgs`]: the `--kubeconfig` and `--log-format` flags every controller takes;
//! * [`lead`]: Lease leader election (`kube-lease-manager`) and "run while leading", for
//!   replicated writers;
//! * [`metrics`]: registering Prometheus metrics and rendering them;
//! * [`accept`]: taking TLS connections: accept with retries, the handshake with a timeout
//!   and a failure counter (ipamd's gRPC port, the webhook);
//! * [`tls`]: a serving certificate reloaded when its files change (webhook, ipamd);
//! * [`args`]: a binary's flags parsed, with `--completions SHELL` (its shell completion
//!   script) added to every binary;
//! * [`index`]: a watch-fed index (relists and events handed to the index's code, and
//!   whether every kind has been listed).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;

pub mod accept;
pub mod args;
pub mod index;
pub mod lead;
pub mod metrics;
pub mod tls;

pub use lead::{Election, LeaseArgs, TermEnding, elect};

/// Why the plumbing failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No usable Kubernetes configuration.
    #[error("Kubernetes configuration: {0}")]
    Kubeconfig(String),
    /// The Lease cannot be read or created.
    #[error("Lease {lease}: {reason}")]
    Lease {
        /// `namespace/name`.
        lease: String,
        /// Why.
        reason: String,
    },
    /// The admin address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Log format, as `--log-format` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for containers).
    Json,
}

/// The flags every controller takes: where the cluster is and how to log (flatten them
/// into the binary's arguments).
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: $KUBECONFIG or ~/.kube/config, else the in-cluster config).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Log format (logs go to standard error): `text` or `json`.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl ClusterArgs {
    /// Starts logging as `--log-format` says, then connects as `--kubeconfig` says.
    pub async fn start(&self) -> Result<kube::Client, RuntimeError> {
        logging(self.log_format);
        kube_client(self.kubeconfig.as_deref()).await
    }
}

/// Logs to standard error (every binary of the suite: one place to look, and standard
/// output stays for what a command prints) in `format`, filtered by `RUST_LOG` (default
/// `info`).
pub fn logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
}

/// A Kubernetes client from `kubeconfig`, else `$KUBECONFIG` or `~/.kube/config`, else the
/// in-cluster config (kube's `Config::infer` order).
pub async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, RuntimeError> {
    client_from(kube_config(kubeconfig, None).await?)
}

/// The Kubernetes configuration [`kube_client`] uses, with `context` instead of the
/// kubeconfig's current one when given (kubectl's `--context`); its `default_namespace` is
/// the context's namespace, as kubectl takes it.
pub async fn kube_config(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Config, RuntimeError> {
    let fail = |e: &dyn std::fmt::Display| RuntimeError::Kubeconfig(e.to_string());
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    match (kubeconfig, context) {
        (Some(path), _) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                RuntimeError::Kubeconfig(format!("--kubeconfig {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| fail(&e))
        }
        (None, Some(context)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| RuntimeError::Kubeconfig(format!("--context {context}: {e}"))),
        (None, None) => kube::Config::infer().await.map_err(|e| {
            RuntimeError::Kubeconfig(format!(
                "none found ($KUBECONFIG, ~/.kube/config or in-cluster): {e}"
            ))
        }),
    }
}

/// A client for `config`.
pub fn client_from(config: kube::Config) -> Result<kube::Client, RuntimeError> {
    kube::Client::try_from(config).map_err(|e| RuntimeError::Kubeconfig(e.to_string()))
}

/// Serves `/metrics` (what `metrics` renders), `/healthz` and `/readyz` on `addr` in the
/// background; the address it listens on.
pub async fn serve_admin(
    addr: SocketAddr,
    metrics: impl Fn() -> String + Send + Sync + 'static,
) -> Result<SocketAddr, RuntimeError> {
    serve_admin_with(addr, metrics, || async { Ok(()) }).await
}

/// As [`serve_admin`], with `/readyz` answering 503 and the reason while `ready` says not.
pub async fn serve_admin_with<F, R>(
    addr: SocketAddr,
    metrics: impl Fn() -> String + Send + Sync + 'static,
    ready: F,
) -> Result<SocketAddr, RuntimeError>
where
    F: Fn() -> R + Clone + Send + Sync + 'static,
    R: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RuntimeError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| RuntimeError::Listen { addr, source })?;
    let metrics = Arc::new(metrics);
    let readyz = move || {
        let ready = ready.clone();
        async move {
            match ready().await {
                Ok(()) => (axum::http::StatusCode::OK, "ok".to_owned()),
                Err(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, why),
            }
        }
    };
    let router = Router::new()
        .route("/metrics", get(move || async move { metrics() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    tracing::info!(admin = %bound, "serving /metrics, /healthz, /readyz");
    Ok(bound)
}

/// Runs a binary's body on a multi-threaded Tokio runtime and ends the process the suite's
/// way: exit 0 when it succeeds; else one line on standard error, `<name>: <what failed:
/// why: why>` (the error's whole chain, as `{:#}` prints an `anyhow::Error`), and exit 1.
/// Every long-running binary's `main` is this call.
pub fn main<E, F>(name: &str, body: F) -> std::process::ExitCode
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<(), E>>,
{
    let outcome = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(body),
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// A duration as flags take it: `10m`, `90s`, `1h 30m`, `0s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration like 10m or 90s: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{text:?} is negative"))
}

/// A listen address as flags take it: `10.0.0.7:9090`, `[fd00::7]:9090`, or
/// `fd00::7:9090` (what `$(NODE_IP):9090` becomes in a manifest on an IPv6 node: the
/// port is always the part after the last colon).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad =
        || format!("{text:?} is not an address and port like 10.0.0.7:9090 or [fd00::7]:9090");
    let (ip, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_read_as_manifests_write_them() {
        assert_eq!(
            parse_listen("10.0.0.7:9090"),
            Ok("10.0.0.7:9090".parse().unwrap())
        );
        assert_eq!(
            parse_listen("[fd00::7]:9090"),
            Ok("[fd00::7]:9090".parse().unwrap())
        );
        assert_eq!(
            parse_listen("fd00::7:9090"),
            Ok("[fd00::7]:9090".parse().unwrap())
        );
        for bad in [
            "9090",
            "node:9090",
            "10.0.0.7",
            "10.0.0.7:x",
            "$(NODE_IP):9090",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("soon").unwrap_err().contains("10m"));
    }
}
