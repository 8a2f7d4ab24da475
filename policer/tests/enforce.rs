//! The policer's tables enforced for real on the bed of `common` (a pod with `net1` and
//! `net2`, a client behind each), probed over IPv4 and IPv6 after each transaction. As root.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{Bed, CLIENT_V4, POD_V4, POD_V6, Seen, echo_tcp, normalized};
use danm_core::netpol::{AddressSet, Allowance, Isolated, Peers, PodRules, Ports, Protocol};
use danm_policer::apply::{apply, apply_first};
use danm_policer::ruleset::{create, remove, replace};

fn isolated(ifname: &str, allow: Vec<Allowance>) -> Isolated {
    Isolated {
        ifname: ifname.into(),
        allow,
    }
}

fn addresses(list: &[&str]) -> AddressSet {
    let mut set = AddressSet::default();
    for a in list {
        set.insert_net(a.parse().unwrap());
    }
    set
}

#[test]
fn ingress_rules_on_one_interface_leave_the_other_open() {
    let bed = Bed::new();
    assert!(!bed.has_table());
    for port in [80, 81] {
        assert_eq!(
            bed.tcp(0, POD_V4[0], port),
            Seen::Answered,
            "no policy, port {port}"
        );
        assert_eq!(
            bed.udp(0, POD_V4[0], port),
            Seen::Answered,
            "no policy, UDP {port}"
        );
    }
    // Deny all on net1: refused (REJECT, not a silent drop), on both families and protocols.
    bed.apply(&PodRules {
        ingress: vec![isolated("net1", Vec::new())],
        egress: Vec::new(),
    });
    assert!(bed.has_table());
    for port in [80, 81] {
        assert_eq!(bed.tcp(0, POD_V4[0], port), Seen::Refused);
        assert_eq!(bed.tcp(0, POD_V6[0], port), Seen::Refused);
        assert_eq!(bed.udp(0, POD_V4[0], port), Seen::Refused);
        assert_eq!(bed.udp(0, POD_V6[0], port), Seen::Refused);
        // net2 is not isolated.
        assert_eq!(bed.tcp(1, POD_V4[1], port), Seen::Answered);
        assert_eq!(bed.udp(1, POD_V6[1], port), Seen::Answered);
    }
    // Allow the client of net1 on TCP 80 only (IPv4 by address, IPv6 by prefix).
    bed.apply(&PodRules {
        ingress: vec![isolated(
            "net1",
            vec![Allowance {
                peers: Peers::Only(addresses(&["10.99.1.1/32", "fd99:1::/64"])),
                ports: Ports::Only(vec![(Protocol::Tcp, 80, 80)]),
            }],
        )],
        egress: Vec::new(),
    });
    assert_eq!(bed.tcp(0, POD_V4[0], 80), Seen::Answered);
    assert_eq!(bed.tcp(0, POD_V6[0], 80), Seen::Answered);
    assert_eq!(bed.tcp(0, POD_V4[0], 81), Seen::Refused);
    assert_eq!(bed.udp(0, POD_V4[0], 80), Seen::Refused);
    // Removed: everything open again, no table left.
    apply(&bed.path(), &remove(), None).unwrap();
    assert!(!bed.has_table());
    assert_eq!(bed.tcp(0, POD_V4[0], 81), Seen::Answered);
}

/// A new sandbox's first table is created (no delete in the transaction); on a sandbox that
/// holds a table of ours after all, the create is refused and the table replaced: never
/// added to.
#[test]
fn a_first_table_is_created_and_one_already_there_is_replaced_not_added_to() {
    let bed = Bed::new();
    let deny = PodRules {
        ingress: vec![isolated("net1", Vec::new())],
        egress: Vec::new(),
    };
    let open_80 = PodRules {
        ingress: vec![isolated(
            "net1",
            vec![Allowance {
                peers: Peers::Any,
                ports: Ports::Only(vec![(Protocol::Tcp, 80, 80)]),
            }],
        )],
        egress: Vec::new(),
    };
    apply_first(&bed.path(), &create(&deny, &[]), &replace(&deny, &[]), None).unwrap();
    assert_eq!(bed.tcp(0, POD_V4[0], 80), Seen::Refused);
    let created = normalized(&bed.path());
    assert!(created.is_some());
    apply(&bed.path(), &replace(&deny, &[]), None).unwrap();
    assert_eq!(
        normalized(&bed.path()),
        created,
        "created and replaced: the same table"
    );
    // Created again over the table: refused by the kernel, then replaced.
    apply_first(
        &bed.path(),
        &create(&open_80, &[]),
        &replace(&open_80, &[]),
        None,
    )
    .unwrap();
    let twice = normalized(&bed.path());
    apply(&bed.path(), &replace(&open_80, &[]), None).unwrap();
    assert_eq!(twice, normalized(&bed.path()), "replaced, not added to");
    assert_eq!(bed.tcp(0, POD_V4[0], 80), Seen::Answered);
    assert_eq!(bed.tcp(0, POD_V4[0], 81), Seen::Refused);
}

