//! Running a CNI plugin binary as a container runtime does: the `CNI_*` environment and
//! nothing else, the network configuration on standard input, the result (or error) JSON
//! on standard output.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

/// One call's environment.
#[derive(Clone, Copy, Debug)]
pub struct CniCall<'a> {
    /// `CNI_COMMAND`: ADD, DEL, CHECK, STATUS, GC, VERSION.
    pub command: &'a str,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS`.
    pub netns: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS` (as kubelet sends them: `IgnoreUnknown=1;K8S_POD_NAMESPACE=...`).
    pub args: &'a str,
    /// `CNI_PATH`, if any.
    pub path: Option<&'a str>,
}

/// What a call printed and how it ended.
#[derive(Debug)]
pub struct CniOutcome {
    /// Exit status 0.
    pub ok: bool,
    /// Standard output as JSON (`null` when it is not JSON).
    pub stdout: Value,
    /// Standard error.
    pub stderr: String,
}

/// Runs `plugin` for `call` with `config` on its standard input (blocking: from async code,
/// call it in `spawn_blocking`).
pub fn run(plugin: &Path, call: &CniCall<'_>, config: &Value) -> CniOutcome {
    let mut command = Command::new(plugin);
    command
        .env_clear()
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_ARGS", call.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(path) = call.path {
        command.env("CNI_PATH", path);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{} does not run: {e}", plugin.display()));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(config.to_string().as_bytes())
        .expect("the plugin reads its configuration");
    let out = child.wait_with_output().expect("the plugin ends");
    CniOutcome {
        ok: out.status.success(),
        stdout: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
