//! The host links netwatcher keeps on every node, as pure functions: which VLAN and VxLAN
//! links the networks ask for ([`wanted_links`]), and what to do to a node's links to get
//! there ([`plan`]).
//!
//! DANM's names and parameters: a network with `host_device` and `vlan` gets the VLAN link
//! `<NetworkID>.<vlan>` on that device; with `vxlan`, the VxLAN link `vx_<NetworkID>` with
//! VNI = `vxlan`, UDP port 4789, the device as its underlay, the device's first global IPv4
//! address (else IPv6) as local address, the multicast group 239.0.0.0 + VNI (ff02:: + VNI
//! over IPv6), learning and L2/L3 miss notifications on. Unlike DANM, links are reconciled:
//! a missing link is created, a link whose parameters differ is re-created, a link of a
//! network that is gone is removed, and only links netwatcher marked as its own are touched.
//! Networks that share a NetworkID and id share one link, which goes with the last of them.
//!
//! Tenants choose NetworkIDs, so two networks may ask one link name with different devices
//! or ids. The webhook refuses that at admission ([`LinkTable`] is its index); should two
//! such networks exist anyway, the link is never taken from the network that holds it: a
//! link on the node that fits one claim stays that claim's, and a link not made yet goes to
//! the administrators' kinds before TenantNetworks, then to the older network. The others
//! are reported as [`LinkProblem::Conflict`], and the CNI refuses to attach their pods to a
//! parent whose id is not theirs.
//!
//! Links are claimed by a [`LinkOwner`]: one of our networks, or a NetworkAttachmentDefinition
//! of a namespace the operator listed ([`attachment`]: DANM's netwatcher kept their links
//! too, and rewrote their `master` to the link it made).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use danm_crds::NetworkSpec;

use crate::{NetworkKey, NetworkKind};

/// The VxLAN UDP port DANM uses (IANA's).
pub const VXLAN_PORT: u16 = 4789;
/// The longest interface name the kernel takes.
pub const MAX_NAME: usize = 15;
/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// What a link must be, before the node's devices are looked at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkSpec {
    /// An 802.1Q VLAN link on `parent`.
    Vlan {
        /// The host device.
        parent: String,
        /// The VLAN id.
        id: u16,
    },
    /// A VxLAN link over `parent`.
    Vxlan {
        /// The host device.
        parent: String,
        /// The VNI.
        vni: u32,
    },
}

impl LinkSpec {
    /// The host device it hangs off.
    pub fn parent(&self) -> &str {
        match self {
            LinkSpec::Vlan { parent, .. } | LinkSpec::Vxlan { parent, .. } => parent,
        }
    }
}

/// Who asks for a host link: one of the suite's networks, or a NetworkAttachmentDefinition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkOwner {
    /// A DanmNet, TenantNetwork or ClusterNetwork.
    Network(NetworkKey),
    /// A NetworkAttachmentDefinition (Multus' kind), by namespace and name.
    Attachment {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl LinkOwner {
    /// Whether a tenant may have written it: a TenantNetwork, or a NetworkAttachmentDefinition
    /// (whose VLAN and VxLAN ids no TenantConfig limits). Such owners come after the
    /// administrators' networks for a contested link, and are never named to another owner.
    pub fn tenant_written(&self) -> bool {
        match self {
            LinkOwner::Network(key) => key.kind == NetworkKind::TenantNetwork,
            LinkOwner::Attachment { .. } => true,
        }
    }
}

impl From<NetworkKey> for LinkOwner {
    fn from(key: NetworkKey) -> LinkOwner {
        LinkOwner::Network(key)
    }
}

impl fmt::Display for LinkOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkOwner::Network(key) => key.fmt(f),
            LinkOwner::Attachment { namespace, name } => {
                write!(f, "NetworkAttachmentDefinition {namespace}/{name}")
            }
        }
    }
}

