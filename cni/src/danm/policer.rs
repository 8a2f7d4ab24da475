//! The call to the node's policer before a new sandbox's interfaces are built (with
//! `policer` in `00-danm.conf`): the policer answers once the pod's nftables table is in
//! the sandbox's network namespace, or once it has decided that no policy selects the pod.
//! Any failure fails the ADD (which then releases everything), so a pod a policy selects
//! never has an interface before its rules (`danm_policer::gate`).

use std::path::Path;
use std::time::Duration;

use danm_proto::gate::v1::PodStartingRequest;
use danm_proto::v1 as pb;

use crate::protocol::Request;
use crate::protocol::{CniError, ErrorCode};

/// Waits, at most `limit`, for the policer at `socket` to load the sandbox's rules; returns
/// whether a policy isolates the pod.
pub async fn wait_for_rules(
    socket: &Path,
    request: &Request,
    plans: &[pb::InterfacePlan],
    limit: Duration,
) -> Result<bool, CniError> {
    let unreachable = |e: &dyn std::fmt::Display| {
        CniError::new(
            ErrorCode::TryAgainLater,
            format!(
                "policer: its gate at {} (00-danm.conf's `policer`) cannot be reached: no \
                 interface was built, as the pod's network policies could not be enforced",
                socket.display()
            ),
            e.to_string(),
        )
    };
    let mut gate = danm_proto::gate::connect(socket, limit)
        .await
        .map_err(|e| unreachable(&chain(&e)))?;
    let answer = gate
        .pod_starting(PodStartingRequest {
            pod_namespace: request.pod_namespace().to_owned(),
            pod_name: request.arg("K8S_POD_NAME").unwrap_or_default().to_owned(),
            pod_uid: request.arg("K8S_POD_UID").unwrap_or_default().to_owned(),
            container_id: request.container_id.clone(),
            netns: request.netns.clone(),
            interfaces: plans.iter().map(|p| p.ifname.clone()).collect(),
        })
        .await;
    match answer {
        Ok(answer) => Ok(answer.into_inner().isolated),
        Err(status) if status.code() == tonic::Code::Unavailable => Err(unreachable(&status)),
        Err(status) => Err(CniError::new(
            ErrorCode::TryAgainLater,
            "policer: the pod's network policy rules are not in place, so no interface was built",
            format!("{:?}: {}", status.code(), status.message()),
        )),
    }
}

/// An error with its sources ("transport error: No such file or directory").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
