//! `danm health`, the question the CNI installer asks before it writes `00-danm.conf`
//! (deploy/images/install-cni.sh): ipamd answers SERVING for `danm.io/default-network` only
//! once it can allocate *and* serves a valid network named `default`; the `danm` binary
//! exits 0 only then, and says why not otherwise.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Ipamd, start_ipamd};
use danm_ipamd::networks::parse_manifests;

fn health(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_danm"))
        .arg("health")
        .args(args)
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap(), text)
}

/// Runs `danm health` until it exits `code` (ipamd checks every 5 s).
async fn health_until(code: i32, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (got, text) = health(args);
        if got == code {
            return text;
        }
        assert!(Instant::now() < deadline, "still {got}: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn network(name: &str, cidr: &str) -> String {
    format!(
        "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{NetworkID: {name}, NetworkType: macvlan, Options: {{host_device: eth0, cidr: {cidr}}}}}\n"
    )
}

async fn put(ipamd: &Ipamd, yaml: &str) {
    for net in parse_manifests(yaml).unwrap() {
        ipamd.engine.store().put_network(net).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_network_is_serving_only_once_a_valid_default_network_is_served() {
    let ipamd = start_ipamd(&network("other", "10.70.0.0/24")).await;
    let address = ipamd.addr.to_string();

    // ipamd allocates, but a pod with no annotation would find no network.
    health_until(0, &["--service", "danm.ipam.v1.Ipam", &address]).await;
    let (code, text) = health(&[&address]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("danm.io/default-network: NOT_SERVING")
            && text.contains("no valid network named `default`"),
        "{text}"
    );

    // A network named default that ipamd refuses does not count.
    put(&ipamd, &network("default", "10.71.0.0/33")).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (code, text) = health(&[&address]);
    assert_eq!(code, 1, "an invalid default network counted: {text}");

    // Fixed: SERVING within ipamd's next check.
    put(&ipamd, &network("default", "10.71.0.0/24")).await;
    let text = health_until(0, &[&format!("http://{address}")]).await;
    assert!(text.contains("danm.io/default-network: SERVING"), "{text}");

    // Deleted: NOT_SERVING again.
    let key = danm_core::NetworkKey::new(danm_core::NetworkKind::DanmNet, "default", "default");
    ipamd.engine.store().delete_network(&key).await.unwrap();
    health_until(1, &[&address]).await;
}

#[test]
fn an_unreachable_ipamd_and_bad_arguments_are_told_apart() {
    let port = danm_testkit::control_plane::free_port();
    let (code, text) = health(&[&format!("127.0.0.1:{port}")]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("does not answer"), "{text}");

    let (code, text) = health(&[]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("ADDRESS") && text.contains("danm health [--service NAME] ADDRESS"),
        "{text}"
    );
}

#[test]
fn help_says_what_the_binary_is_and_how_to_ask_for_health() {
    let out = Command::new(env!("CARGO_BIN_EXE_danm"))
        .arg("--help")
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("CNI_COMMAND") && text.contains("danm.io/default-network"),
        "{text}"
    );
}
