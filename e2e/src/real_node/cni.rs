//! A real node's CNI: what the test bed installs in containerd's `bin_dir` and `conf_dir`
//! (the workspace's `danm`, optionally behind a timing wrapper, beside Debian's reference
//! plugins), the sandboxes containerd holds, `danm` run by hand on one of them, and the
//! timed calls.

use std::path::Path;
use std::time::Duration;

use super::{RealNode, RealNodeConfig};

/// One timed call of `danm` ([`RealNodeConfig::cni_timing`]).
#[derive(Debug, Clone)]
pub struct CniTiming {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// How long the call took.
    pub took: Duration,
    /// Its exit status.
    pub status: i32,
}

/// A pod sandbox as containerd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// Its container id (`CNI_CONTAINERID`).
    pub id: String,
    /// Its network namespace (`CNI_NETNS`).
    pub netns: String,
    /// The pod's namespace.
    pub pod_namespace: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's UID.
    pub pod_uid: String,
}

impl RealNode {
    /// Links Debian's reference CNI plugins (`/usr/lib/cni`) into the node's `bin_dir`.
    pub(super) fn link_reference_plugins(&self) {
        if let Ok(entries) = std::fs::read_dir("/usr/lib/cni") {
            for entry in entries.flatten() {
                let _ =
                    std::os::unix::fs::symlink(entry.path(), self.cni_bin.join(entry.file_name()));
            }
        }
    }

    pub(super) fn install_cni(&self, config: &RealNodeConfig, bin: &Path, conf: &Path) {
        self.link_reference_plugins();
        if config.cni_timing {
            std::fs::copy(&config.danm, bin.join("danm.real")).expect("danm is installed");
            let wrapper = format!(
                "#!/bin/sh\nstart=$(date +%s%N)\n\"$0.real\"\nstatus=$?\necho \"$CNI_COMMAND $start $(date +%s%N) $status $CNI_CONTAINERID\" >> {}\nexit $status\n",
                self.dir.join("cni-timings").display()
            );
            std::fs::write(bin.join("danm"), wrapper).expect("the timing wrapper");
            std::fs::set_permissions(
                bin.join("danm"),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .expect("the wrapper is executable");
        } else {
            std::fs::copy(&config.danm, bin.join("danm")).expect("danm is installed on the node");
        }
        let mut cni_config = config.cni_config.clone();
        cni_config["cniDir"] = serde_json::json!(conf);
        cni_config["kubeletCheckpoint"] = serde_json::json!(
            self.dir
                .join("kubelet/device-plugins/kubelet_internal_checkpoint")
        );
        match &config.conflist_version {
            None => std::fs::write(conf.join("00-danm.conf"), cni_config.to_string())
                .expect("00-danm.conf"),
            Some(version) => {
                let mut plugin = cni_config.clone();
                if let Some(o) = plugin.as_object_mut() {
                    o.remove("cniVersion");
                    o.remove("name");
                }
                let list = serde_json::json!({
                    "cniVersion": version, "name": cni_config["name"], "plugins": [plugin],
                });
                std::fs::write(conf.join("00-danm.conflist"), list.to_string())
                    .expect("00-danm.conflist");
            }
        }
        for (name, text) in &config.cni_files {
            std::fs::write(conf.join(name), text).expect("a CNI file");
        }
    }

    /// The pod sandboxes containerd holds.
    pub fn sandboxes(&self) -> Vec<Sandbox> {
        let ids = self
            .ctr(&[
                "containers",
                "ls",
                "-q",
                "labels.\"io.cri-containerd.kind\"==sandbox",
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        ids.split_whitespace()
            .map(|id| {
                let info: serde_json::Value = serde_json::from_str(
                    &self
                        .ctr(&["containers", "info", id])
                        .unwrap_or_else(|e| panic!("{e}")),
                )
                .expect("ctr prints JSON");
                let label = |key: &str| info["Labels"][key].as_str().unwrap_or_default().to_owned();
                let netns = info["Spec"]["linux"]["namespaces"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|n| n["type"] == "network")
                    .and_then(|n| n["path"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                Sandbox {
                    id: id.to_owned(),
                    netns,
                    pod_namespace: label("io.kubernetes.pod.namespace"),
                    pod_name: label("io.kubernetes.pod.name"),
                    pod_uid: label("io.kubernetes.pod.uid"),
                }
            })
            .collect()
    }

    /// Runs the node's `danm` with `command` (CHECK, say) for `sandbox`'s `eth0`, with the
    /// node's `00-danm.conf`, as containerd calls it.
    pub fn cni(&self, command: &str, sandbox: &Sandbox) -> danm_testkit::cni::CniOutcome {
        let text = std::fs::read_to_string(self.cni_dir().join("00-danm.conf"))
            .expect("00-danm.conf (not the .conflist form)");
        let config: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            sandbox.pod_namespace, sandbox.pod_name, sandbox.id, sandbox.pod_uid
        );
        let path = self.cni_bin.display().to_string();
        danm_testkit::cni::run(
            &self.cni_bin.join("danm"),
            &danm_testkit::cni::CniCall {
                command,
                container_id: &sandbox.id,
                netns: &sandbox.netns,
                ifname: "eth0",
                args: &args,
                path: Some(&path),
            },
            &config,
        )
    }

    /// Every timed call of `danm` so far (with [`RealNodeConfig::cni_timing`]).
    pub fn cni_timings(&self) -> Vec<CniTiming> {
        std::fs::read_to_string(self.dir.join("cni-timings"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                // The container id is last: STATUS and GC have none.
                let mut f = line.split_whitespace();
                let (command, start, end, status) = (f.next()?, f.next()?, f.next()?, f.next()?);
                let container_id = f.next().unwrap_or_default();
                let (start, end) = (start.parse::<u64>().ok()?, end.parse::<u64>().ok()?);
                Some(CniTiming {
                    command: command.to_owned(),
                    container_id: container_id.to_owned(),
                    took: Duration::from_nanos(end.saturating_sub(start)),
                    status: status.parse().ok()?,
                })
            })
            .collect()
    }
}
