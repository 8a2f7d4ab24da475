//! The machines of the end-to-end cluster: each node is a network namespace with two veth
//! links into two bridges of the test's own, neither with an uplink:
//!
//! * `eth0`, management: the node's address on `192.0.2.0/24` (TEST-NET-1), its
//!   InternalIP (the host's services reach the nodes through [`crate::tunnel`]: this
//!   machine drops what namespaces send to the host's addresses);
//! * `eth1`, the "physical" interface the pods' macvlans and the tenants' VxLANs ride on,
//!   on a data bridge that nothing but the nodes joins (its address, on `192.0.3.0/24`, is
//!   the VxLANs' local address).
//!
//! Everything is removed on drop: the bridges, the node namespaces and what is left in
//! them.

use std::process::Command;

pub use danm_testkit::netns::{ip, is_root, unique};

/// The two bridges.
#[derive(Debug)]
pub struct Fabric {
    /// The management bridge.
    pub management: String,
    /// The data bridge.
    pub data: String,
}

impl Fabric {
    /// Creates both bridges, up.
    pub fn new() -> Fabric {
        assert!(
            is_root(),
            "the end-to-end cluster builds network namespaces: run as root (CI does)"
        );
        let management = unique("e2em");
        let data = unique("e2ed");
        for bridge in [&management, &data] {
            ip(&["link", "add", bridge, "type", "bridge"]);
            ip(&["link", "set", bridge, "up"]);
        }
        // VxLANs find each other by multicast (DANM's group per VNI): flood it, with no
        // IGMP querier to learn from.
        ip(&[
            "link",
            "set",
            &data,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        Fabric { management, data }
    }
}

impl Default for Fabric {
    fn default() -> Fabric {
        Fabric::new()
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for bridge in [&self.management, &self.data] {
            let _ = Command::new("ip").args(["link", "del", bridge]).status();
        }
    }
}

/// A node's network namespace, joined to both bridges.
#[derive(Debug)]
pub struct Machine {
    /// The namespace's name (`/var/run/netns/<name>`).
    pub netns: String,
    /// Its management address.
    pub address: String,
}

impl Machine {
    /// The `index`th machine (1-based, at most 200) on `fabric`.
    pub fn new(fabric: &Fabric, index: u8) -> Machine {
        let netns = unique("e2en");
        ip(&["netns", "add", &netns]);
        let address = format!("192.0.2.{}", 10 + u16::from(index));
        for (link, bridge) in [("eth0", &fabric.management), ("eth1", &fabric.data)] {
            let host_side = unique("e2ev");
            ip(&[
                "link", "add", &host_side, "type", "veth", "peer", "name", link, "netns", &netns,
            ]);
            ip(&["link", "set", &host_side, "master", bridge, "up"]);
            ip(&["-n", &netns, "link", "set", link, "up"]);
        }
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        // The "physical" link's own address: the local address of netwatcher's VxLANs.
        let underlay = format!("192.0.3.{}/24", 10 + u16::from(index));
        ip(&["-n", &netns, "addr", "add", &underlay, "dev", "eth1"]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ]);
        Machine { netns, address }
    }

    /// `ip` inside the machine.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.netns.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command run inside the machine's namespace (`ip netns exec`).
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).arg(program);
        command
    }

    /// `GET http://127.0.0.1:<port><path>` from inside the machine (a node-local admin
    /// server, as a node's Prometheus agent scrapes it): the status line and body, or why
    /// not. Blocking: it runs on a thread of its own that enters the namespace.
    pub fn http_get(&self, port: u16, path: &str) -> Result<String, String> {
        use std::io::{Read, Write};
        let netns = crate::tunnel::netns_path(&self.netns);
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        std::thread::spawn(move || {
            let inside = std::fs::File::open(&netns).map_err(|e| e.to_string())?;
            nix::sched::setns(&inside, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering {}: {e}", netns.display()))?;
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
                .map_err(|e| format!("127.0.0.1:{port}: {e}"))?;
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            stream
                .write_all(request.as_bytes())
                .map_err(|e| e.to_string())?;
            let mut answer = String::new();
            stream
                .read_to_string(&mut answer)
                .map_err(|e| e.to_string())?;
            Ok(answer)
        })
        .join()
        .map_err(|_| "the scraping thread panicked".to_owned())?
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // The veths go with the namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}
