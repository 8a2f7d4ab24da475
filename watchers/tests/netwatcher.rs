//! netwatcher for real: networks on the real API server, links in a network namespace of
//! the test (a veth end with an address stands for the node's `host_device`), read back
//! over netlink and checked against DANM's parameters; the node's NodeLinkReport says which
//! networks' links are in place and which fail, and why.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use danm_core::hostlinks::{LinkParams, ObservedLink, group_v4};
use danm_crds::NodeLinkReport;
use danm_crds::foreign::attachment::NetworkAttachmentDefinition;
use danm_netlink::Netlink;
use danm_netlink::host::Observed;
use danm_testkit::control_plane::ControlPlane;
use danm_testkit::netns::Netns;
use danm_watchers::netwatcher::{self, AttachmentNamespaces, Config, Metrics, NodeLinks};
use k8s_openapi::api::core::v1::{Event, Node as KubeNode};
use kube::api::{Api, ListParams, PostParams};

/// A network namespace with a veth pair: `ens-nw` (198.18.10.1/24, left down: netwatcher
/// brings a parent up) and its peer.
struct Node {
    netns: Netns,
}

impl Node {
    fn new(tag: &str) -> Node {
        let netns = Netns::new(&format!("nw{tag}"));
        netns.ip(&[
            "link", "add", "ens-nw", "type", "veth", "peer", "name", "ens-peer",
        ]);
        netns.ip(&["addr", "add", "198.18.10.1/24", "dev", "ens-nw"]);
        Node { netns }
    }

    fn path(&self) -> std::path::PathBuf {
        self.netns.path().into()
    }

    fn links(&self) -> NodeLinks {
        NodeLinks::new(Netlink::in_netns(&self.path()).unwrap().handle().clone())
    }

    fn delete_link(&self, link: &str) {
        self.netns.ip(&["link", "del", link]);
    }
}

/// Waits until the node's links satisfy `ok`; what they were.
async fn until(links: &NodeLinks, what: &str, ok: impl Fn(&Observed) -> bool) -> Observed {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let observed = links.observe().await.unwrap();
        if ok(&observed) {
            return observed;
        }
        assert!(Instant::now() < deadline, "{what}: {:#?}", observed.links);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn link<'a>(o: &'a Observed, name: &str) -> Option<&'a ObservedLink> {
    o.links.iter().find(|l| l.name == name)
}

fn danmnet(ns: &str, name: &str, id: &str, device: &str, vxlan: u32) -> String {
    format!(
        "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{NetworkID: {id}, NetworkType: ipvlan, Options: {{host_device: {device}, vxlan: {vxlan}}}}}\n"
    )
}

fn start(
    plane: &'static ControlPlane,
    node: &Node,
    metrics: Arc<Metrics>,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    start_with(plane, node, metrics, "test-node", AttachmentNamespaces::Off)
}

