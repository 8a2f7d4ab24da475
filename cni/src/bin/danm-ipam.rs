//! `danm-ipam`: ipamd as the IPAM plugin of any CNI configuration.

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    danm_cni::exec::run(&danm_cni::ipam_plugin::DanmIpam).await
}
