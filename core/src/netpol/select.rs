//! Label selectors, as Kubernetes evaluates them: every `matchLabels` pair and every
//! `matchExpressions` requirement must hold; an empty selector matches everything.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A selector Kubernetes would refuse; it matches nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// An operator other than In, NotIn, Exists and DoesNotExist.
    #[error(
        "matchExpressions[{index}].operator: {operator:?} is not In, NotIn, Exists or DoesNotExist"
    )]
    Operator {
        /// The requirement's index.
        index: usize,
        /// The operator.
        operator: String,
    },
    /// In or NotIn with no value, or Exists or DoesNotExist with some.
    #[error("matchExpressions[{index}].values: {operator} must have {}", if *.must_have { "at least one value" } else { "no values" })]
    Values {
        /// The requirement's index.
        index: usize,
        /// The operator.
        operator: String,
        /// Whether the operator needs values.
        must_have: bool,
    },
}

/// Whether `selector` matches `labels`; an invalid selector is an error.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    let mut matches = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    for (index, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let values = requirement.values.as_deref().unwrap_or_default();
        let value = labels.get(&requirement.key);
        let operator = requirement.operator.as_str();
        let needs_values = match operator {
            "In" | "NotIn" => true,
            "Exists" | "DoesNotExist" => false,
            _ => {
                return Err(SelectorError::Operator {
                    index,
                    operator: operator.to_owned(),
                });
            }
        };
        if needs_values == values.is_empty() {
            return Err(SelectorError::Values {
                index,
                operator: operator.to_owned(),
                must_have: needs_values,
            });
        }
        matches &= match operator {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            _ => value.is_none(),
        };
    }
    Ok(matches)
}

/// Every label selector of a policy that Kubernetes would refuse, with the path of the
/// field at fault (`spec.ingress[0].from[1].podSelector.matchExpressions[0].operator`):
/// what the webhook refuses at admission, since the CRD's schema cannot say it within the
/// API server's validation cost budget.
pub fn invalid_selectors(spec: &danm_crds::DanmNetworkPolicySpec) -> Vec<(String, SelectorError)> {
    let mut selectors: Vec<(String, &LabelSelector)> =
        vec![("spec.podSelector".to_owned(), &spec.pod_selector)];
    for (field, peer) in super::peers_of(spec) {
        for (name, selector) in [
            ("podSelector", &peer.pod_selector),
            ("namespaceSelector", &peer.namespace_selector),
        ] {
            if let Some(selector) = selector {
                selectors.push((format!("{field}.{name}"), selector));
            }
        }
    }
    selectors
        .into_iter()
        .filter_map(|(field, selector)| {
            selector_matches(selector, &BTreeMap::new())
                .err()
                .map(|e| (field, e))
        })
        .collect()
}
