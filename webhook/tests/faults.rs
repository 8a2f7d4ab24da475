//! The webhook's TenantConfig writes under API faults, on the real API server: both webhook
//! processes talk to it through the fault proxy, which answers 500s, conflicts and timeouts
//! (half of them after the write landed) and cuts watches. Admissions that fail are retried
//! by the client, as kubectl users do. In the end: every TenantNetwork exists with its own
//! id, every id written for a create that failed is freed after the grace period, and
//! deleting the networks frees the rest.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{GRACE_SECONDS, delete_tenant_networks, eventually, reservations_of};
use danm_core::admit::vni::VNI_RESERVATION_ANNOTATION;
use danm_crds::{NetworkSpec, TenantNetwork, TenantNetworkSpec};
use danm_testkit::control_plane::ControlPlane;
use danm_testkit::fault_proxy::FaultProxy;
use kube::ResourceExt;
use kube::api::{Api, PostParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_stay_distinct_and_nothing_leaks_when_the_api_server_fails_the_webhooks() {
    let plane = ControlPlane::shared().await;
    let proxy = FaultProxy::start(plane).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    // Through the proxy as the webhook's identity: its token, if it is a ServiceAccount's,
    // is forwarded for the API server to judge.
    let identity = danm_testkit::identity::kubeconfig_for(plane, "webhook", &[]).await;
    std::fs::write(
        &kubeconfig,
        danm_testkit::identity::through_proxy(&identity, &proxy.url()),
    )
    .unwrap();
    let bed = common::setup_on(plane, &kubeconfig).await;
    let ns = plane.namespace("faults").await;
    let tns: Api<TenantNetwork> = Api::namespaced(plane.client().await, &ns);

    // 15% of the webhooks' requests to the API server, of each kind.
    proxy
        .faults()
        .timeout_delay_ms
        .store(200, Ordering::Relaxed);
    proxy.faults().set_all(150_000);
    let creates = (0..100).map(|i| {
        let tns = tns.clone();
        async move {
            let tn = TenantNetwork::new(
                &format!("tn-{i}"),
                TenantNetworkSpec {
                    network: NetworkSpec {
                        network_id: format!("f{i}"),
                        ..Default::default()
                    },
                },
            );
            let mut failures = 0;
            loop {
                match tns.create(&PostParams::default(), &tn).await {
                    Ok(_) => return failures,
                    Err(e) if failures < 50 => {
                        failures += 1;
                        tracing::debug!(error = %e, "retrying a create");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("tn-{i} failed {failures} times, last: {e}"),
                }
            }
        }
    });
    let failures: u32 = futures::future::join_all(creates).await.into_iter().sum();
    proxy.faults().set_all(0);
    let injected = proxy.faults().injected.load(Ordering::Relaxed);
    eprintln!("{injected} faults injected; {failures} creates failed and were retried");
    assert!(injected > 0, "the proxy injected no fault");

    let created = tns.list(&Default::default()).await.unwrap().items;
    assert_eq!(created.len(), 100);
    let ids: HashSet<i64> = created
        .iter()
        .map(|tn| tn.spec.network.options.vlan.expect("a VLAN"))
        .collect();
    assert_eq!(ids.len(), 100, "an id was handed out twice");
    let carried: HashSet<String> = created
        .iter()
        .map(|tn| tn.annotations()[VNI_RESERVATION_ANNOTATION].clone())
        .collect();
    // What failed creates reserved (writes that landed, answers lost) goes after the grace.
    eventually(
        GRACE_SECONDS * 10,
        "exactly the carried ids are held",
        || async {
            let held: HashSet<String> = reservations_of(plane, &ns)
                .await
                .into_iter()
                .map(|(_, _, token)| token)
                .collect();
            held == carried
        },
    )
    .await;

    delete_tenant_networks(plane, &ns).await;
    eventually(30, "every id freed", || async {
        reservations_of(plane, &ns).await.is_empty()
    })
    .await;
    drop(bed);
}
