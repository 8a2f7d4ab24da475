//! Containers another CNI attached before `danm` became the node's CNI (a node moved to
//! DANM beside, or from, a primary CNI such as flannel). The runtime sends their DEL to
//! `danm` now, since it calls the configuration that sorts first, not the one that attached
//! the container; ipamd holds nothing for them, and without more the previous CNI's
//! addresses and host state would leak.
//!
//! libcni (containerd, CRI-O) caches every ADD's configuration, capability arguments and
//! result in `<cacheDir>/results/<network>-<containerID>-<ifname>` (`kind: cniCacheV1`, the
//! configuration's bytes in base64). When ipamd holds nothing for a container, `danm` DEL
//! looks there for an entry of another network for the same container and interface and
//! runs that network's DEL as libcni would have: each plugin by its `type` (checked as a
//! plain name, run from `CNI_PATH` only), last plugin first, with the cached result as
//! `prevResult` from CNI 0.4.0 on (as cached: not converted to another version) and the
//! cached capability arguments as `runtimeConfig` for the capabilities each plugin declares
//! (portmap's DEL needs `portMappings` to remove a hostPort's rules). Then it removes the
//! entry.
//!
//! What is not that container's is left alone: an entry whose recorded container,
//! interface or network differs from its file name's. An entry that cannot be used (not
//! JSON, not `cniCacheV1`, a plugin type with a path) is left in place with a warning on
//! stderr: libcni would drop its `prevResult` or fail the same way, and a DEL that failed
//! for it forever would keep the sandbox from ever going. A plugin's DEL that fails fails
//! the DEL (the runtime retries), within [`PREVIOUS_DEL_LIMIT`].
//!
//! The DEL of a cached meta plugin (Multus, say) may call `danm` again for the same
//! container: such a nested call carries [`NESTED`] in its environment and does not look
//! at the cache again, and an entry that runs `danm` itself is never run.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::delegate::Delegation;
use crate::protocol::{CniError, ErrorCode, Request};

/// The metaplugin's own type: never run from here.
const SELF: &str = "danm";

/// Set (to the container id) in the environment of the plugins a previous network's DEL
/// runs: a `danm` they call for that container does not run previous networks again.
pub const NESTED: &str = "DANM_PREVIOUS_DEL";

/// How long the DEL of one previous network may take.
pub const PREVIOUS_DEL_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// libcni's default cache folder (containerd and CRI-O use it).
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";

/// One attachment of the container by another network, as libcni cached it.
#[derive(Debug)]
pub struct PreviousAttachment {
    /// The cache entry.
    pub path: PathBuf,
    /// The network's name.
    pub network: String,
    /// Its plugins, with the cached result as `prevResult` where the version allows it.
    pub delegation: Delegation,
}

