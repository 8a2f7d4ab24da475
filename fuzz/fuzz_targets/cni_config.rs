//! The network configuration on a CNI plugin's stdin, as `danm` and `danm-ipam` read it:
//! never a panic, whatever the JSON. And whatever NetworkID, NetworkType or chain a network
//! names, every file the plugin would read is in `cniDir` and every program it would run is
//! in a `CNI_PATH` folder (libcni's CVE-2021-20206 was a plugin name with a path in it),
//! also for a libcni cache entry's configuration (`danm_cni::previous`), run at DEL.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use danm_cni::delegate::{Delegation, config_file};
use libfuzzer_sys::fuzz_target;

/// A folder of this process with one chain configuration, rewritten per input.
fn cni_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("danm-fuzz-cni-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        dir
    })
}

fn inside(path: &Path, dir: &Path) -> bool {
    path.parent() == Some(dir)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // NetworkID, NetworkType, then a conflist's JSON, separated by newlines.
    let mut parts = text.splitn(3, '\n');
    let (id, kind, chain) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let dir = cni_dir();
    let path = [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")];
    for suffix in [".conf", ".conflist"] {
        if let Ok(file) = config_file(dir, id, suffix) {
            assert!(inside(&file, dir), "{id:?} reads {}", file.display());
        }
    }
    // A network's own NetworkType as its single plugin.
    let single = Delegation {
        plugins: vec![(kind.to_owned(), serde_json::Value::Null)],
    };
    for program in single.programs(&path) {
        assert!(
            path.iter().any(|d| inside(&program, d)),
            "{kind:?} runs {}",
            program.display()
        );
    }
    // A chain whose plugin types come from the input.
    if std::fs::write(dir.join("chain.conflist"), chain).is_ok()
        && let Ok(delegation) = Delegation::load(dir, "chain", kind)
    {
        for program in delegation.programs(&path) {
            assert!(
                path.iter().any(|d| inside(&program, d)),
                "a chain runs {}",
                program.display()
            );
        }
    }

    // The same input as a libcni cache entry (its `config` in base64).
    if let Ok(delegation) = danm_cni::previous::parse_entry(data, "cbr0", "c", "eth0") {
        for program in delegation.programs(&path) {
            assert!(
                path.iter().any(|d| inside(&program, d)),
                "a cache entry runs {}",
                program.display()
            );
        }
    }

    let Ok(config) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(delegation) = Delegation::from_config(&config) {
        for program in delegation.programs(&path) {
            assert!(
                path.iter().any(|d| inside(&program, d)),
                "a configuration runs {}",
                program.display()
            );
        }
    }
    let _ = danm_cni::danm::DanmConfig::parse(&config);
    let _ = danm_cni::ipam_plugin::IpamConfig::parse(&config, "default");
    let _ = danm_cni::ipamd::parse_tls(&config, "ipamdTLS");
});
