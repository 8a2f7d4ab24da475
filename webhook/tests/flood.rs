//! A hostile caller on the node network floods the webhooks (issue 24) while the API
//! server's admissions go on: TenantNetwork create reviews with fresh uids (each would
//! reserve an id), bodies far over the limit, bodies just under it that decode to
//! hundreds of megabytes, and hundreds of idle connections. The webhooks answer the
//! admission paths to the API server's certificate only (as
//! `deploy/components/apiserver-client-auth` configures them), and bound what any request
//! may cost. Afterwards: the flood reserved no id, neither replica's peak memory came near
//! the Deployment's 256 MiB limit, and every real admission was answered. The real
//! admissions' latency without and under the flood is printed (`-- --nocapture`), not
//! asserted. Idle connections without the API server's certificate are closed soon.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use danm_crds::TenantNetwork;
use danm_testkit::control_plane::ControlPlane;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

/// The flood's own source addresses (loopback): the API server's connections come from
/// 127.0.0.1, and the webhook counts connections per address. Reviews come from one,
/// idle connections from the other.
const FLOOD_SOURCE: [u8; 4] = [127, 0, 0, 2];
const IDLE_SOURCE: [u8; 4] = [127, 0, 0, 3];

fn review(uid: &str, namespace: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "danm.io", "version": "v1", "kind": "TenantNetwork"},
            "resource": {"group": "danm.io", "version": "v1", "resource": "tenantnetworks"},
            "name": uid, "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "attacker"},
            "object": {"apiVersion": "danm.io/v1", "kind": "TenantNetwork",
                "metadata": {"name": uid, "namespace": namespace},
                "spec": {"NetworkID": "f", "NetworkType": "ipvlan",
                         "Options": {"host_device": "ens4"}}},
            "oldObject": null, "dryRun": false
        }
    })
}

/// A body of `size` bytes that decodes to a huge JSON value (a long array of zeros).
fn inflating_body(size: usize) -> Vec<u8> {
    let mut body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","object":{"a":["#.to_vec();
    while body.len() < size - 8 {
        body.extend_from_slice(b"0,");
    }
    body.extend_from_slice(b"0]}}}");
    body
}

