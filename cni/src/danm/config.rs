//! `00-danm.conf`: the keys `danm` reads besides the standard ones, each checked and named
//! when wrong.

use std::path::PathBuf;

use serde_json::Value;

use crate::ipamd::{self, DEFAULT_IPAMD};
use crate::previous;
use crate::protocol::{CniError, ErrorCode};

/// The keys of `00-danm.conf` (besides the standard `cniVersion`, `name`, `type`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DanmConfig {
    /// `ipamd`: ipamd's address (`http://127.0.0.1:50051` by default).
    pub ipamd: String,
    /// `cniDir`: where delegated networks' configurations are (`/etc/cni/net.d`).
    pub cni_dir: PathBuf,
    /// `namingScheme`: empty (DANM's default) or `legacy`.
    pub naming_scheme: String,
    /// `kubeletCheckpoint`: kubelet's device-manager checkpoint, for SR-IOV device ids.
    pub kubelet_checkpoint: PathBuf,
    /// `args["danm.io/interfaces"]`: the interface list when no API server can tell it
    /// (ipamd on its embedded store): the annotation's JSON, as a list or as a string.
    pub interfaces: String,
    /// `ipamdTLS`: TLS to ipamd (`ca`, and `cert`/`key` for mutual TLS, `serverName`).
    pub tls: Option<ipamd::ClientTls>,
    /// `cniCacheDir`: libcni's cache (`/var/lib/cni`), where DEL finds the network that
    /// attached a container before danm did ([`crate::previous`]).
    pub cni_cache_dir: PathBuf,
    /// `policer`: the node policer's gate socket (`danm_proto::gate::DEFAULT_SOCKET` in
    /// deploy/components/policer); ADD waits there for the pod's rules before it builds any
    /// interface. None (absent or empty): no policer, no wait.
    pub policer: Option<PathBuf>,
    /// `name`: this configuration's network name (libcni caches danm's own attachments
    /// under it).
    pub name: String,
}

impl DanmConfig {
    /// Reads the configuration, naming the field that is wrong.
    pub fn parse(config: &Value) -> Result<DanmConfig, CniError> {
        let text = |key: &str, default: &str| -> Result<String, CniError> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(default.to_owned()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(CniError::new(
                    ErrorCode::InvalidConfig,
                    format!("{key}: must be a string, not {other}"),
                    String::new(),
                )),
            }
        };
        let naming_scheme = text("namingScheme", "")?;
        if !["", "legacy"].contains(&naming_scheme.as_str()) {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!("namingScheme: {naming_scheme:?} is neither empty nor \"legacy\""),
                String::new(),
            ));
        }
        let interfaces = match config.pointer("/args/danm.io~1interfaces") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(list @ Value::Array(_)) => list.to_string(),
            Some(other) => {
                return Err(CniError::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "args.danm.io/interfaces: must be a list or a JSON string, not {other}"
                    ),
                    String::new(),
                ));
            }
        };
        Ok(DanmConfig {
            ipamd: text("ipamd", DEFAULT_IPAMD)?,
            cni_dir: text("cniDir", "/etc/cni/net.d")?.into(),
            naming_scheme,
            kubelet_checkpoint: text(
                "kubeletCheckpoint",
                "/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint",
            )?
            .into(),
            interfaces,
            tls: ipamd::parse_tls(config, "ipamdTLS")?,
            cni_cache_dir: text("cniCacheDir", previous::DEFAULT_CACHE_DIR)?.into(),
            policer: policer_socket(text("policer", "")?)?,
            name: text("name", "danm")?,
        })
    }
}

/// `policer`: empty is no policer; anything else must be an absolute path (a template
/// variable the installer did not replace is refused here, not dialled).
fn policer_socket(value: String) -> Result<Option<PathBuf>, CniError> {
    if value.is_empty() {
        return Ok(None);
    }
    if !value.starts_with('/') || value.contains("${") {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!("policer: {value:?} is not an absolute path to the policer's socket"),
            String::new(),
        ));
    }
    Ok(Some(PathBuf::from(value)))
}
