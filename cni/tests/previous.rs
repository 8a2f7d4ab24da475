//! A node moved to DANM from another primary CNI: containers that CNI attached before
//! `00-danm.conf` sorted first get their DEL from `danm` now, which finds the network that
//! attached them in libcni's cache and runs its DEL (`danm_cni::previous`). Here the
//! previous CNI is flannel's shape: Debian's bridge plugin with host-local, under the
//! network name flannel gives it (`cbr0`). Needs root, `ip` and Debian's
//! containernetworking-plugins in /usr/lib/cni (`.ci/run` installs them).

mod common;

use std::path::Path;

use common::*;
use danm_cni::previous::cache_entry;
use danm_testkit::netns::{require_root, unique};
use serde_json::{Value, json};

const CID: &str = "c-before-danm";

/// flannel's configuration list, with the bridge plugin it delegates to in its place.
fn flannel_like(bridge: &str, data_dir: &Path) -> Value {
    json!({"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
        {"type": "bridge", "bridge": bridge,
         "ipam": {"type": "host-local", "subnet": "10.244.9.0/24",
                  "dataDir": data_dir}}
    ]})
}

/// `danm`'s configuration with libcni's cache at `cache`.
fn danm_conf_with_cache(ipamd: &Ipamd, cni_dir: &Path, cache: &Path) -> Value {
    let mut conf = danm_conf(&ipamd.url(), cni_dir, json!([]));
    conf["cniCacheDir"] = json!(cache);
    conf
}

/// The previous CNI's ADD, as libcni runs it: the bridge plugin, then the cache entry.
async fn attach_before_danm(list: &Value, ns: &Netns, cache: &Path) -> String {
    let mut plugin = list["plugins"][0].clone();
    plugin["cniVersion"] = list["cniVersion"].clone();
    plugin["name"] = list["name"].clone();
    let path = ns.path();
    let add = tokio::task::spawn_blocking(move || {
        cni(
            &Path::new(PLUGINS).join("bridge"),
            "ADD",
            CID,
            &path,
            "eth0",
            &plugin,
        )
    })
    .await
    .unwrap();
    assert!(add.ok, "the bridge's ADD: {} {}", add.stdout, add.stderr);
    let entry = cache_entry("cbr0", CID, "eth0", list, &add.stdout);
    std::fs::create_dir_all(cache.join("results")).unwrap();
    std::fs::write(
        cache.join(format!("results/cbr0-{CID}-eth0")),
        entry.to_string(),
    )
    .unwrap();
    add.stdout["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_attached_before_danm_gets_its_del_from_the_network_that_attached_it() {
    require_root();
    assert!(
        Path::new(PLUGINS).join("bridge").is_file(),
        "{PLUGINS}/bridge missing: apt-get install containernetworking-plugins"
    );
    let ipamd = start_ipamd("").await;
    let ns = netns();
    let dir = tempfile::tempdir().unwrap();
    let (cache, data) = (dir.path().join("cache"), dir.path().join("host-local"));
    let bridge = unique("fbr");
    let _bridge = HostLink::adopt(&bridge);
    let list = flannel_like(&bridge, &data);
    let address = attach_before_danm(&list, &ns, &cache).await;
    let reservation = data.join("cbr0").join(&address);
    assert!(reservation.is_file(), "host-local holds {address}");
    assert_eq!(ns.links(), ["lo", "eth0"]);

    // danm's DEL (ipamd holds nothing for the container) runs cbr0's.
    let conf = danm_conf_with_cache(&ipamd, dir.path(), &cache);
    let del = danm("DEL", CID, &ns.path(), &conf).await;
    assert!(del.ok, "DEL failed: {} {}", del.stdout, del.stderr);
    assert!(!reservation.exists(), "host-local still holds {address}");
    assert_eq!(ns.links(), ["lo"], "the bridge's veth is gone");
    assert!(
        !cache.join(format!("results/cbr0-{CID}-eth0")).exists(),
        "the cache entry is removed, as libcni removes its own"
    );

    // A second DEL has nothing left to do.
    let again = danm("DEL", CID, &ns.path(), &conf).await;
    assert!(again.ok, "second DEL: {} {}", again.stdout, again.stderr);
}

/// A cache entry of network `gone` for [`CID`], whose plugin is not in `CNI_PATH` (its
/// DEL fails); its path.
fn cache_a_network_whose_plugin_is_gone(cache: &Path) -> std::path::PathBuf {
    let gone = json!({"cniVersion": "1.0.0", "name": "gone",
                      "plugins": [{"type": "uninstalled-plugin"}]});
    let entry = cache.join(format!("results/gone-{CID}-eth0"));
    std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
    std::fs::write(
        &entry,
        cache_entry("gone", CID, "eth0", &gone, &json!({})).to_string(),
    )
    .unwrap();
    entry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_network_whose_del_fails_fails_the_del_and_keeps_its_entry() {
    let ipamd = start_ipamd("").await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let entry = cache_a_network_whose_plugin_is_gone(&cache);
    let conf = danm_conf_with_cache(&ipamd, dir.path(), &cache);
    let del = danm("DEL", CID, "", &conf).await;
    assert!(!del.ok, "{}", del.stdout);
    let text = del.stdout.to_string();
    assert!(
        text.contains("network gone (attached before danm)")
            && text.contains("\\\"uninstalled-plugin\\\" not found in CNI_PATH"),
        "{text}"
    );
    assert!(entry.exists(), "the entry stays for the runtime's retry");
}

/// A DEL nested in a previous network's DEL (a cached Multus calling `danm` again for the
/// same container) carries `DANM_PREVIOUS_DEL` and does not run previous networks again:
/// here the cached network would fail, so only the marker lets the nested DEL succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_del_does_not_run_previous_networks_again() {
    let ipamd = start_ipamd("").await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let entry = cache_a_network_whose_plugin_is_gone(&cache);
    let conf = danm_conf_with_cache(&ipamd, dir.path(), &cache);
    let run = move |nested: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_danm"));
        command
            .env("CNI_COMMAND", "DEL")
            .env("CNI_CONTAINERID", CID)
            .env("CNI_NETNS", "")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", bin_dir())
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
            )
            .env_remove(danm_cni::previous::NESTED)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        if let Some(id) = nested {
            command.env(danm_cni::previous::NESTED, id);
        }
        let mut child = command.spawn().unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let (nested, plain, other) = tokio::task::spawn_blocking(move || {
        (run(Some(CID)), run(None), run(Some("another-container")))
    })
    .await
    .unwrap();
    assert!(
        nested.status.success(),
        "{}",
        String::from_utf8_lossy(&nested.stdout)
    );
    assert!(
        !plain.status.success(),
        "the cached network runs without the marker"
    );
    assert!(
        !other.status.success(),
        "another container's marker counts for nothing"
    );
    assert!(entry.exists());
}
