//! Keeps `docs/metrics.md` true: the series a registry renders, and those of them the
//! reference does not name.

use std::path::Path;

/// `docs/metrics.md`, as checked in.
pub fn reference() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The metric names a Prometheus text exposition declares (its `# TYPE` lines: counters
/// without their `_total`).
pub fn declared(exposition: &str) -> Vec<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Whether `reference` names the series `name` (as itself, or with a sample suffix such as
/// `_total` or `_bucket`), not merely a longer name that starts with it.
pub fn names(reference: &str, name: &str) -> bool {
    reference.match_indices(name).any(|(at, _)| {
        let rest = &reference[at + name.len()..];
        let rest = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| rest.strip_prefix(suffix))
            .unwrap_or(rest);
        !rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// The metrics `exposition` declares that `docs/metrics.md` does not name.
pub fn undocumented(exposition: &str) -> Vec<String> {
    let reference = reference();
    declared(exposition)
        .into_iter()
        .filter(|name| !names(&reference, name))
        .collect()
}

/// Fails, naming them, when `exposition` declares metrics `docs/metrics.md` does not name.
pub fn assert_documented(exposition: &str) {
    let missing = undocumented(exposition);
    assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_found_only_as_itself_or_with_a_sample_suffix() {
        let doc = "| `danm_x_passes_total` | and `danm_x_size_bucket`, `danm_x_rounds` |";
        for name in ["danm_x_passes", "danm_x_size", "danm_x_rounds"] {
            assert!(names(doc, name), "{name}");
        }
        for name in ["danm_x_pass", "danm_x_round", "danm_x_passes_total_x"] {
            assert!(!names(doc, name), "{name}");
        }
    }

    #[test]
    fn type_lines_declare_the_names() {
        let text = "# HELP a_b A.\n# TYPE a_b counter\na_b_total 1\n# TYPE c gauge\nc 2\n";
        assert_eq!(declared(text), ["a_b", "c"]);
    }
}
