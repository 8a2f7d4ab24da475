//! showalloc: shows who holds which address of a network, in DANM's format, from the
//! Kubernetes API or a running ipamd (see `danm_ipamd::showalloc::cli`).

fn main() -> std::process::ExitCode {
    danm_ipamd::showalloc::cli::main()
}
