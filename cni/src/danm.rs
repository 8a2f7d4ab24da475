//! `danm`, the metaplugin kubelet calls: one Attach to ipamd per ADD (which resolves the
//! pod's `danm.io/interfaces`, allocates every address and names every interface), with a
//! policer configured a wait for the pod's network policy rules ([`policer`]), then every
//! interface in parallel within DANM's overall limit of 10 s: `ipvlan` (L2) and
//! `macvlan` (bridge) are built here with netlink, anything else is delegated. One result
//! for the runtime; if any interface fails, what this ADD did is undone and every error is
//! reported. How each interface is made, and so unmade at DEL, is decided once, in
//! [`maker`].

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use danm_proto::v1 as pb;
use futures::future::join_all;
use ipnet::IpNet;

use crate::delegate::Delegation;
use crate::exec::Plugin;
use crate::ipam_plugin;
use crate::ipamd;
use crate::previous;
use crate::protocol::{CniError, CniResult, ErrorCode, Interface, IpConfig, Request, Route};
use danm_netlink::{self as netlink, Backend, LinkId, Netlink};

mod config;
mod delegated;
mod maker;
mod policer;

pub use config::DanmConfig;
use maker::{Devices, Maker, backend, makers};

/// DANM's limit for a whole ADD.
pub const ADD_LIMIT: Duration = Duration::from_secs(10);

/// The plugin.
#[derive(Debug, Default)]
pub struct Danm;

/// The host link a built-in interface hangs off: netwatcher's VxLAN or VLAN link, or the
/// network's host device (DANM's names, from `danm_core::hostlinks`, as netwatcher names
/// them).
pub fn parent_device(plan: &pb::InterfacePlan) -> String {
    danm_core::hostlinks::parent_link(&plan.network_id, plan.vlan, plan.vxlan, &plan.host_device)
}

/// Why the parent link is not this network's: a VxLAN or VLAN link of the right name whose
/// id (or device) is another network's. Tenants choose NetworkIDs, so a link named after
/// this network's may hold another tenant's segment: attaching to it would put the pod
/// there. `None` when the parent is right (or is a plain host device).
fn parent_mismatch(
    plan: &pb::InterfacePlan,
    parent: &str,
    id: Option<LinkId>,
    device_index: Option<u32>,
) -> Option<String> {
    // The device under the link must be the network's own: a network without one (or
    // whose device this node lacks) cannot tell its link from another's.
    let lower_ok = |index: u32| device_index == Some(index);
    let wanted = if plan.vxlan > 0 {
        format!("VxLAN {} over {}", plan.vxlan, plan.host_device)
    } else if plan.vlan > 0 {
        format!("VLAN {} on {}", plan.vlan, plan.host_device)
    } else {
        return None;
    };
    let found = match id {
        Some(LinkId::Vxlan { vni, lower }) => {
            if plan.vxlan > 0 && vni == plan.vxlan && lower_ok(lower) {
                return None;
            }
            format!("VxLAN {vni}")
        }
        Some(LinkId::Vlan { id, lower }) => {
            if plan.vxlan == 0 && u32::from(id) == plan.vlan && lower_ok(lower) {
                return None;
            }
            format!("VLAN {id}")
        }
        None => "not a VLAN or VxLAN link".to_owned(),
    };
    Some(format!(
        "host link {parent} is {found} (or on another device), not this network's {wanted}: \
         another network holds the name (see the network's Events); nothing was attached"
    ))
}

/// What one interface of an ADD did, so it can be undone.
enum Built {
    Link {
        ifname: String,
        table: u32,
    },
    Delegated {
        delegation: Delegation,
        ifname: String,
    },
}

fn failed(plan: &pb::InterfacePlan, code: ErrorCode, e: impl std::fmt::Display) -> CniError {
    CniError::new(
        code,
        format!(
            "interface {} on network {}",
            plan.ifname,
            network_name(plan)
        ),
        e.to_string(),
    )
}

fn network_name(plan: &pb::InterfacePlan) -> String {
    plan.network
        .as_ref()
        .map(|n| n.name.clone())
        .unwrap_or_default()
}

