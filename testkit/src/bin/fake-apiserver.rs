//! fake-apiserver: the Kubernetes API stand-in as a process, for multi-process tests and
//! the bench. Test-only: it has no authentication and keeps everything in memory.

use std::time::Duration;

use clap::Parser;
use danm_testkit::apiserver::{ApiServer, Options};

/// A Kubernetes API stand-in over plain HTTP (test-only).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Listen address (loopback by default).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Write a kubeconfig for this server here.
    #[arg(long)]
    kubeconfig_out: Option<std::path::PathBuf>,
    /// Delay added to every write, in milliseconds (an etcd commit).
    #[arg(long, default_value_t = 0)]
    write_latency_ms: u64,
    /// Inject every fault (500s, conflicts, timeouts, dropped watches) at this rate per
    /// million requests.
    #[arg(long, default_value_t = 0)]
    fault_ppm: u32,
    /// How long an injected timeout hangs, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_delay_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let server = ApiServer::start_on(
        &args.listen,
        Options {
            write_latency: Duration::from_millis(args.write_latency_ms),
            ..Options::default()
        },
    )
    .await?;
    server.faults().set_all(args.fault_ppm);
    server
        .faults()
        .timeout_delay_ms
        .store(args.timeout_delay_ms, std::sync::atomic::Ordering::Relaxed);
    if let Some(path) = &args.kubeconfig_out {
        std::fs::write(path, server.kubeconfig())?;
    }
    println!("{}", server.url());
    tracing::info!(url = %server.url(), "fake apiserver serving");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
