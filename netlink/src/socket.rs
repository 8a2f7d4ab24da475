//! Interfaces, addresses, routes and rules over rtnetlink, in the host's or in a pod's
//! network namespace.
//!
//! A netlink socket belongs to the namespace it was opened in: [`Netlink::in_netns`] opens
//! it from a short-lived thread that has entered the pod's namespace, so the rest of the
//! process never leaves the host's. Links are created directly in the pod's namespace
//! (`IFLA_NET_NS_FD` on the create request), under their final name.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::link::{IpVlanMode, LinkAttribute, LinkMessage, MacVlanMode};
use rtnetlink::packet_route::rule::RuleAttribute;
use rtnetlink::{Handle, LinkIpVlan, LinkMacVlan, RouteMessageBuilder};

use crate::host::LinkId;

/// A netlink failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct NetError {
    /// What was being done.
    pub what: String,
    /// Why it failed.
    pub reason: String,
}

fn fail(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |e| NetError {
        what,
        reason: e.to_string(),
    }
}

/// The built-in backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// macvlan, bridge mode.
    Macvlan,
    /// ipvlan, L2 mode (DANM's default).
    Ipvlan,
}

/// The create request of a macvlan (bridge mode) or ipvlan (L2 mode) link named `name` on
/// the parent `parent`, created directly in the namespace of `netns_fd`, and up.
pub fn link_request(backend: Backend, name: &str, parent: u32, netns_fd: RawFd) -> LinkMessage {
    match backend {
        Backend::Macvlan => LinkMacVlan::new(name, parent, MacVlanMode::Bridge)
            .setns_by_fd(netns_fd)
            .up()
            .build(),
        Backend::Ipvlan => LinkIpVlan::new(name, parent, IpVlanMode::L2)
            .setns_by_fd(netns_fd)
            .up()
            .build(),
    }
}

