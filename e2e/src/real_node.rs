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
//!   ([`danm_testkit::image`]) from the `pause` program and imported with `ctr`; pods use
//!   `imagePullPolicy: Never`.
//! * The node's own folder holds containerd's root and state, kubelet's root, certificates
//!   and pod logs, the CNI folders. The host keeps: nothing. On drop, kubelet then every
//!   task and containerd stop, the shims are killed, every mount under the folder is
//!   undone, the cgroups containerd made are removed, the sysctls kubelet sets
//!   (`kernel.panic`, `vm.overcommit_memory`...) get their values back and the folder goes.
//!   kubelet is told not to add iptables chains (`makeIPTablesUtilChains: false`).
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

use danm_testkit::control_plane::{ControlPlane, Spawned, free_port};
use danm_testkit::image::{Image, ImageFile, docker_archive};
use k8s_openapi::api::core::v1::Node;

/// The sandbox image every real node imports.
pub const PAUSE_IMAGE: &str = "danm.test/pause:1";

/// The sysctls kubelet sets on start (`setupKernelTunables`), restored on drop.
const KUBELET_SYSCTLS: &[&str] = &[
    "kernel/panic",
    "kernel/panic_on_oops",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// The containerd a node runs.
#[derive(Debug, Clone)]
pub struct Containerd {
    /// `containerd`.
    pub daemon: PathBuf,
    /// `ctr`.
    pub ctr: PathBuf,
    /// The folder with `containerd-shim-runc-v2`, put first on the daemon's `PATH`.
    pub bin_dir: PathBuf,
    /// What `containerd --version` says.
    pub version: String,
}

impl Containerd {
    /// Debian's containerd 1.6 (`apt-get install containerd runc`; `.ci/run` installs
    /// them), from `PATH`.
    pub fn debian() -> Containerd {
        let found = which("containerd")
            .and_then(|daemon| Containerd::in_dir(daemon.parent()?))
            .filter(|c| c.minor_version() == "1.6");
        found.unwrap_or_else(|| {
            panic!(
                "containerd 1.6 with containerd-shim-runc-v2, ctr and runc is not on PATH: \
                 `apt-get install containerd runc` on Debian 12 (.ci/run does)"
            )
        })
    }

    /// containerd 2.x as `testkit/k8s/build.sh` builds it, beside the control plane's
    /// binaries.
    pub fn built(plane: &ControlPlane) -> Containerd {
        let dir = plane.binary("containerd");
        Containerd::in_dir(&dir).unwrap_or_else(|| {
            panic!(
                "{} lacks containerd, containerd-shim-runc-v2 or ctr, or runc is not on PATH",
                dir.display()
            )
        })
    }

    /// The containerd of `bin_dir`, if it has the daemon, the shim and `ctr` (the host's
    /// `ctr` otherwise) and runc is on `PATH`.
    fn in_dir(bin_dir: &Path) -> Option<Containerd> {
        let daemon = bin_dir.join("containerd");
        let ctr = [bin_dir.join("ctr"), which("ctr").unwrap_or_default()]
            .into_iter()
            .find(|p| p.is_file())?;
        if !daemon.is_file() || !bin_dir.join("containerd-shim-runc-v2").is_file() {
            return None;
        }
        which("runc")?;
        let out = Command::new(&daemon).arg("--version").output().ok()?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Some(Containerd {
            daemon,
            ctr,
            bin_dir: bin_dir.to_owned(),
            version,
        })
    }

    /// The `major.minor` of this containerd (`1.6`), from its `--version`.
    pub fn minor_version(&self) -> String {
        self.version
            .split_whitespace()
            .find_map(|w| {
                let mut parts = w.trim_start_matches('v').split(['.', '~', '-', '+']);
                let (major, minor) = (parts.next()?, parts.next()?);
                (major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok())
                    .then(|| format!("{major}.{minor}"))
            })
            .unwrap_or_default()
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
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
        let host = HostState::save(&dir);
        let mut node = RealNode {
            name: config.name.clone(),
            containerd,
            kubelet: None,
            containerd_process: None,
            dir,
            host,
            _lock: lock,
        };
        node.install_cni(&config, &cni_bin, &cni_conf);
        node.start_containerd(plane, &cni_bin, &cni_conf).await;
        node.import_pause(plane);
        node.start_kubelet(plane).await;
        node
    }

    /// The node's CNI `conf_dir`.
    pub fn cni_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }

    /// containerd's socket.
    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn install_cni(&self, config: &RealNodeConfig, bin: &Path, conf: &Path) {
        if let Ok(entries) = std::fs::read_dir("/usr/lib/cni") {
            for entry in entries.flatten() {
                let _ = std::os::unix::fs::symlink(entry.path(), bin.join(entry.file_name()));
            }
        }
        std::fs::copy(&config.danm, bin.join("danm")).expect("danm is installed on the node");
        let mut cni_config = config.cni_config.clone();
        cni_config["cniDir"] = serde_json::json!(conf);
        cni_config["kubeletCheckpoint"] = serde_json::json!(
            self.dir
                .join("kubelet/device-plugins/kubelet_internal_checkpoint")
        );
        std::fs::write(conf.join("00-danm.conf"), cni_config.to_string()).expect("00-danm.conf");
        for (name, text) in &config.cni_files {
            std::fs::write(conf.join(name), text).expect("a CNI file");
        }
    }

    async fn start_containerd(&mut self, plane: &ControlPlane, bin: &Path, conf: &Path) {
        let d = &self.dir;
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{ttrpc}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            root = d.join("containerd/root").display(),
            state = d.join("containerd/state").display(),
            socket = self.socket().display(),
            ttrpc = d.join("containerd-ttrpc.sock").display(),
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
        let mut process = plane
            .spawn_beside(&format!("containerd-{}", self.name), command)
            .expect("containerd starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket().exists() {
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

    fn import_pause(&self, plane: &ControlPlane) {
        let archive = self.dir.join("pause.tar");
        docker_archive(
            &Image {
                reference: PAUSE_IMAGE.into(),
                files: vec![ImageFile {
                    source: plane.binary("pause"),
                    path: "/pause".into(),
                    mode: 0o755,
                }],
                entrypoint: vec!["/pause".into()],
                user: Some("65535".into()),
            },
            &archive,
        )
        .expect("the pause image is written");
        self.ctr(&["images", "import", &archive.display().to_string()])
            .unwrap_or_else(|e| panic!("the pause image is imported: {e}"));
    }

    async fn start_kubelet(&mut self, plane: &ControlPlane) {
        let d = &self.dir;
        let kubeconfig =
            plane.user_kubeconfig(&format!("system:node:{}", self.name), &["system:nodes"]);
        // The control plane authorizes with RBAC alone: the node's user gets the role the
        // Node authorizer stands in for in production.
        plane
            .kubectl_apply(&format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: danm-real-node-{name}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:node}}\nsubjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: 'system:node:{name}'}}]\n",
                name = self.name
            ))
            .expect("the node's role is bound");
        let socket = format!("unix://{}", self.socket().display());
        let config = serde_json::json!({
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
            "nodeStatusUpdateFrequency": "5s",
        });
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
            if ready {
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

/// Holds `/run/danm-real-node.lock` (one real node per machine at a time).
fn lock_host() -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/danm-real-node.lock")
        .expect("the real node's lock file");
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("the real node's lock: {e}"))
}

