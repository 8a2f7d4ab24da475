//! The Store conformance suite: every backend must pass every check here. Each check runs
//! on a fresh store, in a namespace of its own (on the real API server, which the checks of
//! this binary share, networks and endpoints of other namespaces are not counted).

use std::sync::Arc;

use danm_core::{Family, NetworkKey, NetworkKind, OwnerKey};
use danm_crds::{AllocationShardSpec, DanmEpSpec, NetworkSpec};
use danm_ipamd::store::file::FileStore;
use danm_ipamd::store::kube::KubeStore;
use danm_ipamd::store::memory::MemoryStore;
use danm_ipamd::store::{EndpointRecord, NetworkObject, ShardKey, Store, StoreError, StoreEvent};
use danm_testkit::control_plane::ControlPlane;

fn net(ns: &str, name: &str) -> NetworkKey {
    NetworkKey::new(NetworkKind::DanmNet, ns, name)
}

fn shard(ns: &str, name: &str, index: u128) -> ShardKey {
    ShardKey {
        network: net(ns, name),
        family: Family::V4,
        index,
    }
}

fn spec(payload: &str) -> AllocationShardSpec {
    AllocationShardSpec {
        family: "IPv4".into(),
        payload: payload.into(),
        ..Default::default()
    }
}

fn endpoint(ns: &str, cid: &str, network: &str) -> EndpointRecord {
    EndpointRecord {
        owner: OwnerKey::new(cid, "eth0").unwrap(),
        network: net(ns, network),
        namespace: ns.into(),
        spec: DanmEpSpec {
            pod: format!("pod-{cid}"),
            cid: cid.into(),
            network_name: network.into(),
            api_type: "DanmNet".into(),
            interface: danm_crds::DanmEpIface {
                name: "eth0".into(),
                address: "10.0.0.1/24".into(),
                ..Default::default()
            },
            ..Default::default()
        },
    }
}

/// The networks of namespace `ns`.
async fn networks_in(store: &dyn Store, ns: &str) -> Vec<NetworkObject> {
    let mut all = store.list_networks().await.unwrap();
    all.retain(|n| n.key.namespace == ns);
    all
}

/// How many endpoint records namespace `ns` holds.
async fn endpoints_in(store: &dyn Store, ns: &str) -> usize {
    let all = store.list_endpoints().await.unwrap();
    all.iter().filter(|e| e.namespace() == ns).count()
}

/// The next change event about namespace `ns` (a store on a shared API server also sees
/// the networks of other namespaces).
async fn next_event_in(
    events: &mut tokio::sync::broadcast::Receiver<StoreEvent>,
    ns: &str,
) -> StoreEvent {
    loop {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.recv())
            .await
            .expect("an event within 10 s")
            .unwrap();
        match &event {
            StoreEvent::Network(key) if key.namespace != ns => continue,
            _ => return event,
        }
    }
}

async fn networks(store: &dyn Store, ns: &str) {
    assert!(networks_in(store, ns).await.is_empty());
    let mut events = store.subscribe();
    let obj = NetworkObject {
        key: net(ns, "a"),
        uid: "u1".into(),
        spec: NetworkSpec {
            network_id: "a".into(),
            ..Default::default()
        },
    };
    store.put_network(obj.clone()).await.unwrap();
    assert_eq!(
        next_event_in(&mut events, ns).await,
        StoreEvent::Network(net(ns, "a"))
    );
    // The UID is the backend's to assign (the API server does); key and spec round-trip.
    let got = store.get_network(&net(ns, "a")).await.unwrap().unwrap();
    assert_eq!((&got.key, &got.spec), (&obj.key, &obj.spec));
    let mut changed = obj.clone();
    changed.spec.network_id = "b".into();
    store.put_network(changed.clone()).await.unwrap();
    let got = store.get_network(&net(ns, "a")).await.unwrap().unwrap();
    assert_eq!((&got.key, &got.spec), (&changed.key, &changed.spec));
    assert_eq!(networks_in(store, ns).await.len(), 1);
    assert_eq!(store.get_network(&net(ns, "zz")).await.unwrap(), None);
}

