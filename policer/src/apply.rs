//! A transaction of [`crate::ruleset`] applied inside a pod's network namespace: `nft -j
//! -f -` run from a thread that entered the namespace (the process inherits it), so the
//! policer's own namespace is never changed and the kernel applies the whole batch or
//! nothing.

use std::path::{Path, PathBuf};

use nftables::schema::Nftables;

/// Why a transaction was not applied (the pod keeps the rules it had).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The namespace could not be opened (the sandbox is gone, or never was).
    #[error("network namespace {path}: {source}")]
    Namespace {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The namespace could not be entered.
    #[error("entering network namespace {path}: {source}")]
    Enter {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: nix::Error,
    },
    /// `nft` could not be run.
    #[error("running {program} in {path}: {source}")]
    Run {
        /// The namespace's path.
        path: PathBuf,
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `nft` refused the batch (the kernel applied none of it).
    #[error("nft in {path} refused the transaction: {stderr}")]
    Refused {
        /// The namespace's path.
        path: PathBuf,
        /// What `nft` said.
        stderr: String,
    },
    /// `nft` printed something that is not its JSON.
    #[error("nft in {path} printed no valid JSON: {source}")]
    Output {
        /// The namespace's path.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// `nft` did not finish in time and was killed (the kernel applied all or nothing).
    #[error("nft in {path} did not finish within {after:?}: killed")]
    TimedOut {
        /// The namespace's path.
        path: PathBuf,
        /// The limit.
        after: std::time::Duration,
    },
    /// The thread that runs `nft` panicked.
    #[error("the thread applying rules in {0} panicked")]
    Panicked(PathBuf),
}

/// Runs `nft` (the program `nft` on the PATH, or `nft` given) on `batch` in the network
/// namespace at `netns`.
pub fn apply(netns: &Path, batch: &Nftables<'_>, nft: Option<&Path>) -> Result<(), ApplyError> {
    let payload = serde_json::to_vec(batch).expect("a ruleset always serializes");
    in_namespace(netns, |path| {
        run(path, nft, &["-j", "-f", "-"], &payload).map(drop)
    })
}

/// Gives a sandbox its first table with `create` ([`crate::ruleset::create`]: no delete,
/// so no wait for the kernel's grace period); when a table of ours is there after all (one
/// an earlier run left that its first round did not see), the kernel refuses the create
/// and `replace` runs instead.
pub fn apply_first(
    netns: &Path,
    create: &Nftables<'_>,
    replace: &Nftables<'_>,
    nft: Option<&Path>,
) -> Result<(), ApplyError> {
    match apply(netns, create, nft) {
        Err(ApplyError::Refused { stderr, .. }) if stderr.contains("File exists") => {
            apply(netns, replace, nft)
        }
        other => other,
    }
}

/// Removes the table of ours in the namespace at `netns` if there is one: listed first, since
/// a transaction that deletes waits for the kernel's grace period even when the table does
/// not exist. For the first round, which clears every sandbox no policy selects.
pub fn clear(netns: &Path, nft: Option<&Path>) -> Result<(), ApplyError> {
    match current(netns, nft)? {
        Some(_) => apply(netns, &crate::ruleset::remove(), nft),
        None => Ok(()),
    }
}

/// The table of ours in the namespace at `netns`, as `nft -j list table` prints it; None
/// when there is none.
pub fn current(netns: &Path, nft: Option<&Path>) -> Result<Option<Nftables<'static>>, ApplyError> {
    in_namespace(netns, |path| {
        let listed = run(
            path,
            nft,
            &["-j", "list", "table", "inet", crate::ruleset::TABLE],
            b"",
        );
        match listed {
            Ok(stdout) => {
                serde_json::from_slice(&stdout)
                    .map(Some)
                    .map_err(|source| ApplyError::Output {
                        path: path.to_owned(),
                        source,
                    })
            }
            // Listing a table that does not exist fails with ENOENT.
            Err(ApplyError::Refused { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    })
}

/// Runs `nft args` with `stdin`; its standard output, or its standard error as the error.
fn run(
    path: &Path,
    nft: Option<&Path>,
    args: &[&str],
    stdin: &[u8],
) -> Result<Vec<u8>, ApplyError> {
    use std::io::Write;
    let program = nft.unwrap_or(Path::new("nft"));
    let failed = |source| ApplyError::Run {
        path: path.to_owned(),
        program: program.to_owned(),
        source,
    };
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(failed)?;
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let mut input = child.stdin.take().expect("stdin is piped");
    let written = input.write_all(stdin);
    drop(input);
    // A hung nft would hold every later round (and so every new pod's gate): killed.
    let deadline = std::time::Instant::now() + NFT_TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(failed)? {
            Some(status) => break status,
            None if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ApplyError::TimedOut {
                    path: path.to_owned(),
                    after: NFT_TIMEOUT,
                });
            }
            None => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
    };
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    if !status.success() {
        return Err(ApplyError::Refused {
            path: path.to_owned(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        });
    }
    written.map_err(failed)?;
    Ok(stdout)
}

/// How long one `nft` may run before it is killed (the pod keeps its previous table).
pub const NFT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `work` on a new thread inside the network namespace at `netns` (a scoped thread:
/// it ends, and the namespace with it, before this returns).
fn in_namespace<T: Send>(
    netns: &Path,
    work: impl FnOnce(&Path) -> Result<T, ApplyError> + Send,
) -> Result<T, ApplyError> {
    let file = std::fs::File::open(netns).map_err(|source| ApplyError::Namespace {
        path: netns.to_owned(),
        source,
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                    |source| ApplyError::Enter {
                        path: netns.to_owned(),
                        source,
                    },
                )?;
                work(netns)
            })
            .join()
            .map_err(|_| ApplyError::Panicked(netns.to_owned()))?
    })
}
