//! Which identity a component under test talks to the API server as.
//!
//! By default every test runs its components as the control plane's administrator: quick,
//! and it tests what the code does. With `DANM_TESTS_AS_SERVICE_ACCOUNTS` set (to anything
//! non-empty; `test.sh` runs the component tests a second time so), a component runs as
//! its ServiceAccount from `deploy/base`, with exactly the RBAC objects the manifests
//! give it, applied for real: a request its Role does not grant is refused by the real
//! authorizer and the test fails. That proves `deploy/base/*/rbac.yaml` is enough, and
//! [`kubeconfig_for`] also proves it is not too much where it matters most: the identity
//! must be refused Secrets.
//!
//! Only the component's own process or client is switched; a test's setup and assertions
//! keep the administrator.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use crate::control_plane::{ControlPlane, client_from_file};

/// The variable that switches the component tests to the ServiceAccounts.
pub const ENV: &str = "DANM_TESTS_AS_SERVICE_ACCOUNTS";

/// The namespace of every ServiceAccount (and namespaced Role) of `deploy/base`.
const SYSTEM_NAMESPACE: &str = "danm-system";

/// How long the authorizer may take to see newly applied roles and bindings.
const RBAC_PROPAGATION: Duration = Duration::from_secs(20);

/// Whether this run's components act as their ServiceAccounts (see the module overview).
pub fn as_service_accounts() -> bool {
    std::env::var_os(ENV).is_some_and(|v| !v.is_empty())
}

/// The kubeconfig `component` (`cleaner`, `ipamd`, `webhook`, `netwatcher`,
/// `svcwatcher`: the ServiceAccount `danm-<component>` of `deploy/base`) talks to `plane`
/// with: the administrator's, unless [`as_service_accounts`]. Then its ServiceAccount and
/// RBAC objects are applied (server-side, idempotent), its namespaced Roles and
/// RoleBindings also in each of `namespaces` (where a test keeps what the component keeps
/// in `danm-system` when installed, its Lease say; they must exist), the authorizer is
/// waited for, the identity is checked to be refused Secrets (a panic otherwise), and a
/// kubeconfig with a fresh token of the ServiceAccount is returned.
pub async fn kubeconfig_for(plane: &ControlPlane, component: &str, namespaces: &[&str]) -> PathBuf {
    if !as_service_accounts() {
        return plane.kubeconfig().to_path_buf();
    }
    service_account_kubeconfig(plane, component, namespaces).await
}

/// [`kubeconfig_for`] as a ServiceAccount, whatever the environment says (the end-to-end
/// cluster always runs its components as the manifests' identities).
pub async fn service_account_kubeconfig(
    plane: &ControlPlane,
    component: &str,
    namespaces: &[&str],
) -> PathBuf {
    let account = format!("danm-{component}");
    let objects = rbac_of(&account, namespaces);
    plane.create_namespace(SYSTEM_NAMESPACE).await;
    apply(plane, &objects);
    wait_authorized(plane, &account, &objects).await;
    let kubeconfig = plane
        .service_account_kubeconfig(SYSTEM_NAMESPACE, &account)
        .await;
    refused_secrets(&kubeconfig, &account).await;
    kubeconfig
}

/// A client of [`kubeconfig_for`]'s identity.
pub async fn client_for(
    plane: &ControlPlane,
    component: &str,
    namespaces: &[&str],
) -> kube::Client {
    let kubeconfig = kubeconfig_for(plane, component, namespaces).await;
    client_from_file(&kubeconfig)
        .await
        .unwrap_or_else(|e| panic!("the kubeconfig of {component}: {e}"))
}

/// A kubeconfig (text) for a plain-HTTP proxy of the API server at `proxy_url` (the fault
/// proxy) with the credentials of `kubeconfig`: its bearer token, which the proxy forwards
/// so that the API server judges the caller; none for the administrator's certificate (the
/// proxy then acts as the administrator itself).
pub fn through_proxy(kubeconfig: &Path, proxy_url: &str) -> String {
    let text = std::fs::read_to_string(kubeconfig)
        .unwrap_or_else(|e| panic!("reading {}: {e}", kubeconfig.display()));
    let parsed: Value = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a kubeconfig: {e}", kubeconfig.display()));
    let user = match parsed["users"][0]["user"]["token"].as_str() {
        Some(token) => json!({ "token": token }),
        None => json!({}),
    };
    serde_json::to_string_pretty(&json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "proxy", "cluster": { "server": proxy_url } }],
        "users": [{ "name": "user", "user": user }],
        "contexts": [{
            "name": "proxy",
            "context": { "cluster": "proxy", "user": "user", "namespace": "default" },
        }],
        "current-context": "proxy",
    }))
    .expect("a kubeconfig serializes")
}

/// `deploy/base`, built once per test binary with the control plane's kubectl.
fn base() -> &'static [Value] {
    static BASE: OnceLock<Vec<Value>> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base");
        let text = crate::kustomize(&dir);
        serde_saphyr::from_multiple(&text).expect("deploy/base builds to YAML")
    })
}

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

