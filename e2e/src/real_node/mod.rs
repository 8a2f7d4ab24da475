//! A real node: kubelet (built by `testkit/k8s/build.sh` at the control plane's pin) and
//! containerd with runc, as processes on this machine, joined to the test's control plane
//! with a client certificate of `system:node:<name>` in `system:nodes`, as a kubelet's.
//! containerd runs `danm` for every pod sandbox, from its own `bin_dir` and `conf_dir`, as
//! on a production node since Kubernetes 1.24 (kubelet no longer calls CNI itself).
//!
//! * containerd: Debian's 1.6 from `PATH` ([`Containerd::debian`]; CI installs it with
//!   runc), or 2.x as `testkit/k8s/build.sh` builds it ([`Containerd::built`]); runc from
//!   `PATH` (Debian's 1.1).
//! * Images: no registry is reachable, so the sandbox image is built here
//!   ([`danm_testkit::image`]) from the `pause` program and imported with `ctr`; the test
//!   programs' images and those of `deploy/images` likewise ([`images`]).
//! * The node's own folder holds containerd's root and state, kubelet's root, certificates
//!   and pod logs, containerd's `opt` folder and runc's state, and the CNI folders
//!   ([`RealNode::start`]); a bare node ([`RealNode::start_bare`]) uses the host's
//!   `/opt/cni/bin` and `/etc/cni/net.d` instead, as `deploy/` expects. On drop, kubelet
//!   then every task and containerd are killed, then the shims and whatever still runs in
//!   the cgroups the node made; mounts under the folder are undone; the cgroups, `cni-*`
//!   network namespaces, shim sockets (`/run/containerd/s`), kubelet's log links, libcni's
//!   cached results and the host folders that appeared are removed; the sysctls kubelet
//!   sets (`kernel.panic`, `vm.overcommit_memory`...) get their values back; the folder
//!   goes ([`HostSnapshot`] is what a test compares to prove it). kubelet is told not to
//!   add iptables chains (`makeIPTablesUtilChains: false`). A test binary killed with
//!   SIGKILL skips all this but for its processes (the control plane's watchdog kills
//!   those).
//! * Services and cluster DNS, which a cluster's kube-proxy and CoreDNS would give:
//!   [`services::ServiceProxy`].
//!
//! Only one real node runs at a time on a machine (the sysctls are the host's): [`RealNode`]
//! holds an exclusive lock on `/run/danm-real-node.lock` while it lives.
//!
//! This VM's quirks, each answered in the configuration: cgroup v1 (`failCgroupV1: false`),
//! no systemd (`cgroupDriver: cgroupfs`, processes started by hand), root without
//! CAP_SYS_RESOURCE (`restrict_oom_score_adj`), swap (`failSwapOn: false`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub mod bed;
mod cni;
mod containerd;
pub mod demo;
mod host;
pub mod images;
pub mod policy;
pub mod services;
pub mod suite;

pub use cni::{CniTiming, Sandbox};
pub use containerd::Containerd;
pub use host::HostSnapshot;
use host::{HostState, kill_shims, lock_host};

use danm_testkit::control_plane::{ControlPlane, Spawned, free_port};
use danm_testkit::image::{Image, ImageFile, docker_archive};
use k8s_openapi::api::core::v1::Node;

/// Where a bare node's CNI binaries go (`/opt/cni/bin`), removed with it.
const BARE_CNI_BIN_ROOT: &str = "/opt/cni";
/// Where a bare node's CNI configuration goes (`/etc/cni/net.d`), removed with it.
const BARE_CNI_CONF_ROOT: &str = "/etc/cni";
/// The folder of the kubelet client certificate `00-danm.conf.template` names.
const BARE_KUBELET_PKI: &str = "/var/lib/kubelet/pki";

/// The sandbox image every real node imports ([`program_image`] of `pause`).
pub const PAUSE_IMAGE: &str = "danm.test/pause:1";

/// The image `danm.test/<program>:1` of one of the programs `testkit/k8s/build.sh` builds
/// for the nodes (`pause`, `netcheck`): the static binary at `/<program>`, its entrypoint,
/// run as user 65535.
pub fn program_image(plane: &ControlPlane, program: &str) -> Image {
    Image {
        reference: format!("danm.test/{program}:1"),
        files: vec![ImageFile {
            source: plane.binary(program),
            path: format!("/{program}"),
            mode: 0o755,
        }],
        entrypoint: vec![format!("/{program}")],
        user: Some("65535".into()),
        links: vec![],
    }
}

