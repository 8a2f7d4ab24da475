//! AdmissionReview bodies, as the API server sends them to a webhook: `admission.k8s.io/v1`,
//! or the `v1beta1` of DANM's era (the same shape). What does not parse is a bad request
//! (HTTP 400), never a panic. [`route`] then says which rules a request goes to: the
//! webhook and its fuzz target both read requests through it.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use serde_json::Value;

use super::{Denial, NetworkRequest, Operation};
use crate::network::{NetworkKind, Rule};

/// The webhook's paths: DANM's three, and ours for DanmNetworkPolicies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// `/netvalidation`: networks on CREATE and UPDATE.
    NetValidation,
    /// `/confvalidation`: TenantConfigs on CREATE and UPDATE.
    ConfValidation,
    /// `/netdeletion`: networks on DELETE.
    NetDeletion,
    /// `/policyvalidation`: DanmNetworkPolicies on CREATE and UPDATE.
    PolicyValidation,
}

impl Path {
    /// Every path.
    pub const ALL: [Path; 4] = [
        Path::NetValidation,
        Path::ConfValidation,
        Path::NetDeletion,
        Path::PolicyValidation,
    ];

    /// The URL path.
    pub fn as_str(self) -> &'static str {
        match self {
            Path::NetValidation => "/netvalidation",
            Path::ConfValidation => "/confvalidation",
            Path::NetDeletion => "/netdeletion",
            Path::PolicyValidation => "/policyvalidation",
        }
    }
}

/// Which rules a request goes to, with what it carries.
#[derive(Debug)]
pub enum Route<'r> {
    /// Allowed as it is, unjudged: an operation the webhook is not registered for
    /// (CONNECT), or anything but a DELETE sent to `/netdeletion` (a configuration that
    /// sends it a CREATE must not get ids reserved there).
    Allow,
    /// Denied before any rule: a kind this path does not handle, or a request without the
    /// object its operation needs.
    Deny(Denial),
    /// A TenantConfig's DELETE: the stored object.
    TenantConfigDelete {
        /// The stored TenantConfig.
        old: Value,
    },
    /// A TenantConfig's CREATE or UPDATE.
    TenantConfigWrite {
        /// CREATE or UPDATE.
        operation: Operation,
        /// The object sent.
        object: Value,
        /// The stored object (UPDATE).
        old: Option<Value>,
    },
    /// A network (any operation).
    Network(NetworkRoute<'r>),
    /// A DanmNetworkPolicy's CREATE or UPDATE: the object sent.
    Policy(Value),
}

/// A network request, owning its objects; [`NetworkRoute::request`] lends them to the rules.
#[derive(Debug)]
pub struct NetworkRoute<'r> {
    /// CREATE, UPDATE or DELETE.
    pub operation: Operation,
    /// The network's kind (from the request, not from the object).
    pub kind: NetworkKind,
    /// Its namespace (empty for a ClusterNetwork).
    pub namespace: &'r str,
    /// Its name (empty on a CREATE with `generateName`).
    pub name: &'r str,
    /// The object sent (CREATE, UPDATE).
    pub object: Option<Value>,
    /// The stored object (UPDATE, DELETE).
    pub old_object: Option<Value>,
}

impl NetworkRoute<'_> {
    /// The request as the network rules take it.
    pub fn request(&self) -> NetworkRequest<'_> {
        NetworkRequest {
            operation: self.operation,
            kind: self.kind,
            namespace: self.namespace,
            name: self.name,
            object: self.object.as_ref(),
            old_object: self.old_object.as_ref(),
        }
    }
}