/// A link the networks ask for, and which networks ask for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedLink {
    /// Its name.
    pub name: String,
    /// What it must be.
    pub spec: LinkSpec,
    /// The networks that use it.
    pub networks: Vec<LinkOwner>,
    /// Other networks that ask for the same name with other parameters, by precedence:
    /// each gets the link only if the node's link already fits it (see [`plan`]).
    pub rivals: Vec<Rival>,
}

/// A claim on a link name that differs from the [`WantedLink`]'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rival {
    /// What it asks.
    pub spec: LinkSpec,
    /// The networks that ask it.
    pub networks: Vec<LinkOwner>,
}

/// The VLAN link of a network (DANM's name): `<NetworkID>.<id>`.
pub fn vlan_link_name(network_id: &str, id: u32) -> String {
    format!("{network_id}.{id}")
}

/// The VxLAN link of a network (DANM's name): `vx_<NetworkID>`.
pub fn vxlan_link_name(network_id: &str) -> String {
    format!("vx_{network_id}")
}

/// The host link an interface of a network built by DANM hangs off: its VxLAN link, else
/// its VLAN link, else its `host_device` (what the CNI attaches to).
pub fn parent_link(network_id: &str, vlan: u32, vxlan: u32, host_device: &str) -> String {
    if vxlan > 0 {
        vxlan_link_name(network_id)
    } else if vlan > 0 {
        vlan_link_name(network_id, vlan)
    } else {
        host_device.to_owned()
    }
}

/// Why a network's link cannot be kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkProblem {
    /// The link name would be longer than the kernel takes.
    NameTooLong(String),
    /// `vlan` or `vxlan` is out of range.
    BadId(String),
    /// Another network asks for a link of the same name with other parameters.
    Conflict {
        /// The link.
        name: String,
        /// The network whose link it is.
        holder: LinkOwner,
    },
    /// The host device does not exist on this node.
    NoDevice(String),
    /// The host device has no global address for a VxLAN to use as its local address.
    NoAddress(String),
    /// A link of that name exists that netwatcher did not create, with other parameters.
    Foreign(String),
    /// A NetworkAttachmentDefinition's configuration cannot be kept: what is wrong with it.
    BadAttachment(String),
}

impl LinkProblem {
    /// A short CamelCase reason, for Kubernetes Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            LinkProblem::NameTooLong(_) => "LinkNameTooLong",
            LinkProblem::BadId(_) => "BadLinkId",
            LinkProblem::Conflict { .. } => "LinkConflict",
            LinkProblem::NoDevice(_) => "HostDeviceMissing",
            LinkProblem::NoAddress(_) => "HostDeviceWithoutAddress",
            LinkProblem::Foreign(_) => "ForeignLink",
            LinkProblem::BadAttachment(_) => "BadAttachmentConfig",
        }
    }
}

impl fmt::Display for LinkProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkProblem::NameTooLong(name) => write!(
                f,
                "host link name {name:?} is longer than {MAX_NAME} characters: shorten the NetworkID (a NetworkAttachmentDefinition's: its configuration's name)"
            ),
            LinkProblem::BadId(why) | LinkProblem::BadAttachment(why) => f.write_str(why),
            // Another tenant's network is not named to this one's owner.
            LinkProblem::Conflict { name, holder } if holder.tenant_written() => {
                let kind = match holder {
                    LinkOwner::Network(key) => key.kind.as_str(),
                    LinkOwner::Attachment { .. } => "NetworkAttachmentDefinition",
                };
                write!(
                    f,
                    "host link {name} is held by a {kind} with another device or id: choose another NetworkID"
                )
            }
            LinkProblem::Conflict { name, holder } => write!(
                f,
                "host link {name} is held by {holder} with another device or id: choose another NetworkID"
            ),
            LinkProblem::NoDevice(device) => {
                write!(f, "host_device {device} does not exist on this node")
            }
            LinkProblem::NoAddress(device) => write!(
                f,
                "host_device {device} has no global IPv4 or IPv6 address for the VxLAN to use"
            ),
            LinkProblem::Foreign(name) => write!(
                f,
                "a link named {name} exists with other parameters and was not created by netwatcher: left alone"
            ),
        }
    }
}

