//! The API-server behaviours our components rely on, each a function of a client, run
//! against the real API server by `real_api_server.rs`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use danm_crds::{AllocationShard, AllocationShardSpec, DanmNet, DanmNetSpec};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

pub fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    }
}

/// The code and reason of an API error (panics on any other error).
pub fn api_code(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Create (AlreadyExists on a second create), replace (Conflict with a stale
/// resourceVersion), merge patch (conditional when it names a resourceVersion: shard writes
/// rely on this), get and delete (NotFound).
pub async fn crud_already_exists_not_found_and_stale_conflict(client: kube::Client, ns: &str) {
    let api: Api<ConfigMap> = Api::namespaced(client, ns);
    let created = api
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    assert!(created.uid().is_some() && created.resource_version().is_some());
    assert_eq!(created.namespace().as_deref(), Some(ns));
    let e = api
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap_err();
    assert_eq!(api_code(e), (409, "AlreadyExists".into()));

    let mut v1 = api.get("a").await.unwrap();
    let mut v2 = v1.clone();
    v2.data = Some(BTreeMap::from([("k".into(), "new".into())]));
    let v2 = api.replace("a", &PostParams::default(), &v2).await.unwrap();
    assert_ne!(v2.resource_version(), v1.resource_version());
    v1.data = Some(BTreeMap::from([("k".into(), "stale".into())]));
    let e = api
        .replace("a", &PostParams::default(), &v1)
        .await
        .unwrap_err();
    assert_eq!(api_code(e), (409, "Conflict".into()));
    assert_eq!(api.get("a").await.unwrap().data.unwrap()["k"], "new");

    let patched = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"p": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.as_ref().unwrap()["p"], "1");
    let stale = v2.resource_version().unwrap();
    let e = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"resourceVersion": stale}, "data": {"p": "2"}}),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(e), (409, "Conflict".into()));
    let current = patched.resource_version().unwrap();
    let conditional = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"resourceVersion": current}, "data": {"p": "2"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(conditional.data.unwrap()["p"], "2");

    let e = api.get("missing").await.unwrap_err();
    assert_eq!(api_code(e), (404, "NotFound".into()));
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let e = api.delete("a", &DeleteParams::default()).await.unwrap_err();
    assert_eq!(api_code(e).0, 404);
    let e = api
        .replace("a", &PostParams::default(), &v2)
        .await
        .unwrap_err();
    assert_eq!(api_code(e).0, 404);
}

/// Label selectors (equality, set, on one namespace and across all) and the field
/// selectors every resource supports (`metadata.name`, `metadata.namespace`); a label
/// selector that does not parse is a 400. The two namespaces must hold nothing else.
pub async fn list_with_label_and_field_selectors(client: kube::Client, ns: &str, other_ns: &str) {
    let one: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), other_ns);
    one.create(&PostParams::default(), &cm("a", &[("app", "web")]))
        .await
        .unwrap();
    one.create(&PostParams::default(), &cm("b", &[("app", "db")]))
        .await
        .unwrap();
    other
        .create(&PostParams::default(), &cm("c", &[("app", "web")]))
        .await
        .unwrap();
    let names = |l: kube::core::ObjectList<ConfigMap>| {
        let mut n: Vec<String> = l
            .items
            .iter()
            .map(|c| c.name_any())
            // The real server's root CA publisher adds one to every namespace.
            .filter(|n| n != "kube-root-ca.crt")
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        names(one.list(&ListParams::default()).await.unwrap()),
        vec!["a", "b"]
    );
    assert_eq!(
        names(
            one.list(&ListParams::default().labels("app=web"))
                .await
                .unwrap()
        ),
        vec!["a"]
    );
    let all: Api<ConfigMap> = Api::all(client);
    let in_both = |l: kube::core::ObjectList<ConfigMap>| {
        let mut n: Vec<String> = l
            .items
            .iter()
            .filter(|c| [ns, other_ns].contains(&c.namespace().unwrap_or_default().as_str()))
            .map(|c| c.name_any())
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        in_both(
            all.list(&ListParams::default().labels("app in (web)"))
                .await
                .unwrap()
        ),
        vec!["a", "c"]
    );
    assert_eq!(
        names(
            all.list(&ListParams::default().fields(&format!("metadata.namespace={other_ns}")))
                .await
                .unwrap()
        ),
        vec!["c"]
    );
    assert_eq!(
        in_both(
            all.list(&ListParams::default().fields("metadata.name!=a"))
                .await
                .unwrap()
        )
        .into_iter()
        .filter(|n| n != "kube-root-ca.crt")
        .collect::<Vec<_>>(),
        vec!["b", "c"]
    );
    let e = all
        .list(&ListParams::default().labels("a b c"))
        .await
        .unwrap_err();
    assert_eq!(api_code(e).0, 400);
}

/// A watch from a list's resourceVersion sees the later changes, in order, filtered by its
/// label selector.
pub async fn watch_sees_changes_in_order_with_selectors(client: kube::Client, ns: &str) {
    let api: Api<ConfigMap> = Api::namespaced(client, ns);
    let mut stream = watch_from_now(&api, "app=web").await;
    api.create(&PostParams::default(), &cm("ignored", &[("app", "db")]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("w", &[("app", "web")]))
        .await
        .unwrap();
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"x": "y"}})),
    )
    .await
    .unwrap();
    api.delete("w", &DeleteParams::default()).await.unwrap();
    let seen = changes(&mut stream, 3).await;
    assert_eq!(seen, vec!["added w", "modified w", "deleted w"]);
}

