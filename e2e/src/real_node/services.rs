//! Services on a real node without kube-proxy: each Service's ClusterIP and port lead to
//! one ready endpoint, through one nftables table of the test's (`ip danm_real_node_<pid>`),
//! rewritten atomically every second from the Services and EndpointSlices. Its `output`
//! chain serves the host's processes and host-network pods (containerd running `danm`, the
//! API server calling the webhook), its `prerouting` chain the pods. The `kubernetes`
//! Service leads to the API server on loopback (the test control plane serves there, and
//! publishes no endpoint for it), so a pod reaches it only through a link whose
//! `route_localnet` is set ([`ServiceProxy::start`] sets it on the pods' gateway link).
//!
//! Cluster DNS too: [`CLUSTER_DNS`] (a bare node's kubelet gives it to its pods) leads to a
//! small responder of the test's on loopback that answers `A` queries for
//! `<service>.<namespace>.svc.cluster.local` with the Service's ClusterIP, as CoreDNS's
//! `kubernetes` plugin would (NXDOMAIN for every other name, no `AAAA`).
//!
//! This is a test bed's stand-in, not kube-proxy: one endpoint per port (the first ready
//! one), IPv4 only, no NodePorts, no session affinity. The table is deleted on drop.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use danm_testkit::control_plane::ControlPlane;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};

/// The `kubernetes` Service's ClusterIP on the test control plane (in its certificate).
const KUBERNETES_SERVICE: &str = "10.96.0.1";

/// The cluster DNS address pods are given (kubelet's `clusterDNS`).
pub const CLUSTER_DNS: &str = "10.96.0.10";

/// The cluster's DNS domain (kubelet's `clusterDomain`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Each Service's name in DNS (`name.namespace.svc.cluster.local`) and ClusterIP.
type Names = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Ipv4Addr>>>;

/// See the module overview.
#[derive(Debug)]
pub struct ServiceProxy {
    table: String,
    task: tokio::task::JoinHandle<()>,
    dns: tokio::task::JoinHandle<()>,
    /// Held while the table is written; `true` once the proxy is stopping (a write already
    /// under way when the task is aborted must not bring the table back).
    writing: std::sync::Arc<std::sync::Mutex<bool>>,
}

