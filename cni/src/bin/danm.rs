//! `danm`: the CNI metaplugin (see the crate documentation and docs/cni.md).

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    danm_cni::exec::run(&danm_cni::danm::Danm).await
}
