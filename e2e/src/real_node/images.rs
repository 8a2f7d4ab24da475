//! The images of `deploy/images`, built here without a container engine from the binaries
//! the tests run (`target/<profile>/`), under the references the manifests name
//! (`ghcr.io/danm-rs/ipamd:0.1.0`...), so `deploy/base` finds them on a real node without
//! a registry (its pods pull `IfNotPresent`).
//!
//! The daemons' images are the rows of the table in `deploy/images/Dockerfile` (read by
//! [`daemon_images`]); the installer's layout is [`installer_image`]'s, checked against the
//! `COPY` lines of `deploy/images/Dockerfile.cni-installer` by this module's tests. They
//! differ from what the Dockerfiles build in three ways only, each forced by this machine
//! (no Rust musl target, no registry): the binaries are the tests' glibc builds with the
//! libraries they load ([`ImageFile::program_with_libraries`]) rather than static musl
//! release builds; the installer's shell is Debian's `busybox-static` rather than the
//! `busybox:1.37-musl` image's; there is one layer. Paths, users and entrypoints are the
//! Dockerfiles'.

use std::path::{Path, PathBuf};

use danm_testkit::image::{Image, ImageFile};

use crate::cluster::binary;

/// The CNI installer's image, as `deploy/base/cni/installer.yaml` names it.
pub const INSTALLER_IMAGE: &str = "ghcr.io/danm-rs/cni-installer:0.1.0";

/// The policer's image (`deploy/images/Dockerfile.policer`: its binary and nft), as the
/// opt-in `deploy/components/policer` names it.
pub const POLICER_IMAGE: &str = "ghcr.io/danm-rs/policer:0.1.0";

/// Where the daemons' images keep their binaries (distroless's `PATH`).
const DAEMON_BIN: &str = "/usr/local/bin";

/// The user of the daemons' images (distroless's `nonroot`).
const NONROOT: &str = "65532:65532";

/// The busybox applets `install-cni.sh` runs, linked to `/bin/busybox`.
const INSTALLER_APPLETS: &[&str] = &[
    "sh", "cp", "chmod", "mv", "mkdir", "rm", "sed", "sleep", "cmp", "grep",
];

/// A file of the installer's image from the repository: (path in the repository, path in
/// the image).
const INSTALLER_FILES: &[(&str, &str)] = &[
    ("deploy/images/install-cni.sh", "/install-cni.sh"),
    (
        "deploy/base/cni/00-danm.conf.template",
        "/etc/danm/cni/00-danm.conf.template",
    ),
];

/// The installer's plugins, in `/opt/danm/bin/`.
const INSTALLER_PLUGINS: &[&str] = &["danm", "danm-ipam"];

/// One row of `deploy/images/Dockerfile`'s table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonImage {
    /// The reference (`ghcr.io/danm-rs/ipamd:0.1.0`).
    pub reference: String,
    /// The Cargo package its binaries come from (`danm-ipamd`).
    pub package: String,
    /// The binaries, in `/usr/local/bin`.
    pub binaries: Vec<String>,
}

/// A file of the repository.
pub fn repository_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repository_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The rows of `deploy/images/Dockerfile`'s table: comment lines `#   <image> <package>
/// <binaries>...` whose image is one of `ghcr.io/danm-rs/`.
pub fn daemon_images() -> Vec<DaemonImage> {
    parse_table(&read("deploy/images/Dockerfile"))
}

fn parse_table(dockerfile: &str) -> Vec<DaemonImage> {
    dockerfile
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix('#')?.split_whitespace();
            let reference = words.next().filter(|w| w.starts_with("ghcr.io/danm-rs/"))?;
            let package = words.next()?;
            Some(DaemonImage {
                reference: reference.to_string(),
                package: package.to_string(),
                binaries: words.map(str::to_string).collect(),
            })
        })
        .collect()
}

/// The image of one row: its binaries in `/usr/local/bin` with their libraries, run as
/// 65532 (the manifests name the program to run, as for distroless, which has no
/// entrypoint).
pub fn daemon_image(row: &DaemonImage) -> Image {
    let mut files = Vec::new();
    for name in &row.binaries {
        files.extend(
            ImageFile::program_with_libraries(&binary(name), &format!("{DAEMON_BIN}/{name}"))
                .unwrap_or_else(|e| panic!("{name}'s libraries: {e}")),
        );
    }
    Image {
        reference: row.reference.clone(),
        files: dedup(files),
        entrypoint: vec![],
        user: Some(NONROOT.into()),
        links: vec![],
    }
}

