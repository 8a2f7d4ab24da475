//! Nothing outside `CNI_PATH` runs and nothing outside `cniDir` is read, whatever a
//! network's NetworkType or NetworkID says (issue 23, finding 1; libcni's CVE-2021-20206).
//! A marker program outside `CNI_PATH` leaves a file when it runs: every attack below must
//! leave none. The first line is ipamd's (a network with such a name is refused, naming
//! the field: the `danm` binary gets the refusal); the second is the plugin's own check
//! before every join, tested here on its delegation code directly.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use danm_cni::delegate::{self, Delegation};
use danm_cni::protocol::{Command, ErrorCode, Request};
use serde_json::json;

/// A folder with `cni-path/` (empty), `net.d/`, and `outside/marker`, a program that
/// writes `outside/ran` when run.
struct Bed {
    dir: tempfile::TempDir,
}

impl Bed {
    fn new() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["cni-path", "net.d", "outside"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let marker = dir.path().join("outside/marker");
        std::fs::write(
            &marker,
            format!(
                "#!/bin/sh\ntouch {}\necho '{{}}'\n",
                dir.path().join("outside/ran").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o755)).unwrap();
        Bed { dir }
    }
    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }
    fn marker_ran(&self) -> bool {
        self.path("outside/ran").exists()
    }
    /// Every way to name the marker from inside `cni-path`.
    fn attacks(&self) -> Vec<String> {
        vec![
            self.path("outside/marker").display().to_string(),
            "../outside/marker".into(),
            format!("../../{}/outside/marker", self.dir.path().display()),
        ]
    }
    fn request(&self) -> Request {
        Request {
            command: Command::Add,
            container_id: "c-marker".into(),
            netns: "/var/run/netns/none".into(),
            ifname: "eth1".into(),
            args: Default::default(),
            path: vec![self.path("cni-path")],
            config: json!({}),
            version: "1.0.0".into(),
        }
    }
}

/// The plugin's own check: a plugin name with a path in it is refused before anything
/// runs, as a NetworkType, as a chain's `type`, and at the call itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_named_with_a_path_never_runs() {
    let bed = Bed::new();
    // The network's own conf exists: only the NetworkType is hostile.
    std::fs::write(
        bed.path("net.d/evil.conf"),
        r#"{"cniVersion":"1.0.0","name":"evil"}"#,
    )
    .unwrap();
    for attack in bed.attacks() {
        let e = Delegation::load(&bed.path("net.d"), "evil", &attack).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig, "{e}");
        assert!(
            e.msg.contains("NetworkType") && e.msg.contains("outside CNI_PATH"),
            "{e}"
        );
        let e = delegate::call(&bed.request(), &attack, "ADD", "eth1", &json!({}))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig, "{attack}: {e}");
        // A chain naming it.
        std::fs::write(
            bed.path("net.d/chain.conflist"),
            json!({"cniVersion": "1.0.0", "name": "chain",
                   "plugins": [{"type": "bridge"}, {"type": attack}]})
            .to_string(),
        )
        .unwrap();
        let e = Delegation::load(&bed.path("net.d"), "chain", "bridge").unwrap_err();
        assert!(e.msg.contains("plugins[1].type"), "{e}");
    }
    assert!(!bed.marker_ran(), "the marker outside CNI_PATH ran");
    // The same program inside CNI_PATH does run: the test can see a run.
    std::fs::copy(bed.path("outside/marker"), bed.path("cni-path/marker")).unwrap();
    delegate::call(&bed.request(), "marker", "ADD", "eth1", &json!({}))
        .await
        .unwrap();
    assert!(bed.marker_ran(), "a plugin inside CNI_PATH runs");
}

/// A NetworkID with a path in it reads no file outside `cniDir`.
#[test]
fn a_network_id_with_a_path_reads_nothing_outside_cni_dir() {
    let bed = Bed::new();
    std::fs::write(
        bed.path("outside/secret.conf"),
        r#"{"cniVersion":"1.0.0","name":"x","type":"marker"}"#,
    )
    .unwrap();
    for attack in [
        "../outside/secret".to_owned(),
        bed.path("outside/secret").display().to_string(),
    ] {
        let e = Delegation::load(&bed.path("net.d"), &attack, "bridge").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(e.msg.contains("NetworkID"), "{e}");
        assert!(!Delegation::has_file(&bed.path("net.d"), &attack));
    }
    assert!(delegate::pf_name(Path::new("/sys"), "../../../etc").is_err());
}

/// ipamd's line: a DanmNet whose NetworkType is a path (written to the store without the
/// webhook) is refused by ipamd with the field named, and `danm` passes the refusal on:
/// nothing is attached, nothing allocated, the marker never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_danm_plugin_gets_ipamds_refusal_and_runs_nothing() {
    let bed = Bed::new();
    let yaml = format!(
        r#"
apiVersion: danm.io/v1
kind: DanmNet
metadata: {{name: evil, namespace: default}}
spec:
  NetworkID: evil
  NetworkType: {}
  Options: {{cidr: 10.77.0.0/24}}
"#,
        bed.path("outside/marker").display()
    );
    let ipamd = start_ipamd(&yaml).await;
    let ns = netns();
    std::fs::write(
        bed.path("net.d/evil.conf"),
        r#"{"cniVersion":"1.0.0","name":"evil"}"#,
    )
    .unwrap();
    let conf = danm_conf(
        &ipamd.url(),
        &bed.path("net.d"),
        json!([{"network": "evil", "ip": "dynamic"}]),
    );
    let add = danm("ADD", "c-evil", &ns.path(), &conf).await;
    assert!(!add.ok, "ADD succeeded: {}", add.stdout);
    let msg = add.stdout.to_string();
    assert!(msg.contains("spec.NetworkType"), "{msg}");
    assert!(!bed.marker_ran(), "the marker ran");
    assert_eq!(allocated(&ipamd).await, 0);
    assert_eq!(ns.links(), ["lo"]);
}

/// A plugin that exits without reading its configuration (the marker never reads stdin) is
/// judged by its exit status and output, not by the closed pipe: with a configuration larger
/// than the pipe's buffer the write always meets EPIPE, as a small one sometimes does.
#[tokio::test]
async fn a_plugin_that_does_not_read_its_configuration_is_judged_by_its_exit() {
    let bed = Bed::new();
    std::fs::copy(bed.path("outside/marker"), bed.path("cni-path/marker")).unwrap();
    let large = json!({"cniVersion": "1.0.0", "name": "big", "pad": "x".repeat(1 << 20)});
    delegate::call(&bed.request(), "marker", "ADD", "eth1", &large)
        .await
        .unwrap();
    assert!(bed.marker_ran());
}

/// A delegated plugin whose ADD exits 0 but prints no result has built nothing the runtime
/// can use: the ADD fails (code 103), as libcni's would, rather than passing an empty
/// result on.
#[tokio::test]
async fn a_delegated_add_that_prints_no_result_fails() {
    let bed = Bed::new();
    let silent = bed.path("cni-path/silent");
    std::fs::write(&silent, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&silent, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        bed.path("net.d/quiet.conf"),
        r#"{"cniVersion":"1.0.0","name":"quiet","type":"silent"}"#,
    )
    .unwrap();
    let delegation = Delegation::load(&bed.path("net.d"), "quiet", "silent").unwrap();
    let e = delegation.add(&bed.request(), "eth1").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::DelegateFailed, "{e}");
    assert!(e.msg.contains("printed no result"), "{e}");
}
