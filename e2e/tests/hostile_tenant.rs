//! A hostile tenant (issue 23) on the one-machine cluster: bob may administer namespace
//! `attacker` (the built-in `admin` role, which `deploy/base/access/roles.yaml` extends to
//! TenantNetworks) and was even given DanmEps by a too-broad Role, nothing else. Through
//! kubectl, against the real API server with the webhook registered and the policies of
//! `deploy/base/access/policies.yaml` applied, he tries every attack of the issue:
//! NetworkTypes and NetworkIDs that are paths, an administrator's CNI configuration (a
//! delegated type's NetworkID comes from the TenantConfig), another tenant's VxLAN link, changes after
//! admission, a static address outside his pool, forged DanmEps, and taking a shared VNI
//! range. Each is refused with a message that names the field (and never alice's
//! namespace, `victim`), and afterwards nothing has changed on any node or in alice's
//! namespace: her network, her link (same index, same VNI on every node), her pods'
//! traffic. (`attacker` sorts before `victim`: a rule that gave a contested link to the
//! first network by name would hand bob alice's link.)
//!
//! Then the second line, as if admission had been bypassed (the webhook unregistered while
//! an administrator restores bob's network with alice's NetworkID and another VNI):
//! netwatcher keeps alice's link and reports the conflict on bob's network, and the CNI
//! refuses to attach bob's pod to a parent whose VNI is not his.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use danm_crds::{TenantConfig, TenantNetwork};
use danm_e2e::cluster::Cluster;
use danm_e2e::pods::wait_ready;
use danm_testkit::control_plane::ControlPlane;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use serde_json::Value;

const TENANT_CONFIG: &str = r#"
apiVersion: danm.io/v1
kind: TenantConfig
metadata: {name: tconf}
hostDevices:
- {name: eth1, vniType: vxlan, vniRange: 700-710, maxPerNamespace: 2}
networkIds: {bridge: tbridge}
"#;

const SETUP: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-admin, namespace: victim}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: admin}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bob-admin, namespace: attacker}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: admin}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}]
---
# The too-broad grant the policies must make harmless.
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: too-broad, namespace: attacker}
rules:
- apiGroups: ["danm.io"]
  resources: ["danmeps"]
  verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: too-broad, namespace: attacker}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: too-broad}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}]
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: networks, namespace: attacker}
spec:
  hard: {count/tenantnetworks.danm.io: "3"}
"#;

const ALICE: &str = r#"
apiVersion: danm.io/v1
kind: TenantNetwork
metadata: {name: backend, namespace: victim}
spec:
  NetworkID: shared
  NetworkType: macvlan
  Options:
    cidr: 198.18.30.0/24
    allocation_pool: {start: 198.18.30.10, end: 198.18.30.100}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app, namespace: victim}
spec:
  replicas: 2
  selector: {matchLabels: {app: alice}}
  template:
    metadata:
      labels: {app: alice}
      annotations:
        danm.io/interfaces: '[{"tenantNetwork":"backend","ip":"dynamic"}]'
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - topologyKey: kubernetes.io/hostname
            labelSelector: {matchLabels: {app: alice}}
      containers: [{name: c, image: registry.invalid/app:1}]
"#;

/// A TenantNetwork of bob's.
fn network(name: &str, network_id: &str, network_type: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: danm.io/v1
kind: TenantNetwork
metadata: {{name: {name}, namespace: attacker}}
spec:
  NetworkID: {network_id:?}
  NetworkType: {network_type:?}
  Options:
    cidr: 198.18.40.0/24
    allocation_pool: {{start: 198.18.40.10, end: 198.18.40.100}}
    {extra}
"#
    )
}

/// A pod of bob's on `network`, asking `ip`.
fn pod(name: &str, network: &str, ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: attacker
  labels: {{app: bob, pod: {name}}}
  annotations:
    danm.io/interfaces: '[{{"tenantNetwork":"{network}","ip":"{ip}"}}]'
spec:
  terminationGracePeriodSeconds: 1
  containers: [{{name: c, image: registry.invalid/app:1}}]
"#
    )
}