/// Which rules `request`, sent to `path`, goes to. Only `danm.io` kinds are handled: the
/// networks on `/netvalidation` and `/netdeletion`, TenantConfigs on `/confvalidation` and
/// `/netdeletion`, DanmNetworkPolicies on `/policyvalidation`.
pub fn route<'r>(path: Path, request: &'r AdmissionRequest<DynamicObject>) -> Route<'r> {
    let Some(operation) = Operation::of(&request.operation) else {
        return Route::Allow;
    };
    let kind = request.kind.kind.as_str();
    if request.kind.group != danm_crds::GROUP {
        return Route::Deny(not_handled(kind, path));
    }
    if path == Path::NetDeletion && operation != Operation::Delete {
        return Route::Allow;
    }
    if path == Path::PolicyValidation && operation == Operation::Delete {
        return Route::Allow;
    }
    let to_value = |o: &Option<DynamicObject>| {
        o.as_ref()
            .map(|o| serde_json::to_value(o).expect("an object serializes"))
    };
    let (object, old_object) = (to_value(&request.object), to_value(&request.old_object));
    match (path, kind) {
        (Path::ConfValidation | Path::NetDeletion, "TenantConfig") => {
            let missing = |field: &str| {
                Route::Deny(Denial::one(
                    format!("TenantConfig {}", request.name),
                    field,
                    Rule::Schema,
                    format!("the {operation:?} request carries no {field}"),
                ))
            };
            match (operation, object) {
                (Operation::Delete, _) => match old_object {
                    Some(old) => Route::TenantConfigDelete { old },
                    None => missing("oldObject"),
                },
                (_, Some(object)) => Route::TenantConfigWrite {
                    operation,
                    object,
                    old: old_object,
                },
                (_, None) => missing("object"),
            }
        }
        (Path::NetValidation | Path::NetDeletion, kind) => match NetworkKind::parse(kind) {
            Some(kind) => Route::Network(NetworkRoute {
                operation,
                kind,
                namespace: request.namespace.as_deref().unwrap_or_default(),
                name: &request.name,
                object,
                old_object,
            }),
            None => Route::Deny(not_handled(kind, path)),
        },
        (Path::PolicyValidation, "DanmNetworkPolicy") => match object {
            // An UPDATE that leaves the spec as stored (labels, finalizers, a deletion) is
            // not judged again: a policy stored before the rules must stay deletable.
            Some(object)
                if old_object
                    .as_ref()
                    .is_some_and(|old| old["spec"] == object["spec"])
                    || !object["metadata"]["deletionTimestamp"].is_null() =>
            {
                Route::Allow
            }
            Some(object) => Route::Policy(object),
            None => Route::Deny(Denial::one(
                format!("DanmNetworkPolicy {}", request.name),
                "object",
                Rule::Schema,
                format!("the {operation:?} request carries no object"),
            )),
        },
        (_, kind) => Route::Deny(not_handled(kind, path)),
    }
}

fn not_handled(kind: &str, path: Path) -> Denial {
    Denial::one(
        format!("{kind} object"),
        "request.kind",
        Rule::Unnumbered,
        format!(
            "kind {kind:?} is not handled by the DANM webhook at {}",
            path.as_str()
        ),
    )
}

/// Why a body is not an AdmissionReview this webhook can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    /// Not JSON of the AdmissionReview shape.
    #[error("the body is not an AdmissionReview: {0}")]
    Shape(#[from] serde_json::Error),
    /// An `apiVersion`/`kind` other than AdmissionReview v1 or v1beta1.
    #[error(
        "apiVersion {api_version:?} kind {kind:?} is not admission.k8s.io/v1 or v1beta1 AdmissionReview"
    )]
    Version {
        /// As sent.
        api_version: String,
        /// As sent.
        kind: String,
    },
    /// No `request`.
    #[error("the AdmissionReview has no request")]
    NoRequest,
    /// An empty `request.uid` (the API server always sends one; a TenantNetwork's id is
    /// recorded under it).
    #[error("the AdmissionReview's request has no uid")]
    NoUid,
}

