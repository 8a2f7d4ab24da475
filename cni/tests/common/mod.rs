//! The helpers of `netns.rs`: network namespaces and veth pairs made with `ip`, an
//! in-process ipamd on a memory store (its log captured), the plugins run as a runtime
//! runs them, and the networks the tests use.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};

use danm_ipamd::engine::Engine;
use danm_ipamd::store::Store;
use danm_ipamd::store::memory::MemoryStore;
use danm_ipamd::worker::WorkerConfig;
use serde_json::{Value, json};

pub const PLUGINS: &str = "/usr/lib/cni";

pub use danm_testkit::netns::{HostLink, Netns};

/// A veth pair in the host namespace, both ends up; `name` is the parent to use.
pub fn veth() -> HostLink {
    HostLink::veth("dv")
}

/// A network namespace for one test's pod.
pub fn netns() -> Netns {
    Netns::new("danmt")
}

/// The log of the ipamds of this process (every test's), kept to be searched.
pub static IPAMD_LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Where ipamd's log lines go: [`IPAMD_LOG`].
pub struct IpamdLog;

impl std::io::Write for IpamdLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        IPAMD_LOG.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends ipamd's log lines (debug and up) to [`IPAMD_LOG`], once per process.
pub fn capture_ipamd_log() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("danm_ipamd=debug"))
            .with_ansi(false)
            .with_writer(|| IpamdLog)
            .init();
    });
}

/// ipamd in this process.
pub use danm_ipamd::server::LocalServer as Ipamd;

/// ipamd in this process on `store`, its log captured.
pub async fn ipamd_on(store: Arc<dyn Store>) -> Ipamd {
    capture_ipamd_log();
    let engine = Engine::start(store, WorkerConfig::default()).await.unwrap();
    Ipamd::start(engine).await.unwrap()
}

/// ipamd in this process on a memory store with `yaml`'s networks.
pub async fn start_ipamd(yaml: &str) -> Ipamd {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    for net in danm_ipamd::networks::parse_manifests(yaml).unwrap() {
        store.put_network(net).await.unwrap();
    }
    ipamd_on(store).await
}

/// Addresses held by anyone.
pub async fn allocated(ipamd: &Ipamd) -> usize {
    ipamd.engine.list_allocations(None).await.unwrap().len()
}

/// What a plugin call printed and how it ended.
pub use danm_testkit::cni::CniOutcome as Outcome;

/// The call failed with CNI error `code` and a message containing `needle`.
pub fn expect_error(out: &Outcome, code: u64, needle: &str) {
    assert!(!out.ok, "expected code {code}, got success: {}", out.stdout);
    assert_eq!(out.stdout["code"], code, "{}", out.stdout);
    let msg = out.stdout["msg"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "{needle:?} not in {}", out.stdout);
}

pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_danm-ipam"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Runs `plugin` as a runtime would for pod `default/pod-<cid>` (blocking: call from
/// spawn_blocking).
pub fn cni(
    plugin: &Path,
    command: &str,
    cid: &str,
    netns: &str,
    ifname: &str,
    config: &Value,
) -> Outcome {
    cni_for_pod(plugin, command, cid, netns, ifname, config, "default")
}

/// Runs `plugin` as a runtime would for pod `<namespace>/pod-<cid>`.
pub fn cni_for_pod(
    plugin: &Path,
    command: &str,
    cid: &str,
    netns: &str,
    ifname: &str,
    config: &Value,
    namespace: &str,
) -> Outcome {
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME=pod-{cid};K8S_POD_INFRA_CONTAINER_ID={cid}"
    );
    let path = format!("{}:{PLUGINS}", bin_dir().display());
    danm_testkit::cni::run(
        plugin,
        &danm_testkit::cni::CniCall {
            command,
            container_id: cid,
            netns,
            ifname,
            // As kubelet (through the CRI runtime) sends them: IgnoreUnknown=1 included.
            args: &args,
            path: Some(&path),
        },
        config,
    )
}

pub async fn danm(command: &str, cid: &str, netns: &str, config: &Value) -> Outcome {
    danm_for_pod(command, cid, netns, config, "default").await
}

/// `danm` for pod `<namespace>/pod-<cid>`.
pub async fn danm_for_pod(
    command: &str,
    cid: &str,
    netns: &str,
    config: &Value,
    namespace: &str,
) -> Outcome {
    let (command, cid, netns, config, namespace) = (
        command.to_owned(),
        cid.to_owned(),
        netns.to_owned(),
        config.clone(),
        namespace.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        cni_for_pod(
            Path::new(env!("CARGO_BIN_EXE_danm")),
            &command,
            &cid,
            &netns,
            "eth0",
            &config,
            &namespace,
        )
    })
    .await
    .unwrap()
}

pub fn networks(dual_parent: &str, pr_parent: &str) -> String {
    format!(
        r#"
apiVersion: danm.io/v1
kind: DanmNet
metadata: {{name: dual, namespace: default}}
spec:
  NetworkID: dual
  NetworkType: macvlan
  Options:
    host_device: {dual_parent}
    cidr: 10.50.0.0/24
    net6: 2001:db8:50::/64
    routes: {{"10.60.0.0/16": "10.50.0.1"}}
---
apiVersion: danm.io/v1
kind: DanmNet
metadata: {{name: pr, namespace: default}}
spec:
  NetworkID: pr
  NetworkType: macvlan
  Options:
    host_device: {pr_parent}
    container_prefix: ext
    rt_tables: 200
    cidr: 10.51.0.0/24
    net6: 2001:db8:51::/64
---
apiVersion: danm.io/v1
kind: DanmNet
metadata: {{name: missing, namespace: default}}
spec:
  NetworkID: missing
  NetworkType: macvlan
  Options:
    host_device: nosuchdev0
    cidr: 10.54.0.0/24
---
apiVersion: danm.io/v1
kind: DanmNet
metadata: {{name: tiny, namespace: default}}
spec:
  NetworkID: tiny
  NetworkType: macvlan
  Options:
    host_device: {dual_parent}
    cidr: 10.53.0.0/30
---
apiVersion: danm.io/v1
kind: DanmNet
metadata: {{name: br, namespace: default}}
spec:
  NetworkID: br
  NetworkType: bridge
  Options:
    cidr: 10.52.0.0/24
---
apiVersion: danm.io/v1
kind: DanmNet
metadata: {{name: chain, namespace: default}}
spec:
  NetworkID: chain
  NetworkType: bridge
  Options:
    cidr: 10.58.0.0/24
---
apiVersion: danm.io/v1
kind: DanmNet
metadata: {{name: direct, namespace: default}}
spec:
  NetworkID: direct
  NetworkType: macvlan
  Options:
    cidr: 10.55.0.0/24
"#
    )
}

/// The names of a CNI result's interfaces, in order.
pub fn interface_names(result: &Value) -> Vec<&str> {
    result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect()
}

pub fn danm_conf(ipamd: &str, cni_dir: &Path, interfaces: Value) -> Value {
    json!({
        "cniVersion": "1.1.0", "name": "danm", "type": "danm",
        "ipamd": ipamd, "cniDir": cni_dir,
        "args": {"danm.io/interfaces": interfaces}
    })
}
