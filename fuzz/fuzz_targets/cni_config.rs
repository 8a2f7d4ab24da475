//! The network configuration on a CNI plugin's stdin, as `danm` and `danm-ipam` read it:
//! never a panic, whatever the JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = danm_cni::danm::DanmConfig::parse(&config);
    let _ = danm_cni::ipam_plugin::IpamConfig::parse(&config, "default");
    let _ = danm_cni::ipamd::ClientTls::parse(&config, "ipamdTLS");
});
