//! The NodeLinkReport kind: what one node's netwatcher says of the host links it keeps.

#[cfg(feature = "kube")]
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The host links of one node, as its netwatcher last found them (cluster scoped, named
/// after the node, owned by the Node so that it goes with it). Written only when it
/// changes; ipamd's status writer sums the reports into each network's `status.links`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "kube", derive(CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "danm.io",
        version = "v1",
        kind = "NodeLinkReport",
        shortname = "nlr",
        printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".spec.readyCount"}"#,
        printcolumn = r#"{"name":"Failing","type":"integer","jsonPath":".spec.failingCount"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodeLinkReportSpec {
    /// The networks whose host link is in place on this node, sorted (`DanmNet telco/sig`,
    /// `ClusterNetwork sig`: a network key as the suite prints it).
    #[serde(default)]
    pub ready: Vec<String>,
    /// The networks whose host link this node cannot keep, and why.
    #[serde(default)]
    pub failing: Vec<LinkFailure>,
    /// `ready`'s length (for the printer column).
    #[serde(default)]
    pub ready_count: u32,
    /// `failing`'s length (for the printer column).
    #[serde(default)]
    pub failing_count: u32,
}

/// One network whose host link a node cannot keep.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LinkFailure {
    /// The network (`DanmNet telco/sig`).
    #[schemars(length(max = 512))]
    pub network: String,
    /// netwatcher's reason (`HostDeviceMissing`, `LinkConflict`, ...) and what it says.
    #[schemars(length(max = 1024))]
    pub reason: String,
}