#[test]
fn an_ip_block_with_an_exception_and_a_port_range() {
    let bed = Bed::new();
    let mut peers = addresses(&["10.99.0.0/16"]);
    peers.remove_net("10.99.1.0/24".parse().unwrap());
    bed.apply(&PodRules {
        ingress: vec![
            isolated(
                "net1",
                vec![Allowance {
                    peers: Peers::Only(peers.clone()),
                    ports: Ports::Any,
                }],
            ),
            isolated(
                "net2",
                vec![Allowance {
                    peers: Peers::Only(peers),
                    ports: Ports::Only(vec![(Protocol::Tcp, 79, 80), (Protocol::Udp, 81, 90)]),
                }],
            ),
        ],
        egress: Vec::new(),
    });
    // 10.99.1.1 is the exception; 10.99.2.1 is in the block.
    assert_eq!(bed.tcp(0, POD_V4[0], 80), Seen::Refused);
    assert_eq!(bed.tcp(1, POD_V4[1], 80), Seen::Answered);
    assert_eq!(bed.tcp(1, POD_V4[1], 81), Seen::Refused);
    assert_eq!(bed.udp(1, POD_V4[1], 81), Seen::Answered);
    assert_eq!(bed.udp(1, POD_V4[1], 80), Seen::Refused);
    // No IPv6 peer: IPv6 is refused on both.
    assert_eq!(bed.tcp(1, POD_V6[1], 80), Seen::Refused);
}

#[test]
fn an_established_connection_survives_a_stricter_table() {
    let bed = Bed::new();
    // The connection opens under a table that allows it, so the namespace's conntrack
    // tracks it (one opened before the pod's first table is not tracked: see
    // docs/policer.md).
    bed.apply(&PodRules {
        ingress: vec![isolated(
            "net1",
            vec![Allowance {
                peers: Peers::Any,
                ports: Ports::Only(vec![(Protocol::Tcp, 80, 80)]),
            }],
        )],
        egress: Vec::new(),
    });
    let target = SocketAddr::new(POD_V4[0].parse().unwrap(), 80);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<bool>();
    bed.clients[0].within(move || {
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(1)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        std::thread::spawn(move || {
            // Waits for the deny-all table, then talks again on the same connection.
            rx.recv().unwrap();
            let mut buf = [0u8; 4];
            let ok = stream.write_all(b"pong").is_ok()
                && stream.read_exact(&mut buf).is_ok()
                && &buf == b"pong";
            done_tx.send(ok).unwrap();
        });
    });
    bed.apply(&PodRules {
        ingress: vec![isolated("net1", Vec::new())],
        egress: Vec::new(),
    });
    assert_eq!(bed.tcp(0, POD_V4[0], 80), Seen::Refused, "a new connection");
    tx.send(()).unwrap();
    assert!(
        done_rx.recv().unwrap(),
        "the established connection still talks"
    );
}

#[test]
fn egress_isolation_allows_dns_and_the_listed_peers_only() {
    let bed = Bed::new();
    // Servers in client 0's namespace on TCP 53 and 80, reached from the pod.
    bed.clients[0].within(|| {
        for port in [53, 80] {
            let tcp = TcpListener::bind(("0.0.0.0", port)).unwrap();
            std::thread::spawn(move || {
                for stream in tcp.incoming().flatten() {
                    std::thread::spawn(move || echo_tcp(stream));
                }
            });
        }
    });
    let reach = |port: u16| {
        let target = SocketAddr::new(CLIENT_V4[0].parse().unwrap(), port);
        bed.pod.within(move || {
            match TcpStream::connect_timeout(&target, Duration::from_millis(700)) {
                Ok(_) => Seen::Answered,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Seen::Refused,
                Err(_) => Seen::Silent,
            }
        })
    };
    assert_eq!(reach(80), Seen::Answered);
    bed.apply(&PodRules {
        ingress: Vec::new(),
        egress: vec![isolated("net1", Vec::new())],
    });
    assert_eq!(reach(80), Seen::Refused, "egress denied");
    assert_eq!(reach(53), Seen::Answered, "DNS is always allowed out");
    // Ingress on net1 is not isolated: the client still reaches the pod.
    assert_eq!(bed.tcp(0, POD_V4[0], 81), Seen::Answered);
    bed.apply(&PodRules {
        ingress: Vec::new(),
        egress: vec![isolated(
            "net1",
            vec![Allowance {
                peers: Peers::Only(addresses(&["10.99.1.1/32"])),
                ports: Ports::Only(vec![(Protocol::Tcp, 80, 80)]),
            }],
        )],
    });
    assert_eq!(reach(80), Seen::Answered);
}

