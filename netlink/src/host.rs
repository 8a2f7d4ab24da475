//! A node's links over netlink: read them as [`danm_core::hostlinks`] sees them, and carry
//! out its [`Action`]s. Links netwatcher creates carry the alias [`ALIAS`], which is how it
//! tells its own links from everyone else's.

use std::collections::HashMap;
use std::net::IpAddr;

use danm_core::hostlinks::{Action, Device, LinkParams, ObservedLink};
use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressScope};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVlan, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{Handle, LinkUnspec, LinkVlan, LinkVxlan};

/// The alias of every link netwatcher creates.
pub const ALIAS: &str = "danm-netwatcher";

/// A netlink request failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct LinkError {
    /// What was asked.
    pub what: String,
    /// Why it failed.
    #[source]
    pub source: rtnetlink::Error,
}

fn fail(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError { what, source }
}

/// The links of one network namespace (the host's, in production).
#[derive(Clone, Debug)]
pub struct NodeLinks {
    handle: Handle,
}

/// What [`NodeLinks::observe`] reads: every device by name, and every link.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Devices (every link), by name.
    pub devices: HashMap<String, Device>,
    /// Links, with their VLAN/VxLAN parameters where they have some.
    pub links: Vec<ObservedLink>,
    indexes: HashMap<String, u32>,
}

impl NodeLinks {
    /// Links through `handle` (see [`crate::Netlink`], which opens one in the host's
    /// namespace or in another).
    pub fn new(handle: Handle) -> NodeLinks {
        NodeLinks { handle }
    }

    /// Reads every link and every global address.
    pub async fn observe(&self) -> Result<Observed, LinkError> {
        let mut out = Observed::default();
        let mut by_index: HashMap<u32, String> = HashMap::new();
        let mut stream = self.handle.link().get().execute();
        while let Some(message) = stream.try_next().await.map_err(fail("listing links"))? {
            let link = read_link(&message);
            by_index.insert(message.header.index, link.name.clone());
            out.indexes.insert(link.name.clone(), message.header.index);
            out.devices.insert(
                link.name.clone(),
                Device {
                    index: message.header.index,
                    up: link.up,
                    v4: None,
                    v6: None,
                    addresses: Vec::new(),
                },
            );
            out.links.push(link);
        }
        let mut stream = self.handle.address().get().execute();
        while let Some(message) = stream.try_next().await.map_err(fail("listing addresses"))? {
            if message.header.scope != AddressScope::Universe {
                continue;
            }
            let Some(device) = by_index
                .get(&message.header.index)
                .and_then(|name| out.devices.get_mut(name))
            else {
                continue;
            };
            for attribute in &message.attributes {
                if let AddressAttribute::Address(ip) = attribute {
                    device.addresses.push(*ip);
                    match ip {
                        IpAddr::V4(v4) if device.v4.is_none() => device.v4 = Some(*v4),
                        IpAddr::V6(v6) if device.v6.is_none() => device.v6 = Some(*v6),
                        _ => {}
                    }
                }
            }
        }
        Ok(out)
    }

    /// Carries out one action on the links `observed` read.
    pub async fn apply(&self, action: &Action, observed: &Observed) -> Result<(), LinkError> {
        let index = |name: &str| observed.indexes.get(name).copied();
        match action {
            Action::DeviceUp(name) | Action::Up(name) => {
                let Some(i) = index(name) else { return Ok(()) };
                self.set(
                    LinkUnspec::new_with_index(i).up().build(),
                    &format!("bringing {name} up"),
                )
                .await
            }
            Action::Create { name, params } => self.create(name, params).await,
            Action::Delete { name, recreate } => {
                if let Some(i) = index(name) {
                    self.handle
                        .link()
                        .del(i)
                        .execute()
                        .await
                        .map_err(fail(format!("deleting {name}")))?;
                }
                match recreate {
                    Some(params) => self.create(name, params).await,
                    None => Ok(()),
                }
            }
        }
    }

