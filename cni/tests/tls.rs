//! TLS between the plugins and ipamd: ipamd serves with a certificate and requires client
//! certificates from a CA (mutual TLS); `danm-ipam` (and `danm`, through the same client)
//! connects with `ipamdTLS`. Without a client certificate, with an untrusted server, or in
//! plain text, nothing is allocated; TLS settings with a plain-text address are refused
//! before anything connects (the node's token never travels in the clear). A renewed server certificate written over the files
//! is served to new connections without a restart.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use danm_ipamd::engine::Engine;
use danm_ipamd::store::Store;
use danm_ipamd::store::memory::MemoryStore;
use danm_ipamd::tls::TlsFiles;
use danm_ipamd::worker::WorkerConfig;
use danm_testkit::pki::{TestCa, Usage};
use serde_json::{Value, json};

const NETWORK: &str = "
apiVersion: danm.io/v1
kind: DanmNet
metadata: {name: tls, namespace: default}
spec:
  NetworkID: tls
  NetworkType: macvlan
  Options:
    cidr: 10.56.0.0/24
";

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate for `localhost`, a client certificate; and a second,
    /// unrelated CA, with a server certificate for `localhost` of its own (`renewed`).
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path(), "ca");
        let other = TestCa::new(dir.path(), "other-ca");
        ca.issue_files("server", "localhost", None, &["localhost"], Usage::Server);
        ca.issue_files("client", "danm-cni", None, &["danm-cni"], Usage::Client);
        other.issue_files("renewed", "localhost", None, &["localhost"], Usage::Server);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// ipamd in this process with the PKI's server certificate (its files checked every
/// second), requiring client certificates of its CA.
async fn ipamd_with_mutual_tls(pki: &Pki) -> (u16, Arc<Engine>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    for net in danm_ipamd::networks::parse_manifests(NETWORK).unwrap() {
        store.put_network(net).await.unwrap();
    }
    let engine = Engine::start(store, WorkerConfig::default()).await.unwrap();
    let tls = TlsFiles {
        cert: pki.path("server.pem"),
        key: pki.path("server-key.pem"),
        client_ca: vec![pki.path("ca.pem")],
        client_cert_optional: false,
    }
    .server_config(std::time::Duration::from_secs(1))
    .unwrap()
    .0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(danm_ipamd::server::serve_with_tls(
        Arc::clone(&engine),
        listener,
        Some(tls),
        std::future::pending(),
    ));
    (port, engine)
}

fn danm_ipam(cid: &str, ipam: Value) -> (bool, Value) {
    let config = json!({"cniVersion": "1.0.0", "name": "tls", "type": "macvlan", "ipam": ipam});
    let out = danm_testkit::cni::run(
        Path::new(env!("CARGO_BIN_EXE_danm-ipam")),
        &danm_testkit::cni::CniCall {
            command: "ADD",
            container_id: cid,
            netns: "/var/run/netns/none",
            ifname: "net1",
            args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default",
            path: None,
        },
        &config,
    );
    (out.ok, out.stdout)
}

async fn run(cid: &str, ipam: Value) -> (bool, Value) {
    let cid = cid.to_owned();
    tokio::task::spawn_blocking(move || danm_ipam(&cid, ipam))
        .await
        .unwrap()
}

