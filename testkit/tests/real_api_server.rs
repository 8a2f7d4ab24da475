//! The real API server of the test control plane: the behaviours our components rely on
//! (written as functions of a client in `common/`), and what only a real control plane has:
//! CRD schemas and printer columns, pagination, field selectors refused where a custom
//! resource does not support them, the initial-events bookmark, the garbage collector,
//! RBAC for users and ServiceAccounts, and the fault proxy in front of it all. Also: the
//! control plane leaves no process behind, however its test binary ends.

mod common;

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use danm_crds::{
    AllocationShard, AllocationShardSpec, DanmEp, DanmEpIface, DanmEpSpec, DanmNet, DanmNetSpec,
};
use danm_testkit::control_plane::ControlPlane;
use danm_testkit::fault_proxy::FaultProxy;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};

#[tokio::test]
async fn crud_already_exists_not_found_and_stale_conflict() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("crud").await;
    common::crud_already_exists_not_found_and_stale_conflict(plane.client().await, &ns).await;
}

#[tokio::test]
async fn list_with_label_and_field_selectors() {
    let plane = ControlPlane::shared().await;
    let (ns, other) = (plane.namespace("list").await, plane.namespace("list").await);
    common::list_with_label_and_field_selectors(plane.client().await, &ns, &other).await;
}

#[tokio::test]
async fn watch_sees_changes_in_order_with_selectors() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("watch").await;
    common::watch_sees_changes_in_order_with_selectors(plane.client().await, &ns).await;
}

#[tokio::test]
async fn watch_from_an_expired_resource_version_gets_410() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("expired").await;
    common::watch_from_an_expired_resource_version_gets_410(plane.client().await, &ns).await;
}

#[tokio::test]
async fn kube_runtime_watcher_lists_then_follows() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("watcher").await;
    common::kube_runtime_watcher_lists_then_follows(plane.client().await, &ns).await;
}

#[tokio::test]
async fn objects_over_the_size_limits_are_refused() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("size").await;
    common::objects_over_the_size_limits_are_refused(plane.client().await, &ns).await;
}

/// The real server sends bookmarks periodically (about once a minute: too slow for a test)
/// and, to a watch that asks for its initial events, one bookmark right after them, marked
/// `k8s.io/initial-events-end`.
#[tokio::test]
async fn a_watch_of_initial_events_ends_them_with_a_bookmark() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("bookmark").await;
    let api: Api<DanmNet> = Api::namespaced(plane.client().await, &ns);
    api.create(
        &PostParams::default(),
        &DanmNet::new("one", DanmNetSpec::default()),
    )
    .await
    .unwrap();
    let mut stream = api
        .watch(&WatchParams::default().initial_events().timeout(10), "")
        .await
        .unwrap()
        .boxed();
    let mut added = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the watch goes on")
        {
            WatchEvent::Added(n) => added.push(n.name_any()),
            WatchEvent::Bookmark(b) => {
                assert_eq!(
                    b.metadata.annotations.get("k8s.io/initial-events-end"),
                    Some(&"true".to_string())
                );
                assert!(!b.metadata.resource_version.is_empty());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, vec!["one"]);
}

/// A watch with a label selector gets DELETED when an object stops matching it (the
/// stand-in does not do this; nothing of ours relies on it).
#[tokio::test]
async fn a_label_selector_watch_sees_an_object_leave_as_deleted() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("relabel").await;
    let api: Api<ConfigMap> = Api::namespaced(plane.client().await, &ns);
    let mut stream = watch_from_now(&api, "app=web").await;
    api.create(&PostParams::default(), &cm("w", &[("app", "web")]))
        .await
        .unwrap();
    api.patch(
        "w",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await
    .unwrap();
    let seen = changes(&mut stream, 2).await;
    assert_eq!(seen, vec!["added w", "deleted w"]);
}

/// Lists come in pages of `limit` with a continue token (the stand-in sends one page).
#[tokio::test]
async fn lists_are_paginated() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("pages").await;
    let api: Api<DanmNet> = Api::namespaced(plane.client().await, &ns);
    for i in 0..25 {
        api.create(
            &PostParams::default(),
            &DanmNet::new(&format!("n{i:02}"), DanmNetSpec::default()),
        )
        .await
        .unwrap();
    }
    let mut names = Vec::new();
    let mut pages = 0;
    let mut params = ListParams::default().limit(10);
    loop {
        let page = api.list(&params).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 10);
        names.extend(page.items.iter().map(|n| n.name_any()));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!((pages, names.len()), (3, 25));
}

