//! DanmNetworkPolicies the API server refuses, as it refuses invalid NetworkPolicies: the
//! CRD's schema and validation rules (CEL) name the field; valid ones are admitted.

use danm_crds::DanmNetworkPolicy;
use danm_testkit::control_plane::ControlPlane;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

async fn create(api: &Api<DanmNetworkPolicy>, name: &str, spec: Value) -> Result<(), String> {
    let policy: DanmNetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "danm.io/v1", "kind": "DanmNetworkPolicy",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &policy)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn invalid_policies_are_refused_naming_the_field() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("dnetpol").await;
    let api: Api<DanmNetworkPolicy> = Api::namespaced(plane.client().await, &ns);
    let peer = |p: Value| json!({"podSelector": {}, "ingress": [{"from": [p]}]});
    let port = |p: Value| json!({"podSelector": {}, "ingress": [{"ports": [p]}]});
    let refused = [
        (
            json!({"podSelector": {}, "policyTypes": ["Inbound"]}),
            "spec.policyTypes",
            "Ingress or Egress",
        ),
        (
            peer(json!({"ipBlock": {"cidr": "10.0.0.0/33"}})),
            "ipBlock.cidr",
            "must be a CIDR",
        ),
        (
            peer(json!({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}})),
            "ipBlock.except",
            "strictly inside",
        ),
        (
            peer(json!({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16"]}})),
            "ipBlock.except",
            "strictly inside",
        ),
        (
            peer(json!({"ipBlock": {"cidr": "fd00::/64", "except": ["10.0.0.0/24"]}})),
            "ipBlock.except",
            "strictly inside",
        ),
        (
            peer(json!({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}})),
            "from[0]",
            "ipBlock cannot be given",
        ),
        (peer(json!({})), "from[0]", "a peer needs"),
        (
            peer(json!({"networkSelector": [{"name": "x", "type": "Bridge"}]})),
            "networkSelector[0].type",
            "\"ClusterNetwork\"",
        ),
        (
            peer(json!({"networkSelector": [{"name": ""}]})),
            "networkSelector[0].name",
            "",
        ),
        (
            port(json!({"protocol": "ICMP"})),
            "ports[0].protocol",
            "\"SCTP\"",
        ),
        (port(json!({"port": 0})), "ports[0].port", "1 to 65535"),
        (port(json!({"port": 70000})), "ports[0].port", "1 to 65535"),
        (
            port(json!({"port": "Not_A_Name"})),
            "ports[0].port",
            "container port's name",
        ),
        (
            port(json!({"port": "a-name-much-too-long"})),
            "ports[0].port",
            "",
        ),
        (
            port(json!({"port": 90, "endPort": 80})),
            "ports[0].endPort",
            "at least port",
        ),
        (
            port(json!({"port": "a--b"})),
            "ports[0].port",
            "container port's name",
        ),
        (peer(json!({"networkSelector": []})), "networkSelector", ""),
        (
            json!({"podSelector": {}, "networkSelector": []}),
            "spec.networkSelector",
            "",
        ),
        (
            port(json!({"port": "http", "endPort": 90})),
            "ports[0].endPort",
            "numbered port",
        ),
        (
            json!({"podSelector": {}, "networkSelector": [{"name": "n", "type": "Other"}]}),
            "spec.networkSelector[0].type",
            "\"DanmNet\"",
        ),
    ];
    for (i, (spec, field, words)) in refused.into_iter().enumerate() {
        let err = create(&api, &format!("bad-{i}"), spec.clone())
            .await
            .expect_err(&format!("admitted: {spec}"));
        assert!(
            err.contains(field) && err.contains(words),
            "{spec}: the refusal should name {field} and say {words:?}: {err}"
        );
    }
    let admitted = [
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        peer(json!({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24", "10.0.2.7/32"]}})),
        peer(json!({"ipBlock": {"cidr": "fd00::/48", "except": ["fd00:0:0:1::/64"]}})),
        peer(
            json!({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}, "podSelector": {"matchLabels": {"app": "x"}}}),
        ),
        peer(
            json!({"networkSelector": [{"name": "signal"}, {"name": "media", "type": "ClusterNetwork"}]}),
        ),
        port(json!({"port": 80, "endPort": 90, "protocol": "UDP"})),
        port(json!({"port": "serve-80-tcp"})),
        port(json!({"protocol": "SCTP"})),
    ];
    for (i, spec) in admitted.into_iter().enumerate() {
        create(&api, &format!("good-{i}"), spec.clone())
            .await
            .unwrap_or_else(|e| panic!("{spec} refused: {e}"));
    }
}