/// A watch of the ConfigMaps of `api` matching `labels`, from the current resourceVersion.
pub async fn watch_from_now(
    api: &Api<ConfigMap>,
    labels: &str,
) -> futures::stream::BoxStream<'static, kube::Result<WatchEvent<ConfigMap>>> {
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.watch(&WatchParams::default().labels(labels).timeout(10), &rv)
        .await
        .unwrap()
        .boxed()
}

/// The next `count` changes of a watch as `added NAME`, `modified NAME`, `deleted NAME`
/// (bookmarks skipped; an error event fails the test).
pub async fn changes<K>(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
    count: usize,
) -> Vec<String>
where
    K: ResourceExt + std::fmt::Debug,
{
    let mut seen = Vec::new();
    while seen.len() < count {
        match tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the watch goes on")
        {
            WatchEvent::Added(o) => seen.push(format!("added {}", o.name_any())),
            WatchEvent::Modified(o) => seen.push(format!("modified {}", o.name_any())),
            WatchEvent::Deleted(o) => seen.push(format!("deleted {}", o.name_any())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    seen
}

/// Creates the DanmNet `internal`, a shard it owns (`dn.internal.v4.0`) and an unowned
/// one (`dn.other.v4.0`) in `ns`; returns the APIs of both kinds.
pub async fn network_with_an_owned_shard(
    client: kube::Client,
    ns: &str,
) -> (Api<DanmNet>, Api<AllocationShard>) {
    let nets: Api<DanmNet> = Api::namespaced(client.clone(), ns);
    let shards: Api<AllocationShard> = Api::namespaced(client, ns);
    let net = nets
        .create(
            &PostParams::default(),
            &DanmNet::new("internal", DanmNetSpec::default()),
        )
        .await
        .unwrap();
    let mut owner = net.controller_owner_ref(&()).unwrap();
    owner.controller = Some(false);
    let mut shard = AllocationShard::new("dn.internal.v4.0", AllocationShardSpec::default());
    shard.meta_mut().owner_references = Some(vec![owner]);
    shards.create(&PostParams::default(), &shard).await.unwrap();
    shards
        .create(
            &PostParams::default(),
            &AllocationShard::new("dn.other.v4.0", AllocationShardSpec::default()),
        )
        .await
        .unwrap();
    (nets, shards)
}

/// The names of the shards in `shards`' namespace.
pub async fn shard_names(shards: &Api<AllocationShard>) -> Vec<String> {
    shards
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| s.name_any())
        .collect()
}

/// A watch from a resourceVersion older than the server still holds is answered with a
/// 410 Expired event in the stream (not an HTTP error): clients must list again.
pub async fn watch_from_an_expired_resource_version_gets_410(client: kube::Client, ns: &str) {
    let api: Api<DanmNet> = Api::namespaced(client, ns);
    api.create(
        &PostParams::default(),
        &DanmNet::new("expired", DanmNetSpec::default()),
    )
    .await
    .unwrap();
    let mut stream = api
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 Expired, got {other:?}"),
    }
}

/// kube-runtime's watcher (what ipamd's network watches are) lists, then follows.
pub async fn kube_runtime_watcher_lists_then_follows(client: kube::Client, ns: &str) {
    let api: Api<ConfigMap> = Api::namespaced(client, ns);
    api.create(&PostParams::default(), &cm("before", &[("w", "1")]))
        .await
        .unwrap();
    let mut events = watcher(api.clone(), watcher::Config::default().labels("w=1")).boxed();
    let mut names = Vec::new();
    let creator = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        api.create(&PostParams::default(), &cm("after", &[("w", "1")]))
            .await
            .unwrap();
    });
    while names.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(c) | watcher::Event::Apply(c) => names.push(c.name_any()),
            _ => {}
        }
    }
    creator.await.unwrap();
    assert_eq!(names, vec!["before", "after"]);
}

/// An object over etcd's 1.5 MiB request limit fails when stored (500, "request is too
/// large"); a body over 3 MiB is refused at once (413). Nothing is stored either way.
pub async fn objects_over_the_size_limits_are_refused(client: kube::Client, ns: &str) {
    let api: Api<DanmNet> = Api::namespaced(client, ns);
    let mut big = DanmNet::new("big", DanmNetSpec::default());
    big.spec.network.options.alloc = Some("A".repeat(1600 * 1024));
    let e = api.create(&PostParams::default(), &big).await.unwrap_err();
    match e {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 500, "{s:?}");
            assert!(s.message.contains("request is too large"), "{s:?}");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    big.spec.network.options.alloc = Some("A".repeat(3200 * 1024));
    let e = api.create(&PostParams::default(), &big).await.unwrap_err();
    assert_eq!(api_code(e).0, 413);
    let e = api.get("big").await.unwrap_err();
    assert_eq!(api_code(e).0, 404, "nothing was stored");
}
