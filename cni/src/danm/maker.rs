//! How each planned interface is made and unmade: the one decision ADD and DEL share, so
//! that DEL always unmakes what ADD made. An interface is either a link built here with
//! netlink (`ipvlan`, `macvlan`) or a delegation to another CNI plugin, configured the same
//! way at ADD and at DEL: its configuration, its SR-IOV device (handed out in interface
//! order) and its IPAM (`danm-ipam` naming the addresses ipamd gave).

use danm_netlink::Backend;
use danm_proto::v1 as pb;

use super::DanmConfig;
use super::delegated::{delegation_for, ipamd_ipam, sriov_device};
use crate::delegate::Delegation;
use crate::protocol::{CniError, Request};

/// How one interface is made.
#[derive(Debug)]
pub(super) enum Maker {
    /// Built here with netlink.
    Link(Backend),
    /// Delegated to the plugin of the network's configuration.
    Delegated(Delegation),
}

/// Whether a device that cannot be found fails the interface (ADD: the delegate needs it)
/// or is left out (DEL: the device may be gone with the pod, and the delegate's DEL must
/// still run so that nothing stays behind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Devices {
    Required,
    BestEffort,
}

/// How a network type is built here; `None`: delegated.
pub(super) fn backend(network_type: &str) -> Option<Backend> {
    match danm_core::network::effective_network_type(network_type) {
        "ipvlan" => Some(Backend::Ipvlan),
        "macvlan" => Some(Backend::Macvlan),
        _ => None,
    }
}

/// The maker of each plan, in the plans' order (SR-IOV devices are handed out in interface
/// order, so DEL finds the devices ADD used); a plan whose delegation cannot be configured
/// gets its error.
pub(super) fn makers(
    config: &DanmConfig,
    request: &Request,
    plans: &[pb::InterfacePlan],
    devices: Devices,
) -> Vec<Result<Maker, CniError>> {
    let mut taken: Vec<String> = Vec::new();
    plans
        .iter()
        .map(|plan| {
            if let Some(backend) = backend(&plan.network_type) {
                return Ok(Maker::Link(backend));
            }
            let device = if plan.device_pool.is_empty() {
                None
            } else {
                match sriov_device(config, request, &plan.device_pool, &taken) {
                    Ok(device) => Some(device),
                    Err(e) if devices == Devices::Required => return Err(e),
                    Err(_) => None,
                }
            };
            taken.extend(device.clone());
            let mut delegation = delegation_for(config, request, plan, device.as_deref())?;
            if let Some(ipam) = ipamd_ipam(config, plan) {
                delegation.set_ipam(ipam);
            }
            if let Some(device) = &device {
                delegation.set_device_id(device);
            }
            Ok(Maker::Delegated(delegation))
        })
        .collect()
}
