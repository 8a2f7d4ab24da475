//! `k8s.cni.cncf.io/v1` NetworkAttachmentDefinition, from the Network Plumbing Working
//! Group's specification (Multus' kind): a CNI configuration in `spec.config`, as a string.

#[cfg(feature = "kube")]
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// A NetworkAttachmentDefinition's spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "k8s.cni.cncf.io",
        version = "v1",
        kind = "NetworkAttachmentDefinition",
        plural = "network-attachment-definitions",
        namespaced,
        schema = "disabled"
    )
)]
pub struct NetworkAttachmentDefinitionSpec {
    /// The CNI configuration (JSON, one plugin or a list), as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Fields this suite does not use.
    #[serde(flatten)]
    pub rest: std::collections::BTreeMap<String, serde_json::Value>,
}