/// Kills what is left of containerd's shims for `socket` (a shim outlives containerd).
fn kill_shims(socket: &Path) {
    let socket = socket.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("containerd-shim") && cmdline.contains(&socket) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// What the node changes on the host, saved before it starts.
#[derive(Debug)]
struct HostState {
    dir: PathBuf,
    sysctls: Vec<(&'static str, String)>,
    cgroups: Vec<PathBuf>,
    netns: Vec<String>,
}

impl HostState {
    fn save(dir: &Path) -> HostState {
        let sysctls = KUBELET_SYSCTLS
            .iter()
            .filter_map(|s| {
                let value = std::fs::read_to_string(Path::new("/proc/sys").join(s)).ok()?;
                Some((*s, value.trim().to_owned()))
            })
            .collect();
        HostState {
            dir: dir.to_owned(),
            sysctls,
            cgroups: cgroup_dirs(),
            netns: netns(),
        }
    }

    fn restore(&self) {
        // Mounts under the node's folder, deepest first (kubelet bind-mounts its root on
        // itself; containerd mounts rootfs and shm).
        let prefix = self.dir.display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for name in netns() {
            if !self.netns.contains(&name) && name.starts_with("cni-") {
                let _ = Command::new("ip").args(["netns", "delete", &name]).status();
            }
        }
        for dir in cgroup_dirs() {
            if !self.cgroups.contains(&dir) {
                remove_empty_tree(&dir);
            }
        }
        for (sysctl, value) in &self.sysctls {
            let _ = std::fs::write(Path::new("/proc/sys").join(sysctl), value);
        }
    }
}

/// The cgroups containerd may create: `k8s.io` under each controller's root.
fn cgroup_dirs() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("k8s.io"))
        .filter(|p| p.is_dir())
        .collect()
}

fn remove_empty_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}
