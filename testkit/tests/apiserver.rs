//! Pins each API-server behaviour the components rely on, through the real kube::Client.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use danm_crds::{AllocationShard, AllocationShardSpec, DanmNet, DanmNetSpec};
use danm_testkit::apiserver::{ApiServer, Options};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
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

fn api_code(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn crud_already_exists_not_found_and_stale_conflict() {
    let server = ApiServer::start(Options::default()).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let created = api
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    assert!(created.uid().is_some() && created.resource_version().is_some());
    assert_eq!(created.namespace().as_deref(), Some("default"));
    let e = api
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap_err();
    assert_eq!(api_code(e), (409, "AlreadyExists".into()));

    // Replace with the current resourceVersion works; with the old one it is a 409 Conflict.
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

    // Merge patch.
    let patched = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"p": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.as_ref().unwrap()["p"], "1");

    // A merge patch naming a resourceVersion is conditional on it, as on the real server
    // (the AllocationShard writes rely on this).
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

#[tokio::test]
async fn list_with_label_and_field_selectors() {
    let server = ApiServer::start(Options::default()).await.unwrap();
    let client = server.client();
    let default: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "other");
    default
        .create(&PostParams::default(), &cm("a", &[("app", "web")]))
        .await
        .unwrap();
    default
        .create(&PostParams::default(), &cm("b", &[("app", "db")]))
        .await
        .unwrap();
    other
        .create(&PostParams::default(), &cm("c", &[("app", "web")]))
        .await
        .unwrap();
    let names = |l: kube::core::ObjectList<ConfigMap>| {
        l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>()
    };
    assert_eq!(
        names(default.list(&ListParams::default()).await.unwrap()),
        vec!["a", "b"]
    );
    assert_eq!(
        names(
            default
                .list(&ListParams::default().labels("app=web"))
                .await
                .unwrap()
        ),
        vec!["a"]
    );
    let all: Api<ConfigMap> = Api::all(client);
    assert_eq!(
        names(
            all.list(&ListParams::default().labels("app in (web)"))
                .await
                .unwrap()
        ),
        vec!["a", "c"]
    );
    assert_eq!(
        names(
            all.list(&ListParams::default().fields("metadata.namespace=other"))
                .await
                .unwrap()
        ),
        vec!["c"]
    );
    assert_eq!(
        names(
            all.list(&ListParams::default().fields("metadata.name!=a"))
                .await
                .unwrap()
        ),
        vec!["b", "c"]
    );
    let e = all
        .list(&ListParams::default().labels("a b c"))
        .await
        .unwrap_err();
    assert_eq!(api_code(e).0, 400);
}

