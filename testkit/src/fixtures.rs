//! Manifests modelled on DANM's examples, written in this repository
//! (`testkit/fixtures/danm/`, see its README), so that tests never read outside it.

use std::path::{Path, PathBuf};

/// The folder of the fixtures.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/danm")
}

/// The text of one fixture, by its path under `fixtures/danm/`
/// (e.g. `4_0_examples/7_default_cnet.yaml`). Panics naming the file if it is missing.
pub fn read(path: &str) -> String {
    let file = dir().join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("fixture {}: {e}", file.display()))
}

/// Every YAML fixture, sorted, as (path under `fixtures/danm/`, text).
pub fn all() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("the fixtures folder is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }
    let root = dir();
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("a fixture is readable");
            let name = f
                .strip_prefix(&root)
                .expect("under the root")
                .to_string_lossy()
                .into_owned();
            (name, text)
        })
        .collect()
}
