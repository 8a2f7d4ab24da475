//! The composition root of the `ipamd` binary: its flags and the wiring of every layer
//! below (TLS, authorization, store, engine, reclaimer, metrics, server). The body of a
//! binary: it reports errors with `anyhow`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::authz::Policy;
use crate::engine::{Engine, EngineConfig};
use crate::metrics::RpcMetrics;
use crate::networks;
use crate::registry::registry as metrics_registry;
use crate::server;
use crate::status::{StatusConfig, StatusMetrics, write_while_leading};
use crate::store;
use crate::worker::WorkerConfig;
use anyhow::Context;
use clap::Parser;
use danm_runtime::metrics::encode as encode_metrics;

/// The cluster-wide IP address management service of DANM.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Args {
    /// Where state lives: `file:PATH` (embedded redb database), `memory` (lost on exit,
    /// for tests) or `kube` (the Kubernetes API: in-cluster config or KUBECONFIG).
    #[arg(
        long,
        env = "IPAMD_STORE",
        default_value = "file:/var/lib/danm/ipamd.redb"
    )]
    store: String,
    /// Folder of network manifests (DanmNet, TenantNetwork, ClusterNetwork YAML, as for
    /// kubectl) loaded into the store at start. Networks already in the store but not in
    /// the folder are kept.
    #[arg(long, env = "IPAMD_NETWORKS")]
    networks: Option<PathBuf>,
    /// Kubeconfig file, with --store kube or --node-identity sa-token (default: $KUBECONFIG
    /// or ~/.kube/config, else the in-cluster config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// ipamd's own namespace (with --store kube, ClusterNetwork shards live here).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    namespace: String,
    /// gRPC listen address.
    #[arg(long, env = "IPAMD_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    /// Log format (to standard error).
    #[arg(long, env = "IPAMD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: danm_runtime::LogFormat,
    /// Admin HTTP listen address, e.g. 10.0.0.7:9090: /metrics (Prometheus), /healthz,
    /// /readyz. Plaintext: on the host network, bind it to the node's address
    /// (`$(NODE_IP):9090` in the Deployment). None by default (several ipamd may run on
    /// one host in tests and demos).
    #[arg(long, env = "IPAMD_ADMIN_LISTEN", value_parser = danm_runtime::parse_listen)]
    admin_listen: Option<std::net::SocketAddr>,
    /// A plaintext listener serving only the gRPC health service, for kubelet's gRPC
    /// readiness probe (which cannot speak TLS); e.g. `$(NODE_IP):50052`.
    #[arg(long, env = "IPAMD_HEALTH_LISTEN", value_parser = danm_runtime::parse_listen)]
    health_listen: Option<std::net::SocketAddr>,
    /// Name TenantNetworks in the pool metrics (`namespace` and `network` labels): off by
    /// default, the metrics port being plaintext, so their pools are summed into one
    /// series per family; the administrators' networks are always named.
    #[arg(long, env = "IPAMD_METRICS_TENANT_NAMES")]
    metrics_tenant_names: bool,
    /// Serve gRPC on an address other hosts can reach without authenticating clients (no
    /// --tls-client-ca): any pod could then list, release and reclaim anyone's addresses.
    /// Refused without this flag.
    #[arg(long, env = "IPAMD_INSECURE")]
    insecure: bool,
    /// Addresses held with no endpoint record (left by a crash between the shard write and
    /// the record write) are freed once seen so for this many seconds; 0 disables.
    #[arg(long, env = "IPAMD_ORPHAN_GRACE_SECONDS", default_value_t = 600)]
    orphan_grace_seconds: u64,
    /// Where this replica starts dynamic allocation in each pool, 0-65535 (a fraction of
    /// the pool): give replicas different values so they rarely touch the same shard.
    #[arg(long, env = "IPAMD_START_HINT", default_value_t = 0)]
    start_hint: u16,
    /// Most network connections one pod's `danm.io/interfaces` annotation may ask for; a
    /// longer list is refused before anything is allocated.
    #[arg(long, env = "IPAMD_MAX_INTERFACES_PER_POD", default_value_t = crate::engine::DEFAULT_MAX_INTERFACES_PER_POD as u64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_interfaces_per_pod: u64,
    /// Serve gRPC over TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "IPAMD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "IPAMD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How often --tls-cert and --tls-key are checked for a change, in seconds: a renewed
    /// pair is served to new connections without a restart.
    #[arg(long, env = "IPAMD_TLS_RELOAD_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    tls_reload_seconds: u64,
    /// Require client certificates signed by this PEM CA (mutual TLS; needs --tls-cert).
    /// Repeat for several CAs, e.g. the cluster CA (which signs the kubelets' client
    /// certificates) and DANM's own (which signs the cleaner's).
    #[arg(
        long,
        env = "IPAMD_TLS_CLIENT_CA",
        requires = "tls_cert",
        value_delimiter = ','
    )]
    tls_client_ca: Vec<PathBuf>,
    /// Who may call what when clients present certificates (--tls-client-ca): `nodes` (a
    /// node's CNI, CN system:node:NAME in group system:nodes, only for pods bound to that
    /// node; the --admin-clients for everything; anyone else refused) or `any-client`
    /// (every certificate the CAs signed may do everything). `nodes` needs --store kube.
    #[arg(long, env = "IPAMD_AUTHORIZATION", value_enum, default_value = "nodes")]
    authorization: AuthorizationMode,
    /// How a node proves who it is, with `--authorization nodes`: `kubelet-cert` (the
    /// kubelet's client certificate, CN system:node:NAME, which the plugin presents) or
    /// `sa-token` (the node agent's pod-bound ServiceAccount token, which the plugin sends
    /// as a bearer token and ipamd reviews with the API server: for clusters whose
    /// kubelet certificates the plugin cannot present). With `sa-token`, client
    /// certificates (the administrators') are asked for but not required.
    #[arg(
        long,
        env = "IPAMD_NODE_IDENTITY",
        value_enum,
        default_value = "kubelet-cert"
    )]
    node_identity: NodeIdentity,
    /// With `--node-identity sa-token`: the audience of the nodes' tokens.
    #[arg(long, env = "IPAMD_NODE_TOKEN_AUDIENCE", default_value = crate::tokens::DEFAULT_AUDIENCE)]
    node_token_audience: String,
    /// With `--node-identity sa-token`: the user the nodes' tokens must name (the CNI
    /// installer's ServiceAccount).
    #[arg(
        long,
        env = "IPAMD_NODE_TOKEN_ACCOUNT",
        default_value = "system:serviceaccount:danm-system:danm-cni-installer"
    )]
    node_token_account: String,
    /// Client certificate common names that may call every RPC for any node (the cleaner,
    /// showalloc, ipamctl), comma-separated.
    #[arg(
        long,
        env = "IPAMD_ADMIN_CLIENTS",
        value_delimiter = ',',
        default_value = "danm-cleaner"
    )]
    admin_clients: Vec<String>,
    /// The CA that alone may issue --admin-clients certificates (give it with
    /// --tls-client-ca too): an administrator name from another CA (the cluster's, say)
    /// is refused, and so is a node identity from this one.
    #[arg(long, env = "IPAMD_ADMIN_CLIENT_CA")]
    admin_client_ca: Option<PathBuf>,
    /// With --store kube: the least time, in seconds, between two writes of one network's
    /// `status` (pools' capacity and use, `Ready` and why), which one elected replica
    /// writes; 0 turns the status writer off.
    #[arg(long, env = "IPAMD_STATUS_INTERVAL_SECONDS", default_value_t = 30)]
    status_interval_seconds: u64,
    /// Most network status writes per second, all networks together (each is a watch
    /// event for every component that watches networks, on every node).
    #[arg(long, env = "IPAMD_STATUS_WRITES_PER_SECOND", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    status_writes_per_second: u32,
    /// The Lease (in --namespace) that elects the replica writing the networks' status.
    #[arg(long, env = "IPAMD_STATUS_LEASE", default_value = "danm-ipamd-status")]
    status_lease: String,
    /// This replica's identity in the status Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