/// The cached attachments of `container_id`'s `ifname` by networks other than `own`
/// (`danm`'s own network name), in file-name order. An entry whose configuration runs
/// `danm` itself (a meta plugin such as Multus caches danm under a network name of its
/// own) is skipped: its DEL would come back here. An entry that cannot be read or parsed
/// is an error naming it (never skipped silently: its DEL would be lost).
pub fn find(
    cache_dir: &Path,
    own: &str,
    container_id: &str,
    ifname: &str,
) -> Result<Vec<PreviousAttachment>, CniError> {
    let results = cache_dir.join("results");
    let entries = match std::fs::read_dir(&results) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(&results, e)),
    };
    let suffix = format!("-{container_id}-{ifname}");
    let mut found = Vec::new();
    if container_id.is_empty() {
        return Ok(found);
    }
    for entry in entries {
        let entry = entry.map_err(|e| io_error(&results, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(network) = name.strip_suffix(&suffix) else {
            continue;
        };
        if network.is_empty() || network == own {
            continue;
        }
        let path = entry.path();
        let delegation = match std::fs::read(&path)
            .map_err(|e| Unusable(e.to_string()))
            .and_then(|text| parse_entry(&text, network, container_id, ifname))
        {
            Ok(d) => d,
            // Another container's (its id ends like this one's), not ours to judge.
            Err(Entry::Foreign) => continue,
            Err(Entry::Unusable(why)) => {
                eprintln!(
                    "danm: libcni's cache entry {} cannot be used, left in place: {why}",
                    path.display()
                );
                continue;
            }
        };
        if delegation.plugins.iter().any(|(kind, _)| kind == SELF) {
            continue;
        }
        found.push(PreviousAttachment {
            path,
            network: network.to_owned(),
            delegation,
        });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// Why a cache entry is not run.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// It records another container, interface or network than its file name says.
    Foreign,
    /// It cannot be used, and why.
    Unusable(String),
}
use Entry::Unusable;

/// The plugins of one cache entry, checked against the file's name, with the cached
/// result as `prevResult` (from CNI 0.4.0 on) and the capability arguments each plugin
/// declares as its `runtimeConfig`.
pub fn parse_entry(
    text: &[u8],
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<Delegation, Entry> {
    let entry: Value =
        serde_json::from_slice(text).map_err(|e| Unusable(format!("not JSON: {e}")))?;
    let field = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or_default();
    if field("kind") != "cniCacheV1" {
        return Err(Unusable(format!(
            "kind {:?} is not cniCacheV1",
            field("kind")
        )));
    }
    for (key, expected) in [
        ("containerId", container_id),
        ("ifName", ifname),
        ("networkName", network),
    ] {
        if field(key) != expected {
            return Err(Entry::Foreign);
        }
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(field("config"))
        .map_err(|e| Unusable(format!("config is not base64: {e}")))?;
    let config: Value =
        serde_json::from_slice(&bytes).map_err(|e| Unusable(format!("config is not JSON: {e}")))?;
    let mut delegation =
        Delegation::from_config(&config).map_err(|e| Unusable(format!("config: {}", e.msg)))?;
    if let Some(arguments) = entry.get("capabilityArgs").and_then(Value::as_object) {
        for (_, plugin) in &mut delegation.plugins {
            let declared: Vec<String> = plugin
                .get("capabilities")
                .and_then(Value::as_object)
                .map(|caps| {
                    caps.iter()
                        .filter(|(_, on)| on.as_bool() == Some(true))
                        .map(|(name, _)| name.clone())
                        .collect()
                })
                .unwrap_or_default();
            for capability in declared {
                if let Some(value) = arguments.get(&capability) {
                    plugin["runtimeConfig"][&capability] = value.clone();
                }
            }
        }
    }
    let version = config
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("0.1.0");
    if let Some(result) = entry.get("result").filter(|r| r.is_object())
        && at_least(version, (0, 4))
    {
        for (_, plugin) in &mut delegation.plugins {
            plugin["prevResult"] = result.clone();
        }
    }
    Ok(delegation)
}

/// Runs the DEL of every previous attachment of the request's container and interface,
/// removing each cache entry whose DEL succeeded; every failure is reported. Nothing when
/// this call is itself nested in such a DEL (see [`NESTED`]).
pub async fn release(cache_dir: &Path, own: &str, request: &Request) -> Result<(), CniError> {
    if std::env::var(NESTED).is_ok_and(|id| id == request.container_id) {
        return Ok(());
    }
    let previous = find(cache_dir, own, &request.container_id, &request.ifname)?;
    let mut errors = Vec::new();
    let nested = [(NESTED, request.container_id.as_str())];
    for attachment in previous {
        let del = attachment
            .delegation
            .del_with_env(request, &request.ifname, &nested);
        let outcome = tokio::time::timeout(PREVIOUS_DEL_LIMIT, del)
            .await
            .unwrap_or_else(|_| {
                Err(CniError::new(
                    ErrorCode::DelegateFailed,
                    format!("no answer within {} s", PREVIOUS_DEL_LIMIT.as_secs()),
                    String::new(),
                ))
            });
        match outcome {
            Ok(()) => {
                if let Err(e) = std::fs::remove_file(&attachment.path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    errors.push(format!("{}: {e}", attachment.path.display()));
                }
            }
            Err(e) => errors.push(format!(
                "network {} (attached before danm): {}: {}",
                attachment.network, e.msg, e.details
            )),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::DelegateFailed,
            "DEL of a network that attached the container before danm failed",
            errors.join("; "),
        ))
    }
}

/// Whether version `v` ("x.y.z") is at least `min` (major, minor).
fn at_least(v: &str, min: (u32, u32)) -> bool {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= min
}

fn io_error(path: &Path, e: std::io::Error) -> CniError {
    CniError::new(
        ErrorCode::IoFailure,
        format!("cannot read libcni's cache {}", path.display()),
        e.to_string(),
    )
}

/// A libcni cache entry as libcni writes it (for tests).
pub fn cache_entry(
    network: &str,
    container_id: &str,
    ifname: &str,
    config: &Value,
    result: &Value,
) -> Value {
    json!({
        "kind": "cniCacheV1",
        "containerId": container_id,
        "config": base64::engine::general_purpose::STANDARD.encode(config.to_string()),
        "ifName": ifname,
        "networkName": network,
        "result": result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "0123456789abcdef";

    fn flannel_like() -> Value {
        json!({"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
            {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.244.1.0/24"}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]})
    }

    fn write(dir: &Path, name: &str, value: &Value) {
        std::fs::create_dir_all(dir.join("results")).unwrap();
        std::fs::write(dir.join("results").join(name), value.to_string()).unwrap();
    }

    #[test]
    fn the_previous_network_of_the_same_container_and_interface_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let result = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.5/24"}]});
        let entry = cache_entry("cbr0", CID, "eth0", &flannel_like(), &result);
        write(dir.path(), &format!("cbr0-{CID}-eth0"), &entry);
        // Not it: danm's own, another container, another interface.
        let own = cache_entry("danm", CID, "eth0", &flannel_like(), &result);
        write(dir.path(), &format!("danm-{CID}-eth0"), &own);
        write(dir.path(), "cbr0-fedcba-eth0", &entry);
        write(dir.path(), &format!("cbr0-{CID}-net1"), &entry);
        // danm itself under another name (Multus delegating to it): would call itself.
        let multus = json!({"cniVersion": "1.0.0", "name": "signalling", "type": "danm"});
        let looped = cache_entry("signalling", CID, "eth0", &multus, &result);
        write(dir.path(), &format!("signalling-{CID}-eth0"), &looped);

        let found = find(dir.path(), "danm", CID, "eth0").unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].network, "cbr0");
        let types: Vec<&str> = found[0]
            .delegation
            .plugins
            .iter()
            .map(|(t, _)| t.as_str())
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
        for (_, plugin) in &found[0].delegation.plugins {
            assert_eq!(plugin["prevResult"], result);
            assert_eq!(plugin["name"], "cbr0");
        }
    }

    #[test]
    fn no_cache_folder_is_nothing_to_do() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            find(&dir.path().join("absent"), "danm", CID, "eth0")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn an_entry_of_another_container_is_foreign_and_a_broken_one_unusable() {
        let result = json!({});
        let mut other = cache_entry("cbr0", "another", "eth0", &flannel_like(), &result);
        let parse = |v: &Value| parse_entry(v.to_string().as_bytes(), "cbr0", CID, "eth0");
        assert_eq!(parse(&other).unwrap_err(), Entry::Foreign);
        other["containerId"] = json!(CID);
        other["kind"] = json!("v2");
        let Err(Entry::Unusable(why)) = parse(&other) else {
            panic!("a v2 entry was used")
        };
        assert!(why.contains("cniCacheV1"), "{why}");
        let hostile = json!({"cniVersion": "1.0.0", "name": "cbr0",
            "plugins": [{"type": "../../usr/bin/reboot"}]});
        let Err(Entry::Unusable(why)) = parse(&cache_entry("cbr0", CID, "eth0", &hostile, &result))
        else {
            panic!("a plugin with a path was used")
        };
        assert!(why.contains("not a plugin name"), "{why}");
        let single = json!({"cniVersion": "0.3.1", "name": "old", "type": "bridge"});
        let entry = cache_entry("old", CID, "eth0", &single, &json!({"ips": []}));
        let d = parse_entry(entry.to_string().as_bytes(), "old", CID, "eth0").unwrap();
        assert_eq!(d.plugins.len(), 1);
        assert!(
            d.plugins[0].1.get("prevResult").is_none(),
            "no prevResult before 0.4.0"
        );
    }

    #[test]
    fn unusable_and_foreign_entries_are_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("results")).unwrap();
        std::fs::write(
            dir.path().join(format!("results/broken-{CID}-eth0")),
            "{not json",
        )
        .unwrap();
        // Container "x-0123..." ends like CID: its entry is not this container's.
        let foreign = cache_entry(
            "net-x",
            "x-0123456789abcdef",
            "eth0",
            &flannel_like(),
            &json!({}),
        );
        write(dir.path(), &format!("net-x-{CID}-eth0"), &foreign);
        assert!(find(dir.path(), "danm", CID, "eth0").unwrap().is_empty());
        assert!(
            dir.path()
                .join(format!("results/broken-{CID}-eth0"))
                .exists()
        );
    }

    #[test]
    fn each_plugin_gets_the_capability_arguments_it_declares() {
        let mut entry = cache_entry("cbr0", CID, "eth0", &flannel_like(), &json!({}));
        let mappings = json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]);
        entry["capabilityArgs"] =
            json!({"portMappings": mappings, "bandwidth": {"ingressRate": 1}});
        let d = parse_entry(entry.to_string().as_bytes(), "cbr0", CID, "eth0").unwrap();
        let (bridge, portmap) = (&d.plugins[0].1, &d.plugins[1].1);
        assert!(bridge.get("runtimeConfig").is_none(), "{bridge}");
        assert_eq!(portmap["runtimeConfig"], json!({"portMappings": mappings}));
    }
}
