//! Test helpers: an in-process ipamd on a loopback port, networks from YAML.
#![allow(dead_code)]

use std::sync::Arc;

use danm_ipamd::engine::Engine;
use danm_ipamd::store::Store;
use danm_ipamd::worker::WorkerConfig;
use danm_proto::v1 as pb;
use danm_proto::v1::ipam_client::IpamClient;
use tonic::transport::Channel;

/// A running in-process ipamd.
pub use danm_ipamd::server::LocalServer as Ipamd;

/// An in-process ipamd on `store`.
pub async fn start_ipamd(store: Arc<dyn Store>) -> Ipamd {
    let engine = Engine::start(store, WorkerConfig::default()).await.unwrap();
    Ipamd::start(engine).await.unwrap()
}

/// A client of `ipamd`.
pub async fn client(ipamd: &Ipamd) -> IpamClient<Channel> {
    IpamClient::connect(ipamd.url()).await.unwrap()
}

/// Puts the networks of a YAML text into a store.
pub async fn add_networks(store: &dyn Store, yaml: &str) {
    for net in danm_ipamd::networks::parse_manifests(yaml).unwrap() {
        store.put_network(net).await.unwrap();
    }
}

pub fn dnet(ns: &str, name: &str) -> Option<pb::NetworkRef> {
    Some(pb::NetworkRef {
        kind: pb::NetworkKind::DanmNet as i32,
        namespace: ns.into(),
        name: name.into(),
    })
}

pub fn owner(cid: &str, ifname: &str) -> Option<pb::Owner> {
    Some(pb::Owner {
        container_id: cid.into(),
        ifname: ifname.into(),
        pod_namespace: "default".into(),
        pod_name: format!("pod-{cid}"),
        ..Default::default()
    })
}

pub fn alloc(net: &str, cid: &str, ip: &str, ip6: &str) -> pb::AllocateRequest {
    pb::AllocateRequest {
        network: dnet("default", net),
        owner: owner(cid, "eth0"),
        ip: ip.into(),
        ip6: ip6.into(),
    }
}

/// Reopens a file store once the previous ipamd has let go of it (its tasks end
/// asynchronously after shutdown), as a restarted process would.
pub async fn reopen(path: &std::path::Path) -> Arc<dyn Store> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match danm_ipamd::store::file::FileStore::open(path) {
            Ok(store) => return Arc::new(store),
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen {}: {e}", path.display()),
        }
    }
}
