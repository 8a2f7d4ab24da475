//! Attach on the Kubernetes store follows DANM on the pods of DANM's 4_0 examples: the pod
//! and its danm.io/interfaces annotation are read from the API, the default network is the
//! namespace's, then the `default` ClusterNetwork, whose AllowedTenants is enforced; a refused
//! pod gets nothing allocated. Runs on the real API server (the manifests are the testkit's
//! fixtures modelled on DANM's examples).
//!
//! ipamd (its engine, or its binary) acts as `danm_testkit::identity` says: the
//! administrator, or with `DANM_TESTS_AS_SERVICE_ACCOUNTS` the danm-ipamd ServiceAccount of
//! `deploy/base`. The networks are written, and the results read, as the administrator.

use std::sync::Arc;

use danm_crds::DanmEp;
use danm_ipamd::engine::{AttachInput, Engine, EngineError, OwnerInfo};
use danm_ipamd::store::Store;
use danm_ipamd::store::kube::KubeStore;
use danm_ipamd::worker::WorkerConfig;
use danm_testkit::control_plane::ControlPlane;
use danm_testkit::identity;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

fn example(name: &str) -> String {
    danm_testkit::fixtures::read(&format!("4_0_examples/{name}"))
}

/// Creates the pod a Deployment manifest would create (its template).
async fn pod_from_deployment(
    client: &kube::Client,
    manifest: &str,
    name: &str,
) -> (String, String) {
    let value: serde_json::Value = serde_saphyr::from_multiple(manifest)
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let namespace = value["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let template: ObjectMeta =
        serde_json::from_value(value["spec"]["template"]["metadata"].clone()).unwrap();
    let spec: PodSpec = serde_json::from_value(value["spec"]["template"]["spec"].clone()).unwrap();
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.clone()),
            ..template
        },
        spec: Some(spec),
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

