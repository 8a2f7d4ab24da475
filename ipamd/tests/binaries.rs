//! The shipped binaries, as a newcomer runs them: ipamd on the embedded store with the
//! example networks, ipamctl allocating, showalloc showing, gRPC health and reflection.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use danm_testkit::process::{KillOnDrop as Daemon, free_port};

fn run(bin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipamd_with_example_networks_serves_ipamctl_and_showalloc() {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let addr = format!("127.0.0.1:{}", free_port());
    let store = format!("file:{}", dir.path().join("ipamd.redb").display());
    let daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_ipamd"))
            .args([
                "--store",
                &store,
                "--networks",
                examples.to_str().unwrap(),
                "--listen",
                &addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ctl = env!("CARGO_BIN_EXE_ipamctl");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, text) = run(ctl, &["--ipamd", &addr, "status"]);
        if ok {
            assert!(text.contains("networks: 3"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "ipamd did not come up: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (ok, text) = run(
        ctl,
        &[
            "--ipamd",
            &addr,
            "attach",
            "-n",
            "default",
            "--pod",
            "web-0",
            "--container-id",
            "3f2a9c1b7d4e",
            "--host",
            "node-1",
            "--interfaces",
            r#"[{"network":"internal","ip":"dynamic"},{"clusterNetwork":"external","ip":"dynamic","ip6":"dynamic"}]"#,
        ],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("eth0 on internal (macvlan): ip=10.240.1.100/24"),
        "{text}"
    );
    assert!(
        text.contains("ext1 on external (macvlan): ip=10.100.0.2/16 ip6=2001:db8:100::2/64"),
        "{text}"
    );

    // No annotation in namespace default: the default ClusterNetwork; kube-system is not allowed.
    let (ok, text) = run(
        ctl,
        &[
            "--ipamd",
            &addr,
            "attach",
            "-n",
            "default",
            "--pod",
            "p",
            "--container-id",
            "c2",
        ],
    );
    assert!(ok && text.contains("eth0 on default"), "{text}");
    let (ok, text) = run(
        ctl,
        &[
            "--ipamd",
            &addr,
            "attach",
            "-n",
            "kube-system",
            "--pod",
            "p",
            "--container-id",
            "c3",
        ],
    );
    assert!(!ok && text.contains("not in the AllowedTenants"), "{text}");

    let (ok, text) = run(
        env!("CARGO_BIN_EXE_showalloc"),
        &["--ipamd", &addr, "-dnet", "internal", "-n", "default"],
    );
    assert!(ok, "{text}");
    assert!(text.starts_with("DANM network Kind: DanmNet\nIP version: IPv4\nCIDR: 10.240.1.0/24\nPool start: 10.240.1.100\nPool end: 10.240.1.200\n"), "{text}");
    assert!(
        text.contains("10.240.1.100 : allocated (Pod: default/web-0, CID: 3f2a9c1b7d4e, if: eth0)"),
        "{text}"
    );
    let (ok, text) = run(
        env!("CARGO_BIN_EXE_showalloc"),
        &["--ipamd", &addr, "--cnet", "external", "-6"],
    );
    assert!(
        ok && text.contains("2001:db8:100::2 : allocated (Pod: default/web-0"),
        "{text}"
    );
    assert!(
        text.contains("2001:db8:100::1 : reserved (gateway of route 2001:db8:200::/64)"),
        "{text}"
    );
    let (ok, text) = run(
        env!("CARGO_BIN_EXE_showalloc"),
        &["--ipamd", &addr, "--dnet", "nope"],
    );
    assert!(
        !ok && text.contains("DanmNet default/nope not found"),
        "{text}"
    );

    // ipamctl for administrators: list, reclaim, gc, -o json.
    let json = |args: &[&str]| -> serde_json::Value {
        let (ok, text) = run(ctl, &[&["--ipamd", &addr, "-o", "json"], args].concat());
        assert!(ok, "{args:?}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    };
    let listed = json(&["list", "--dnet", "internal"]);
    assert_eq!(listed[0]["address"], "10.240.1.100");
    assert_eq!(listed[0]["pod"], "default/web-0");
    assert_eq!(listed[0]["ifname"], "eth0");
    // web-0's address has its record: not an orphan, nothing freed.
    let fingerprint = listed[0]["fingerprint"].as_str().unwrap().to_owned();
    let reclaimed = json(&[
        "reclaim",
        "--dnet",
        "internal",
        "--address",
        "10.240.1.100",
        "--fingerprint",
        &fingerprint,
    ]);
    assert_eq!(reclaimed["released"], serde_json::json!([]));
    // gc without --yes sends nothing (exit 2); with it, keeps only what --keep names.
    let out = Command::new(ctl)
        .args([
            "--ipamd",
            &addr,
            "gc",
            "--host",
            "node-1",
            "--keep",
            "3f2a9c1b7d4e/eth0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("add --yes"));
    // An empty --host (an unset variable in a script) is refused: it would mean every node.
    let out = Command::new(ctl)
        .args(["--ipamd", &addr, "gc", "--host", "", "--yes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json(&["status"])["ready"], true);
    let collected = json(&[
        "gc",
        "--host",
        "node-1",
        "--keep",
        "3f2a9c1b7d4e/eth0",
        "--yes",
    ]);
    let released: Vec<&str> = collected["released"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        released.iter().any(|a| a.starts_with("10.100.0.2"))
            && !released.iter().any(|a| a.starts_with("10.240.1.100")),
        "web-0's ext1 (not kept) is released, its eth0 (kept) is not: {released:?}"
    );
    assert_eq!(
        json(&["list", "--dnet", "internal"])[0]["address"],
        "10.240.1.100"
    );

    // Standard gRPC health and reflection.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "danm.ipam.v1.Ipam".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"danm.ipam.v1.Ipam".to_owned()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    drop(daemon);
}

#[test]
fn ipamd_refuses_bad_flags_with_clear_errors() {
    let (ok, text) = run(
        env!("CARGO_BIN_EXE_ipamd"),
        &["--store", "etcd:x", "--listen", "127.0.0.1:0"],
    );
    assert!(
        !ok && text.contains("--store \"etcd:x\" is not one of: memory, file:PATH, kube"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {name: x}\nspec: {Options: {vlan: nope}}\n").unwrap();
    let (ok, text) = run(
        env!("CARGO_BIN_EXE_ipamd"),
        &[
            "--store",
            "memory",
            "--networks",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert!(
        !ok && text.contains("bad.yaml: document 0: DanmNet"),
        "{text}"
    );
    let (ok, text) = run(
        env!("CARGO_BIN_EXE_ipamd"),
        &["--store", "memory", "--tls-cert", "/x.pem"],
    );
    assert!(
        !ok && text.contains("--tls-key"),
        "a certificate needs its key: {text}"
    );
    // A TLS file that cannot be read is named: the certificate, or a client CA.
    let tls = [
        "--store",
        "memory",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        "/nonexistent/key.pem",
    ];
    let with_client_ca = [
        "--tls-client-ca",
        "/nonexistent/ca.pem",
        "--authorization",
        "any-client",
    ];
    for (extra, named) in [
        (
            &[][..],
            "--tls-cert/--tls-key: cannot read certificate from /nonexistent/cert.pem",
        ),
        (&with_client_ca[..], "--tls-client-ca /nonexistent/ca.pem"),
    ] {
        let (ok, text) = run(env!("CARGO_BIN_EXE_ipamd"), &[&tls[..], extra].concat());
        assert!(!ok && text.contains(named), "{text}");
    }
    let (ok, text) = run(env!("CARGO_BIN_EXE_ipamd"), &["--help"]);
    assert!(
        ok && text.contains("--networks") && text.contains("--tls-client-ca"),
        "{text}"
    );
}

/// ipamd refuses to serve, unauthenticated, on an address other hosts reach (issue 24):
/// any pod could then list, release and reclaim anyone's addresses. `--insecure` says it
/// is meant, and is logged as a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_ipamd_on_a_reachable_address_needs_insecure() {
    let port = free_port();
    let everywhere = format!("0.0.0.0:{port}");
    let (ok, text) = run(
        env!("CARGO_BIN_EXE_ipamd"),
        &["--store", "memory", "--listen", &everywhere],
    );
    assert!(
        !ok && text.contains("no client is authenticated")
            && text.contains("--tls-client-ca")
            && text.contains("--insecure"),
        "{text}"
    );
    let log = tempfile::NamedTempFile::new().unwrap();
    let daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_ipamd"))
            .args(["--store", "memory", "--listen", &everywhere, "--insecure"])
            .env("NO_COLOR", "1")
            .stderr(log.reopen().unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ctl = env!("CARGO_BIN_EXE_ipamctl");
    let local = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run(ctl, &["--ipamd", &local, "status"]).0 {
        assert!(Instant::now() < deadline, "ipamd --insecure did not serve");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        logged.contains("WARN") && logged.contains("--insecure"),
        "{logged}"
    );
    drop(daemon);
}
