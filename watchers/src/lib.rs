//! DANM's watchers: controllers that keep the cluster's state in line with its networks.
//!
//! * [`netwatcher`]: one per node (a DaemonSet, host network, NET_ADMIN); keeps the node's
//!   VLAN and VxLAN host links as the DanmNets, TenantNetworks and ClusterNetworks ask, and
//!   removes the links of networks that are gone. The decisions are
//!   [`danm_core::hostlinks`]; this crate reads the networks (kube-runtime reflectors) and
//!   the node's links (netlink), and reports what it cannot do as Kubernetes Events.
//!
//! * [`svcwatcher`]: one elected replica (a Deployment with a Lease); keeps EndpointSlices
//!   and Endpoints of the Services carrying DANM's annotations, with the addresses of the
//!   selected pods' interfaces on the Service's network. The decisions are
//!   [`danm_core::services`].

pub mod netwatcher;
pub mod svcwatcher;
