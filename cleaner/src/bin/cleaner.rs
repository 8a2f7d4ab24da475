//! `cleaner`: frees the addresses and DanmEps that dead pods, nodes and networks left
//! behind, through ipamd. `--once` for a CronJob, `--watch` for a Deployment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgGroup, Parser, ValueEnum};
use danm_cleaner::metrics::Metrics;
use danm_cleaner::{Freer, PassConfig, Report, Sightings, pass};
use danm_proto::client::{Client, Settings};
use danm_runtime::{
    ClusterArgs, LeaseArgs, TermEnding, parse_duration, serve_admin, shutdown_signal,
};

/// Frees the addresses and DanmEps that dead pods, nodes and networks left behind.
///
/// A DanmEp is leaked when its pod is gone, when the pod of its name is another pod (another
/// UID), when its pod has finished, when its node is gone, or when its network is gone; an
/// address set in a shard that no DanmEp names is leaked once it is older than --grace. A pod
/// on a NotReady node keeps its addresses. Every finding is read and judged again right before
/// it is freed, and freed through ipamd with its owner key, so an address that has gone to a
/// new owner is never freed. Exit status of --once: 0 when everything found was settled, 2
/// when something could not be freed, 1 when the cluster could not be read.
#[derive(Parser, Debug)]
#[command(version)]
#[command(group(ArgGroup::new("mode").required(true).args(["once", "watch"])))]
struct Args {
    /// Run one pass and exit (for a CronJob).
    #[arg(long)]
    once: bool,
    /// Run a pass every --interval while holding the Lease (for a Deployment).
    #[arg(long)]
    watch: bool,
    /// Free nothing: re-check every finding and print the same report.
    #[arg(long)]
    dry_run: bool,
    /// Also free, in Calico's Kubernetes datastore (its IPAMBlocks and IPAMHandles), the
    /// addresses Calico's IPAM gave leaked DanmEps of networks delegated to Calico
    /// (NetworkType `calico`), as danm-utils' cleaner did. Needs the `calico` component's
    /// RBAC.
    #[arg(long)]
    calico: bool,
    /// Report format on standard output: `text` (one line per finding and a summary line)
    /// or `json`.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Output,
    /// How old an address that no DanmEp names must be before it is freed (an allocation is
    /// in that state for a moment between ipamd's shard write and its DanmEp write), e.g.
    /// `10m`, `90s`, `0s`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    grace: Duration,
    /// Time between passes with --watch, e.g. `2m`.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    interval: Duration,
    /// Findings re-checked and freed at a time.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    concurrency: u64,
    /// Objects per list request (each page is dropped once read: memory stays bounded).
    #[arg(long, default_value_t = danm_cleaner::survey::DEFAULT_PAGE, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    page_size: u32,
    /// ipamd's gRPC address: `http://host:port`, or `https://host:port` with --ipamd-ca
    /// (`host:port` alone: https with --ipamd-ca, else http).
    #[arg(long, env = "DANM_IPAMD", default_value = "http://127.0.0.1:50051")]
    ipamd: String,
    #[command(flatten)]
    ipamd_tls: danm_proto::client::TlsArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The Lease that elects the one replica that cleans (--watch).
    #[command(flatten)]
    lease: LeaseArgs,
    /// Admin server with --watch: `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, default_value = "0.0.0.0:9090")]
    admin_listen: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    danm_runtime::main("cleaner", run(danm_runtime::args::parse::<Args>()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.cluster.start().await?;
    let freer = Freer {
        client,
        ipamd: connect_ipamd(&args)?,
        dry_run: args.dry_run,
        calico: args.calico,
    };
    let config = PassConfig {
        grace: args.grace,
        concurrency: args.concurrency as usize,
        page: args.page_size,
    };
    let metrics = Arc::new(Metrics::new());
    if args.once {
        let report = pass(&freer, &config, &mut Sightings::default(), &metrics).await?;
        print_report(&report, args.output)?;
        if report.failed() > 0 {
            std::process::exit(2);
        }
        return Ok(());
    }
    watch(&args, &freer, &config, metrics).await
}

fn print_report(report: &Report, output: Output) -> anyhow::Result<()> {
    tracing::info!("{}", report.summary());
    match output {
        Output::Text => print!("{}", report.text()),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report.json())?),
    }
    Ok(())
}

/// Passes every interval while this replica holds the Lease, until SIGTERM.
async fn watch(
    args: &Args,
    freer: &Freer,
    config: &PassConfig,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let served = Arc::clone(&metrics);
    serve_admin(args.admin_listen, move || served.encode()).await?;
    let election = args
        .lease
        .elect(freer.client.clone(), "danm-cleaner")
        .await?;
    // Kept across terms: how long each orphan address has been seen.
    let sightings = tokio::sync::Mutex::new(Sightings::default());
    let term = |ending: TermEnding| {
        let (sightings, metrics) = (&sightings, &metrics);
        async move {
            let mut sightings = sightings.lock().await;
            while !ending.is_ending() {
                match pass(freer, config, &mut sightings, metrics).await {
                    Ok(report) => print_report(&report, args.output)
                        .unwrap_or_else(|e| tracing::warn!(error = %e, "cannot print the report")),
                    Err(e) => {
                        metrics.pass_failed();
                        tracing::warn!(error = %e, "pass failed; the next one retries");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(args.interval) => {}
                    _ = ending.clone().wait() => {}
                }
            }
        }
    };
    election.run(shutdown_signal(), term).await?;
    Ok(())
}

fn connect_ipamd(args: &Args) -> anyhow::Result<Client> {
    let settings = Settings::new(&args.ipamd, &format!("cleaner-{}", std::process::id()))
        .with_tls(args.ipamd_tls.tls());
    // Connected on first use: a pass that finds nothing needs no ipamd.
    Ok(danm_proto::client::connect_lazy(&settings)?)
}
