//! What a real node changes on the host, and how it is given back: the sysctls kubelet
//! sets, the mounts under the node's folder, the `cni-*` network namespaces and `k8s.io`
//! cgroups containerd makes, the shims that outlive containerd; and the lock that keeps to
//! one real node per machine.

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

/// What the node changes on the host, saved before it starts.
#[derive(Debug)]
pub(super) struct HostState {
    dir: PathBuf,
    sysctls: Vec<(&'static str, String)>,
    cgroups: Vec<PathBuf>,
    netns: Vec<String>,
}

impl HostState {
    pub(super) fn save(dir: &Path) -> HostState {
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

    pub(super) fn restore(&self) {
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