/// The installer's image: `danm` and `danm-ipam` (with their libraries) in
/// `/opt/danm/bin`, `install-cni.sh` as its entrypoint, the template, and a static busybox
/// (Debian's `busybox-static`, which `.ci/run` installs) for the script's shell and tools.
pub fn installer_image() -> Image {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: `apt-get install busybox-static` (.ci/run does)"
    );
    let mut files =
        ImageFile::program_with_libraries(busybox, "/bin/busybox").expect("busybox's libraries");
    for plugin in INSTALLER_PLUGINS {
        files.extend(
            ImageFile::program_with_libraries(&binary(plugin), &format!("/opt/danm/bin/{plugin}"))
                .unwrap_or_else(|e| panic!("{plugin}'s libraries: {e}")),
        );
    }
    for (source, path) in INSTALLER_FILES {
        files.push(ImageFile {
            source: repository_file(source),
            path: path.to_string(),
            mode: if path.ends_with(".sh") { 0o755 } else { 0o644 },
        });
    }
    Image {
        reference: INSTALLER_IMAGE.into(),
        files: dedup(files),
        entrypoint: vec!["/install-cni.sh".into()],
        user: None,
        links: INSTALLER_APPLETS
            .iter()
            .map(|applet| (format!("/bin/{applet}"), "busybox".to_string()))
            .collect(),
    }
}

/// The policer's image (`deploy/images/Dockerfile.policer`): `policer` in `/usr/local/bin`
/// and the host's `nft` (Debian's nftables, which `.ci/run` installs) in `/usr/sbin`, each
/// with its libraries; run as root, as the DaemonSet of `deploy/components/policer` says.
pub fn policer_image() -> Image {
    let nft = Path::new("/usr/sbin/nft");
    assert!(
        nft.exists(),
        "/usr/sbin/nft is missing: `apt-get install nftables` (.ci/run does)"
    );
    let mut files =
        ImageFile::program_with_libraries(nft, "/usr/sbin/nft").expect("nft's libraries");
    files.extend(
        ImageFile::program_with_libraries(&binary("policer"), &format!("{DAEMON_BIN}/policer"))
            .expect("the policer's libraries"),
    );
    Image {
        reference: POLICER_IMAGE.into(),
        files: dedup(files),
        entrypoint: vec![],
        user: None,
        links: vec![],
    }
}

/// Every image of `deploy/images`.
pub fn deploy_images() -> Vec<Image> {
    let mut images: Vec<Image> = daemon_images().iter().map(daemon_image).collect();
    images.push(installer_image());
    images
}

