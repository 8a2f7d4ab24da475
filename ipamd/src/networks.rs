//! Networks from YAML manifests, as a user would `kubectl apply` them.
//!
//! Every `*.yaml`, `*.yml` or `*.json` file of a folder is read, multi-document files
//! included. Documents of kind DanmNet, TenantNetwork or ClusterNetwork (`danm.io/v1`) are
//! networks; other documents (Deployments, namespaces, ...) are skipped. A namespaced network
//! without a namespace goes to `default`, as kubectl does.

use std::path::{Path, PathBuf};

use danm_core::{NetworkKey, NetworkKind};
use danm_crds::NetworkSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::store::NetworkObject;

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The folder or a file cannot be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds something that is not a valid network.
    #[error("{}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: DocumentError,
    },
}

/// Why one document of a manifest is not a valid network.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// The text is not YAML.
    #[error("not valid YAML")]
    Yaml(#[source] Box<serde_saphyr::Error>),
    /// A document of a network kind does not have that kind's fields.
    #[error("document {index}: {kind}: {field}")]
    Kind {
        /// Index of the document in the text (from 0).
        index: usize,
        /// Its kind.
        kind: NetworkKind,
        /// The field that is wrong (`spec.Options.vlan`).
        field: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A network without a name.
    #[error("document {index}: {kind}: metadata.name is required")]
    NoName {
        /// Index of the document in the text (from 0).
        index: usize,
        /// Its kind.
        kind: NetworkKind,
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
            parse_manifests(&text).map_err(|source| ManifestError::Invalid {
                path: path.clone(),
                source,
            })?,
        );
    }
    Ok(out)
}

/// What every network kind's object has: metadata and `spec` with DANM's fields.
#[derive(Deserialize)]
struct AnyNetwork {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: NetworkSpec,
}

/// Parses the networks of a (multi-document) manifest text.
pub fn parse_manifests(text: &str) -> Result<Vec<NetworkObject>, DocumentError> {
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| DocumentError::Yaml(Box::new(e)))?;
    let mut out = Vec::new();
    for (index, value) in documents.into_iter().enumerate() {
        if value.get("apiVersion").and_then(|v| v.as_str()) != Some("danm.io/v1") {
            continue;
        }
        let Some(kind) = value
            .get("kind")
            .and_then(|k| k.as_str())
            .and_then(NetworkKind::parse)
        else {
            continue;
        };
        let network: AnyNetwork =
            serde_path_to_error::deserialize(value).map_err(|e| DocumentError::Kind {
                index,
                kind,
                field: e.path().to_string(),
                source: e.into_inner(),
            })?;
        let name = network
            .metadata
            .name
            .filter(|n| !n.is_empty())
            .ok_or(DocumentError::NoName { index, kind })?;
        let namespace = if kind.namespaced() {
            network
                .metadata
                .namespace
                .unwrap_or_else(|| "default".to_owned())
        } else {
            String::new()
        };
        out.push(NetworkObject {
            key: NetworkKey::new(kind, &namespace, &name),
            uid: network.metadata.uid.unwrap_or_default(),
            spec: network.spec,
        });
    }
    Ok(out)
}
