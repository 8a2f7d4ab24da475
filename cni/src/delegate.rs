//! Delegation to other CNI plugins, as DANM does for every NetworkType it does not build
//! itself: the network's configuration is `<cniDir>/<NetworkID>.conf` (one plugin, run as
//! `<CNI_PATH>/<NetworkType>`) or `<cniDir>/<NetworkID>.conflist` (a chain, each plugin by its
//! own `type`). When the pod asked for addresses on a network with a subnet, the `ipam`
//! section is replaced by `danm-ipam`, so the addresses come from ipamd.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::protocol::{CniError, CniResult, ErrorCode, Request};

/// The plugins one delegated network runs, in order, with their configurations.
#[derive(Clone, Debug, PartialEq)]
pub struct Delegation {
    /// (plugin binary name, its configuration) in chain order.
    pub plugins: Vec<(String, Value)>,
}

impl Delegation {
    /// Loads the configuration of network `network_id` of type `network_type` from `cni_dir`.
    pub fn load(
        cni_dir: &Path,
        network_id: &str,
        network_type: &str,
    ) -> Result<Delegation, CniError> {
        plugin_name("NetworkType", network_type)?;
        let single = config_file(cni_dir, network_id, ".conf")?;
        let chain = config_file(cni_dir, network_id, ".conflist")?;
        let read = |path: &PathBuf| -> Result<Value, CniError> {
            let text = std::fs::read(path).map_err(|e| {
                CniError::new(
                    ErrorCode::IoFailure,
                    format!("cannot read {}", path.display()),
                    e.to_string(),
                )
            })?;
            serde_json::from_slice(&text).map_err(|e| {
                CniError::new(
                    ErrorCode::InvalidConfig,
                    format!("{} is not valid JSON", path.display()),
                    e.to_string(),
                )
            })
        };
        if single.is_file() {
            let config = read(&single)?;
            return Ok(Delegation {
                plugins: vec![(network_type.to_owned(), config)],
            });
        }
        if chain.is_file() {
            let list = read(&chain)?;
            let plugins = chain_plugins(&list, &chain.display().to_string(), network_id)?;
            return Ok(Delegation { plugins });
        }
        Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!(
                "network {network_id} is delegated to {network_type:?} but it has no configuration"
            ),
            format!("expected {} or {}", single.display(), chain.display()),
        ))
    }

    /// The plugins of a configuration as a runtime holds it: a list (`plugins`, each by its
    /// own `type`) or a single plugin (by its `type`); every type a plain name.
    pub fn from_config(config: &Value) -> Result<Delegation, CniError> {
        let name = config
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if config.get("plugins").is_some() {
            return Ok(Delegation {
                plugins: chain_plugins(config, &format!("network {name:?}"), name)?,
            });
        }
        let kind = config.get("type").and_then(Value::as_str).ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidConfig,
                format!("network {name:?}: type is missing"),
                String::new(),
            )
        })?;
        plugin_name(&format!("network {name:?}: type"), kind)?;
        Ok(Delegation {
            plugins: vec![(kind.to_owned(), config.clone())],
        })
    }

    /// DANM's generated configuration of an `sriov` network that has no configuration file:
    /// the sriov plugin on the virtual function `device` of the physical function `master`,
    /// tagged with the network's VLAN.
    pub fn sriov(
        version: &str,
        network_id: &str,
        master: &str,
        vlan: u32,
        device: &str,
    ) -> Delegation {
        let mut config = json!({
            "cniVersion": version,
            "name": network_id,
            "type": "sriov",
            "master": master,
            "deviceID": device,
        });
        if vlan > 0 {
            config["vlan"] = json!(vlan);
        }
        Delegation {
            plugins: vec![("sriov".to_owned(), config)],
        }
    }

    /// Whether `network_id` has a configuration file in `cni_dir` (never, for a NetworkID
    /// that is not a plain name).
    pub fn has_file(cni_dir: &Path, network_id: &str) -> bool {
        [".conf", ".conflist"].iter().any(|ext| {
            danm_core::names::file_in(cni_dir, network_id, ext).is_ok_and(|p| p.is_file())
        })
    }

    /// Every file this delegation would open and every program it would run, given the
    /// `CNI_PATH` folders (for the fuzz target and tests: each must be inside its folder).
    pub fn programs<'a>(&'a self, path: &'a [PathBuf]) -> impl Iterator<Item = PathBuf> + 'a {
        self.plugins.iter().flat_map(move |(kind, _)| {
            path.iter()
                .filter_map(move |dir| danm_core::names::file_in(dir, kind, "").ok())
        })
    }

    /// Replaces the `ipam` section of the first plugin.
    pub fn set_ipam(&mut self, ipam: Value) {
        if let Some((_, config)) = self.plugins.first_mut() {
            config["ipam"] = ipam;
        }
    }

    /// Sets `deviceID` (an SR-IOV virtual function) on the first plugin.
    pub fn set_device_id(&mut self, device: &str) {
        if let Some((_, config)) = self.plugins.first_mut() {
            config["deviceID"] = json!(device);
        }
    }

    /// ADD through the chain for interface `ifname`; the last plugin's result.
    pub async fn add(&self, request: &Request, ifname: &str) -> Result<CniResult, CniError> {
        let mut previous: Option<Value> = None;
        for (kind, config) in &self.plugins {
            let mut config = config.clone();
            if let Some(prev) = &previous {
                config["prevResult"] = prev.clone();
            }
            // A plugin that succeeds must print its result (libcni refuses an ADD whose
            // output does not parse): an exit 0 with nothing is no interface, not success.
            let out = call(request, kind, "ADD", ifname, &config).await?;
            previous = Some(out.ok_or_else(|| {
                CniError::new(
                    ErrorCode::DelegateFailed,
                    format!("{kind} ADD for {ifname} exited 0 but printed no result"),
                    "a CNI plugin's ADD prints its result as JSON on stdout",
                )
            })?);
        }
        Ok(previous
            .map(|v| CniResult::from_json(&v))
            .unwrap_or_default())
    }

    /// DEL through the chain, last plugin first; every failure is reported.
    pub async fn del(&self, request: &Request, ifname: &str) -> Result<(), CniError> {
        self.del_with_env(request, ifname, &[]).await
    }

    /// [`Delegation::del`], with `env` added to each plugin's environment.
    pub async fn del_with_env(
        &self,
        request: &Request,
        ifname: &str,
        env: &[(&str, &str)],
    ) -> Result<(), CniError> {
        let mut errors = Vec::new();
        for (kind, config) in self.plugins.iter().rev() {
            if let Err(e) = call_with_env(request, kind, "DEL", ifname, config, env).await {
                errors.push(e.to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(
                ErrorCode::DelegateFailed,
                "delegated DEL failed",
                errors.join("; "),
            ))
        }
    }
}

