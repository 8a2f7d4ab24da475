//! showalloc: shows who holds which address of a network, in DANM's format, asking a
//! running ipamd. DANM's single-dash flags (`-dnet`, `-showCIDR`) work too.

use clap::Parser;
use danm_ipamd::showalloc::render;
use danm_proto::v1 as pb;
use danm_proto::v1::ipam_client::IpamClient;

/// Shows the IP allocations of a DanmNet, TenantNetwork or ClusterNetwork.
#[derive(Parser, Debug)]
#[command(version)]
#[command(group(clap::ArgGroup::new("network").required(true).args(["dnet", "cnet", "tnet"])))]
struct Args {
    /// ipamd gRPC address (host:port or http://host:port).
    #[arg(long, env = "DANM_IPAMD", default_value = "127.0.0.1:50051")]
    ipamd: String,
    /// Name of a DanmNet.
    #[arg(long)]
    dnet: Option<String>,
    /// Name of a ClusterNetwork.
    #[arg(long)]
    cnet: Option<String>,
    /// Name of a TenantNetwork.
    #[arg(long)]
    tnet: Option<String>,
    /// Namespace of the DanmNet or TenantNetwork.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    namespace: String,
    /// Show IPv6 instead of IPv4.
    #[arg(short = '6')]
    ipv6: bool,
    /// Show only this sub-CIDR of the network.
    #[arg(long = "show-cidr", alias = "showCIDR")]
    show_cidr: Option<String>,
    /// Also show free and out-of-pool addresses.
    #[arg(short = 'a')]
    all: bool,
}

/// Turns DANM's Go-style `-dnet x` into `--dnet x`.
fn danm_style_args() -> Vec<String> {
    std::env::args()
        .map(|a| match a.as_str() {
            "-dnet" | "-cnet" | "-tnet" | "-showCIDR" | "-ipamd" => format!("-{a}"),
            _ => a,
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse_from(danm_style_args());
    let (kind, name) = match (&args.dnet, &args.cnet, &args.tnet) {
        (Some(n), None, None) => (pb::NetworkKind::DanmNet, n),
        (None, Some(n), None) => (pb::NetworkKind::ClusterNetwork, n),
        (None, None, Some(n)) => (pb::NetworkKind::TenantNetwork, n),
        _ => anyhow::bail!("give exactly one of --dnet, --cnet, --tnet"),
    };
    let network = pb::NetworkRef {
        kind: kind as i32,
        namespace: args.namespace.clone(),
        name: name.clone(),
    };
    let endpoint = if args.ipamd.contains("://") {
        args.ipamd.clone()
    } else {
        format!("http://{}", args.ipamd)
    };
    let mut client = IpamClient::connect(endpoint.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach ipamd at {endpoint}: {e}"))?;
    let info = client
        .get_network(pb::GetNetworkRequest {
            network: Some(network.clone()),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let family = if args.ipv6 {
        info.v6.as_ref()
    } else {
        info.v4.as_ref()
    };
    let Some(family) = family else {
        anyhow::bail!(
            "network {name} has no {} subnet",
            if args.ipv6 {
                "IPv6 (net6)"
            } else {
                "IPv4 (cidr)"
            }
        );
    };
    let mut stream = client
        .list_allocations(pb::ListAllocationsRequest {
            network: Some(network),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let mut allocations = Vec::new();
    while let Some(a) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
    {
        allocations.push(a);
    }
    let kind_name =
        danm_ipamd::service::kind_from_proto(kind).map_or("ClusterNetwork", |k| k.as_str());
    let text = render(
        kind_name,
        family,
        args.ipv6,
        &allocations,
        args.all,
        args.show_cidr.as_deref(),
    )?;
    print!("{text}");
    Ok(())
}
