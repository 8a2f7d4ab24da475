//! Writes every danm.io CRD to `crds/manifests/` (or the folder given as first argument).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests"));
    std::fs::create_dir_all(&dir)?;
    for (file, crd) in danm_crds::all_crds() {
        let path = dir.join(file);
        std::fs::write(&path, danm_crds::render_crd(&crd))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
