//! The `danm.ipam.v1.Ipam` gRPC API of ipamd: generated message types, client and server,
//! and the encoded file descriptor set for gRPC server reflection.

#![allow(missing_debug_implementations, clippy::all)]

/// `danm.ipam.v1`.
pub mod v1 {
    tonic::include_proto!("danm.ipam.v1");
}

/// The file descriptor set of the API, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ipam_descriptor.bin"));