/// kubectl as the user of `kubeconfig`: its output, or its error output.
fn kubectl_as(
    plane: &ControlPlane,
    kubeconfig: &Path,
    args: &[&str],
    input: &str,
) -> Result<String, String> {
    use std::io::Write as _;
    let mut child = Command::new(plane.binary("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The attack is refused, with a message containing every one of `says`.
#[track_caller]
fn refused(what: &str, outcome: Result<String, String>, says: &[&str]) -> String {
    let message = match outcome {
        Ok(out) => panic!("{what}: admitted: {out}"),
        Err(e) => e,
    };
    for needle in says {
        assert!(
            message.contains(needle),
            "{what}: {needle:?} missing from the refusal: {message}"
        );
    }
    assert!(
        !message.contains("victim"),
        "{what}: the refusal names alice's namespace: {message}"
    );
    message
}

/// `ip -d -j link show <name>` on every node: (node, ifindex, vni), or None where missing.
fn links_named(cluster: &Cluster, name: &str) -> Vec<(String, Option<(u64, u64)>)> {
    cluster
        .nodes
        .iter()
        .map(|node| {
            let shown = node.machine.ip(&["-d", "-j", "link", "show"]);
            let links: Value = serde_json::from_str(&shown).unwrap_or(Value::Null);
            let found = links.as_array().into_iter().flatten().find_map(|l| {
                (l["ifname"] == name).then(|| {
                    (
                        l["ifindex"].as_u64().unwrap_or_default(),
                        l["linkinfo"]["info_data"]["id"]
                            .as_u64()
                            .unwrap_or_default(),
                    )
                })
            });
            (node.name.clone(), found)
        })
        .collect()
}

/// Every `vx_` link of every node.
fn vxlan_links(cluster: &Cluster) -> Vec<String> {
    let mut out = Vec::new();
    for node in &cluster.nodes {
        let links: Value =
            serde_json::from_str(&node.machine.ip(&["-j", "link", "show"])).unwrap_or_default();
        for l in links.as_array().into_iter().flatten() {
            if let Some(name) = l["ifname"].as_str().filter(|n| n.starts_with("vx_")) {
                out.push(format!("{}:{name}", node.name));
            }
        }
    }
    out.sort();
    out
}

/// Waits until `check` holds (or panics with `what` after `seconds`).
async fn eventually<F, Fut>(seconds: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "never within {seconds} s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The messages of the Warning Events about object `name` in `namespace` with `reason`.
async fn warnings(client: &kube::Client, namespace: &str, name: &str, reason: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(name) && e.reason.as_deref() == Some(reason)
        })
        .filter_map(|e| e.message)
        .collect()
}

/// Alice's two pods reach each other over her VxLAN.
fn alice_talks(cluster: &Cluster, pods: &[Pod]) -> bool {
    let netns_of = |pod: &Pod| {
        let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
        let node = cluster.nodes.iter().find(|n| n.name == node).unwrap();
        node.sandbox_netns(pod.metadata.uid.as_deref().unwrap())
            .unwrap()
    };
    let to: std::net::IpAddr = pods[1]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap()
        .parse()
        .unwrap();
    danm_e2e::tunnel::tcp_reaches(&netns_of(&pods[0]), &netns_of(&pods[1]), to, 8080)
}

fn access_manifest(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/base/access")
        .join(file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_is_refused_everything_and_changes_nothing() {
    danm_e2e::pods::init_logs();
    let mut cluster = Cluster::start(2).await;
    cluster.start_webhook().await;
    let plane = &cluster.plane;
    let admin = plane.client().await;
    for file in ["roles.yaml", "policies.yaml"] {
        let path = access_manifest(file);
        cluster.kubectl(&["apply", "-f", path.to_str().unwrap()], "");
    }
    cluster.kubectl(&["apply", "-f", "-"], TENANT_CONFIG);
    plane.create_namespace("victim").await;
    plane.create_namespace("attacker").await;
    cluster.kubectl(&["apply", "-f", "-"], SETUP);
    let alice = plane.user_kubeconfig("alice", &[]);
    let bob = plane.user_kubeconfig("bob", &[]);
    // The built-in admin role aggregates danm-tenant, and the quota is counted.
    eventually(30, "bob may create TenantNetworks", || async {
        kubectl_as(
            plane,
            &bob,
            &[
                "auth",
                "can-i",
                "create",
                "tenantnetworks.danm.io",
                "-n",
                "attacker",
            ],
            "",
        )
        .is_ok_and(|out| out.trim() == "yes")
    })
    .await;
    eventually(30, "the quota is counted", || async {
        cluster
            .plane
            .kubectl_with_input(
                &[
                    "get",
                    "resourcequota",
                    "networks",
                    "-n",
                    "attacker",
                    "-o",
                    "json",
                ],
                "",
            )
            .ok()
            .and_then(|o| serde_json::from_str::<Value>(&o).ok())
            .is_some_and(|q| {
                q["status"]["used"]
                    .get("count/tenantnetworks.danm.io")
                    .is_some()
            })
    })
    .await;

    // Alice, the victim: her network, its link on every node, her pods talking.
    kubectl_as(plane, &alice, &["apply", "-f", "-"], ALICE).expect("alice's network and app");
    let alice_pods = wait_ready(
        &cluster,
        &Api::namespaced(admin.clone(), "victim"),
        "app=alice",
        2,
        90,
    )
    .await;
    let tenant_a: Api<TenantNetwork> = Api::namespaced(admin.clone(), "victim");
    let backend = tenant_a.get("backend").await.unwrap();
    let vni = backend.spec.network.options.vxlan.unwrap() as u64;
    eventually(30, "vx_shared on every node", || async {
        links_named(&cluster, "vx_shared")
            .iter()
            .all(|(_, l)| l.is_some())
    })
    .await;
    let alice_link = links_named(&cluster, "vx_shared");
    assert!(
        alice_link.iter().all(|(_, l)| l.unwrap().1 == vni),
        "{alice_link:?}"
    );
    assert!(
        alice_talks(&cluster, &alice_pods),
        "alice's pods do not talk"
    );

    // 1. Names that are paths.
    let create = |yaml: String| kubectl_as(plane, &bob, &["create", "-f", "-"], &yaml);
    refused(
        "NetworkType as an absolute path",
        create(network("reboot", "reboot", "/sbin/reboot", "")),
        &["spec.NetworkType", "path separators"],
    );
    refused(
        "NetworkType climbing out of CNI_PATH",
        create(network("climb", "climb", "../../../usr/bin/x", "")),
        &["spec.NetworkType"],
    );
    refused(
        "NetworkID naming a file outside cniDir",
        create(network("conf", "../../etc/kubernetes/admin", "flannel", "")),
        &["spec.NetworkID"],
    );
    refused(
        "a delegated type the TenantConfig maps no NetworkID for (an administrator's \
         CNI configuration)",
        create(network("primary", "00-danm", "flannel", "")),
        &["spec.NetworkType", "networkIds"],
    );
    // 2. Alice's link name, with the VNI bob would get.
    refused(
        "alice's NetworkID",
        create(network("takeover", "shared", "macvlan", "")),
        &["spec.NetworkID", "vx_shared"],
    );
    // 3. Static addresses: bob's network cannot reach outside its pool.
    refused(
        "static addresses anywhere in the CIDR",
        create(network("wide", "wide", "macvlan", "static_scope: cidr")),
        &["spec.Options.static_scope"],
    );
    create(network("mine", "mine", "macvlan", "")).expect("bob's own network");
    // 4. Changes after admission.
    let patch = |body: &str| {
        kubectl_as(
            plane,
            &bob,
            &[
                "patch",
                "tenantnetwork",
                "mine",
                "-n",
                "attacker",
                "--type",
                "merge",
                "-p",
                body,
            ],
            "",
        )
    };
    refused(
        "NetworkID changed to alice's",
        patch(r#"{"spec":{"NetworkID":"shared"}}"#),
        &["spec.NetworkID"],
    );
    refused(
        "NetworkType changed to a path",
        patch(r#"{"spec":{"NetworkType":"/sbin/reboot"}}"#),
        &["spec.NetworkType"],
    );
    refused(
        "alice's VNI",
        patch(&format!(r#"{{"spec":{{"Options":{{"vxlan":{vni}}}}}}}"#)),
        &["spec.Options.vxlan"],
    );
    refused(
        "the reservation token",
        patch(r#"{"metadata":{"annotations":{"danm.io/vni-reservation":"stolen"}}}"#),
        &["danm.io/vni-reservation"],
    );
    refused(
        "a wider static scope",
        patch(r#"{"spec":{"Options":{"static_scope":"cidr"}}}"#),
        &["spec.Options.static_scope"],
    );

    // 5. A static address outside the pool (a router's): the pod never gets it.
    kubectl_as(
        plane,
        &bob,
        &["create", "-f", "-"],
        &pod("squatter", "mine", "198.18.40.1"),
    )
    .expect("the pod object is created");
    eventually(
        60,
        "the squatter's sandbox fails, naming the rule",
        || async {
            warnings(&admin, "attacker", "squatter", "FailedCreatePodSandBox")
                .await
                .iter()
                .any(|m| m.contains("outside the allocation pool") && m.contains("static_scope"))
        },
    )
    .await;

    // 6. Forged DanmEps, though a Role grants them: refused by the policy.
    kubectl_as(
        plane,
        &bob,
        &["create", "-f", "-"],
        &pod("worker", "mine", "dynamic"),
    )
    .expect("bob's own pod");
    let bob_pods = wait_ready(
        &cluster,
        &Api::namespaced(admin.clone(), "attacker"),
        "pod=worker",
        1,
        60,
    )
    .await;
    assert_eq!(bob_pods.len(), 1);
    let eps = kubectl_as(
        plane,
        &bob,
        &[
            "get",
            "danmeps",
            "-n",
            "attacker",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        "",
    )
    .expect("bob reads his DanmEps");
    let ep = eps
        .split_whitespace()
        .next()
        .expect("the worker's DanmEp")
        .to_owned();
    let alice_ip = alice_pods[0]
        .status
        .as_ref()
        .unwrap()
        .pod_ip
        .clone()
        .unwrap();
    refused(
        "a DanmEp redirected to alice's address",
        kubectl_as(
            plane,
            &bob,
            &[
                "patch",
                "danmep",
                &ep,
                "-n",
                "attacker",
                "--type",
                "merge",
                "-p",
                &format!(r#"{{"spec":{{"Interface":{{"Address":"{alice_ip}/24"}}}}}}"#),
            ],
            "",
        ),
        &["written by ipamd only"],
    );
    refused(
        "a DanmEp deleted to free the address",
        kubectl_as(
            plane,
            &bob,
            &["delete", "danmep", &ep, "-n", "attacker"],
            "",
        ),
        &["written by ipamd only"],
    );
    refused(
        "a forged DanmEp",
        kubectl_as(
            plane,
            &bob,
            &["create", "-f", "-"],
            r#"
apiVersion: danm.io/v1
kind: DanmEp
metadata: {name: forged, namespace: attacker}
spec: {NetworkName: mine, apiType: TenantNetwork, Pod: ghost, CID: x,
       Interface: {Name: eth0, Address: 198.18.40.50/24}}
"#,
        ),
        &["written by ipamd only"],
    );

    // svcwatcher still publishes bob's Service under the policy, and its own identity
    // cannot write an EndpointSlice it does not manage (say, to hijack a Service).
    kubectl_as(
        plane,
        &bob,
        &["create", "-f", "-"],
        r#"
apiVersion: v1
kind: Service
metadata:
  name: worker
  namespace: attacker
  annotations:
    danm.io/selector: '{"pod":"worker"}'
    danm.io/tenantNetwork: mine
spec:
  clusterIP: None
  ports: [{name: http, port: 8080, protocol: TCP}]
"#,
    )
    .expect("bob's Service");
    let worker_ip = bob_pods[0].status.as_ref().unwrap().pod_ip.clone().unwrap();
    eventually(30, "svcwatcher publishes bob's Service", || async {
        cluster
            .plane
            .kubectl_with_input(
                &[
                    "get",
                    "endpointslices",
                    "-n",
                    "attacker",
                    "-l",
                    "kubernetes.io/service-name=worker",
                    "-o",
                    "json",
                ],
                "",
            )
            .is_ok_and(|o| o.contains(&worker_ip) && o.contains("svcwatcher.danm.io"))
    })
    .await;
    let svcwatcher =
        danm_testkit::identity::service_account_kubeconfig(plane, "svcwatcher", &[]).await;
    refused(
        "svcwatcher writing a slice it does not manage",
        kubectl_as(
            plane,
            &svcwatcher,
            &["create", "-f", "-"],
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hijack
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes}
addressType: IPv4
endpoints: [{addresses: ["198.18.40.66"]}]
"#,
        ),
        &["svcwatcher writes only the endpointslices it manages"],
    );

    // 7. The shared range: two ids per namespace, then the quota on objects.
    create(network("mine2", "mine2", "macvlan", "")).expect("bob's second id");
    refused(
        "a third id of the profile",
        create(network("mine3", "mine3", "macvlan", "")),
        &["maxPerNamespace 2"],
    );
    create(network("deleg", "00-danm", "bridge", "")).expect("a network without an id");
    let deleg = Api::<TenantNetwork>::namespaced(admin.clone(), "attacker")
        .get("deleg")
        .await
        .unwrap();
    assert_eq!(
        deleg.spec.network.network_id, "tbridge",
        "the TenantConfig's NetworkID, not bob's"
    );
    refused(
        "a fourth TenantNetwork",
        create(network("deleg2", "deleg2", "bridge", "")),
        &["exceeded quota", "count/tenantnetworks.danm.io"],
    );

    // Nothing changed for alice, on any node.
    // ipamd's status writer may have written its status meanwhile (that is ipamd's, not
    // bob's): everything else of the object is compared.
    let after = tenant_a.get("backend").await.unwrap();
    assert_eq!(
        (
            &after.metadata.uid,
            &after.metadata.generation,
            &after.metadata.labels,
            &after.metadata.annotations,
            &after.metadata.owner_references,
            &after.metadata.finalizers,
            &after.spec
        ),
        (
            &backend.metadata.uid,
            &backend.metadata.generation,
            &backend.metadata.labels,
            &backend.metadata.annotations,
            &backend.metadata.owner_references,
            &backend.metadata.finalizers,
            &backend.spec
        ),
        "alice's network changed"
    );
    assert_eq!(
        links_named(&cluster, "vx_shared"),
        alice_link,
        "alice's link changed"
    );
    eventually(30, "bob's two links and alice's, nothing else", || async {
        let mut wanted: Vec<String> = Vec::new();
        for node in &cluster.nodes {
            for link in ["vx_mine", "vx_mine2", "vx_shared"] {
                wanted.push(format!("{}:{link}", node.name));
            }
        }
        wanted.sort();
        vxlan_links(&cluster) == wanted
    })
    .await;
    let config = Api::<TenantConfig>::all(admin.clone())
        .get("tconf")
        .await
        .unwrap();
    let held: Vec<String> = danm_core_reservations(&config);
    assert_eq!(held, ["attacker/mine", "attacker/mine2", "victim/backend"]);
    assert!(
        alice_talks(&cluster, &alice_pods),
        "alice's pods stopped talking"
    );

    // The second line: admission bypassed. An administrator restores a network of bob's
    // with alice's NetworkID and another VNI while the webhook is not registered.
    cluster.kubectl(
        &[
            "delete",
            "mutatingwebhookconfiguration,validatingwebhookconfiguration",
            "danm-webhook",
        ],
        "",
    );
    let intruder = r#"
apiVersion: danm.io/v1
kind: TenantNetwork
metadata: {name: intruder, namespace: attacker}
spec:
  NetworkID: shared
  NetworkType: macvlan
  Options:
    host_device: eth1
    vxlan: 705
    cidr: 198.18.41.0/24
"#;
    // The quota is full: make room first.
    kubectl_as(
        plane,
        &bob,
        &["delete", "tenantnetwork", "deleg", "-n", "attacker"],
        "",
    )
    .expect("bob deletes a network");
    eventually(30, "the restore is admitted", || async {
        cluster
            .plane
            .kubectl_with_input(&["create", "-f", "-"], intruder)
            .is_ok()
    })
    .await;
    cluster.register_webhook().await;
    // netwatcher keeps alice's link (a resync is 5 s) and reports the conflict.
    eventually(
        30,
        "netwatcher reports the conflict on bob's network",
        || async {
            warnings(&admin, "attacker", "intruder", "LinkConflict")
                .await
                .iter()
                .any(|m| m.contains("vx_shared") && !m.contains("victim"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        links_named(&cluster, "vx_shared"),
        alice_link,
        "alice's link was re-created or changed"
    );
    // Bob's pod on it: the CNI refuses the parent, nothing is attached or held.
    kubectl_as(
        plane,
        &bob,
        &["create", "-f", "-"],
        &pod("intruding", "intruder", "dynamic"),
    )
    .expect("the pod object is created");
    eventually(60, "the CNI refuses alice's link as a parent", || async {
        warnings(&admin, "attacker", "intruding", "FailedCreatePodSandBox")
            .await
            .iter()
            .any(|m| m.contains(&format!("VxLAN {vni} ")) && m.contains("VxLAN 705"))
    })
    .await;
    let held = cluster.allocations().await;
    assert!(
        !held.iter().any(|a| a.contains("198.18.41.")),
        "the refused pod holds an address: {held:?}"
    );
    assert!(
        alice_talks(&cluster, &alice_pods),
        "alice's pods stopped talking"
    );
    assert_eq!(links_named(&cluster, "vx_shared"), alice_link);
}

/// The TenantNetworks holding an id of `tconf`, sorted.
fn danm_core_reservations(config: &TenantConfig) -> Vec<String> {
    let mut held: Vec<String> = config
        .host_devices
        .iter()
        .flat_map(|p| p.reservations.values().map(|h| h.network.clone()))
        .collect();
    held.sort();
    held
}
