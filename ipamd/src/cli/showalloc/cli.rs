//! The showalloc command line, shared by the `showalloc` and `kubectl-showalloc` binaries
//! (the second makes `kubectl showalloc --cnet external` work as a kubectl plugin).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use danm_core::{NetworkKey, NetworkKind};
use danm_proto::client::Settings;
use danm_proto::v1 as pb;

use super::{ShowallocError, api, json, render};

/// Shows who holds which address of a DanmNet, TenantNetwork or ClusterNetwork.
///
/// Reads the AllocationShards and DanmEps from the Kubernetes API (works while ipamd is
/// down), or asks a running ipamd with --ipamd. DANM's single-dash flags (`-dnet`, `-cnet`,
/// `-tnet`, `-showCIDR`) work too.
#[derive(Parser, Debug)]
#[command(version)]
#[command(group(clap::ArgGroup::new("network").required(true).args(["dnet", "cnet", "tnet"])))]
pub struct Args {
    /// Ask this ipamd instead of reading the API: host:port (https with --ipamd-ca, else
    /// http), http://host:port or https://host:port. ipamd lists allocations to its
    /// administrators only: with mutual TLS, give --ipamd-cert and --ipamd-key of a name in
    /// ipamd's --admin-clients.
    #[arg(long, env = "DANM_IPAMD")]
    pub ipamd: Option<String>,
    #[command(flatten)]
    pub ipamd_tls: danm_proto::client::TlsArgs,
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config or the in-cluster config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Name of a DanmNet.
    #[arg(long)]
    pub dnet: Option<String>,
    /// Name of a ClusterNetwork.
    #[arg(long)]
    pub cnet: Option<String>,
    /// Name of a TenantNetwork.
    #[arg(long)]
    pub tnet: Option<String>,
    /// Namespace of the DanmNet or TenantNetwork.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    pub namespace: String,
    /// Show IPv6 instead of IPv4.
    #[arg(short = '6')]
    pub ipv6: bool,
    /// Show only this sub-CIDR of the network.
    #[arg(long = "show-cidr", alias = "showCIDR")]
    pub show_cidr: Option<String>,
    /// Also show free and out-of-pool addresses.
    #[arg(short = 'a')]
    pub all: bool,
    /// Output: `text` (DANM's format with a summary header) or `json`.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// DANM's format.
    Text,
    /// JSON for scripts.
    Json,
}

/// Turns DANM's Go-style `-dnet x` into `--dnet x`.
pub fn danm_style_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|a| match a.as_str() {
            "-dnet" | "-cnet" | "-tnet" | "-showCIDR" | "-ipamd" => format!("-{a}"),
            _ => a,
        })
        .collect()
}

/// The whole program: parses the process arguments, prints the listing, or the error on
/// standard error with exit status 1.
pub fn main() -> std::process::ExitCode {
    let args = Args::parse_from(danm_style_args(std::env::args()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(text) => {
            print!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs showalloc; what it prints.
pub async fn run(args: Args) -> Result<String, ShowallocError> {
    let (kind, name) = match (&args.dnet, &args.cnet, &args.tnet) {
        (Some(n), None, None) => (NetworkKind::DanmNet, n),
        (None, Some(n), None) => (NetworkKind::ClusterNetwork, n),
        (None, None, Some(n)) => (NetworkKind::TenantNetwork, n),
        _ => {
            return Err(ShowallocError::Usage(
                "give exactly one of --dnet, --cnet, --tnet",
            ));
        }
    };
    if args.ipamd.is_none() && args.ipamd_tls.tls().is_some() {
        return Err(ShowallocError::Usage(
            "--ipamd-ca and the other --ipamd-* flags need --ipamd (without it, showalloc reads the API)",
        ));
    }
    let key = NetworkKey::new(kind, &args.namespace, name);
    let network = pb::NetworkRef::from(&key);
    let (info, allocations) = match &args.ipamd {
        Some(address) => {
            let settings = Settings::new(address, &format!("showalloc-{}", std::process::id()))
                .with_tls(args.ipamd_tls.tls());
            from_ipamd(&settings, &network).await?
        }
        None => {
            let client = danm_runtime::kube_client(args.kubeconfig.as_deref()).await?;
            let view = api::view(&client, &key).await?;
            (view.info, view.allocations)
        }
    };
    let family = if args.ipv6 { info.v6 } else { info.v4 };
    let Some(family) = family else {
        return Err(ShowallocError::NoFamily(format!(
            "network {name} has no {} subnet",
            if args.ipv6 {
                "IPv6 (net6)"
            } else {
                "IPv4 (cidr)"
            }
        )));
    };
    let wanted = |a: &&pb::Allocation| {
        a.address
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_ipv6() == args.ipv6)
    };
    let allocations: Vec<pb::Allocation> = allocations.iter().filter(wanted).cloned().collect();
    match args.output {
        Output::Json => Ok(format!(
            "{:#}\n",
            json(&network, kind.as_str(), &family, args.ipv6, &allocations)
        )),
        Output::Text => Ok(render(
            kind.as_str(),
            &family,
            args.ipv6,
            &allocations,
            args.all,
            args.show_cidr.as_deref(),
        )?),
    }
}

async fn from_ipamd(
    settings: &Settings,
    network: &pb::NetworkRef,
) -> Result<(pb::NetworkInfo, Vec<pb::Allocation>), ShowallocError> {
    let ipamd = |e: String| ShowallocError::Ipamd(e);
    let mut client = danm_proto::client::connect(settings)
        .await
        .map_err(|e| ipamd(e.to_string()))?;
    let info = client
        .get_network(pb::GetNetworkRequest {
            network: Some(network.clone()),
        })
        .await
        .map_err(|s| ipamd(s.message().to_owned()))?
        .into_inner();
    let mut stream = client
        .list_allocations(pb::ListAllocationsRequest {
            network: Some(network.clone()),
        })
        .await
        .map_err(|s| ipamd(s.message().to_owned()))?
        .into_inner();
    let mut allocations = Vec::new();
    while let Some(a) = stream
        .message()
        .await
        .map_err(|s| ipamd(s.message().to_owned()))?
    {
        allocations.push(a);
    }
    Ok((info, allocations))
}
