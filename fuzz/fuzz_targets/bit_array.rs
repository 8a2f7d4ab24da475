//! DANM's `alloc`/`alloc6` bit arrays of a network being migrated: never a panic; every
//! allocation found is inside its network and not one of its reserved addresses.
#![no_main]

use base64::Engine as _;
use danm_core::network::{NetworkKey, NetworkKind, plan};
use danm_crds::{NetworkOptions, NetworkSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (selector, rest) = data.split_first().unwrap_or((&0, &[]));
    let encoded = base64::engine::general_purpose::STANDARD.encode(rest);
    // Half the time the raw text (most of it not base64), half the time valid base64.
    let alloc = if selector & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        encoded
    };
    let cidr = ["10.0.0.0/24", "10.0.0.0/30", "10.0.0.0/16", "10.0.0.0/32"]
        [usize::from(selector >> 1) % 4];
    let spec = NetworkSpec {
        network_id: "f".into(),
        options: NetworkOptions {
            cidr: Some(cidr.into()),
            net6: (selector & 0x10 != 0).then(|| "fd00::/120".into()),
            alloc: (selector & 0x20 == 0).then(|| alloc.clone()),
            alloc6: (selector & 0x20 != 0).then_some(alloc),
            routes: Some([("10.9.0.0/16".to_owned(), "10.0.0.1".to_owned())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let Ok(network) = plan(NetworkKey::new(NetworkKind::DanmNet, "ns", "f"), &spec) else {
        return;
    };
    if let Ok(found) = danm_core::migrate::legacy_allocations(&network) {
        for (family, offset) in found {
            let fp = network.family(family).expect("a family it has");
            assert!(fp.cidr.addr_at(offset).is_some(), "inside the network");
            assert!(!fp.reserved.contains_key(&offset), "not reserved");
        }
    }
});