/// Runs one plugin from `CNI_PATH` with `command`; its stdout as JSON (None when empty).
pub async fn call(
    request: &Request,
    kind: &str,
    command: &str,
    ifname: &str,
    config: &Value,
) -> Result<Option<Value>, CniError> {
    call_with_env(request, kind, command, ifname, config, &[]).await
}

/// [`call`], with `env` added to the plugin's environment.
pub async fn call_with_env(
    request: &Request,
    kind: &str,
    command: &str,
    ifname: &str,
    config: &Value,
    env: &[(&str, &str)],
) -> Result<Option<Value>, CniError> {
    plugin_name("plugin type", kind)?;
    let binary = request
        .path
        .iter()
        .filter_map(|dir| danm_core::names::file_in(dir, kind, "").ok())
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidConfig,
                format!("plugin {kind:?} not found in CNI_PATH"),
                format!("CNI_PATH={}", join_paths(&request.path)),
            )
        })?;
    let mut child = tokio::process::Command::new(&binary)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &request.container_id)
        .env("CNI_NETNS", &request.netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_ARGS", args_text(request))
        .env("CNI_PATH", join_paths(&request.path))
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            CniError::new(
                ErrorCode::IoFailure,
                format!("cannot run {}", binary.display()),
                e.to_string(),
            )
        })?;
    let input = serde_json::to_vec(config).expect("JSON value serializes");
    if let Some(mut stdin) = child.stdin.take() {
        match stdin.write_all(&input).await {
            // A plugin that exits without reading its configuration closes the pipe: its
            // exit status and output say how it went (as libcni, through Go's os/exec,
            // ignores that EPIPE too).
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => {
                return Err(CniError::new(
                    ErrorCode::IoFailure,
                    format!("cannot write to {}", binary.display()),
                    e.to_string(),
                ));
            }
            Ok(()) => {}
        }
    }
    let out = child.wait_with_output().await.map_err(|e| {
        CniError::new(
            ErrorCode::IoFailure,
            format!("{} did not finish", binary.display()),
            e.to_string(),
        )
    })?;
    let stdout: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let (msg, details) = match &stdout {
            Some(v) => (
                v.get("msg")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                v.get("details")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            ),
            None => (
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                String::new(),
            ),
        };
        return Err(CniError::new(
            ErrorCode::DelegateFailed,
            format!("{kind} {command} for {ifname} failed: {msg}"),
            details,
        ));
    }
    Ok(stdout)
}

