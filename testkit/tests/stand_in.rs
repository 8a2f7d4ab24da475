//! The API stand-in (kept for the bench, which compares its figures with the real API
//! server's) is held to the behaviours of `common/`, which `real_api_server.rs` pins on the
//! real API server; and to its own: periodic bookmarks and synchronous cascading deletion.

mod common;

use std::time::Duration;

use common::*;
use danm_testkit::apiserver::{ApiServer, Options};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};

async fn stand_in() -> ApiServer {
    ApiServer::start(Options::default()).await.unwrap()
}

#[tokio::test]
async fn crud_already_exists_not_found_and_stale_conflict() {
    let server = stand_in().await;
    common::crud_already_exists_not_found_and_stale_conflict(server.client(), "default").await;
}

#[tokio::test]
async fn list_with_label_and_field_selectors() {
    let server = stand_in().await;
    common::list_with_label_and_field_selectors(server.client(), "default", "other").await;
}

#[tokio::test]
async fn watch_sees_changes_in_order_with_selectors() {
    let server = stand_in().await;
    common::watch_sees_changes_in_order_with_selectors(server.client(), "default").await;
}

#[tokio::test]
async fn watch_from_an_expired_resource_version_gets_410() {
    let server = stand_in().await;
    Api::<ConfigMap>::namespaced(server.client(), "default")
        .create(&PostParams::default(), &cm("older", &[]))
        .await
        .unwrap();
    server.compact();
    common::watch_from_an_expired_resource_version_gets_410(server.client(), "default").await;
}

#[tokio::test]
async fn kube_runtime_watcher_lists_then_follows() {
    let server = stand_in().await;
    common::kube_runtime_watcher_lists_then_follows(server.client(), "default").await;
}

#[tokio::test]
async fn objects_over_the_size_limits_are_refused() {
    let server = stand_in().await;
    common::objects_over_the_size_limits_are_refused(server.client(), "default").await;
}

#[tokio::test]
async fn watches_that_allow_bookmarks_get_them_periodically() {
    let server = ApiServer::start(Options {
        bookmark_interval: Duration::from_millis(100),
        ..Options::default()
    })
    .await
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mut stream = api
        .watch(&WatchParams::default().timeout(10), "0")
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match first {
        WatchEvent::Bookmark(b) => assert!(!b.metadata.resource_version.is_empty()),
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn deleting_an_owner_deletes_its_dependents_at_once() {
    let server = stand_in().await;
    let (nets, shards) = network_with_an_owned_shard(server.client(), "default").await;
    nets.delete("internal", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(shard_names(&shards).await, vec!["dn.other.v4.0"]);
}

#[tokio::test]
async fn kubeconfig_points_at_the_server() {
    let server = stand_in().await;
    let kubeconfig: kube::config::Kubeconfig =
        serde_saphyr::from_str(&server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("via-kubeconfig", &[]))
        .await
        .unwrap();
}
