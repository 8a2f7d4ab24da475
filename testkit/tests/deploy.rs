//! `deploy/`: both overlays build with kustomize (the kubectl of the test control plane),
//! hold every object the suite needs, apply on the real API server (server-side, dry run
//! for the workloads), grant each identity only what it needs (asked of the real RBAC
//! authorizer), follow the structural rules (ServiceAccounts, non-root, requests, no
//! wildcards, Secrets only for danm-certs), and carry networks our webhook admits.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use danm_core::admit::{
    Environment, NetworkRequest, Operation, TenantConfigRequest, admit_network, admit_tenant_config,
};
use danm_core::hostlinks::LinkTable;
use danm_core::{NetworkKey, NetworkKind};
use danm_crds::TenantConfig;
use danm_testkit::control_plane::ControlPlane;
use serde_json::{Value, json};

const OVERLAYS: [&str; 2] = ["lightweight", "production"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The objects of `deploy/<dir>` as kustomize builds them.
fn build_dir(dir: &str) -> Vec<Value> {
    let text = danm_testkit::kustomize(&deploy_dir().join(dir));
    serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("the {dir} build is not YAML: {e}"))
}

/// What an install of `overlay` applies: `deploy/crds`, then the overlay.
fn build(overlay: &str) -> Vec<Value> {
    let mut objects = build_dir("crds");
    objects.extend(build_dir(&format!("overlays/{overlay}")));
    objects
}

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn names_of<'a>(objects: &'a [Value], k: &str) -> BTreeSet<&'a str> {
    objects.iter().filter(|o| kind(o) == k).map(name).collect()
}

fn find<'a>(objects: &'a [Value], k: &str, n: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == k && name(o) == n)
        .unwrap_or_else(|| panic!("no {k} {n}"))
}