    async fn create(&self, name: &str, params: &LinkParams) -> Result<(), LinkError> {
        self.handle
            .link()
            .add(create_request(name, params))
            .execute()
            .await
            .map_err(fail(format!("creating {name}")))?;
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let Some(created) = links
            .try_next()
            .await
            .map_err(fail(format!("reading {name} back")))?
        else {
            return Ok(());
        };
        self.mark(created.header.index, name).await?;
        self.set(
            LinkUnspec::new_with_index(created.header.index)
                .up()
                .build(),
            &format!("bringing {name} up"),
        )
        .await
    }

    /// Sets the alias that marks a link as netwatcher's.
    async fn mark(&self, index: u32, name: &str) -> Result<(), LinkError> {
        let message = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::IfAlias(ALIAS.to_owned()))
            .build();
        self.set(message, &format!("marking {name} as netwatcher's"))
            .await
    }

    async fn set(&self, message: LinkMessage, what: &str) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(fail(what))
    }
}

/// The RTM_NEWLINK request for a link: DANM's VLAN (id on the parent) or VxLAN (VNI, the
/// parent as underlay, port, local address, group, learning and L2/L3 miss on).
pub fn create_request(name: &str, params: &LinkParams) -> LinkMessage {
    match params {
        LinkParams::Vlan { parent, id } => LinkVlan::new(name, *parent, *id).build(),
        LinkParams::Vxlan {
            parent,
            vni,
            local,
            group,
            port,
        } => {
            let builder = LinkVxlan::new(name, *vni)
                .dev(*parent)
                .port(*port)
                .learning(true)
                .l2miss(true)
                .l3miss(true);
            let builder = match (local, group) {
                (IpAddr::V4(l), IpAddr::V4(g)) => builder.local(*l).group(*g),
                (IpAddr::V6(l), IpAddr::V6(g)) => builder.local6(*l).group6(*g),
                (IpAddr::V4(l), _) => builder.local(*l),
                (IpAddr::V6(l), _) => builder.local6(*l),
            };
            builder.build()
        }
    }
}

/// One link as the plan sees it.
pub(crate) fn read_link(message: &LinkMessage) -> ObservedLink {
    let mut name = String::new();
    let mut alias = String::new();
    let mut parent = 0;
    let mut kind = None;
    let mut data = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name.clone_from(n),
            LinkAttribute::IfAlias(a) => alias.clone_from(a),
            LinkAttribute::Link(i) => parent = *i,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => kind = Some(k.clone()),
                        LinkInfo::Data(d) => data = Some(d.clone()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let params = match (kind, data) {
        (Some(InfoKind::Vlan), Some(InfoData::Vlan(infos))) => infos.iter().find_map(|i| match i {
            InfoVlan::Id(id) => Some(LinkParams::Vlan { parent, id: *id }),
            _ => None,
        }),
        (Some(InfoKind::Vxlan), Some(InfoData::Vxlan(infos))) => vxlan_params(&infos),
        _ => None,
    };
    ObservedLink {
        name,
        ours: alias == ALIAS,
        up: message.header.flags.contains(LinkFlags::Up),
        params,
    }
}

/// What a VLAN or VxLAN link is, as far as a pod's interface cares: its id and the device
/// under it (the plugin checks these before it attaches; the local address and group are
/// netwatcher's business).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkId {
    /// An 802.1Q VLAN link.
    Vlan {
        /// The VLAN id.
        id: u16,
        /// The index of the device it is on.
        lower: u32,
    },
    /// A VxLAN link.
    Vxlan {
        /// The VNI.
        vni: u32,
        /// The index of its underlay device (0 when it has none).
        lower: u32,
    },
}

