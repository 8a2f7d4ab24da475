//! Which containerd a real node runs: Debian's 1.6 from `PATH`, or 2.x as
//! `testkit/k8s/build.sh` builds it.

use std::path::{Path, PathBuf};
use std::process::Command;

use danm_testkit::control_plane::ControlPlane;

/// The containerd a node runs.
#[derive(Debug, Clone)]
pub struct Containerd {
    /// `containerd`.
    pub daemon: PathBuf,
    /// `ctr`.
    pub ctr: PathBuf,
    /// The folder with `containerd-shim-runc-v2`, put first on the daemon's `PATH`.
    pub bin_dir: PathBuf,
    /// What `containerd --version` says.
    pub version: String,
}

impl Containerd {
    /// Debian's containerd 1.6 (`apt-get install containerd runc`; `.ci/run` installs
    /// them), from `PATH`.
    pub fn debian() -> Containerd {
        Containerd::find_debian().unwrap_or_else(|| {
            panic!(
                "containerd 1.6 with containerd-shim-runc-v2, ctr and runc is not on PATH: \
                 `apt-get install containerd runc` on Debian 12 (.ci/run does)"
            )
        })
    }

    /// Debian's containerd 1.6 if it is on `PATH` with its shim, `ctr` and runc.
    pub fn find_debian() -> Option<Containerd> {
        which("containerd")
            .and_then(|daemon| Containerd::in_dir(daemon.parent()?))
            .filter(|c| c.minor_version() == "1.6")
    }

    /// containerd 2.x as `testkit/k8s/build.sh` builds it, beside the control plane's
    /// binaries.
    pub fn built(plane: &ControlPlane) -> Containerd {
        let dir = plane.binary("containerd");
        Containerd::in_dir(&dir).unwrap_or_else(|| {
            panic!(
                "{} lacks containerd, containerd-shim-runc-v2 or ctr, or runc is not on PATH",
                dir.display()
            )
        })
    }

    /// The containerd of `bin_dir`, if it has the daemon, the shim and `ctr` (the host's
    /// `ctr` otherwise) and runc is on `PATH`.
    fn in_dir(bin_dir: &Path) -> Option<Containerd> {
        let daemon = bin_dir.join("containerd");
        let ctr = [bin_dir.join("ctr"), which("ctr").unwrap_or_default()]
            .into_iter()
            .find(|p| p.is_file())?;
        if !daemon.is_file() || !bin_dir.join("containerd-shim-runc-v2").is_file() {
            return None;
        }
        which("runc")?;
        let out = Command::new(&daemon).arg("--version").output().ok()?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Some(Containerd {
            daemon,
            ctr,
            bin_dir: bin_dir.to_owned(),
            version,
        })
    }

    /// The `major.minor` of this containerd (`1.6`), from its `--version`.
    pub fn minor_version(&self) -> String {
        self.version
            .split_whitespace()
            .find_map(|w| {
                let mut parts = w.trim_start_matches('v').split(['.', '~', '-', '+']);
                let (major, minor) = (parts.next()?, parts.next()?);
                (major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok())
                    .then(|| format!("{major}.{minor}"))
            })
            .unwrap_or_default()
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}
