//! ipamctl: the operator's CLI for a running ipamd (status, allocate, release, attach,
//! detach, list, gc, reclaim), through the one ipamd client of `danm_proto::client`, with
//! `-o json` for scripts. Like [`crate::run`], the body of a binary: it reports errors with
//! `anyhow`.

use clap::{Args as ClapArgs, Parser, Subcommand};
use danm_proto::client::Settings;
use danm_proto::v1 as pb;
use serde_json::json;

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
    /// Output: `text` or `json` (one JSON document per command, for scripts).
    #[arg(short = 'o', long, value_enum, default_value = "text", global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// `-o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// For people.
    Text,
    /// For scripts.
    Json,
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
        /// The node the pod runs on (recorded; `gc --host` collects by it). With node
        /// authorization ipamd records the caller's node instead.
        #[arg(long, default_value = "")]
        host: String,
    },
    /// Releases every interface of a container.
    Detach {
        /// Container (sandbox) id.
        #[arg(long)]
        container_id: String,
    },
    /// Every allocated address of one network, with its owner (ipamd's view; showalloc
    /// reads the same from the API).
    List {
        #[command(flatten)]
        net: Net,
    },
    /// Releases every allocation attached on a node except the owners kept (a node's
    /// leftovers, as CNI GC does; the cleaner does it for deleted pods and nodes).
    Gc {
        /// The node whose attachments are collected (never empty: an empty host would
        /// mean every node's).
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        host: String,
        /// An owner to keep, `CONTAINER_ID/IFNAME`; repeat it.
        #[arg(long, value_parser = parse_attachment)]
        keep: Vec<pb::Attachment>,
        /// Only this network (`--dnet`/`--cnet`/`--tnet`); default: every network.
        #[command(flatten)]
        net: OptionalNet,
        /// Really release (without it, nothing is sent: gc frees every allocation of the
        /// node that is not kept).
        #[arg(long)]
        yes: bool,
    },
    /// Frees one address a crash left held with no endpoint record (an orphan, as showalloc
    /// and the cleaner show it). Re-checked by ipamd: nothing is freed unless it still is one.
    Reclaim {
        #[command(flatten)]
        net: Net,
        /// The address, without prefix.
        #[arg(long)]
        address: String,
        /// The owner fingerprint stored beside it (16 hex digits, from `list` or showalloc).
        #[arg(long)]
        fingerprint: String,
    },
}

/// A network, optional (`gc`).
#[derive(ClapArgs, Debug)]
struct OptionalNet {
    /// Name of a DanmNet.
    #[arg(long, group = "gc-net")]
    dnet: Option<String>,
    /// Name of a ClusterNetwork.
    #[arg(long, group = "gc-net")]
    cnet: Option<String>,
    /// Name of a TenantNetwork.
    #[arg(long, group = "gc-net")]
    tnet: Option<String>,
    /// Namespace of the DanmNet or TenantNetwork.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
}