/// A custom resource supports the field selectors `metadata.name` and
/// `metadata.namespace` only: a selector on a spec field is refused with 400, so no code
/// of ours may rely on one.
#[tokio::test]
async fn custom_resources_refuse_field_selectors_on_spec_fields() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("fields").await;
    let api: Api<DanmEp> = Api::namespaced(plane.client().await, &ns);
    let ep = DanmEp::new(
        "ep",
        DanmEpSpec {
            cid: "c1".into(),
            ..Default::default()
        },
    );
    api.create(&PostParams::default(), &ep).await.unwrap();
    let found = api
        .list(&ListParams::default().fields("metadata.name=ep"))
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
    let e = api
        .list(&ListParams::default().fields("spec.CID=c1"))
        .await
        .unwrap_err();
    let (code, _) = api_code(e);
    assert_eq!(code, 400);
}

/// The real garbage collector removes an AllocationShard once its owner network is
/// deleted (asynchronously; the stand-in does it at once) and leaves unowned ones.
#[tokio::test]
async fn the_garbage_collector_deletes_the_dependents_of_a_deleted_owner() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("gc").await;
    let (nets, shards) = network_with_an_owned_shard(plane.client().await, &ns).await;
    nets.delete("internal", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = shard_names(&shards).await;
        if left == vec!["dn.other.v4.0"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still there after 60 s: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The CRDs our types generate are accepted (the control plane applies them at start), and
/// `kubectl get` shows their printer columns.
#[tokio::test]
async fn kubectl_shows_our_printer_columns() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("columns").await;
    let client = plane.client().await;
    Api::<DanmNet>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_saphyr::from_str::<DanmNet>(
                "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {name: internal}\nspec: {NetworkID: internal-id, NetworkType: macvlan, Options: {host_device: ens4, vxlan: 600, cidr: 10.240.1.0/24}}\n",
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let ep = DanmEp::new(
        "pod-a-eth0",
        DanmEpSpec {
            pod: "pod-a".into(),
            network_name: "internal".into(),
            host: "node-1".into(),
            interface: DanmEpIface {
                name: "int1".into(),
                address: "10.240.1.7/24".into(),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    Api::<DanmEp>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ep)
        .await
        .unwrap();
    let shard = AllocationShard::new(
        "dn.internal.v4.0",
        AllocationShardSpec {
            network: danm_crds::ShardNetworkRef {
                kind: "DanmNet".into(),
                namespace: ns.clone(),
                name: "internal".into(),
                uid: String::new(),
            },
            family: "IPv4".into(),
            first: "10.240.1.0".into(),
            size: 256,
            allocated: 1,
            ..Default::default()
        },
    );
    Api::<AllocationShard>::namespaced(client, &ns)
        .create(&PostParams::default(), &shard)
        .await
        .unwrap();
    let out = plane
        .kubectl()
        .args(["get", "danmnets,danmeps,allocationshards", "-A"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    // The header of a kind's table, or the row of our object (after its namespace).
    let line_with = |needle: &str| {
        let line = text
            .lines()
            .find(|l| l.contains(needle) && (l.starts_with("NAMESPACE") || l.starts_with(&ns)))
            .unwrap_or_else(|| panic!("no line with {needle}:\n{text}"));
        line.split_whitespace().skip(1).collect::<Vec<_>>()
    };
    assert_eq!(
        line_with("NETWORKID"),
        [
            "NAME",
            "NETWORKID",
            "TYPE",
            "CIDR",
            "DEVICE",
            "VLAN",
            "VXLAN",
            "READY",
            "USED",
            "CAPACITY",
            "AGE"
        ]
    );
    assert_eq!(
        line_with("danmnet.danm.io/internal")[..6],
        [
            "danmnet.danm.io/internal",
            "internal-id",
            "macvlan",
            "10.240.1.0/24",
            "ens4",
            "600"
        ]
    );
    assert_eq!(
        line_with("INTERFACE"),
        [
            "NAME",
            "POD",
            "INTERFACE",
            "ADDRESS",
            "IPV6",
            "NETWORK",
            "HOST",
            "AGE"
        ]
    );
    assert_eq!(
        line_with("danmep.danm.io/pod-a-eth0")[..6],
        [
            "danmep.danm.io/pod-a-eth0",
            "pod-a",
            "int1",
            "10.240.1.7/24",
            "internal",
            "node-1"
        ]
    );
    assert_eq!(
        line_with("FAMILY"),
        ["NAME", "NETWORK", "FAMILY", "FIRST", "SIZE", "ALLOCATED"]
    );
    assert_eq!(
        line_with("allocationshard.danm.io/dn.internal.v4.0"),
        [
            "allocationshard.danm.io/dn.internal.v4.0",
            "internal",
            "IPv4",
            "10.240.1.0",
            "256",
            "1"
        ]
    );
}

/// A client whose user has no role is refused; a Role and RoleBinding let it do exactly
/// what they grant. The same for a ServiceAccount's token, also through the fault proxy
/// (which then passes the caller's identity on).
#[tokio::test]
async fn rbac_applies_to_users_and_service_accounts() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("rbac").await;
    let admin = plane.client().await;
    let role = Role {
        metadata: ObjectMeta {
            name: Some("configmap-reader".into()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("robot".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let alice = plane.user_client("alice", &["tenants"]).await;
    let robot = plane.service_account_client(&ns, "robot").await;
    let forbidden = |e: kube::Error| assert_eq!(api_code(e), (403, "Forbidden".into()));
    for client in [&alice, &robot] {
        forbidden(
            Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .list(&ListParams::default())
                .await
                .unwrap_err(),
        );
    }
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("readers".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "configmap-reader".into(),
        },
        subjects: Some(vec![
            Subject {
                kind: "User".into(),
                name: "alice".into(),
                api_group: Some("rbac.authorization.k8s.io".into()),
                ..Default::default()
            },
            Subject {
                kind: "ServiceAccount".into(),
                name: "robot".into(),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
        ]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    for client in [&alice, &robot] {
        // The authorizer sees a new binding through its informer: a moment later.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .list(&ListParams::default())
                .await
            {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "the binding is not in force yet");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the binding never took effect: {e}"),
            }
        }
        forbidden(
            Api::<Secret>::namespaced(client.clone(), &ns)
                .list(&ListParams::default())
                .await
                .unwrap_err(),
        );
        forbidden(
            Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &cm("nope", &[]))
                .await
                .unwrap_err(),
        );
    }

    // Through the proxy: with the robot's token the API server sees the robot; without a
    // token, the proxy's own administrator.
    let proxy = FaultProxy::start(plane).await.unwrap();
    let robot_config = danm_testkit::control_plane::config_from_file(
        &plane.service_account_kubeconfig(&ns, "robot").await,
    )
    .await
    .unwrap();
    let mut via_proxy = proxy.config();
    via_proxy.auth_info = robot_config.auth_info;
    let robot_via_proxy = kube::Client::try_from(via_proxy).unwrap();
    Api::<ConfigMap>::namespaced(robot_via_proxy.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    forbidden(
        Api::<Secret>::namespaced(robot_via_proxy, &ns)
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    Api::<Secret>::namespaced(proxy.client(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
}

/// The fault proxy injects each fault on demand: 500s, conflicts, timeouts whose write
/// landed or not (both happen), write latency and dropped watches; and counts.
#[tokio::test]
async fn the_fault_proxy_injects_every_fault() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("faults").await;
    let proxy = FaultProxy::start(plane).await.unwrap();
    let faults = proxy.faults();
    faults.timeout_delay_ms.store(10, Ordering::Relaxed);
    faults.write_latency_ms.store(30, Ordering::Relaxed);
    let api: Api<ConfigMap> = Api::namespaced(proxy.client(), &ns);
    let started = Instant::now();
    api.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(30),
        "writes wait for the configured latency"
    );
    faults.write_latency_ms.store(0, Ordering::Relaxed);

    faults
        .internal_error_ppm
        .store(1_000_000, Ordering::Relaxed);
    assert_eq!(
        api_code(api.get("a").await.unwrap_err()),
        (500, "InternalError".into())
    );
    faults.internal_error_ppm.store(0, Ordering::Relaxed);

    faults.conflict_ppm.store(1_000_000, Ordering::Relaxed);
    let current = api.get("a").await.unwrap();
    assert_eq!(
        api_code(
            api.replace("a", &PostParams::default(), &current)
                .await
                .unwrap_err()
        ),
        (409, "Conflict".into())
    );
    faults.conflict_ppm.store(0, Ordering::Relaxed);
    assert_eq!(proxy.conflicts(), 1);

    // Timeouts: with kube's retry layer a 504 is retried; a raw client sees the 504.
    let mut raw = proxy.config();
    raw.default_retry = false;
    let raw: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(raw).unwrap(), &ns);
    faults.timeout_ppm.store(1_000_000, Ordering::Relaxed);
    for i in 0..20 {
        let e = raw
            .create(&PostParams::default(), &cm(&format!("t{i}"), &[]))
            .await
            .unwrap_err();
        assert_eq!(api_code(e).0, 504);
    }
    faults.timeout_ppm.store(0, Ordering::Relaxed);
    let mut landed = 0;
    for i in 0..20 {
        if raw.get(&format!("t{i}")).await.is_ok() {
            landed += 1;
        }
    }
    assert!(
        landed > 0 && landed < 20,
        "{landed} of 20 timed-out writes landed"
    );

    // A dropped watch ends within a second, long before its own timeout.
    faults.drop_watch_ppm.store(1_000_000, Ordering::Relaxed);
    let started = Instant::now();
    let mut stream = api
        .watch(&WatchParams::default().timeout(60), "0")
        .await
        .unwrap()
        .boxed();
    while let Ok(Some(_)) = stream.try_next().await {}
    assert!(started.elapsed() < Duration::from_secs(5));
    faults.drop_watch_ppm.store(0, Ordering::Relaxed);
    assert!(faults.injected.load(Ordering::Relaxed) >= 23);
    // Forwarded writes: the first create and the timed-out creates that landed.
    let (requests, writes, largest) = proxy.counters();
    assert!(requests >= 45, "{requests} requests");
    assert_eq!(writes, 1 + landed);
    assert!(largest > 0);
}

/// The control plane's processes and folder are gone after its process ends: by SIGKILL,
/// and by a panic (the watchdog sees its stdin close and cleans up).
#[tokio::test]
async fn no_process_is_left_behind_after_a_kill_or_a_panic() {
    for panic in [false, true] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_control-plane"));
        if panic {
            command.arg("--panic");
        }
        let mut child = command
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let kubeconfig = std::io::BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("kubeconfig: "))
            .expect("the control plane prints its kubeconfig");
        let dir = std::path::PathBuf::from(kubeconfig.trim_start_matches("kubeconfig: "))
            .parent()
            .unwrap()
            .to_owned();
        assert!(dir.exists());
        assert!(!processes_mentioning(&dir.to_string_lossy()).is_empty());
        if !panic {
            child.kill().unwrap();
        }
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = processes_mentioning(&dir.to_string_lossy());
            if left.is_empty() && !dir.exists() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after {}: {left:?} still running, folder there: {}",
                if panic { "a panic" } else { "SIGKILL" },
                dir.exists()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The command lines of running processes that contain `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    found
}

/// `BTreeMap` of a JSON object's leaves, by JSON pointer.
fn leaves(
    value: &serde_json::Value,
    prefix: String,
    out: &mut BTreeMap<String, serde_json::Value>,
) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                leaves(v, format!("{prefix}/{k}"), out);
            }
        }
        other => {
            out.insert(prefix, other.clone());
        }
    }
}

/// Every manifest of the fixtures (modelled on DANM's examples) applies unchanged with
/// kubectl, and every danm.io object comes back from the server with every field it was
/// written with: the CRD schemas prune nothing we rely on.
#[tokio::test]
async fn danms_example_manifests_apply_unchanged_and_lose_no_field() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let fixtures = danm_testkit::fixtures::all();
    // Namespaces first, as a user applies them.
    for (name, text) in fixtures
        .iter()
        .filter(|(_, t)| t.contains("kind: Namespace"))
    {
        plane
            .kubectl_apply(text)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let mut compared = 0;
    for (name, text) in &fixtures {
        plane
            .kubectl_apply(text)
            .unwrap_or_else(|e| panic!("kubectl apply {name}: {e}"));
        let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(text).unwrap();
        for sent in documents {
            if sent["apiVersion"] != "danm.io/v1" {
                continue;
            }
            let kind = sent["kind"].as_str().unwrap();
            let plural = format!("{}s", kind.to_lowercase());
            let namespace = sent["metadata"]["namespace"].as_str();
            let name_ = sent["metadata"]["name"].as_str().unwrap();
            let path = match namespace {
                Some(ns) => format!("/apis/danm.io/v1/namespaces/{ns}/{plural}/{name_}"),
                None => format!("/apis/danm.io/v1/{plural}/{name_}"),
            };
            let back: serde_json::Value = client
                .request(http::Request::get(path).body(Vec::new()).unwrap())
                .await
                .unwrap();
            let (mut want, mut got) = (BTreeMap::new(), BTreeMap::new());
            for (field, value) in sent.as_object().unwrap() {
                if field != "metadata" {
                    leaves(value, format!("/{field}"), &mut want);
                }
            }
            leaves(&back, String::new(), &mut got);
            for (pointer, value) in &want {
                assert_eq!(
                    got.get(pointer),
                    Some(value),
                    "{name}: {kind} {name_} lost or changed {pointer}"
                );
            }
            compared += 1;
        }
    }
    println!("{compared} danm.io objects compared");
    // 9 of the 4.0 examples, 4 of the svcwatcher demo, 1 routed and 3 SR-IOV networks.
    assert_eq!(compared, 17, "danm.io objects compared");
}
