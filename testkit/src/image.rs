//! Container images without a container engine: one layer of files taken from this
//! machine, an image configuration and a manifest, written as a docker archive (the format
//! of `docker save`), which `ctr images import` reads. The test bed's real nodes run images
//! built this way, because no registry is reachable here and no engine runs.
//!
//! The archive is deterministic: the same files give the same digests (every entry is
//! owned by root with a zero modification time).
//!
//! A dynamically linked program takes its shared libraries along
//! ([`ImageFile::program_with_libraries`], as `ldd` lists them), so the workspace's own
//! binaries run in an image with nothing else in it.

use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

/// A file of the image: `source` on this machine, at `path` inside the image.
#[derive(Debug, Clone)]
pub struct ImageFile {
    /// The file to copy.
    pub source: PathBuf,
    /// Its absolute path in the image (`/pause`).
    pub path: String,
    /// Its permission bits.
    pub mode: u32,
}

/// What an image is made of.
#[derive(Debug, Clone)]
pub struct Image {
    /// The reference it is imported as (`danm.test/pause:1`).
    pub reference: String,
    /// Its files, all in one layer.
    pub files: Vec<ImageFile>,
    /// The command it runs.
    pub entrypoint: Vec<String>,
    /// The user it runs as (`65535`), if not root.
    pub user: Option<String>,
    /// Symbolic links: (path in the image, target), as `/bin/sh` → `busybox`.
    pub links: Vec<(String, String)>,
}

/// `PATH` in every image's environment.
pub const IMAGE_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/";

impl ImageFile {
    /// The program `source` at `path`, with the shared libraries it loads (`ldd`'s list) at
    /// the paths the loader looks for them: the image needs no `/etc/ld.so.cache`.
    pub fn program_with_libraries(source: &Path, path: &str) -> Result<Vec<ImageFile>, ImageError> {
        let out = std::process::Command::new("ldd")
            .arg(source)
            .output()
            .map_err(|e| io(Path::new("ldd"), e))?;
        let listing = String::from_utf8_lossy(&out.stdout);
        let mut files = vec![ImageFile {
            source: source.to_path_buf(),
            path: path.to_string(),
            mode: 0o755,
        }];
        // A static program: `ldd` says "not a dynamic executable" and fails.
        if !out.status.success() {
            return Ok(files);
        }
        for library in shared_libraries(&listing) {
            files.push(ImageFile {
                source: PathBuf::from(&library),
                path: library,
                mode: 0o755,
            });
        }
        Ok(files)
    }
}

/// The libraries of `ldd`'s listing, by the absolute path the loader resolves (`libc.so.6
/// => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`, `/lib64/ld-linux-x86-64.so.2 (0x…)`); the
/// kernel's `linux-vdso.so.1` has no file.
fn shared_libraries(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or the archive written.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// A path in the image is not absolute, or is `/`.
    #[error("{0:?}: a file's path in the image must be absolute and name a file")]
    Path(String),
}

/// Writes `image` as a docker archive at `out`.
pub fn docker_archive(image: &Image, out: &Path) -> Result<(), ImageError> {
    let layer = layer(&image.files, &image.links)?;
    let layer_digest = hex_sha256(&layer);
    let mut config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": image.entrypoint, "Env": [format!("PATH={IMAGE_PATH}")]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    });
    if let Some(user) = &image.user {
        config["config"]["User"] = json!(user);
    }
    let config = serde_json::to_vec(&config).expect("JSON serializes");
    let config_name = format!("{}.json", hex_sha256(&config));
    let layer_name = format!("{layer_digest}/layer.tar");
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": [image.reference],
        "Layers": [layer_name],
    }]))
    .expect("JSON serializes");
    let mut archive = tar::Builder::new(Vec::new());
    for (name, data) in [
        (layer_name.as_str(), &layer),
        (config_name.as_str(), &config),
        ("manifest.json", &manifest),
    ] {
        append(&mut archive, name, data, 0o644).map_err(|e| io(out, e))?;
    }
    let bytes = archive.into_inner().map_err(|e| io(out, e))?;
    std::fs::write(out, bytes).map_err(|e| io(out, e))
}

/// The layer: each file's folders, then the file; then each link's folders and the link.
fn layer(files: &[ImageFile], links: &[(String, String)]) -> Result<Vec<u8>, ImageError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut folders = std::collections::BTreeSet::new();
    for file in files {
        let inside = inside(&file.path)?;
        let data = std::fs::read(&file.source).map_err(|e| io(&file.source, e))?;
        add_folders(&mut builder, &mut folders, inside).map_err(|e| io(&file.source, e))?;
        append(&mut builder, inside, &data, file.mode).map_err(|e| io(&file.source, e))?;
    }
    for (path, target) in links {
        let inside = inside(path)?;
        let fail = |e| ImageError::Io(path.clone(), e);
        add_folders(&mut builder, &mut folders, inside).map_err(fail)?;
        let mut header = header(0o777, 0);
        header.set_entry_type(tar::EntryType::Symlink);
        builder
            .append_link(&mut header, inside, target)
            .map_err(fail)?;
    }
    builder
        .into_inner()
        .map_err(|e| ImageError::Io("a layer".into(), e))
}

