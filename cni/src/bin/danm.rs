//! `danm`: the CNI metaplugin (see the crate documentation and docs/cni.md). Run by a
//! container runtime when `CNI_COMMAND` is set; by hand otherwise (`danm --help`).

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        danm_cni::exec::run(&danm_cni::danm::Danm).await
    } else {
        danm_cni::cli::run(&std::env::args().skip(1).collect::<Vec<_>>()).await
    }
}
