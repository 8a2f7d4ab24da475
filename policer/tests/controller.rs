//! The policer's controller on the real API server: pods, DanmEps and DanmNetworkPolicies
//! in the API, the pod's network namespace from the bed of `common`; each policy change
//! reaches the pod's table, and a restart converges (stale tables removed, new policies
//! applied), all under live traffic: an established connection echoes throughout. As root.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Bed, POD_V4, Running, Seen};
use danm_crds::{DanmEp, DanmEpIface, DanmEpSpec, DanmNetworkPolicy};
use danm_testkit::control_plane::ControlPlane;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

/// A TCP connection from a client namespace to the pod, echoing every 25 ms on a thread
/// until stopped; every echo that fails is recorded.
struct Live {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl Live {
    fn open(from: &danm_testkit::netns::Netns, to: &str) -> Live {
        use std::io::{Read, Write};
        let target: std::net::SocketAddr = (to.parse::<std::net::IpAddr>().unwrap(), 80).into();
        let mut stream = from.within(move || {
            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap()
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut echoes, mut failures) = (0, Vec::new());
            // Echoes until stopped, and once more after: the last echo follows the last
            // change.
            loop {
                let stop_now = stopped.load(std::sync::atomic::Ordering::Acquire);
                let mut buf = [0u8; 4];
                match stream
                    .write_all(b"live")
                    .and_then(|()| stream.read_exact(&mut buf))
                {
                    Ok(()) if &buf == b"live" => echoes += 1,
                    Ok(()) => failures.push(format!("echo {buf:?}")),
                    Err(e) => {
                        failures.push(e.to_string());
                        break;
                    }
                }
                if stop_now {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            (echoes, failures)
        });
        Live { stop, thread }
    }

    /// The echoes that came back and the failures.
    fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.thread.join().unwrap()
    }
}

/// Waits until `probe` holds (the probes block: they run on the blocking pool).
async fn eventually(what: &str, probe: impl Fn() -> bool + Send + Sync + 'static) {
    let probe = Arc::new(probe);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = Arc::clone(&probe);
        if tokio::task::spawn_blocking(move || p()).await.unwrap() {
            return;
        }
        assert!(Instant::now() < deadline, "not within 20 s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn endpoint(
    name: &str,
    pod: &str,
    host: &str,
    netns: &str,
    ifname: &str,
    network: &str,
    address: &str,
) -> DanmEp {
    DanmEp::new(
        name,
        DanmEpSpec {
            network_name: network.into(),
            network_type: "macvlan".into(),
            endpoint_id: name.into(),
            interface: DanmEpIface {
                name: ifname.into(),
                address: address.into(),
                ..Default::default()
            },
            host: host.into(),
            pod: pod.into(),
            netns: netns.into(),
            api_type: "DanmNet".into(),
            ..Default::default()
        },
    )
}

fn policy(name: &str, from_apps: &[&str]) -> DanmNetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "danm.io/v1", "kind": "DanmNetworkPolicy",
        "metadata": {"name": name},
        "spec": {
            "podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                {"key": "app", "operator": "In", "values": from_apps}]}}]}]
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_reach_the_pods_table_and_a_restart_converges() {
    let bed = Arc::new(Bed::new());
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let ns = plane.namespace("policer").await;
    let node = format!("policer-node-{}", std::process::id());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for (name, app, host) in [
        ("server", "server", node.as_str()),
        ("client-a", "client", "elsewhere"),
        ("client-b", "other", "elsewhere"),
        ("evil", "evil", node.as_str()),
    ] {
        pods.create(
            &PostParams::default(),
            &danm_testkit::pods::pod(name, host, &[("app", app)]),
        )
        .await
        .unwrap();
    }
    let eps: Api<DanmEp> = Api::namespaced(client.clone(), &ns);
    let netns = bed.pod.path();
    for ep in [
        endpoint(
            "server-1",
            "server",
            &node,
            &netns,
            "net1",
            "signal",
            "10.99.1.2/24",
        ),
        endpoint(
            "server-2",
            "server",
            &node,
            &netns,
            "net2",
            "media",
            "10.99.2.2/24",
        ),
        endpoint(
            "client-a-0",
            "client-a",
            "elsewhere",
            "",
            "eth0",
            "signal",
            "10.99.1.1/24",
        ),
        endpoint(
            "client-b-0",
            "client-b",
            "elsewhere",
            "",
            "eth0",
            "media",
            "10.99.2.1/24",
        ),
        // A record naming a file outside the namespaces' folder: never entered.
        endpoint(
            "evil-0",
            "evil",
            &node,
            "/var/run/netns/../../../etc/passwd",
            "eth0",
            "media",
            "10.99.3.1/24",
        ),
    ] {
        eps.create(&PostParams::default(), &ep).await.unwrap();
    }
    let policies: Api<DanmNetworkPolicy> = Api::namespaced(client.clone(), &ns);

    // The policer acts as its ServiceAccount when the tests are run so (test.sh's second run).
    let policer = danm_testkit::identity::client_for(plane, "policer", &[]).await;
    let controller = Running::start(policer.clone(), &node);
    controller.synced().await;
    assert!(!bed.has_table(), "no policy, no table");
    // (The first list may be served from the API server's watch cache a moment behind the
    // last writes: what it missed comes as events, so the checks wait.)
    let deadline = Instant::now() + Duration::from_secs(20);
    while !controller
        .metrics
        .encode()
        .contains("danm_policer_applies_total{result=\"refused-netns\"}")
    {
        assert!(Instant::now() < deadline, "{}", controller.metrics.encode());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = events.list(&Default::default()).await.unwrap();
        let found = listed.items.iter().any(|e| {
            e.reason.as_deref() == Some("PolicyNotApplied")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("evil")
                && e.note.as_deref().is_some_and(|n| n.contains("not entered"))
        });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Warning Event on the pod whose netns was refused"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(bed.tcp(1, POD_V4[1], 80), Seen::Answered);

    // Only app=client may come in, on every interface of the server.
    policies
        .create(&PostParams::default(), &policy("from-clients", &["client"]))
        .await
        .unwrap();
    let b = Arc::clone(&bed);
    eventually("client-b refused on net2", move || {
        b.tcp(1, POD_V4[1], 80) == Seen::Refused
    })
    .await;
    assert_eq!(
        bed.tcp(0, POD_V4[0], 80),
        Seen::Answered,
        "client-a allowed on net1"
    );
    // Live traffic from here to the end: one connection client-a opened while allowed,
    // echoing every 25 ms through every later change, restart and removal.
    let live = Live::open(&bed.clients[0], POD_V4[0]);

    // Changed: app=other too.
    policies
        .patch(
            "from-clients",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::to_value(policy("from-clients", &["client", "other"])).unwrap(),
            ),
        )
        .await
        .unwrap();
    let b = Arc::clone(&bed);
    eventually("client-b allowed after the change", move || {
        b.tcp(1, POD_V4[1], 80) == Seen::Answered
    })
    .await;

    // A label change of a peer reaches the table too: client-a is no longer app=client.
    pods.patch(
        "client-a",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"app": "gone"}}})),
    )
    .await
    .unwrap();
    let b = Arc::clone(&bed);
    eventually("client-a refused once relabelled", move || {
        b.tcp(0, POD_V4[0], 80) == Seen::Refused
    })
    .await;

    // The controller stops; the policy goes; a deny-all policy comes for... nothing else:
    // the restarted controller removes the stale table.
    controller.stop().await;
    policies
        .delete("from-clients", &DeleteParams::default())
        .await
        .unwrap();
    assert!(bed.has_table(), "nothing removed it while stopped");
    let controller = Running::start(policer.clone(), &node);
    controller.synced().await;
    let b = Arc::clone(&bed);
    eventually("the stale table removed after the restart", move || {
        !b.has_table()
    })
    .await;
    assert_eq!(bed.tcp(0, POD_V4[0], 81), Seen::Answered);

    // And a policy created while it is stopped is applied when it starts.
    controller.stop().await;
    policies
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "danm.io/v1", "kind": "DanmNetworkPolicy",
                "metadata": {"name": "deny-all"},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let controller = Running::start(policer, &node);
    controller.synced().await;
    let b = Arc::clone(&bed);
    eventually("deny-all applied after the restart", move || {
        b.tcp(0, POD_V4[0], 80) == Seen::Refused
    })
    .await;
    // deny-all selects the pod whose namespace is refused: the policy gets a Warning Event
    // naming it (the pod has its own).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = events.list(&Default::default()).await.unwrap();
        let on_policy = listed.items.iter().find(|e| {
            e.reason.as_deref() == Some("PolicyNotApplied")
                && e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("DanmNetworkPolicy")
                        && r.name.as_deref() == Some("deny-all")
                })
        });
        if let Some(event) = on_policy {
            let note = event.note.as_deref().unwrap_or_default();
            assert!(
                note.contains("1 pod(s)") && note.contains("evil") && note.contains("not entered"),
                "{note}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Warning Event on the policy that selects the failing pod"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (echoes, failures) = live.stop();
    assert!(echoes >= 2, "only {echoes} echoes on the live connection");
    assert!(
        failures.is_empty(),
        "the established connection broke during the changes: {failures:?}"
    );
    controller.stop().await;
}

/// A policy naming networks that do not exist selects no interface on them: the policer of
/// a node where the policy selects a pod says so with a Warning Event on the policy, naming
/// each field (as its ServiceAccount, which may watch the three network kinds), and names
/// the new ones when they change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_naming_networks_that_do_not_exist_gets_an_event_naming_the_fields() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let ns = plane.namespace("policer-nets").await;
    let node = format!("policer-nets-{}", std::process::id());
    let sandbox = danm_testkit::netns::Netns::new("pnet");
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &danm_testkit::pods::pod("server", &node, &[("app", "server")]),
        )
        .await
        .unwrap();
    Api::<DanmEp>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &endpoint(
                "server-1",
                "server",
                &node,
                &sandbox.path(),
                "net1",
                "signal",
                "10.99.1.2/24",
            ),
        )
        .await
        .unwrap();
    let policy: DanmNetworkPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "danm.io/v1", "kind": "DanmNetworkPolicy",
        "metadata": {"name": "ghosts"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "server"}},
            "networkSelector": [{"name": "signal"}, {"name": "nosuch"}],
            "ingress": [{"from": [{"networkSelector": [{"name": "ghost", "type": "ClusterNetwork"}]}]}]
        }
    }))
    .unwrap();
    Api::<DanmNetworkPolicy>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let policer = danm_testkit::identity::client_for(plane, "policer", &[]).await;
    let controller = Running::start(policer, &node);
    controller.synced().await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(20);
    let note = loop {
        let listed = events.list(&Default::default()).await.unwrap();
        let found = listed.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("NetworkNotFound")
                && e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("DanmNetworkPolicy")
                        && r.name.as_deref() == Some("ghosts")
                })
        });
        if let Some(event) = found {
            break event.note.unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "no NetworkNotFound Event on the policy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for expected in [
        "selects pods of this node",
        &format!("spec.networkSelector[0]: DanmNet {ns}/signal"),
        &format!("spec.networkSelector[1]: DanmNet {ns}/nosuch"),
        "spec.ingress[0].from[0].networkSelector[0]: ClusterNetwork ghost",
    ] {
        assert!(note.contains(expected), "{expected:?} not in {note}");
    }
    // The cause changes within seconds: the new note is shown, not folded into the first
    // Event's series (which keeps its first note).
    Api::<DanmNetworkPolicy>::namespaced(client.clone(), &ns)
        .patch(
            "ghosts",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "spec": {"networkSelector": [{"name": "signal"}, {"name": "phantom"}]}
            })),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = events.list(&Default::default()).await.unwrap();
        let notes: Vec<String> = listed
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("NetworkNotFound"))
            .filter_map(|e| e.note)
            .collect();
        if notes
            .iter()
            .any(|n| n.contains(&format!("spec.networkSelector[1]: DanmNet {ns}/phantom")))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the changed cause was never shown; notes: {notes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    controller.stop().await;
}
