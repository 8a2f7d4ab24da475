//! A network made by DANM (bit arrays in `alloc`/`alloc6`, built as DANM's code builds them)
//! is migrated into shards the first time ipamd sees it: every allocation kept, owned by the
//! DanmEp that names it, and the old fields cleared only after the shards are written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use danm_core::migrate::danm_bit_array;
use danm_core::{NetworkKey, NetworkKind, OwnerKey};
use danm_crds::{DanmEpIface, DanmEpSpec, NetworkOptions, NetworkSpec};
use danm_ipamd::engine::{Engine, EngineError, OwnerInfo};
use danm_ipamd::store::memory::MemoryStore;
use danm_ipamd::store::{EndpointRecord, NetworkObject, Store};
use danm_ipamd::worker::WorkerConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn danm_network_migrates_with_every_allocation_kept() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let key = NetworkKey::new(NetworkKind::DanmNet, "default", "legacy");
    // DANM: a /24 array with network, broadcast and the route gateway (.65) reserved, and
    // .5, .6 and .200 allocated; an IPv6 /106 array with offset 3 allocated.
    let spec = NetworkSpec {
        network_id: "legacy".into(),
        network_type: "ipvlan".into(),
        options: NetworkOptions {
            cidr: Some("10.9.0.0/24".into()),
            routes: Some([("10.10.0.0/16".to_string(), "10.9.0.65".to_string())].into()),
            alloc: Some(danm_bit_array(256, &[65, 5, 6, 200])),
            net6: Some("2001:db8:9::/64".into()),
            alloc6: Some(danm_bit_array(1 << 22, &[3])),
            ..Default::default()
        },
        ..Default::default()
    };
    store
        .put_network(NetworkObject {
            key: key.clone(),
            uid: "uid-1".into(),
            spec,
        })
        .await
        .unwrap();
    // The pod holding .5 has its DanmEp, as DANM wrote it.
    let pod_owner = OwnerKey::new("danm-pod-cid", "eth0").unwrap();
    store
        .create_endpoint(EndpointRecord {
            owner: pod_owner.clone(),
            network: key.clone(),
            namespace: "default".into(),
            spec: DanmEpSpec {
                network_name: "legacy".into(),
                cid: "danm-pod-cid".into(),
                pod: "old-pod".into(),
                api_type: "DanmNet".into(),
                interface: DanmEpIface {
                    name: "eth0".into(),
                    address: "10.9.0.5/24".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
        })
        .await
        .unwrap();

    let engine = Engine::start(Arc::clone(&store), WorkerConfig::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match engine.network(&key) {
            Ok(_) => break,
            Err(EngineError::Migrating(_) | EngineError::NetworkNotFound(_)) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "migration did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The old fields are gone; every DANM allocation is in the shards.
    let net = store.get_network(&key).await.unwrap().unwrap();
    assert_eq!(
        (
            net.spec.options.alloc.as_deref(),
            net.spec.options.alloc6.as_deref()
        ),
        (None, None)
    );
    let mut listed: Vec<String> = engine
        .list_allocations(Some(&key))
        .await
        .unwrap()
        .iter()
        .map(|l| l.address.to_string())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec!["10.9.0.200", "10.9.0.5", "10.9.0.6", "2001:db8:9::3"]
    );

    // New allocations go around them.
    let who = |cid: &str| OwnerInfo {
        container_id: cid.into(),
        ifname: "eth0".into(),
        pod_namespace: "default".into(),
        ..Default::default()
    };
    let mut got = Vec::new();
    for i in 0..8 {
        got.push(
            engine
                .allocate(&key, &who(&format!("new{i}")), "dynamic", "")
                .await
                .unwrap()
                .ip,
        );
    }
    for taken in [
        "10.9.0.5/24",
        "10.9.0.6/24",
        "10.9.0.200/24",
        "10.9.0.65/24",
    ] {
        assert!(
            !got.contains(&taken.to_string()),
            "{taken} handed out again: {got:?}"
        );
    }
    let e = engine
        .allocate(&key, &who("static"), "10.9.0.6", "")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already in use"), "{e}");

    // The migrated address belongs to the pod named by the DanmEp: its DEL frees it.
    assert_eq!(
        engine.release(&key, &pod_owner, None).await.unwrap(),
        vec!["10.9.0.5"]
    );
    engine
        .allocate(&key, &who("after"), "10.9.0.5", "")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_bit_array_is_refused_and_kept() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let key = NetworkKey::new(NetworkKind::DanmNet, "default", "broken");
    let spec = NetworkSpec {
        network_id: "broken".into(),
        options: NetworkOptions {
            cidr: Some("10.9.0.0/24".into()),
            alloc: Some("not base64!".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    store
        .put_network(NetworkObject {
            key: key.clone(),
            uid: String::new(),
            spec,
        })
        .await
        .unwrap();
    let engine = Engine::start(Arc::clone(&store), WorkerConfig::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        match engine.network(&key) {
            Err(e @ EngineError::Migration { .. }) => break e.to_string(),
            Err(EngineError::Migrating(_)) => {}
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        error.contains("spec.Options.alloc is not valid base64"),
        "{error}"
    );
    let net = store.get_network(&key).await.unwrap().unwrap();
    assert_eq!(
        net.spec.options.alloc.as_deref(),
        Some("not base64!"),
        "nothing cleared"
    );
}
