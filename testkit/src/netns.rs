//! Network namespaces and links for the tests that build interfaces (as root): made with
//! `ip`, named uniquely per process, and deleted however the test ends.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether this process runs as root (network namespaces need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .and_then(|v| v.split_whitespace().next().map(str::to_owned))
            })
        })
        .is_some_and(|uid| uid == "0")
}

/// Fails the test unless it runs as root: a test that needs namespaces never passes
/// silently without them.
pub fn require_root() {
    assert!(
        is_root(),
        "this test builds interfaces in network namespaces: run it as root (CI does)"
    );
}

/// A name unique to this process and call, short enough for an interface name (at most
/// 15 bytes with a prefix of up to 5).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 10_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `ip` with `args`; its standard output. Panics, with `ip`'s error, if it fails.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name: `/var/run/netns/<name>`.
    pub name: String,
}

impl Netns {
    /// A new namespace named `<prefix><unique>`, its loopback up.
    pub fn new(prefix: &str) -> Netns {
        require_root();
        let name = unique(prefix);
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Its path, as a CNI runtime passes it.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs `ip -n <name>` with `args`; its standard output.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `work` on a thread inside the namespace (the sockets it opens live there);
    /// what it returns.
    pub fn within<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let file = std::fs::File::open(self.path()).expect("the namespace's file");
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("entering the namespace");
            work()
        })
        .join()
        .expect("the thread in the namespace")
    }

    /// The names of its links.
    pub fn links(&self) -> Vec<String> {
        let links: serde_json::Value =
            serde_json::from_str(&self.ip(&["-j", "link", "show"])).expect("ip's JSON");
        links
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A link of the host's namespace, deleted on drop (with its veth peer, if it has one).
#[derive(Debug)]
pub struct HostLink {
    /// Its name.
    pub name: String,
}

impl HostLink {
    /// Deletes the host's link `name` when dropped (a link the test made otherwise).
    pub fn adopt(name: &str) -> HostLink {
        HostLink {
            name: name.to_owned(),
        }
    }

    /// A veth pair in the host's namespace, `<name>` and `<name>p`, both up.
    pub fn veth(prefix: &str) -> HostLink {
        require_root();
        let name = unique(prefix);
        let peer = format!("{name}p");
        ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &name, "up"]);
        ip(&["link", "set", &peer, "up"]);
        HostLink { name }
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}