fn tls(pki: &Pki, ca: &str, client: bool) -> Value {
    let p = |n: &str| pki.path(n).display().to_string();
    let mut v = json!({"ca": p(ca), "serverName": "localhost"});
    if client {
        v["cert"] = json!(p("client.pem"));
        v["key"] = json!(p("client-key.pem"));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn danm_ipam_allocates_over_mutual_tls_and_nothing_else_gets_in() {
    let pki = Pki::new();
    let (port, engine) = ipamd_with_mutual_tls(&pki).await;
    let https = format!("https://127.0.0.1:{port}");
    let allocated = || async { engine.list_allocations(None).await.unwrap().len() };

    let ipam = |ipamd: &str, tls: Value| json!({"type": "danm-ipam", "ipamd": ipamd, "network": "tls", "ipamdTLS": tls});
    let (ok, out) = run("c-tls", ipam(&https, tls(&pki, "ca.pem", true))).await;
    assert!(ok, "{out}");
    assert!(
        out["ips"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("10.56.0."),
        "{out}"
    );
    assert_eq!(allocated().await, 1);

    for (cid, config, why) in [
        (
            "c-nocert",
            ipam(&https, tls(&pki, "ca.pem", false)),
            "no client certificate",
        ),
        (
            "c-untrusted",
            ipam(&https, tls(&pki, "other-ca.pem", true)),
            "server not trusted",
        ),
    ] {
        let (ok, out) = run(cid, config).await;
        assert!(!ok, "{why}: {out}");
        assert_eq!(out["code"], 11, "{why}: {out}");
    }
    let plain =
        json!({"type": "danm-ipam", "ipamd": format!("http://127.0.0.1:{port}"), "network": "tls"});
    let (ok, out) = run("c-plain", plain).await;
    assert!(!ok, "plain text to a TLS ipamd: {out}");

    // TLS settings (here with the node's token) and an http:// address: refused as a
    // configuration error before anything connects, so that the token never crosses the
    // network in the clear.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let token = pki.dir.path().join("token");
    std::fs::write(&token, "node-secret-token").unwrap();
    let mut with_token = tls(&pki, "ca.pem", true);
    with_token["token"] = json!(token.display().to_string());
    let plain_address = format!("http://{}", listener.local_addr().unwrap());
    let (ok, out) = run("c-token-plain", ipam(&plain_address, with_token)).await;
    assert!(!ok, "{out}");
    assert_eq!(out["code"], 7, "{out}");
    assert!(out["msg"].as_str().unwrap().contains("https://"), "{out}");
    assert_eq!(
        listener.accept().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "nothing connected to the plain-text address"
    );

    // A TLS file that does not exist is named, with the I/O code.
    let mut missing = tls(&pki, "ca.pem", true);
    missing["ca"] = json!("/nonexistent/ca.pem");
    let (ok, out) = run("c-missing", ipam(&https, missing)).await;
    assert!(!ok);
    assert_eq!(out["code"], 5, "{out}");
    assert!(
        out["msg"].as_str().unwrap().contains("/nonexistent/ca.pem"),
        "{out}"
    );

    assert_eq!(allocated().await, 1, "only the mutual-TLS call allocated");
    assert!(Path::new(env!("CARGO_BIN_EXE_danm")).is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_server_certificate_is_served_without_a_restart() {
    let pki = Pki::new();
    let (port, engine) = ipamd_with_mutual_tls(&pki).await;
    let https = format!("https://127.0.0.1:{port}");
    let ipam = |tls: Value| json!({"type": "danm-ipam", "ipamd": https, "network": "tls", "ipamdTLS": tls});
    let (ok, out) = run("c-before", ipam(tls(&pki, "ca.pem", true))).await;
    assert!(ok, "{out}");

    // The renewal (from another CA here, so that the client can tell) is written over the
    // files, key first, as a Secret volume update or cert-manager would.
    std::fs::copy(pki.path("renewed-key.pem"), pki.path("server-key.pem")).unwrap();
    std::fs::copy(pki.path("renewed.pem"), pki.path("server.pem")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (ok, out) = run("c-after", ipam(tls(&pki, "other-ca.pem", true))).await;
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate is not served: {out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // New connections get the renewed certificate only.
    let (ok, out) = run("c-old-ca", ipam(tls(&pki, "ca.pem", true))).await;
    assert!(!ok, "{out}");
    assert_eq!(out["code"], 11, "{out}");
    assert!(
        out.to_string().contains("UnknownIssuer"),
        "not refused for its issuer: {out}"
    );
    assert_eq!(engine.list_allocations(None).await.unwrap().len(), 2);
}
