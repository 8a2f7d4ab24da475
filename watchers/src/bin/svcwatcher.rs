//! `svcwatcher`: keeps EndpointSlices and Endpoints of the Services carrying DANM's
//! annotations, with the addresses of the selected pods' interfaces on the Service's network.
//! Replicas elect one active instance with a Lease.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use danm_runtime::{ClusterArgs, LeaseArgs, TermEnding, serve_admin, shutdown_signal};
use danm_watchers::svcwatcher::{self, Metrics};

/// Publishes Services on any network: for every Service with `danm.io/selector` and one of
/// `danm.io/network`, `danm.io/tenantNetwork`, `danm.io/clusterNetwork` (or DANM 4.x's
/// `danm.k8s.io/` prefix), keeps EndpointSlices (managed-by `svcwatcher.danm.io`) and
/// Endpoints with the selected pods' addresses on that network. Services without them are
/// never touched. Only the replica holding the Lease writes.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The Lease that elects the active replica.
    #[command(flatten)]
    lease: LeaseArgs,
    /// Admin server: `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, default_value = "0.0.0.0:9092")]
    admin_listen: SocketAddr,
}

fn main() -> std::process::ExitCode {
    danm_runtime::main("svcwatcher", run(danm_runtime::args::parse::<Args>()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.cluster.start().await?;
    let metrics = Arc::new(Metrics::new());
    let served = Arc::clone(&metrics);
    serve_admin(args.admin_listen, move || served.encode()).await?;
    let election = args.lease.elect(client.clone(), "danm-svcwatcher").await?;
    let term =
        |ending: TermEnding| svcwatcher::run(client.clone(), Arc::clone(&metrics), ending.wait());
    election.run(shutdown_signal(), term).await?;
    Ok(())
}