/// One copy of each path (two programs load the same libraries).
fn dedup(files: Vec<ImageFile>) -> Vec<ImageFile> {
    let mut seen = std::collections::BTreeSet::new();
    files
        .into_iter()
        .filter(|f| seen.insert(f.path.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The binaries of the workspace package `package`: its `[[bin]]` names and the files
    /// of its `src/bin/` (Cargo's automatic targets).
    fn package_binaries(package: &str) -> BTreeSet<String> {
        let root = repository_file("");
        for entry in std::fs::read_dir(&root).unwrap() {
            let folder = entry.unwrap().path();
            let manifest = folder.join("Cargo.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else {
                continue;
            };
            if !text.contains(&format!("\nname = \"{package}\"\n")) {
                continue;
            }
            let mut binaries: BTreeSet<String> = text
                .split("[[bin]]")
                .skip(1)
                .filter_map(|section| {
                    let line = section.lines().find(|l| l.starts_with("name = "))?;
                    Some(
                        line.trim_start_matches("name = ")
                            .trim_matches('"')
                            .to_string(),
                    )
                })
                .collect();
            if let Ok(files) = std::fs::read_dir(folder.join("src/bin")) {
                for file in files {
                    let path = file.unwrap().path();
                    if path.extension().is_some_and(|e| e == "rs") {
                        binaries.insert(path.file_stem().unwrap().to_string_lossy().into());
                    }
                }
            }
            return binaries;
        }
        panic!("no package {package} in the workspace");
    }

    /// `(image, program)` for every container of the manifests under `deploy/` whose image
    /// is one of ours: the `image:` line and the first path of the `command:` line after it.
    fn manifest_programs() -> Vec<(String, String, PathBuf)> {
        let mut found = Vec::new();
        let mut folders = vec![repository_file("deploy")];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "yaml") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let mut image = None;
                for line in text.lines().map(str::trim) {
                    if let Some(reference) = line.strip_prefix("image: ") {
                        image = reference
                            .starts_with("ghcr.io/danm-rs/")
                            .then(|| reference.to_string());
                    } else if let (Some(command), Some(reference)) =
                        (line.strip_prefix("command: "), image.take())
                    {
                        let program = command
                            .trim_start_matches("[\"")
                            .split('"')
                            .next()
                            .unwrap()
                            .to_string();
                        found.push((reference, program, path.clone()));
                    }
                }
            }
        }
        found
    }

    #[test]
    fn the_table_has_every_image_the_kustomization_retags() {
        // The `images:` block: `- name: <image>` then `  newTag: <tag>`.
        let kustomization = read("deploy/base/kustomization.yaml");
        let lines: Vec<&str> = kustomization.lines().map(str::trim).collect();
        let retagged: BTreeSet<String> = lines
            .windows(2)
            .filter_map(|pair| {
                let name = pair[0].strip_prefix("- name: ghcr.io/danm-rs/")?;
                let tag = pair[1].strip_prefix("newTag: ")?;
                Some(format!("ghcr.io/danm-rs/{name}:{tag}"))
            })
            .collect();
        let mut built: BTreeSet<String> = daemon_images()
            .into_iter()
            .map(|row| row.reference)
            .collect();
        built.insert(INSTALLER_IMAGE.into());
        assert_eq!(built, retagged);
    }

    #[test]
    fn each_row_of_the_table_names_every_binary_of_its_package() {
        let rows = daemon_images();
        assert_eq!(rows.len(), 5, "{rows:?}");
        for row in rows {
            let listed: BTreeSet<String> = row.binaries.iter().cloned().collect();
            assert_eq!(
                listed,
                package_binaries(&row.package),
                "deploy/images/Dockerfile's row for {}",
                row.reference
            );
        }
    }

    #[test]
    fn every_program_the_manifests_run_is_in_the_image_they_name() {
        let rows = daemon_images();
        let programs = manifest_programs();
        assert!(programs.len() >= 7, "{programs:?}");
        for (reference, program, file) in programs {
            if reference == INSTALLER_IMAGE {
                assert_eq!(vec![program], installer_image().entrypoint, "{file:?}");
                continue;
            }
            if reference == POLICER_IMAGE {
                assert_eq!(program, format!("{DAEMON_BIN}/policer"), "{file:?}");
                continue;
            }
            let row = rows
                .iter()
                .find(|row| row.reference == reference)
                .unwrap_or_else(|| panic!("{file:?}: {reference} is not in the table"));
            let name = program
                .strip_prefix(&format!("{DAEMON_BIN}/"))
                .unwrap_or_else(|| panic!("{file:?}: {program} is not in {DAEMON_BIN}"));
            assert!(
                row.binaries.iter().any(|b| b == name),
                "{file:?} runs {program}, which {reference} does not hold"
            );
        }
    }

    /// The policer's Dockerfile builds its package's binary into the path its DaemonSet
    /// runs, on an image that has nft.
    #[test]
    fn the_policer_image_holds_its_binary_and_nft() {
        let dockerfile = read("deploy/images/Dockerfile.policer");
        assert!(
            dockerfile.contains("-p danm-policer --bin policer"),
            "{dockerfile}"
        );
        assert!(
            dockerfile.contains(&format!("/src/target/release/policer {DAEMON_BIN}/policer")),
            "{dockerfile}"
        );
        assert!(
            dockerfile.contains("install -y --no-install-recommends nftables"),
            "{dockerfile}"
        );
        assert_eq!(
            package_binaries("danm-policer"),
            BTreeSet::from(["policer".to_owned()])
        );
    }

    #[test]
    fn the_installer_holds_what_its_dockerfile_copies() {
        let dockerfile = read("deploy/images/Dockerfile.cni-installer").replace("\\\n", " ");
        // The final stage's: what the image holds.
        let last_stage = &dockerfile[dockerfile.rfind("\nFROM ").expect("a FROM")..];
        let mut copied = BTreeSet::new();
        for line in last_stage.lines() {
            let Some(args) = line.strip_prefix("COPY ") else {
                continue;
            };
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let (target, sources) = words.split_last().unwrap();
            for source in sources {
                let name = source.rsplit('/').next().unwrap();
                copied.insert(if target.ends_with('/') {
                    format!("{target}{name}")
                } else {
                    target.to_string()
                });
            }
        }
        let image = installer_image();
        let ours: BTreeSet<String> = image
            .files
            .iter()
            .map(|f| f.path.clone())
            .filter(|p| !p.starts_with("/bin/") && !p.contains("/lib"))
            .collect();
        assert_eq!(ours, copied);
        assert!(
            dockerfile.contains(&format!("ENTRYPOINT [\"{}\"]", image.entrypoint[0])),
            "the Dockerfile's entrypoint is {:?}",
            image.entrypoint
        );
    }

    #[test]
    fn the_table_is_read_as_written() {
        let rows = parse_table(
            "# image  package  binaries\n#   ghcr.io/danm-rs/x:1  danm-x  a b\n# ghcr.io/other/y:1 p c\nFROM z\n",
        );
        assert_eq!(
            rows,
            [DaemonImage {
                reference: "ghcr.io/danm-rs/x:1".into(),
                package: "danm-x".into(),
                binaries: vec!["a".into(), "b".into()],
            }]
        );
    }
}
