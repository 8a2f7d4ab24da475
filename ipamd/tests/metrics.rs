//! ipamd's pool metrics on its plaintext port name the administrators' networks, and
//! TenantNetworks only when asked (`--metrics-tenant-names`): by default their pools are
//! summed, so a scrape of a node's port tells nobody which tenants exist (issue 24).

use std::sync::Arc;

use danm_ipamd::engine::Engine;
use danm_ipamd::metrics::RpcMetrics;
use danm_ipamd::registry::registry;
use danm_ipamd::store::Store;
use danm_ipamd::store::memory::MemoryStore;
use danm_ipamd::worker::WorkerConfig;
use danm_runtime::metrics::encode;

const NETWORKS: &str = r#"
apiVersion: danm.io/v1
kind: ClusterNetwork
metadata: {name: platform}
spec: {NetworkID: platform, NetworkType: macvlan, Options: {cidr: 10.1.0.0/24}}
---
apiVersion: danm.io/v1
kind: TenantNetwork
metadata: {name: secret-project, namespace: tenant-a}
spec: {NetworkID: a, NetworkType: macvlan, Options: {cidr: 10.2.0.0/24}}
---
apiVersion: danm.io/v1
kind: TenantNetwork
metadata: {name: other, namespace: tenant-b}
spec: {NetworkID: b, NetworkType: macvlan, Options: {cidr: 10.3.0.0/25}}
"#;

#[tokio::test]
async fn tenant_networks_are_named_in_metrics_only_when_asked() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    for net in danm_ipamd::networks::parse_manifests(NETWORKS).unwrap() {
        store.put_network(net).await.unwrap();
    }
    let engine = Engine::start(store, WorkerConfig::default()).await.unwrap();
    let rpc = RpcMetrics::default();

    let anonymous = encode(&registry(&engine, &rpc, false));
    assert!(
        anonymous.contains(
            r#"danm_ipamd_pool_capacity{kind="ClusterNetwork",namespace="",network="platform",family="ipv4"} 254"#
        ),
        "{anonymous}"
    );
    // The two TenantNetworks' pools, summed: 254 + 126.
    assert!(
        anonymous.contains(
            r#"danm_ipamd_pool_capacity{kind="TenantNetwork",namespace="",network="",family="ipv4"} 380"#
        ),
        "{anonymous}"
    );
    for name in ["tenant-a", "secret-project", "tenant-b"] {
        assert!(!anonymous.contains(name), "{name} in:\n{anonymous}");
    }

    let named = encode(&registry(&engine, &rpc, true));
    assert!(
        named.contains(
            r#"danm_ipamd_pool_capacity{kind="TenantNetwork",namespace="tenant-a",network="secret-project",family="ipv4"} 254"#
        ),
        "{named}"
    );
}

/// Every series ipamd's registry renders is in `docs/metrics.md` (the certificate's expiry,
/// registered by the binary when it serves TLS, is named there too).
#[tokio::test]
async fn every_series_is_in_the_metrics_reference() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    for net in danm_ipamd::networks::parse_manifests(NETWORKS).unwrap() {
        store.put_network(net).await.unwrap();
    }
    let engine = Engine::start(store, WorkerConfig::default()).await.unwrap();
    let text = encode(&registry(&engine, &RpcMetrics::default(), true));
    assert!(text.contains("danm_ipamd_pool_capacity"), "{text}");
    danm_testkit::metrics_doc::assert_documented(&text);
}