/// What the node's CNI is.
#[derive(Debug, Clone)]
pub struct RealNodeConfig {
    /// The node's name.
    pub name: String,
    /// The workspace's `danm` plugin, installed in the node's CNI `bin_dir` beside the
    /// host's reference plugins (`/usr/lib/cni`).
    pub danm: PathBuf,
    /// The node's `00-danm.conf`; `cniDir` and `kubeletCheckpoint` are set to the node's
    /// folders.
    pub cni_config: serde_json::Value,
    /// Other files of `conf_dir` (a delegate's configuration), by name.
    pub cni_files: Vec<(String, String)>,
    /// Time every call of `danm`: it is installed as `danm.real` behind a shell wrapper
    /// that records each call's command, container, start, end and exit status.
    pub cni_timing: bool,
    /// Install the configuration as `00-danm.conflist` of this `cniVersion` (its one
    /// plugin is `cni_config`), instead of `00-danm.conf`: with 1.1.0, containerd 2.x calls
    /// STATUS (a `.conf` is never asked STATUS).
    pub conflist_version: Option<String>,
}

/// See the module overview.
#[derive(Debug)]
pub struct RealNode {
    /// The node's name.
    pub name: String,
    /// The containerd it runs.
    pub containerd: Containerd,
    kubelet: Option<Spawned>,
    containerd_process: Option<Spawned>,
    dir: PathBuf,
    /// containerd's CNI `bin_dir` and `conf_dir`.
    cni_bin: PathBuf,
    cni_conf: PathBuf,
    /// Whether the node has production paths ([`RealNode::start_bare`]).
    bare: bool,
    host: HostState,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl RealNode {
    /// Starts containerd and kubelet for `config.name`, joined to `plane`, and waits until
    /// the Node is Ready (its runtime and network ready: containerd has read
    /// `00-danm.conf`).
    pub async fn start(
        plane: &ControlPlane,
        containerd: Containerd,
        config: RealNodeConfig,
    ) -> RealNode {
        let lock = lock_host();
        let dir = std::env::temp_dir().join(format!(
            "danm-real-node-{}-{}",
            config.name,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let cni_bin = dir.join("cni/bin");
        let cni_conf = dir.join("cni/net.d");
        for d in [
            &cni_bin,
            &cni_conf,
            &dir.join("containerd"),
            &dir.join("kubelet"),
        ] {
            std::fs::create_dir_all(d).expect("the node's folders");
        }
        let host = HostState::save(&dir, vec![]);
        let mut node = RealNode {
            name: config.name.clone(),
            containerd,
            kubelet: None,
            containerd_process: None,
            dir,
            cni_bin: cni_bin.clone(),
            cni_conf: cni_conf.clone(),
            bare: false,
            host,
            _lock: lock,
        };
        node.install_cni(&config, &cni_bin, &cni_conf);
        node.start_containerd(plane).await;
        node.import(plane, "pause");
        node.start_kubelet(plane).await;
        node
    }

    /// Starts node `name` as a fresh node of a cluster whose CNI is yet to be installed:
    /// containerd's CNI folders are the host's `/opt/cni/bin` and `/etc/cni/net.d`, empty,
    /// and the kubelet's client certificate and key are also at
    /// `/var/lib/kubelet/pki/kubelet-client-current.pem`, as on a kubeadm node: the paths
    /// `deploy/` assumes. Returns once the Node is registered (it is NotReady until a CNI
    /// configuration appears). Those host folders must not exist before (this refuses to
    /// touch a machine with a CNI installed), and are removed on drop.
    pub async fn start_bare(plane: &ControlPlane, containerd: Containerd, name: &str) -> RealNode {
        let lock = lock_host();
        let owned = [BARE_CNI_BIN_ROOT, BARE_CNI_CONF_ROOT, BARE_KUBELET_PKI];
        for path in owned {
            host::clear_stale(Path::new(path));
            assert!(
                !Path::new(path).exists(),
                "{path} exists: this machine has a CNI or kubelet installed, which a bare real node would overwrite"
            );
        }
        let dir =
            std::env::temp_dir().join(format!("danm-real-node-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in [dir.join("containerd"), dir.join("kubelet")] {
            std::fs::create_dir_all(d).expect("the node's folders");
        }
        let host = HostState::save(&dir, owned.iter().map(PathBuf::from).collect());
        let mut node = RealNode {
            name: name.to_string(),
            containerd,
            kubelet: None,
            containerd_process: None,
            dir,
            cni_bin: Path::new(BARE_CNI_BIN_ROOT).join("bin"),
            cni_conf: Path::new(BARE_CNI_CONF_ROOT).join("net.d"),
            bare: true,
            host,
            _lock: lock,
        };
        for root in [BARE_CNI_BIN_ROOT, BARE_CNI_CONF_ROOT] {
            host::create_marked(Path::new(root));
        }
        for d in [&node.cni_bin, &node.cni_conf] {
            std::fs::create_dir_all(d).expect("the host's CNI folders");
        }
        // The reference plugins a node's packages put there (kubeadm's `kubernetes-cni`):
        // containerd 1.x runs `loopback` for every sandbox.
        node.link_reference_plugins();
        node.start_containerd(plane).await;
        node.import(plane, "pause");
        node.start_kubelet(plane).await;
        node
    }

    /// The node's CNI `conf_dir`.
    pub fn cni_dir(&self) -> PathBuf {
        self.cni_conf.clone()
    }

    /// The node's CNI `bin_dir`.
    pub fn cni_bin(&self) -> PathBuf {
        self.cni_bin.clone()
    }

    /// containerd's socket.
    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    async fn start_containerd(&mut self, plane: &ControlPlane) {
        let d = &self.dir;
        let (bin, conf) = (&self.cni_bin, &self.cni_conf);
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{ttrpc}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            root = d.join("containerd/root").display(),
            state = d.join("containerd/state").display(),
            socket = self.socket().display(),
            ttrpc = d.join("containerd-ttrpc.sock").display(),
            opt = d.join("containerd/opt").display(),
            runc = d.join("runc").display(),
            bin = bin.display(),
            conf = conf.display(),
        );
        let file = d.join("containerd.toml");
        std::fs::write(&file, config).expect("containerd's configuration");
        let mut command = Command::new(&self.containerd.daemon);
        command.arg("--config").arg(&file).env(
            "PATH",
            format!(
                "{}:{}",
                self.containerd.bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
        // A socket left by a containerd killed before must not pass for the new one's.
        let _ = std::fs::remove_file(self.socket());
        let mut process = plane
            .spawn_beside(&format!("containerd-{}", self.name), command)
            .expect("containerd starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ctr(&["version"]).is_err() {
            if let Some(status) = process.exited() {
                panic!("containerd exited ({status}):\n{}", process.log_tail(30));
            }
            assert!(
                Instant::now() < deadline,
                "containerd does not listen after 30 s:\n{}",
                process.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.containerd_process = Some(process);
    }

    /// `ctr` against this node's containerd, in kubelet's namespace.
    fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.containerd.ctr)
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .map_err(|e| format!("ctr: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "ctr {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// What container `container` of pod `namespace/name` wrote, from kubelet's log files
    /// (`<pod-logs>/<namespace>_<name>_<uid>/<container>/*.log`, CRI's format: each line
    /// prefixed with its time and stream).
    pub fn container_log(&self, namespace: &str, name: &str, container: &str) -> String {
        let prefix = format!("{namespace}_{name}_");
        let mut out = String::new();
        let Ok(pods) = std::fs::read_dir(self.dir.join("pod-logs")) else {
            return out;
        };
        for pod in pods.flatten() {
            if !pod.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let Ok(files) = std::fs::read_dir(pod.path().join(container)) else {
                continue;
            };
            for file in files.flatten() {
                out.push_str(&std::fs::read_to_string(file.path()).unwrap_or_default());
            }
        }
        out
    }

    /// Imports `program`'s image ([`program_image`]) into the node's containerd.
    pub fn import(&self, plane: &ControlPlane, program: &str) {
        self.import_image(&program_image(plane, program));
    }

    /// Imports `image` into the node's containerd (as a docker archive in the node's folder).
    pub fn import_image(&self, image: &Image) {
        let archive = self.dir.join("image.tar");
        docker_archive(image, &archive)
            .unwrap_or_else(|e| panic!("the image {} is written: {e}", image.reference));
        self.ctr(&["images", "import", &archive.display().to_string()])
            .unwrap_or_else(|e| panic!("the image {} is imported: {e}", image.reference));
        let _ = std::fs::remove_file(&archive);
    }

    async fn start_kubelet(&mut self, plane: &ControlPlane) {
        let d = &self.dir;
        let (kubeconfig, certificate) =
            plane.user_credentials(&format!("system:node:{}", self.name), &["system:nodes"]);
        if self.bare {
            let pem = Path::new(BARE_KUBELET_PKI).join("kubelet-client-current.pem");
            host::create_marked(Path::new(BARE_KUBELET_PKI));
            std::fs::write(
                &pem,
                format!("{}{}", certificate.cert_pem, certificate.key_pem),
            )
            .expect("kubelet's client certificate");
            std::fs::set_permissions(&pem, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("kubelet's client certificate is root's alone");
        }
        // The control plane authorizes with RBAC alone: the node's user gets the role the
        // Node authorizer stands in for in production.
        plane
            .kubectl_apply(&format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: danm-real-node-{name}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:node}}\nsubjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: 'system:node:{name}'}}]\n",
                name = self.name
            ))
            .expect("the node's role is bound");
        let socket = format!("unix://{}", self.socket().display());
        let mut config = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzPort": 0,
            "authentication": {"anonymous": {"enabled": false}, "webhook": {"enabled": false}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": false,
            "enforceNodeAllocatable": [],
            "failSwapOn": false,
            "failCgroupV1": false,
            "containerRuntimeEndpoint": socket,
            "imageServiceEndpoint": socket,
            "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "imagefs.available": "0%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "makeIPTablesUtilChains": false,
            "podLogsDir": d.join("pod-logs"),
            "syncFrequency": "5s",
            "clusterDomain": services::CLUSTER_DOMAIN,
            "nodeStatusUpdateFrequency": "5s",
        });
        if self.bare {
            // The test bed's cluster DNS ([`services::ServiceProxy`]).
            config["clusterDNS"] = serde_json::json!([services::CLUSTER_DNS]);
        }
        let file = d.join("kubelet.json");
        std::fs::write(&file, config.to_string()).expect("kubelet's configuration");
        let mut command = Command::new(plane.binary("kubelet"));
        command
            .arg("--config")
            .arg(&file)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--root-dir")
            .arg(d.join("kubelet"))
            .arg("--cert-dir")
            .arg(d.join("kubelet-pki"))
            .args(["--hostname-override", &self.name, "--v=2"]);
        let mut process = plane
            .spawn_beside(&format!("kubelet-{}", self.name), command)
            .expect("kubelet starts");
        let nodes: kube::Api<Node> = kube::Api::all(plane.client().await);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = process.exited() {
                panic!("kubelet exited ({status}):\n{}", process.log_tail(40));
            }
            let node = nodes.get_opt(&self.name).await.ok().flatten();
            let ready = node
                .as_ref()
                .and_then(|n| n.status.as_ref()?.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True");
            // A bare node has no network until the CNI installer runs: registered is enough.
            if ready || (self.bare && node.is_some()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} not Ready after 60 s: {:?}\n--- kubelet\n{}\n--- containerd\n{}",
                self.name,
                node.and_then(|n| n.status?.conditions),
                process.log_tail(30),
                self.containerd_log(20)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.kubelet = Some(process);
    }

    /// kubelet and containerd are killed and started again, as on a node whose runtime
    /// crashes or is upgraded: the pods' containers and shims keep running in between.
    /// Returns once the new containerd answers and the new kubelet has reported the Node
    /// (a heartbeat newer than the old kubelet's last) Ready.
    pub async fn restart_runtime(&mut self, plane: &ControlPlane) {
        let nodes: kube::Api<Node> = kube::Api::all(plane.client().await);
        let heartbeat = |node: Option<Node>| {
            node.and_then(|n| n.status?.conditions)
                .and_then(|c| c.into_iter().find(|c| c.type_ == "Ready"))
                .map(|c| (c.status, c.last_heartbeat_time.map(|t| t.0)))
        };
        drop(self.kubelet.take());
        drop(self.containerd_process.take());
        let before = heartbeat(nodes.get_opt(&self.name).await.ok().flatten());
        self.start_containerd(plane).await;
        self.start_kubelet(plane).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = heartbeat(nodes.get_opt(&self.name).await.ok().flatten());
            if let Some((status, Some(_))) = &now
                && status == "True"
                && now != before
            {
                return;
            }
            if let Some(status) = self.kubelet.as_mut().and_then(Spawned::exited) {
                panic!(
                    "kubelet exited after the restart ({status}):\n{}",
                    self.kubelet_log(30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "the restarted kubelet has not reported the node Ready within 60 s: {now:?}\n{}",
                self.kubelet_log(30)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The last lines of containerd's log.
    pub fn containerd_log(&self, lines: usize) -> String {
        self.containerd_process
            .as_ref()
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }

    /// The last lines of kubelet's log.
    pub fn kubelet_log(&self, lines: usize) -> String {
        self.kubelet
            .as_ref()
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }

    /// Stops kubelet, every container, containerd and its shims, and undoes what they did
    /// to the host (see the module overview).
    fn stop(&mut self) {
        drop(self.kubelet.take());
        if self.containerd_process.is_some() {
            for kind in ["tasks", "containers"] {
                let ids = self.ctr(&[kind, "ls", "-q"]).unwrap_or_default();
                for id in ids.split_whitespace() {
                    if kind == "tasks" {
                        let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
                        std::thread::sleep(Duration::from_millis(200));
                        let _ = self.ctr(&["tasks", "delete", "-f", id]);
                    } else {
                        let _ = self.ctr(&["containers", "delete", id]);
                    }
                }
            }
        }
        drop(self.containerd_process.take());
        kill_shims(&self.socket());
        self.host.restore();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.stop();
    }
}