/// The links of one network: `(name, spec)` for its VLAN and its VxLAN (DANM creates both
/// when both are set), or why not.
pub fn network_links(spec: &NetworkSpec) -> Result<Vec<(String, LinkSpec)>, LinkProblem> {
    let o = &spec.options;
    match o.host_device.as_deref().filter(|d| !d.is_empty()) {
        Some(parent) => links_of(&spec.network_id, parent, o.vlan, o.vxlan, "Options."),
        None => Ok(Vec::new()),
    }
}

/// The VLAN link `<id>.<vlan>` and the VxLAN link `vx_<id>` on `parent` that `vlan` and
/// `vxlan` ask for (0 or absent: none); `field` prefixes the key names in errors.
fn links_of(
    id: &str,
    parent: &str,
    vlan: Option<i64>,
    vxlan: Option<i64>,
    field: &str,
) -> Result<Vec<(String, LinkSpec)>, LinkProblem> {
    let mut out = Vec::new();
    if let Some(vlan) = vlan.filter(|v| *v != 0) {
        let id16 = u16::try_from(vlan)
            .ok()
            .filter(|v| (1..=4094).contains(v))
            .ok_or_else(|| LinkProblem::BadId(format!("{field}vlan {vlan} is not in 1-4094")))?;
        out.push((
            vlan_link_name(id, u32::from(id16)),
            LinkSpec::Vlan {
                parent: parent.to_owned(),
                id: id16,
            },
        ));
    }
    if let Some(vxlan) = vxlan.filter(|v| *v != 0) {
        let vni = u32::try_from(vxlan)
            .ok()
            .filter(|v| (1..=MAX_VNI).contains(v))
            .ok_or_else(|| {
                LinkProblem::BadId(format!("{field}vxlan {vxlan} is not in 1-{MAX_VNI}"))
            })?;
        out.push((
            vxlan_link_name(id),
            LinkSpec::Vxlan {
                parent: parent.to_owned(),
                vni,
            },
        ));
    }
    if let Some((name, _)) = out.iter().find(|(n, _)| n.len() > MAX_NAME) {
        return Err(LinkProblem::NameTooLong(name.clone()));
    }
    Ok(out)
}

/// What one owner asks: its links (or why it cannot have them) and its creation time
/// (RFC 3339, as the API server writes it: the older owner keeps a contested link).
#[derive(Clone, Debug)]
pub struct Claim {
    /// Who asks.
    pub owner: LinkOwner,
    /// `(name, spec)` of each link it asks for, or why not.
    pub links: Result<Vec<(String, LinkSpec)>, LinkProblem>,
    /// `metadata.creationTimestamp`.
    pub created: String,
}

/// Every link the claims ask for, by name, and the owners whose links cannot be kept (a
/// bad id, a name too long, a configuration that cannot be read). When owners ask one name
/// with different parameters, the first by precedence (administrators' networks before
/// those a tenant may write, then the older, then by key) is the [`WantedLink`]'s and the
/// others are its [`Rival`]s: [`plan`] decides.
pub fn wanted_links(
    claims: impl IntoIterator<Item = Claim>,
) -> (BTreeMap<String, WantedLink>, Vec<(LinkOwner, LinkProblem)>) {
    let mut sorted: Vec<Claim> = claims.into_iter().collect();
    sorted.sort_by(|a, b| precedence(&a.owner, &a.created).cmp(&precedence(&b.owner, &b.created)));
    let mut wanted: BTreeMap<String, WantedLink> = BTreeMap::new();
    let mut problems = Vec::new();
    for Claim { owner, links, .. } in sorted {
        let key = &owner;
        let links = match links {
            Ok(links) => links,
            Err(problem) => {
                problems.push((owner.clone(), problem));
                continue;
            }
        };
        for (name, spec) in links {
            let Some(w) = wanted.get_mut(&name) else {
                wanted.insert(
                    name.clone(),
                    WantedLink {
                        name,
                        spec,
                        networks: vec![key.clone()],
                        rivals: Vec::new(),
                    },
                );
                continue;
            };
            if w.spec == spec {
                w.networks.push(key.clone());
            } else if let Some(r) = w.rivals.iter_mut().find(|r| r.spec == spec) {
                r.networks.push(key.clone());
            } else {
                w.rivals.push(Rival {
                    spec,
                    networks: vec![key.clone()],
                });
            }
        }
    }
    (wanted, problems)
}

