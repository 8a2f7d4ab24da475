//! The end-to-end suite's cluster on one machine (test support only):
//!
//! * [`fabric`]: the nodes' network namespaces and the two bridges they hang off;
//! * [`node`]: a node's `Node` object and its agent, which plays kubelet's network part
//!   (a namespace per pod, CNI ADD and DEL through the real `danm` binary, the pod's status);
//! * [`tunnel`]: a host service (ipamd, the API server) offered inside a node's namespace;
//! * [`pods`]: readiness and waiting, as the scenarios check them;
//! * [`real_node`]: a real node, kubelet and containerd with runc, running `danm` as a
//!   production node does;
//! * [`cluster`]: the control plane with kube-scheduler, the nodes, and DANM's components
//!   as processes with the flags, identities and RBAC of `deploy/`.

pub mod cluster;
pub mod fabric;
pub mod node;
pub mod pods;
pub mod real_node;
pub mod tunnel;
