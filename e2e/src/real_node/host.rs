//! What a real node changes on the host, and how it is given back: the sysctls kubelet
//! sets, the mounts under the node's folder, the `cni-*` network namespaces, `k8s.io`
//! cgroups and shim sockets containerd makes, kubelet's log links, the shims and containers
//! that outlive containerd; the lock that keeps to one real node per machine; and the
//! snapshot a test compares before and after a node to prove nothing was left.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The sysctls kubelet sets on start (`setupKernelTunables`), restored on drop.
const KUBELET_SYSCTLS: &[&str] = &[
    "kernel/panic",
    "kernel/panic_on_oops",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// kubelet's default root, where its device manager's socket folder always goes.
const KUBELET_ROOT: &str = "/var/lib/kubelet";

/// Holds `/run/danm-real-node.lock` (one real node per machine at a time).
pub(super) fn lock_host() -> nix::fcntl::Flock<std::fs::File> {
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
pub(super) fn kill_shims(socket: &Path) {
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

/// What a real node may leave on the host outside its own folder, as one comparable
/// snapshot: the `k8s.io` cgroups (every folder under them, in every hierarchy), the
/// network namespaces, containerd's shim sockets (`/run/containerd/s`, a fixed path),
/// kubelet's links in `/var/log/containers`, mounts of node folders, libcni's result cache
/// (`/var/lib/cni/results`), host-local's reservations (`/var/lib/cni/networks`), the
/// nftables tables, and which of the host folders a node may
/// create exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    /// Every folder under a `k8s.io` cgroup, and the `k8s.io` folders themselves.
    pub cgroups: std::collections::BTreeSet<PathBuf>,
    /// The names under `/run/netns`.
    pub netns: std::collections::BTreeSet<String>,
    /// The names under `/run/containerd/s`.
    pub shim_sockets: std::collections::BTreeSet<String>,
    /// The names under `/var/log/containers`.
    pub container_logs: std::collections::BTreeSet<String>,
    /// The mount points under a `danm-real-node-*` folder.
    pub mounts: std::collections::BTreeSet<String>,
    /// The names under `/var/lib/cni/results` (libcni caches each attachment's result).
    pub cni_cache: std::collections::BTreeSet<String>,
    /// `<network>/<file>` under `/var/lib/cni/networks` (host-local's reservations, its
    /// lock and last address of each network).
    pub host_local: std::collections::BTreeSet<String>,
    /// `nft list tables`, line by line.
    pub nft_tables: std::collections::BTreeSet<String>,
    /// Which of the host folders a node may create (`/var/lib/kubelet`, `/var/lib/cni`,
    /// `/opt/cni`, `/etc/cni`) exist.
    pub host_folders: std::collections::BTreeSet<String>,
}

/// The host folders a real node may create (kubelet's fixed device-plugin folder, libcni's
/// cache, a bare node's CNI folders).
const HOST_FOLDERS: &[&str] = &[
    KUBELET_ROOT,
    CNI_CACHE_ROOT,
    HOST_LOCAL_ROOT,
    "/opt/cni",
    "/etc/cni",
];

/// libcni's cache (containerd's default `cacheDir`).
const CNI_CACHE_ROOT: &str = "/var/lib/cni";

/// host-local's default store: a folder per network, a file per reserved address.
const HOST_LOCAL_ROOT: &str = "/var/lib/cni/networks";

/// The file that marks a host folder as a real node's (so a run killed before its
/// clean-up does not block the next: [`clear_stale`]).
const MARKER: &str = ".danm-real-node";

/// Removes `folder` if a real node made it (it holds [`MARKER`]): what a test binary killed
/// before its clean-up left.
pub(super) fn clear_stale(folder: &Path) {
    if folder.join(MARKER).exists() {
        let _ = std::fs::remove_dir_all(folder);
    }
}

/// Creates `folder` (and its parents) and marks it as a real node's.
pub(super) fn create_marked(folder: &Path) {
    std::fs::create_dir_all(folder).expect("a host folder");
    std::fs::write(folder.join(MARKER), "").expect("the folder's marker");
}

impl HostSnapshot {
    /// The host now.
    pub fn take() -> HostSnapshot {
        HostSnapshot {
            cgroups: cgroup_dirs(),
            netns: names_in("/run/netns"),
            shim_sockets: names_in("/run/containerd/s"),
            container_logs: names_in("/var/log/containers"),
            mounts: mounts_under(&std::env::temp_dir().join("danm-real-node-")),
            cni_cache: names_in("/var/lib/cni/results"),
            host_local: names_in(HOST_LOCAL_ROOT)
                .into_iter()
                .flat_map(|network| {
                    names_in(&format!("{HOST_LOCAL_ROOT}/{network}"))
                        .into_iter()
                        .map(move |file| format!("{network}/{file}"))
                })
                .collect(),
            nft_tables: Command::new("nft")
                .args(["list", "tables"])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            host_folders: HOST_FOLDERS
                .iter()
                .filter(|f| Path::new(f).exists())
                .map(|f| f.to_string())
                .collect(),
        }
    }
}

/// What the node changes on the host, saved before it starts.
#[derive(Debug)]
pub(super) struct HostState {
    dir: PathBuf,
    sysctls: Vec<(&'static str, String)>,
    before: HostSnapshot,
    /// Host paths the node creates and owns, removed on restore; `/var/lib/kubelet` too
    /// when it did not exist (kubelet's device manager uses that fixed path).
    owned: Vec<PathBuf>,
}

impl HostState {
    pub(super) fn save(dir: &Path, mut owned: Vec<PathBuf>) -> HostState {
        for folder in [KUBELET_ROOT, CNI_CACHE_ROOT, HOST_LOCAL_ROOT] {
            if !Path::new(folder).exists() {
                owned.push(folder.into());
            }
        }
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
            before: HostSnapshot::take(),
            owned,
        }
    }

    /// Gives back what the node changed: kills what still runs in the cgroups it made
    /// (containers whose containerd died first), undoes its mounts (deepest first), and
    /// removes what appeared since [`HostState::save`] (libcni's cached results and
    /// host-local's reservations among it):
    /// cgroups (deepest first), `cni-*`
    /// network namespaces (containerd 1.6 puts them in `/run/netns`; this assumes no other
    /// container runtime creates pods on the machine meanwhile), shim sockets, and
    /// kubelet's log links into the node's folder; then puts the sysctls back.
    pub(super) fn restore(&self) {
        let now = HostSnapshot::take();
        let mut new_cgroups: Vec<&PathBuf> = now.cgroups.difference(&self.before.cgroups).collect();
        new_cgroups.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in &new_cgroups {
            kill_all(dir);
        }
        let mut mounts: Vec<String> = mounts_under(&self.dir).into_iter().collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for dir in new_cgroups {
            let _ = std::fs::remove_dir(dir);
        }
        for name in now.netns.difference(&self.before.netns) {
            if name.starts_with("cni-") {
                let _ = Command::new("ip").args(["netns", "delete", name]).status();
            }
        }
        for name in now.shim_sockets.difference(&self.before.shim_sockets) {
            let _ = std::fs::remove_file(Path::new("/run/containerd/s").join(name));
        }
        // The folders of those sockets, when nothing else is in them.
        for dir in ["/run/containerd/s", "/run/containerd"] {
            let _ = std::fs::remove_dir(dir);
        }
        for name in now.container_logs.difference(&self.before.container_logs) {
            let link = Path::new("/var/log/containers").join(name);
            if std::fs::read_link(&link).is_ok_and(|target| target.starts_with(&self.dir)) {
                let _ = std::fs::remove_file(link);
            }
        }
        for (sysctl, value) in &self.sysctls {
            let _ = std::fs::write(Path::new("/proc/sys").join(sysctl), value);
        }
        for name in now.cni_cache.difference(&self.before.cni_cache) {
            let _ = std::fs::remove_file(Path::new(CNI_CACHE_ROOT).join("results").join(name));
        }
        // Reservations of pods killed with the node (no DEL ran), then the folders left empty.
        for name in now.host_local.difference(&self.before.host_local) {
            let file = Path::new(HOST_LOCAL_ROOT).join(name);
            let _ = std::fs::remove_file(&file);
            if let Some(network) = file.parent() {
                let _ = std::fs::remove_dir(network);
            }
        }
        for path in &self.owned {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// SIGKILL to every process of the cgroup `dir`.
fn kill_all(dir: &Path) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if !procs.trim().is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Mount points whose path starts with `prefix`.
fn mounts_under(prefix: &Path) -> std::collections::BTreeSet<String> {
    let prefix = prefix.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// The `k8s.io` cgroups containerd creates under each hierarchy's root (cgroup v1, or the
/// unified root of v2), and every folder under them.
fn cgroup_dirs() -> std::collections::BTreeSet<PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let roots = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("k8s.io"))
        .chain([PathBuf::from("/sys/fs/cgroup/k8s.io")]);
    for root in roots {
        walk(&root, &mut out);
    }
    out
}

fn walk(dir: &Path, out: &mut std::collections::BTreeSet<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.insert(dir.to_owned());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&entry.path(), out);
        }
    }
}

fn names_in(dir: &str) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}
