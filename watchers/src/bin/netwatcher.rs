//! `netwatcher`: keeps this node's VLAN (`<NetworkID>.<vlan>`) and VxLAN (`vx_<NetworkID>`)
//! host links as the networks ask. Runs on every node (a DaemonSet) with the host network
//! and NET_ADMIN.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use danm_runtime::{ClusterArgs, parse_duration, serve_admin_with, shutdown_signal};
use danm_watchers::netwatcher::{self, AttachmentNamespaces, Config, Metrics, NodeLinks};

/// Keeps this node's VLAN and VxLAN host links as the DanmNets, TenantNetworks and
/// ClusterNetworks ask: creates missing links, re-creates links whose parameters differ,
/// removes links of networks that are gone, and touches only links it created (alias
/// `danm-netwatcher`). What it cannot do is reported as an Event on the network. With
/// --attachment-namespaces, the NetworkAttachmentDefinitions of those namespaces get their
/// links too (DANM's `master`, `vlan` and `vxlan` keys), and their `master` is rewritten to
/// the link.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// This node's name (the Events' reporting instance).
    #[arg(long, env = "NODE_NAME", default_value = netwatcher::UNKNOWN_NODE)]
    node_name: String,
    /// Time between full syncs (a link deleted by hand comes back within it), e.g. `5m`.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    resync: Duration,
    /// Namespaces whose NetworkAttachmentDefinitions (Multus) get host links: a
    /// comma-separated list, or `*` for every namespace. Off by default: whoever may write
    /// NetworkAttachmentDefinitions there chooses VLAN and VxLAN ids on the nodes' devices,
    /// with no TenantConfig to limit them. Needs the `attachments` component's RBAC.
    #[arg(long, env = "DANM_ATTACHMENT_NAMESPACES", default_value = "")]
    attachment_namespaces: AttachmentNamespaces,
    /// Admin server: `/metrics`, `/healthz`, `/readyz` (plaintext, on the host network:
    /// bind it to the node's address, `$(NODE_IP):9091` in the DaemonSet).
    #[arg(long, default_value = "0.0.0.0:9091", value_parser = danm_runtime::parse_listen)]
    admin_listen: SocketAddr,
}

fn main() -> std::process::ExitCode {
    danm_runtime::main("netwatcher", run(danm_runtime::args::parse::<Args>()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.cluster.start().await?;
    let netlink = danm_netlink::Netlink::host().context("netlink")?;
    let links = NodeLinks::new(netlink.handle().clone());
    let metrics = Arc::new(Metrics::new());
    let served = Arc::clone(&metrics);
    let probed = Arc::clone(&metrics);
    let ready = move || std::future::ready(probed.readiness());
    serve_admin_with(args.admin_listen, move || served.encode(), ready).await?;
    tracing::info!(node = %args.node_name, admin = %args.admin_listen, attachment_namespaces = %args.attachment_namespaces, "keeping host links");
    let config = Config {
        resync: args.resync,
        node: args.node_name,
        attachments: args.attachment_namespaces,
    };
    netwatcher::run(client, links, config, metrics, shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}