fn parse_attachment(text: &str) -> Result<pb::Attachment, String> {
    match text.split_once('/') {
        Some((cid, ifname)) if !cid.is_empty() && !ifname.is_empty() => Ok(pb::Attachment {
            container_id: cid.to_owned(),
            ifname: ifname.to_owned(),
        }),
        _ => Err(format!("{text:?}: expected CONTAINER_ID/IFNAME")),
    }
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

/// Prints `value` as JSON, or `text` for people.
fn print(output: Output, text: impl FnOnce() -> String, value: impl FnOnce() -> serde_json::Value) {
    match output {
        Output::Text => println!("{}", text()),
        Output::Json => println!("{:#}", value()),
    }
}

/// Runs one command; prints its answer.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Gc { yes: false, .. } = &cli.command {
        // Nothing is sent: refuse as a usage error, before connecting.
        eprintln!(
            "Error: gc releases every allocation attached on --host that --keep does not name; add --yes to do it"
        );
        std::process::exit(2);
    }
    let out = cli.output;
    let settings = Settings::new(&cli.ipamd, &format!("ipamctl-{}", std::process::id()))
        .with_tls(cli.tls.tls());
    let mut c = danm_proto::client::connect(&settings).await?;
    let status = |s: tonic::Status| anyhow::anyhow!("{}", danm_proto::status::describe(&s));
    match cli.command {
        Command::Status => {
            let s = c
                .status(pb::StatusRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let c = s.counters.unwrap_or_default();
            print(
                out,
                || {
                    format!(
                        "ready: {}\nstore: {}\nnetworks: {}\nversion: {}",
                        s.ready, s.store, s.networks, s.version
                    )
                },
                || {
                    json!({
                        "ready": s.ready, "store": s.store, "networks": s.networks,
                        "version": s.version,
                        "counters": {
                            "allocations": c.allocations, "rounds": c.rounds,
                            "shardWrites": c.shard_writes, "shardConflicts": c.shard_conflicts,
                            "retries": c.retries, "corruptShards": c.corrupt_shards,
                            "orphansReclaimed": c.orphans_reclaimed,
                        },
                    })
                },
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
            print(
                out,
                || {
                    format!(
                        "{}/{}: ip={} ip6={}",
                        who.container_id, who.ifname, r.ip, r.ip6
                    )
                },
                || json!({"containerID": who.container_id, "ifname": who.ifname, "ip": r.ip, "ip6": r.ip6}),
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
            released(out, &r.released);
        }
        Command::Attach {
            namespace,
            pod,
            container_id,
            interfaces,
            host,
        } => {
            let r = c
                .attach(pb::AttachRequest {
                    pod_namespace: namespace,
                    pod_name: pod,
                    container_id,
                    interfaces_json: interfaces,
                    host,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            let line = |i: &pb::InterfacePlan| {
                let net = i
                    .network
                    .as_ref()
                    .map(|n| n.name.as_str())
                    .unwrap_or_default();
                format!(
                    "{} on {net} ({}): ip={} ip6={}",
                    i.ifname, i.network_type, i.ip, i.ip6
                )
            };
            print(
                out,
                || r.interfaces.iter().map(line).collect::<Vec<_>>().join("\n"),
                || {
                    json!(
                        r.interfaces
                            .iter()
                            .map(|i| json!({
                                "ifname": i.ifname,
                                "network": i.network.as_ref().map(|n| n.name.clone()),
                                "networkType": i.network_type, "ip": i.ip, "ip6": i.ip6,
                            }))
                            .collect::<Vec<_>>()
                    )
                },
            );
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
            released(out, &r.released);
        }
        Command::List { net } => {
            let mut stream = c
                .list_allocations(pb::ListAllocationsRequest {
                    network: Some(network(&net)?),
                })
                .await
                .map_err(status)?
                .into_inner();
            let mut all = Vec::new();
            while let Some(a) = stream.message().await.map_err(status)? {
                all.push(a);
            }
            let owner_of = |a: &pb::Allocation| a.owner.clone().unwrap_or_default();
            print(
                out,
                || {
                    all.iter()
                        .map(|a| {
                            let o = owner_of(a);
                            if o.container_id.is_empty() {
                                format!("{} orphan fingerprint={}", a.address, a.fingerprint)
                            } else {
                                format!(
                                    "{} {}/{} {}/{} host={}",
                                    a.address,
                                    o.pod_namespace,
                                    o.pod_name,
                                    o.container_id,
                                    o.ifname,
                                    o.host
                                )
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                || {
                    json!(all.iter().map(|a| {
                        let o = owner_of(a);
                        json!({
                            "address": a.address, "fingerprint": a.fingerprint,
                            "pod": (!o.pod_name.is_empty()).then(|| format!("{}/{}", o.pod_namespace, o.pod_name)),
                            "containerID": o.container_id, "ifname": o.ifname, "host": o.host,
                        })
                    }).collect::<Vec<_>>())
                },
            );
        }
        Command::Gc {
            host, keep, net, ..
        } => {
            let network = match (&net.dnet, &net.cnet, &net.tnet) {
                (None, None, None) => None,
                _ => Some(network(&Net {
                    dnet: net.dnet,
                    cnet: net.cnet,
                    tnet: net.tnet,
                    namespace: net.namespace,
                })?),
            };
            let r = c
                .gc(pb::GcRequest {
                    valid: keep,
                    network,
                    host,
                })
                .await
                .map_err(status)?
                .into_inner();
            released(out, &r.released);
        }
        Command::Reclaim {
            net,
            address,
            fingerprint,
        } => {
            let r = c
                .reclaim_orphan(pb::ReclaimOrphanRequest {
                    network: Some(network(&net)?),
                    address,
                    fingerprint,
                })
                .await
                .map_err(status)?
                .into_inner();
            released(out, &r.released);
        }
    }
    Ok(())
}

fn released(out: Output, released: &[String]) {
    print(
        out,
        || format!("released: {}", released.join(", ")),
        || json!({ "released": released }),
    );
}
