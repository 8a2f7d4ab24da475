//! Two engines (two replicas) on one store whose writes the test holds, to force the
//! interleavings the orphan reclaimer must survive; and readiness.

use std::sync::Arc;
use std::time::Duration;

use danm_core::layout::shard_index;
use danm_core::{Family, NetworkKey, NetworkKind, OwnerKey};
use tokio::sync::Notify;

use super::{Engine, OwnerInfo};
use crate::store::troubled::{HeldRead, Trouble, TroubledStore, steal};
use crate::store::{ShardKey, Store};
use crate::worker::{WorkerConfig, decode_shard};

const NETWORK: &str = "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {name: race, namespace: default}\nspec: {NetworkID: race, NetworkType: macvlan, Options: {cidr: 10.9.0.0/24}}\n";

fn key() -> NetworkKey {
    NetworkKey::new(NetworkKind::DanmNet, "default", "race")
}

fn owner() -> OwnerInfo {
    OwnerInfo {
        container_id: "retried".into(),
        ifname: "eth0".into(),
        pod_namespace: "default".into(),
        pod_name: "static-0".into(),
        ..Default::default()
    }
}

/// Two replicas on one store with the network, and an orphan: `10.9.0.9` held in its shard
/// by the owner's fingerprint with no record naming it (what a crash between the shard
/// write and the record write leaves).
async fn replicas_with_an_orphan() -> (Arc<TroubledStore>, Arc<Engine>, Arc<Engine>) {
    let store = TroubledStore::new();
    for net in crate::networks::parse_manifests(NETWORK).unwrap() {
        store.put_network(net).await.unwrap();
    }
    let fingerprint = OwnerKey::new("retried", "eth0").unwrap().fingerprint();
    let shard = ShardKey {
        network: key(),
        family: Family::V4,
        index: shard_index(9),
    };
    steal(&store.inner, &shard, 9, fingerprint).await;
    let dynamic: Arc<dyn Store> = Arc::clone(&store) as Arc<dyn Store>;
    let a = Engine::start(Arc::clone(&dynamic), WorkerConfig::default())
        .await
        .unwrap();
    let b = Engine::start(dynamic, WorkerConfig::default())
        .await
        .unwrap();
    (store, a, b)
}

/// What the shard says of 10.9.0.9, and what the owner's record says.
async fn outcome(store: &TroubledStore) -> (Option<u64>, Option<String>) {
    let shard = ShardKey {
        network: key(),
        family: Family::V4,
        index: shard_index(9),
    };
    let bits = decode_shard(&store.inner.get_shard(&shard).await.unwrap().unwrap()).unwrap();
    let owner = OwnerKey::new("retried", "eth0").unwrap();
    let record = store
        .inner
        .get_endpoint(&owner, Some("default"))
        .await
        .unwrap()
        .map(|r| r.spec.interface.address);
    (bits.owner_of(9), record)
}

/// The interleaving of the old residual race: replica B's reclaimer has read the shard and
/// found no record; before its free is planned, the owner's retried Allocate on replica A
/// finds the address already held, records it and returns it. B's free must then do
/// nothing. (B is held at the fresh shard read its worker makes before planning the free.)
#[tokio::test]
async fn a_reclaim_decided_before_a_retried_allocate_recorded_the_address_frees_nothing() {
    let (store, a, b) = replicas_with_an_orphan().await;
    // A has read the shards before (its cache holds the orphan).
    a.list_allocations(None).await.unwrap();
    let go = Arc::new(Notify::new());
    // B's reads: the reclaimer's own (skipped), then its worker's, held.
    store.hold_read(HeldRead {
        skip: 1,
        go: Arc::clone(&go),
    });
    let reclaimer = tokio::spawn({
        let b = Arc::clone(&b);
        async move { b.reclaim_orphans(Duration::ZERO).await }
    });
    while !store.all_met() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // B has decided; meanwhile the owner retries on A.
    let got = a.allocate(&key(), &owner(), "10.9.0.9", "").await.unwrap();
    assert_eq!(got.ip, "10.9.0.9/24");
    go.notify_one();
    let freed = reclaimer.await.unwrap().unwrap();
    assert!(freed.is_empty(), "the reclaimer freed {freed:?}");
    let fingerprint = OwnerKey::new("retried", "eth0").unwrap().fingerprint();
    assert_eq!(
        outcome(&store).await,
        (Some(fingerprint), Some("10.9.0.9/24".to_owned())),
        "the shard holds what the record names"
    );
    let owner_key = OwnerKey::new("retried", "eth0").unwrap();
    a.check(&key(), &owner_key, Some("default"), "10.9.0.9/24", "")
        .await
        .unwrap();
}

