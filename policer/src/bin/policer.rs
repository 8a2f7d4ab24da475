//! `policer`: enforces DanmNetworkPolicies on every interface of this node's pods, with an
//! nftables table inside each pod's network namespace. Runs on every node (a DaemonSet)
//! with the host network, NET_ADMIN and access to the pods' namespaces.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use danm_policer::controller::{self, Config};
use danm_policer::metrics::Metrics;
use danm_runtime::{ClusterArgs, parse_duration, serve_admin_with, shutdown_signal};

/// Keeps, in the network namespace of every pod of this node that a DanmNetworkPolicy
/// selects, one nftables table (`inet danm_policer`) with what the policies allow on each
/// interface, replaced atomically when anything that affects the pod changes, and removed
/// when no policy selects it any more. Touches nothing else in the pods' namespaces.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// This node's name: the pods whose DanmEps name it as their host are this policer's.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// This node's addresses (repeat, or comma-separated; the DaemonSet gives
    /// `$(NODE_IP)`): traffic between a pod and its node is always allowed, as Kubernetes
    /// requires, so kubelet's probes reach isolated pods.
    #[arg(long = "node-address", env = "NODE_IP", value_delimiter = ',')]
    node_addresses: Vec<std::net::IpAddr>,
    /// The `nft` program (default: `nft` on the PATH).
    #[arg(long, env = "POLICER_NFT")]
    nft: Option<PathBuf>,
    /// The folder of the pods' network namespaces (where the runtime creates them); a
    /// DanmEp naming a namespace elsewhere is not entered.
    #[arg(long, env = "POLICER_NETNS_ROOT", default_value = "/var/run/netns")]
    netns_root: PathBuf,
    /// How long changes are gathered into one round, e.g. `100ms`.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    settle: Duration,
    /// How many pods' tables are applied at once (each one `nft` process in the pod's
    /// namespace).
    #[arg(long, env = "POLICER_PARALLEL", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    parallel: u64,
    /// The gate's unix socket, where the `danm` CNI plugin (with `policer` in
    /// 00-danm.conf) waits for a new pod's table before it builds the pod's interfaces, so a
    /// pod a policy selects is never reachable before its rules are loaded. Empty: no gate.
    #[arg(long, env = "POLICER_GATE_SOCKET", default_value = danm_proto::gate::DEFAULT_SOCKET)]
    gate_socket: String,
    /// How long a gate call waits for the pod and its DanmEps to reach the policer and its
    /// table to be applied, e.g. `7s`: less than DANM's 10 s for a whole ADD, so the plugin
    /// has time left to build the interfaces (past it the ADD fails; kubelet retries).
    #[arg(long, default_value = "7s", value_parser = parse_duration)]
    gate_wait: Duration,
    /// Admin server: `/metrics`, `/healthz`, `/readyz` (ready after the first full round;
    /// plaintext, on the host network: bind it to the node's address, `$(NODE_IP):9094` in
    /// the DaemonSet).
    #[arg(long, env = "POLICER_ADMIN_LISTEN", value_parser = danm_runtime::parse_listen)]
    admin_listen: Option<SocketAddr>,
}

fn main() -> std::process::ExitCode {
    danm_runtime::main("policer", run(danm_runtime::args::parse::<Args>()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.cluster.start().await?;
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = args.admin_listen {
        let (served, probed) = (Arc::clone(&metrics), Arc::clone(&metrics));
        let ready = move || std::future::ready(probed.readiness());
        serve_admin_with(addr, move || served.encode(), ready).await?;
    }
    tracing::info!(node = %args.node_name, "enforcing DanmNetworkPolicies");
    let config = Config {
        node: args.node_name,
        nft: args.nft,
        netns_root: args.netns_root,
        settle: args.settle,
        parallel: args.parallel as usize,
        node_addresses: args.node_addresses,
        gate_socket: Some(args.gate_socket)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        gate_wait: args.gate_wait,
    };
    controller::run(client, config, metrics, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