#[test]
fn a_refused_transaction_keeps_the_rules_the_pod_had() {
    let bed = Bed::new();
    bed.apply(&PodRules {
        ingress: vec![isolated("net1", Vec::new())],
        egress: Vec::new(),
    });
    // A batch the kernel refuses half-way (a jump to a chain that does not exist): none of
    // it applies, the deny-all table stays.
    let mut broken = serde_json::to_value(replace(&PodRules::default(), &[])).unwrap();
    broken["nftables"].as_array_mut().unwrap().push(serde_json::json!(
        {"add": {"rule": {"family": "inet", "table": "danm_policer", "chain": "nowhere", "expr": [{"accept": null}]}}}
    ));
    let broken: nftables::schema::Nftables = serde_json::from_value(broken).unwrap();
    let err = apply(&bed.path(), &broken, None).unwrap_err();
    assert!(
        err.to_string().contains("refused the transaction")
            && err.to_string().contains("No such file or directory"),
        "{err}"
    );
    assert!(bed.has_table());
    assert_eq!(bed.tcp(0, POD_V4[0], 80), Seen::Refused);
}

/// An `nft` that hangs is killed after `NFT_TIMEOUT`: the apply fails (retried next round)
/// and the pod keeps its table, instead of the rounds, and every gate call, waiting forever.
#[test]
fn a_hung_nft_is_killed_and_the_pod_keeps_its_rules() {
    use std::os::unix::fs::PermissionsExt;
    let bed = Bed::new();
    bed.apply(&PodRules {
        ingress: vec![isolated("net1", Vec::new())],
        egress: Vec::new(),
    });
    let dir = tempfile::tempdir().unwrap();
    let hung = dir.path().join("nft");
    std::fs::write(&hung, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&hung, std::fs::Permissions::from_mode(0o755)).unwrap();
    let started = std::time::Instant::now();
    let err = apply(
        &bed.path(),
        &replace(&PodRules::default(), &[]),
        Some(&hung),
    )
    .unwrap_err();
    assert!(err.to_string().contains("did not finish"), "{err}");
    assert!(
        started.elapsed() < danm_policer::apply::NFT_TIMEOUT + Duration::from_secs(5),
        "killed at the limit, not when sleep ended"
    );
    assert!(bed.has_table());
    assert_eq!(bed.tcp(0, POD_V4[0], 80), Seen::Refused);
}

/// Traffic between a pod and its node is always allowed (kubelet's probes): here the
/// "node" is client 0's address.
#[test]
fn the_nodes_addresses_are_always_allowed() {
    let bed = Bed::new();
    let rules = PodRules {
        ingress: vec![isolated("net1", Vec::new()), isolated("net2", Vec::new())],
        egress: Vec::new(),
    };
    let node = [CLIENT_V4[0].parse().unwrap()];
    apply(&bed.path(), &replace(&rules, &node), None).unwrap();
    assert_eq!(bed.tcp(0, POD_V4[0], 80), Seen::Answered, "from the node");
    assert_eq!(bed.tcp(1, POD_V4[1], 80), Seen::Refused, "from anyone else");
}

/// A pod that routes between its interfaces: a forwarded packet must pass the ingress
/// rules of the interface it comes in on and the egress rules of the one it leaves by.
#[test]
fn forwarded_traffic_passes_both_interfaces_rules() {
    let bed = Bed::new();
    bed.pod
        .within(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap());
    bed.clients[0].ip(&["route", "add", "10.99.2.0/24", "via", POD_V4[0]]);
    bed.clients[1].ip(&["route", "add", "10.99.1.0/24", "via", POD_V4[1]]);
    common::serve_echo(&bed.clients[1], &[80]);
    let target = SocketAddr::new(CLIENT_V4[1].parse().unwrap(), 80);
    assert_eq!(
        common::tcp_probe(&bed.clients[0], target),
        Seen::Answered,
        "routed"
    );
    // In on net1: allowed from anyone; out on net2: nothing allowed.
    bed.apply(&PodRules {
        ingress: vec![isolated(
            "net1",
            vec![Allowance {
                peers: Peers::Any,
                ports: Ports::Any,
            }],
        )],
        egress: vec![isolated("net2", Vec::new())],
    });
    assert_eq!(
        common::tcp_probe(&bed.clients[0], target),
        Seen::Refused,
        "the egress rules of net2 apply to forwarded traffic"
    );
    // Out on net2 allowed to client 1: the forwarded connection passes.
    bed.apply(&PodRules {
        ingress: vec![isolated(
            "net1",
            vec![Allowance {
                peers: Peers::Any,
                ports: Ports::Any,
            }],
        )],
        egress: vec![isolated(
            "net2",
            vec![Allowance {
                peers: Peers::Only(addresses(&["10.99.2.1/32"])),
                ports: Ports::Only(vec![(Protocol::Tcp, 80, 80)]),
            }],
        )],
    });
    assert_eq!(common::tcp_probe(&bed.clients[0], target), Seen::Answered);
}
