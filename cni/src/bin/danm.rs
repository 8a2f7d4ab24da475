//! `danm`: the CNI metaplugin (see the crate documentation and the README's CNI section).

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    danm_cni::exec::run(&danm_cni::danm::Danm).await
}
