//! ipamctl: the operator's CLI for a running ipamd (see `danm_ipamd::cli::ipamctl`).

fn main() -> std::process::ExitCode {
    danm_ipamd::cli::ipamctl::main()
}
