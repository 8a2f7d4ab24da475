//! The CNI side of DANM: the `danm` metaplugin and the `danm-ipam` IPAM plugin.
//!
//! * [`protocol`]: CNI 1.1 (versions 0.3.0 to 1.1.0): requests, results in every version,
//!   the error JSON and its codes.
//! * [`exec`]: the one wrapper that owns the environment, stdin, stdout and exit codes; the
//!   plugins implement [`exec::Plugin`].
//! * [`danm`]: the metaplugin: one Attach to ipamd, then every interface in parallel
//!   (built-in ipvlan/macvlan over `danm_netlink`, anything else through [`delegate`]),
//!   rolled back as a whole on any failure.
//! * [`ipam_plugin`]: `danm-ipam`, ipamd as the IPAM of any CNI configuration.
//! * [`ipamd`]: the gRPC client and the mapping of its errors to CNI codes.
//! * [`previous`]: DEL of containers another CNI attached before `danm` became the node's
//!   CNI (from libcni's cache).
//! * [`cli`]: `danm` run by hand: `--help` and `health` (what the CNI installer waits for).

pub mod cli;
pub mod danm;
pub mod delegate;
pub mod exec;
pub mod ipam_plugin;
pub mod ipamd;
pub mod previous;
pub mod protocol;
