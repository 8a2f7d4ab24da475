//! The node's NodeLinkReport: written by server-side apply after a sync, only when it
//! differs from the last one written, and owned by the Node (the garbage collector deletes
//! it with the node).

use danm_crds::{NodeLinkReport, NodeLinkReportSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};

/// Writes this node's report.
pub(super) struct Reporter {
    client: kube::Client,
    node: String,
    /// The Node's reference, once read (None: not yet, or the Node cannot be read).
    owner: Option<OwnerReference>,
    /// The report last written (None: none yet, or the last write failed).
    written: Option<NodeLinkReportSpec>,
}

impl Reporter {
    pub(super) fn new(client: kube::Client, node: &str) -> Reporter {
        Reporter {
            client,
            node: node.to_owned(),
            owner: None,
            written: None,
        }
    }

    /// Writes `report` unless it is the one last written; a failure is logged and the
    /// next sync tries again.
    pub(super) async fn publish(&mut self, report: NodeLinkReportSpec) {
        if self.written.as_ref() == Some(&report) {
            return;
        }
        if self.owner.is_none() {
            match Api::<Node>::all(self.client.clone()).get(&self.node).await {
                Ok(node) => {
                    self.owner = node.controller_owner_ref(&()).map(|mut r| {
                        r.controller = None;
                        r.block_owner_deletion = None;
                        r
                    })
                }
                Err(e) => {
                    tracing::warn!(node = %self.node, error = %e, "cannot read this node: its link report is written without an owner (not deleted with the node)");
                }
            }
        }
        let mut object = NodeLinkReport::new(&self.node, report.clone());
        object.metadata.owner_references = self.owner.clone().map(|o| vec![o]);
        let params = PatchParams::apply("danm-netwatcher").force();
        match Api::<NodeLinkReport>::all(self.client.clone())
            .patch(&self.node, &params, &Patch::Apply(&object))
            .await
        {
            Ok(_) => {
                tracing::info!(
                    node = %self.node,
                    ready = report.ready_count,
                    failing = report.failing_count,
                    "link report written"
                );
                self.written = Some(report);
            }
            Err(e) => {
                self.written = None;
                tracing::warn!(node = %self.node, error = %e, "cannot write the link report; the next sync tries again");
            }
        }
    }
}