/// The plugins of a configuration list (`source` names it in errors), each with the list's
/// `cniVersion` and `name` (`default_name` when it has none), by its own plain `type`.
fn chain_plugins(
    list: &Value,
    source: &str,
    default_name: &str,
) -> Result<Vec<(String, Value)>, CniError> {
    let version = list.get("cniVersion").cloned().unwrap_or(json!("1.0.0"));
    let name = list.get("name").cloned().unwrap_or(json!(default_name));
    list.get("plugins")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidConfig,
                format!("{source}: plugins must be a non-empty list"),
                String::new(),
            )
        })?
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let kind = p.get("type").and_then(Value::as_str).ok_or_else(|| {
                CniError::new(
                    ErrorCode::InvalidConfig,
                    format!("{source}: plugins[{i}].type is missing"),
                    String::new(),
                )
            })?;
            plugin_name(&format!("{source}: plugins[{i}].type"), kind)?;
            let mut config = p.clone();
            config["cniVersion"] = version.clone();
            config["name"] = name.clone();
            Ok((kind.to_owned(), config))
        })
        .collect()
}

/// Refuses a plugin name that is not a plain name: it is run from `CNI_PATH`, and a name
/// with a separator (`/sbin/reboot`, `../../usr/bin/x`) would run a program outside it, as
/// root (libcni's CVE-2021-20206). ipamd and the webhook refuse such networks; this is the
/// second line.
fn plugin_name(field: &str, kind: &str) -> Result<(), CniError> {
    danm_core::names::plain(kind).map_err(|e| {
        CniError::new(
            ErrorCode::InvalidConfig,
            format!("{field} {kind:?} is not a plugin name: nothing outside CNI_PATH is run"),
            e.to_string(),
        )
    })
}

/// `<cni_dir>/<network_id><suffix>`, refused when the NetworkID is not a plain name (it
/// would read a file outside `cniDir`).
pub fn config_file(cni_dir: &Path, network_id: &str, suffix: &str) -> Result<PathBuf, CniError> {
    danm_core::names::file_in(cni_dir, network_id, suffix).map_err(|e| {
        CniError::new(
            ErrorCode::InvalidConfig,
            format!(
                "NetworkID {network_id:?} is not a plain name: no file outside {} is read",
                cni_dir.display()
            ),
            e.to_string(),
        )
    })
}

