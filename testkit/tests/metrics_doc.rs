//! The Grafana dashboard and the alerts read only series that `docs/metrics.md` names
//! (and each binary's own test checks that its registry renders only series named there):
//! a renamed series fails here, not on an operator's empty panel.

use std::path::Path;

use danm_testkit::metrics_doc::{names, reference};

fn series_in(file: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut found = Vec::new();
    for (at, _) in text.match_indices("danm_") {
        let name: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `danm_` alone is a prefix in prose, not a series.
        if name.matches('_').count() >= 2 && !found.contains(&name) {
            found.push(name);
        }
    }
    found
}

#[test]
fn the_dashboard_and_the_alerts_read_only_documented_series() {
    let reference = reference();
    for file in [
        "deploy/grafana/danm.json",
        "deploy/components/monitoring/alerts.yaml",
    ] {
        let series = series_in(file);
        assert!(!series.is_empty(), "{file} reads no danm_ series");
        let unknown: Vec<_> = series
            .iter()
            .filter(|s| {
                let base = ["_total", "_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| s.strip_suffix(suffix))
                    .unwrap_or(s);
                !names(&reference, base)
            })
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} reads series docs/metrics.md does not name: {unknown:?}"
        );
    }
}
