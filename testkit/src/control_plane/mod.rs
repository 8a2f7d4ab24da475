//! A real Kubernetes control plane for tests, the Rust counterpart of controller-runtime's
//! envtest: etcd, kube-apiserver and kube-controller-manager (and kube-scheduler on request)
//! built from the upstream Go modules pinned in `testkit/k8s/` (by `testkit/k8s/build.sh`,
//! cached after the first build), started on free loopback ports with certificates generated
//! here, RBAC authorization and ServiceAccount tokens, with the danm.io CRDs of
//! `crds/manifests/` applied.
//!
//! [`ControlPlane::shared`] starts one control plane per test binary (on first use) and
//! hands it to every test of that binary; tests isolate themselves by namespace
//! ([`ControlPlane::namespace`]). Every process is watched by a watchdog that stops it when
//! the test binary ends, however it ends: no process is left behind, even after a panic.
//!
//! A test gets an admin [`kube::Client`] ([`ControlPlane::client`]), an admin kubeconfig
//! file for `kubectl` and our binaries ([`ControlPlane::kubeconfig`]), and clients and
//! kubeconfigs acting as a given user or ServiceAccount, so that RBAC is tested for real.

mod components;
mod credentials;
mod pki;
mod process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, PostParams};

pub use credentials::{client_from_file, config_from_file, plain_kubeconfig};
pub use pki::CertifiedKey;

use credentials::{Credentials, kubeconfig_text, write};
use pki::Pki;
use process::{Process, Watchdog};

/// The ClusterIP range of Services (never routed: no kube-proxy runs).
const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The `kubernetes` Service's address, in the serving certificate.
const SERVICE_IP: [u8; 4] = [10, 96, 0, 1];
/// The ServiceAccount token issuer.
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The controllers kube-controller-manager runs: garbage collection, namespaces,
/// ServiceAccounts and their tokens, Endpoints and EndpointSlices, the workload
/// controllers (Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs), ClusterRole
/// aggregation (DANM's user roles extend admin, edit and view) and ResourceQuotas. No node
/// lifecycle controller: the nodes of the tests have no kubelet to heartbeat.
const CONTROLLERS: &str = "garbagecollector,namespace,serviceaccount,serviceaccount-token,\
root-ca-cert-publisher,endpoint,endpointslice,endpointslicemirroring,deployment,replicaset,\
statefulset,daemonset,job,clusterrole-aggregation,resourcequota";

/// The common name of the client certificate the API server presents to admission
/// webhooks (see [`ControlPlane::client_cert`]).
pub const WEBHOOK_CLIENT: &str = "kube-apiserver-webhook-client";

/// How long a start may take before it is reported as failed.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Why the control plane could not be built, started or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `testkit/k8s/build.sh` failed (Go missing, a module not served, a compile error).
    #[error("building the control plane failed ({0}); run testkit/k8s/build.sh to see why")]
    Build(String),
    /// A file or process could not be read, written or started.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// A key or certificate could not be generated.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A process of the control plane ended or did not become ready in time.
    #[error("{process} {reason}; the end of its log:\n{log}")]
    Start {
        /// Which process.
        process: String,
        /// What happened.
        reason: String,
        /// The last lines of its log.
        log: String,
    },
    /// A request to the API server failed.
    #[error("{0}: {1}")]
    Kube(String, #[source] kube::Error),
    /// A kubeconfig could not be turned into a client.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
}

/// How to start a control plane.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Also start kube-scheduler (for tests that create Deployments whose pods must be
    /// bound to nodes).
    pub scheduler: bool,
    /// Let etcd fsync its writes, as in production. Off by default: tests do not survive a
    /// power cut and gain speed; the bench turns it on.
    pub etcd_fsync: bool,
    /// Where etcd keeps its data (default: inside the control plane's folder under the
    /// system's temporary directory).
    pub etcd_data_dir: Option<PathBuf>,
    /// Also run the pod garbage collector, which deletes the pods of nodes that no longer
    /// exist (after its 40 s quarantine): for tests whose nodes die. Off by default: other
    /// tests bind pods to nodes that never exist.
    pub pod_gc: bool,
    /// Also run the node lifecycle controller, which marks nodes whose kubelet stopped
    /// reporting Unknown, taints NotReady and unreachable nodes (evicting their pods) and
    /// lifts the `not-ready` taint a kubelet registers with: for real nodes. Off by
    /// default: other tests' nodes do not renew their leases.
    pub node_lifecycle: bool,
    /// Also run the CronJob controller: for real nodes, which run `deploy/`'s CronJobs.
    pub cron_jobs: bool,
}