/// The ServiceAccount `account` of the build, the bindings naming it and the roles they
/// bind, plus copies of its namespaced Roles and RoleBindings in each of `namespaces`
/// (the binding's subject still the ServiceAccount in danm-system).
fn rbac_of(account: &str, namespaces: &[&str]) -> Vec<Value> {
    let objects = base();
    let service_account = objects
        .iter()
        .find(|o| kind(o) == "ServiceAccount" && name(o) == account)
        .unwrap_or_else(|| panic!("deploy/base has no ServiceAccount {account}"));
    let names_account = |binding: &Value| {
        binding["subjects"].as_array().is_some_and(|subjects| {
            subjects.iter().any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == account
                    && s["namespace"] == SYSTEM_NAMESPACE
            })
        })
    };
    let bindings: Vec<&Value> = objects
        .iter()
        .filter(|o| matches!(kind(o), "RoleBinding" | "ClusterRoleBinding") && names_account(o))
        .collect();
    let roles: Vec<&Value> = bindings
        .iter()
        .map(|b| {
            let (role_kind, role_name) = (
                b["roleRef"]["kind"].as_str().unwrap_or_default(),
                b["roleRef"]["name"].as_str().unwrap_or_default(),
            );
            objects
                .iter()
                .find(|o| kind(o) == role_kind && name(o) == role_name)
                .unwrap_or_else(|| panic!("{} binds a missing {role_kind} {role_name}", name(b)))
        })
        .collect();
    let mut out = vec![service_account.clone()];
    out.extend(roles.iter().map(|r| (*r).clone()));
    out.extend(bindings.iter().map(|b| (*b).clone()));
    // What the kustomize namespace transform would put in danm-system, in the tests' own
    // namespaces too.
    for ns in namespaces {
        for o in roles.iter().chain(bindings.iter()) {
            if matches!(kind(o), "Role" | "RoleBinding") {
                let mut copy = (*o).clone();
                copy["metadata"]["namespace"] = json!(ns);
                out.push(copy);
            }
        }
    }
    out
}

/// `kubectl apply --server-side` of `objects` as the administrator.
fn apply(plane: &ControlPlane, objects: &[Value]) {
    let list = json!({ "apiVersion": "v1", "kind": "List", "items": objects }).to_string();
    let args = [
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=danm-testkit-identity",
        "-f",
        "-",
    ];
    if let Err(stderr) = plane.kubectl_with_input(&args, &list) {
        panic!("applying the RBAC objects of deploy/base failed:\n{stderr}");
    }
}

/// Waits until the authorizer grants `account` the first rule of each applied role (in
/// each namespace a Role was applied to): RBAC is served from caches that follow the
/// writes, and a component started at once would otherwise be refused what it may do.
async fn wait_authorized(plane: &ControlPlane, account: &str, objects: &[Value]) {
    let reviews = Api::<SubjectAccessReview>::all(plane.client().await);
    let user = format!("system:serviceaccount:{SYSTEM_NAMESPACE}:{account}");
    for role in objects
        .iter()
        .filter(|o| matches!(kind(o), "Role" | "ClusterRole"))
    {
        let rule = &role["rules"][0];
        let first = |field: &str| rule[field][0].as_str().map(str::to_owned);
        let attributes = ResourceAttributes {
            namespace: role["metadata"]["namespace"].as_str().map(str::to_owned),
            verb: first("verbs"),
            group: first("apiGroups"),
            resource: first("resources"),
            name: first("resourceNames"),
            ..Default::default()
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.clone()),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{SYSTEM_NAMESPACE}"),
                    "system:authenticated".into(),
                ]),
                resource_attributes: Some(attributes.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        let deadline = Instant::now() + RBAC_PROPAGATION;
        loop {
            let answer = reviews
                .create(&PostParams::default(), &review)
                .await
                .unwrap_or_else(|e| panic!("a SubjectAccessReview: {e}"));
            if answer.status.is_some_and(|s| s.allowed) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{user} is still not granted {attributes:?} ({} {}) after {RBAC_PROPAGATION:?}",
                kind(role),
                name(role)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Panics unless the identity of `kubeconfig` is refused (403) reading Secrets in
/// danm-system, both listing them and getting one by name: no component but danm-certs
/// may, and a test must not pass because its identity can do more than the manifests say.
async fn refused_secrets(kubeconfig: &Path, account: &str) {
    let client = client_from_file(kubeconfig)
        .await
        .unwrap_or_else(|e| panic!("the kubeconfig of {account}: {e}"));
    let secrets = Api::<Secret>::namespaced(client, SYSTEM_NAMESPACE);
    let forbidden = |r: Result<(), kube::Error>, what: &str| match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{account} must be refused {what} in {SYSTEM_NAMESPACE}, got {other:?}"),
    };
    forbidden(
        secrets.list(&ListParams::default()).await.map(drop),
        "listing Secrets",
    );
    forbidden(
        secrets.get("danm-ca").await.map(drop),
        "getting Secret danm-ca",
    );
}
