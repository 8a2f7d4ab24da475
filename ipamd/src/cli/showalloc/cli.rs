//! The showalloc command line, shared by the `showalloc` and `kubectl-showalloc` binaries
//! (the second makes `kubectl showalloc --cnet external` work as a kubectl plugin).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use danm_core::{NetworkKey, NetworkKind};
use danm_proto::client::Settings;
use danm_proto::v1 as pb;

use super::{ShowallocError, api, json, overview, render};

/// Shows who holds which address of a DanmNet, TenantNetwork or ClusterNetwork; with no
/// network named, every network's pools (like `calicoctl ipam show`); with --ip, who holds
/// one address in any network.
///
/// Reads the AllocationShards and DanmEps from the Kubernetes API (works while ipamd is
/// down), or asks a running ipamd with --ipamd (one network only). The namespace is the
/// kubeconfig context's, as for kubectl. DANM's single-dash flags (`-dnet`, `-cnet`,
/// `-tnet`, `-showCIDR`) work too.
///
/// Exit status: 0 shown (with --ip: the address is allocated); 1 an error (API, ipamd,
/// kubeconfig, a corrupt shard); 2 bad flags; 3 not found (the network, or with --ip no
/// network holds the address allocated).
#[derive(Parser, Debug)]
#[command(version)]
#[command(group(clap::ArgGroup::new("network").args(["dnet", "cnet", "tnet"])))]
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
    /// The kubeconfig context to use (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Name of a DanmNet.
    #[arg(long)]
    pub dnet: Option<String>,
    /// Name of a ClusterNetwork.
    #[arg(long)]
    pub cnet: Option<String>,
    /// Name of a TenantNetwork.
    #[arg(long)]
    pub tnet: Option<String>,
    /// Namespace of the DanmNet or TenantNetwork, or of the summary (default: the
    /// kubeconfig context's namespace, else `default`).
    #[arg(short = 'n', long = "namespace")]
    pub namespace: Option<String>,
    /// The summary or --ip over every namespace.
    #[arg(short = 'A', long = "all-namespaces", conflicts_with = "network")]
    pub all_namespaces: bool,
    /// Who holds this address, in any network of the namespace (with -A, of the cluster)
    /// whose CIDR holds it.
    #[arg(long, conflicts_with = "network")]
    pub ip: Option<IpAddr>,
    /// Show IPv6 instead of IPv4.
    #[arg(short = '6')]
    pub ipv6: bool,
    /// Show only this sub-CIDR of the network.
    #[arg(long = "show-cidr", alias = "showCIDR")]
    pub show_cidr: Option<String>,
    /// Also show free and out-of-pool addresses.
    #[arg(short = 'a')]
    pub all: bool,
    /// Output: `text` (DANM's format with a summary header; a table for the summary),
    /// `wide` (the same with hosts, CIDRs and reasons), `json` or `yaml`.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// DANM's format.
    Text,
    /// DANM's format with more columns.
    Wide,
    /// JSON for scripts.
    Json,
    /// YAML for scripts.
    Yaml,
}

