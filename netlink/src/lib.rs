//! DANM's netlink, shared by the `danm` CNI plugin and netwatcher (one netlink layer, as
//! netavark keeps one): no Kubernetes and no gRPC here.
//!
//! * [`Netlink`] ([`socket`]): a connection in the host's network namespace or in a pod's,
//!   and the requests the plugin makes: links (ipvlan, macvlan) created directly in the
//!   pod's namespace, addresses, routes, policy rules, and what a host link is
//!   ([`Netlink::link_id`]: the plugin checks a parent's VLAN id or VNI before it
//!   attaches to it).
//! * [`host::NodeLinks`]: a node's links as [`danm_core::hostlinks`] sees them (read) and
//!   its actions carried out (netwatcher).

pub mod host;
pub mod socket;

pub use host::{LinkError, LinkId, NodeLinks};
pub use socket::{Backend, NetError, Netlink, link_request, raw_fd};