async fn shard_compare_and_swap(store: &dyn Store, ns: &str) {
    let k = shard(ns, "cas", 0);
    assert_eq!(store.get_shard(&k).await.unwrap(), None);
    let v1 = store.create_shard(&k, spec("one")).await.unwrap();
    assert!(matches!(
        store.create_shard(&k, spec("again")).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let got = store.get_shard(&k).await.unwrap().unwrap();
    assert_eq!(
        (got.version.clone(), got.spec.payload.as_str()),
        (v1.clone(), "one")
    );
    assert_eq!(got.key, k);
    let v2 = store.update_shard(&k, spec("two"), &v1).await.unwrap();
    assert_ne!(v1, v2, "a write changes the version");
    // A writer holding the old version loses.
    assert!(matches!(
        store.update_shard(&k, spec("stale"), &v1).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.get_shard(&k).await.unwrap().unwrap().spec.payload,
        "two"
    );
    // Updating a shard that does not exist is NotFound.
    assert!(matches!(
        store
            .update_shard(&shard(ns, "cas", 9), spec("x"), &v2)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

async fn concurrent_cas_has_one_winner(store: Arc<dyn Store>, ns: &str) {
    let k = shard(ns, "race", 0);
    // Every racer writes a payload that differs from the stored one: the real API server
    // answers a write that changes nothing with success and the same resourceVersion.
    let v = store.create_shard(&k, spec("start")).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = Arc::clone(&store);
            let k = k.clone();
            let v = v.clone();
            tokio::spawn(async move { store.update_shard(&k, spec(&i.to_string()), &v).await })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(wins, 1, "exactly one compare-and-swap wins");
}

async fn shards_listed_per_network(store: &dyn Store, ns: &str) {
    for i in [3u128, 1, 2, 0x1_0000_0000_0000] {
        store
            .create_shard(&shard(ns, "list", i), spec("x"))
            .await
            .unwrap();
    }
    store
        .create_shard(&shard(ns, "list2", 0), spec("x"))
        .await
        .unwrap();
    store
        .create_shard(&shard(ns, "lis", 0), spec("x"))
        .await
        .unwrap();
    let listed: Vec<u128> = store
        .list_shards(&net(ns, "list"))
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key.index)
        .collect();
    assert_eq!(
        listed,
        vec![1, 2, 3, 0x1_0000_0000_0000],
        "sorted, only this network's"
    );
    // Deleting a network deletes its shards, and only its shards.
    store
        .put_network(NetworkObject {
            key: net(ns, "list"),
            uid: String::new(),
            spec: NetworkSpec::default(),
        })
        .await
        .unwrap();
    assert!(store.delete_network(&net(ns, "list")).await.unwrap());
    assert!(
        store
            .list_shards(&net(ns, "list"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.list_shards(&net(ns, "list2")).await.unwrap().len(), 1);
    assert!(!store.delete_network(&net(ns, "list")).await.unwrap());
}

async fn endpoints(store: &dyn Store, ns: &str) {
    let e = endpoint(ns, &format!("{ns}-c1"), "a");
    store.create_endpoint(e.clone()).await.unwrap();
    assert!(matches!(
        store
            .create_endpoint(endpoint(ns, &format!("{ns}-c1"), "b"))
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(
        store
            .get_endpoint(&e.owner, Some(&e.namespace))
            .await
            .unwrap(),
        Some(e.clone())
    );
    assert_eq!(
        store.get_endpoint(&e.owner, None).await.unwrap(),
        Some(e.clone()),
        "found without the namespace too"
    );
    store
        .create_endpoint(endpoint(ns, &format!("{ns}-c2"), "a"))
        .await
        .unwrap();
    assert_eq!(endpoints_in(store, ns).await, 2);
    assert!(
        store
            .delete_endpoint(&e.owner, Some(&e.namespace))
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_endpoint(&e.owner, Some(&e.namespace))
            .await
            .unwrap(),
        "delete is idempotent"
    );
    assert_eq!(
        store
            .get_endpoint(&e.owner, Some(&e.namespace))
            .await
            .unwrap(),
        None
    );
    assert_eq!(endpoints_in(store, ns).await, 1);
}

/// What is kept of every record, a container's whole records, a fingerprint's and a
/// network's: each answer names exactly the records written.
async fn endpoint_reads(store: &dyn Store, ns: &str) {
    let cid = "0123456789abcdef".repeat(4);
    let first = endpoint(ns, &cid, "a");
    let mut second = endpoint(ns, &cid, "b");
    second.owner = OwnerKey::new(&cid, "net1").unwrap();
    second.spec.interface.name = "net1".into();
    second.spec.interface.address = "10.0.1.7/24".into();
    second.spec.interface.address_ipv6 = "fd00::7/64".into();
    let other = endpoint(ns, &format!("{ns}-other"), "a");
    for record in [&first, &second, &other] {
        store.create_endpoint(record.clone()).await.unwrap();
    }

    let mut summaries = store.summaries_of_container(&cid, Some(ns)).await.unwrap();
    summaries.sort_by_key(|s| s.owner().ifname);
    let kept: Vec<_> = summaries
        .iter()
        .map(|s| {
            let addresses: Vec<String> = s.addresses().map(|a| a.to_string()).collect();
            (
                s.owner(),
                s.network().name.clone(),
                s.namespace().to_owned(),
                addresses,
            )
        })
        .collect();
    assert_eq!(
        kept,
        [
            (
                first.owner.clone(),
                "a".into(),
                ns.to_owned(),
                vec!["10.0.0.1".to_owned()]
            ),
            (
                second.owner.clone(),
                "b".into(),
                ns.to_owned(),
                vec!["10.0.1.7".to_owned(), "fd00::7".to_owned()]
            ),
        ]
    );

    let mut whole = store.endpoints_of_container(&cid, Some(ns)).await.unwrap();
    whole.sort_by(|a, b| a.owner.ifname.cmp(&b.owner.ifname));
    assert_eq!(
        whole,
        [first.clone(), second.clone()],
        "whole records, pod included"
    );
    assert_eq!(
        store
            .endpoints_of_container(&cid, None)
            .await
            .unwrap()
            .len(),
        2,
        "found without the namespace too"
    );

    let by_fingerprint = store
        .endpoints_with_fingerprint(second.owner.fingerprint())
        .await
        .unwrap();
    assert_eq!(by_fingerprint.len(), 1);
    assert!(by_fingerprint[0].is_owned_by(&second.owner));
    assert!(by_fingerprint[0].names("fd00::7".parse().unwrap()));

    let mut of_a: Vec<_> = store
        .read_endpoints(Some(&net(ns, "a")))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.owner)
        .collect();
    of_a.sort_by(|a, b| a.container_id.cmp(&b.container_id));
    assert_eq!(of_a, [first.owner.clone(), other.owner.clone()]);
    let everything = store.read_endpoints(None).await.unwrap();
    assert_eq!(everything.iter().filter(|r| r.namespace == ns).count(), 3);

    store
        .delete_endpoint(&second.owner, Some(ns))
        .await
        .unwrap();
    assert_eq!(
        store
            .summaries_of_container(&cid, Some(ns))
            .await
            .unwrap()
            .len(),
        1,
        "a deleted record is forgotten"
    );
}

/// Runs every check, each on a fresh store and namespace from `make`.
async fn suite<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (Arc<dyn Store>, String)>,
{
    let (store, ns) = make().await;
    networks(store.as_ref(), &ns).await;
    let (store, ns) = make().await;
    shard_compare_and_swap(store.as_ref(), &ns).await;
    let (store, ns) = make().await;
    concurrent_cas_has_one_winner(store, &ns).await;
    let (store, ns) = make().await;
    shards_listed_per_network(store.as_ref(), &ns).await;
    let (store, ns) = make().await;
    endpoints(store.as_ref(), &ns).await;
    let (store, ns) = make().await;
    endpoint_reads(store.as_ref(), &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    suite(|| async {
        (
            Arc::new(MemoryStore::new()) as Arc<dyn Store>,
            "default".to_owned(),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    suite(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.path().join(format!("s{n}.redb"));
        async move {
            (
                Arc::new(FileStore::open(path).unwrap()) as Arc<dyn Store>,
                "default".to_owned(),
            )
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_store_conforms_on_the_real_api_server() {
    let plane = ControlPlane::shared().await;
    let ipamd_namespace = plane.namespace("danm-system").await;
    suite(|| {
        let ipamd_namespace = ipamd_namespace.clone();
        async move {
            let ns = plane.namespace("conformance").await;
            let store = KubeStore::new(plane.client().await, &ipamd_namespace).await;
            (Arc::new(store) as Arc<dyn Store>, ns)
        }
    })
    .await;
}

#[tokio::test]
async fn file_store_keeps_state_across_reopen() {
    let ns = "default";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let v = {
        let store = FileStore::open(&path).unwrap();
        store
            .create_endpoint(endpoint(ns, &format!("{ns}-c1"), "a"))
            .await
            .unwrap();
        store
            .create_shard(&shard(ns, "p", 0), spec("kept"))
            .await
            .unwrap()
    };
    let store = FileStore::open(&path).unwrap();
    let s = store.get_shard(&shard(ns, "p", 0)).await.unwrap().unwrap();
    assert_eq!((s.version, s.spec.payload.as_str()), (v.clone(), "kept"));
    assert_eq!(endpoints_in(&store, ns).await, 1);
    let v2 = store
        .update_shard(&shard(ns, "p", 0), spec("new"), &v)
        .await
        .unwrap();
    assert!(
        v2.parse::<u64>().unwrap() > v.parse::<u64>().unwrap(),
        "versions never go back after reopen"
    );
}
