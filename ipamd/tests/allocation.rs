//! ipamd end to end over gRPC: concurrency, restart, corruption, request validation, DANM
//! semantics of static / none / dual-stack requests.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{Ipamd, add_networks, alloc, client, dnet, owner, start_ipamd};
use danm_core::{Family, NetworkKey, NetworkKind};
use danm_ipamd::store::file::FileStore;
use danm_ipamd::store::memory::MemoryStore;
use danm_ipamd::store::{ShardKey, Store};
use danm_proto::v1 as pb;
use tonic::Code;

const NETS: &str = r#"
apiVersion: danm.io/v1
kind: DanmNet
metadata: {name: net24, namespace: default}
spec:
  NetworkID: net24
  NetworkType: macvlan
  Options: {cidr: 10.20.0.0/24}
---
apiVersion: danm.io/v1
kind: DanmNet
metadata: {name: dual, namespace: default}
spec:
  NetworkID: dual
  NetworkType: ipvlan
  Options:
    cidr: 10.30.0.0/24
    allocation_pool: {start: 10.30.0.10, end: 10.30.0.20}
    net6: 2001:db8:30::/64
    routes: {10.99.0.0/16: 10.30.0.1}
---
apiVersion: danm.io/v1
kind: DanmNet
metadata: {name: big, namespace: default}
spec:
  NetworkID: big
  Options: {cidr: 10.64.0.0/16}
---
apiVersion: danm.io/v1
kind: DanmNet
metadata: {name: l2, namespace: default}
spec:
  NetworkID: l2
  NetworkType: macvlan
"#;

async fn start(store: Arc<dyn Store>) -> Ipamd {
    add_networks(store.as_ref(), NETS).await;
    start_ipamd(store).await
}

