//! The worker on a memory store whose shard writes can be held, lost or raced by another
//! writer ([`crate::store::troubled`]): group commit, a lost compare-and-swap, an unknown write outcome, a partial
//! dual-stack give-back, renewal and the version-fenced reclaim.

use std::sync::Arc;

use danm_core::layout::{local_offset, shard_index};
use danm_core::network::plan;
use danm_core::{AddressRequest, AllocError, Family, NetworkKey, NetworkKind, PerFamily};
use danm_crds::{NetworkOptions, NetworkSpec};
use tokio::sync::Notify;

use super::{WorkerConfig, WorkerHandle, decode_shard};
use crate::error::EngineError;
use crate::metrics::Metrics;
use crate::store::troubled::{Trouble, TroubledStore};
use crate::store::{ShardKey, Store};

/// A worker on a network of `cidr` (and `net6`, if given) over `store`.
fn worker(store: &Arc<TroubledStore>, cidr: &str, net6: Option<&str>) -> WorkerHandle {
    let key = NetworkKey::new(NetworkKind::DanmNet, "default", "w");
    let spec = NetworkSpec {
        network_id: "w".into(),
        options: NetworkOptions {
            cidr: Some(cidr.into()),
            net6: net6.map(Into::into),
            ..Default::default()
        },
        ..Default::default()
    };
    WorkerHandle::spawn(
        Arc::new(plan(key, &spec).unwrap()),
        String::new(),
        Arc::clone(store) as Arc<dyn Store>,
        Arc::new(Metrics::default()),
        WorkerConfig::default(),
    )
}

fn v4_dynamic() -> PerFamily<AddressRequest> {
    PerFamily::new(AddressRequest::Dynamic, AddressRequest::Skip)
}

fn shard_key(family: Family, offset: u128) -> ShardKey {
    ShardKey {
        network: NetworkKey::new(NetworkKind::DanmNet, "default", "w"),
        family,
        index: shard_index(offset),
    }
}

/// Who holds `offset` in the store.
async fn holder(store: &TroubledStore, family: Family, offset: u128) -> Option<u64> {
    let shard = store
        .inner
        .get_shard(&shard_key(family, offset))
        .await
        .unwrap()?;
    decode_shard(&shard).unwrap().owner_of(local_offset(offset))
}

