//! ipamd: serves the danm.ipam.v1 gRPC API on a store (see `danm_ipamd::run`).

fn main() -> std::process::ExitCode {
    danm_ipamd::run::main()
}
