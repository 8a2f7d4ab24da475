//! The `danm.ipam.v1.Ipam` gRPC API of ipamd: generated message types, client and server,
//! the encoded file descriptor set for gRPC server reflection, [`client`]: how every client
//! connects to ipamd, [`network`]: networks converted to and from the API's words,
//! [`status`]: whether a failed call was never carried out (safe to try again), and
//! [`health`]: the service names ipamd's `grpc.health.v1` answers for. Besides ipamd's, one
//! node-local API: [`gate`], the policer's, which the CNI plugin calls before it builds a
//! pod's interfaces.

pub mod client;
pub mod gate;
pub mod health;
pub mod network;
pub mod status;

/// `danm.ipam.v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("danm.ipam.v1");
}

/// The file descriptor set of the API, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ipam_descriptor.bin"));
