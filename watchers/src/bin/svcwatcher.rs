//! `svcwatcher`: keeps EndpointSlices and Endpoints of the Services carrying DANM's
//! annotations, with the addresses of the selected pods' interfaces on the Service's network.
//! Replicas elect one active instance with a Lease.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use danm_runtime::{LogFormat, elect, kube_client, logging, serve_admin, shutdown_signal};
use danm_watchers::svcwatcher::{self, Metrics};

/// Publishes Services on any network: for every Service with `danm.io/selector` and one of
/// `danm.io/network`, `danm.io/tenantNetwork`, `danm.io/clusterNetwork` (or DANM 4.x's
/// `danm.k8s.io/` prefix), keeps EndpointSlices (managed-by `svcwatcher.danm.io`) and
/// Endpoints with the selected pods' addresses on that network. Services without them are
/// never touched. Only the replica holding the Lease writes.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Kubeconfig file (default: in-cluster config, else $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    namespace: String,
    /// Name of the Lease that elects the active replica.
    #[arg(long, default_value = "danm-svcwatcher")]
    lease: String,
    /// This replica's identity in the Lease (default: the pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Admin server: `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, default_value = "0.0.0.0:9092")]
    admin_listen: SocketAddr,
    /// Log format (standard error): `text` or `json`.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    logging(args.log_format);
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::new());
    let served = Arc::clone(&metrics);
    serve_admin(args.admin_listen, move || served.encode()).await?;
    let election = elect(
        client.clone(),
        &args.namespace,
        &args.lease,
        args.identity.clone(),
    )
    .await?;
    let (identity, mut leader, lease_task) = (election.identity, election.leading, election.task);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    'terms: loop {
        while !*leader.borrow_and_update() {
            tracing::info!(%identity, lease = %args.lease, "waiting for the Lease");
            tokio::select! {
                changed = leader.changed() => changed.context("the Lease task ended")?,
                _ = &mut shutdown => break 'terms,
            }
        }
        tracing::info!(%identity, "holding the Lease: publishing Services");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut term = tokio::spawn(svcwatcher::run(
            client.clone(),
            Arc::clone(&metrics),
            async {
                let _ = stopped.await;
            },
        ));
        // (shutting down, the controller still running)
        let (done, running) = loop {
            tokio::select! {
                ended = &mut term => {
                    tracing::error!(?ended, "the controller stopped; restarting it in 1 s");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    break (false, false);
                }
                changed = leader.changed() => {
                    if changed.is_err() || !*leader.borrow_and_update() {
                        tracing::warn!("lost the Lease: stopping");
                        break (false, true);
                    }
                }
                _ = &mut shutdown => break (true, true),
            }
        };
        let _ = stop.send(());
        if running {
            let _ = term.await;
        }
        if done {
            break;
        }
    }
    tracing::info!("stopping: releasing the Lease");
    drop(leader);
    let _ = lease_task.await;
    Ok(())
}
