//! Writes every danm.io CRD to `crds/manifests/` and to `deploy/crds/` (kustomize reads
//! files only from inside its own tree, so the deployment carries a copy), or only to the
//! folder given as first argument.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dirs = match std::env::args().nth(1) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![root.join("manifests"), root.join("../deploy/crds")],
    };
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for (file, crd) in danm_crds::all_crds() {
            let path = dir.join(file);
            std::fs::write(&path, danm_crds::render_crd(&crd))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