/// A netlink connection in one namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in this process's namespace (the host's).
    pub fn host() -> Result<Netlink, NetError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| NetError {
            what: "opening a netlink socket".into(),
            reason: e.to_string(),
        })?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// A connection in the namespace at `path` (for instance `/var/run/netns/pod`).
    pub fn in_netns(path: &Path) -> Result<Netlink, NetError> {
        let what = format!("entering network namespace {}", path.display());
        let target = std::fs::File::open(path).map_err(|e| NetError {
            what: what.clone(),
            reason: e.to_string(),
        })?;
        let runtime = tokio::runtime::Handle::current();
        let opened = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _enter = runtime.enter();
                    let home = std::fs::File::open("/proc/thread-self/ns/net")
                        .map_err(|e| e.to_string())?;
                    nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| e.to_string())?;
                    let opened = rtnetlink::new_connection().map_err(|e| e.to_string());
                    // Back home before the thread ends, whatever happened.
                    nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("cannot return to the host namespace: {e}"))?;
                    opened
                })
                .join()
                .map_err(|_| "the namespace thread panicked".to_owned())?
        })
        .map_err(|reason| NetError { what, reason })?;
        let (connection, handle, _) = opened;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The rtnetlink handle, for requests this type does not wrap (netwatcher's host links).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Every link as (index, name, MAC).
    async fn links(&self) -> Result<Vec<(u32, String, String)>, NetError> {
        let mut stream = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(message) = stream.try_next().await.map_err(fail("listing links"))? {
            let mut name = String::new();
            let mut mac = String::new();
            for attribute in &message.attributes {
                match attribute {
                    LinkAttribute::IfName(n) => name.clone_from(n),
                    LinkAttribute::Address(bytes) => {
                        mac = bytes
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":");
                    }
                    _ => {}
                }
            }
            out.push((message.header.index, name, mac));
        }
        Ok(out)
    }

    /// The index and MAC of the link `name`, if it exists.
    pub async fn find(&self, name: &str) -> Result<Option<(u32, String)>, NetError> {
        Ok(self
            .links()
            .await?
            .into_iter()
            .find(|(_, n, _)| n == name)
            .map(|(i, _, mac)| (i, mac)))
    }

    /// The index of the link `name` and, when it is a VLAN or VxLAN link, its id and
    /// device (what the plugin checks before it attaches to a host link); `None` when there
    /// is no such link.
    pub async fn link_id(&self, name: &str) -> Result<Option<(u32, Option<LinkId>)>, NetError> {
        let mut stream = self.handle.link().get().execute();
        while let Some(message) = stream.try_next().await.map_err(fail("listing links"))? {
            let named = message
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name));
            if named {
                return Ok(Some((message.header.index, crate::host::link_id(&message))));
            }
        }
        Ok(None)
    }

    /// Creates a link from a request of [`link_request`].
    pub async fn create(&self, request: LinkMessage, what: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .add(request)
            .execute()
            .await
            .map_err(fail(what))
    }

    /// Deletes the link `name`; false when there is none.
    pub async fn delete(&self, name: &str) -> Result<bool, NetError> {
        let Some((index, _)) = self.find(name).await? else {
            return Ok(false);
        };
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(fail(format!("deleting link {name}")))?;
        Ok(true)
    }

    /// Adds `address` (with its prefix) to the link `index`.
    pub async fn add_address(&self, index: u32, address: IpNet) -> Result<(), NetError> {
        self.handle
            .address()
            .add(index, address.addr(), address.prefix_len())
            .execute()
            .await
            .map_err(fail(format!("adding address {address}")))
    }

    /// Adds a route to `destination` through the link `index`, via `gateway` if given, in
    /// `table` (the main table if none).
    pub async fn add_route(
        &self,
        index: u32,
        destination: IpNet,
        gateway: Option<IpAddr>,
        table: Option<u32>,
    ) -> Result<(), NetError> {
        let what = format!(
            "adding route {destination}{}{}",
            gateway.map(|g| format!(" via {g}")).unwrap_or_default(),
            table.map(|t| format!(" table {t}")).unwrap_or_default()
        );
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(destination.addr(), destination.prefix_len())
            .map_err(|e| NetError {
                what: what.clone(),
                reason: e.to_string(),
            })?
            .output_interface(index);
        if let Some(gw) = gateway {
            builder = builder.gateway(gw).map_err(|e| NetError {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        }
        if let Some(t) = table {
            builder = builder.table_id(t);
        }
        self.handle
            .route()
            .add(builder.build())
            .execute()
            .await
            .map_err(fail(what.clone()))
    }

    /// Deletes every policy rule that looks up `table` (both families); how many.
    pub async fn delete_rules(&self, table: u32) -> Result<usize, NetError> {
        let mut doomed = Vec::new();
        for version in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
            let mut rules = self.handle.rule().get(version).execute();
            while let Some(rule) = rules.try_next().await.map_err(fail("listing rules"))? {
                let in_table = u32::from(rule.header.table) == table
                    || rule.attributes.contains(&RuleAttribute::Table(table));
                if in_table {
                    doomed.push(rule);
                }
            }
        }
        let count = doomed.len();
        for rule in doomed {
            self.handle
                .rule()
                .del(rule)
                .execute()
                .await
                .map_err(fail(format!("deleting a rule of table {table}")))?;
        }
        Ok(count)
    }

    /// Adds the policy rule `from source lookup table`.
    pub async fn add_source_rule(&self, source: IpAddr, table: u32) -> Result<(), NetError> {
        let what = format!("adding rule from {source} lookup {table}");
        let rule = self.handle.rule().add().table_id(table);
        match source {
            IpAddr::V4(a) => rule.v4().source_prefix(a, 32).execute().await,
            IpAddr::V6(a) => rule.v6().source_prefix(a, 128).execute().await,
        }
        .map_err(fail(what))
    }
}

/// The file descriptor of an open namespace file, for [`link_request`].
pub fn raw_fd(file: &std::fs::File) -> RawFd {
    file.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::link::{InfoData, InfoIpVlan, InfoKind, InfoMacVlan, LinkInfo};

    use super::*;

    fn info(message: &LinkMessage) -> &Vec<LinkInfo> {
        message
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i),
                _ => None,
            })
            .expect("link info")
    }

    #[test]
    fn ipvlan_request_is_l2_on_the_parent_in_the_pod_namespace() {
        let m = link_request(Backend::Ipvlan, "eth1", 7, 42);
        assert!(m.attributes.contains(&LinkAttribute::IfName("eth1".into())));
        assert!(m.attributes.contains(&LinkAttribute::Link(7)));
        assert!(m.attributes.contains(&LinkAttribute::NetNsFd(42)));
        let info = info(&m);
        assert!(info.contains(&LinkInfo::Kind(InfoKind::IpVlan)));
        assert!(
            info.contains(&LinkInfo::Data(InfoData::IpVlan(vec![InfoIpVlan::Mode(
                IpVlanMode::L2
            )])))
        );
        assert_ne!(m.header.flags.bits() & 1, 0, "IFF_UP");
    }

    #[test]
    fn macvlan_request_is_bridge_mode() {
        let m = link_request(Backend::Macvlan, "eth0", 3, 9);
        let info = info(&m);
        assert!(info.contains(&LinkInfo::Kind(InfoKind::MacVlan)));
        assert!(
            info.contains(&LinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                MacVlanMode::Bridge
            )])))
        );
        assert!(m.attributes.contains(&LinkAttribute::Link(3)));
    }
}