fn addr(cidr: &str) -> String {
    cidr.split('/').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_callers_fill_a_24_exactly_then_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipamd.redb");
    let ipamd = start(Arc::new(FileStore::open(&path).unwrap())).await;

    // 64 concurrent callers, 5 owners each: 320 requests for 254 addresses.
    let mut tasks = Vec::new();
    for caller in 0..64 {
        let mut client = client(&ipamd).await;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..5 {
                let cid = format!("c{caller}-{i}");
                match client.allocate(alloc("net24", &cid, "dynamic", "")).await {
                    Ok(r) => got.push(Ok((cid, r.into_inner().ip))),
                    Err(s) => got.push(Err(s.code())),
                }
            }
            got
        }));
    }
    let mut held = Vec::new();
    let mut exhausted = 0;
    for t in tasks {
        for r in t.await.unwrap() {
            match r {
                Ok(pair) => held.push(pair),
                Err(Code::ResourceExhausted) => exhausted += 1,
                Err(other) => panic!("unexpected status {other:?}"),
            }
        }
    }
    let distinct: HashSet<&String> = held.iter().map(|(_, ip)| ip).collect();
    assert_eq!(held.len(), 254, "every usable address handed out");
    assert_eq!(distinct.len(), 254, "no address given twice");
    assert_eq!(exhausted, 320 - 254);
    for (_, ip) in &held {
        assert!(ip.ends_with("/24"));
        assert_ne!(addr(ip), "10.20.0.0");
        assert_ne!(addr(ip), "10.20.0.255");
    }
    let metrics = &ipamd.engine.metrics;
    let rounds = metrics.rounds.get();
    println!(
        "320 requests committed in {rounds} rounds, {} shard writes",
        metrics.shard_writes.get()
    );
    ipamd.stop().await.unwrap();

    // Restart on the same file: everything is still allocated, retries are idempotent.
    let ipamd = start_ipamd(common::reopen(&path).await).await;
    let mut client = client(&ipamd).await;
    let err = client
        .allocate(alloc("net24", "newcomer", "dynamic", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("DanmNet default/net24"),
        "{}",
        err.message()
    );
    for (cid, ip) in held.iter().step_by(17) {
        let again = client
            .allocate(alloc("net24", cid, "dynamic", ""))
            .await
            .unwrap();
        assert_eq!(
            &again.into_inner().ip,
            ip,
            "a retried Allocate returns the same address"
        );
    }
    let mut stream = client
        .list_allocations(pb::ListAllocationsRequest {
            network: dnet("default", "net24"),
        })
        .await
        .unwrap()
        .into_inner();
    let mut listed = 0;
    while let Some(a) = stream.message().await.unwrap() {
        assert!(
            a.owner.is_some(),
            "every allocation has its endpoint record"
        );
        listed += 1;
    }
    assert_eq!(listed, 254);
    ipamd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_frees_and_stale_release_frees_nothing() {
    let ipamd = start(Arc::new(MemoryStore::new())).await;
    let mut c = client(&ipamd).await;
    let first = c
        .allocate(alloc("net24", "old", "10.20.0.7", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.ip, "10.20.0.7/24");
    let rel = pb::ReleaseRequest {
        network: dnet("default", "net24"),
        owner: owner("old", "eth0"),
    };
    let freed = c.release(rel.clone()).await.unwrap().into_inner();
    assert_eq!(freed.released, vec!["10.20.0.7"]);
    // The address goes to a new owner; the old owner's DEL is retried.
    c.allocate(alloc("net24", "new", "10.20.0.7", ""))
        .await
        .unwrap();
    let again = c.release(rel).await.unwrap().into_inner();
    assert!(again.released.is_empty(), "a stale release frees nothing");
    let check = c
        .check(pb::CheckRequest {
            network: dnet("default", "net24"),
            owner: owner("new", "eth0"),
            ip: "10.20.0.7/24".into(),
            ip6: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(check.into_inner().ip, "10.20.0.7/24");
    let taken = c
        .allocate(alloc("net24", "third", "10.20.0.7", ""))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    assert!(
        taken.message().contains("10.20.0.7") && taken.message().contains("already in use"),
        "{}",
        taken.message()
    );
    ipamd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_none_and_dual_stack_follow_danm() {
    let ipamd = start(Arc::new(MemoryStore::new())).await;
    let mut c = client(&ipamd).await;
    // Dual stack in one request; dynamic v4 comes from the narrowed pool.
    let r = c
        .allocate(alloc("dual", "d1", "dynamic", "dynamic"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.ip, "10.30.0.10/24");
    assert_eq!(r.ip6, "2001:db8:30::1/64");
    assert_eq!(
        r.routes,
        vec![pb::Route {
            destination: "10.99.0.0/16".into(),
            gateway: "10.30.0.1".into()
        }]
    );
    // Static outside the pool but inside the CIDR: allowed, as in DANM, and tracked.
    let r = c
        .allocate(alloc("dual", "d2", "10.30.0.200/24", "none"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.ip.as_str(), r.ip6.as_str()), ("10.30.0.200/24", "none"));
    let dup = c
        .allocate(alloc("dual", "d3", "10.30.0.200", ""))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    // The route's gateway is reserved.
    let gw = c
        .allocate(alloc("dual", "d4", "10.30.0.1", ""))
        .await
        .unwrap_err();
    assert_eq!(gw.code(), Code::InvalidArgument);
    assert!(gw.message().contains("gateway"), "{}", gw.message());
    // none/none on an L2 network: nothing allocated, still recorded.
    let r = c
        .allocate(alloc("l2", "d5", "none", "none"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.ip.as_str(), r.ip6.as_str()), ("none", "none"));
    let l2 = c
        .allocate(alloc("l2", "d6", "dynamic", ""))
        .await
        .unwrap_err();
    assert_eq!(l2.code(), Code::InvalidArgument);
    assert!(
        l2.message().contains("has no IPv4 subnet"),
        "{}",
        l2.message()
    );
    // Dual-stack where the v6 half fails changes nothing: the v4 half is given back.
    c.allocate(alloc("dual", "d7", "", "2001:db8:30::99"))
        .await
        .unwrap();
    let half = c
        .allocate(alloc("dual", "d8", "dynamic", "2001:db8:30::99"))
        .await
        .unwrap_err();
    assert_eq!(half.code(), Code::AlreadyExists);
    // Its IPv4 pick was 10.30.0.11 (the next free one): free again.
    let r = c
        .allocate(alloc("dual", "d9", "10.30.0.11", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.ip, "10.30.0.11/24",
        "the refused request's IPv4 address was given back"
    );
    let listed = ipamd.engine.list_allocations(None).await.unwrap();
    assert!(
        listed.iter().all(|l| l.endpoint.is_some()),
        "nothing held without a record"
    );
    ipamd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_change_nothing() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let ipamd = start(Arc::clone(&store)).await;
    let mut c = client(&ipamd).await;
    let cases: Vec<(pb::AllocateRequest, Code, &str)> = vec![
        (
            alloc("nosuchnet", "x", "dynamic", ""),
            Code::NotFound,
            "DanmNet default/nosuchnet not found",
        ),
        (
            alloc("net24", "x", "10.21.0.5", ""),
            Code::InvalidArgument,
            "outside the CIDR 10.20.0.0/24",
        ),
        (
            alloc("net24", "x", "10.20.0.300", ""),
            Code::InvalidArgument,
            "ip: \"10.20.0.300\" is not a valid IP address",
        ),
        (
            alloc("net24", "x", "dynamc", ""),
            Code::InvalidArgument,
            "ip: ",
        ),
        (
            alloc("net24", "x", "2001:db8::1", ""),
            Code::InvalidArgument,
            "not an IPv4 address",
        ),
        (
            alloc("net24", "", "dynamic", ""),
            Code::InvalidArgument,
            "owner.container_id must not be empty",
        ),
        (
            pb::AllocateRequest {
                owner: None,
                ..alloc("net24", "x", "dynamic", "")
            },
            Code::InvalidArgument,
            "owner: is required",
        ),
        (
            pb::AllocateRequest {
                network: None,
                ..alloc("net24", "x", "dynamic", "")
            },
            Code::InvalidArgument,
            "network: is required",
        ),
        (
            pb::AllocateRequest {
                network: Some(pb::NetworkRef {
                    kind: 0,
                    namespace: "default".into(),
                    name: "net24".into(),
                }),
                ..alloc("net24", "x", "dynamic", "")
            },
            Code::InvalidArgument,
            "network.kind",
        ),
        (
            alloc("net24", "x", "10.20.0.255", ""),
            Code::InvalidArgument,
            "broadcast",
        ),
    ];
    for (request, code, text) in cases {
        let e = c.allocate(request.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{request:?}: {e:?}");
        assert!(
            e.message().contains(text),
            "{:?} lacks {text:?}",
            e.message()
        );
    }
    // A network with a bad CIDR is refused with the field named.
    add_networks(
        store.as_ref(),
        "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {name: badcidr, namespace: default}\nspec: {NetworkID: b, Options: {cidr: 10.0.0/24}}\n",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let e = c
        .allocate(alloc("badcidr", "x", "dynamic", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("spec.Options.cidr"), "{}", e.message());
    // Nothing changed: no shard, no endpoint.
    for name in ["net24", "badcidr"] {
        let key = NetworkKey::new(NetworkKind::DanmNet, "default", name);
        assert!(store.list_shards(&key).await.unwrap().is_empty());
    }
    assert!(store.list_endpoints().await.unwrap().is_empty());
    ipamd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_shard_is_refused_by_name_and_other_shards_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipamd.redb");
    let store: Arc<dyn Store> = Arc::new(FileStore::open(&path).unwrap());
    let ipamd = start(Arc::clone(&store)).await;
    let mut c = client(&ipamd).await;
    // Two shards of the /16: 10.64.0.x (shard 0) and 10.64.4.x (shard 1).
    c.allocate(alloc("big", "a", "10.64.0.5", ""))
        .await
        .unwrap();
    c.allocate(alloc("big", "b", "10.64.4.5", ""))
        .await
        .unwrap();
    ipamd.stop().await.unwrap();

    // Flip one payload character of shard 0 behind ipamd's back.
    let key = ShardKey {
        network: NetworkKey::new(NetworkKind::DanmNet, "default", "big"),
        family: Family::V4,
        index: 0,
    };
    let shard = store.get_shard(&key).await.unwrap().unwrap();
    let mut spec = shard.spec.clone();
    let mut bytes = spec.payload.into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    spec.payload = String::from_utf8(bytes).unwrap();
    store
        .update_shard(&key, spec, &shard.version)
        .await
        .unwrap();
    drop(store);

    let ipamd = start_ipamd(common::reopen(&path).await).await;
    let mut c = client(&ipamd).await;
    let e = c
        .allocate(alloc("big", "c", "10.64.0.9", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("dn.big.v4.0"),
        "names the shard: {}",
        e.message()
    );
    assert!(e.message().contains("CRC32 mismatch"), "{}", e.message());
    // Dynamic allocation skips the corrupt shard; the other shards serve.
    let r = c
        .allocate(alloc("big", "d", "dynamic", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.ip, "10.64.4.0/16",
        "first address after the corrupt shard"
    );
    c.allocate(alloc("big", "e", "10.64.4.6", ""))
        .await
        .unwrap();
    // Releasing from the corrupt shard is refused too, and nothing is repaired silently.
    let e = c
        .release(pb::ReleaseRequest {
            network: dnet("default", "big"),
            owner: owner("a", "eth0"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(ipamd.engine.metrics.corrupt_shards.get() >= 1);
    ipamd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_one_owner_get_one_address() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let ipamd = start(Arc::clone(&store)).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut c = client(&ipamd).await;
        tasks.push(tokio::spawn(async move {
            c.allocate(alloc("big", "same-owner", "dynamic", ""))
                .await
                .unwrap()
                .into_inner()
                .ip
        }));
    }
    let mut ips = HashSet::new();
    for t in tasks {
        ips.insert(t.await.unwrap());
    }
    assert_eq!(
        ips.len(),
        1,
        "kubelet retries of one ADD get one address: {ips:?}"
    );
    let listed = ipamd.engine.list_allocations(None).await.unwrap();
    assert_eq!(listed.len(), 1, "and nothing else is held");
    ipamd.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_shard_and_record_is_reclaimed_after_the_grace_period() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let ipamd = start(Arc::clone(&store)).await;
    let mut c = client(&ipamd).await;
    c.allocate(alloc("net24", "kept", "10.20.0.10", ""))
        .await
        .unwrap();
    c.allocate(alloc("net24", "crashed", "10.20.0.11", ""))
        .await
        .unwrap();
    // The crash: the shard write landed, the record write did not.
    let crashed = danm_core::OwnerKey::new("crashed", "eth0").unwrap();
    assert!(store.delete_endpoint(&crashed, None).await.unwrap());
    let engine = &ipamd.engine;
    let grace = std::time::Duration::from_millis(300);
    // First sight starts the grace period: nothing is freed yet.
    assert!(engine.reclaim_orphans(grace).await.unwrap().is_empty());
    let e = c
        .allocate(alloc("net24", "other", "10.20.0.11", ""))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::AlreadyExists,
        "still held during the grace period"
    );
    tokio::time::sleep(grace).await;
    assert_eq!(
        engine.reclaim_orphans(grace).await.unwrap(),
        vec!["10.20.0.11"]
    );
    // Freed, and only that: the recorded allocation stays.
    c.allocate(alloc("net24", "other", "10.20.0.11", ""))
        .await
        .unwrap();
    let e = c
        .allocate(alloc("net24", "third", "10.20.0.10", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    tokio::time::sleep(grace).await;
    assert!(
        engine.reclaim_orphans(grace).await.unwrap().is_empty(),
        "recorded allocations are never reclaimed"
    );
    ipamd.stop().await.unwrap();
}

/// CNI GC covers one node's attachments: an unscoped Gc is refused to a caller that is not
/// an administrator, and a Gc for one host frees only what was attached on that host.
#[tokio::test]
async fn gc_frees_only_the_named_hosts_attachments() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    add_networks(
        store.as_ref(),
        "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {name: gcnet, namespace: default}\nspec: {NetworkID: gcnet, NetworkType: macvlan, Options: {cidr: 10.61.0.0/24}}\n",
    )
    .await;
    let ipamd = start_ipamd(store).await;
    let mut client = client(&ipamd).await;
    for (cid, host) in [("on-h1", "h1"), ("also-h1", "h1"), ("on-h2", "h2")] {
        let mut request = alloc("gcnet", cid, "dynamic", "");
        request.owner.as_mut().unwrap().host = host.into();
        client.allocate(request).await.unwrap();
    }
    let unscoped = client.gc(pb::GcRequest::default()).await.unwrap_err();
    assert_eq!(unscoped.code(), Code::InvalidArgument, "{unscoped:?}");
    assert!(unscoped.message().contains("host"), "{unscoped:?}");
    let freed = client
        .gc(pb::GcRequest {
            valid: vec![pb::Attachment {
                container_id: "also-h1".into(),
                ifname: "eth0".into(),
            }],
            network: dnet("default", "gcnet"),
            host: "h1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(freed.released.len(), 1, "only on-h1: {freed:?}");
    let left: Vec<String> = ipamd
        .engine
        .list_allocations(None)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|l| l.endpoint.map(|e| e.owner().container_id))
        .collect();
    let left: HashSet<String> = left.into_iter().collect();
    assert_eq!(
        left,
        HashSet::from(["also-h1".to_owned(), "on-h2".to_owned()])
    );
    ipamd.stop().await.unwrap();
}
