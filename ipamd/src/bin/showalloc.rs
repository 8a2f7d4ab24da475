//! showalloc: shows who holds which address of a network, in DANM's format, from the
//! Kubernetes API or a running ipamd (see `danm_ipamd::cli::showalloc::cli`).

fn main() -> std::process::ExitCode {
    danm_ipamd::cli::showalloc::cli::main()
}
