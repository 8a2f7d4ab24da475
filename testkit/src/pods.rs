//! Pods as the controllers under test see them on a control plane without nodes: bound to a
//! node by name, with one container that never runs (its image is in no registry), and
//! made Ready or not by writing their status as a kubelet would.

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

/// The image of [`pod`]'s container: a name no registry answers.
pub const IMAGE: &str = "registry.invalid/app:1";

/// A pod named `name`, bound to `node`, with `labels` and one container `app`; its
/// namespace is the [`Api`] it is created through.
pub fn pod(name: &str, node: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: (!labels.is_empty()).then(|| {
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "app".into(),
                image: Some(IMAGE.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Writes pod `name`'s status as its kubelet would: Running, with the Ready condition
/// `ready`.
pub async fn set_ready(pods: &Api<Pod>, name: &str, ready: bool) -> Result<Pod, kube::Error> {
    let status = if ready { "True" } else { "False" };
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": status}]}
        })),
    )
    .await
}