/// The order in which owners get a contested link name.
fn precedence<'a>(owner: &'a LinkOwner, created: &'a str) -> (bool, &'a str, &'a LinkOwner) {
    (owner.tenant_written(), created, owner)
}

/// DANM's multicast group of a VNI over IPv4: 239.0.0.0 + VNI.
pub fn group_v4(vni: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(239, 0, 0, 0)) + (vni & MAX_VNI))
}

/// DANM's multicast group of a VNI over IPv6: ff02:: + VNI.
pub fn group_v6(vni: u32) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0)) + u128::from(vni))
}

/// A host device as the node has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Device {
    /// Interface index.
    pub index: u32,
    /// Administratively up.
    pub up: bool,
    /// First global IPv4 address.
    pub v4: Option<Ipv4Addr>,
    /// First global IPv6 address.
    pub v6: Option<Ipv6Addr>,
    /// Every global address (a VxLAN whose local address is still one of them is fine).
    pub addresses: Vec<IpAddr>,
}

/// A link with every parameter resolved against the node's devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkParams {
    /// VLAN.
    Vlan {
        /// Parent index.
        parent: u32,
        /// VLAN id.
        id: u16,
    },
    /// VxLAN.
    Vxlan {
        /// Underlay device index.
        parent: u32,
        /// VNI.
        vni: u32,
        /// Local address.
        local: IpAddr,
        /// Multicast group.
        group: IpAddr,
        /// UDP port.
        port: u16,
    },
}

/// A link as the node has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedLink {
    /// Name.
    pub name: String,
    /// Whether netwatcher marked it as its own.
    pub ours: bool,
    /// Administratively up.
    pub up: bool,
    /// Its parameters, when it is a VLAN or VxLAN link.
    pub params: Option<LinkParams>,
}

/// One change to a node's links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Bring a host device up.
    DeviceUp(String),
    /// Create a link (marked as ours) and bring it up.
    Create {
        /// Its name.
        name: String,
        /// Its parameters.
        params: LinkParams,
    },
    /// Delete a link of ours (then create it again when `params` is set: its parameters
    /// differ from the spec).
    Delete {
        /// Its name.
        name: String,
        /// What to create in its place.
        recreate: Option<LinkParams>,
    },
    /// Bring a link of ours up.
    Up(String),
}

/// Whether a link's parameters do what `wanted` asks. A VxLAN whose local address is still
/// one of its device's addresses fits even when the device's first address is now another
/// (an address added or renumbered): re-creating a link takes down every pod interface that
/// hangs off it, so it is done only when the link is really wrong.
fn fits(have: &LinkParams, wanted: &LinkParams, device: &Device) -> bool {
    match (have, wanted) {
        (
            LinkParams::Vxlan {
                parent,
                vni,
                local,
                group,
                port,
            },
            LinkParams::Vxlan {
                parent: p,
                vni: v,
                local: l,
                group: g,
                port: o,
            },
        ) => {
            parent == p
                && vni == v
                && port == o
                && (local == l || device.addresses.contains(local))
                && (group == g || local != l)
        }
        _ => have == wanted,
    }
}

/// A link spec with every parameter resolved against the node's devices.
fn resolve(spec: &LinkSpec, devices: &HashMap<String, Device>) -> Result<LinkParams, LinkProblem> {
    let parent = spec.parent();
    let device = devices
        .get(parent)
        .ok_or_else(|| LinkProblem::NoDevice(parent.to_owned()))?;
    Ok(match spec {
        LinkSpec::Vlan { id, .. } => LinkParams::Vlan {
            parent: device.index,
            id: *id,
        },
        LinkSpec::Vxlan { vni, .. } => {
            let (local, group) = match (device.v4, device.v6) {
                (Some(v4), _) => (IpAddr::V4(v4), IpAddr::V4(group_v4(*vni))),
                (None, Some(v6)) => (IpAddr::V6(v6), IpAddr::V6(group_v6(*vni))),
                (None, None) => return Err(LinkProblem::NoAddress(parent.to_owned())),
            };
            LinkParams::Vxlan {
                parent: device.index,
                vni: *vni,
                local,
                group,
                port: VXLAN_PORT,
            }
        }
    })
}