impl Output {
    /// `value` as JSON or YAML; None for the text formats.
    fn structured(self, value: &serde_json::Value) -> Option<String> {
        match self {
            Output::Json => Some(format!("{value:#}\n")),
            Output::Yaml => {
                Some(serde_saphyr::to_string(value).expect("a JSON value always serializes"))
            }
            Output::Text | Output::Wide => None,
        }
    }
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

/// The whole program: parses the process arguments, prints the listing (exit status 0),
/// or the error on standard error (1, 2 or 3: see [`ShowallocError::exit_code`]).
pub fn main() -> std::process::ExitCode {
    let args: Args = danm_runtime::args::parse_from(danm_style_args(std::env::args()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(text) => {
            print!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(ShowallocError::NotAllocated(text)) => {
            print!("{text}");
            std::process::ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}

/// Runs showalloc; what it prints.
pub async fn run(args: Args) -> Result<String, ShowallocError> {
    if args.ipamd.is_none() && args.ipamd_tls.tls().is_some() {
        return Err(ShowallocError::Usage(
            "--ipamd-ca and the other --ipamd-* flags need --ipamd (without it, showalloc reads the API)",
        ));
    }
    let named = match (&args.dnet, &args.cnet, &args.tnet) {
        (Some(n), None, None) => Some((NetworkKind::DanmNet, n.clone())),
        (None, Some(n), None) => Some((NetworkKind::ClusterNetwork, n.clone())),
        (None, None, Some(n)) => Some((NetworkKind::TenantNetwork, n.clone())),
        (None, None, None) => None,
        _ => {
            return Err(ShowallocError::Usage(
                "give at most one of --dnet, --cnet, --tnet",
            ));
        }
    };
    let Some((kind, name)) = named else {
        return overview(&args).await;
    };
    let (network, key, (info, allocations)) = match &args.ipamd {
        Some(address) => {
            let namespace = args.namespace.clone().unwrap_or_else(|| "default".into());
            let key = NetworkKey::new(kind, &namespace, &name);
            let network = pb::NetworkRef::from(&key);
            let settings = Settings::new(address, &format!("showalloc-{}", std::process::id()))
                .with_tls(args.ipamd_tls.tls());
            let found = from_ipamd(&settings, &network).await?;
            (network, key, found)
        }
        None => {
            let (client, namespace) = client(&args).await?;
            let key = NetworkKey::new(kind, &namespace, &name);
            let view = api::view(&client, &key).await?;
            (
                pb::NetworkRef::from(&key),
                key,
                (view.info, view.allocations),
            )
        }
    };
    let family = if args.ipv6 { info.v6 } else { info.v4 };
    let Some(family) = family else {
        return Err(ShowallocError::NoFamily(format!(
            "network {} has no {} subnet",
            key.name,
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
    let value = || json(&network, kind.as_str(), &family, args.ipv6, &allocations);
    if let Some(text) = args.output.structured(&value()) {
        return Ok(text);
    }
    Ok(render(
        kind.as_str(),
        &family,
        args.ipv6,
        &allocations,
        args.all,
        args.show_cidr.as_deref(),
        args.output == Output::Wide,
    )?)
}

/// A client as the flags say, and the namespace to show (`-n`, else the context's).
async fn client(args: &Args) -> Result<(kube::Client, String), ShowallocError> {
    let config =
        danm_runtime::kube_config(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok((danm_runtime::client_from(config)?, namespace))
}

/// No network named: the summary, or `--ip`.
async fn overview(args: &Args) -> Result<String, ShowallocError> {
    if args.ipamd.is_some() {
        return Err(ShowallocError::Usage(
            "the summary and --ip read the API: name a network with --dnet, --cnet or --tnet to ask ipamd",
        ));
    }
    let (client, namespace) = client(args).await?;
    let scope = (!args.all_namespaces).then_some(namespace.as_str());
    let rows = overview::rows(&client, scope).await?;
    let Some(address) = args.ip else {
        if let Some(text) = args.output.structured(&overview::rows_json(&rows)) {
            return Ok(text);
        }
        return Ok(overview::render_rows(&rows, args.output == Output::Wide));
    };
    let found = overview::find_ip(&client, &rows, address).await?;
    let where_ = if args.all_namespaces {
        "in the cluster".to_owned()
    } else {
        format!("in namespace {namespace} or a ClusterNetwork (-A: every namespace)")
    };
    if found.is_empty() {
        return Err(ShowallocError::NotFound(format!(
            "a network whose CIDR holds {address} {where_}"
        )));
    }
    let text = match args
        .output
        .structured(&overview::found_json(address, &found))
    {
        Some(text) => text,
        None => overview::render_found(address, &found),
    };
    if found.iter().any(|(_, allocation, _)| allocation.is_some()) {
        Ok(text)
    } else {
        Err(ShowallocError::NotAllocated(text))
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
        .map_err(|s| ipamd(danm_proto::status::describe(&s)))?
        .into_inner();
    let mut stream = client
        .list_allocations(pb::ListAllocationsRequest {
            network: Some(network.clone()),
        })
        .await
        .map_err(|s| ipamd(danm_proto::status::describe(&s)))?
        .into_inner();
    let mut allocations = Vec::new();
    while let Some(a) = stream
        .message()
        .await
        .map_err(|s| ipamd(danm_proto::status::describe(&s)))?
    {
        allocations.push(a);
    }
    Ok((info, allocations))
}
