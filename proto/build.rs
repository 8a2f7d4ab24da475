//! Compiles the .proto files with protox (pure Rust, no system protoc) and
//! tonic-prost-build: ipamd's API (whose descriptor set ipamd serves for reflection) and the
//! policer's gate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ipam = "proto/danm/ipam/v1/ipam.proto";
    let policer = "proto/danm/policer/v1/policer.proto";
    for proto in [ipam, policer] {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let ipam_fds = protox::compile([ipam], ["proto"])?;
    std::fs::write(
        out.join("ipam_descriptor.bin"),
        prost::Message::encode_to_vec(&ipam_fds),
    )?;
    tonic_prost_build::configure().compile_fds(ipam_fds)?;
    tonic_prost_build::configure().compile_fds(protox::compile([policer], ["proto"])?)?;
    Ok(())
}