impl ServiceProxy {
    /// Starts following `plane`'s Services; pods come in through `pod_link` (the host end
    /// that the pods' gateway address is on), whose `route_localnet` is set so that their
    /// packets may be sent on to the API server on loopback.
    pub async fn start(plane: &ControlPlane, pod_link: &str) -> ServiceProxy {
        let api: std::net::SocketAddr = plane
            .url()
            .trim_start_matches("https://")
            .parse()
            .expect("the API server's address");
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{pod_link}/route_localnet"),
            "1",
        )
        .expect("route_localnet on the pods' link");
        let table = format!("danm_real_node_{}", std::process::id());
        let client = plane.client().await;
        let name = table.clone();
        let names = Names::default();
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("the DNS responder's socket");
        let dns_address = socket.local_addr().expect("its address");
        let dns = tokio::spawn(serve_dns(socket, names.clone()));
        let writing = std::sync::Arc::new(std::sync::Mutex::new(false));
        let lock = writing.clone();
        let task = tokio::spawn(async move {
            let services: Api<Service> = Api::all(client.clone());
            let slices: Api<EndpointSlice> = Api::all(client);
            let mut applied = String::new();
            loop {
                if let (Ok(s), Ok(e)) = (
                    services.list(&ListParams::default()).await,
                    slices.list(&ListParams::default()).await,
                ) {
                    *names.lock().expect("the names") = dns_names(&s.items);
                    let rules = ruleset(&name, api, dns_address, &s.items, &e.items);
                    if rules != applied {
                        let stopping = lock.lock().expect("the write lock");
                        if *stopping {
                            return;
                        }
                        if nft(&rules).is_ok() {
                            applied = rules;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let proxy = ServiceProxy {
            table,
            task,
            dns,
            writing,
        };
        // The first rules are in place before anything needs them.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while nft(&format!("list table ip {}", proxy.table)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the Services' nftables table is not written"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        proxy
    }
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        *self.writing.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.task.abort();
        self.dns.abort();
        let _ = nft(&format!("delete table ip {}", self.table));
    }
}

/// Runs `nft -f -` on `script`.
fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("a pipe")
        .write_all(script.as_bytes())
        .map_err(|e| format!("nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The whole table, replacing what it held (one `nft -f` transaction).
fn ruleset(
    table: &str,
    api: std::net::SocketAddr,
    dns: std::net::SocketAddr,
    services: &[Service],
    slices: &[EndpointSlice],
) -> String {
    let mut rules = vec![
        format!("ip daddr {KUBERNETES_SERVICE} tcp dport 443 dnat to {api}"),
        format!("ip daddr {CLUSTER_DNS} udp dport 53 dnat to {dns}"),
    ];
    for service in services {
        let (Some(namespace), Some(name), Some(spec)) = (
            service.metadata.namespace.as_deref(),
            service.metadata.name.as_deref(),
            service.spec.as_ref(),
        ) else {
            continue;
        };
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        else {
            continue;
        };
        if cluster_ip == KUBERNETES_SERVICE {
            continue;
        }
        for port in spec.ports.iter().flatten() {
            let protocol = port.protocol.as_deref().unwrap_or("TCP").to_lowercase();
            if let Some((address, target)) = endpoint(namespace, name, port.name.as_deref(), slices)
            {
                rules.push(format!(
                    "ip daddr {cluster_ip} {protocol} dport {} dnat to {address}:{target}",
                    port.port
                ));
            }
        }
    }
    let body = rules.join("\n    ");
    format!(
        "add table ip {table}\nflush table ip {table}\ntable ip {table} {{\n  chain output {{\n    type nat hook output priority -100; policy accept;\n    {body}\n  }}\n  chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n    {body}\n  }}\n}}\n"
    )
}

/// The first ready endpoint of Service `namespace/name` and its port named `port_name`.
fn endpoint(
    namespace: &str,
    name: &str,
    port_name: Option<&str>,
    slices: &[EndpointSlice],
) -> Option<(String, i32)> {
    slices
        .iter()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .is_some_and(|n| n == name)
                && s.address_type == "IPv4"
        })
        .find_map(|slice| {
            let target = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == port_name.unwrap_or(""))?
                .port?;
            let address = slice
                .endpoints
                .iter()
                .find(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))?
                .addresses
                .first()?
                .clone();
            Some((address, target))
        })
}

/// Every Service with an IPv4 ClusterIP, by its DNS name.
fn dns_names(services: &[Service]) -> std::collections::BTreeMap<String, Ipv4Addr> {
    services
        .iter()
        .filter_map(|s| {
            let ip = s.spec.as_ref()?.cluster_ip.as_deref()?.parse().ok()?;
            let name = format!(
                "{}.{}.svc.{CLUSTER_DOMAIN}",
                s.metadata.name.as_deref()?,
                s.metadata.namespace.as_deref()?
            );
            Some((name, ip))
        })
        .collect()
}

/// Answers DNS queries on `socket` from `names` until aborted.
async fn serve_dns(socket: tokio::net::UdpSocket, names: Names) {
    let mut buffer = [0u8; 1500];
    loop {
        let Ok((length, peer)) = socket.recv_from(&mut buffer).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let reply = answer(&buffer[..length], |name| {
            names.lock().expect("the names").get(name).copied()
        });
        if let Some(reply) = reply {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

/// The reply to the DNS query `query` (RFC 1035), one question: `A` records from `lookup`
/// (by the name without its final dot, lowercase), NOERROR with no record for another type
/// of a known name, NXDOMAIN for an unknown name. `None` for what is not a query.
fn answer(query: &[u8], lookup: impl Fn(&str) -> Option<Ipv4Addr>) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let length = usize::from(*query.get(at)?);
        at += 1;
        if length == 0 {
            break;
        }
        if length > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + length)?).to_lowercase());
        at += length;
    }
    let question_end = at + 4;
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let address = lookup(&labels.join("."));
    let mut reply = query[..12].to_vec();
    // QR, the query's opcode and RD, AA; RA; the response code.
    reply[2] = 0x80 | (query[2] & 0x79) | 0x04;
    reply[3] = 0x80 | if address.is_some() { 0 } else { 3 };
    let answers = u16::from(address.is_some() && qtype == 1);
    reply[4..6].copy_from_slice(&1u16.to_be_bytes());
    reply[6..8].copy_from_slice(&answers.to_be_bytes());
    reply[8..12].fill(0);
    reply.extend_from_slice(query.get(12..question_end)?);
    if let (Some(address), 1) = (address, answers) {
        // The question's name (a pointer to offset 12), A, IN, a 5 s TTL, 4 bytes.
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
        reply.extend_from_slice(&address.octets());
    }
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_leads_to_its_first_ready_endpoint_and_kubernetes_to_the_api_server() {
        let services: Vec<Service> = vec![
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "danm-system", "name": "danm-ipamd"},
                "spec": {"clusterIP": "10.96.4.7", "ports": [{"name": "grpc", "port": 50051}]},
            }))
            .unwrap(),
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "x", "name": "headless"},
                "spec": {"clusterIP": "None", "ports": [{"port": 80}]},
            }))
            .unwrap(),
        ];
        let slices: Vec<EndpointSlice> = vec![
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "danm-system", "name": "danm-ipamd-abc",
                             "labels": {"kubernetes.io/service-name": "danm-ipamd"}},
                "addressType": "IPv4",
                "ports": [{"name": "grpc", "port": 50051}],
                "endpoints": [
                    {"addresses": ["192.0.2.9"], "conditions": {"ready": false}},
                    {"addresses": ["192.0.2.2"], "conditions": {"ready": true}},
                ],
            }))
            .unwrap(),
        ];
        let rules = ruleset(
            "t",
            "127.0.0.1:6443".parse().unwrap(),
            "127.0.0.1:5353".parse().unwrap(),
            &services,
            &slices,
        );
        assert!(rules.contains("ip daddr 10.96.0.10 udp dport 53 dnat to 127.0.0.1:5353"));
        assert!(rules.contains("ip daddr 10.96.0.1 tcp dport 443 dnat to 127.0.0.1:6443"));
        assert!(rules.contains("ip daddr 10.96.4.7 tcp dport 50051 dnat to 192.0.2.2:50051"));
        assert!(!rules.contains("192.0.2.9"), "{rules}");
        assert!(!rules.contains("None"), "{rules}");
        assert!(rules.starts_with("add table ip t\nflush table ip t\n"));
    }

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    #[test]
    fn the_dns_responder_answers_a_services_name_with_its_cluster_ip() {
        let lookup = |name: &str| {
            (name == "danm-ipamd.danm-system.svc.cluster.local")
                .then(|| Ipv4Addr::new(10, 96, 4, 7))
        };
        let q = query("danm-ipamd.DANM-system.svc.cluster.local", 1);
        let reply = answer(&q, lookup).unwrap();
        assert_eq!(&reply[..2], &[0x12, 0x34], "the query's id");
        assert_eq!(reply[2] & 0x80, 0x80, "a response");
        assert_eq!(reply[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 1, "one answer");
        assert_eq!(&reply[reply.len() - 4..], &[10, 96, 4, 7]);
        assert_eq!(&reply[12..q.len()], &q[12..], "the question, copied");

        let aaaa = answer(
            &query("danm-ipamd.danm-system.svc.cluster.local", 28),
            lookup,
        )
        .unwrap();
        assert_eq!(
            (aaaa[3] & 0x0f, aaaa[7]),
            (0, 0),
            "a known name without AAAA"
        );
        let unknown = answer(&query("example.com", 1), lookup).unwrap();
        assert_eq!((unknown[3] & 0x0f, unknown[7]), (3, 0), "NXDOMAIN");
        assert!(
            answer(&reply, lookup).is_none(),
            "a response is not answered"
        );
        assert!(
            answer(&q[..14], lookup).is_none(),
            "a cut query is not answered"
        );
    }
}
