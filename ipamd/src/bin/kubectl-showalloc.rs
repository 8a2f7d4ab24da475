//! `kubectl showalloc`: showalloc as a kubectl plugin (kubectl runs `kubectl-showalloc` from
//! the PATH with the arguments after `showalloc`).

fn main() -> std::process::ExitCode {
    danm_ipamd::cli::showalloc::cli::main()
}
