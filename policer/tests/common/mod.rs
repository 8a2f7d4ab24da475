//! The policer tests' bed: a pod namespace with two interfaces (`net1`, `net2`), each a veth
//! to a client namespace, TCP and UDP echo servers on ports 80 and 81 in the pod, and
//! probes from the clients.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use danm_core::netpol::PodRules;
use danm_policer::apply::{apply, current};
use danm_policer::controller::{Config, run};
use danm_policer::metrics::Metrics;
use danm_policer::ruleset::replace;
use danm_testkit::netns::Netns;

/// What a probe saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The echo came back.
    Answered,
    /// Refused at once: a TCP reset or an ICMP unreachable (REJECT).
    Refused,
    /// Nothing within the timeout.
    Silent,
}

pub struct Bed {
    pub pod: Netns,
    /// Behind `net1` and `net2`.
    pub clients: [Netns; 2],
}

pub const POD_V4: [&str; 2] = ["10.99.1.2", "10.99.2.2"];
pub const CLIENT_V4: [&str; 2] = ["10.99.1.1", "10.99.2.1"];
pub const POD_V6: [&str; 2] = ["fd99:1::2", "fd99:2::2"];
pub const CLIENT_V6: [&str; 2] = ["fd99:1::1", "fd99:2::1"];

impl Bed {
    pub fn new() -> Bed {
        let pod = Netns::new("pol");
        let clients = [Netns::new("polc"), Netns::new("polc")];
        for (i, client) in clients.iter().enumerate() {
            let ifname = format!("net{}", i + 1);
            pod.ip(&[
                "link",
                "add",
                &ifname,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &client.name,
            ]);
            for (ns, dev, v4, v6) in [
                (&pod, ifname.as_str(), POD_V4[i], POD_V6[i]),
                (client, "eth0", CLIENT_V4[i], CLIENT_V6[i]),
            ] {
                ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
                ns.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    dev,
                    "nodad",
                ]);
                ns.ip(&["link", "set", dev, "up"]);
            }
        }
        serve_echo(&pod, &[80, 81]);
        Bed { pod, clients }
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.pod.path().into()
    }

    /// Probes the pod's address `to` (on the interface of client `from`) on TCP `port`.
    pub fn tcp(&self, from: usize, to: &str, port: u16) -> Seen {
        tcp_probe(
            &self.clients[from],
            SocketAddr::new(to.parse().unwrap(), port),
        )
    }

    /// Probes the pod's address `to` on UDP `port`.
    pub fn udp(&self, from: usize, to: &str, port: u16) -> Seen {
        udp_probe(
            &self.clients[from],
            SocketAddr::new(to.parse().unwrap(), port),
        )
    }

    pub fn apply(&self, rules: &PodRules) {
        apply(&self.path(), &replace(rules, &[]), None).expect("the transaction applies");
    }

    pub fn has_table(&self) -> bool {
        current(&self.path(), None).expect("nft lists").is_some()
    }
}

pub fn echo_tcp(mut stream: TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// TCP and UDP echo servers on `ports` (both families) in `ns`, for the process's life.
pub fn serve_echo(ns: &Netns, ports: &[u16]) {
    let ports = ports.to_vec();
    ns.within(move || {
        for port in ports {
            let tcp = TcpListener::bind(("::", port)).expect("TCP listener");
            std::thread::spawn(move || {
                for stream in tcp.incoming().flatten() {
                    std::thread::spawn(move || echo_tcp(stream));
                }
            });
            let udp = UdpSocket::bind(("::", port)).expect("UDP socket");
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            });
        }
    });
}

/// How long a probe waits for an answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// Connects from `ns` to `target` over TCP and waits for the echo.
pub fn tcp_probe(ns: &Netns, target: SocketAddr) -> Seen {
    ns.within(
        move || match TcpStream::connect_timeout(&target, PROBE_TIMEOUT) {
            Ok(mut stream) => {
                stream.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
                let _ = stream.write_all(b"ping");
                let mut buf = [0u8; 4];
                match stream.read_exact(&mut buf) {
                    Ok(()) if &buf == b"ping" => Seen::Answered,
                    _ => Seen::Silent,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Seen::Refused,
            Err(_) => Seen::Silent,
        },
    )
}

/// Sends a datagram from `ns` to `target` over UDP and waits for the echo.
pub fn udp_probe(ns: &Netns, target: SocketAddr) -> Seen {
    udp_probe_from(ns, target, 0)
}

/// As [`udp_probe`], from source port `port` (0: any). A UDP flow's conntrack entry lives
/// on for 30 s after its last packet: a probe that happened to reuse an earlier probe's
/// source port would be "established" traffic, accepted whatever the rules now say, so
/// callers that probe one pair many times give each probe a port of its own.
pub fn udp_probe_from(ns: &Netns, target: SocketAddr, port: u16) -> Seen {
    ns.within(move || {
        let any: IpAddr = if target.is_ipv4() {
            "0.0.0.0".parse().unwrap()
        } else {
            "::".parse().unwrap()
        };
        let socket = UdpSocket::bind((any, port)).unwrap();
        socket.connect(target).unwrap();
        socket.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
        let _ = socket.send(b"ping");
        let mut buf = [0u8; 4];
        match socket.recv(&mut buf) {
            Ok(4) if &buf == b"ping" => Seen::Answered,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Seen::Refused,
            _ => Seen::Silent,
        }
    })
}

/// Lifts ICMP's rate limits in `ns` (its own sysctls, not the host's): a probe refused
/// with an ICMP unreachable must not go silent because an earlier one used the budget.
pub fn no_icmp_rate_limit(ns: &Netns) {
    ns.within(|| {
        for (file, value) in [
            ("/proc/sys/net/ipv4/icmp_ratelimit", "0"),
            ("/proc/sys/net/ipv6/icmp/ratelimit", "0"),
            ("/proc/sys/net/ipv4/icmp_msgs_per_sec", "100000"),
        ] {
            std::fs::write(file, value).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    });
}

/// Our table in the namespace at `netns` as `nft` lists it, without handles and `nft`'s
/// metainfo (which differ between two loads of the same table); None when there is none.
pub fn normalized(netns: &std::path::Path) -> Option<serde_json::Value> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.remove("handle");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let listed = current(netns, None).expect("nft lists")?;
    let mut value = serde_json::to_value(listed).unwrap();
    if let Some(items) = value["nftables"].as_array_mut() {
        items.retain(|item| item.get("metainfo").is_none());
    }
    strip(&mut value);
    Some(value)
}

/// The policer's controller, in this process, for node `node`: settles 50 ms, applies four
/// tables at once, no gate.
pub struct Running {
    pub metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), danm_policer::gate::ServeError>>,
}

impl Running {
    pub fn start(client: kube::Client, node: &str) -> Running {
        let metrics = Arc::new(Metrics::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = Config {
            node: node.to_owned(),
            nft: None,
            netns_root: "/var/run/netns".into(),
            settle: Duration::from_millis(50),
            parallel: 4,
            node_addresses: Vec::new(),
            gate_socket: None,
            gate_wait: Duration::from_secs(20),
        };
        let task = tokio::spawn(run(client, config, Arc::clone(&metrics), async {
            let _ = stopped.await;
        }));
        Running {
            metrics,
            stop: Some(stop),
            task,
        }
    }

    pub async fn synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.metrics.readiness().is_err() {
            assert!(Instant::now() < deadline, "no first round within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}
