//! `danm-certs`: creates the suite's CA and TLS Secrets, the CA ConfigMap and the webhooks'
//! `caBundle`, once, at install time (a Job); re-running it changes only what needs it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use danm_runtime::{LogFormat, kube_client, logging};
use danm_webhook::certs::{self, Options};

/// Creates the TLS material of DANM in one namespace, and keeps it so on every run.
///
/// Secret danm-ca (the CA, 10 years; generated once, then reused), the kubernetes.io/tls
/// Secrets danm-webhook-tls and danm-ipamd-tls (serving certificates for the Service's
/// names) and danm-cleaner-tls (client certificate, CN danm-cleaner), ConfigMap danm-ca
/// (the public CA, for the nodes), and the caBundle of every webhook of the Mutating- and
/// ValidatingWebhookConfiguration --webhook-configuration. A certificate is re-issued (valid
/// 1 year) when a key is missing, it is not signed by the CA, its names are wrong, or it
/// expires within --renew-before; otherwise nothing is written. Exit status 0 when
/// everything is in place, 1 otherwise.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Namespace of the Secrets, the ConfigMap and the Services the certificates name.
    #[arg(long, env = "POD_NAMESPACE", default_value = "danm-system")]
    namespace: String,
    /// Name of the Mutating- and ValidatingWebhookConfiguration whose caBundle is set.
    #[arg(
        long,
        env = "DANM_CERTS_WEBHOOK_CONFIGURATION",
        default_value = "danm-webhook"
    )]
    webhook_configuration: String,
    /// Fail when a webhook configuration does not exist (default: log it and go on, for
    /// installs that apply them after this Job).
    #[arg(long, env = "DANM_CERTS_REQUIRE_WEBHOOK_CONFIGURATIONS")]
    require_webhook_configurations: bool,
    /// Re-issue a certificate expiring within this, e.g. `30d`, `2w`, `720h`.
    #[arg(long, env = "DANM_CERTS_RENEW_BEFORE", default_value = "30d", value_parser = certs::parse_renew_before)]
    renew_before: Duration,
    /// Kubeconfig file (default: in-cluster config, else $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Log format (logs go to standard error): `text` or `json`.
    #[arg(
        long,
        env = "DANM_CERTS_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    logging(args.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let options = Options {
        namespace: args.namespace,
        webhook_configuration: args.webhook_configuration,
        renew_before: args.renew_before,
        require_webhook_configurations: args.require_webhook_configurations,
    };
    let report = certs::run(client, &options).await?;
    tracing::info!(namespace = %options.namespace, "done: {}", report.summary());
    Ok(())
}
