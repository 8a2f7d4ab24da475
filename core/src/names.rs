//! The one rule by which a string from an object (a network a tenant wrote, a CNI
//! configuration) becomes a file name, a program name or part of a link name: a **plain
//! name**, that is one path component and nothing else.
//!
//! `Path::join` with an absolute path replaces the base, and `..` climbs out of it, so a
//! NetworkType of `/sbin/reboot` or `../../usr/bin/x` would make the `danm` plugin run that
//! binary as root (the bug libcni fixed as CVE-2021-20206). A plain name is 1 to
//! [`MAX_NAME`] bytes of ASCII letters, digits, `_`, `.` and `-`, and is neither `.` nor
//! `..`: it can only ever name an entry of the folder it is joined to. ipamd and the
//! webhook refuse a network whose NetworkType or NetworkID breaks it ([`crate::network::plan`]),
//! and the plugin checks again, with [`file_in`], before every join.

use std::path::{Path, PathBuf};

/// The longest plain name, in bytes (a file name with `.conflist` appended stays far below
/// every filesystem's 255).
pub const MAX_NAME: usize = 128;

/// The longest file name [`file_in`] builds, in bytes: Linux's `NAME_MAX`. A plain name of
/// [`MAX_NAME`] bytes with any suffix the suite uses stays below it.
pub const MAX_FILE_NAME: usize = 255;

/// Why a string is not a plain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty.
    #[error("is empty")]
    Empty,
    /// Longer than its limit: [`MAX_NAME`] bytes for a name, [`MAX_FILE_NAME`] for the
    /// file name made of it.
    #[error("{name:?} is longer than {max} bytes")]
    TooLong {
        /// The name.
        name: String,
        /// The limit.
        max: usize,
    },
    /// `.` or `..`.
    #[error("{0:?} names a folder, not a file")]
    Dots(String),
    /// A character outside the allowed set (a `/` among them).
    #[error(
        "{name:?} contains {character:?}: only letters, digits, '_', '.' and '-' are allowed (no path separators)"
    )]
    Character {
        /// The name.
        name: String,
        /// The first character refused.
        character: char,
    },
}

/// Checks that `name` is a plain name (see the module overview).
pub fn plain(name: &str) -> Result<(), NameError> {
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong {
            name: name.to_owned(),
            max: MAX_NAME,
        });
    }
    one_component(name)
}

/// The rule without its length: 1 or more allowed characters, not `.` or `..`.
fn one_component(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots(name.to_owned()));
    }
    if let Some(character) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(NameError::Character {
            name: name.to_owned(),
            character,
        });
    }
    Ok(())
}

/// `dir/<name><suffix>`, when `name` is a plain name: the only way a name from an object
/// becomes a path. The result is always a direct child of `dir`.
pub fn file_in(dir: &Path, name: &str, suffix: &str) -> Result<PathBuf, NameError> {
    plain(name)?;
    let file = format!("{name}{suffix}");
    // The suffix is the caller's constant (".conf"); checked anyway, so that no call can
    // build a path with a separator in it. The file name may be longer than a plain name
    // (a name of MAX_NAME bytes plus ".conflist" is a valid file), not than the filesystem's.
    if file.len() > MAX_FILE_NAME {
        return Err(NameError::TooLong {
            name: file,
            max: MAX_FILE_NAME,
        });
    }
    one_component(&file)?;
    Ok(dir.join(file))
}

/// The network namespace a DanmEp records (`netns`, from the runtime's `CNI_NETNS`) as a
/// path the policer may enter: only `root/<plain name>`, the form runtimes give
/// (`/var/run/netns/cni-…`). Anything else, `..` or a path elsewhere included, is refused,
/// so no record can make the policer open a file outside `root`.
pub fn netns_in(root: &Path, recorded: &str) -> Result<PathBuf, NameError> {
    let path = Path::new(recorded);
    let name = path
        .parent()
        .filter(|parent| *parent == root)
        .and_then(|_| path.file_name())
        .and_then(|name| name.to_str())
        .ok_or_else(|| NameError::Character {
            name: recorded.to_owned(),
            character: '/',
        })?;
    file_in(root, name, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_netns_is_entered_only_under_the_root() {
        let root = Path::new("/var/run/netns");
        assert_eq!(
            netns_in(root, "/var/run/netns/cni-1234-abcd").unwrap(),
            root.join("cni-1234-abcd")
        );
        for hostile in [
            "",
            "/var/run/netns",
            "/var/run/netns/",
            "/var/run/netns/../../../etc/shadow",
            "/var/run/netns/..",
            "/var/run/netns/a/b",
            "/proc/1/ns/net",
            "/etc/passwd",
            "var/run/netns/x",
            "/var/run/netns/x\n",
            "/var/run/netnsx/y",
        ] {
            assert!(netns_in(root, hostile).is_err(), "{hostile:?} accepted");
        }
    }

    #[test]
    fn plain_names_pass() {
        for good in [
            "flannel",
            "sriov_a",
            "host-local",
            "v1.2",
            "a",
            "00-danm",
            ".x",
        ] {
            assert_eq!(plain(good), Ok(()), "{good}");
        }
        assert_eq!(plain(&"a".repeat(MAX_NAME)), Ok(()));
    }

    #[test]
    fn anything_that_could_leave_the_folder_is_refused() {
        for bad in [
            "",
            ".",
            "..",
            "/sbin/reboot",
            "../../../usr/bin/x",
            "a/b",
            "a\\b",
            "a b",
            "a\0b",
            "é",
            "x\n",
            "~root",
        ] {
            assert!(plain(bad).is_err(), "{bad:?} passed");
        }
        assert!(matches!(
            plain(&"a".repeat(MAX_NAME + 1)),
            Err(NameError::TooLong { .. })
        ));
        let e = plain("/sbin/reboot").unwrap_err().to_string();
        assert!(e.contains("'/'") && e.contains("path separators"), "{e}");
    }

    #[test]
    fn files_stay_in_their_folder() {
        let dir = Path::new("/etc/cni/net.d");
        assert_eq!(
            file_in(dir, "flannel", ".conf").unwrap(),
            Path::new("/etc/cni/net.d/flannel.conf")
        );
        for bad in ["/etc/passwd", "../x", "..", ""] {
            assert!(file_in(dir, bad, ".conf").is_err(), "{bad:?}");
        }
        assert!(file_in(dir, "x", "/../../y").is_err());
    }

    /// Found by the `network_spec` fuzz target: a NetworkID of 120 bytes was admitted, yet
    /// `<id>.conflist` (129 bytes) was refused as a file name, so the plugin could not look
    /// for the network's configuration at all.
    #[test]
    fn every_admitted_name_makes_a_file_with_any_suffix_the_suite_uses() {
        let dir = Path::new("/etc/cni/net.d");
        let longest = "y".repeat(MAX_NAME);
        for suffix in ["", ".conf", ".conflist"] {
            let file = file_in(dir, &longest, suffix).unwrap();
            assert_eq!(file.parent(), Some(dir));
        }
        assert!(matches!(
            file_in(dir, "x", &"y".repeat(MAX_FILE_NAME)),
            Err(NameError::TooLong { .. })
        ));
    }
}
