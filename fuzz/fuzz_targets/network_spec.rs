//! Network validation on any spec (a DanmNet, TenantNetwork or ClusterNetwork anyone with
//! the right to create one can write): it never panics and always answers (a plan or an
//! error naming a field); a plan's pools lie inside their CIDRs; and a network that passes
//! names only files inside `cniDir` and programs inside `CNI_PATH` (its NetworkID and
//! NetworkType are one path component each).
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use danm_core::names::file_in;
use danm_core::network::{NetworkKey, NetworkKind, plan};
use danm_crds::{IpPool, IpPoolV6, NetworkOptions, NetworkSpec};
use libfuzzer_sys::fuzz_target;

/// A field's text: mostly values that are nearly right, sometimes anything.
fn text(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<String>> {
    const NEAR: &[&str] = &[
        "10.0.0.0/24",
        "10.0.0.0/8",
        "10.0.0.1",
        "10.0.0.254",
        "10.0.0.255",
        "10.0.1.0/24",
        "10.0.0.0/33",
        "0.0.0.0/0",
        "fd00::/64",
        "fd00::/120",
        "fd00::5",
        "fd00::/129",
        "2001:db8::/32",
        "::/0",
        "",
        " 10.0.0.1",
        "300.1.1.1",
        "10.0.0.0/24/1",
    ];
    Ok(match u.int_in_range(0..=3)? {
        0 => None,
        1 | 2 => Some((*u.choose(NEAR)?).to_owned()),
        _ => Some(String::arbitrary(u)?),
    })
}

fn routes(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<BTreeMap<String, String>>> {
    if bool::arbitrary(u)? {
        return Ok(None);
    }
    let mut map = BTreeMap::new();
    for _ in 0..u.int_in_range(0..=3)? {
        if let (Some(k), Some(v)) = (text(u)?, text(u)?) {
            map.insert(k, v);
        }
    }
    Ok(Some(map))
}

fn spec(u: &mut Unstructured<'_>) -> arbitrary::Result<NetworkSpec> {
    let backend = [
        "ipvlan",
        "macvlan",
        "sriov",
        "flannel",
        "",
        "bridge",
        "/sbin/reboot",
        "../../../usr/bin/x",
        "..",
        "a/b",
    ];
    let network_type = if bool::arbitrary(u)? {
        (*u.choose(&backend)?).to_owned()
    } else {
        String::arbitrary(u)?
    };
    Ok(NetworkSpec {
        network_id: text(u)?.unwrap_or_default(),
        network_type,
        allowed_tenants: Option::<Vec<String>>::arbitrary(u)?,
        options: NetworkOptions {
            host_device: text(u)?,
            device_pool: text(u)?,
            vxlan: Option::<i64>::arbitrary(u)?,
            vlan: Option::<i64>::arbitrary(u)?,
            container_prefix: text(u)?,
            cidr: text(u)?,
            allocation_pool: bool::arbitrary(u)?
                .then(|| -> arbitrary::Result<IpPool> {
                    Ok(IpPool {
                        start: text(u)?,
                        end: text(u)?,
                        last_ip: text(u)?,
                    })
                })
                .transpose()?,
            net6: text(u)?,
            allocation_pool_v6: bool::arbitrary(u)?
                .then(|| -> arbitrary::Result<IpPoolV6> {
                    Ok(IpPoolV6 {
                        cidr: text(u)?,
                        start: text(u)?,
                        end: text(u)?,
                        last_ip: text(u)?,
                    })
                })
                .transpose()?,
            routes: routes(u)?,
            routes6: routes(u)?,
            rt_tables: Option::<i64>::arbitrary(u)?,
            static_scope: None,
            alloc: None,
            alloc6: None,
        },
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(spec) = spec(&mut u) else {
        return;
    };
    let kind = [
        NetworkKind::DanmNet,
        NetworkKind::TenantNetwork,
        NetworkKind::ClusterNetwork,
    ][usize::from(data.first().copied().unwrap_or(0)) % 3];
    match plan(NetworkKey::new(kind, "ns", "n"), &spec) {
        Ok(network) => {
            let cni_dir = Path::new("/etc/cni/net.d");
            let cni_path = Path::new("/opt/cni/bin");
            for (name, suffix, dir) in [
                (&spec.network_id, ".conf", cni_dir),
                (&spec.network_id, ".conflist", cni_dir),
                (&spec.network_type, "", cni_path),
            ] {
                if name.is_empty() {
                    continue;
                }
                let file = file_in(dir, name, suffix)
                    .expect("an admitted name is a plain name: the plugin accepts it");
                assert_eq!(
                    file.parent(),
                    Some(dir),
                    "{name:?} leaves {}",
                    dir.display()
                );
            }
            for family in danm_core::Family::ALL {
                if let Some(fp) = network.family(family)
                    && let Some((first, last)) = fp.pool
                {
                    assert!(
                        first <= last,
                        "a pool's first address is not after its last"
                    );
                    assert!(
                        fp.cidr.addr_at(last).is_some(),
                        "the pool lies inside the CIDR"
                    );
                }
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