#[tokio::test]
async fn watch_sees_changes_in_order_with_bookmarks_and_selectors() {
    let server = ApiServer::start(Options {
        bookmark_interval: Duration::from_millis(100),
        ..Options::default()
    })
    .await
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = api
        .watch(&WatchParams::default().labels("app=web").timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
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
    let mut seen = Vec::new();
    let mut bookmark = false;
    while seen.len() < 3 || !bookmark {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(c) => seen.push(format!("added {}", c.name_any())),
            WatchEvent::Modified(c) => seen.push(format!("modified {}", c.name_any())),
            WatchEvent::Deleted(c) => seen.push(format!("deleted {}", c.name_any())),
            WatchEvent::Bookmark(_) => bookmark = true,
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(seen, vec!["added w", "modified w", "deleted w"]);
}

#[tokio::test]
async fn watch_from_a_compacted_resource_version_gets_410_gone() {
    let server = ApiServer::start(Options::default()).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    api.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    server.compact();
    let mut stream = api
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test]
async fn kube_runtime_watcher_lists_then_follows() {
    let server = ApiServer::start(Options::default()).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    api.create(&PostParams::default(), &cm("before", &[]))
        .await
        .unwrap();
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut names = Vec::new();
    let creator = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        api.create(&PostParams::default(), &cm("after", &[]))
            .await
            .unwrap();
    });
    while names.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .unwrap()
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

#[tokio::test]
async fn objects_over_1_5_mib_are_refused() {
    let server = ApiServer::start(Options::default()).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mut big = cm("big", &[]);
    big.data = Some(BTreeMap::from([("blob".into(), "x".repeat(1600 * 1024))]));
    let e = api.create(&PostParams::default(), &big).await.unwrap_err();
    assert_eq!(api_code(e), (413, "RequestEntityTooLarge".into()));
    let e = api.get("big").await.unwrap_err();
    assert_eq!(api_code(e).0, 404, "nothing was stored");
}

#[tokio::test]
async fn deleting_an_owner_deletes_its_dependents() {
    let server = ApiServer::start(Options::default()).await.unwrap();
    let nets: Api<DanmNet> = Api::namespaced(server.client(), "default");
    let shards: Api<AllocationShard> = Api::namespaced(server.client(), "default");
    let net = nets
        .create(
            &PostParams::default(),
            &DanmNet::new("internal", DanmNetSpec::default()),
        )
        .await
        .unwrap();
    let owner = net.controller_owner_ref(&()).unwrap();
    let mut shard = AllocationShard::new("dn.internal.v4.0", AllocationShardSpec::default());
    shard.meta_mut().owner_references = Some(vec![owner]);
    shards.create(&PostParams::default(), &shard).await.unwrap();
    let mut unrelated = AllocationShard::new("dn.other.v4.0", AllocationShardSpec::default());
    unrelated.meta_mut().owner_references = None;
    shards
        .create(&PostParams::default(), &unrelated)
        .await
        .unwrap();
    nets.delete("internal", &DeleteParams::default())
        .await
        .unwrap();
    let left: Vec<String> = shards
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| s.name_any())
        .collect();
    assert_eq!(left, vec!["dn.other.v4.0"]);
}

#[tokio::test]
async fn injected_faults_and_write_latency() {
    let server = ApiServer::start(Options {
        write_latency: Duration::from_millis(30),
        ..Options::default()
    })
    .await
    .unwrap();
    server
        .faults()
        .timeout_delay_ms
        .store(10, Ordering::Relaxed);
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let started = std::time::Instant::now();
    api.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(30),
        "writes wait for the configured latency"
    );

    server
        .faults()
        .internal_error_ppm
        .store(1_000_000, Ordering::Relaxed);
    assert_eq!(
        api_code(api.get("a").await.unwrap_err()),
        (500, "InternalError".into())
    );
    server
        .faults()
        .internal_error_ppm
        .store(0, Ordering::Relaxed);

    server
        .faults()
        .conflict_ppm
        .store(1_000_000, Ordering::Relaxed);
    let current = api.get("a").await.unwrap();
    assert_eq!(
        api_code(
            api.replace("a", &PostParams::default(), &current)
                .await
                .unwrap_err()
        )
        .0,
        409
    );
    server.faults().conflict_ppm.store(0, Ordering::Relaxed);

    // Timeouts: the write may or may not have happened; across many, both are seen. (With
    // kube's default retry layer a 504 is retried; a raw client shows the 504 itself.)
    let mut raw = server.config();
    raw.default_retry = false;
    let api: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(raw).unwrap(), "default");
    server
        .faults()
        .timeout_ppm
        .store(1_000_000, Ordering::Relaxed);
    let mut applied = 0;
    for i in 0..20 {
        let e = api
            .create(&PostParams::default(), &cm(&format!("t{i}"), &[]))
            .await
            .unwrap_err();
        assert_eq!(api_code(e).0, 504);
    }
    server.faults().timeout_ppm.store(0, Ordering::Relaxed);
    for i in 0..20 {
        if api.get(&format!("t{i}")).await.is_ok() {
            applied += 1;
        }
    }
    assert!(
        applied > 0 && applied < 20,
        "{applied} of 20 timed-out writes applied"
    );
    assert!(server.faults().injected.load(Ordering::Relaxed) >= 22);
}

#[tokio::test]
async fn kubeconfig_points_at_the_server() {
    let server = ApiServer::start(Options::default()).await.unwrap();
    let kubeconfig: kube::config::Kubeconfig = serde_yaml::from_str(&server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("via-kubeconfig", &[]))
        .await
        .unwrap();
    assert_eq!(ConfigMap::kind(&()), "ConfigMap");
}