/// Whether `device` looks like a PCI address (`0000:03:02.1`): hex digits, `:` and `.`,
/// so it stays one component of a sysfs path.
fn is_pci_address(device: &str) -> bool {
    !device.is_empty()
        && device.len() <= 32
        && device
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        && !device.starts_with('.')
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

fn args_text(request: &Request) -> String {
    request
        .args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// The physical function (its netdev name) of the virtual function `device` (a PCI
/// address), from sysfs under `sys_root` (`/sys` on a node).
pub fn pf_name(sys_root: &Path, device: &str) -> Result<String, CniError> {
    if !is_pci_address(device) {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!("SR-IOV device {device:?} is not a PCI address"),
            String::new(),
        ));
    }
    let dir = sys_root
        .join("bus/pci/devices")
        .join(device)
        .join("physfn/net");
    let unreadable = |e: String| {
        CniError::new(
            ErrorCode::IoFailure,
            format!("cannot find the physical function of SR-IOV device {device}"),
            format!("{}: {e}", dir.display()),
        )
    };
    let mut names = std::fs::read_dir(&dir)
        .map_err(|e| unreadable(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Vec<_>>();
    names.sort();
    names
        .into_iter()
        .next()
        .ok_or_else(|| unreadable("no netdev".to_owned()))
}

/// The device id kubelet's device manager gave pod `pod_uid` from `resource` (its
/// `kubelet_internal_checkpoint`), skipping those already used by earlier interfaces.
pub fn device_id(
    checkpoint: &Value,
    pod_uid: &str,
    resource: &str,
    used: &[String],
) -> Option<String> {
    let entries = checkpoint.pointer("/Data/PodDeviceEntries")?.as_array()?;
    entries
        .iter()
        .filter(|e| {
            e.get("PodUID").and_then(Value::as_str) == Some(pod_uid)
                && e.get("ResourceName").and_then(Value::as_str) == Some(resource)
        })
        .flat_map(|e| match e.get("DeviceIDs") {
            // Older kubelets: a list; newer: NUMA node -> list.
            Some(Value::Array(ids)) => ids.clone(),
            Some(Value::Object(by_numa)) => by_numa
                .values()
                .filter_map(Value::as_array)
                .flatten()
                .cloned()
                .collect(),
            _ => Vec::new(),
        })
        .filter_map(|v| v.as_str().map(str::to_owned))
        .find(|id| !used.contains(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_come_from_the_kubelet_checkpoint_in_order() {
        let checkpoint = json!({"Data": {"PodDeviceEntries": [
            {"PodUID": "u1", "ContainerName": "c", "ResourceName": "nokia.k8s.io/sriov_ens1f0",
             "DeviceIDs": {"0": ["0000:03:02.1", "0000:03:02.2"]}},
            {"PodUID": "u2", "ContainerName": "c", "ResourceName": "nokia.k8s.io/sriov_ens1f0",
             "DeviceIDs": ["0000:03:02.3"]}
        ]}, "Checksum": 1});
        let r = "nokia.k8s.io/sriov_ens1f0";
        assert_eq!(
            device_id(&checkpoint, "u1", r, &[]).as_deref(),
            Some("0000:03:02.1")
        );
        assert_eq!(
            device_id(&checkpoint, "u1", r, &["0000:03:02.1".into()]).as_deref(),
            Some("0000:03:02.2")
        );
        assert_eq!(
            device_id(&checkpoint, "u2", r, &[]).as_deref(),
            Some("0000:03:02.3")
        );
        assert_eq!(device_id(&checkpoint, "u3", r, &[]), None);
    }

    #[test]
    fn sriov_configuration_is_generated_as_danm_does() {
        let sys = tempfile::tempdir().unwrap();
        let pf = sys
            .path()
            .join("bus/pci/devices/0000:03:02.1/physfn/net/ens1f0");
        std::fs::create_dir_all(&pf).unwrap();
        assert_eq!(pf_name(sys.path(), "0000:03:02.1").unwrap(), "ens1f0");
        let e = pf_name(sys.path(), "0000:09:00.0").unwrap_err();
        assert!(e.msg.contains("0000:09:00.0"), "{e}");
        let d = Delegation::sriov("1.0.0", "sriov_a", "ens1f0", 500, "0000:03:02.1");
        let (kind, config) = &d.plugins[0];
        assert_eq!(kind, "sriov");
        assert_eq!(config["master"], "ens1f0");
        assert_eq!(config["deviceID"], "0000:03:02.1");
        assert_eq!(config["vlan"], 500);
        assert_eq!(config["name"], "sriov_a");
    }

    #[test]
    fn loads_a_conf_or_a_conflist() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("br.conf"),
            r#"{"cniVersion":"1.0.0","name":"br","type":"bridge","ipam":{"type":"host-local"}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("chain.conflist"),
            r#"{"cniVersion":"1.0.0","name":"chain","plugins":[{"type":"macvlan"},{"type":"tuning"}]}"#,
        )
        .unwrap();
        let mut d = Delegation::load(dir.path(), "br", "bridge").unwrap();
        d.set_ipam(json!({"type": "danm-ipam"}));
        assert_eq!(d.plugins[0].0, "bridge");
        assert_eq!(d.plugins[0].1["ipam"]["type"], "danm-ipam");
        let c = Delegation::load(dir.path(), "chain", "macvlan").unwrap();
        assert_eq!(c.plugins.len(), 2);
        assert_eq!(c.plugins[1].1["name"], "chain");
        let e = Delegation::load(dir.path(), "nope", "flannel").unwrap_err();
        assert!(
            e.msg.contains("nope") && e.details.contains("nope.conf"),
            "{e}"
        );
    }
}
