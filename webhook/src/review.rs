//! AdmissionReviews in and out: parse the body, route the request to the rules of
//! `danm_core::admit`, answer with the request's own `apiVersion` (so DANM-era
//! `admission.k8s.io/v1beta1` configurations work as well as `v1`).

use std::sync::Arc;
use std::time::Instant;

pub use danm_core::admit::review::Path;
use danm_core::admit::review::{BadReview, Route, decode, route};
use danm_core::admit::{
    self, Admitted, Denial, Environment, NetworkRequest, Operation, TenantConfigRequest,
    admit_network,
};
use danm_core::{NetworkKey, NetworkKind};
use kube::ResourceExt as _;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use serde_json::Value;

use crate::links::Links;
use crate::metrics::{AdmissionLabels, Metrics, PathLabels, RuleLabels};
use crate::tenants::{Tenants, TenantsError};
use crate::usage::Usage;

/// What the handlers share.
#[derive(Debug)]
pub struct Admission {
    /// The TenantConfig side.
    pub tenants: Arc<Tenants>,
    /// Pods by network.
    pub usage: Arc<Usage>,
    /// Host links by name and segment.
    pub links: Arc<Links>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// How a request ended.
enum Outcome {
    Allowed(Box<Admitted>),
    Denied(Denial),
    /// The webhook could not decide (an API error, caches not ready): the client retries.
    Failed(String),
}

impl Admission {
    /// Answers one AdmissionReview body; `Err` is HTTP 400 with the reason.
    pub async fn review(&self, path: Path, body: &[u8]) -> Result<Value, BadReview> {
        let started = Instant::now();
        let request = decode(body)?;
        let outcome = self.decide(path, &request).await;
        let subject = format!(
            "{} {}{}",
            request.kind.kind,
            request
                .namespace
                .as_deref()
                .map(|n| format!("{n}/"))
                .unwrap_or_default(),
            request.name
        );
        let operation = format!("{:?}", request.operation).to_uppercase();
        let response = AdmissionResponse::from(&request);
        let (response, result) = match outcome {
            Outcome::Allowed(admitted) => {
                let mut response = response;
                if !admitted.warnings.is_empty() {
                    tracing::info!(object = %subject, warnings = ?admitted.warnings, "admitted with warnings");
                    response.warnings = Some(admitted.warnings.clone());
                }
                let response = if admitted.patch.0.is_empty() {
                    response
                } else {
                    tracing::debug!(object = %subject, patch = ?admitted.patch, "mutated");
                    response
                        .with_patch(admitted.patch.clone())
                        .expect("a JSON patch serializes")
                };
                (response, "allowed")
            }
            Outcome::Denied(denial) => {
                let rules: Vec<String> =
                    denial.problems.iter().map(|p| p.rule.to_string()).collect();
                for problem in &denial.problems {
                    let rule = problem.rule.label();
                    self.metrics
                        .denials
                        .get_or_create(&RuleLabels { rule })
                        .inc();
                }
                tracing::info!(
                    object = %subject, operation, user = request.user_info.username.as_deref().unwrap_or_default(),
                    rules = ?rules, reason = %denial, "denied"
                );
                (response.deny(denial), "denied")
            }
            Outcome::Failed(reason) => {
                tracing::warn!(object = %subject, operation, reason, "could not decide");
                let mut response =
                    response.deny(format!("the DANM webhook could not decide: {reason}"));
                response.result.code = 500;
                (response, "error")
            }
        };
        self.metrics
            .admissions
            .get_or_create(&AdmissionLabels {
                path: path.as_str(),
                // Only the kinds served: the label must not grow with what callers send.
                kind: match request.kind.kind.as_str() {
                    k @ ("DanmNet" | "TenantNetwork" | "ClusterNetwork" | "TenantConfig") => {
                        k.to_owned()
                    }
                    _ => "other".to_owned(),
                },
                operation,
                result,
            })
            .inc();
        self.metrics
            .duration
            .get_or_create(&PathLabels {
                path: path.as_str(),
            })
            .observe(started.elapsed().as_secs_f64());
        Ok(serde_json::to_value(response.into_review()).expect("a review serializes"))
    }

