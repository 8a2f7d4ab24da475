//! Pool size does not matter: a /8 and an IPv6 /64 each take 100,000 dynamic allocations
//! through the engine, and no shard object comes near the 64 KiB limit.

use std::collections::HashSet;
use std::sync::Arc;

use danm_core::{NetworkKey, NetworkKind};
use danm_ipamd::engine::{Engine, OwnerInfo};
use danm_ipamd::store::Store;
use danm_ipamd::store::memory::MemoryStore;
use danm_ipamd::worker::WorkerConfig;

const NETS: &str = r#"
apiVersion: danm.io/v1
kind: ClusterNetwork
metadata: {name: slash8}
spec: {NetworkID: s8, Options: {cidr: 10.0.0.0/8}}
---
apiVersion: danm.io/v1
kind: ClusterNetwork
metadata: {name: slash64}
spec:
  NetworkID: s64
  Options:
    net6: 2001:db8:64::/64
    allocation_pool_v6: {cidr: 2001:db8:64::/64}
"#;

const COUNT: usize = 100_000;
const LIMIT: usize = 64 * 1024;

async fn fill(engine: Arc<Engine>, network: &str, v6: bool) -> HashSet<String> {
    let key = NetworkKey::new(NetworkKind::ClusterNetwork, "", network);
    let mut tasks = Vec::new();
    // 64 concurrent callers.
    for caller in 0..64 {
        let engine = Arc::clone(&engine);
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in (caller..COUNT).step_by(64) {
                let owner = OwnerInfo {
                    container_id: format!("{}-c{i}", key.name),
                    ifname: "eth0".into(),
                    pod_namespace: "default".into(),
                    ..Default::default()
                };
                let (ip, ip6) = if v6 { ("", "dynamic") } else { ("dynamic", "") };
                let a = engine.allocate(&key, &owner, ip, ip6).await.unwrap();
                got.push(if v6 { a.ip6 } else { a.ip });
            }
            got
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for ip in t.await.unwrap() {
            assert!(all.insert(ip.clone()), "{ip} given twice");
        }
    }
    all
}

async fn largest_shard(store: &dyn Store, network: &str) -> (usize, usize) {
    let key = NetworkKey::new(NetworkKind::ClusterNetwork, "", network);
    let shards = store.list_shards(&key).await.unwrap();
    let largest = shards
        .iter()
        .map(|s| serde_json::to_vec(&s.spec).unwrap().len())
        .max()
        .unwrap();
    (shards.len(), largest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slash8_and_slash64_take_100k_each_with_small_shards() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    for net in danm_ipamd::networks::parse_manifests(NETS).unwrap() {
        store.put_network(net).await.unwrap();
    }
    let engine = Engine::start(Arc::clone(&store), WorkerConfig::default())
        .await
        .unwrap();

    let v4 = fill(Arc::clone(&engine), "slash8", false).await;
    assert_eq!(v4.len(), COUNT);
    let (shards, largest) = largest_shard(store.as_ref(), "slash8").await;
    println!(
        "/8: {COUNT} allocations in {shards} shards, largest serialized shard {largest} bytes"
    );
    assert!(largest < LIMIT, "largest /8 shard is {largest} bytes");

    let v6 = fill(Arc::clone(&engine), "slash64", true).await;
    assert_eq!(v6.len(), COUNT);
    let (shards, largest) = largest_shard(store.as_ref(), "slash64").await;
    println!(
        "/64: {COUNT} allocations in {shards} shards, largest serialized shard {largest} bytes"
    );
    assert!(largest < LIMIT, "largest /64 shard is {largest} bytes");
    // Objects in proportion to the addresses in use, not to the pool (2^64).
    assert!(
        shards <= COUNT / 1024 + 2,
        "{shards} shards for {COUNT} addresses"
    );
}
