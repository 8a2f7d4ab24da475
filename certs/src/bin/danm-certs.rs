//! `danm-certs`: creates the suite's CA and TLS Secrets, the CA ConfigMap and the webhooks'
//! `caBundle`, once, at install time (a Job); re-running it changes only what needs it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use danm_certs::{self as certs, Options, RotationPolicy};
use danm_runtime::{LogFormat, kube_client, logging};

/// Creates the TLS material of DANM in one namespace, renews it, and rotates its CA.
///
/// Secret danm-ca (the CA; during a rotation also the next or the previous CA, and the
/// trust bundle of them all), the kubernetes.io/tls Secrets danm-webhook-tls and
/// danm-ipamd-tls (serving certificates for the Service's names) and danm-cleaner-tls
/// (client certificate, CN danm-cleaner), each with the trust bundle as ca.crt, ConfigMap
/// danm-ca (the trust bundle, for the nodes), and the caBundle of every webhook of the
/// Mutating- and ValidatingWebhookConfiguration --webhook-configuration.
///
/// A certificate is re-issued when a key is missing, it is not signed by the CA that
/// signs now, its names are wrong, or it expires within --renew-before. The CA is rotated
/// with an overlap: --ca-renew-before its end a next CA joins the trust bundle,
/// --ca-overlap later it signs (every certificate re-issued), and the previous CA leaves
/// the bundle one --ca-overlap after that. Otherwise nothing is written. Run it once (the
/// install Job), on a schedule (the CronJob), or with --every. Exit status 0 when
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
    /// How long an issued certificate is valid (never past its CA's end).
    #[arg(long, env = "DANM_CERTS_LEAF_VALIDITY", default_value = "365d", value_parser = certs::parse_renew_before)]
    leaf_validity: Duration,
    /// How long a new CA is valid.
    #[arg(long, env = "DANM_CERTS_CA_VALIDITY", default_value = "3650d", value_parser = certs::parse_renew_before)]
    ca_validity: Duration,
    /// Publish the next CA this long before the current one ends.
    #[arg(long, env = "DANM_CERTS_CA_RENEW_BEFORE", default_value = "365d", value_parser = certs::parse_renew_before)]
    ca_renew_before: Duration,
    /// How long the next CA is trusted before it signs, and the previous one after: at
    /// least the time the trust bundle takes to reach every node and client (kubelet's
    /// volume sync, the CNI installer's copy, ipamd's and the webhook's reload).
    #[arg(long, env = "DANM_CERTS_CA_OVERLAP", default_value = "1d", value_parser = certs::parse_renew_before)]
    ca_overlap: Duration,
    /// Run again and again, this long apart, until SIGTERM (default: run once).
    #[arg(long, env = "DANM_CERTS_EVERY", value_parser = certs::parse_renew_before)]
    every: Option<Duration>,
    /// Kubeconfig file (default: $KUBECONFIG or ~/.kube/config, else the in-cluster config).
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

fn main() -> ExitCode {
    danm_runtime::main("danm-certs", run(danm_runtime::args::parse::<Args>()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    logging(args.log_format);
    let options = Options {
        namespace: args.namespace,
        webhook_configuration: args.webhook_configuration,
        renew_before: args.renew_before,
        leaf_validity: args.leaf_validity,
        rotation: RotationPolicy {
            ca_validity: args.ca_validity,
            renew_before: args.ca_renew_before,
            overlap: args.ca_overlap,
        },
        require_webhook_configurations: args.require_webhook_configurations,
    };
    options
        .rotation
        .check(options.renew_before)
        .map_err(anyhow::Error::msg)?;
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let Some(every) = args.every else {
        let report = certs::run(client, &options).await?;
        tracing::info!(namespace = %options.namespace, "done: {}", report.summary());
        return Ok(());
    };
    let shutdown = danm_runtime::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        match certs::run(client.clone(), &options).await {
            Ok(report) if report.changed() => {
                tracing::info!(namespace = %options.namespace, "done: {}", report.summary())
            }
            Ok(_) => {}
            // A lost race with another run, or an API error: the next round tries again.
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "this round failed; the next one tries again"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
}