/// The id of a VLAN or VxLAN link; `None` for any other link.
pub(crate) fn link_id(message: &LinkMessage) -> Option<LinkId> {
    let mut lower = 0;
    let mut found = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Link(i) => lower = *i,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Data(InfoData::Vlan(v)) => {
                            found = v.iter().find_map(|i| match i {
                                InfoVlan::Id(id) => Some(LinkId::Vlan { id: *id, lower: 0 }),
                                _ => None,
                            });
                        }
                        LinkInfo::Data(InfoData::Vxlan(v)) => {
                            let under = v.iter().find_map(|i| match i {
                                InfoVxlan::Link(l) => Some(*l),
                                _ => None,
                            });
                            found = v.iter().find_map(|i| match i {
                                InfoVxlan::Id(vni) => Some(LinkId::Vxlan {
                                    vni: *vni,
                                    lower: under.unwrap_or(0),
                                }),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match found? {
        LinkId::Vlan { id, .. } => Some(LinkId::Vlan { id, lower }),
        vxlan => Some(vxlan),
    }
}

fn vxlan_params(infos: &[InfoVxlan]) -> Option<LinkParams> {
    let (mut parent, mut vni, mut port) = (0, None, 0);
    let (mut local, mut group) = (None, None);
    for info in infos {
        match info {
            InfoVxlan::Id(v) => vni = Some(*v),
            InfoVxlan::Link(i) => parent = *i,
            InfoVxlan::Port(p) => port = *p,
            InfoVxlan::Local(a) => local = Some(IpAddr::V4(*a)),
            InfoVxlan::Local6(a) => local = Some(IpAddr::V6(*a)),
            InfoVxlan::Group(a) => group = Some(IpAddr::V4(*a)),
            InfoVxlan::Group6(a) => group = Some(IpAddr::V6(*a)),
            _ => {}
        }
    }
    Some(LinkParams::Vxlan {
        parent,
        vni: vni?,
        local: local?,
        group: group?,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_data(message: &LinkMessage) -> (Vec<LinkAttribute>, Option<InfoData>) {
        let data = message.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Data(d) => Some(d.clone()),
                _ => None,
            }),
            _ => None,
        });
        (message.attributes.clone(), data)
    }

    /// This kernel has no VLAN links: the request is checked here, the real link in the
    /// ignored test of `watchers/tests/netwatcher.rs`.
    #[test]
    fn the_vlan_request_names_the_parent_and_the_id() {
        let message = create_request("internal.200", &LinkParams::Vlan { parent: 7, id: 200 });
        let (attributes, data) = info_data(&message);
        assert!(attributes.contains(&LinkAttribute::IfName("internal.200".into())));
        assert!(attributes.contains(&LinkAttribute::Link(7)));
        assert_eq!(data, Some(InfoData::Vlan(vec![InfoVlan::Id(200)])));
        let observed = read_link(&message);
        assert_eq!(
            observed.params,
            Some(LinkParams::Vlan { parent: 7, id: 200 })
        );
        assert!(!observed.ours);
    }

    #[test]
    fn the_vxlan_request_carries_danms_parameters_and_reads_back() {
        let params = LinkParams::Vxlan {
            parent: 3,
            vni: 500,
            local: "198.18.0.1".parse().unwrap(),
            group: "239.0.1.244".parse().unwrap(),
            port: 4789,
        };
        let message = create_request("vx_internal", &params);
        let (_, data) = info_data(&message);
        let Some(InfoData::Vxlan(infos)) = data else {
            panic!("no VxLAN data: {message:?}");
        };
        for expected in [
            InfoVxlan::Id(500),
            InfoVxlan::Link(3),
            InfoVxlan::Port(4789),
            InfoVxlan::Learning(true),
            InfoVxlan::L2Miss(true),
            InfoVxlan::L3Miss(true),
        ] {
            assert!(infos.contains(&expected), "{expected:?} missing: {infos:?}");
        }
        assert_eq!(read_link(&message).params, Some(params));
        assert_eq!(
            link_id(&message),
            Some(LinkId::Vxlan { vni: 500, lower: 3 })
        );
        let vlan = create_request("internal.200", &LinkParams::Vlan { parent: 7, id: 200 });
        assert_eq!(link_id(&vlan), Some(LinkId::Vlan { id: 200, lower: 7 }));
    }
}
