//! ipamctl: the operator's CLI for a running ipamd (status, allocate, release, attach,
//! detach), through the one ipamd client of `danm_proto::client`. Like [`crate::run`], the
//! body of a binary: it reports errors with `anyhow`.

use clap::{Args as ClapArgs, Parser, Subcommand};
use danm_proto::client::Settings;
use danm_proto::v1 as pb;

/// Talks to a running ipamd.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Cli {
    /// ipamd gRPC address: host:port (https with --ipamd-ca, else http), http://host:port
    /// or https://host:port.
    #[arg(long, env = "DANM_IPAMD", default_value = "127.0.0.1:50051")]
    ipamd: String,
    #[command(flatten)]
    tls: danm_proto::client::TlsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(ClapArgs, Debug)]
struct Net {
    /// Name of a DanmNet.
    #[arg(long, group = "net")]
    dnet: Option<String>,
    /// Name of a ClusterNetwork.
    #[arg(long, group = "net")]
    cnet: Option<String>,
    /// Name of a TenantNetwork.
    #[arg(long, group = "net")]
    tnet: Option<String>,
    /// Namespace of the DanmNet or TenantNetwork.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
}

#[derive(ClapArgs, Debug)]
struct Who {
    /// Container (sandbox) id of the owner.
    #[arg(long)]
    container_id: String,
    /// Interface name of the owner.
    #[arg(long, default_value = "eth0")]
    ifname: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Readiness and store of ipamd.
    Status,
    /// Allocates addresses for one owner on one network.
    Allocate {
        #[command(flatten)]
        net: Net,
        #[command(flatten)]
        who: Who,
        /// IPv4: dynamic, none, an address, or empty.
        #[arg(long, default_value = "dynamic")]
        ip: String,
        /// IPv6: dynamic, none, an address, or empty.
        #[arg(long, default_value = "")]
        ip6: String,
        /// Pod name to record.
        #[arg(long, default_value = "")]
        pod: String,
    },
    /// Releases what one owner holds on one network.
    Release {
        #[command(flatten)]
        net: Net,
        #[command(flatten)]
        who: Who,
    },
    /// Attaches a pod: its danm.io/interfaces JSON, every address allocated.
    Attach {
        /// Pod namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Pod name.
        #[arg(long)]
        pod: String,
        /// Container (sandbox) id.
        #[arg(long)]
        container_id: String,
        /// The danm.io/interfaces annotation (JSON); empty for the default network.
        #[arg(long, default_value = "")]
        interfaces: String,
    },
    /// Releases every interface of a container.
    Detach {
        /// Container (sandbox) id.
        #[arg(long)]
        container_id: String,
    },
}

fn network(net: &Net) -> anyhow::Result<pb::NetworkRef> {
    let (kind, name) = match (&net.dnet, &net.cnet, &net.tnet) {
        (Some(n), None, None) => (pb::NetworkKind::DanmNet, n),
        (None, Some(n), None) => (pb::NetworkKind::ClusterNetwork, n),
        (None, None, Some(n)) => (pb::NetworkKind::TenantNetwork, n),
        _ => anyhow::bail!("give exactly one of --dnet, --cnet, --tnet"),
    };
    Ok(pb::NetworkRef {
        kind: kind as i32,
        namespace: net.namespace.clone(),
        name: name.clone(),
    })
}

fn owner(who: &Who, pod: &str, namespace: &str) -> pb::Owner {
    pb::Owner {
        container_id: who.container_id.clone(),
        ifname: who.ifname.clone(),
        pod_name: pod.to_owned(),
        pod_namespace: namespace.to_owned(),
        ..Default::default()
    }
}

/// The whole program: parses the process arguments, prints the answer, or the error on
/// standard error with exit status 1.
pub fn main() -> std::process::ExitCode {
    danm_runtime::main("ipamctl", run(danm_runtime::args::parse::<Cli>()))
}

/// Runs one command; prints its answer.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::new(&cli.ipamd, &format!("ipamctl-{}", std::process::id()))
        .with_tls(cli.tls.tls());
    let mut c = danm_proto::client::connect(&settings).await?;
    let status = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
    match cli.command {
        Command::Status => {
            let s = c
                .status(pb::StatusRequest {})
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "ready: {}\nstore: {}\nnetworks: {}\nversion: {}",
                s.ready, s.store, s.networks, s.version
            );
        }
        Command::Allocate {
            net,
            who,
            ip,
            ip6,
            pod,
        } => {
            let r = c
                .allocate(pb::AllocateRequest {
                    network: Some(network(&net)?),
                    owner: Some(owner(&who, &pod, &net.namespace)),
                    ip,
                    ip6,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "{}/{}: ip={} ip6={}",
                who.container_id, who.ifname, r.ip, r.ip6
            );
        }
        Command::Release { net, who } => {
            let r = c
                .release(pb::ReleaseRequest {
                    network: Some(network(&net)?),
                    owner: Some(owner(&who, "", &net.namespace)),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("released: {}", r.released.join(", "));
        }
        Command::Attach {
            namespace,
            pod,
            container_id,
            interfaces,
        } => {
            let r = c
                .attach(pb::AttachRequest {
                    pod_namespace: namespace,
                    pod_name: pod,
                    container_id,
                    interfaces_json: interfaces,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            for i in r.interfaces {
                let net = i.network.map(|n| n.name).unwrap_or_default();
                println!(
                    "{} on {net} ({}): ip={} ip6={}",
                    i.ifname, i.network_type, i.ip, i.ip6
                );
            }
        }
        Command::Detach { container_id } => {
            let r = c
                .detach(pb::DetachRequest {
                    container_id,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("released: {}", r.released.join(", "));
        }
    }
    Ok(())
}
