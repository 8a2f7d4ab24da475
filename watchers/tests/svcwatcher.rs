//! svcwatcher on the real API server with DANM's svcwatcher demo (the testkit's copies of
//! its namespaces, networks and Services; its Deployments as pods with their DanmEps): the
//! Services get exactly the right interfaces' addresses and ports, follow scale up, scale
//! down, a relabel, a pod turning not ready and a Service deleted, leave a Service without
//! DANM's annotations alone, and a second replica takes over when the leader is killed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use danm_crds::{DanmEp, DanmEpIface, DanmEpSpec};
use danm_testkit::control_plane::ControlPlane;
use danm_testkit::identity;
use danm_testkit::process::{KillOnDrop, free_addr};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};

const NS: &str = "example-vnf";

struct Replica {
    identity: String,
    _child: KillOnDrop,
    admin: String,
}

/// A svcwatcher process; `kubeconfig` is what it acts as (`danm_testkit::identity`).
fn replica(kubeconfig: &Path, identity: &str, lease_ns: &str) -> Replica {
    let admin = free_addr();
    let child = Command::new(env!("CARGO_BIN_EXE_svcwatcher"))
        .args([
            "--namespace",
            lease_ns,
            "--identity",
            identity,
            "--admin-listen",
            &admin,
        ])
        .env("KUBECONFIG", kubeconfig)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Replica {
        identity: identity.into(),
        _child: KillOnDrop(child),
        admin,
    }
}

/// A pod of one of the demo's Deployments, Ready, with a DanmEp per interface.
async fn pod(
    client: &kube::Client,
    name: &str,
    labels: &[(&str, &str)],
    interfaces: &[(&str, &str)],
) {
    let pods = Api::<Pod>::namespaced(client.clone(), NS);
    let created = pods
        .create(
            &PostParams::default(),
            &danm_testkit::pods::pod(name, "node-1", labels),
        )
        .await
        .unwrap();
    set_ready(client, name, true).await;
    let eps = Api::<DanmEp>::namespaced(client.clone(), NS);
    for (i, (network, address)) in interfaces.iter().enumerate() {
        let ep = DanmEp {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{i}")),
                ..Default::default()
            },
            spec: DanmEpSpec {
                network_name: (*network).into(),
                network_type: "ipvlan".into(),
                endpoint_id: format!("{name}-{i}"),
                interface: DanmEpIface {
                    name: format!("eth{i}"),
                    address: (*address).into(),
                    ..Default::default()
                },
                host: "node-1".into(),
                pod: name.into(),
                pod_uid: created.metadata.uid.clone().unwrap(),
                cid: format!("cid-{name}"),
                api_type: "DanmNet".into(),
                ..Default::default()
            },
        };
        eps.create(&PostParams::default(), &ep).await.unwrap();
    }
}

async fn set_ready(client: &kube::Client, name: &str, ready: bool) {
    danm_testkit::pods::set_ready(&Api::namespaced(client.clone(), NS), name, ready)
        .await
        .unwrap();
}

/// The (address, port, ready) of every endpoint svcwatcher published for `service`.
async fn published(client: &kube::Client, service: &str) -> BTreeSet<(String, i32, bool)> {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(&format!(
            "kubernetes.io/service-name={service},endpointslice.kubernetes.io/managed-by=svcwatcher.danm.io"
        )))
        .await
        .unwrap()
        .items;
    let mut out = BTreeSet::new();
    for s in slices {
        let port = s
            .ports
            .as_ref()
            .and_then(|p| p.first())
            .and_then(|p| p.port)
            .unwrap_or(0);
        for e in s.endpoints {
            let ready = e.conditions.and_then(|c| c.ready).unwrap_or(false);
            out.insert((e.addresses[0].clone(), port, ready));
        }
    }
    out
}

fn set(items: &[(&str, i32, bool)]) -> BTreeSet<(String, i32, bool)> {
    items
        .iter()
        .map(|(a, p, r)| ((*a).to_owned(), *p, *r))
        .collect()
}

