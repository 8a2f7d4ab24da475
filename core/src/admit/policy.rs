//! A DanmNetworkPolicy on CREATE and UPDATE: what the CRD's schema and validation rules
//! cannot say within the API server's cost budget, its label selectors (an operator
//! Kubernetes knows, values as the operator needs), refused naming each field at fault as
//! the API server refuses an invalid NetworkPolicy.

use serde_json::Value;

use super::{Denial, parse_object};
use crate::netpol::invalid_selectors;
use crate::network::{FieldProblem, Rule};

/// Admits the policy `object`, or says every selector that is wrong.
pub fn admit_policy(object: &Value) -> Result<(), Denial> {
    let subject = format!(
        "DanmNetworkPolicy {}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    );
    let spec: danm_crds::DanmNetworkPolicySpec = parse_object(&object["spec"], "spec")
        .map_err(|problem| Denial::new(subject.clone(), vec![problem]))?;
    let problems: Vec<FieldProblem> = invalid_selectors(&spec)
        .into_iter()
        .map(|(field, e)| {
            let text = e.to_string();
            // The error starts with the selector's own part of the path.
            let (inner, message) = text.split_once(": ").unwrap_or(("", &text));
            FieldProblem {
                field: format!("{field}.{inner}"),
                message: message.to_owned(),
                rule: Rule::Ours,
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Denial::new(subject, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(spec: Value) -> Value {
        json!({"apiVersion": "danm.io/v1", "kind": "DanmNetworkPolicy",
               "metadata": {"name": "p", "namespace": "ns"}, "spec": spec})
    }

    #[test]
    fn valid_selectors_are_admitted() {
        let spec = json!({
            "podSelector": {"matchExpressions": [
                {"key": "app", "operator": "In", "values": ["a"]},
                {"key": "tier", "operator": "Exists"}]},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}},
                                   "podSelector": {"matchExpressions": [
                                       {"key": "app", "operator": "NotIn", "values": ["b"]}]}}]}]
        });
        assert_eq!(admit_policy(&policy(spec)), Ok(()));
    }

    #[test]
    fn every_invalid_selector_is_named_by_its_field() {
        let spec = json!({
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["a"]}]},
            "ingress": [{"from": [
                {"podSelector": {}},
                {"namespaceSelector": {"matchExpressions": [{"key": "t", "operator": "In"}]}}]}],
            "egress": [{"to": [{"podSelector": {"matchExpressions": [
                {"key": "a", "operator": "Exists"},
                {"key": "b", "operator": "DoesNotExist", "values": ["x"]}]}}]}]
        });
        let denial = admit_policy(&policy(spec)).unwrap_err();
        assert_eq!(denial.subject, "DanmNetworkPolicy ns/p");
        let fields: Vec<&str> = denial.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.podSelector.matchExpressions[0].operator",
                "spec.ingress[0].from[1].namespaceSelector.matchExpressions[0].values",
                "spec.egress[0].to[0].podSelector.matchExpressions[1].values",
            ]
        );
        assert!(
            denial.problems[0].message.contains("\"Equals\""),
            "{denial}"
        );
        assert!(
            denial.problems[1].message.contains("at least one value"),
            "{denial}"
        );
        assert!(denial.problems[2].message.contains("no values"), "{denial}");
    }

    #[test]
    fn a_spec_that_does_not_fit_the_schema_is_named() {
        let denial = admit_policy(&policy(json!({"podSelector": 3}))).unwrap_err();
        assert_eq!(denial.problems[0].field, "spec.podSelector");
    }
}