fn parse_net(text: &str, what: &str, plan: &pb::InterfacePlan) -> Result<Option<IpNet>, CniError> {
    if text.is_empty() || text == "none" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|e| failed(plan, ErrorCode::Refused, format!("{what} {text:?}: {e}")))
}

fn parse_routes(
    routes: &[pb::Route],
    field: &str,
    plan: &pb::InterfacePlan,
) -> Result<Vec<Route>, CniError> {
    routes
        .iter()
        .map(|r| {
            let dst = r.destination.parse().map_err(|e| {
                failed(
                    plan,
                    ErrorCode::InvalidConfig,
                    format!("{field}: destination {:?}: {e}", r.destination),
                )
            })?;
            let gw = if r.gateway.is_empty() {
                None
            } else {
                Some(r.gateway.parse::<IpAddr>().map_err(|e| {
                    failed(
                        plan,
                        ErrorCode::InvalidConfig,
                        format!("{field}: gateway {:?}: {e}", r.gateway),
                    )
                })?)
            };
            Ok(Route { dst, gw })
        })
        .collect()
}

impl Danm {
    async fn build_link(
        &self,
        request: &Request,
        plan: &pb::InterfacePlan,
        backend: Backend,
    ) -> Result<(Built, CniResult), (Option<Built>, CniError)> {
        let fail = |code, e: String| (None, failed(plan, code, e));
        if let Err(e) = danm_core::names::plain(&plan.network_id)
            && (plan.vlan > 0 || plan.vxlan > 0)
        {
            return Err(fail(
                ErrorCode::InvalidConfig,
                format!(
                    "NetworkID {:?} cannot name a host link: {e}",
                    plan.network_id
                ),
            ));
        }
        let parent = parent_device(plan);
        let host = Netlink::host().map_err(|e| fail(ErrorCode::InterfaceFailed, e.to_string()))?;
        let Some((parent_index, id)) = host
            .link_id(&parent)
            .await
            .map_err(|e| fail(ErrorCode::InterfaceFailed, e.to_string()))?
        else {
            return Err(fail(
                ErrorCode::InterfaceFailed,
                format!("host device {parent:?} does not exist on this node"),
            ));
        };
        if plan.vlan > 0 || plan.vxlan > 0 {
            let device = host
                .find(&plan.host_device)
                .await
                .map_err(|e| fail(ErrorCode::InterfaceFailed, e.to_string()))?
                .map(|(index, _)| index);
            if let Some(why) = parent_mismatch(plan, &parent, id, device) {
                return Err(fail(ErrorCode::InterfaceFailed, why));
            }
        }
        let netns = std::fs::File::open(&request.netns).map_err(|e| {
            (
                None,
                CniError::new(
                    ErrorCode::UnknownContainer,
                    format!("network namespace {}", request.netns),
                    e.to_string(),
                ),
            )
        })?;
        let message =
            netlink::link_request(backend, &plan.ifname, parent_index, netlink::raw_fd(&netns));
        host.create(
            message,
            &format!("creating {backend:?} link {} on {parent}", plan.ifname),
        )
        .await
        .map_err(|e| fail(ErrorCode::InterfaceFailed, e.to_string()))?;
        let built = Built::Link {
            ifname: plan.ifname.clone(),
            table: plan.rt_tables,
        };
        match configure(request, plan).await {
            Ok(result) => Ok((built, result)),
            Err(e) => Err((Some(built), e)),
        }
    }

    async fn delegate(
        &self,
        request: &Request,
        plan: &pb::InterfacePlan,
        delegation: Delegation,
    ) -> Result<(Built, CniResult), (Option<Built>, CniError)> {
        let outcome = delegation.add(request, &plan.ifname).await;
        let built = Built::Delegated {
            delegation,
            ifname: plan.ifname.clone(),
        };
        match outcome {
            Ok(result) => Ok((built, result)),
            // The delegate failed half-way: its DEL cleans what it did.
            Err(e) => Err((Some(built), in_interface(plan, e))),
        }
    }