fn start_with(
    plane: &'static ControlPlane,
    node: &Node,
    metrics: Arc<Metrics>,
    node_name: &str,
    attachments: AttachmentNamespaces,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let links = node.links();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node_name = node_name.to_owned();
    let task = tokio::spawn(async move {
        let config = Config {
            resync: Duration::from_secs(1),
            node: node_name,
            attachments,
        };
        // netwatcher acts as its ServiceAccount when the run asks for it.
        let client = danm_testkit::identity::client_for(plane, "netwatcher", &[]).await;
        netwatcher::run(client, links, config, metrics, async {
            let _ = stopped.await;
        })
        .await;
    });
    (task, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_links_follow_the_networks_and_are_reconciled() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("netwatcher").await;
    let node = Node::new("vx");
    let links = node.links();
    // The Node object netwatcher's report is owned by.
    let kube_node = Api::<KubeNode>::all(plane.client().await)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "test-node"}}))
                .unwrap(),
        )
        .await
        .unwrap();
    let metrics = Arc::new(Metrics::new());
    let (task, stop) = start(plane, &node, Arc::clone(&metrics));

    // A VxLAN network: the link with DANM's parameters, up, on a parent brought up.
    plane
        .kubectl_apply(&danmnet(&ns, "a", "vxa", "ens-nw", 500))
        .unwrap();
    let o = until(&links, "vx_vxa created", |o| {
        link(o, "vx_vxa").is_some_and(|l| l.up)
    })
    .await;
    let vx = link(&o, "vx_vxa").unwrap();
    assert!(vx.ours);
    assert_eq!(
        vx.params,
        Some(LinkParams::Vxlan {
            parent: o.devices["ens-nw"].index,
            vni: 500,
            local: "198.18.10.1".parse().unwrap(),
            group: group_v4(500).into(),
            port: 4789,
        })
    );
    assert_eq!(group_v4(500).to_string(), "239.0.1.244");
    assert!(o.devices["ens-nw"].up, "the parent is brought up");
    // Ready (`/readyz`) once a sync has succeeded.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(why) = metrics.readiness() {
        assert!(Instant::now() < deadline, "not ready: {why}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A second network with the same NetworkID and VNI shares the link; it goes with the last.
    plane
        .kubectl_apply(&danmnet(&ns, "b", "vxa", "ens-nw", 500))
        .unwrap();
    plane
        .kubectl()
        .args(["delete", "danmnet", "a", "-n", &ns])
        .output()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let o = links.observe().await.unwrap();
    assert!(link(&o, "vx_vxa").is_some(), "b still uses it");
    plane
        .kubectl()
        .args(["delete", "danmnet", "b", "-n", &ns])
        .output()
        .unwrap();
    until(&links, "vx_vxa removed with the last network", |o| {
        link(o, "vx_vxa").is_none()
    })
    .await;

    // A link deleted by hand comes back; a link re-made with another VNI is re-created.
    plane
        .kubectl_apply(&danmnet(&ns, "c", "vxc", "ens-nw", 600))
        .unwrap();
    until(&links, "vx_vxc created", |o| link(o, "vx_vxc").is_some()).await;
    node.delete_link("vx_vxc");
    until(&links, "vx_vxc back", |o| {
        link(o, "vx_vxc").is_some_and(|l| l.up)
    })
    .await;
    // Replaced by hand with VNI 601 under netwatcher's mark (retried if a resync put the
    // right one back between the delete and the add).
    let replaced = (0..10).any(|_| {
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(["-n", &node.netns.name])
                .args(args)
                .status()
                .unwrap()
                .success()
        };
        ip(&["link", "del", "vx_vxc"]);
        ip(&[
            "link", "add", "vx_vxc", "type", "vxlan", "id", "601", "dstport", "4789", "dev",
            "ens-nw",
        ]) && ip(&["link", "set", "vx_vxc", "alias", "danm-netwatcher"])
    });
    assert!(replaced);
    until(&links, "vx_vxc re-created with VNI 600", |o| {
        matches!(
            link(o, "vx_vxc").and_then(|l| l.params.clone()),
            Some(LinkParams::Vxlan { vni: 600, .. })
        )
    })
    .await;

    // A host device that does not exist: an Event on the network, a metric, nothing fatal.
    plane
        .kubectl_apply(&danmnet(&ns, "d", "vxd", "nope0", 700))
        .unwrap();
    let events = Api::<Event>::namespaced(plane.client().await, &ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = events
            .list(&ListParams::default().fields("involvedObject.name=d"))
            .await
            .unwrap();
        if let Some(e) = listed
            .items
            .iter()
            .find(|e| e.reason.as_deref() == Some("HostDeviceMissing"))
        {
            assert!(
                e.message.as_deref().unwrap_or_default().contains("nope0"),
                "{e:?}"
            );
            assert_eq!(e.type_.as_deref(), Some("Warning"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no HostDeviceMissing Event: {:?}",
            listed.items
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let text = metrics.encode();
    assert!(
        text.contains("danm_netwatcher_link_failures_total{reason=\"HostDeviceMissing\"}"),
        "{text}"
    );
    assert!(
        text.contains("danm_netwatcher_links_created_total"),
        "{text}"
    );
    let o = links.observe().await.unwrap();
    assert!(link(&o, "vx_vxc").is_some(), "the other links are kept");

    // The node's report: c's link in place, d's failing with the reason; owned by the Node.
    let reports = Api::<NodeLinkReport>::all(plane.client().await);
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let report = reports.get_opt("test-node").await.unwrap();
        if let Some(r) = &report
            && r.spec
                .failing
                .iter()
                .any(|f| f.network == format!("DanmNet {ns}/d"))
        {
            break report.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no report of d's failure: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        report.spec.ready.contains(&format!("DanmNet {ns}/c")),
        "{:?}",
        report.spec
    );
    let failure = report
        .spec
        .failing
        .iter()
        .find(|f| f.network == format!("DanmNet {ns}/d"))
        .unwrap();
    assert!(
        failure.reason.starts_with("HostDeviceMissing: ") && failure.reason.contains("nope0"),
        "{failure:?}"
    );
    assert_eq!(
        report.spec.failing_count as usize,
        report.spec.failing.len()
    );
    let owners = report.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(
        owners
            .iter()
            .map(|o| (o.kind.as_str(), o.uid.as_str()))
            .collect::<Vec<_>>(),
        [("Node", kube_node.metadata.uid.as_deref().unwrap())]
    );

    // Stopped; its network deleted meanwhile; started again: the link goes at start.
    let _ = stop.send(());
    task.await.unwrap();
    plane
        .kubectl()
        .args(["delete", "danmnet", "c", "-n", &ns])
        .output()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(link(&links.observe().await.unwrap(), "vx_vxc").is_some());
    let (task, stop) = start(plane, &node, Arc::new(Metrics::new()));
    until(&links, "vx_vxc removed at start", |o| {
        link(o, "vx_vxc").is_none()
    })
    .await;
    // A link that is not netwatcher's is never removed.
    assert!(link(&links.observe().await.unwrap(), "ens-peer").is_some());
    let _ = stop.send(());
    task.await.unwrap();
}

fn nad(ns: &str, name: &str, config: serde_json::Value) -> String {
    serde_json::json!({
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"config": config.to_string()},
    })
    .to_string()
}

/// Waits until a Warning Event of `reason` is on the object `name` of `ns`; its message.
async fn event_on(plane: &ControlPlane, ns: &str, name: &str, reason: &str) -> String {
    let events = Api::<Event>::namespaced(plane.client().await, ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = events
            .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
            .await
            .unwrap();
        if let Some(e) = listed
            .items
            .iter()
            .find(|e| e.reason.as_deref() == Some(reason))
        {
            return e.message.clone().unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} Event on {ns}/{name}: {:?}",
            listed.items
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Multus' NetworkAttachmentDefinitions (the NPWG CRD applied to the real API server) in a
/// namespace the operator listed get DANM's links, and their `master` is rewritten to the
/// link with the device kept in an annotation; those of other namespaces are left alone;
/// a hostile configuration gets no link and an Event naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachment_definitions_of_listed_namespaces_get_their_links() {
    let plane = ControlPlane::shared().await;
    let crd = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testkit/fixtures/npwg/network-attachment-definition.yaml");
    plane
        .kubectl_apply(&std::fs::read_to_string(crd).unwrap())
        .unwrap();
    plane
        .kubectl()
        .args([
            "wait",
            "--for=condition=established",
            "crd/network-attachment-definitions.k8s.cni.cncf.io",
        ])
        .output()
        .unwrap();
    if danm_testkit::identity::as_service_accounts() {
        // The attachments component's RBAC, as an operator who turns it on applies it.
        let rbac = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/components/attachments/rbac.yaml");
        plane
            .kubectl_apply(&std::fs::read_to_string(rbac).unwrap())
            .unwrap();
    }
    let listed = plane.namespace("nad-listed").await;
    let other = plane.namespace("nad-other").await;
    let node = Node::new("nad");
    let links = node.links();
    Api::<KubeNode>::all(plane.client().await)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "nad-node"}})).unwrap(),
        )
        .await
        .unwrap();
    let metrics = Arc::new(Metrics::new());
    let (task, stop) = start_with(
        plane,
        &node,
        Arc::clone(&metrics),
        "nad-node",
        AttachmentNamespaces::Listed(vec![listed.clone()]),
    );

    let config = serde_json::json!({
        "cniVersion": "0.4.0", "name": "nadsig", "type": "macvlan",
        "master": "ens-nw", "vxlan": 900, "mode": "bridge",
    });
    plane
        .kubectl_apply(&nad(&listed, "sig", config.clone()))
        .unwrap();
    plane
        .kubectl_apply(&nad(
            &other,
            "sig",
            serde_json::json!({"name": "nadoth", "type": "macvlan", "master": "ens-nw", "vxlan": 901}),
        ))
        .unwrap();
    let o = until(&links, "vx_nadsig created", |o| {
        link(o, "vx_nadsig").is_some_and(|l| l.up)
    })
    .await;
    assert!(matches!(
        link(&o, "vx_nadsig").unwrap().params,
        Some(LinkParams::Vxlan { vni: 900, .. })
    ));
    // master now names the link; the device is in the annotation; the rest is kept.
    let api = |ns: &str| {
        let ns = ns.to_owned();
        async move { Api::<NetworkAttachmentDefinition>::namespaced(plane.client().await, &ns) }
    };
    let nads = api(&listed).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let rewritten = loop {
        let got = nads.get("sig").await.unwrap();
        let config: serde_json::Value =
            serde_json::from_str(got.spec.config.as_deref().unwrap()).unwrap();
        if config["master"] == "vx_nadsig" {
            break (got, config);
        }
        assert!(Instant::now() < deadline, "master not rewritten: {config}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let annotations = rewritten.0.metadata.annotations.unwrap_or_default();
    assert_eq!(annotations["danm.io/original-master"], "ens-nw");
    assert_eq!(annotations["danm.io/rewritten-master"], "vx_nadsig");
    assert_eq!(rewritten.1["mode"], "bridge");
    assert_eq!(rewritten.1["vxlan"], 900);
    // The owner applies the original again: the link stays, master is rewritten again.
    plane.kubectl_apply(&nad(&listed, "sig", config)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = nads.get("sig").await.unwrap();
        if got
            .spec
            .config
            .as_deref()
            .unwrap()
            .contains("\"master\":\"vx_nadsig\"")
        {
            break;
        }
        assert!(Instant::now() < deadline, "not rewritten again: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(link(&links.observe().await.unwrap(), "vx_nadsig").is_some());
    assert!(
        metrics
            .encode()
            .contains("danm_netwatcher_attachments_rewritten_total")
    );

    // A hostile name: no link, an Event naming the field.
    plane
        .kubectl_apply(&nad(
            &listed,
            "hostile",
            serde_json::json!({"name": "../../x", "type": "macvlan", "master": "ens-nw", "vxlan": 902}),
        ))
        .unwrap();
    let said = event_on(plane, &listed, "hostile", "BadAttachmentConfig").await;
    assert!(said.contains("spec.config name"), "{said}");

    // The node's report names the attachment; the other namespace's got nothing.
    let reports = Api::<NodeLinkReport>::all(plane.client().await);
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = format!("NetworkAttachmentDefinition {listed}/sig");
    loop {
        let report = reports.get_opt("nad-node").await.unwrap();
        if report
            .as_ref()
            .is_some_and(|r| r.spec.ready.contains(&ready))
        {
            let failing = &report.unwrap().spec.failing;
            assert!(
                failing.iter().any(|f| f.network
                    == format!("NetworkAttachmentDefinition {listed}/hostile")
                    && f.reason.starts_with("BadAttachmentConfig: ")),
                "{failing:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no report naming {ready}: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let o = links.observe().await.unwrap();
    assert!(
        link(&o, "vx_nadoth").is_none(),
        "an unlisted namespace got a link"
    );
    assert!(link(&o, "vx_..").is_none());
    let untouched = api(&other).await.get("sig").await.unwrap();
    assert!(untouched.spec.config.unwrap().contains("ens-nw"));
    assert!(
        !untouched
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("danm.io/original-master")
    );

    // Deleted: its link goes.
    nads.delete("sig", &Default::default()).await.unwrap();
    until(&links, "vx_nadsig removed with its attachment", |o| {
        link(o, "vx_nadsig").is_none()
    })
    .await;
    let _ = stop.send(());
    task.await.unwrap();
}

/// VLAN links for real need the kernel's 8021q support, which this machine lacks; the
/// request is unit-tested in `src/netwatcher/links.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "this kernel has no VLAN (8021q) links; run where it has"]
async fn vlan_links_are_created_with_the_id_on_the_parent() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("netwatcher-vlan").await;
    let node = Node::new("vlan");
    let links = node.links();
    let (task, stop) = start(plane, &node, Arc::new(Metrics::new()));
    plane
        .kubectl_apply(&format!(
            "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: v, namespace: {ns}}}\nspec: {{NetworkID: vl, NetworkType: ipvlan, Options: {{host_device: ens-nw, vlan: 200}}}}\n"
        ))
        .unwrap();
    let o = until(&links, "vl.200 created", |o| link(o, "vl.200").is_some()).await;
    assert_eq!(
        link(&o, "vl.200").unwrap().params,
        Some(LinkParams::Vlan {
            parent: o.devices["ens-nw"].index,
            id: 200
        })
    );
    let _ = stop.send(());
    task.await.unwrap();
}