/// `path` without its leading `/`; refused unless absolute and naming a file.
fn inside(path: &str) -> Result<&str, ImageError> {
    path.strip_prefix('/')
        .filter(|p| !p.is_empty() && !p.ends_with('/'))
        .ok_or_else(|| ImageError::Path(path.to_string()))
}

/// The folders above `inside` that the layer does not hold yet.
fn add_folders(
    builder: &mut tar::Builder<Vec<u8>>,
    folders: &mut std::collections::BTreeSet<String>,
    inside: &str,
) -> std::io::Result<()> {
    let mut folder = String::new();
    let parts: Vec<&str> = inside.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        folder.push_str(part);
        folder.push('/');
        if folders.insert(folder.clone()) {
            let mut header = header(0o755, 0);
            header.set_entry_type(tar::EntryType::Directory);
            builder.append_data(&mut header, &folder, std::io::empty())?;
        }
    }
    Ok(())
}

fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &str,
    data: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut header = header(mode, data.len() as u64);
    builder.append_data(&mut header, name, data)
}

fn header(mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn io(path: &Path, e: std::io::Error) -> ImageError {
    ImageError::Io(path.display().to_string(), e)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn entries(bytes: &[u8]) -> Vec<(String, Vec<u8>, u32)> {
        tar::Archive::new(bytes)
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mode = e.header().mode().unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, data, mode)
            })
            .collect()
    }

    #[test]
    fn an_archive_names_its_config_and_layer_by_their_digests() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("pause");
        std::fs::write(&source, b"#!/bin/true\n").unwrap();
        let image = Image {
            reference: "danm.test/pause:1".into(),
            files: vec![ImageFile {
                source,
                path: "/bin/pause".into(),
                mode: 0o755,
            }],
            entrypoint: vec!["/bin/pause".into()],
            user: Some("65535".into()),
            links: vec![("/bin/sh".into(), "pause".into())],
        };
        let out = dir.path().join("pause.tar");
        docker_archive(&image, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let files = entries(&bytes);
        let get = |name: &str| {
            files
                .iter()
                .find(|(n, _, _)| n == name)
                .unwrap_or_else(|| panic!("no {name} in {files:?}"))
                .1
                .clone()
        };
        let manifest: serde_json::Value = serde_json::from_slice(&get("manifest.json")).unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], "danm.test/pause:1");
        let config_name = manifest[0]["Config"].as_str().unwrap();
        let config = get(config_name);
        assert_eq!(format!("{}.json", hex_sha256(&config)), config_name);
        let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(config["config"]["User"], "65535");
        assert_eq!(config["config"]["Entrypoint"][0], "/bin/pause");
        let layer = get(manifest[0]["Layers"][0].as_str().unwrap());
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", hex_sha256(&layer))
        );
        let layer = entries(&layer);
        assert_eq!(layer[0].0, "bin/");
        assert_eq!(
            layer[1],
            ("bin/pause".into(), b"#!/bin/true\n".to_vec(), 0o755)
        );
        let link = tar::Archive::new(&get(manifest[0]["Layers"][0].as_str().unwrap())[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().display().to_string() == "bin/sh")
            .map(|e| e.link_name().unwrap().unwrap().display().to_string());
        assert_eq!(link.as_deref(), Some("pause"));
        // Deterministic: the same files give the same bytes.
        docker_archive(&image, &dir.path().join("again.tar")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("again.tar")).unwrap(), bytes);
    }

    #[test]
    fn a_path_that_is_not_absolute_is_refused() {
        let image = Image {
            reference: "x:1".into(),
            files: vec![ImageFile {
                source: "/etc/hostname".into(),
                path: "pause".into(),
                mode: 0o755,
            }],
            entrypoint: vec![],
            user: None,
            links: vec![],
        };
        let out = std::env::temp_dir().join("danm-never-written.tar");
        assert!(matches!(
            docker_archive(&image, &out),
            Err(ImageError::Path(_))
        ));
        assert!(!out.exists());
    }

    #[test]
    fn ldd_listings_give_the_paths_the_loader_resolves() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f10)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f10)\n";
        assert_eq!(
            shared_libraries(listing),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn a_dynamic_program_takes_its_libraries_along() {
        let files = ImageFile::program_with_libraries(Path::new("/bin/true"), "/bin/true")
            .expect("ldd runs");
        assert_eq!(files[0].path, "/bin/true");
        assert!(
            files.iter().any(|f| f.path.ends_with("/libc.so.6")),
            "/bin/true loads libc: {files:?}"
        );
        assert!(files.iter().all(|f| f.source.exists()), "{files:?}");
    }
}