    async fn undo(&self, request: &Request, built: Built) -> Result<(), String> {
        match built {
            Built::Link { ifname, table } => {
                let pod =
                    Netlink::in_netns(Path::new(&request.netns)).map_err(|e| e.to_string())?;
                // The link takes its routes along; policy rules stay unless removed.
                if table > 0 {
                    pod.delete_rules(table).await.map_err(|e| e.to_string())?;
                }
                pod.delete(&ifname)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Built::Delegated { delegation, ifname } => delegation
                .del(request, &ifname)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// `e`, naming the interface and network it is about.
fn in_interface(plan: &pb::InterfacePlan, e: CniError) -> CniError {
    CniError::new(
        e.code,
        format!(
            "interface {} on network {}: {}",
            plan.ifname,
            network_name(plan),
            e.msg
        ),
        e.details,
    )
}

/// Addresses, link up, routes, policy routes, inside the pod's namespace.
async fn configure(request: &Request, plan: &pb::InterfacePlan) -> Result<CniResult, CniError> {
    let nl = |e: netlink::NetError| failed(plan, ErrorCode::InterfaceFailed, e);
    let pod = Netlink::in_netns(Path::new(&request.netns)).map_err(nl)?;
    let (index, mac) = pod.find(&plan.ifname).await.map_err(nl)?.ok_or_else(|| {
        failed(
            plan,
            ErrorCode::InterfaceFailed,
            "the link vanished after its creation",
        )
    })?;
    let v4 = parse_net(&plan.ip, "ip", plan)?;
    let v6 = parse_net(&plan.ip6, "ip6", plan)?;
    let mut result = CniResult {
        interfaces: vec![Interface {
            name: plan.ifname.clone(),
            mac,
            sandbox: request.netns.clone(),
        }],
        ..Default::default()
    };
    for address in [v4, v6].into_iter().flatten() {
        pod.add_address(index, address).await.map_err(nl)?;
        result.ips.push(IpConfig {
            address,
            gateway: None,
            interface: Some(0),
        });
    }
    for (field, routes) in [("routes", &plan.routes), ("routes6", &plan.routes6)] {
        for route in parse_routes(routes, field, plan)? {
            pod.add_route(index, route.dst, route.gw, None)
                .await
                .map_err(nl)?;
            result.routes.push(route);
        }
    }
    for (field, routes, source) in [
        ("proutes", &plan.proutes, v4),
        ("proutes6", &plan.proutes6, v6),
    ] {
        if routes.is_empty() {
            continue;
        }
        if plan.rt_tables == 0 {
            return Err(failed(
                plan,
                ErrorCode::InvalidConfig,
                format!("{field} asked but the network has no rt_tables for policy routes"),
            ));
        }
        let source = source.ok_or_else(|| {
            failed(
                plan,
                ErrorCode::InvalidConfig,
                format!("{field} asked but the interface has no address of that family"),
            )
        })?;
        for route in parse_routes(routes, field, plan)? {
            pod.add_route(index, route.dst, route.gw, Some(plan.rt_tables))
                .await
                .map_err(nl)?;
        }
        pod.add_source_rule(source.addr(), plan.rt_tables)
            .await
            .map_err(nl)?;
    }
    Ok(result)
}

/// The interfaces the container holds, as ipamd recorded them (and the connection).
async fn container_interfaces(
    config: &DanmConfig,
    request: &Request,
) -> Result<(ipamd::Client, Vec<pb::InterfacePlan>), CniError> {
    let mut client = ipamd::connect(&config.ipamd, ADD_LIMIT, config.tls.as_ref()).await?;
    let plans = client
        .interfaces(pb::InterfacesRequest {
            container_id: request.container_id.clone(),
            pod_namespace: request.pod_namespace().to_owned(),
        })
        .await
        .map_err(|s| ipamd::cni_error("looking up the container's interfaces", &s))?
        .into_inner()
        .interfaces;
    Ok((client, plans))
}

/// One CNI error out of several, keeping the first one's code.
fn combine(what: &str, errors: Vec<CniError>) -> CniError {
    let code = errors
        .first()
        .map_or(ErrorCode::InterfaceFailed, |e| e.code);
    let details = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    CniError::new(code, what, details)
}

#[async_trait]
impl Plugin for Danm {
    async fn add(&self, request: &Request) -> Result<CniResult, CniError> {
        let started = tokio::time::Instant::now();
        let config = DanmConfig::parse(&request.config)?;
        let mut client = ipamd::connect(&config.ipamd, ADD_LIMIT, config.tls.as_ref()).await?;
        let plans = client
            .attach(pb::AttachRequest {
                pod_namespace: request.pod_namespace().to_owned(),
                pod_name: request.arg("K8S_POD_NAME").unwrap_or_default().to_owned(),
                pod_uid: request.arg("K8S_POD_UID").unwrap_or_default().to_owned(),
                container_id: request.container_id.clone(),
                netns: request.netns.clone(),
                host: ipamd::host_name(),
                interfaces_json: config.interfaces.clone(),
                naming_scheme: config.naming_scheme.clone(),
            })
            .await
            .map_err(|s| ipamd::cni_error("attach", &s))?
            .into_inner()
            .interfaces;
        if let Some(socket) = &config.policer {
            let limit = ADD_LIMIT.saturating_sub(started.elapsed());
            if let Err(e) = policer::wait_for_rules(socket, request, &plans, limit).await {
                let mut errors = vec![e];
                self.release_all(&mut client, request, &mut errors).await;
                return Err(combine("ADD failed and was rolled back", errors));
            }
        }

        let makers = makers(&config, request, &plans, Devices::Required);
        let work = join_all(plans.iter().zip(makers).map(|(plan, maker)| async move {
            match maker {
                Ok(Maker::Link(backend)) => self.build_link(request, plan, backend).await,
                Ok(Maker::Delegated(delegation)) => self.delegate(request, plan, delegation).await,
                Err(e) => Err((None, in_interface(plan, e))),
            }
        }));
        let remaining = ADD_LIMIT.saturating_sub(started.elapsed());
        let outcomes = match tokio::time::timeout(remaining, work).await {
            Ok(outcomes) => outcomes,
            Err(_) => {
                // Whatever was half-built is in the pod's namespace: remove every planned
                // link of the built-in kinds, release everything.
                let mut errors = vec![CniError::new(
                    ErrorCode::TryAgainLater,
                    format!(
                        "ADD did not finish within DANM's limit of {} s",
                        ADD_LIMIT.as_secs()
                    ),
                    String::new(),
                )];
                for plan in plans.iter().filter(|p| backend(&p.network_type).is_some()) {
                    let built = Built::Link {
                        ifname: plan.ifname.clone(),
                        table: plan.rt_tables,
                    };
                    if let Err(e) = self.undo(request, built).await {
                        errors.push(CniError::new(ErrorCode::InterfaceFailed, "rollback", e));
                    }
                }
                self.release_all(&mut client, request, &mut errors).await;
                return Err(combine("ADD failed and was rolled back", errors));
            }
        };
        let mut result = CniResult::default();
        let mut done = Vec::new();
        let mut errors = Vec::new();
        for outcome in outcomes {
            match outcome {
                Ok((built, r)) => {
                    result.merge(r);
                    done.push(built);
                }
                Err((built, e)) => {
                    errors.push(e);
                    done.extend(built);
                }
            }
        }
        if errors.is_empty() {
            return Ok(result);
        }
        for built in done {
            if let Err(e) = self.undo(request, built).await {
                errors.push(CniError::new(ErrorCode::InterfaceFailed, "rollback", e));
            }
        }
        self.release_all(&mut client, request, &mut errors).await;
        Err(combine("ADD failed and was rolled back", errors))
    }

    async fn del(&self, request: &Request) -> Result<(), CniError> {
        let config = DanmConfig::parse(&request.config)?;
        let (mut client, plans) = container_interfaces(&config, request).await?;
        let netns_alive = !request.netns.is_empty() && Path::new(&request.netns).exists();
        let mut errors = Vec::new();
        if plans.is_empty() {
            // Not attached by danm (or already torn down): perhaps by the node's CNI before
            // danm's time.
            if let Err(e) = previous::release(&config.cni_cache_dir, &config.name, request).await {
                errors.push(e);
            }
        }
        let makers = makers(&config, request, &plans, Devices::BestEffort);
        for (plan, maker) in plans.iter().zip(makers) {
            let outcome = match maker {
                // Without the namespace the kernel has removed its links already.
                Ok(Maker::Link(_)) if !netns_alive => Ok(()),
                Ok(Maker::Link(_)) => {
                    let built = Built::Link {
                        ifname: plan.ifname.clone(),
                        table: plan.rt_tables,
                    };
                    self.undo(request, built).await
                }
                // Configured as at ADD: the delegate's IPAM is danm-ipam where ipamd gave
                // the addresses.
                Ok(Maker::Delegated(delegation)) => {
                    let built = Built::Delegated {
                        delegation,
                        ifname: plan.ifname.clone(),
                    };
                    self.undo(request, built).await
                }
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = outcome {
                errors.push(failed(plan, ErrorCode::InterfaceFailed, e));
            }
        }
        self.release_all(&mut client, request, &mut errors).await;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(combine("DEL did not complete", errors))
        }
    }

    async fn check(&self, request: &Request) -> Result<(), CniError> {
        let config = DanmConfig::parse(&request.config)?;
        let (mut client, plans) = container_interfaces(&config, request).await?;
        if plans.is_empty() {
            return Err(CniError::new(
                ErrorCode::UnknownContainer,
                format!("container {} holds no interface", request.container_id),
                String::new(),
            ));
        }
        let pod = Netlink::in_netns(Path::new(&request.netns)).map_err(|e| {
            CniError::new(
                ErrorCode::UnknownContainer,
                "network namespace",
                e.to_string(),
            )
        })?;
        for plan in &plans {
            let owner = pb::Owner {
                container_id: request.container_id.clone(),
                ifname: plan.ifname.clone(),
                pod_namespace: request.pod_namespace().to_owned(),
                ..Default::default()
            };
            client
                .check(pb::CheckRequest {
                    network: plan.network.clone(),
                    owner: Some(owner),
                    ip: plan.ip.clone(),
                    ip6: plan.ip6.clone(),
                })
                .await
                .map_err(|s| ipamd::cni_error(&format!("check of {}", plan.ifname), &s))?;
            if backend(&plan.network_type).is_some()
                && pod
                    .find(&plan.ifname)
                    .await
                    .map_err(|e| failed(plan, ErrorCode::InterfaceFailed, e))?
                    .is_none()
            {
                return Err(failed(
                    plan,
                    ErrorCode::InterfaceFailed,
                    "the link is missing from the pod's namespace",
                ));
            }
        }
        Ok(())
    }

    async fn status(&self, request: &Request) -> Result<(), CniError> {
        let config = DanmConfig::parse(&request.config)?;
        ipam_plugin::status(&config.ipamd, config.tls.as_ref()).await
    }

    async fn gc(&self, request: &Request) -> Result<(), CniError> {
        let config = DanmConfig::parse(&request.config)?;
        let valid = ipam_plugin::valid_attachments(&request.config)?;
        ipam_plugin::gc(&config.ipamd, config.tls.as_ref(), valid, None).await
    }
}

impl Danm {
    /// Detach: every address of the container back to ipamd, over the connection already
    /// open (the replica that attached the container knows its records at once).
    async fn release_all(
        &self,
        client: &mut ipamd::Client,
        request: &Request,
        errors: &mut Vec<CniError>,
    ) {
        let outcome = client
            .detach(pb::DetachRequest {
                container_id: request.container_id.clone(),
                pod_namespace: request.pod_namespace().to_owned(),
                pod_name: request.arg("K8S_POD_NAME").unwrap_or_default().to_owned(),
            })
            .await
            .map_err(|s| ipamd::cni_error("releasing the container's addresses", &s));
        if let Err(e) = outcome {
            errors.push(e);
        }
    }
}

#[cfg(test)]
mod tests;
