//! What the binaries link, from the repository's own files: a workspace crate's normal
//! `[dependencies]` (its `Cargo.toml`), then every external crate's dependencies as
//! `Cargo.lock` resolved them (an over-approximation: the features any crate of the
//! workspace enables, and build dependencies, count): netwatcher does not link the CNI
//! crate or the gRPC stack for one netlink function. And, from `cargo tree`, the CNI
//! plugins link no kube crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Each package of `Cargo.lock` (by name; versions merged) and what it depends on.
fn lock() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join("Cargo.lock")).unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for package in text.split("[[package]]").skip(1) {
        let name = package
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .unwrap()
            .trim_matches('"')
            .to_owned();
        let mut deps = BTreeSet::new();
        if let Some(list) = package.split("dependencies = [").nth(1) {
            for line in list.lines().take_while(|l| !l.starts_with(']')) {
                let entry = line.trim().trim_end_matches(',').trim_matches('"');
                if let Some(dep) = entry.split_whitespace().next().filter(|d| !d.is_empty()) {
                    deps.insert(dep.to_owned());
                }
            }
        }
        out.entry(name).or_default().extend(deps);
    }
    out
}

/// The workspace's crates: package name → folder.
fn members() -> BTreeMap<String, std::path::PathBuf> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root()).unwrap() {
        let folder = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(folder.join("Cargo.toml")) else {
            continue;
        };
        if let Some(name) = text
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .filter(|_| text.starts_with("[package]"))
        {
            out.insert(name.trim_matches('"').to_owned(), folder);
        }
    }
    out
}

/// The names in a workspace crate's `[dependencies]` table (not dev, not build).
fn normal_dependencies(folder: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(folder.join("Cargo.toml")).unwrap();
    let Some(table) = text.split("\n[dependencies]\n").nth(1) else {
        return BTreeSet::new();
    };
    table
        .lines()
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| {
            let name = l.split(['=', '.']).next()?.trim();
            (!name.is_empty() && !name.starts_with('#')).then(|| name.to_owned())
        })
        .collect()
}

/// Every crate `package` links (itself included).
fn linked(package: &str) -> BTreeSet<String> {
    let (lock, members) = (lock(), members());
    let mut seen = BTreeSet::new();
    let mut pending = vec![package.to_owned()];
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let deps = match members.get(&name) {
            Some(folder) => normal_dependencies(folder),
            None => lock.get(&name).cloned().unwrap_or_default(),
        };
        pending.extend(deps);
    }
    seen
}

#[test]
fn netwatcher_links_neither_the_cni_crate_nor_grpc() {
    let linked = linked("danm-watchers");
    assert!(
        linked.contains("danm-netlink") && linked.contains("kube"),
        "{linked:?}"
    );
    for absent in ["danm-cni", "tonic", "danm-proto"] {
        assert!(!linked.contains(absent), "danm-watchers links {absent}");
    }
}

/// The CNI plugins (`danm`, `danm-ipam`) link no kube crate at all: danm-core and
/// danm-crds without their `kube` feature are the pure rules and the specs. Asked of cargo
/// itself (`cargo tree`, offline), since only it resolves features as a build of the CNI
/// crate alone does.
#[test]
fn the_cni_plugins_link_no_kube_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = std::process::Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "-p",
            "danm-cni",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        tree.contains("danm-core") && tree.contains("danm-crds"),
        "{tree}"
    );
    let kube: Vec<&str> = tree
        .lines()
        .filter(|l| l.starts_with("kube") || l.starts_with("danm-runtime"))
        .collect();
    assert!(kube.is_empty(), "danm-cni links {kube:?}");
}