#[tokio::test]
async fn requests_that_queue_behind_a_write_share_the_next_one() {
    let store = TroubledStore::new();
    let worker = worker(&store, "10.0.0.0/24", None);
    let go = Arc::new(Notify::new());
    store.then(Trouble::Hold(Arc::clone(&go)));
    let first = tokio::spawn({
        let worker = worker.clone();
        async move { worker.allocate(1, v4_dynamic()).await }
    });
    // The first round is held in its write: the next 20 requests queue behind it.
    while store.writes() == 0 && !store.all_met() {
        tokio::task::yield_now().await;
    }
    let rest: Vec<_> = (2..22u64)
        .map(|fp| {
            let worker = worker.clone();
            tokio::spawn(async move { worker.allocate(fp, v4_dynamic()).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    go.notify_one();
    let mut offsets = vec![first.await.unwrap().unwrap().held.v4.unwrap()];
    for r in rest {
        offsets.push(r.await.unwrap().unwrap().held.v4.unwrap());
    }
    offsets.sort();
    offsets.dedup();
    assert_eq!(offsets.len(), 21, "21 distinct addresses");
    assert_eq!(
        store.writes(),
        2,
        "one write for the first request, one for the 20 that queued behind it"
    );
}

#[tokio::test]
async fn a_lost_compare_and_swap_is_planned_again_on_the_fresh_shard() {
    let store = TroubledStore::new();
    let worker = worker(&store, "10.0.0.0/24", None);
    // Warm the cache, then let another replica take the next address just before our write.
    let first = worker
        .allocate(1, v4_dynamic())
        .await
        .unwrap()
        .held
        .v4
        .unwrap();
    store.then(Trouble::Race {
        family: Family::V4,
        offset: first + 1,
        thief: 99,
    });
    let second = worker
        .allocate(2, v4_dynamic())
        .await
        .unwrap()
        .held
        .v4
        .unwrap();
    assert_ne!(
        second,
        first + 1,
        "the address the other replica took is not given again"
    );
    assert_eq!(holder(&store, Family::V4, first + 1).await, Some(99));
    assert_eq!(holder(&store, Family::V4, second).await, Some(2));
}

#[tokio::test]
async fn a_write_whose_answer_was_lost_counts_as_done_when_the_shard_shows_it() {
    let store = TroubledStore::new();
    let worker = worker(&store, "10.0.0.0/24", None);
    store.then(Trouble::LoseAnswer);
    let granted = worker.allocate(7, v4_dynamic()).await.unwrap();
    let offset = granted.held.v4.unwrap();
    assert_eq!(holder(&store, Family::V4, offset).await, Some(7));
    // Nothing else was taken for it: one address in the shard.
    let shard = store
        .inner
        .get_shard(&shard_key(Family::V4, offset))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shard.spec.allocated, 1);
    // A release whose answer is lost is done too.
    store.then(Trouble::LoseAnswer);
    let freed = worker.release(7, vec![(Family::V4, offset)]).await.unwrap();
    assert_eq!(freed, vec![(Family::V4, offset)]);
    assert_eq!(holder(&store, Family::V4, offset).await, None);
}

#[tokio::test]
async fn a_dual_stack_request_whose_ipv6_half_fails_gives_its_ipv4_half_back() {
    let store = TroubledStore::new();
    // A /126 IPv6 network: its pool is two addresses.
    let worker = worker(&store, "10.0.0.0/24", Some("fd00::/126"));
    let both = PerFamily::new(AddressRequest::Dynamic, AddressRequest::Dynamic);
    let first = worker.allocate(1, both).await.unwrap();
    let v6_left = if first.held.v6 == Some(1) { 2 } else { 1 };
    // Another replica takes the last IPv6 address just before the next write: the IPv4
    // half lands, the IPv6 half loses, finds the pool empty, and the request fails.
    store.then(Trouble::Race {
        family: Family::V6,
        offset: v6_left,
        thief: 99,
    });
    let e = worker.allocate(2, both).await.unwrap_err();
    assert!(
        matches!(
            e,
            EngineError::Alloc(AllocError::Exhausted {
                family: Family::V6,
                ..
            })
        ),
        "{e}"
    );
    let v4_shard = store
        .inner
        .get_shard(&shard_key(Family::V4, 0))
        .await
        .unwrap()
        .unwrap();
    let v4 = decode_shard(&v4_shard).unwrap();
    assert_eq!(
        v4.iter().filter(|(_, owner)| *owner == 2).count(),
        0,
        "the IPv4 half was given back"
    );
    assert_eq!(v4.len(), 1, "only the first request's address is held");
}

#[tokio::test]
async fn renewing_writes_the_shard_even_when_nothing_changes() {
    let store = TroubledStore::new();
    let worker = worker(&store, "10.0.0.0/24", None);
    let ip = "10.0.0.9".parse().unwrap();
    let requests = PerFamily::new(
        AddressRequest::Static { ip, prefix: None },
        AddressRequest::Skip,
    );
    let first = worker.allocate(5, requests).await.unwrap();
    assert_eq!(first.reused, PerFamily::default());
    // Asked again (a retry): already held, so nothing is written...
    let before = store
        .inner
        .get_shard(&shard_key(Family::V4, 9))
        .await
        .unwrap()
        .unwrap();
    let again = worker.allocate(5, requests).await.unwrap();
    assert_eq!((again.held.v4, again.reused.v4), (Some(9), true));
    // ...until it is renewed: a new version, same addresses.
    worker.renew(5, Family::V4, 9).await.unwrap();
    let after = store
        .inner
        .get_shard(&shard_key(Family::V4, 9))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(before.version, after.version);
    assert_eq!(after.spec.revision, before.spec.revision + 1);
    assert_eq!(holder(&store, Family::V4, 9).await, Some(5));
    // Renewing an address another owner holds fails.
    let e = worker.renew(6, Family::V4, 9).await.unwrap_err();
    assert!(
        matches!(e, EngineError::Alloc(AllocError::InUse { .. })),
        "{e}"
    );
}

#[tokio::test]
async fn a_reclaim_frees_only_at_the_version_it_observed() {
    let store = TroubledStore::new();
    let worker = worker(&store, "10.0.0.0/24", None);
    let offset = worker
        .allocate(3, v4_dynamic())
        .await
        .unwrap()
        .held
        .v4
        .unwrap();
    let observed = store
        .inner
        .get_shard(&shard_key(Family::V4, offset))
        .await
        .unwrap()
        .unwrap();
    // The shard is written after the observation (here: a renewal): no free.
    worker.renew(3, Family::V4, offset).await.unwrap();
    assert!(
        !worker
            .reclaim(3, Family::V4, offset, observed.version)
            .await
            .unwrap()
    );
    assert_eq!(holder(&store, Family::V4, offset).await, Some(3));
    // At the current version, and only for its owner: freed.
    let current = store
        .inner
        .get_shard(&shard_key(Family::V4, offset))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !worker
            .reclaim(4, Family::V4, offset, current.version.clone())
            .await
            .unwrap()
    );
    assert!(
        worker
            .reclaim(3, Family::V4, offset, current.version)
            .await
            .unwrap()
    );
    assert_eq!(holder(&store, Family::V4, offset).await, None);
}