/// A running control plane. See the module overview.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    bin_dir: PathBuf,
    url: String,
    pki: Pki,
    admin_kubeconfig: PathBuf,
    processes: Mutex<Vec<Process>>,
    /// Kept open while the control plane lives; its end stops every process.
    _watchdog: Watchdog,
    names: AtomicU64,
    owned_dir: bool,
}

/// A process started with [`ControlPlane::spawn_beside`]; killed when dropped.
#[derive(Debug)]
pub struct Spawned(Process);

impl Spawned {
    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.child.id()
    }
    /// The exit status if it has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.exited()
    }
    /// The last `lines` lines of its output.
    pub fn log_tail(&self, lines: usize) -> String {
        self.0.log_tail(lines)
    }
    /// Its whole output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.0.log).unwrap_or_default()
    }
}

static SHARED: tokio::sync::OnceCell<Result<ControlPlane, String>> =
    tokio::sync::OnceCell::const_new();

pub use crate::process::free_port;

/// The folder of the control plane's binaries: `DANM_K8S_BIN` if set, else what
/// `testkit/k8s/build.sh` builds (or finds in its cache).
pub fn binaries() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("DANM_K8S_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Error::Io(script.display().to_string(), e))?;
    if !out.status.success() {
        return Err(Error::Build(format!(
            "{} exited with {}",
            script.display(),
            out.status
        )));
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if dir.is_empty() {
        return Err(Error::Build(format!(
            "{} printed no folder",
            script.display()
        )));
    }
    Ok(PathBuf::from(dir))
}

impl ControlPlane {
    /// The control plane of this test binary, started by the first test that asks for it.
    /// Panics, naming the cause, if it cannot start (every later caller panics too).
    pub async fn shared() -> &'static ControlPlane {
        let started = SHARED
            .get_or_init(|| async {
                ControlPlane::start(Options::default())
                    .await
                    .map_err(|e| format!("{e}"))
            })
            .await;
        match started {
            Ok(plane) => plane,
            Err(e) => panic!("the test control plane did not start: {e}"),
        }
    }

    /// Starts a control plane of its own (stopped when dropped).
    pub async fn start(options: Options) -> Result<ControlPlane, Error> {
        let bin_dir = binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("danm-control-plane-")
            .tempdir()
            .map_err(|e| Error::Io("temporary folder".into(), e))?
            .keep();
        let watchdog = Watchdog::start(&dir)?;
        let pki = Pki::generate(&dir)?;
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let admin = pki.client_cert("danm-testkit-admin", &["system:masters"])?;
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        write(
            &admin_kubeconfig,
            &kubeconfig_text(&url, Some(&pki.ca_pem), Credentials::Certificate(&admin)),
        )?;
        let plane = ControlPlane {
            dir,
            bin_dir,
            url,
            pki,
            admin_kubeconfig,
            processes: Mutex::new(Vec::new()),
            _watchdog: watchdog,
            names: AtomicU64::new(0),
            owned_dir: true,
        };
        let started = Instant::now();
        let etcd = plane.start_etcd(&options)?;
        plane.start_apiserver(port, &etcd)?;
        let client = plane.client().await;
        plane.wait_ready(&client, "kube-apiserver").await?;
        plane.apply_crds(&client).await?;
        // The controllers start after the CRDs exist, so the garbage collector knows them.
        plane.start_controller_manager(&options)?;
        if options.scheduler {
            plane.start_scheduler()?;
        }
        plane
            .wait_for_default_service_account(&client, "default")
            .await?;
        tracing::info!(elapsed = ?started.elapsed(), url = %plane.url, dir = %plane.dir.display(), "control plane ready");
        Ok(plane)
    }
    /// Fails with the process's log if any process of the control plane has ended.
    fn check_alive(&self) -> Result<(), Error> {
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        for p in processes.iter_mut() {
            if let Some(status) = p.exited() {
                return Err(Error::Start {
                    process: p.name.clone(),
                    reason: format!("exited ({status})"),
                    log: p.log_tail(30),
                });
            }
        }
        Ok(())
    }

    fn log_of(&self, name: &str) -> String {
        process::log_tail(&self.dir.join(format!("{name}.log")), 30)
    }

    async fn wait_ready(&self, client: &kube::Client, name: &str) -> Result<(), Error> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_alive()?;
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("a valid request");
            match client.request_text(request).await {
                Ok(text) if text.trim() == "ok" => return Ok(()),
                other if Instant::now() > deadline => {
                    return Err(Error::Start {
                        process: name.into(),
                        reason: format!(
                            "was not ready after {START_TIMEOUT:?} (last answer: {other:?})"
                        ),
                        log: self.log_of(name),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Creates every CRD of `crds/manifests/` and waits until each is established.
    async fn apply_crds(&self, client: &kube::Client) -> Result<(), Error> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/manifests");
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let mut names = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| Error::Io(dir.display().to_string(), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Error::Io(file.display().to_string(), e))?;
            let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
                .map_err(|e| Error::Kubeconfig(format!("{}: {e}", file.display())))?;
            let created = api
                .create(&PostParams::default(), &crd)
                .await
                .map_err(|e| Error::Kube(format!("creating {}", file.display()), e))?;
            names.push(created.metadata.name.unwrap_or_default());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for name in names {
            loop {
                let crd = api
                    .get(&name)
                    .await
                    .map_err(|e| Error::Kube(format!("reading CRD {name}"), e))?;
                let established = crd.status.and_then(|s| s.conditions).is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
                if established {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(Error::Start {
                        process: "kube-apiserver".into(),
                        reason: format!("did not establish CRD {name} within 60 s"),
                        log: self.log_of("kube-apiserver"),
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    async fn wait_for_default_service_account(
        &self,
        client: &kube::Client,
        namespace: &str,
    ) -> Result<(), Error> {
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_alive()?;
            if let Ok(Some(_)) = api.get_opt("default").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Start {
                    process: "kube-controller-manager".into(),
                    reason: format!(
                        "did not create the default ServiceAccount of {namespace} in time"
                    ),
                    log: self.log_of("kube-controller-manager"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA that signed the API server's certificate and every client certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// A kubeconfig file of a cluster administrator (`system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// A client of a cluster administrator.
    pub async fn client(&self) -> kube::Client {
        client_from_file(&self.admin_kubeconfig)
            .await
            .expect("the admin kubeconfig is valid")
    }

    /// The path of one of the built binaries (`kubectl`, `etcd`, ...).
    pub fn binary(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// `kubectl` as the administrator.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(self.binary("kubectl"));
        command.arg("--kubeconfig").arg(&self.admin_kubeconfig);
        command
    }

    /// Creates a namespace named `<prefix>-<n>`, unique in this control plane, and waits
    /// until its `default` ServiceAccount exists (pods cannot be created before).
    pub async fn namespace(&self, prefix: &str) -> String {
        let n = self.names.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{n}");
        self.create_namespace(&name).await;
        name
    }

    /// Creates the namespace `name` (if missing) and waits for its default ServiceAccount.
    pub async fn create_namespace(&self, name: &str) {
        let client = self.client().await;
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        match Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("creating namespace {name}: {e}"),
        }
        self.wait_for_default_service_account(&client, name)
            .await
            .unwrap_or_else(|e| panic!("namespace {name}: {e}"));
    }

    /// Applies YAML manifests with `kubectl apply` as the administrator; returns kubectl's
    /// output, or its error output.
    pub fn kubectl_apply(&self, yaml: &str) -> Result<String, String> {
        self.kubectl_with_input(&["apply", "-f", "-"], yaml)
    }

    /// Runs kubectl (as the administrator) with `args`, `input` on its standard input: its
    /// standard output, or its standard error when it fails.
    pub fn kubectl_with_input(&self, args: &[&str], input: &str) -> Result<String, String> {
        use std::io::Write as _;
        let mut child = self
            .kubectl()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("kubectl: {e}"))?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())
            .map_err(|e| format!("kubectl stdin: {e}"))?;
        let out = child
            .wait_with_output()
            .map_err(|e| format!("kubectl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Starts a process next to the control plane (one of our binaries, say a webhook the
    /// API server calls): its output in `<name>.log` of the control plane's folder, stopped
    /// when the returned handle is dropped or, at the latest, when the test binary ends.
    pub fn spawn_beside(&self, name: &str, command: Command) -> Result<Spawned, Error> {
        Process::spawn_command(&self._watchdog, &self.dir, name, command).map(Spawned)
    }

    /// The log file of one process of the control plane (`kube-apiserver`, `etcd`, ...).
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Stop the API server's clients first (the controllers), then it, then etcd.
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(p) = processes.pop() {
            drop(p);
        }
        if self.owned_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
