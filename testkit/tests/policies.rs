//! The admission policies of `deploy/base/access/policies.yaml`, enforced by a real API
//! server of this test's own (they are cluster-wide: no other test shares it):
//! danm-certs' identity may change nothing of the WebhookConfigurations but their
//! caBundle, and may create only its own Secrets and ConfigMap (issue 24); the identity
//! is danm-certs' ServiceAccount with exactly the roles of `deploy/base/certs/rbac.yaml`.

use std::path::Path;
use std::time::{Duration, Instant};

use danm_testkit::control_plane::{ControlPlane, Options};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn deploy(file: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/base")
            .join(file),
    )
    .unwrap()
}

/// The documents of `text` of kind `kind` named `name`, as one List.
fn pick(text: &str, wanted: &[(&str, &str)]) -> String {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).unwrap();
    let items: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            wanted
                .iter()
                .any(|(k, n)| d["kind"] == *k && d["metadata"]["name"] == *n)
        })
        .collect();
    assert_eq!(items.len(), wanted.len(), "{wanted:?}");
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// Whether `result` is a refusal by the policy, carrying `says`.
#[track_caller]
fn refused_by_policy<T: std::fmt::Debug>(result: Result<T, kube::Error>, says: &str) {
    match result {
        Err(kube::Error::Api(e)) => {
            assert!(
                e.code == 403 && e.message.contains(says),
                "expected the policy's refusal ({says}), got: {e:?}"
            );
        }
        other => panic!("expected the policy's refusal ({says}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn danm_certs_may_change_only_the_ca_bundle_and_create_only_its_own_objects() {
    let plane = ControlPlane::start(Options::default()).await.unwrap();
    plane.create_namespace("danm-system").await;
    // Its identity and roles as the base has them, the policy, and the two configurations
    // (pointed at nothing: no request of this API server is sent to them).
    plane
        .kubectl_with_input(
            &["apply", "-n", "danm-system", "-f", "-"],
            &deploy("certs/rbac.yaml"),
        )
        .unwrap();
    plane
        .kubectl_with_input(
            &["apply", "-f", "-"],
            &pick(
                &deploy("access/policies.yaml"),
                &[
                    ("ValidatingAdmissionPolicy", "danm-certs-writes"),
                    ("ValidatingAdmissionPolicyBinding", "danm-certs-writes"),
                ],
            ),
        )
        .unwrap();
    let configurations =
        deploy("webhook/webhook-configurations.yaml").replace("danm.io\"]", "never.danm.io\"]");
    plane
        .kubectl_with_input(&["apply", "-f", "-"], &configurations)
        .unwrap();
    let certs = plane
        .service_account_client("danm-system", "danm-certs")
        .await;
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(certs.clone());
    let json_patch = |ops: Value| Patch::Json::<()>(serde_json::from_value(ops).unwrap());

    // The policy is in force once the API server has loaded it: a create of another
    // Secret is then refused by it (its status shows a CEL error otherwise).
    let secrets: Api<Secret> = Api::namespaced(certs.clone(), "danm-system");
    let secret = |name: &str| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"x": "y"}}))
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match secrets
            .create(&PostParams::default(), &secret("stolen"))
            .await
        {
            Err(kube::Error::Api(e))
                if e.code == 403 && e.message.contains("danm-certs creates only") =>
            {
                break;
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the policy is not in force: {other:?}\n{}",
                    plane
                        .kubectl_with_input(
                            &[
                                "get",
                                "validatingadmissionpolicy",
                                "danm-certs-writes",
                                "-o",
                                "yaml"
                            ],
                            ""
                        )
                        .unwrap_or_else(|e| e)
                );
                let _ = secrets.delete("stolen", &Default::default()).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    // The caBundle, as danm-certs sets it: allowed.
    let bundle = json_patch(json!([
        {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Y2E="}
    ]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = hooks
        .patch("danm-webhook", &PatchParams::default(), &bundle)
        .await
    {
        assert!(
            Instant::now() < deadline,
            "the caBundle patch is refused: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Anything else of the configuration: refused.
    for ops in [
        json!([{"op": "add", "path": "/webhooks/0/rules/-", "value":
            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}}]),
        json!([{"op": "replace", "path": "/webhooks/0/clientConfig/service/name", "value": "evil"}]),
        json!([{"op": "remove", "path": "/webhooks/0/clientConfig/service"},
               {"op": "add", "path": "/webhooks/0/clientConfig/url", "value": "https://evil.example/x"}]),
        json!([{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]),
        json!([{"op": "add", "path": "/metadata/annotations", "value":
            {"cert-manager.io/inject-ca-from": "evil/ca"}}]),
        // An owner that does not exist: the garbage collector would delete them.
        json!([{"op": "add", "path": "/metadata/ownerReferences", "value":
            [{"apiVersion": "v1", "kind": "Namespace", "name": "gone",
              "uid": "00000000-0000-0000-0000-000000000000"}]}]),
        json!([{"op": "add", "path": "/metadata/finalizers", "value": ["danm.io/hold"]}]),
    ] {
        refused_by_policy(
            hooks
                .patch(
                    "danm-webhook",
                    &PatchParams::default(),
                    &json_patch(ops.clone()),
                )
                .await,
            "danm-certs may change only the caBundle",
        );
    }
    // Its own Secret and ConfigMap: allowed; any other: refused.
    secrets
        .create(&PostParams::default(), &secret("danm-ca"))
        .await
        .expect("its own Secret");
    refused_by_policy(
        secrets
            .create(&PostParams::default(), &secret("stolen"))
            .await,
        "danm-certs creates only its own secrets",
    );
    let maps: Api<ConfigMap> = Api::namespaced(certs, "danm-system");
    let map = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    };
    maps.create(&PostParams::default(), &map("danm-ca"))
        .await
        .expect("its own ConfigMap");
    refused_by_policy(
        maps.create(&PostParams::default(), &map("kube-root-ca.crt-2"))
            .await,
        "danm-certs creates only its own configmaps",
    );
}
