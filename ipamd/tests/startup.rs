//! ipamd started before its store can be reached (the API server still coming up) waits
//! and retries with a growing pause instead of exiting, then serves. The API server "comes
//! up" when a proxy to the real one starts listening on the address of ipamd's kubeconfig.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use danm_crds::{DanmNet, DanmNetSpec, NetworkOptions, NetworkSpec};
use danm_proto::v1 as pb;
use danm_proto::v1::ipam_client::IpamClient;
use danm_testkit::control_plane::ControlPlane;
use danm_testkit::fault_proxy::FaultProxy;
use danm_testkit::process::{KillOnDrop as Daemon, free_port};
use kube::api::{Api, PostParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipamd_waits_for_an_unreachable_api_server_then_serves() {
    let plane = ControlPlane::shared().await;
    let ipamd_namespace = plane.namespace("danm-system").await;
    let ns = plane.namespace("startup").await;
    // A kubeconfig for an address nothing listens on yet.
    let api_addr = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        danm_testkit::control_plane::plain_kubeconfig(&format!("http://{api_addr}")),
    )
    .unwrap();

    let grpc = format!("127.0.0.1:{}", free_port());
    let mut ipamd = Daemon(
        Command::new(env!("CARGO_BIN_EXE_ipamd"))
            .args([
                "--store",
                "kube",
                "--namespace",
                &ipamd_namespace,
                "--listen",
                &grpc,
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        ipamd.0.try_wait().unwrap().is_none(),
        "ipamd exited instead of waiting for the API server"
    );

    // The API server comes up (on that address) with a network.
    let _proxy = FaultProxy::start_on(plane, &api_addr).await.unwrap();
    let spec = NetworkSpec {
        network_id: "late".into(),
        options: NetworkOptions {
            cidr: Some("10.66.0.0/24".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<DanmNet>::namespaced(plane.client().await, &ns)
        .create(
            &PostParams::default(),
            &DanmNet::new("late", DanmNetSpec { network: spec }),
        )
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        if let Ok(mut c) = IpamClient::connect(format!("http://{grpc}")).await
            && let Ok(s) = c.status(pb::StatusRequest {}).await
            && s.get_ref().networks == 1
        {
            break;
        }
        if Instant::now() > deadline {
            let _ = ipamd.0.kill();
            let mut log = String::new();
            ipamd
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut log)
                .unwrap();
            panic!("ipamd did not come up once the API server did: {log}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = ipamd.0.kill();
    let _ = ipamd.0.wait();
    let mut log = String::new();
    ipamd
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains("cannot start on the store yet; retrying"),
        "{log}"
    );
}