fn set(items: &[&'static str]) -> BTreeSet<&'static str> {
    items.iter().copied().collect()
}

#[test]
fn both_overlays_build_with_every_object() {
    for overlay in OVERLAYS {
        let objects = build(overlay);
        let has = |k: &str, expected: &[&'static str]| {
            let found = names_of(&objects, k);
            for n in expected {
                assert!(found.contains(n), "{overlay}: no {k} {n} (found {found:?})");
            }
        };
        has(
            "CustomResourceDefinition",
            &[
                "danmnets.danm.io",
                "tenantnetworks.danm.io",
                "clusternetworks.danm.io",
                "tenantconfigs.danm.io",
                "danmeps.danm.io",
                "allocationshards.danm.io",
                "danmnetworkpolicies.danm.io",
            ],
        );
        has("Namespace", &["danm-system"]);
        let components = [
            "danm-ipamd",
            "danm-webhook",
            "danm-netwatcher",
            "danm-svcwatcher",
            "danm-cleaner",
            "danm-cni-installer",
            "danm-certs",
        ];
        has("ServiceAccount", &components);
        has("ClusterRole", &components[..5]);
        has("ClusterRoleBinding", &components[..5]);
        has("ClusterRole", &["danm-certs", "danm-policer"]);
        has("ServiceAccount", &["danm-policer"]);
        has("ClusterRoleBinding", &["danm-policer"]);
        has("Role", &["danm-certs", "danm-svcwatcher-lease"]);
        has("RoleBinding", &["danm-certs", "danm-svcwatcher-lease"]);
        has(
            "Deployment",
            &["danm-ipamd", "danm-webhook", "danm-svcwatcher"],
        );
        has("DaemonSet", &["danm-netwatcher", "danm-cni-installer"]);
        has("CronJob", &["danm-cleaner"]);
        has("Job", &["danm-certs"]);
        has("PodDisruptionBudget", &["danm-ipamd", "danm-webhook"]);
        has("Service", &["danm-ipamd", "danm-webhook"]);
        has("ConfigMap", &["danm-cni-config"]);
        has("MutatingWebhookConfiguration", &["danm-webhook"]);
        has("ValidatingWebhookConfiguration", &["danm-webhook"]);
        match overlay {
            "lightweight" => has("DanmNet", &["default", "internal", "overlay"]),
            _ => {
                has("TenantConfig", &["tenantconfig"]);
                has("ClusterNetwork", &["default", "external"]);
                has("TenantNetwork", &["internal", "backend", "flannel"]);
            }
        }

        // What the brief fixes: ipamd's shape, and the webhooks calling danm-system.
        let ipamd = find(&objects, "Deployment", "danm-ipamd");
        assert_eq!(ipamd["spec"]["replicas"], 3);
        // One replica at a time may be evicted (a drain works on clusters of any size).
        assert_eq!(
            find(&objects, "PodDisruptionBudget", "danm-ipamd")["spec"]["maxUnavailable"],
            1
        );
        let ports: BTreeSet<(String, i64)> =
            find(&objects, "Service", "danm-ipamd")["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap().to_owned(),
                        p["port"].as_i64().unwrap(),
                    )
                })
                .collect();
        assert_eq!(
            ports,
            [
                ("grpc".to_owned(), 50051),
                ("health".to_owned(), 50052),
                ("metrics".to_owned(), 9090)
            ]
            .into()
        );
        // Each port leads to the container port of its name (the installer reads
        // DANM_IPAMD_SERVICE_PORT_GRPC and _HEALTH).
        let ipamd = pod_spec(find(&objects, "Deployment", "danm-ipamd")).unwrap();
        let container_ports: BTreeSet<&str> = ipamd["containers"][0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for port in find(&objects, "Service", "danm-ipamd")["spec"]["ports"]
            .as_array()
            .unwrap()
        {
            let target = port["targetPort"].as_str().unwrap();
            assert!(container_ports.contains(target), "{target}");
        }
        let webhook_port = &find(&objects, "Service", "danm-webhook")["spec"]["ports"][0];
        assert_eq!(
            (&webhook_port["port"], &webhook_port["targetPort"]),
            (&json!(443), &json!("https"))
        );
        for k in [
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ] {
            for hook in find(&objects, k, "danm-webhook")["webhooks"]
                .as_array()
                .unwrap()
            {
                let service = &hook["clientConfig"]["service"];
                assert_eq!(service["namespace"], "danm-system", "{k}");
                assert_eq!(service["name"], "danm-webhook", "{k}");
            }
        }
        // Every image is one of ours, at the released tag (the base's `images:` block).
        for o in &objects {
            for c in containers(o) {
                let image = c["image"].as_str().unwrap_or_default();
                assert!(
                    image.starts_with("ghcr.io/danm-rs/") && image.ends_with(":0.1.0"),
                    "{overlay}: {} {}: image {image}",
                    kind(o),
                    name(o)
                );
            }
        }
    }
}

/// Uninstalling (`kubectl delete -k deploy/base`, then `deploy/uninstall`) deletes no
/// state: the CRDs and the namespace holding ClusterNetworks' shards are `deploy/crds`'
/// alone (every CRD file listed there), and neither the base nor an overlay has them. The
/// uninstaller runs the installer's image, as the installer does, on the same nodes and
/// host folders, with no token and no capability.
#[test]
fn the_state_is_kept_out_of_what_an_uninstall_deletes() {
    let crds = build_dir("crds");
    let kinds: BTreeSet<&str> = crds.iter().map(kind).collect();
    assert_eq!(kinds, set(&["CustomResourceDefinition", "Namespace"]));
    assert_eq!(names_of(&crds, "Namespace"), set(&["danm-system"]));
    assert_eq!(
        names_of(&crds, "CustomResourceDefinition").len(),
        danm_crds::all_crds().len(),
        "every CRD of danm-crds, in deploy/crds"
    );
    for dir in [
        "base",
        "overlays/lightweight",
        "overlays/production",
        "uninstall",
    ] {
        for o in build_dir(dir) {
            assert!(
                !matches!(kind(&o), "CustomResourceDefinition" | "Namespace"),
                "{dir} has {} {}: deleting it would delete state",
                kind(&o),
                name(&o)
            );
        }
    }

    let base = build_dir("base");
    let installer = find(&base, "DaemonSet", "danm-cni-installer");
    let uninstall = build_dir("uninstall");
    assert_eq!(uninstall.len(), 1, "only the uninstaller");
    let uninstaller = find(&uninstall, "DaemonSet", "danm-cni-uninstaller");
    assert_eq!(uninstaller["metadata"]["namespace"], "danm-system");
    let (spec, installer_spec) = (pod_spec(uninstaller).unwrap(), pod_spec(installer).unwrap());
    assert_eq!(spec["nodeSelector"], installer_spec["nodeSelector"]);
    assert_eq!(spec["automountServiceAccountToken"], false);
    let (container, installer_container) = (containers(uninstaller)[0], containers(installer)[0]);
    assert_eq!(container["image"], installer_container["image"]);
    assert_eq!(
        container["command"],
        json!(["/install-cni.sh", "uninstall"])
    );
    assert_eq!(container["env"], installer_container["env"]);
    for volume in ["cni-bin", "cni-conf"] {
        let path = |s: &Value| {
            s["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == volume)
                .map(|v| v["hostPath"]["path"].clone())
        };
        assert_eq!(path(spec), path(installer_spec), "{volume}");
    }
    let context = &container["securityContext"];
    assert_eq!(context["allowPrivilegeEscalation"], false);
    assert_eq!(context["readOnlyRootFilesystem"], true);
    assert_eq!(context["capabilities"]["drop"], json!(["ALL"]));
    assert!(context["capabilities"]["add"].is_null());
}

/// The pod template of a workload, if `o` is one.
fn pod_spec(o: &Value) -> Option<&Value> {
    match kind(o) {
        "Deployment" | "DaemonSet" | "Job" => Some(&o["spec"]["template"]["spec"]),
        "CronJob" => Some(&o["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

fn containers(o: &Value) -> Vec<&Value> {
    pod_spec(o)
        .map(|spec| {
            ["initContainers", "containers"]
                .iter()
                .filter_map(|k| spec[k].as_array())
                .flatten()
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn workloads_and_roles_follow_the_rules() {
    // Root is needed only to change host links (netwatcher) and write host folders (CNI).
    let root_allowed = set(&["danm-netwatcher", "danm-cni-installer"]);
    for overlay in OVERLAYS {
        let objects = build(overlay);
        let accounts = names_of(&objects, "ServiceAccount");
        for o in objects.iter().filter(|o| pod_spec(o).is_some()) {
            let (k, n) = (kind(o), name(o));
            let spec = pod_spec(o).unwrap();
            let account = spec["serviceAccountName"].as_str().unwrap_or_default();
            assert!(
                accounts.contains(account),
                "{overlay}: {k} {n} names ServiceAccount {account:?}, which the build lacks"
            );
            for c in containers(o) {
                let requests = &c["resources"]["requests"];
                assert!(
                    requests["cpu"].is_string() && requests["memory"].is_string(),
                    "{overlay}: {k} {n}: container {} has no cpu and memory requests",
                    c["name"]
                );
                let context = &c["securityContext"];
                assert_eq!(
                    context["allowPrivilegeEscalation"], false,
                    "{overlay}: {k} {n}"
                );
                assert_eq!(context["capabilities"]["drop"], json!(["ALL"]), "{k} {n}");
                let non_root = context["runAsNonRoot"]
                    .as_bool()
                    .or(spec["securityContext"]["runAsNonRoot"].as_bool());
                if root_allowed.contains(n) {
                    continue;
                }
                assert_eq!(
                    non_root,
                    Some(true),
                    "{overlay}: {k} {n} must run as non-root"
                );
                assert!(
                    context["capabilities"]["add"].is_null(),
                    "{overlay}: {k} {n} adds capabilities"
                );
            }
        }
        // netwatcher adds NET_ADMIN and nothing else.
        let netwatcher = containers(find(&objects, "DaemonSet", "danm-netwatcher"))[0];
        assert_eq!(
            netwatcher["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN"])
        );

        for o in objects
            .iter()
            .filter(|o| matches!(kind(o), "Role" | "ClusterRole"))
        {
            let (k, n) = (kind(o), name(o));
            for rule in o["rules"].as_array().expect("rules") {
                for field in ["verbs", "resources", "apiGroups"] {
                    let values = rule[field].as_array().cloned().unwrap_or_default();
                    assert!(
                        !values.contains(&json!("*")),
                        "{overlay}: {k} {n} grants {field} *"
                    );
                }
                assert!(
                    rule["nonResourceURLs"].is_null(),
                    "{overlay}: {k} {n} grants URLs"
                );
                let resources = rule["resources"].as_array().cloned().unwrap_or_default();
                if resources.contains(&json!("secrets")) {
                    assert_eq!(
                        (k, n),
                        ("Role", "danm-certs"),
                        "{overlay}: only danm-certs' Role may mention secrets"
                    );
                }
            }
        }
        // The binding of a namespaced Role must stay in danm-system.
        for o in objects.iter().filter(|o| kind(o) == "Role") {
            assert_eq!(
                o["metadata"]["namespace"],
                "danm-system",
                "Role {}",
                name(o)
            );
        }
    }
}

/// The roles users get (aggregated into admin, edit, view) grant TenantNetworks and
/// reads, never a write of DanmEps; the policies that keep DanmEps ipamd's and
/// svcwatcher's writes its own name the base's ServiceAccounts in the base's namespace.
#[test]
fn user_roles_and_policies_keep_danms_records_danms() {
    for overlay in OVERLAYS {
        let objects = build(overlay);
        let tenant = find(&objects, "ClusterRole", "danm-tenant");
        let labels = &tenant["metadata"]["labels"];
        for aggregate in ["admin", "edit"] {
            assert_eq!(
                labels[format!("rbac.authorization.k8s.io/aggregate-to-{aggregate}")],
                "true",
                "{overlay}: danm-tenant is not aggregated into {aggregate}"
            );
        }
        let view = find(&objects, "ClusterRole", "danm-view");
        assert_eq!(
            view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
            "true"
        );
        for role in [tenant, view] {
            for rule in role["rules"].as_array().unwrap() {
                let resources = rule["resources"].as_array().unwrap();
                let verbs: BTreeSet<&str> = rule["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                let writes = !verbs.is_subset(&set(&["get", "list", "watch"]));
                for r in resources.iter().filter_map(Value::as_str) {
                    assert!(
                        !(writes && r != "tenantnetworks"),
                        "{overlay}: {} lets users write {r}",
                        name(role)
                    );
                    assert!(
                        !matches!(r, "allocationshards" | "tenantconfigs" | "clusternetworks")
                            || !writes,
                        "{overlay}: {} grants {r}",
                        name(role)
                    );
                }
            }
        }
        let accounts = names_of(&objects, "ServiceAccount");
        for (policy, identities) in [
            ("danm-danmep-writers", &["danm-ipamd", "danm-cleaner"][..]),
            ("danm-svcwatcher-writes", &["danm-svcwatcher"][..]),
        ] {
            let text = find(&objects, "ValidatingAdmissionPolicy", policy).to_string();
            for account in identities {
                assert!(accounts.contains(account), "{overlay}: no {account}");
                let user = format!("system:serviceaccount:danm-system:{account}");
                assert!(
                    text.contains(&user),
                    "{overlay}: {policy} does not name {user}"
                );
            }
            let binding = find(&objects, "ValidatingAdmissionPolicyBinding", policy);
            assert_eq!(binding["spec"]["policyName"], policy);
            assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
        }
    }
}

#[test]
fn overlay_networks_are_admitted_by_the_webhook_rules() {
    for overlay in OVERLAYS {
        let objects = build(overlay);
        let tenant_config: Option<TenantConfig> =
            objects.iter().find(|o| kind(o) == "TenantConfig").map(|o| {
                let request = TenantConfigRequest {
                    operation: Operation::Create,
                    object: o,
                    old: None,
                    other: None,
                };
                if let Err(denial) = admit_tenant_config(&request) {
                    panic!("{overlay}: the TenantConfig is refused: {denial}");
                }
                serde_json::from_value(o.clone()).expect("a TenantConfig")
            });
        let mut admitted = 0;
        let mut links = LinkTable::default();
        for o in &objects {
            let network_kind = match kind(o) {
                "DanmNet" => NetworkKind::DanmNet,
                "TenantNetwork" => NetworkKind::TenantNetwork,
                "ClusterNetwork" => NetworkKind::ClusterNetwork,
                _ => continue,
            };
            let request = NetworkRequest {
                operation: Operation::Create,
                kind: network_kind,
                namespace: o["metadata"]["namespace"].as_str().unwrap_or_default(),
                name: name(o),
                object: Some(o),
                old_object: None,
            };
            let mut first = |_: usize| 0;
            let mut env = Environment {
                tenant_config: tenant_config.as_ref(),
                connected_pod: None,
                choose: &mut first,
                reservation_token: "deploy-test",
                // The overlay's networks so far: none may take another's host link.
                links: &links,
            };
            match admit_network(&request, &mut env) {
                Ok(admitted) => {
                    let key = NetworkKey::new(network_kind, request.namespace, request.name);
                    links.insert(&key, admitted.spec.as_ref().expect("a created spec"));
                }
                Err(denial) => {
                    panic!("{overlay}: {} {} is refused: {denial}", kind(o), name(o))
                }
            }
            admitted += 1;
        }
        assert!(admitted >= 3, "{overlay}: only {admitted} networks");
    }
}

/// Runs kubectl (as the administrator) with `stdin`; its stdout, or a panic with stderr.
fn kubectl(plane: &ControlPlane, args: &[&str], stdin: &str) -> String {
    plane
        .kubectl_with_input(args, stdin)
        .unwrap_or_else(|stderr| panic!("kubectl {args:?} failed:\n{stderr}"))
}

/// The objects of `objects` of these kinds, as one List for `kubectl apply -f -`.
fn list_of(objects: &[Value], kinds: &[&str]) -> String {
    let items: Vec<&Value> = objects
        .iter()
        .filter(|o| kinds.contains(&kind(o)))
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// Whether the real authorizer lets ServiceAccount `account` of danm-system do `what`.
fn can(plane: &ControlPlane, account: &str, what: &[&str]) -> bool {
    let out = plane
        .kubectl()
        .args(["auth", "can-i"])
        .args(what)
        .arg(format!("--as=system:serviceaccount:danm-system:{account}"))
        .output()
        .expect("kubectl runs");
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl auth can-i {what:?}: {other} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn overlays_apply_on_the_real_api_server() {
    let plane = ControlPlane::shared().await;
    let production = build("production");
    // For real: what the workloads need to exist first (CRDs, the namespace) and the RBAC
    // objects, so the authorizer below judges exactly what deploy/ grants.
    let foundations = list_of(&production, &["CustomResourceDefinition", "Namespace"]);
    kubectl(plane, &["apply", "--server-side", "-f", "-"], &foundations);
    let crds = list_of(&production, &["CustomResourceDefinition"]);
    kubectl(
        plane,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            "-",
        ],
        &crds,
    );
    let rbac = list_of(
        &production,
        &[
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ClusterRole",
            "ClusterRoleBinding",
        ],
    );
    kubectl(plane, &["apply", "--server-side", "-f", "-"], &rbac);

    // Everything else of each overlay: validated, defaulted and admitted by the API
    // server (no webhook of ours is registered here), not stored.
    for overlay in OVERLAYS {
        let text = danm_testkit::kustomize(&deploy_dir().join("overlays").join(overlay));
        let out = kubectl(
            plane,
            &["apply", "--server-side", "--dry-run=server", "-f", "-"],
            &text,
        );
        assert!(
            out.contains("deployment.apps/danm-ipamd"),
            "{overlay}: {out}"
        );
    }

    // Least privilege, as the real RBAC authorizer sees it.
    let components = [
        "danm-ipamd",
        "danm-webhook",
        "danm-netwatcher",
        "danm-svcwatcher",
        "danm-cleaner",
        "danm-cni-installer",
        "danm-policer",
    ];
    for account in components {
        for what in [
            ["get", "secrets", "-n", "danm-system"],
            ["list", "secrets", "-A", ""],
        ] {
            let what: Vec<&str> = what.into_iter().filter(|s| !s.is_empty()).collect();
            assert!(!can(plane, account, &what), "{account} may {what:?}");
        }
    }
    let yes = |account: &str, what: &[&str]| {
        assert!(can(plane, account, what), "{account} may not {what:?}");
    };
    let no = |account: &str, what: &[&str]| {
        assert!(!can(plane, account, what), "{account} may {what:?}");
    };
    // danm-certs: its Secrets by name, in danm-system only.
    yes(
        "danm-certs",
        &["get", "secrets/danm-ipamd-tls", "-n", "danm-system"],
    );
    yes(
        "danm-certs",
        &["update", "secrets/danm-ca", "-n", "danm-system"],
    );
    yes("danm-certs", &["create", "secrets", "-n", "danm-system"]);
    no("danm-certs", &["get", "secrets/other", "-n", "danm-system"]);
    no("danm-certs", &["list", "secrets", "-n", "danm-system"]);
    no("danm-certs", &["create", "secrets", "-n", "default"]);
    yes(
        "danm-certs",
        &["patch", "mutatingwebhookconfigurations/danm-webhook"],
    );
    no(
        "danm-certs",
        &["patch", "mutatingwebhookconfigurations/other"],
    );
    // ipamd: shards and DanmEps anywhere, pods read-only.
    yes(
        "danm-ipamd",
        &["patch", "allocationshards.danm.io", "-n", "t1"],
    );
    yes("danm-ipamd", &["create", "danmeps.danm.io", "-n", "t1"]);
    yes("danm-ipamd", &["get", "pods", "-n", "t1"]);
    no("danm-ipamd", &["delete", "pods", "-n", "t1"]);
    no("danm-ipamd", &["create", "danmnets.danm.io", "-n", "t1"]);
    // The policer reads, cluster-wide, and writes nothing but Events.
    yes(
        "danm-policer",
        &["watch", "danmnetworkpolicies.danm.io", "-A"],
    );
    yes("danm-policer", &["list", "pods", "-A"]);
    yes("danm-policer", &["watch", "clusternetworks.danm.io"]);
    yes("danm-policer", &["list", "tenantnetworks.danm.io", "-A"]);
    no("danm-policer", &["update", "danmnets.danm.io", "-n", "t1"]);
    no("danm-policer", &["create", "danmeps.danm.io", "-n", "t1"]);
    no("danm-policer", &["patch", "pods", "-n", "t1"]);
    // The webhook rewrites the TenantConfig only.
    yes("danm-webhook", &["update", "tenantconfigs.danm.io"]);
    no(
        "danm-webhook",
        &["update", "tenantnetworks.danm.io", "-n", "t1"],
    );
    // svcwatcher: its Lease in danm-system, not elsewhere; slices anywhere.
    yes(
        "danm-svcwatcher",
        &["patch", "leases/danm-svcwatcher", "-n", "danm-system"],
    );
    no(
        "danm-svcwatcher",
        &["patch", "leases/other", "-n", "danm-system"],
    );
    no(
        "danm-svcwatcher",
        &["patch", "leases/danm-svcwatcher", "-n", "default"],
    );
    yes(
        "danm-svcwatcher",
        &["patch", "endpointslices.discovery.k8s.io", "-n", "t1"],
    );
    // netwatcher: Events, and reads.
    yes(
        "danm-netwatcher",
        &["create", "events.events.k8s.io", "-n", "t1"],
    );
    no(
        "danm-netwatcher",
        &["update", "danmnets.danm.io", "-n", "t1"],
    );
    // The cleaner deletes records, never networks.
    yes("danm-cleaner", &["delete", "danmeps.danm.io", "-n", "t1"]);
    no("danm-cleaner", &["delete", "clusternetworks.danm.io"]);
    // The CNI installer: nothing at all.
    no("danm-cni-installer", &["get", "pods", "-n", "danm-system"]);
    no(
        "danm-cni-installer",
        &["get", "configmaps", "-n", "danm-system"],
    );
}

/// The cert-manager component (not in the overlays: it needs cert-manager's CRDs) builds
/// on the base, replaces the danm-certs Job, and asks cainjector for both caBundles.
/// The components of `deploy/components/`.
const COMPONENTS: [&str; 8] = [
    "attachments",
    "calico",
    "cert-manager",
    "policer",
    "apiserver-client-auth",
    "administrator-nodes",
    "monitoring",
    "node-token",
];

/// `overlay` (a folder of deploy/) with `components`, built.
fn build_with(overlay: &str, components: &[&str]) -> Vec<Value> {
    let dir = danm_testkit::kustomization_with(overlay, components);
    serde_saphyr::from_multiple(&danm_testkit::kustomize(dir.path())).unwrap()
}

/// No pod that runs on every node (a DaemonSet's) references a Secret, in any overlay and
/// with any component: root on any node could read it, and a Secret of DANM's holds a
/// private key (the CA's, or an identity's). Nodes get the CA certificate from a ConfigMap.
#[test]
fn no_pod_on_every_node_references_a_secret() {
    let mut builds: Vec<(String, Vec<Value>)> =
        OVERLAYS.iter().map(|o| (o.to_string(), build(o))).collect();
    for component in COMPONENTS {
        builds.push((
            format!("production + {component}"),
            build_with("overlays/production", &[component]),
        ));
    }
    for (what, objects) in &builds {
        let mut daemonsets = 0;
        for o in objects.iter().filter(|o| kind(o) == "DaemonSet") {
            daemonsets += 1;
            let spec = pod_spec(o).unwrap();
            let text = spec.to_string();
            for needle in ["\"secret\"", "secretKeyRef", "secretRef", "secretName"] {
                assert!(
                    !text.contains(needle),
                    "{what}: DaemonSet {} references a Secret ({needle}):\n{spec:#}",
                    name(o)
                );
            }
        }
        assert!(daemonsets >= 2, "{what}: {daemonsets} DaemonSets");
    }
    // The administrator-nodes component keeps the administrator's credentials off the
    // other nodes.
    let objects = build_with("overlays/production", &["administrator-nodes"]);
    for (k, n) in [
        ("CronJob", "danm-cleaner"),
        ("CronJob", "danm-certs-renew"),
        ("Job", "danm-certs"),
    ] {
        assert_eq!(
            pod_spec(find(&objects, k, n)).unwrap()["nodeSelector"]["danm.io/administrator-node"],
            "true",
            "{k} {n}"
        );
    }
    // The attachments component turns NetworkAttachmentDefinitions on in the namespaces it
    // lists, and gives netwatcher what that needs.
    let objects = build_with("overlays/production", &["attachments"]);
    let netwatcher = pod_spec(find(&objects, "DaemonSet", "danm-netwatcher")).unwrap();
    let args = netwatcher["containers"][0]["args"].to_string();
    assert!(
        args.contains("\"--attachment-namespaces\",\"telco\""),
        "{args}"
    );
    assert_eq!(
        find(&objects, "ClusterRole", "danm-netwatcher-attachments")["rules"][0]["verbs"],
        serde_json::json!(["list", "watch", "update"])
    );
    // The calico component turns the cleaner's --calico on and gives it Calico's IPAM.
    let objects = build_with("overlays/production", &["calico"]);
    let cleaner = find(&objects, "CronJob", "danm-cleaner");
    let args = cleaner["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
        .to_string();
    assert!(args.contains("\"--calico\""), "{args}");
    assert!(find(&objects, "ClusterRoleBinding", "danm-cleaner-calico").is_object());
    // The node-token component gives the installer a pod-bound token, not a Secret, and
    // ipamd the right to review it.
    let objects = build_with("overlays/production", &["node-token"]);
    let installer = pod_spec(find(&objects, "DaemonSet", "danm-cni-installer")).unwrap();
    assert!(
        installer["volumes"]
            .to_string()
            .contains("\"audience\":\"danm-ipamd\""),
        "{installer:#}"
    );
    let ipamd_args = containers(find(&objects, "Deployment", "danm-ipamd"))[0]["args"].to_string();
    assert!(ipamd_args.contains("sa-token"), "{ipamd_args}");
    let template = find(&objects, "ConfigMap", "danm-cni-config")["data"]["00-danm.conf.template"]
        .as_str()
        .unwrap();
    assert!(
        template.contains("node-token") && !template.contains("kubelet-client"),
        "{template}"
    );
    // The apiserver-client-auth component makes the webhook ask for the API server's
    // certificate.
    let objects = build_with("overlays/production", &["apiserver-client-auth"]);
    let args = containers(find(&objects, "Deployment", "danm-webhook"))[0]["args"].to_string();
    assert!(
        args.contains("--client-ca") && args.contains("--client-name"),
        "{args}"
    );
}

#[test]
fn the_cert_manager_component_builds() {
    let objects = build_with("base", &["cert-manager"]);
    assert!(
        names_of(&objects, "Job").is_empty()
            && !names_of(&objects, "CronJob").contains("danm-certs-renew"),
        "danm-certs is left out"
    );
    // The CA's key stays in cert-manager's namespace; trust-manager publishes its
    // certificate alone as the ConfigMap the CNI installer mounts.
    assert_eq!(
        find(&objects, "Certificate", "danm-ca")["metadata"]["namespace"],
        "cert-manager"
    );
    let bundle = find(&objects, "Bundle", "danm-ca");
    assert_eq!(bundle["spec"]["target"]["configMap"]["key"], "ca.crt");
    let installer = pod_spec(find(&objects, "DaemonSet", "danm-cni-installer")).unwrap();
    assert!(
        installer["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["configMap"]["name"] == "danm-ca"),
        "{installer:#}"
    );
    assert!(!names_of(&objects, "ServiceAccount").contains("danm-certs"));
    assert!(
        !objects
            .iter()
            .any(|o| matches!(kind(o), "Role" | "ClusterRole")
                && o["rules"].to_string().contains("secrets")),
        "no role mentions secrets without danm-certs"
    );
    assert_eq!(
        names_of(&objects, "Certificate"),
        set(&[
            "danm-ca",
            "danm-webhook-tls",
            "danm-ipamd-tls",
            "danm-cleaner-tls"
        ])
    );
    for k in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        assert_eq!(
            find(&objects, k, "danm-webhook")["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "danm-system/danm-webhook-tls"
        );
    }
}

/// Every series the Grafana dashboard queries is registered by its component (by name, in
/// the component's metrics source; prometheus-client adds `_total` to counters).
#[test]
fn the_dashboard_queries_real_series() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/danm.json")).unwrap(),
    )
    .expect("danm.json is JSON");
    let sources = [
        ("ipamd", "ipamd/src/registry.rs"),
        ("webhook", "webhook/src/metrics.rs"),
        ("netwatcher", "watchers/src/netwatcher/metrics.rs"),
        ("svcwatcher", "watchers/src/svcwatcher/mod.rs"),
        ("cleaner", "cleaner/src/metrics.rs"),
        ("policer", "policer/src/metrics.rs"),
    ];
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for series in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("danm_"))
            {
                let (component, source) = sources
                    .iter()
                    .find(|(c, _)| series.starts_with(&format!("danm_{c}_")))
                    .unwrap_or_else(|| panic!("{series}: no component"));
                let mut name = &series[format!("danm_{component}_").len()..];
                for suffix in ["_bucket", "_count", "_sum", "_total"] {
                    name = name.strip_suffix(suffix).unwrap_or(name);
                }
                let text = std::fs::read_to_string(root.join(source)).unwrap();
                assert!(
                    text.contains(&format!("\"{name}\"")),
                    "{series} (panel {}): {source} registers no {name:?}",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 30, "only {checked} series checked");
}

/// The CNI configuration every overlay installs is one each runtime parses: its
/// `cniVersion` is at most 1.0.0, the newest that containerd 1.6's libcni knows (it fails
/// every sandbox on a 1.1.0 result, measured on containerd 1.6.20). A single `.conf`
/// cannot offer 1.1.0 beside it: libcni reads `cniVersions` in a `.conflist` only. (That
/// the plugin answers in it: `cni/src/protocol.rs`.)
#[test]
fn the_cni_configuration_speaks_a_version_every_runtime_parses() {
    const LIBCNI_1_1: [&str; 6] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
    for (overlay, components) in [
        ("base", &[][..]),
        ("overlays/production", &[][..]),
        ("overlays/production", &["node-token"][..]),
        ("overlays/production", &["policer"][..]),
    ] {
        let objects = build_with(overlay, components);
        let template =
            find(&objects, "ConfigMap", "danm-cni-config")["data"]["00-danm.conf.template"]
                .as_str()
                .unwrap();
        let conf: Value = serde_json::from_str(template).unwrap();
        let version = conf["cniVersion"].as_str().unwrap();
        assert!(
            LIBCNI_1_1.contains(&version),
            "{overlay} {components:?}: cniVersion {version}"
        );
        assert!(
            conf.get("cniVersions").is_none(),
            "{overlay} {components:?}: a .conf's cniVersions is never read by libcni"
        );
    }
}

/// The policer component makes the CNI wait for a new pod's rules: the installer is told the
/// gate's socket (it writes it into 00-danm.conf's `policer`), and the policer serves it
/// there, on a host folder both see. With or without node-token's template.
#[test]
fn the_policer_component_points_the_cni_at_its_gate() {
    const SOCKET: &str = "/var/run/danm/policer.sock";
    for components in [&["policer"][..], &["policer", "node-token"][..]] {
        let objects = build_with("overlays/production", components);
        let installer = containers(find(&objects, "DaemonSet", "danm-cni-installer"))[0].clone();
        assert!(
            installer["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "DANM_POLICER_SOCKET" && e["value"] == SOCKET),
            "{components:?}: {installer:#}"
        );
        let template =
            find(&objects, "ConfigMap", "danm-cni-config")["data"]["00-danm.conf.template"]
                .as_str()
                .unwrap();
        let conf: Value = serde_json::from_str(template).unwrap();
        assert_eq!(conf["policer"], "${DANM_POLICER_SOCKET}", "{components:?}");
        let policer = find(&objects, "DaemonSet", "danm-policer");
        let args = containers(policer)[0]["args"].to_string();
        assert!(
            args.contains(&format!("\"--gate-socket\",\"{SOCKET}\"")),
            "{args}"
        );
        let spec = pod_spec(policer).unwrap().to_string();
        assert!(spec.contains("\"path\":\"/var/run/danm\""), "{spec}");
    }
    // Without the component the installer renders it empty: no gate.
    let objects = build_with("overlays/production", &[]);
    let installer = containers(find(&objects, "DaemonSet", "danm-cni-installer"))[0].to_string();
    assert!(!installer.contains("DANM_POLICER_SOCKET"), "{installer}");
}

/// A component's objects do not get `deploy/base`'s namespace: each names its own. Every
/// namespaced object a component adds to production is in `danm-system` (or, with
/// cert-manager, in cert-manager's own namespace), never in whatever namespace `kubectl`
/// defaults to.
#[test]
fn every_namespaced_object_of_every_component_names_its_namespace() {
    const CLUSTER_SCOPED: [&str; 11] = [
        "TenantConfig",
        "ClusterNetwork",
        "Bundle",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Namespace",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "PriorityClass",
        "ClusterIssuer",
    ];
    let key = |o: &Value| (o["kind"].to_string(), o["metadata"]["name"].to_string());
    let production: Vec<(String, String)> = build("production").iter().map(key).collect();
    for component in COMPONENTS {
        for object in build_with("overlays/production", &[component]) {
            let kind = object["kind"].as_str().unwrap_or_default();
            // The component's own objects (the overlay's examples live where they say).
            if CLUSTER_SCOPED.contains(&kind) || production.contains(&key(&object)) {
                continue;
            }
            let namespace = object["metadata"]["namespace"].as_str();
            assert!(
                matches!(namespace, Some("danm-system" | "cert-manager")),
                "{component}: {kind} {} is in namespace {namespace:?}",
                object["metadata"]["name"]
            );
        }
    }
}
