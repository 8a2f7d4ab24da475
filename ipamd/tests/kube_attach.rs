//! Attach on the Kubernetes store follows DANM on the pods of DANM's 4_0 examples: the pod
//! and its danm.io/interfaces annotation are read from the API, the default network is the
//! namespace's, then the `default` ClusterNetwork, whose AllowedTenants is enforced; a refused
//! pod gets nothing allocated.

use std::path::Path;
use std::sync::Arc;

use danm_crds::DanmEp;
use danm_ipamd::engine::{AttachInput, Engine, EngineError, OwnerInfo};
use danm_ipamd::store::Store;
use danm_ipamd::store::kube::KubeStore;
use danm_ipamd::worker::WorkerConfig;
use danm_testkit::apiserver::{ApiServer, Options};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use serde::Deserialize;

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference/danm/example/4_0_examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Creates the pod a Deployment manifest would create (its template's metadata).
async fn pod_from_deployment(
    client: &kube::Client,
    manifest: &str,
    name: &str,
) -> (String, String) {
    let doc = serde_yaml::Deserializer::from_str(manifest).next().unwrap();
    let value = serde_yaml::Value::deserialize(doc).unwrap();
    let namespace = value["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let template: ObjectMeta =
        serde_yaml::from_value(value["spec"]["template"]["metadata"].clone()).unwrap();
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.clone()),
            ..template
        },
        ..Default::default()
    };
    Api::<Pod>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    (namespace, name.to_owned())
}

fn input(namespace: &str, pod: &str, cid: &str) -> AttachInput {
    AttachInput {
        pod: OwnerInfo {
            container_id: cid.into(),
            pod_namespace: namespace.into(),
            pod_name: pod.into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn eps(client: &kube::Client) -> Vec<DanmEp> {
    Api::<DanmEp>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_follows_danm_on_its_4_0_examples() {
    let server = ApiServer::start(Options::default()).await.unwrap();
    let client = server.client();
    let store: Arc<dyn Store> = Arc::new(KubeStore::new(client.clone(), "danm-system").await);
    for file in ["7_default_cnet.yaml", "6_static_tnet.yaml"] {
        for net in danm_ipamd::networks::parse_manifests(&example(file)).unwrap() {
            store.put_network(net).await.unwrap();
        }
    }
    // A DanmNet with a subnet, for a pod that asks for an address by annotation.
    for net in danm_ipamd::networks::parse_manifests(
        "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {name: internal, namespace: default}\nspec: {NetworkID: internal, NetworkType: macvlan, Options: {cidr: 10.240.1.0/24, container_prefix: int}}\n",
    )
    .unwrap()
    {
        store.put_network(net).await.unwrap();
    }
    let engine = Engine::start(Arc::clone(&store), WorkerConfig::default())
        .await
        .unwrap();

    // 11_allowed_default: namespace default, no annotation: the default ClusterNetwork
    // (flannel, no subnet: the delegate keeps its own IPAM, nothing allocated by us).
    let (ns, pod) =
        pod_from_deployment(&client, &example("11_allowed_default.yaml"), "allowed-0").await;
    let planned = engine
        .attach(&input(&ns, &pod, "cid-allowed"))
        .await
        .unwrap();
    assert_eq!(planned.len(), 1);
    assert_eq!(planned[0].ifname, "eth0");
    assert_eq!(planned[0].network.key.to_string(), "ClusterNetwork default");
    assert_eq!(planned[0].network.network_type(), "flannel");
    assert_eq!(planned[0].addresses.ip, "");
    let recorded = eps(&client).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        (
            recorded[0].spec.pod.as_str(),
            recorded[0].spec.api_type.as_str()
        ),
        ("allowed-0", "ClusterNetwork")
    );

    // 12_not_allowed_default: kube-system is not in the default network's AllowedTenants.
    let (ns, pod) = pod_from_deployment(
        &client,
        &example("12_not_allowed_default.yaml"),
        "refused-0",
    )
    .await;
    let e = engine
        .attach(&input(&ns, &pod, "cid-refused"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, EngineError::Attach { source, .. } if matches!(**source, EngineError::TenantNotAllowed { .. })),
        "{e}"
    );
    assert!(
        e.to_string().contains(
            "namespace kube-system is not in the AllowedTenants of ClusterNetwork default"
        ),
        "{e}"
    );
    assert_eq!(
        danm_ipamd::service::status(&e).code(),
        tonic::Code::FailedPrecondition
    );

    // 9_wrong_deployment: one entry naming two networks.
    let (ns, pod) =
        pod_from_deployment(&client, &example("9_wrong_deployment.yaml"), "wrong-0").await;
    let e = engine
        .attach(&input(&ns, &pod, "cid-wrong"))
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::Interfaces(_)), "{e}");
    assert!(
        e.to_string().contains("connection no. 0 names 2 networks"),
        "{e}"
    );
    assert_eq!(
        danm_ipamd::service::status(&e).code(),
        tonic::Code::InvalidArgument
    );

    // Nothing allocated or recorded for the refused pods.
    assert_eq!(eps(&client).await.len(), 1);

    // A pod whose annotation asks for an address: read from the API, allocated, recorded.
    let mut annotated = Pod::default();
    annotated.metadata.name = Some("web-0".into());
    annotated.metadata.annotations = Some(
        [(
            danm_crds::INTERFACES_ANNOTATION.to_string(),
            r#"[{"tenantNetwork":"management","ip":"dynamic"},{"network":"internal","ip":"10.240.1.7/24"}]"#.to_string(),
        )]
        .into(),
    );
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &annotated)
        .await
        .unwrap();
    let planned = engine
        .attach(&input("default", "web-0", "cid-web"))
        .await
        .unwrap();
    let names: Vec<(&str, &str)> = planned
        .iter()
        .map(|p| (p.ifname.as_str(), p.addresses.ip.as_str()))
        .collect();
    assert_eq!(names, vec![("eth0", ""), ("int1", "10.240.1.7/24")]);
    let recorded = eps(&client).await;
    assert!(
        recorded
            .iter()
            .any(|e| e.spec.interface.address == "10.240.1.7/24" && e.spec.pod == "web-0")
    );

    // A pod the API does not know.
    let e = engine
        .attach(&input("default", "ghost", "cid-ghost"))
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::PodNotFound(_)), "{e}");
}