async fn until_published(
    client: &kube::Client,
    service: &str,
    want: BTreeSet<(String, i32, bool)>,
) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let got = published(client, service).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service}: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn delete_pod(client: &kube::Client, name: &str) {
    Api::<Pod>::namespaced(client.clone(), NS)
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

fn fixture(path: &str) -> String {
    danm_testkit::fixtures::read(&format!("svcwatcher_demo/{path}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_services_get_the_right_interfaces_and_follow_the_pods() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    for f in [
        "namespaces/example_vnf_ns.yaml",
        "namespaces/external_client_ns.yaml",
    ] {
        plane.kubectl_apply(&fixture(f)).unwrap();
    }
    plane.create_namespace(NS).await;
    for f in [
        "external_net.yaml",
        "vnf_external_net.yaml",
        "vnf_internal_net.yaml",
        "vnf_management_net.yaml",
    ] {
        plane
            .kubectl_apply(&fixture(&format!("danmnets/{f}")))
            .unwrap();
    }
    let lease_ns = plane.namespace("svcwatcher").await;
    // Its Lease Role (in danm-system when installed) is given in the Lease's namespace.
    let kubeconfig = identity::kubeconfig_for(plane, "svcwatcher", &[&lease_ns]).await;
    let mut replicas = vec![
        replica(&kubeconfig, "sw-a", &lease_ns),
        replica(&kubeconfig, "sw-b", &lease_ns),
    ];

    // The Deployments' pods: two load balancers, three internal processors.
    let lb = [("app", "loadbalancer"), ("vnf-type", "example-vnf")];
    for i in 0..2 {
        pod(
            &client,
            &format!("loadbalancer-{i}"),
            &lb,
            &[
                ("management", &format!("10.0.10.{}/24", 10 + i)),
                ("external", &format!("10.100.20.{}/24", 10 + i)),
                ("internal", &format!("10.240.1.{}/24", 110 + i)),
            ],
        )
        .await;
    }
    let processor = [("app", "internal-processor")];
    for i in 0..3 {
        pod(
            &client,
            &format!("internal-processor-{i}"),
            &processor,
            &[
                ("management", &format!("10.0.10.{}/24", 20 + i)),
                ("internal", &format!("10.240.1.{}/24", 120 + i)),
            ],
        )
        .await;
    }
    for f in [
        "internal_lb_svc.yaml",
        "internal_processor_svc.yaml",
        "vnf_external_svc.yaml",
    ] {
        plane
            .kubectl_apply(&fixture(&format!("services/{f}")))
            .unwrap();
    }
    // A Service without DANM's annotations, with Endpoints of its own: never touched.
    plane
        .kubectl_apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: plain, namespace: {NS}}}\nspec: {{clusterIP: None, ports: [{{port: 80}}]}}\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: plain, namespace: {NS}}}\nsubsets: [{{addresses: [{{ip: 192.0.2.1}}], ports: [{{port: 80}}]}}]\n"
        ))
        .unwrap();

    until_published(
        &client,
        "vnf-internal-lb",
        set(&[("10.240.1.110", 5555, true), ("10.240.1.111", 5555, true)]),
    )
    .await;
    until_published(
        &client,
        "vnf-external-svc",
        set(&[("10.100.20.10", 3868, true), ("10.100.20.11", 3868, true)]),
    )
    .await;
    let processors = |ids: &[(i32, bool)]| {
        ids.iter()
            .map(|(i, r)| (format!("10.240.1.{}", 120 + i), 5555, *r))
            .collect::<BTreeSet<_>>()
    };
    until_published(
        &client,
        "vnf-internal-processor",
        processors(&[(0, true), (1, true), (2, true)]),
    )
    .await;

    // Endpoints as DANM wrote them, kept out of Kubernetes' mirroring.
    let eps = Api::<Endpoints>::namespaced(client.clone(), NS)
        .get("vnf-internal-lb")
        .await
        .unwrap();
    let subset = &eps.subsets.as_ref().unwrap()[0];
    let ips: BTreeSet<String> = subset
        .addresses
        .iter()
        .flatten()
        .map(|a| a.ip.clone())
        .collect();
    assert_eq!(
        ips,
        BTreeSet::from(["10.240.1.110".to_owned(), "10.240.1.111".to_owned()])
    );
    assert_eq!(
        subset.addresses.as_ref().unwrap()[0].node_name.as_deref(),
        Some("node-1")
    );
    assert_eq!(subset.ports.as_ref().unwrap()[0].port, 5555);
    let all_slices = Api::<EndpointSlice>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let managers: BTreeSet<(String, String)> = all_slices
        .iter()
        .filter_map(|s| {
            let l = s.metadata.labels.as_ref()?;
            Some((
                l.get("kubernetes.io/service-name")?.clone(),
                l.get("endpointslice.kubernetes.io/managed-by")?.clone(),
            ))
        })
        .collect();
    for service in [
        "vnf-internal-lb",
        "vnf-internal-processor",
        "vnf-external-svc",
    ] {
        let by: Vec<_> = managers.iter().filter(|(s, _)| s == service).collect();
        assert_eq!(
            by,
            [&(service.to_owned(), "svcwatcher.danm.io".to_owned())],
            "only our slices for {service}, none mirrored from our Endpoints"
        );
    }
    let slice = all_slices
        .iter()
        .find(|s| {
            s.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("vnf-internal-lb-"))
        })
        .unwrap();
    assert_eq!(slice.address_type, "IPv4");
    let first = &slice.endpoints[0];
    assert_eq!(
        first.target_ref.as_ref().and_then(|r| r.kind.as_deref()),
        Some("Pod")
    );
    assert_eq!(
        slice.metadata.owner_references.as_ref().unwrap()[0].kind,
        "Service"
    );

    // Scale up, scale down, relabel, not ready.
    pod(
        &client,
        "internal-processor-3",
        &processor,
        &[
            ("management", "10.0.10.23/24"),
            ("internal", "10.240.1.123/24"),
        ],
    )
    .await;
    until_published(
        &client,
        "vnf-internal-processor",
        processors(&[(0, true), (1, true), (2, true), (3, true)]),
    )
    .await;
    delete_pod(&client, "internal-processor-0").await;
    until_published(
        &client,
        "vnf-internal-processor",
        processors(&[(1, true), (2, true), (3, true)]),
    )
    .await;
    Api::<Pod>::namespaced(client.clone(), NS)
        .patch(
            "internal-processor-1",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"app": "retired"}}})),
        )
        .await
        .unwrap();
    until_published(
        &client,
        "vnf-internal-processor",
        processors(&[(2, true), (3, true)]),
    )
    .await;
    set_ready(&client, "internal-processor-2", false).await;
    until_published(
        &client,
        "vnf-internal-processor",
        processors(&[(2, false), (3, true)]),
    )
    .await;
    let eps = Api::<Endpoints>::namespaced(client.clone(), NS)
        .get("vnf-internal-processor")
        .await
        .unwrap();
    let not_ready: Vec<String> = eps.subsets.unwrap()[0]
        .not_ready_addresses
        .iter()
        .flatten()
        .map(|a| a.ip.clone())
        .collect();
    assert_eq!(not_ready, ["10.240.1.122"]);

    // The plain Service's Endpoints are as written.
    let plain = Api::<Endpoints>::namespaced(client.clone(), NS)
        .get("plain")
        .await
        .unwrap();
    assert_eq!(
        plain.subsets.unwrap()[0].addresses.as_ref().unwrap()[0].ip,
        "192.0.2.1"
    );

    // The leader dies: the other replica takes over and follows the next change.
    let holder = Api::<Lease>::namespaced(client.clone(), &lease_ns)
        .get("danm-svcwatcher")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap();
    let (dead, alive): (Vec<Replica>, Vec<Replica>) =
        replicas.drain(..).partition(|r| r.identity == holder);
    let survivor = alive.into_iter().next().unwrap();
    drop(dead);
    delete_pod(&client, "internal-processor-3").await;
    until_published(&client, "vnf-internal-processor", processors(&[(2, false)])).await;
    let metrics = scrape(&survivor.admin).await;
    assert!(
        metrics.contains("danm_svcwatcher_slices_written_total"),
        "{metrics}"
    );

    // A Service that loses its annotations loses what svcwatcher wrote for it.
    Api::<Service>::namespaced(client.clone(), NS)
        .patch(
            "vnf-external-svc",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"danm.io/selector": null, "danm.io/network": null}}})),
        )
        .await
        .unwrap();
    until_published(&client, "vnf-external-svc", BTreeSet::new()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Api::<Endpoints>::namespaced(client.clone(), NS)
        .get_opt("vnf-external-svc")
        .await
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "its Endpoints stay");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A Service deleted: its slices and Endpoints go with it.
    Api::<Service>::namespaced(client.clone(), NS)
        .delete("vnf-internal-lb", &DeleteParams::default())
        .await
        .unwrap();
    until_published(&client, "vnf-internal-lb", BTreeSet::new()).await;
}

async fn scrape(admin: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