/// The same race with B held at its write instead (after its worker's fresh read): the
/// renewal's write makes B's compare-and-swap fail.
#[tokio::test]
async fn a_reclaim_write_racing_a_renewal_loses() {
    let (store, a, b) = replicas_with_an_orphan().await;
    a.list_allocations(None).await.unwrap();
    let go = Arc::new(Notify::new());
    store.then(Trouble::Hold(Arc::clone(&go)));
    let reclaimer = tokio::spawn({
        let b = Arc::clone(&b);
        async move { b.reclaim_orphans(Duration::ZERO).await }
    });
    while !store.all_met() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = a.allocate(&key(), &owner(), "10.9.0.9", "").await.unwrap();
    assert_eq!(got.ip, "10.9.0.9/24");
    go.notify_one();
    assert!(reclaimer.await.unwrap().unwrap().is_empty());
    let fingerprint = OwnerKey::new("retried", "eth0").unwrap().fingerprint();
    assert_eq!(
        outcome(&store).await,
        (Some(fingerprint), Some("10.9.0.9/24".to_owned()))
    );
}

/// The other order: B's free lands first; A's retry, whose cache still shows the address
/// held, renews it after recording it and finds it free: it takes it again.
#[tokio::test]
async fn a_retried_allocate_after_the_reclaim_takes_the_address_again() {
    let (store, a, b) = replicas_with_an_orphan().await;
    a.list_allocations(None).await.unwrap();
    let freed = b.reclaim_orphans(Duration::ZERO).await.unwrap();
    assert_eq!(freed, vec!["10.9.0.9".to_owned()]);
    let got = a.allocate(&key(), &owner(), "10.9.0.9", "").await.unwrap();
    assert_eq!(got.ip, "10.9.0.9/24");
    let fingerprint = OwnerKey::new("retried", "eth0").unwrap().fingerprint();
    assert_eq!(
        outcome(&store).await,
        (Some(fingerprint), Some("10.9.0.9/24".to_owned()))
    );
}

#[tokio::test]
async fn an_engine_is_not_ready_while_a_network_migrates() {
    let store = TroubledStore::new();
    let go = Arc::new(Notify::new());
    // The migration's first shard write is held.
    store.then(Trouble::Hold(Arc::clone(&go)));
    let bits = danm_core::migrate::danm_bit_array(256, &[5]);
    let manifest = format!(
        "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: old, namespace: default}}\nspec: {{NetworkID: old, NetworkType: macvlan, Options: {{cidr: 10.8.0.0/24, alloc: {bits}}}}}\n"
    );
    for net in crate::networks::parse_manifests(&manifest).unwrap() {
        store.put_network(net).await.unwrap();
    }
    let engine = Engine::start(
        Arc::clone(&store) as Arc<dyn Store>,
        WorkerConfig::default(),
    )
    .await
    .unwrap();
    let why = engine.ready().await.unwrap_err();
    assert!(why.contains("being migrated"), "{why}");
    go.notify_one();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while engine.ready().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The addresses of the shard of 10.9.0.0/24 that `fingerprint` holds.
async fn held_by(store: &TroubledStore, fingerprint: u64) -> Vec<u128> {
    let shard = ShardKey {
        network: key(),
        family: Family::V4,
        index: shard_index(0),
    };
    let Some(stored) = store.inner.get_shard(&shard).await.unwrap() else {
        return Vec::new();
    };
    let bits = decode_shard(&stored).unwrap();
    (0..256u128)
        .filter(|o| bits.owner_of(*o as u32) == Some(fingerprint))
        .collect()
}

/// Allocate reads no record when the store says there is none (the Kubernetes store's
/// cache), and that hint may lag behind a record just written: a retried Allocate, on the
/// same replica or racing on two, still returns the one address the record names, and the
/// address the retry took meanwhile is given back (no address held twice, none leaked).
#[tokio::test]
async fn a_retried_allocate_with_a_lagging_hint_returns_the_recorded_address() {
    let store = TroubledStore::new();
    for net in crate::networks::parse_manifests(NETWORK).unwrap() {
        store.put_network(net).await.unwrap();
    }
    let dynamic: Arc<dyn Store> = Arc::clone(&store) as Arc<dyn Store>;
    let a = Engine::start(Arc::clone(&dynamic), WorkerConfig::default())
        .await
        .unwrap();
    let b = Engine::start(dynamic, WorkerConfig::default())
        .await
        .unwrap();
    store.blind();
    let fingerprint = OwnerKey::new("retried", "eth0").unwrap().fingerprint();
    let first = a.allocate(&key(), &owner(), "dynamic", "").await.unwrap();
    let again = a.allocate(&key(), &owner(), "dynamic", "").await.unwrap();
    assert_eq!(again.ip, first.ip);
    assert_eq!(
        held_by(&store, fingerprint).await.len(),
        1,
        "the retry's pick is given back"
    );
    // Two replicas racing for a new owner: one record, one address.
    let racer = OwnerInfo {
        container_id: "racer".into(),
        ..owner()
    };
    let network = key();
    let (x, y) = tokio::join!(
        a.allocate(&network, &racer, "dynamic", ""),
        b.allocate(&network, &racer, "dynamic", "")
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.ip, y.ip);
    let racer_fp = OwnerKey::new("racer", "eth0").unwrap().fingerprint();
    assert_eq!(held_by(&store, racer_fp).await.len(), 1);
    let record = store
        .inner
        .get_endpoint(&OwnerKey::new("racer", "eth0").unwrap(), Some("default"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.spec.interface.address, x.ip);
}