/// The peak resident memory of process `pid`, in KiB (`VmHWM`).
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `count` real TenantNetwork creates through the API server; their latencies (each must
/// be admitted), deleted afterwards.
async fn real_admissions(bed: &Bed, namespace: &str, tag: &str, count: usize) -> Vec<Duration> {
    let api: Api<TenantNetwork> = Api::namespaced(bed.plane.client().await, namespace);
    let mut latencies = Vec::new();
    for i in 0..count {
        let name = format!("{tag}-{i}");
        let tn: TenantNetwork = serde_json::from_value(json!({
            "apiVersion": "danm.io/v1", "kind": "TenantNetwork",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"NetworkID": format!("r{i}"), "NetworkType": "ipvlan",
                     "Options": {"host_device": "ens4"}},
        }))
        .unwrap();
        let started = Instant::now();
        api.create(&PostParams::default(), &tn)
            .await
            .unwrap_or_else(|e| panic!("real admission {name} failed: {e}"));
        latencies.push(started.elapsed());
    }
    for i in 0..count {
        api.delete(&format!("{tag}-{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    latencies
}

fn p(latencies: &mut [Duration], q: f64) -> Duration {
    latencies.sort();
    latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_the_node_network_reserves_nothing_and_starves_nothing() {
    let bed = bed().await;
    let plane = bed.plane;
    let real_ns = plane.namespace("flood-real").await;
    let mut quiet = real_admissions(bed, &real_ns, "quiet", 40).await;

    let source = IpAddr::from(FLOOD_SOURCE);
    let anonymous = anonymous_https(plane, source);
    let url = |i: usize| format!("https://{}/netvalidation", bed.replicas[i % 2]);
    let mut flood = tokio::task::JoinSet::new();
    // 1. Reviews with fresh uids: each would reserve an id.
    for task in 0..8 {
        let (client, urls) = (anonymous.clone(), [url(0), url(1)]);
        flood.spawn(async move {
            let mut refused = 0;
            for i in 0..150 {
                let uid = format!("00000000-0000-4000-8000-{task:04}{i:08}");
                let answer = client
                    .post(&urls[i % 2])
                    .json(&review(&uid, "flooded"))
                    .send()
                    .await
                    .expect("an answer");
                if answer.status() == 403 {
                    refused += 1;
                }
            }
            ("fresh uids", refused, 150)
        });
    }
    // 2. Bodies over the limit, and bodies under it that inflate when decoded, sent with
    // the API server's own certificate (as if the flood had it): refused unread, or
    // decoded one at a time within the memory budget.
    // Decoding a body that inflates to hundreds of megabytes takes seconds in a debug
    // build: room to wait.
    let api_server = {
        let cert = plane.client_cert(WEBHOOK_CLIENT);
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(plane.ca_pem().as_bytes()).unwrap(),
            )
            .identity(
                reqwest::Identity::from_pem(
                    format!("{}{}", cert.cert_pem, cert.key_pem).as_bytes(),
                )
                .unwrap(),
            )
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap()
    };
    for task in 0..6 {
        let (client, url) = (api_server.clone(), url(task));
        let size = if task % 2 == 0 {
            16 << 20
        } else {
            (4 << 20) - 64
        };
        flood.spawn(async move {
            let body = inflating_body(size);
            let mut refused = 0;
            for _ in 0..3 {
                match client.post(&url).body(body.clone()).send().await {
                    // 413 unread, 400 (not a review) once decoded within the budget, or
                    // 503 when the budget stayed full.
                    Ok(r) if [413, 400, 503].contains(&r.status().as_u16()) => refused += 1,
                    // Over the limit, the webhook may answer 413 and close while the
                    // client is still sending: refused too.
                    Err(_) if size > (4 << 20) => refused += 1,
                    other => panic!("a large body was not refused: {other:?}"),
                }
            }
            ("large bodies", refused, 3)
        });
    }
    // 3. Idle connections, more than one address may hold, to each replica.
    let mut idle = Vec::new();
    for i in 0..600 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((IpAddr::from(IDLE_SOURCE), 0).into()).unwrap();
        if let Ok(stream) = socket.connect(bed.replicas[i % 2]).await {
            idle.push(stream);
        }
    }

    // The API server's admissions go on.
    let mut under = real_admissions(bed, &real_ns, "flood", 40).await;
    while let Some(done) = flood.join_next().await {
        let (what, refused, sent) = done.unwrap();
        assert_eq!(refused, sent, "{what}: {refused} of {sent} refused");
    }
    drop(idle);

    println!(
        "real admissions: p50 {:?} p99 {:?} quiet; p50 {:?} p99 {:?} under the flood",
        p(&mut quiet, 0.5),
        p(&mut quiet, 0.99),
        p(&mut under, 0.5),
        p(&mut under, 0.99)
    );
    // Nothing reserved for the flood's namespace (its reviews were never read): each
    // replica logs every id it reserves, with its network; and the TenantConfig holds none
    // (the bed frees unclaimed reservations after a few seconds, hence the logs).
    assert!(reservations_of(plane, "flooded").await.is_empty());
    {
        let processes = bed.processes.lock().unwrap();
        for process in processes.iter() {
            let log = process.log();
            assert!(
                log.contains("reserved an id"),
                "the real admissions reserved ids"
            );
            assert!(
                !log.contains("flooded/"),
                "the flood reserved an id:\n{log}"
            );
        }
        // Peak memory of both replicas, far from the Deployment's limit.
        for process in processes.iter() {
            let peak = peak_kib(process.id());
            println!(
                "webhook {}: peak resident memory {} MiB",
                process.id(),
                peak / 1024
            );
            assert!(peak < 192 * 1024, "peak {} KiB", peak);
        }
    }
    // A plaintext client (or a port scanner) fails the TLS handshake and is closed.
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut plain = tokio::net::TcpStream::connect(bed.replicas[0])
            .await
            .unwrap();
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: webhook\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer).await;
        assert!(
            !String::from_utf8_lossy(&answer).contains("200 OK"),
            "answered in plaintext"
        );
    }
    // The refusals are counted (the failed handshake just after the connection is closed;
    // its series exists from the first connection on, at 0).
    let scrape = || async {
        reqwest::get(format!("http://{}/metrics", bed.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let failed_handshakes = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("danm_webhook_refused_total{reason=\"handshake\"} "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut metrics = scrape().await;
    for _ in 0..50 {
        if failed_handshakes(&metrics) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = scrape().await;
    }
    assert!(
        failed_handshakes(&metrics) > 0,
        "the plaintext client's handshake was not counted: {metrics}"
    );
    for reason in ["unauthenticated", "too_large", "connections", "handshake"] {
        assert!(
            metrics.contains(&format!(
                "danm_webhook_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {metrics}"
        );
    }
}

/// `--max-pending-per-namespace`: reservations no TenantNetwork carries are capped per
/// namespace ("try again" past it), so reviews that never become objects hold at most that
/// many ids of one namespace for the grace period; another namespace is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_namespace_holds_at_most_its_cap_of_pending_reservations() {
    let bed = bed().await;
    let plane = bed.plane;
    let dir = tempfile::tempdir().unwrap();
    let cert = plane.serving_cert(&["127.0.0.1"]);
    std::fs::write(dir.path().join("tls.crt"), &cert.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &cert.key_pem).unwrap();
    let port = danm_testkit::control_plane::free_port();
    let kubeconfig = danm_testkit::identity::kubeconfig_for(plane, "webhook", &[]).await;
    let mut command = webhook_command(plane, &kubeconfig, port, dir.path(), 600);
    command.args(["--max-pending-per-namespace", "3"]);
    let mut process = plane.spawn_beside("webhook-capped", command).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_ready(plane, addr, &mut process).await;
    let client = https(plane);
    let send = |uid: String, namespace: &'static str| {
        let client = client.clone();
        async move {
            let answer: Value = client
                .post(format!("https://{addr}/netvalidation"))
                .json(&review(&uid, namespace))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answer["response"].clone()
        }
    };
    for i in 0..3 {
        let answer = send(format!("00000000-0000-4000-8000-cap{i:09}"), "capped").await;
        assert_eq!(answer["allowed"], true, "{answer}");
    }
    let answer = send("00000000-0000-4000-8000-cap000000009".into(), "capped").await;
    assert_eq!(answer["allowed"], false, "{answer}");
    assert_eq!(answer["status"]["code"], 500, "try again: {answer}");
    assert!(
        answer["status"]["message"]
            .as_str()
            .unwrap()
            .contains("namespace capped has 3"),
        "{answer}"
    );
    let answer = send(
        "00000000-0000-4000-8000-other0000001".into(),
        "capped-other",
    )
    .await;
    assert_eq!(answer["allowed"], true, "{answer}");
    assert!(reservations_of(plane, "capped").await.len() <= 3);
}

/// An HTTP/2 connection over TLS to a replica from `source` (as the API server connects),
/// with `identity` as client certificate if given, that has had one `/healthz` answered.
/// Returns the client handle and the connection's own task, which ends when the webhook
/// closes the connection.
async fn idle_h2_connection(
    plane: &ControlPlane,
    replica: std::net::SocketAddr,
    source: IpAddr,
    identity: Option<&danm_testkit::control_plane::CertifiedKey>,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(plane.ca_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(issued) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let tcp = socket.connect(replica).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = ServerName::IpAddress(replica.ip().into());
    let tls = connector.connect(name, tcp).await.unwrap();
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("https://{replica}/healthz"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    // The client handle is returned with the connection: dropping it would close the
    // connection from this side.
    (client, connection)
}

/// Idle connections give their slot back: one without the API server's certificate (it
/// may only probe or scrape) is closed about ten seconds after its last answer; the API
/// server's own stays open longer (two minutes), so that it reuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_without_the_api_servers_certificate_are_closed_soon() {
    let bed = bed().await;
    let replica = bed.replicas[0];
    let api_server_cert = bed.plane.client_cert(WEBHOOK_CLIENT);
    let source = IpAddr::from(IDLE_SOURCE);
    let (_anonymous_client, anonymous) = idle_h2_connection(bed.plane, replica, source, None).await;
    let (_api_server_client, mut api_server) =
        idle_h2_connection(bed.plane, replica, source, Some(&api_server_cert)).await;

    let closed = tokio::time::timeout(Duration::from_secs(40), anonymous)
        .await
        .expect("the anonymous idle connection was closed");
    assert!(closed.is_ok(), "{closed:?}");
    // By now the anonymous connection has been idle for its ten seconds: the API server's,
    // opened at the same time, outlives it.
    let still_open = tokio::time::timeout(Duration::from_secs(10), &mut api_server).await;
    assert!(
        still_open.is_err(),
        "the API server's idle connection stayed open: {still_open:?}"
    );
    api_server.abort();
}
