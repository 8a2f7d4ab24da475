//! The command-line tools beside ipamd: [`showalloc`] (who holds which address, in DANM's
//! format, from the API or from ipamd) and [`ipamctl`] (an operator's calls to a running
//! ipamd). Their binaries' mains call `main` here.

pub mod ipamctl;
pub mod showalloc;
