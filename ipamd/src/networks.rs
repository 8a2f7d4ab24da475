//! Networks from YAML manifests, as a user would `kubectl apply` them.
//!
//! Every `*.yaml`, `*.yml` or `*.json` file of a folder is read, multi-document files
//! included. Documents of kind DanmNet, TenantNetwork or ClusterNetwork (`danm.io/v1`) are
//! networks; other documents (Deployments, namespaces, ...) are skipped. A namespaced network
//! without a namespace goes to `default`, as kubectl does.

use std::path::{Path, PathBuf};

use danm_core::{NetworkKey, NetworkKind};
use danm_crds::{ClusterNetwork, DanmNet, TenantNetwork};
use serde::Deserialize;

use crate::store::NetworkObject;

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The folder or a file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML or not a valid network.
    #[error("{path}: document {index}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Index of the document in the file (from 0).
        index: usize,
        /// What is wrong.
        message: String,
    },
}

/// Reads every network of the manifests in `dir`.
pub fn load_dir(dir: &Path) -> Result<Vec<NetworkObject>, ManifestError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ManifestError::Io { path, source }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        out.extend(
            parse_manifests(&text).map_err(|(index, message)| ManifestError::Invalid {
                path: path.clone(),
                index,
                message,
            })?,
        );
    }
    Ok(out)
}

#[derive(Deserialize)]
struct TypeMeta {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// Parses the networks of a (multi-document) manifest text. Errors carry the document index.
pub fn parse_manifests(text: &str) -> Result<Vec<NetworkObject>, (usize, String)> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| (index, e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let meta: TypeMeta =
            serde_yaml::from_value(value.clone()).map_err(|e| (index, e.to_string()))?;
        if meta.api_version != "danm.io/v1" {
            continue;
        }
        let err = |e: serde_yaml::Error| (index, format!("{}: {e}", meta.kind));
        let (kind, namespace, name, uid, spec) = match meta.kind.as_str() {
            "DanmNet" => {
                let n: DanmNet = serde_yaml::from_value(value).map_err(err)?;
                (
                    NetworkKind::DanmNet,
                    n.metadata.namespace,
                    n.metadata.name,
                    n.metadata.uid,
                    n.spec.network,
                )
            }
            "TenantNetwork" => {
                let n: TenantNetwork = serde_yaml::from_value(value).map_err(err)?;
                (
                    NetworkKind::TenantNetwork,
                    n.metadata.namespace,
                    n.metadata.name,
                    n.metadata.uid,
                    n.spec.network,
                )
            }
            "ClusterNetwork" => {
                let n: ClusterNetwork = serde_yaml::from_value(value).map_err(err)?;
                (
                    NetworkKind::ClusterNetwork,
                    n.metadata.namespace,
                    n.metadata.name,
                    n.metadata.uid,
                    n.spec.network,
                )
            }
            _ => continue,
        };
        let name = name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| (index, format!("{kind}: metadata.name is required")))?;
        let namespace = namespace.unwrap_or_else(|| "default".to_owned());
        out.push(NetworkObject {
            key: NetworkKey::new(kind, &namespace, &name),
            uid: uid.unwrap_or_default(),
            spec,
        });
    }
    Ok(out)
}