/// The DanmEps of the namespaces the examples use (the other test of this file works in
/// a namespace of its own).
async fn eps(client: &kube::Client) -> Vec<DanmEp> {
    let mut all = Api::<DanmEp>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    all.retain(|e| {
        matches!(
            e.metadata.namespace.as_deref(),
            Some("default" | "kube-system")
        )
    });
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_follows_danm_on_its_4_0_examples() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let ipamd_namespace = plane.namespace("danm-system").await;
    // The networks are created as the administrator: ipamd's Role may not (a Deployment
    // does not use `--networks`).
    let admin_store = KubeStore::new(client.clone(), &ipamd_namespace).await;
    for file in ["7_default_cnet.yaml", "6_static_tnet.yaml"] {
        for net in danm_ipamd::networks::parse_manifests(&example(file)).unwrap() {
            admin_store.put_network(net).await.unwrap();
        }
    }
    // A DanmNet with a subnet, for a pod that asks for an address by annotation.
    for net in danm_ipamd::networks::parse_manifests(
        "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {name: internal, namespace: default}\nspec: {NetworkID: internal, NetworkType: macvlan, Options: {cidr: 10.240.1.0/24, container_prefix: int}}\n",
    )
    .unwrap()
    {
        admin_store.put_network(net).await.unwrap();
    }
    let ipamd_client = identity::client_for(plane, "ipamd", &[]).await;
    let store: Arc<dyn Store> = Arc::new(KubeStore::new(ipamd_client, &ipamd_namespace).await);
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
        danm_ipamd::wire::status(&e).code(),
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
        danm_ipamd::wire::status(&e).code(),
        tonic::Code::InvalidArgument
    );

    // Nothing allocated or recorded for the refused pods.
    assert_eq!(eps(&client).await.len(), 1);

    // A pod whose annotation asks for an address: read from the API, allocated, recorded.
    let mut annotated: Pod = serde_saphyr::from_str(
        "metadata: {name: web-0}\nspec: {containers: [{name: web, image: busybox:latest}]}",
    )
    .unwrap();
    annotated.metadata.annotations = Some(
        [(
            danm_crds::names::INTERFACES_ANNOTATION.to_string(),
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

/// Shards ipamd writes carry an owner reference to their network: deleting the network
/// (with kubectl, not through ipamd) lets the real garbage collector remove them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_network_lets_the_garbage_collector_remove_its_shards() {
    use danm_crds::AllocationShard;
    use danm_ipamd::engine::OwnerInfo;
    use std::time::{Duration, Instant};

    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let ns = plane.namespace("gc").await;
    let ipamd_namespace = plane.namespace("danm-system").await;
    let admin_store = KubeStore::new(client.clone(), &ipamd_namespace).await;
    let manifest = format!(
        "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: doomed, namespace: {ns}}}\nspec: {{NetworkID: doomed, NetworkType: macvlan, Options: {{cidr: 10.77.0.0/16, net6: 'fd00:77::/64'}}}}\n"
    );
    for net in danm_ipamd::networks::parse_manifests(&manifest).unwrap() {
        // As the administrator, as above.
        admin_store.put_network(net).await.unwrap();
    }
    let ipamd_client = identity::client_for(plane, "ipamd", &[]).await;
    let store: Arc<dyn Store> = Arc::new(KubeStore::new(ipamd_client, &ipamd_namespace).await);
    let engine = Engine::start(Arc::clone(&store), WorkerConfig::default())
        .await
        .unwrap();
    let key = danm_core::NetworkKey::new(danm_core::NetworkKind::DanmNet, &ns, "doomed");
    for i in 0..3 {
        let owner = OwnerInfo {
            container_id: format!("cid-{i}"),
            ifname: "eth0".into(),
            pod_namespace: ns.clone(),
            pod_name: format!("pod-{i}"),
            ..Default::default()
        };
        engine
            .allocate(&key, &owner, "dynamic", "dynamic")
            .await
            .unwrap();
    }
    let shards: Api<AllocationShard> = Api::namespaced(client.clone(), &ns);
    let written = shards.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(written.len(), 2, "one IPv4 and one IPv6 shard");
    for shard in &written {
        let owners = shard.metadata.owner_references.clone().unwrap_or_default();
        assert_eq!(
            owners
                .iter()
                .map(|o| (o.kind.as_str(), o.name.as_str()))
                .collect::<Vec<_>>(),
            vec![("DanmNet", "doomed")]
        );
    }
    let out = plane
        .kubectl()
        .args(["delete", "danmnet", "doomed", "-n", &ns])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !shards
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the shards outlived their network by 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The ipamd binary as deployed: `--store kube` with a kubeconfig, over TLS to the real API
/// server with a client certificate, serving an Allocate on a network it found there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ipamd_binary_serves_from_the_real_api_server_over_tls() {
    use danm_proto::v1 as pb;
    use danm_proto::v1::ipam_client::IpamClient;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("binary").await;
    let ipamd_namespace = plane.namespace("danm-system").await;
    plane
        .kubectl_apply(&format!(
            "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: tls, namespace: {ns}}}\nspec: {{NetworkID: tls, NetworkType: macvlan, Options: {{cidr: 10.78.0.0/24}}}}\n"
        ))
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let log = tempfile::NamedTempFile::new().unwrap();
    let kubeconfig = identity::kubeconfig_for(plane, "ipamd", &[]).await;
    let mut ipamd = Command::new(env!("CARGO_BIN_EXE_ipamd"))
        .args(["--store", "kube", "--namespace", &ipamd_namespace])
        .args(["--listen", &listen, "--orphan-grace-seconds", "0"])
        // The flag, not $KUBECONFIG: both are read.
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env("NO_COLOR", "1")
        .stderr(log.reopen().unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let network = Some(pb::NetworkRef {
        kind: pb::NetworkKind::DanmNet as i32,
        namespace: ns.clone(),
        name: "tls".into(),
    });
    let request = pb::AllocateRequest {
        network: network.clone(),
        owner: Some(pb::Owner {
            container_id: "cid-tls".into(),
            ifname: "eth0".into(),
            pod_namespace: ns.clone(),
            pod_name: "pod-tls".into(),
            ..Default::default()
        }),
        ip: "dynamic".into(),
        ip6: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        if let Ok(mut c) = IpamClient::connect(format!("http://{listen}")).await
            && let Ok(a) = c.allocate(request.clone()).await
        {
            break a.into_inner();
        }
        if Instant::now() > deadline {
            let _ = ipamd.kill();
            panic!(
                "ipamd did not serve within 30 s: {}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = ipamd.kill();
    let _ = ipamd.wait();
    assert!(answer.ip.starts_with("10.78.0."), "{answer:?}");
    let recorded = Api::<DanmEp>::namespaced(plane.client().await, &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].spec.interface.address, answer.ip);
}