/// `--node-identity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum NodeIdentity {
    /// The kubelet's client certificate.
    KubeletCert,
    /// A pod-bound ServiceAccount token of the node agent.
    SaToken,
}

/// `--authorization`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AuthorizationMode {
    /// Node-scoped.
    Nodes,
    /// Every authenticated client may do everything.
    AnyClient,
}

/// The whole program: parses the process arguments and serves until SIGTERM; an error on
/// standard error with exit status 1.
pub fn main() -> std::process::ExitCode {
    danm_runtime::main("ipamd", run(danm_runtime::args::parse::<Args>()))
}

/// Serves as `args` ask until SIGTERM: TLS, the authorization policy, the store (waited
/// for), the engine, the orphan reclaimer, the admin port with the one metrics registry,
/// the gRPC server.
pub async fn run(args: Args) -> anyhow::Result<()> {
    danm_runtime::logging(args.log_format);
    let (tls, serving) = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let (config, serving) = crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
                client_cert_optional: args.node_identity == NodeIdentity::SaToken,
            }
            .server_config(Duration::from_secs(args.tls_reload_seconds))?;
            (Some(config), Some(serving))
        }
        _ => (None, None),
    };
    let policy = policy(&args).await?;
    // Mistakes no retry can fix end ipamd at once; an unreachable store is waited for.
    store::select::check(&args.store)?;
    let manifests = match &args.networks {
        Some(dir) => networks::load_dir(dir)?,
        None => Vec::new(),
    };
    let mut pause = Duration::from_secs(1);
    let (store, engine) = loop {
        match start(&args, &manifests).await {
            Ok(started) => break started,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), retry_in = ?pause, "cannot start on the store yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = danm_runtime::shutdown_signal() => anyhow::bail!("stopped before the store could be used: {e:#}"),
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    };
    if args.orphan_grace_seconds > 0 {
        let grace = std::time::Duration::from_secs(args.orphan_grace_seconds);
        let engine = std::sync::Arc::clone(&engine);
        tokio::spawn(async move {
            // The first scan after one period: at start the DanmEp cache is still filling.
            let period = grace / 2;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tick.tick().await;
                if let Err(e) = engine.reclaim_orphans(grace).await {
                    tracing::warn!(error = %e, "orphan scan failed; next scan retries");
                }
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr()?;
    let authenticated =
        !args.tls_client_ca.is_empty() || args.node_identity == NodeIdentity::SaToken;
    if !bound.ip().is_loopback() && !authenticated && !args.insecure {
        anyhow::bail!(
            "--listen {bound} is reachable from other hosts, but no client is authenticated \
             (no --tls-client-ca): any pod could list, release and reclaim anyone's addresses. \
             Give --tls-cert, --tls-key and --tls-client-ca (docs/ipamd.md, \"Authorization by \
             node\"), listen on loopback, or pass --insecure to serve anyway"
        );
    }
    if args.insecure && args.tls_client_ca.is_empty() {
        tracing::warn!(listen = %bound, "--insecure: clients are not authenticated, anyone who reaches this port may call every RPC");
    }
    let health = match &args.health_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--health-listen {addr}"))?,
        ),
        None => None,
    };
    let rpc_metrics = RpcMetrics::default();
    let status_metrics = Arc::new(StatusMetrics::default());
    let status_writer = start_status_writer(&args, &status_metrics).await?;
    if let Some(addr) = args.admin_listen {
        let mut registry = metrics_registry(&engine, &rpc_metrics, args.metrics_tenant_names);
        status_metrics.register(&mut registry);
        if let Some(serving) = &serving {
            registry.register_collector(Box::new(serving.expiry_collector()));
        }
        let weak = Arc::downgrade(&engine);
        let ready = move || {
            let engine = weak.upgrade();
            async move {
                match engine {
                    Some(engine) => engine.ready().await,
                    None => Err("stopping".to_owned()),
                }
            }
        };
        danm_runtime::serve_admin_with(addr, move || encode_metrics(&registry), ready).await?;
    }
    tracing::info!(
        listen = %listener.local_addr()?,
        store = %store.describe(),
        networks = engine.networks().len(),
        tls = tls.is_some(),
        mutual_tls = !args.tls_client_ca.is_empty(),
        authorization = ?policy,
        "ipamd serving"
    );
    let options = server::ServeOptions {
        tls,
        policy,
        rpc_metrics,
        health,
    };
    let served =
        server::serve_with(engine, listener, options, danm_runtime::shutdown_signal()).await;
    // The status writer saw SIGTERM too: let it release its Lease, so that another replica
    // takes over at once rather than when the Lease runs out.
    if let Some(writer) = status_writer
        && tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .is_err()
    {
        tracing::warn!("the status writer did not release its Lease within 5 s");
    }
    Ok(served?)
}

/// The authorization policy the flags ask for; refused when it cannot be enforced.
async fn policy(args: &Args) -> anyhow::Result<Policy> {
    if args.node_identity == NodeIdentity::SaToken
        && (args.authorization != AuthorizationMode::Nodes || args.tls_cert.is_none())
    {
        anyhow::bail!(
            "--node-identity sa-token needs --authorization nodes and TLS (--tls-cert): a bearer token must not cross the network in plain text"
        );
    }
    if args.node_identity == NodeIdentity::KubeletCert
        && (args.tls_client_ca.is_empty() || args.authorization == AuthorizationMode::AnyClient)
    {
        return Ok(Policy::Open);
    }
    if args.store != "kube" {
        anyhow::bail!(
            "--authorization nodes checks each pod's spec.nodeName and needs --store kube; use --authorization any-client with --store {}",
            args.store
        );
    }
    let admin_ca = match &args.admin_client_ca {
        Some(path) => Some(
            crate::authz::AdminCa::start(path, Duration::from_secs(args.tls_reload_seconds))
                .with_context(|| format!("--admin-client-ca {}", path.display()))?,
        ),
        None => None,
    };
    let tokens = match args.node_identity {
        NodeIdentity::KubeletCert => None,
        NodeIdentity::SaToken => Some(Arc::new(crate::tokens::NodeTokens::new(
            danm_runtime::kube_client(args.kubeconfig.as_deref())
                .await
                .context("--node-identity sa-token reviews tokens with the API server")?,
            &args.node_token_audience,
            &args.node_token_account,
        ))),
    };
    Ok(Policy::Nodes {
        tokens,
        admin_ca,
        admins: args.admin_clients.iter().cloned().collect(),
    })
}

/// With --store kube and a status interval, joins the status Lease's election and writes
/// the networks' status while holding it, in a task of its own that ends (the Lease
/// released) after SIGTERM.
async fn start_status_writer(
    args: &Args,
    metrics: &Arc<StatusMetrics>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if args.store != "kube" || args.status_interval_seconds == 0 {
        return Ok(None);
    }
    let client = danm_runtime::kube_client(args.kubeconfig.as_deref()).await?;
    // Not worth failing ipamd for: allocation does not need it.
    let election = match danm_runtime::elect(
        client.clone(),
        &args.namespace,
        &args.status_lease,
        args.identity.clone(),
    )
    .await
    {
        Ok(election) => election,
        Err(e) => {
            tracing::error!(error = %e, lease = %args.status_lease, "cannot join the status writer's election; this replica writes no network status");
            return Ok(None);
        }
    };
    let config = StatusConfig {
        interval: Duration::from_secs(args.status_interval_seconds),
        writes_per_second: args.status_writes_per_second,
    };
    let metrics = Arc::clone(metrics);
    Ok(Some(tokio::spawn(async move {
        let term =
            |ending| write_while_leading(client.clone(), config, Arc::clone(&metrics), ending);
        if let Err(e) = election.run(danm_runtime::shutdown_signal(), term).await {
            tracing::error!(error = %e, "the status writer's election ended; statuses are no longer written by this replica");
        }
    })))
}

/// Opens the store, puts the `--networks` manifests in it and starts the engine.
async fn start(
    args: &Args,
    manifests: &[store::NetworkObject],
) -> anyhow::Result<(Arc<dyn store::Store>, Arc<Engine>)> {
    let store =
        store::select::open(&args.store, &args.namespace, args.kubeconfig.as_deref()).await?;
    if let Some(dir) = &args.networks {
        tracing::info!(count = manifests.len(), dir = %dir.display(), "loading networks");
    }
    for net in manifests {
        store.put_network(net.clone()).await?;
    }
    let engine = Engine::start(
        store.clone(),
        EngineConfig {
            worker: WorkerConfig {
                start_hint: args.start_hint,
                ..WorkerConfig::default()
            },
            max_interfaces_per_pod: args.max_interfaces_per_pod as usize,
        },
    )
    .await?;
    Ok((store, engine))
}