    async fn decide(&self, path: Path, request: &AdmissionRequest<DynamicObject>) -> Outcome {
        match route(path, request) {
            Route::Allow => Outcome::Allowed(Box::default()),
            Route::Deny(denial) => Outcome::Denied(denial),
            Route::TenantConfigDelete { old } => match admit::admit_tenant_config_delete(&old) {
                Ok(()) => Outcome::Allowed(Box::default()),
                Err(d) => Outcome::Denied(d),
            },
            Route::TenantConfigWrite {
                operation,
                object,
                old,
            } => self.tenant_config(operation, &object, old.as_ref()),
            Route::Network(network) => {
                self.network(&network.request(), &request.uid, request.dry_run)
                    .await
            }
            Route::Policy(object) => match admit::admit_policy(&object) {
                Ok(()) => Outcome::Allowed(Box::new(Admitted {
                    warnings: self.missing_networks(&object, request),
                    ..Default::default()
                })),
                Err(d) => Outcome::Denied(d),
            },
        }
    }

    /// A warning for each network `object` (an admitted DanmNetworkPolicy) names that does
    /// not exist: no error (it may come later), but it selects nothing until it does. None
    /// while the networks' watches have not listed.
    fn missing_networks(
        &self,
        object: &Value,
        request: &AdmissionRequest<DynamicObject>,
    ) -> Vec<String> {
        let Ok(spec) =
            serde_json::from_value::<danm_crds::DanmNetworkPolicySpec>(object["spec"].clone())
        else {
            return Vec::new();
        };
        if !self.links.is_synced() {
            return Vec::new();
        }
        let namespace = request.namespace.as_deref().unwrap_or_default();
        let table = self.links.read();
        danm_core::netpol::named_networks(&spec, namespace)
            .into_iter()
            .filter(|(_, key)| !table.knows(key))
            .map(|(field, key)| {
                format!("{field}: {key} does not exist (yet): it selects nothing until it does")
            })
            .collect()
    }

    fn tenant_config(&self, operation: Operation, object: &Value, old: Option<&Value>) -> Outcome {
        if operation == Operation::Create && !self.tenants.is_ready() {
            return Outcome::Failed(TenantsError::NotReady.to_string());
        }
        let other = self.tenants.current().map(|c| c.name_any());
        let decided = admit::admit_tenant_config(&TenantConfigRequest {
            operation,
            object,
            old,
            other: other.as_deref(),
        });
        match decided {
            Ok(admitted) => Outcome::Allowed(Box::new(admitted)),
            Err(d) => Outcome::Denied(d),
        }
    }

    async fn network(&self, request: &NetworkRequest<'_>, uid: &str, dry_run: bool) -> Outcome {
        if request.kind == NetworkKind::TenantNetwork && request.operation == Operation::Create {
            return match self.tenants.admit_create(request, uid, dry_run).await {
                Ok(Ok(a)) => Outcome::Allowed(Box::new(a)),
                Ok(Err(d)) => Outcome::Denied(d),
                Err(e) => Outcome::Failed(e.to_string()),
            };
        }
        if !self.links.is_synced() {
            return Outcome::Failed(
                "the network index has not listed the API server's networks yet; try again".into(),
            );
        }
        let connected = if request.operation == Operation::Create {
            None
        } else {
            if !self.usage.is_synced() {
                return Outcome::Failed(
                    "the DanmEp index has not listed the API server's DanmEps yet; try again"
                        .into(),
                );
            }
            let key = NetworkKey::new(request.kind, request.namespace, request.name);
            self.usage.connected_pod(&key)
        };
        let mut never = |_: usize| 0;
        match admit_network(
            request,
            &mut Environment {
                tenant_config: None,
                connected_pod: connected.as_deref(),
                choose: &mut never,
                reservation_token: uid,
                links: &self.links.read(),
            },
        ) {
            Ok(a) => Outcome::Allowed(Box::new(a)),
            Err(d) => Outcome::Denied(d),
        }
    }
}