/// Reads an AdmissionReview body (v1 or v1beta1) into its request.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, BadReview> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    let types = &review.types;
    if types.kind != "AdmissionReview"
        || !matches!(
            types.api_version.as_str(),
            "admission.k8s.io/v1" | "admission.k8s.io/v1beta1"
        )
    {
        return Err(BadReview::Version {
            api_version: types.api_version.clone(),
            kind: types.kind.clone(),
        });
    }
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| BadReview::NoRequest)?;
    if request.uid.trim().is_empty() {
        return Err(BadReview::NoUid);
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(api_version: &str, with_request: bool) -> Vec<u8> {
        let mut review = serde_json::json!({"apiVersion": api_version, "kind": "AdmissionReview"});
        if with_request {
            review["request"] = serde_json::json!({
                "uid": "u", "kind": {"group": "danm.io", "version": "v1", "kind": "DanmNet"},
                "resource": {"group": "danm.io", "version": "v1", "resource": "danmnets"},
                "operation": "CREATE", "userInfo": {},
                "object": {"metadata": {"name": "n"}, "spec": {}}
            });
        }
        serde_json::to_vec(&review).unwrap()
    }

    #[test]
    fn v1_and_v1beta1_are_read_and_keep_their_version() {
        for version in ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"] {
            let request = decode(&body(version, true)).unwrap();
            assert_eq!(request.types.api_version, version);
            assert_eq!(request.kind.kind, "DanmNet");
        }
    }

    #[test]
    fn what_is_not_a_review_is_a_bad_request() {
        assert!(matches!(decode(b"{"), Err(BadReview::Shape(_))));
        assert!(matches!(
            decode(&body("admission.k8s.io/v2", true)),
            Err(BadReview::Version { .. })
        ));
        assert!(matches!(
            decode(&body("admission.k8s.io/v1", false)),
            Err(BadReview::NoRequest)
        ));
        let mut no_uid: serde_json::Value =
            serde_json::from_slice(&body("admission.k8s.io/v1", true)).unwrap();
        no_uid["request"]["uid"] = " ".into();
        assert!(matches!(
            decode(&serde_json::to_vec(&no_uid).unwrap()),
            Err(BadReview::NoUid)
        ));
    }

    fn request(
        group: &str,
        kind: &str,
        operation: &str,
        with_old: bool,
    ) -> AdmissionRequest<DynamicObject> {
        let mut review: serde_json::Value =
            serde_json::from_slice(&body("admission.k8s.io/v1", true)).unwrap();
        let r = &mut review["request"];
        r["kind"] = serde_json::json!({"group": group, "version": "v1", "kind": kind});
        r["operation"] = operation.into();
        r["namespace"] = "tenant-a".into();
        r["name"] = "n".into();
        if operation == "DELETE" {
            r["object"] = serde_json::Value::Null;
        }
        if with_old {
            r["oldObject"] = serde_json::json!({"metadata": {"name": "n"}, "spec": {}});
        }
        decode(&serde_json::to_vec(&review).unwrap()).unwrap()
    }

    fn denial(route: Route<'_>) -> String {
        match route {
            Route::Deny(d) => d.to_string(),
            other => panic!("not denied: {other:?}"),
        }
    }

    #[test]
    fn networks_go_to_the_network_rules_with_their_namespace_and_name() {
        let create = request("danm.io", "TenantNetwork", "CREATE", false);
        let Route::Network(n) = route(Path::NetValidation, &create) else {
            panic!("not routed to the network rules");
        };
        assert_eq!(
            (n.operation, n.kind, n.namespace, n.name),
            (
                Operation::Create,
                NetworkKind::TenantNetwork,
                "tenant-a",
                "n"
            )
        );
        assert!(n.request().object.is_some() && n.request().old_object.is_none());
        let delete = request("danm.io", "DanmNet", "DELETE", true);
        assert!(matches!(
            route(Path::NetDeletion, &delete),
            Route::Network(_)
        ));
    }

    #[test]
    fn only_a_delete_is_judged_at_netdeletion() {
        let create = request("danm.io", "TenantNetwork", "CREATE", false);
        assert!(matches!(route(Path::NetDeletion, &create), Route::Allow));
    }

    #[test]
    fn kinds_of_other_groups_or_paths_are_denied_naming_kind_and_path() {
        let pod = request("", "Pod", "CREATE", false);
        let why = denial(route(Path::NetValidation, &pod));
        assert!(
            why.contains("\"Pod\"") && why.contains("/netvalidation"),
            "{why}"
        );
        let network = request("danm.io", "DanmNet", "CREATE", false);
        let why = denial(route(Path::ConfValidation, &network));
        assert!(why.contains("/confvalidation"), "{why}");
        let config = request("danm.io", "TenantConfig", "CREATE", false);
        assert!(matches!(
            route(Path::NetValidation, &config),
            Route::Deny(_)
        ));
    }

    #[test]
    fn a_tenant_config_request_without_its_object_is_denied_naming_the_field() {
        let delete = request("danm.io", "TenantConfig", "DELETE", false);
        assert!(denial(route(Path::NetDeletion, &delete)).contains("oldObject"));
        let delete = request("danm.io", "TenantConfig", "DELETE", true);
        assert!(matches!(
            route(Path::NetDeletion, &delete),
            Route::TenantConfigDelete { .. }
        ));
        let create = request("danm.io", "TenantConfig", "CREATE", false);
        assert!(matches!(
            route(Path::ConfValidation, &create),
            Route::TenantConfigWrite {
                operation: Operation::Create,
                old: None,
                ..
            }
        ));
    }

    #[test]
    fn policies_are_judged_on_create_and_on_an_update_that_changes_their_spec() {
        let create = request("danm.io", "DanmNetworkPolicy", "CREATE", false);
        assert!(matches!(
            route(Path::PolicyValidation, &create),
            Route::Policy(_)
        ));
        // Same spec as stored (a label, a finalizer): not judged again.
        let relabel = request("danm.io", "DanmNetworkPolicy", "UPDATE", true);
        assert!(matches!(
            route(Path::PolicyValidation, &relabel),
            Route::Allow
        ));
        let mut changed = request("danm.io", "DanmNetworkPolicy", "UPDATE", true);
        changed.object.as_mut().unwrap().data["spec"] = serde_json::json!({"podSelector": {}});
        assert!(matches!(
            route(Path::PolicyValidation, &changed),
            Route::Policy(_)
        ));
        let delete = request("danm.io", "DanmNetworkPolicy", "DELETE", true);
        assert!(matches!(
            route(Path::PolicyValidation, &delete),
            Route::Allow
        ));
    }
}