/// Whether the node's link `observed` already does what `spec` asks.
fn holds(
    observed: Option<&ObservedLink>,
    spec: &LinkSpec,
    devices: &HashMap<String, Device>,
) -> bool {
    let (Some(link), Ok(params)) = (observed, resolve(spec, devices)) else {
        return false;
    };
    let device = &devices[spec.parent()];
    link.params
        .as_ref()
        .is_some_and(|p| fits(p, &params, device))
}

/// What to do to the node's links (`observed`, with its `devices` by name) so that they are
/// the `wanted` ones; and what cannot be done, with the networks concerned and why. A
/// contested name stays with the claim the node's link already fits (re-creating it would
/// take down every pod interface on it); a name no link fits yet goes to the first claim.
/// The other claims are reported as conflicts.
pub fn plan(
    wanted: &BTreeMap<String, WantedLink>,
    devices: &HashMap<String, Device>,
    observed: &[ObservedLink],
) -> (Vec<Action>, Vec<(Vec<LinkOwner>, LinkProblem)>) {
    let mut actions = Vec::new();
    let mut problems = Vec::new();
    let by_name: HashMap<&str, &ObservedLink> =
        observed.iter().map(|l| (l.name.as_str(), l)).collect();
    let mut devices_up = Vec::new();
    for w in wanted.values() {
        let existing = by_name.get(w.name.as_str()).copied();
        let mut claims: Vec<(&LinkSpec, &Vec<LinkOwner>)> = std::iter::once((&w.spec, &w.networks))
            .chain(w.rivals.iter().map(|r| (&r.spec, &r.networks)))
            .collect();
        if let Some(at) = claims
            .iter()
            .position(|(spec, _)| holds(existing, spec, devices))
        {
            let holder = claims.remove(at);
            claims.insert(0, holder);
        }
        let (spec, holders) = claims[0];
        for (_, losers) in &claims[1..] {
            problems.push((
                (*losers).clone(),
                LinkProblem::Conflict {
                    name: w.name.clone(),
                    holder: holders[0].clone(),
                },
            ));
        }
        let params = match resolve(spec, devices) {
            Ok(params) => params,
            Err(problem) => {
                problems.push((holders.clone(), problem));
                continue;
            }
        };
        let parent = spec.parent();
        let device = &devices[parent];
        if !device.up && !devices_up.contains(&parent) {
            devices_up.push(parent);
            actions.push(Action::DeviceUp(parent.to_owned()));
        }
        match existing {
            None => actions.push(Action::Create {
                name: w.name.clone(),
                params,
            }),
            Some(l) if l.params.as_ref().is_some_and(|p| fits(p, &params, device)) => {
                // Exactly what is wanted. One that is not ours (a DANM node's, an admin's) is
                // used as it is: never marked, so never removed.
                if l.ours && !l.up {
                    actions.push(Action::Up(w.name.clone()));
                }
            }
            Some(l) if l.ours => actions.push(Action::Delete {
                name: w.name.clone(),
                recreate: Some(params),
            }),
            Some(_) => problems.push((holders.clone(), LinkProblem::Foreign(w.name.clone()))),
        }
    }
    for l in observed {
        if l.ours && !wanted.contains_key(&l.name) {
            actions.push(Action::Delete {
                name: l.name.clone(),
                recreate: None,
            });
        }
    }
    (actions, problems)
}

pub mod attachment;
pub mod report;
mod table;

pub use table::{LinkClash, LinkTable};

#[cfg(test)]
mod tests;
