//! ipamd's modules in layers, kept by a test rather than by memory: a module may use only
//! modules of lower layers (and itself), so there is no circle and a reader can learn the
//! crate from the bottom up. The test reads the sources (`crate::module` paths outside
//! comments) and fails on any other import, naming it.

use std::collections::BTreeMap;
use std::path::Path;

/// From the bottom up. Within one layer, modules do not use each other.
const LAYERS: &[(&str, &[&str])] = &[
    ("leaves", &["store", "metrics"]),
    (
        "shared by the engine and its workers",
        &["error", "networks"],
    ),
    ("per-network workers", &["worker"]),
    ("engine and the status writer", &["engine", "status"]),
    (
        "the wire, transport and exposition",
        &["wire", "tls", "observe", "registry"],
    ),
    ("caller identity", &["tokens"]),
    ("authorization", &["authz"]),
    ("gRPC service", &["service"]),
    ("server", &["server"]),
    (
        "command-line tools and the composition root",
        &["cli", "run"],
    ),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// Every `crate::x` a module's files use (comments skipped), with where.
fn imports(src: &Path) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if !rel.ends_with(".rs") || rel == "lib.rs" || rel.starts_with("bin/") {
                continue;
            }
            let module = rel
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                // Forms this reader cannot follow are refused rather than skipped.
                for unreadable in ["crate::{", "super::super"] {
                    if code.contains(unreadable) {
                        out.entry(module.clone()).or_default().push((
                            format!("`{unreadable}`, which this test cannot follow: name one module per path"),
                            format!("{rel}:{}", n + 1),
                        ));
                    }
                }
                for (at, _) in code.match_indices("crate::") {
                    let used: String = code[at + "crate::".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !used.is_empty() && used != module {
                        out.entry(module.clone())
                            .or_default()
                            .push((used, format!("{rel}:{}", n + 1)));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let mut wrong = Vec::new();
    for module in lib.lines().filter_map(|l| {
        l.strip_prefix("pub mod ")
            .or_else(|| l.strip_prefix("mod "))
    }) {
        let module = module.trim_end_matches(';');
        if layer_of(module).is_none() {
            wrong.push(format!("module {module} is in no layer: add it to LAYERS"));
        }
    }
    for (module, used) in imports(&src) {
        let Some(from) = layer_of(&module) else {
            continue;
        };
        for (target, at) in used {
            match layer_of(&target) {
                Some(to) if to < from => {}
                Some(to) => wrong.push(format!(
                    "{at}: {module} ({}) uses {target} ({}), which is not below it",
                    LAYERS[from].0, LAYERS[to].0
                )),
                None => wrong.push(format!("{at}: {module} uses {target}, in no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

/// Every binary's `main` is one call into the library (`run` or `cli`): what a binary does
/// is read, and tested, in the layers above.
#[test]
fn every_binary_is_a_few_lines() {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin");
    let mut long = Vec::new();
    for entry in std::fs::read_dir(&bin).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("//"))
            .count();
        if code > 5 {
            long.push(format!("{}: {code} lines of code", path.display()));
        }
    }
    assert!(
        long.is_empty(),
        "a binary's body belongs in the library (`run` or `cli`):\n{}",
        long.join("\n")
    );
}
