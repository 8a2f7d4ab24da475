//! The policer's scenario on a real node, shared by `real_node_policer.rs` (the policer on
//! the host) and `real_node_deploy_policer.rs` (its DaemonSet from `deploy/`): the
//! `internal` network, a DanmNetworkPolicy that lets only `app: allowed` pods reach the
//! servers on it on port 5555, and the pods (a `netcheck` container each, on the namespace's
//! `default` network and on `internal`).

/// How the manifests run containers: non-root, read-only root, no capability.
pub const SECURITY: &str = "{runAsNonRoot: true, runAsUser: 65535, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}";

/// The `internal` DanmNet of namespace `real-node` (macvlan over `link`, 198.18.10.0/24)
/// and the policy `servers`.
pub fn internal_and_policy(link: &str) -> String {
    format!(
        r#"
apiVersion: danm.io/v1
kind: DanmNet
metadata: {{name: internal, namespace: real-node}}
spec:
  NetworkID: internal
  NetworkType: macvlan
  Options:
    host_device: {link}
    cidr: 198.18.10.0/24
    allocation_pool: {{start: 198.18.10.10, end: 198.18.10.20}}
---
apiVersion: danm.io/v1
kind: DanmNetworkPolicy
metadata: {{name: servers, namespace: real-node}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - from:
    - podSelector: {{matchLabels: {{app: allowed}}}}
      networkSelector: [{{name: internal, type: DanmNet}}]
    ports: [{{port: 5555}}]
"#
    )
}

/// A pod `name` labelled `app: <app>` on `default` and `internal`, running `netcheck` with
/// `args` (a YAML list), never restarted.
pub fn pod(name: &str, app: &str, args: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: real-node
  labels: {{app: {app}}}
  annotations:
    danm.io/interfaces: '[{{"network":"default","ip":"dynamic"}},{{"network":"internal","ip":"dynamic"}}]'
spec:
  automountServiceAccountToken: false
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: danm.test/netcheck:1
    imagePullPolicy: Never
    args: {args}
    securityContext: {SECURITY}
"#
    )
}

/// The server's address on `internal`, from its DanmEp.
pub async fn server_address(client: &kube::Client) -> String {
    use kube::api::{Api, ListParams};
    let eps: Api<danm_crds::DanmEp> = Api::namespaced(client.clone(), "real-node");
    let address = eps
        .list(&ListParams::default())
        .await
        .expect("DanmEps")
        .items
        .into_iter()
        .find(|e| e.spec.pod == "server" && e.spec.network_name == "internal")
        .map(|e| e.spec.interface.address)
        .expect("the server's internal DanmEp");
    address.split('/').next().unwrap_or_default().to_owned()
}
