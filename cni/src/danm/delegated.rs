//! Delegated interfaces: which configuration a network's interface runs (its file, or
//! DANM's generated one for an `sriov` network), the SR-IOV device kubelet gave the pod, and
//! the `danm-ipam` section that hands the delegate the addresses ipamd gave.

use std::path::Path;

use danm_proto::v1 as pb;
use serde_json::{Value, json};

use super::DanmConfig;
use crate::delegate::{self, Delegation};
use crate::ipamd;
use crate::protocol::{CniError, ErrorCode, Request};

/// How a delegated interface is built: its configuration file, or for an `sriov` network
/// without one, DANM's generated sriov configuration on the pod's virtual function.
pub(super) fn delegation_for(
    config: &DanmConfig,
    request: &Request,
    plan: &pb::InterfacePlan,
    device: Option<&str>,
) -> Result<Delegation, CniError> {
    if plan.network_type != "sriov" || Delegation::has_file(&config.cni_dir, &plan.network_id) {
        return Delegation::load(&config.cni_dir, &plan.network_id, &plan.network_type);
    }
    let device = device.ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "an sriov network needs Options.device_pool (the device plugin's resource)",
            String::new(),
        )
    })?;
    let master = delegate::pf_name(Path::new("/sys"), device)?;
    Ok(Delegation::sriov(
        &request.version,
        &plan.network_id,
        &master,
        plan.vlan,
        device,
    ))
}

pub(super) fn sriov_device(
    config: &DanmConfig,
    request: &Request,
    pool: &str,
    used: &[String],
) -> Result<String, CniError> {
    let pod_uid = request.arg("K8S_POD_UID").ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            "K8S_POD_UID is needed in CNI_ARGS for a device-pool network",
            String::new(),
        )
    })?;
    let text = std::fs::read(&config.kubelet_checkpoint).map_err(|e| {
        CniError::new(
            ErrorCode::IoFailure,
            format!("cannot read {}", config.kubelet_checkpoint.display()),
            e.to_string(),
        )
    })?;
    let checkpoint: Value = serde_json::from_slice(&text).map_err(|e| {
        CniError::new(
            ErrorCode::DecodeFailure,
            format!("{} is not JSON", config.kubelet_checkpoint.display()),
            e.to_string(),
        )
    })?;
    delegate::device_id(&checkpoint, pod_uid, pool, used).ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            format!("no device of {pool} is allocated to pod {pod_uid}"),
            "the pod must request the device pool's resource".to_owned(),
        )
    })
}

/// The `ipam` section of a delegated interface whose addresses ipamd gave (None when the
/// pod asked for none): `danm-ipam`, naming exactly those addresses.
pub(super) fn ipamd_ipam(config: &DanmConfig, plan: &pb::InterfacePlan) -> Option<Value> {
    if plan.ip.is_empty() && plan.ip6.is_empty() {
        return None;
    }
    let network = plan.network.clone().unwrap_or_default();
    let mut ipam = json!({
        "type": "danm-ipam",
        "ipamd": config.ipamd,
        "network": network.name,
        "kind": ipamd::kind_name(&network),
        "namespace": network.namespace,
        "ip": plan.ip,
        "ip6": plan.ip6,
    });
    if let Some(tls) = &config.tls {
        ipam["ipamdTLS"] = ipamd::tls_json(tls);
    }
    Some(ipam)
}
